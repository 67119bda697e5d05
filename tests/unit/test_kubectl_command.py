"""`provision.py kubectl ARGS...`: the cluster's kubectl with its kubeconfig, from the bundle or, on a
machine without one, downloaded once and checked against its published sha256 (a loopback server
stands in for the release site)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provisioner import bundle, cli
from provisioner.spec import build_spec
from provisioner.workspace import Workspace

# A stand-in kubectl: writes its arguments where the test reads them.
FAKE = '#!/bin/sh\nprintf \'%s\\n\' "$@" > "$(dirname "$0")/args-$$"\ncat "$(dirname "$0")"/args-$$ > {out}\n'


def cluster(tmp_path: Path, **spec: Any) -> Path:
    ws = Workspace(tmp_path / "ws")
    ws.save_spec(build_spec({"nodes": 1, "provider": "docker", **spec}), {})
    (ws.root / "kubeconfig").write_text("apiVersion: v1\n")
    return ws.root


def fake_kubectl(path: Path, out: Path) -> bytes:
    data = FAKE.format(out=out).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o755)
    return data


def test_the_bundles_kubectl_runs_with_the_clusters_kubeconfig_and_every_argument(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = cluster(tmp_path)
    seen = tmp_path / "seen"
    fake_kubectl(tmp_path / "bundle" / "bin" / "kubectl", seen)
    monkeypatch.setattr(bundle, "find", lambda versions: bundle.Bundle(tmp_path / "bundle", versions, "source"))
    rc = cli.main(["--dir", str(root), "kubectl", "-n", "kube-system", "get", "pods", "-o", "wide"])
    assert rc == 0
    assert seen.read_text().split() == [
        "--kubeconfig",
        str(root / "kubeconfig"),
        "-n",
        "kube-system",
        "get",
        "pods",
        "-o",
        "wide",
    ]


def test_a_swarm_cluster_or_one_without_kubeconfig_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = cluster(tmp_path / "s", engine="swarm")
    assert cli.main(["--dir", str(root), "kubectl", "get", "nodes"]) == 1
    assert "runs swarm, not Kubernetes" in capsys.readouterr().err
    root = cluster(tmp_path / "k")
    (root / "kubeconfig").unlink()
    assert cli.main(["--dir", str(root), "kubectl", "get", "nodes"]) == 1
    assert "the control_plane stage of `provision.py up` fetches it" in capsys.readouterr().err


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A release site on loopback serving the directory it returns."""
    docroot = tmp_path / "site"
    docroot.mkdir()
    handler = functools.partial(Quiet, directory=str(docroot))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", docroot
    finally:
        httpd.shutdown()
        httpd.server_close()


def publish(docroot: Path, tmp_path: Path, digest: str | None = None) -> Path:
    seen = tmp_path / "seen"
    versions = bundle.resolve_versions(None, None)
    binary = docroot / "release" / versions.kube_tag / "bin" / "linux" / "amd64" / "kubectl"
    data = fake_kubectl(binary, seen)
    binary.with_name("kubectl.sha256").write_text((digest or hashlib.sha256(data).hexdigest()) + "\n")
    return seen


def use_site(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, base: str) -> None:
    mirrors = tmp_path / "mirrors.yaml"
    mirrors.write_text(f"kube_base: {base}/release\narch: amd64\nretries: 1\nretry_delay: 0\ntimeout: 5\n")
    monkeypatch.setenv("PROVISION_BUNDLE_MIRRORS", str(mirrors))
    monkeypatch.setenv("PROVISION_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(bundle, "find", lambda versions: None)
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # every request stays on 127.0.0.1


def test_without_a_bundle_kubectl_is_downloaded_once_and_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, site: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    base, docroot = site
    root = cluster(tmp_path)
    seen = publish(docroot, tmp_path)
    use_site(monkeypatch, tmp_path, base)
    assert cli.main(["--dir", str(root), "kubectl", "version", "--client"]) == 0
    assert seen.read_text().split()[-2:] == ["version", "--client"]
    assert "sha256 verified" in capsys.readouterr().err
    # The second run takes the kubectl it kept: the site may be gone.
    for f in docroot.rglob("*"):
        if f.is_file():
            f.unlink()
    seen.unlink()
    assert cli.main(["--dir", str(root), "kubectl", "get", "nodes"]) == 0
    assert seen.read_text().split()[-2:] == ["get", "nodes"]


def test_a_download_that_does_not_match_its_sha256_is_refused_and_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, site: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    base, docroot = site
    root = cluster(tmp_path)
    publish(docroot, tmp_path, digest="0" * 64)
    use_site(monkeypatch, tmp_path, base)
    assert cli.main(["--dir", str(root), "kubectl", "get", "nodes"]) == 1
    err = capsys.readouterr().err
    assert "the download failed" in err and "bundle build --kubernetes" in err, err
    assert not list((tmp_path / "cache").rglob("kubectl/*/kubectl"))


@pytest.mark.parametrize(
    ("argv", "command", "rest"),
    [
        (["--dir", "kubectl", "status"], "status", []),
        (["exec", "--", "kubectl", "get", "pods"], "exec", []),
        (["--debug", "kubectl", "-n", "x", "get", "pods"], "kubectl", ["-n", "x", "get", "pods"]),
        (["--dir", "/tmp/c", "kubectl"], "kubectl", []),
    ],
)
def test_only_the_kubectl_command_takes_the_rest_of_the_line(
    argv: list[str], command: str, rest: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def dispatch(args: Any, ws: Any) -> int:
        seen.update(command=args.command, rest=args.kubectl_args)
        return 0

    monkeypatch.setattr(cli, "dispatch", dispatch)
    monkeypatch.setattr(cli, "workspace_of", lambda raw: Workspace(Path("/nonexistent")))
    assert cli.main(argv) == 0
    assert seen == {"command": command, "rest": rest}
