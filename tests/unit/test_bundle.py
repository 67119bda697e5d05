"""The bundle's model and source build plumbing (provisioner.bundle, .source, .make): versions, the
complete-or-absent rule, listing, image recipes read from bundle/components.yaml. No Go build here."""

from __future__ import annotations

import dataclasses
import io
import re
from pathlib import Path

import pytest

from provisioner import bundle
from provisioner.bundle import make, source
from provisioner.errors import ProvisionError


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PROVISION_BUNDLE_DIR", str(tmp_path / "bundles"))
    return tmp_path / "bundles"


def test_versions_resolve_minor_to_the_known_patch() -> None:
    v = bundle.resolve_versions("1.37", None)
    assert (v.kubernetes, v.calico, v.name) == ("1.37.2", "3.31.0", "k8s-1.37.2-calico-3.31.0")
    assert bundle.resolve_versions("v1.37.2", "v3.31.0") == v


@pytest.mark.parametrize(
    ("kube", "calico", "message"),
    [("1.30", None, "pass --kubernetes 1.37.2"), ("x", None, "not X.Y"), (None, "3.29.0", "--calico 3.31.0")],
)
def test_unknown_versions_are_refused_with_the_known_ones(kube: str | None, calico: str | None, message: str) -> None:
    with pytest.raises(ProvisionError, match=message) as info:
        bundle.resolve_versions(kube, calico)
    assert info.value.exit_code == 2


def _staged(versions: bundle.Versions) -> bundle.Bundle:
    stage = bundle.Bundle(path=bundle.staging_dir(versions), versions=versions, source="source")
    (stage.path / "bin" / "kubeadm").write_bytes(b"kubeadm")
    bundle.add_file(stage, "bin/kubeadm", "kubeadm", "v1.37.2", "test")
    return stage


def test_a_bundle_is_listed_only_once_finished(root: Path) -> None:
    versions = bundle.resolve_versions(None, None)
    stage = _staged(versions)
    # An interrupted build leaves only the dot-named staging directory: nothing is listed or found.
    assert list(bundle.list_bundles()) == [] and bundle.find(versions) is None
    done = bundle.finish(stage, "2026-12-01T00:00:00Z")
    assert done.path == root / versions.name and not (root / f".{versions.name}.partial").exists()
    found = bundle.find(versions)
    assert found is not None and [f.path for f in found.files] == ["bin/kubeadm"]
    assert bundle.verify_files(found) == []
    (found.path / "bin" / "kubeadm").write_bytes(b"tampered")
    assert bundle.verify_files(found) == ["bin/kubeadm"]


def test_a_rebuild_replaces_the_old_bundle_whole(root: Path) -> None:
    versions = bundle.resolve_versions(None, None)
    bundle.finish(_staged(versions), "first")
    stage = _staged(versions)
    (stage.path / "bin" / "kubelet").write_bytes(b"kubelet")
    bundle.add_file(stage, "bin/kubelet", "kubelet", "v1.37.2", "test")
    bundle.finish(stage, "second")
    found = bundle.find(versions)
    assert found is not None and found.created == "second" and len(found.files) == 2
    assert sorted(p.name for p in root.iterdir()) == [versions.name]


def test_list_command_prints_versions_and_source(root: Path) -> None:
    out = io.StringIO()
    make.list_cmd(out)
    assert "no bundles under" in out.getvalue()
    bundle.finish(_staged(bundle.resolve_versions(None, None)), "2026-12-01T00:00:00Z")
    out = io.StringIO()
    make.list_cmd(out)
    assert "k8s-1.37.2-calico-3.31.0" in out.getvalue() and "source" in out.getvalue()


def test_components_name_a_recipe_for_every_image_kubeadm_and_calico_ask_for() -> None:
    data = source.load_components()
    names = [
        "registry.k8s.io/kube-apiserver:v1.37.2",
        "registry.k8s.io/kube-controller-manager:v1.37.2",
        "registry.k8s.io/kube-scheduler:v1.37.2",
        "registry.k8s.io/kube-proxy:v1.37.2",
        "registry.k8s.io/coredns/coredns:v1.14.6",
        "registry.k8s.io/pause:3.10.2",
        "registry.k8s.io/etcd:3.7.0-0",
        "quay.io/calico/cni:v3.31.0",
        "quay.io/calico/node:v3.31.0",
        "quay.io/calico/kube-controllers:v3.31.0",
        "provisioner.local/smoke-web:1.37.2",
    ]
    outputs = {b.name: Path("/built") / b.name for b in source.go_builds(data)}
    specs = source.image_specs(data, names, outputs, bundle.resolve_versions(None, None))
    by_name = {s.name: s for s in specs}
    assert by_name["quay.io/calico/node:v3.31.0"].files["/bin/calico-node"] == Path("/built/calico/calico-node")
    assert by_name["quay.io/calico/node:v3.31.0"].userland
    assert by_name["registry.k8s.io/kube-proxy:v1.37.2"].userland
    assert not by_name["registry.k8s.io/kube-apiserver:v1.37.2"].userland
    assert by_name["quay.io/calico/kube-controllers:v3.31.0"].user == "999"
    # every file an image takes comes from a build that exists and names one of its packages
    for spec in specs:
        for built in spec.files.values():
            build = next(b for b in source.go_builds(data) if b.name == built.parent.name)
            assert built.name in build.packages, (spec.name, built)
    with pytest.raises(ProvisionError, match="no recipe for image"):
        source.image_specs(data, ["registry.k8s.io/something-new:v1"], outputs, bundle.resolve_versions(None, None))


def test_version_stamping_flags_render_the_release() -> None:
    data = source.load_components()
    kube = next(b for b in source.go_builds(data) if b.name == "kubernetes")
    flags = [
        source.render(f, bundle.resolve_versions(None, None), "v1.37.2", "2026-10-27T12:01:04Z") for f in kube.ldflags
    ]
    assert "-X k8s.io/component-base/version.gitVersion=v1.37.2" in flags
    assert "-X k8s.io/component-base/version.gitMinor=37" in flags
    assert "-X k8s.io/client-go/pkg/version.buildDate=2026-10-27T12:01:04Z" in flags


def test_build_cache_key_follows_the_inputs(tmp_path: Path) -> None:
    mod = tmp_path / "mod"
    mod.mkdir()
    (mod / "go.mod").write_text("module x\n")
    build = source.GoBuild("x", mod, "", (), (), {"x": "x"})
    first = source.build_inputs_digest(build, "-s -w")
    assert source.build_inputs_digest(build, "-s -w") == first
    assert source.build_inputs_digest(build, "-s -w -X a=b") != first
    (mod / "main.go").write_text("package main\n")
    assert source.build_inputs_digest(build, "-s -w") != first


def test_a_broken_manifest_is_a_clear_error_and_force_rebuilds_past_it(root: Path) -> None:
    versions = bundle.resolve_versions(None, None)
    broken = root / versions.name
    broken.mkdir(parents=True)
    (broken / "manifest.json").write_text('{"format": 1, "files": []}')  # no versions
    with pytest.raises(ProvisionError, match="rebuild it with `bundle build --force`"):
        bundle.find(versions)
    assert make._find_usable(versions, force=True) is None
    with pytest.raises(ProvisionError):
        make._find_usable(versions, force=False)


def test_smoke_image_only_where_the_bundle_carries_it(root: Path) -> None:
    from provisioner.inventory import bundle_smoke_image

    versions = bundle.resolve_versions(None, None)
    done = bundle.finish(_staged(versions), "x")
    # A bundle made before bundles carried it: the inventory names the cached archive instead.
    assert bundle_smoke_image(done.path) == ""
    stage = _staged(versions)
    (stage.path / "images" / "smoke-web.tar").write_bytes(b"x")
    bundle.add_file(
        stage, "images/smoke-web.tar", "smoke-web", "1.37.2", "t", image="provisioner.local/smoke-web:1.37.2"
    )
    done = bundle.finish(stage, "y")
    assert bundle_smoke_image(done.path) == "provisioner.local/smoke-web:1.37.2"


def test_required_go_is_the_newest_go_line_of_the_modules(tmp_path: Path) -> None:
    for name, line in (("a", "go 1.24.9"), ("b", "go 1.26.8"), ("c", "go 1.26.0")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "go.mod").write_text(f"module x\n\n{line}\n")
    assert source.required_go(tmp_path) == (1, 26, 8)
    assert source.required_go() >= (1, 26)


def test_up_refuses_a_release_the_bundle_does_not_know_naming_the_spec_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    from provisioner import kubesource
    from provisioner.spec import build_spec

    monkeypatch.setattr(kubesource, "host_cgroup_version", lambda: 1)
    spec = build_spec({"provider": "docker", "versions": {"kubernetes": "1.35"}})
    with pytest.raises(ProvisionError, match=r"pass --kube-version 1\.37\.2") as info:
        kubesource.check_bundle_versions(spec)
    assert info.value.exit_code == 2
    kubesource.check_bundle_versions(build_spec({"provider": "docker"}))  # the default is known
    # A release blocked on cgroup v1 is not checked against the bundle. The spec refuses 1.38 until it is in
    # spec.KUBE_MINORS, so the spec of that day is made by hand.
    known = build_spec({"provider": "docker"})
    kubesource.check_bundle_versions(dataclasses.replace(known, versions={**known.versions, "kubernetes": "1.38"}))


def test_the_known_releases_are_the_module_directories_that_pin_them() -> None:
    data = source.load_components()
    releases = source.kubernetes_releases(data)
    assert tuple(releases) == bundle.KNOWN_KUBERNETES
    assert data["kubernetes_version"] == bundle.DEFAULT_KUBERNETES == bundle.KNOWN_KUBERNETES[-1]
    for release, directory in releases.items():
        gomod = (source.BUNDLE_SRC / directory / "go.mod").read_text(encoding="utf-8")
        minor = release.split(".")[1]
        # The release itself, and every staging module at the matching v0 tag.
        assert f"require k8s.io/kubernetes v{release}\n" in gomod
        staging = re.findall(r"^\tk8s\.io/[\w-]+ => k8s\.io/[\w-]+ (v\S+)$", gomod, re.M)
        assert len(staging) > 30 and set(staging) == {f"v0.{minor}.{release.split('.')[2]}"}
        kube = next(b for b in source.go_builds(data, release) if b.name == "kubernetes")
        assert kube.dir == source.BUNDLE_SRC / directory


def test_a_release_the_bundle_does_not_pin_is_refused_with_the_known_ones() -> None:
    with pytest.raises(
        ProvisionError, match=r"knows Kubernetes 1\.36\.3, 1\.37\.2, not 1\.35; pass --kubernetes 1\.37\.2"
    ):
        bundle.resolve_versions("1.35", None)
    assert bundle.resolve_versions("1.36", None).kubernetes == "1.36.3"
