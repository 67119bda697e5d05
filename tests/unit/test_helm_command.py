"""`provision.py helm ARGS...`: helm run on this host with KUBECONFIG set to the cluster's, from the
source bundle's tools/helm or, without one, the release tarball downloaded once and checked against its
published sha256 (a loopback server stands in for get.helm.sh). And the pins agree: the helm the bundle
builds is the release a download fetches."""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
from pathlib import Path

import pytest
import yaml

from provisioner import bundle, cli
from provisioner.bundle import download, source
from tests.unit.test_kubectl_command import cluster, site, use_site  # noqa: F401  (site is a fixture)

REPO = Path(__file__).resolve().parents[2]
# A stand-in helm: records its arguments and the KUBECONFIG it was given.
FAKE = '#!/bin/sh\n{{ echo "KUBECONFIG=$KUBECONFIG"; printf \'%s\\n\' "$@"; }} > {out}\n'


def fake_helm(path: Path, out: Path) -> bytes:
    data = FAKE.format(out=out).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o755)
    return data


def test_the_bundles_helm_runs_with_the_clusters_kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = cluster(tmp_path)
    seen = tmp_path / "seen"
    fake_helm(tmp_path / "bundle" / "tools" / "helm", seen)
    monkeypatch.setattr(bundle, "find", lambda versions: bundle.Bundle(tmp_path / "bundle", versions, "source"))
    assert cli.main(["--dir", str(root), "helm", "list", "-A", "--output", "json"]) == 0
    assert seen.read_text().split("\n")[:-1] == [f"KUBECONFIG={root / 'kubeconfig'}", "list", "-A", "--output", "json"]


def test_a_swarm_cluster_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = cluster(tmp_path, engine="swarm")
    assert cli.main(["--dir", str(root), "helm", "list"]) == 1
    assert "there is no helm for it" in capsys.readouterr().err


def publish_helm(docroot: Path, tmp_path: Path, digest: str | None = None) -> Path:
    seen = tmp_path / "seen"
    data = FAKE.format(out=seen).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, body in (("linux-amd64/helm", data), ("linux-amd64/README.md", b"readme\n")):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            info.mode = 0o755 if name.endswith("helm") else 0o644
            tar.addfile(info, io.BytesIO(body))
    archive = docroot / f"helm-v{download.Mirrors().helm_version}-linux-amd64.tar.gz"
    archive.write_bytes(buf.getvalue())
    digest = digest or hashlib.sha256(buf.getvalue()).hexdigest()
    archive.with_name(archive.name + ".sha256").write_text(f"{digest}\n")
    return seen


def test_without_a_bundle_helm_is_downloaded_once_and_checked(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    site: tuple[str, Path],  # noqa: F811
) -> None:
    base, docroot = site
    root = cluster(tmp_path)
    seen = publish_helm(docroot, tmp_path)
    use_site(monkeypatch, tmp_path, base)
    mirrors = Path(str(tmp_path / "mirrors.yaml"))
    mirrors.write_text(mirrors.read_text() + f"helm_base: {base}\n")
    assert cli.main(["--dir", str(root), "helm", "version"]) == 0
    assert seen.read_text().split("\n")[1] == "version"
    for f in docroot.iterdir():
        f.unlink()
    assert cli.main(["--dir", str(root), "helm", "list"]) == 0  # the kept copy: the site is gone
    assert seen.read_text().split("\n")[1] == "list"


def test_a_helm_download_that_does_not_match_its_sha256_is_refused_and_not_kept(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    site: tuple[str, Path],  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    base, docroot = site
    root = cluster(tmp_path)
    publish_helm(docroot, tmp_path, digest="0" * 64)
    use_site(monkeypatch, tmp_path, base)
    mirrors = tmp_path / "mirrors.yaml"
    mirrors.write_text(mirrors.read_text() + f"helm_base: {base}\n")
    assert cli.main(["--dir", str(root), "helm", "list"]) == 1
    assert re.search(r"no helm \S+ on this machine and the download failed", capsys.readouterr().err)
    assert not list((tmp_path / "cache").rglob("helm/*/helm"))


def test_the_bundle_builds_the_helm_release_a_download_fetches() -> None:
    gomod = (REPO / "bundle" / "helm" / "go.mod").read_text()
    pinned = re.search(r"helm.sh/helm/v4 v(\S+)", gomod)
    assert pinned is not None and pinned.group(1) == download.Mirrors().helm_version
    recipe = source.load_components()
    assert recipe["tools"] == {"helm": "helm/helm"}
    assert recipe["builds"]["helm"]["packages"]["helm"] == "helm.sh/helm/v4/cmd/helm"


def test_a_source_bundle_without_helm_is_found_lacking(tmp_path: Path) -> None:
    images = [
        bundle.FileEntry(f"images/{i}.tar", "x", "v", "0" * 64, "s", 1, image=name)
        for i, name in enumerate(source.addon_images())
    ]
    bins = [bundle.FileEntry(f"bin/{n}", n, "v", "0" * 64, "s", 1) for n in source.load_components()["bin"]]
    old = bundle.Bundle(tmp_path, bundle.Versions("1.37.2", "3.31.0"), "source", files=[*images, *bins])
    assert source.missing_addon_images(old) == ["tools/helm"]
    tools = bundle.FileEntry("tools/helm", "helm", "v4", "0" * 64, "s", 1)
    assert (
        source.missing_addon_images(bundle.Bundle(tmp_path, old.versions, "source", files=[*images, *bins, tools]))
        == []
    )

    # A bundle made before etcdctl and etcdutl (the upgrade's snapshot tools) is lacking them.
    older = [b for b in bins if b.path not in ("bin/etcdctl", "bin/etcdutl")]
    made_before = bundle.Bundle(tmp_path, old.versions, "source", files=[*images, *older, tools])
    assert source.missing_addon_images(made_before) == ["bin/etcdctl", "bin/etcdutl"]


def test_the_projects_chart_is_a_chart_of_the_smoke_image() -> None:
    chart = yaml.safe_load((REPO / "charts" / "provisioner-smoke" / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "provisioner-smoke"
    values = yaml.safe_load((REPO / "charts" / "provisioner-smoke" / "values.yaml").read_text())
    assert values["image"] == source.render(
        str(source.load_components()["smoke_image"]), bundle.resolve_versions(None, None), "", ""
    )
