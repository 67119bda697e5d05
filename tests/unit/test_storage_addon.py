"""The storage add-on (issue: a usable cluster): the spec field and flag, the bundle's recipe and the
role naming the same images, the manifest the role renders (by Ansible itself), the stage, plan's line,
and verify's check manifest. No machine, no network."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner import stages
from provisioner.bundle import Bundle, FileEntry, Versions, source
from provisioner.cli import _overrides, build_parser
from provisioner.command.plan import addons_line
from provisioner.errors import ProvisionError, SpecError
from provisioner.spec import ClusterSpec, build_spec, check_engine_fields, load_file
from tests.infra.test_addons import CLAIM, storage_manifest
from tests.unit.test_playbooks_syntax import render_role_template

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "local_path_storage"
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())


def test_storage_is_on_by_default_and_a_flag_turns_it_off() -> None:
    assert build_spec().storage is True
    args = build_parser().parse_args(["up", "--no-storage"])
    assert build_spec({}, _overrides(args)).storage is False
    args = build_parser().parse_args(["up", "--storage"])
    assert build_spec({}, _overrides(args)).storage is True
    assert "storage" not in _overrides(build_parser().parse_args(["up"]))


@pytest.mark.parametrize("value", ["yes", 1, None, "false"])
def test_storage_must_be_a_yaml_boolean(tmp_path: Path, value: Any) -> None:
    config = tmp_path / "cluster.yml"
    config.write_text(yaml.safe_dump({"storage": value}))
    with pytest.raises(SpecError, match=r"^storage must be true or false"):
        build_spec(load_file(config))


def test_storage_is_refused_for_a_swarm() -> None:
    with pytest.raises(SpecError, match="storage is a Kubernetes add-on"):
        check_engine_fields("swarm", {"storage"})
    check_engine_fields("kubernetes", {"storage"})


def test_a_spec_saved_before_the_field_reads_as_storage_on() -> None:
    data = build_spec().to_dict()
    del data["storage"]
    assert ClusterSpec.from_dict(data).storage is True


def test_the_bundle_recipe_and_the_role_name_the_same_images() -> None:
    recipe = source.load_components()
    images = recipe["addon_images"]
    assert DEFAULTS["local_path_storage_image"] in images
    helpers = [name for name in images if "/local-path-helper:" in name]
    assert len(helpers) == 1
    # The role finds the helper in the bundle's manifest by its repository's name.
    assert f"'/{source._image_key(helpers[0])}:'" in DEFAULTS["local_path_storage_helper_image"]
    # Each add-on image has a recipe (the key is the repository's last element).
    for name in images:
        assert source._image_key(name) in recipe["images"], name
    # The provisioner's tag is the module version the bundle builds.
    gomod = (REPO / "bundle" / "addons" / "go.mod").read_text()
    pinned = re.search(r"github.com/rancher/local-path-provisioner (v\S+)", gomod)
    assert pinned is not None
    assert DEFAULTS["local_path_storage_image"].endswith(":" + pinned.group(1))
    assert (
        recipe["builds"]["addons"]["packages"]["local-path-provisioner"] == "github.com/rancher/local-path-provisioner"
    )


def _bundle(tmp_path: Path, images: list[str], src: str = "source") -> Bundle:
    files = [FileEntry(f"images/{i}.tar", "x", "v", "0" * 64, "s", 1, image=name) for i, name in enumerate(images)]
    return Bundle(path=tmp_path, versions=Versions("1.37.2", "3.31.0"), source=src, files=files)


def test_a_source_bundle_made_before_the_add_ons_is_found_lacking(tmp_path: Path) -> None:
    wanted = source.addon_images(ingress=False)
    # A source bundle also carries the host's tools (helm); tests/unit/test_helm_command.py covers those.
    # And the node binaries (bin/), such as etcdctl, added after the first bundles.
    bins = [f"bin/{name}" for name in source.load_components()["bin"]]
    assert source.missing_addon_images(_bundle(tmp_path, ["registry.k8s.io/pause:3.10"])) == [
        *wanted,
        "tools/helm",
        *bins,
    ]
    assert source.missing_addon_images(_bundle(tmp_path, wanted)) == ["tools/helm", *bins]
    # The ingress add-on's parts (Traefik's image, the Gateway API's CRDs) only when asked for.
    crds = source.gateway_api_rel()
    assert crds == f"manifests/gateway-api-{source.load_components()['gateway_api']['version']}.yaml"
    traefik = [name for name in source.addon_images() if name not in wanted]
    assert traefik == ["docker.io/library/traefik:v3.7.13"]
    assert source.missing_addon_images(_bundle(tmp_path, wanted), ingress=True) == [
        *traefik,
        crds,
        "tools/helm",
        *bins,
    ]
    # A download bundle saves upstream's provisioner and busybox from their registries.
    downloaded = source.addon_images(kind="download", ingress=False)
    assert source.missing_addon_images(_bundle(tmp_path, [], src="download")) == downloaded
    assert source.missing_addon_images(_bundle(tmp_path, downloaded, src="download")) == []
    # A bundle that has the ingress add-on's CRDs is held to its image too (it is never made without them again).
    with_crds = _bundle(tmp_path, downloaded, src="download")
    with_crds.files.append(FileEntry(crds, "gateway-api-crds", "v1", "0" * 64, "s", 1))
    assert source.has_ingress(with_crds) and source.missing_addon_images(with_crds) == traefik
    assert source.missing_addon_images(_bundle(tmp_path, [*downloaded, *traefik], src="download"), ingress=True) == [
        crds
    ]
    # What the role falls back to without a helper of the toolkit's own is what a download bundle saves.
    assert DEFAULTS["local_path_storage_image"] in downloaded
    assert "'docker.io/library/busybox:1.37.0'" in DEFAULTS["local_path_storage_helper_image"]
    assert "docker.io/library/busybox:1.37.0" in downloaded


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """The role's manifest, rendered by the template module: with a bundle that carries the helper image,
    and without a bundle (a connected cluster)."""
    root = tmp_path_factory.mktemp("storage")
    bundle = root / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(
        json.dumps(
            {"files": [{"path": "images/local-path-helper.tar", "image": "provisioner.local/local-path-helper:v9"}]}
        )
    )
    return render_role_template(
        root, ROLE, "local-path-storage.yaml.j2", {"with-bundle": {"kube_bundle_dir": str(bundle)}, "connected": {}}
    )


def _kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


def _helper_image(docs: list[dict[str, Any]]) -> str:
    helper = yaml.safe_load(_kind(docs, "ConfigMap")["data"]["helperPod.yaml"])
    image: str = helper["spec"]["containers"][0]["image"]
    return image


def test_the_storage_class_is_the_default_and_binds_where_the_pod_runs(rendered: dict[str, Any]) -> None:
    sc = _kind(rendered["connected"], "StorageClass")
    assert sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    assert sc["provisioner"] == "rancher.io/local-path"
    assert sc["volumeBindingMode"] == "WaitForFirstConsumer"


def test_the_helper_image_is_the_bundles_when_it_carries_one(rendered: dict[str, Any]) -> None:
    assert _helper_image(rendered["with-bundle"]) == "provisioner.local/local-path-helper:v9"
    assert _helper_image(rendered["connected"]) == "docker.io/library/busybox:1.37.0"
    deployment = _kind(rendered["with-bundle"], "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == DEFAULTS["local_path_storage_image"]
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["command"][container["command"].index("--helper-image") + 1] == _helper_image(
        rendered["with-bundle"]
    )


def test_the_provisioner_config_names_the_volume_path(rendered: dict[str, Any]) -> None:
    config = json.loads(_kind(rendered["connected"], "ConfigMap")["data"]["config.json"])
    assert config["nodePathMap"][0]["paths"] == [DEFAULTS["local_path_storage_path"]]


def test_the_addons_stage_follows_join_and_new_workers_do_not_rerun_it() -> None:
    names = [s.name for s in stages.stages_for("kubernetes")]
    assert names[-2:] == ["join", "addons"]
    (addons,) = [s for s in stages.STAGES if s.name == "addons"]
    assert addons.on_growth == "none"
    assert "addons" not in [s.name for s in stages.stages_for("swarm")]


def test_plan_says_what_storage_the_cluster_gets() -> None:
    on = build_spec()
    off = build_spec({"storage": False})
    assert "default StorageClass local-path" in addons_line(on, False)
    assert addons_line(off, False).splitlines()[1].strip() == "storage: off (--storage turns it on)"
    assert "stays, with its volumes" in addons_line(off, True)


def test_verify_claims_without_a_class_name_and_writes_the_token() -> None:
    docs = list(yaml.safe_load_all(storage_manifest("ns1", "provisioner.local/smoke-web:1.37.2", "abc123")))
    claim = _kind(docs, "PersistentVolumeClaim")
    assert "storageClassName" not in claim["spec"]
    pod = _kind(docs, "Pod")
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == CLAIM == claim["metadata"]["name"]
    assert pod["spec"]["containers"][0]["command"] == ["/smoke-web", "-write", "/data/proof", "-text", "abc123"]


def test_a_bundle_lacking_the_add_ons_is_made_again_from_its_own_source_or_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    from provisioner.bundle import make
    from provisioner.errors import ToolMissing

    old = _bundle(tmp_path, ["registry.k8s.io/pause:3.10"], src="source")
    for entry in old.files:  # every file it lists is there: only the add-on images are missing
        (tmp_path / entry.path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / entry.path).write_bytes(b"x")
    monkeypatch.setattr(make, "_find_usable", lambda versions, force: old)
    monkeypatch.setattr(make, "_build_lock", lambda versions: __import__("contextlib").nullcontext())
    asked: list[str] = []

    def build(versions: Any, wanted: str, out: Any, verbose: bool, ingress: bool = False) -> Bundle:
        asked.append(wanted + (" with ingress" if ingress else ""))
        raise ToolMissing("Go 1.26 or newer", "run scripts/setup.sh")

    monkeypatch.setattr(make, "_build", build)
    out = io.StringIO()
    # A cluster without storage does not ask for the add-on images.
    assert make.ensure(old.versions, "auto", force=False, out=out, addons=False) is old and asked == []
    # With storage: made again from the bundle's own source ("source", not "auto"); when that cannot be
    # done here, the bundle is kept, with a note.
    assert make.ensure(old.versions, "auto", force=False, out=out, addons=True) is old
    assert asked == ["source"]
    assert "could not be made again" in out.getvalue() and "pull the add-ons' images" in out.getvalue()
    # With ingress, which the bundle lacks: its parts are asked for too, and a bundle that cannot get
    # them is refused rather than kept (the add-on would have nothing to install from).
    with pytest.raises(ProvisionError, match=r"the ingress add-on could not be added to bundle .*\(--no-ingress\)"):
        make.ensure(old.versions, "auto", force=False, out=out, addons=True, ingress=True)
    assert asked == ["source", "source with ingress"]
    assert "has no ingress add-on, which this cluster turns on" in out.getvalue()
