"""verify's smoke-test image in every install mode (provisioner.bundle.smoke): the inventory names it
(and its archive where the install source lacks it) for bundle and pkgs.k8s.io clusters alike, `up`
makes the archive before the machines, and the archive is the project's own smoke-web built from
bundle/images.

The one real build here is `go build` of bundle/images (no third-party code, nothing fetched). Its
outputs go to a private cache directory; only Go's own build cache is the machine's (content-addressed,
made to be shared), so the build takes about a second once that cache is warm.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from provisioner import bundle, inventory, kubesource
from provisioner.bundle import images as img
from provisioner.bundle import make, smoke, source
from provisioner.spec import build_spec
from provisioner.vagrant import SshInfo

NAME = "provisioner.local/smoke-web:1.37.2"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PROVISION_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PROVISION_BUNDLE_DIR", str(tmp_path / "bundles"))
    return tmp_path / "cache"


def _bundle(source_name: str, with_smoke: bool) -> Path:
    """A finished bundle as the given source leaves it (the files themselves are stand-ins)."""
    versions = bundle.resolve_versions(None, None)
    stage = bundle.Bundle(path=bundle.staging_dir(versions), versions=versions, source=source_name)
    (stage.path / "bin" / "kubeadm").write_bytes(b"kubeadm")
    bundle.add_file(stage, "bin/kubeadm", "kubernetes", "1.37.2", "test")
    if with_smoke:
        (stage.path / smoke.BUNDLE_FILE).write_bytes(b"archive")
        bundle.add_file(stage, smoke.BUNDLE_FILE, "smoke-web", "1.37.2", "test", image=NAME)
    return bundle.finish(stage, "2026-12-04T00:00:00Z").path


def _vars(spec_data: dict[str, object], kube_bundle: Path | None, tmp_path: Path) -> dict[str, object]:
    kube = dict(spec_data.get("versions", {}) or {}).get("kubernetes")  # type: ignore[call-overload]
    if kube == "1.38":
        # A release blocked on cgroup v1: the spec refuses 1.38 until it is in spec.KUBE_MINORS, so the
        # spec of that day is made by hand.
        known = build_spec({**spec_data, "versions": {}})
        spec = dataclasses.replace(known, versions={**known.versions, "kubernetes": "1.38"})
    else:
        spec = build_spec(spec_data)
    ssh = {n.name: SshInfo(n.name, "127.0.0.1", 2200 + i, "vagrant", "/k") for i, n in enumerate(spec.nodes)}
    data: dict[str, object] = inventory.build_inventory(spec, ssh, tmp_path, kube_bundle)["all"]["vars"]
    return data


@pytest.mark.parametrize("source_name", ["source", "download"])
def test_a_bundle_cluster_gets_the_image_the_bundle_carries(
    cache: Path, tmp_path: Path, source_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kubesource, "host_cgroup_version", lambda: 2)
    path = _bundle(source_name, with_smoke=True)
    got = _vars({"provider": "docker", "nodes": 2}, path, tmp_path)
    assert got["kube_smoke_image"] == NAME
    assert "kube_smoke_image_archive" not in got  # the nodes import it with the bundle's images


def test_a_bundle_made_before_bundles_carried_the_image_gets_the_cached_archive(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kubesource, "host_cgroup_version", lambda: 2)
    path = _bundle("download", with_smoke=False)
    got = _vars({"provider": "docker", "nodes": 2}, path, tmp_path)
    assert got["kube_smoke_image"] == NAME
    assert got["kube_smoke_image_archive"] == str(cache / "smoke" / "smoke-web-1.37.2.tar")


def test_an_upstream_cluster_gets_the_image_and_its_archive(cache: Path, tmp_path: Path) -> None:
    got = _vars({"provider": "libvirt", "kube_source": "upstream", "versions": {"kubernetes": "1.36"}}, None, tmp_path)
    assert got["kube_smoke_image"] == "provisioner.local/smoke-web:1.36"
    assert got["kube_smoke_image_archive"] == str(cache / "smoke" / "smoke-web-1.36.tar")
    assert "kube_bundle_dir" not in got


def test_no_smoke_image_where_no_kubernetes_runs(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "kube_smoke_image" not in _vars({"engine": "swarm", "nodes": 2}, None, tmp_path)
    # 1.38 on a cgroup v1 host's container nodes: the Kubernetes stages do not run at all.
    monkeypatch.setattr(kubesource, "host_cgroup_version", lambda: 1)
    blocked = _vars({"provider": "docker", "versions": {"kubernetes": "1.38"}}, None, tmp_path)
    assert "kube_smoke_image" not in blocked and "kube_smoke_image_archive" not in blocked


def test_up_makes_the_archive_for_upstream_and_for_a_bundle_without_the_image(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[str] = []

    def fake_archive(kube_version: str, log_file: Path | None = None, on_progress: object = None) -> Path:
        made.append(kube_version)
        return smoke.archive_path(kube_version)

    monkeypatch.setattr(smoke, "ensure_archive", fake_archive)
    out = io.StringIO()
    spec = build_spec({"provider": "libvirt", "kube_source": "upstream", "versions": {"kubernetes": "1.36"}})
    assert kubesource.ensure_kube_bundle(spec, out, verbose=False) == (spec, None)
    assert made == ["1.36"]
    assert "kubernetes: verify's smoke-test image provisioner.local/smoke-web:1.36 from " in out.getvalue()

    for with_smoke, expected in ((True, ["1.36"]), (False, ["1.36", "1.37.2"])):
        path = _bundle("download", with_smoke=with_smoke)
        monkeypatch.setattr(make, "ensure", lambda *a, p=path, **k: bundle.load(p))
        spec = build_spec({"provider": "libvirt", "kube_source": "bundle"})
        assert kubesource.ensure_kube_bundle(spec, io.StringIO(), verbose=False)[1] == path
        assert made == expected


def _go_or_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    """Go's build and module caches of this machine (the bundle build's), whatever the cache root."""
    if shutil.which("go") is None:
        pytest.skip("go is not installed (scripts/setup.sh installs it): the smoke image is built with it")
    shared = source.go_env()  # before PROVISION_CACHE_DIR points elsewhere
    real = source.go_env

    def env() -> dict[str, str]:
        return real() | {"GOCACHE": shared["GOCACHE"], "GOMODCACHE": shared["GOMODCACHE"]}

    monkeypatch.setattr(source, "go_env", env)


def _layer_file(archive: Path, member: str) -> bytes:
    with tarfile.open(archive) as tar:
        manifest = tar.extractfile("manifest.json")
        assert manifest is not None
        (entry,) = json.load(manifest)
        assert len(entry["Layers"]) == 1  # no base layer: the binary alone
        layer = tar.extractfile(entry["Layers"][0])
        assert layer is not None
        with tarfile.open(fileobj=io.BytesIO(layer.read())) as inner:
            found = inner.extractfile(member)
            assert found is not None
            return found.read()


def test_the_archive_is_the_projects_smoke_web_built_from_bundle_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _go_or_skip(monkeypatch)
    monkeypatch.setenv("PROVISION_CACHE_DIR", str(tmp_path / "cache"))
    notes: list[str] = []
    path = smoke.ensure_archive("1.37.2", on_progress=notes.append)
    assert path == tmp_path / "cache" / "smoke" / "smoke-web-1.37.2.tar"
    assert img.archive_tags(path) == [NAME]
    binary = tmp_path / "smoke-web"
    binary.write_bytes(_layer_file(path, "smoke-web"))
    binary.chmod(0o755)
    ran = subprocess.run([str(binary), "-version"], capture_output=True, text=True, timeout=30, check=True)
    assert ran.stdout.strip() == "smoke-web 1.37.2"  # stamped with the version its tag names
    # Made once: the next call builds from the caches, finds the same bytes and leaves the file alone.
    before = path.stat()
    assert smoke.ensure_archive("1.37.2", on_progress=notes.append) == path
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert any("unchanged" in n for n in notes), notes

    # A bundle of either source takes the same archive into images/ and lists it.
    versions = bundle.resolve_versions(None, None)
    monkeypatch.setenv("PROVISION_BUNDLE_DIR", str(tmp_path / "bundles"))
    stage = bundle.Bundle(path=bundle.staging_dir(versions), versions=versions, source="download")
    entry = smoke.add_to_bundle(stage, None, notes.append)
    assert (entry.path, entry.image, entry.component) == (smoke.BUNDLE_FILE, NAME, "smoke-web")
    assert entry.sha256 == bundle.sha256_file(path)
    assert bundle.smoke_image(stage) == NAME
