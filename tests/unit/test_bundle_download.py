"""The `--from download` bundle source against a local HTTP server and a local image registry, both on
127.0.0.1 (random ports): the files are made here (fake binaries, a fake kubeadm that prints an image
list, crictl and CNI tarballs, a small calico.yaml, tiny images built as an OCI layout)."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from provisioner.bundle import (
    Bundle,
    Versions,
    download,
    finish,
    load,
    sha256_file,
    smoke,
    smoke_image,
    source,
    staging_dir,
    verify_files,
)
from provisioner.bundle import images as img
from provisioner.bundle.download import ImageRef, Mirrors
from provisioner.errors import ProvisionError, ToolMissing

VERSIONS = Versions(kubernetes="1.37.2", calico="3.31.0")
KUBEADM_IMAGES = ["registry.k8s.io/kube-apiserver:v1.37.2", "registry.k8s.io/pause:3.10"]
CALICO_IMAGES = ["docker.io/calico/cni:v3.31.0", "docker.io/calico/node:v3.31.0", "calico/kube-controllers:v3.31.0"]
# The add-ons' images a download bundle saves from their registries (bundle/components.yaml).
ADDON_IMAGES = source.addon_images(kind="download")
ALL_IMAGES = KUBEADM_IMAGES + CALICO_IMAGES + ADDON_IMAGES

KUBEADM = f"""#!/bin/sh
# A stand-in for kubeadm: answers only `config images list --kubernetes-version v1.37.2`.
if [ "$*" = "config images list --kubernetes-version v1.37.2" ]; then
{chr(10).join(f"  echo {name}" for name in KUBEADM_IMAGES)}
  exit 0
fi
echo "unexpected arguments: $*" >&2
exit 2
"""

CALICO_YAML = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: felixconfigurations.crd.projectcalico.org}
spec:
  versions:
    - name: v1
      schema:
        openAPIV3Schema:
          properties:
            image: {description: "a schema property called image is not an image", type: string}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: calico-node, namespace: kube-system}
spec:
  template:
    spec:
      initContainers:
        - name: install-cni
          image: docker.io/calico/cni:v3.31.0
        - name: upgrade-ipam
          image: docker.io/calico/cni:v3.31.0
      containers:
        - name: calico-node
          image: "docker.io/calico/node:v3.31.0"
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: calico-kube-controllers, namespace: kube-system}
spec:
  template:
    spec:
      containers:
        - name: calico-kube-controllers
          image: calico/kube-controllers:v3.31.0
"""

CNI_PLUGINS = ("bandwidth", "bridge", "host-local", "loopback", "portmap", "tuning")


# ---------------------------------------------------------------------------------------------------
# A file server on 127.0.0.1 that speaks Range and misbehaves on request


@dataclass
class Served:
    files: dict[str, bytes] = field(default_factory=dict)
    corrupt: set[str] = field(default_factory=set)  # paths served with one byte flipped
    cut: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before the connection drops (once)
    stall: dict[str, float] = field(default_factory=dict)  # path -> seconds of silence before the body (once)
    ignore_range: bool = False
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, Range header
    lock: threading.Lock = field(default_factory=threading.Lock)

    def gets(self, path: str) -> list[str]:
        """The Range header of each GET of `path` ("" when none was sent)."""
        return [rng for method, p, rng in self.requests if method == "GET" and p == path]


class Handler(http.server.BaseHTTPRequestHandler):
    served: Served

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    def _answer(self, head: bool) -> None:
        s = self.served
        rng = self.headers.get("Range", "")
        with s.lock:
            s.requests.append((self.command, self.path, rng))
            body = s.files.get(self.path)
            cut = s.cut.pop(self.path, None) if not head else None
            stall = s.stall.pop(self.path, 0.0) if not head else 0.0
            if body is not None and self.path in s.corrupt:
                body = bytes([body[0] ^ 0xFF]) + body[1:]
        if body is None:
            self.send_error(404)
            return
        status, start = 200, 0
        match = re.fullmatch(r"bytes=(\d+)-", rng)
        if match and not s.ignore_range:
            start = int(match.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        chunk = body[start:]
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Accept-Ranges", "none" if s.ignore_range else "bytes")
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        if head:
            return
        if stall:
            time.sleep(stall)
        self.wfile.write(chunk if cut is None else chunk[:cut])
        self.wfile.flush()
        if cut is not None:
            self.close_connection = True


@pytest.fixture
def server() -> Iterator[tuple[str, Served]]:
    served = Served()
    handler = type("BoundHandler", (Handler,), {"served": served})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A private download cache; no proxy (every request stays on 127.0.0.1); no mirrors file."""
    monkeypatch.setenv("PROVISION_CACHE_DIR", str(tmp_path / "cache"))
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv(download.MIRRORS_ENV, raising=False)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tarball(members: dict[str, tuple[bytes, int]], gz: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
        for name, (data, mode) in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class Release:
    base: str
    served: Served
    mirrors: Mirrors
    kubelet: bytes

    def path(self, url: str) -> str:
        assert url.startswith(self.base)
        return url[len(self.base) :]


@pytest.fixture
def release(server: tuple[str, Served]) -> Release:
    """A fake release site: kube binaries, crictl and CNI tarballs with .sha256 files, calico.yaml."""
    base, served = server
    mirrors = Mirrors(
        kube_base=f"{base}/release",
        crictl_base=f"{base}/cri-tools",
        cni_base=f"{base}/plugins",
        calico_base=f"{base}/calico",
        gateway_api_base=f"{base}/gateway-api",
        arch="amd64",
        timeout=2.0,
        retries=3,
        retry_delay=0.0,
        probe_timeout=1.0,
    )
    kubelet = os.urandom(300_000)
    files = {
        mirrors.kube_url(VERSIONS, "kubeadm"): KUBEADM.encode(),
        mirrors.kube_url(VERSIONS, "kubelet"): kubelet,
        mirrors.kube_url(VERSIONS, "kubectl"): b"\x7fELF fake kubectl\n" * 100,
        mirrors.crictl_url(): _tarball({"crictl": (b"\x7fELF fake crictl\n", 0o755)}),
        mirrors.cni_url(): _tarball(
            {f"./{p}": (f"\x7fELF fake {p}\n".encode(), 0o755) for p in CNI_PLUGINS}
            | {"./LICENSE": (b"Apache-2.0\n", 0o644), "./README.md": (b"plugins\n", 0o644)}
        ),
    }
    for url, data in list(files.items()):
        name = url.rsplit("/", 1)[1]
        # The kube release files hold the bare digest; the tarballs' hold "digest  name".
        files[f"{url}.sha256"] = (_sha(data) if "/release/" in url else f"{_sha(data)}  {name}\n").encode()
    files[mirrors.calico_url(VERSIONS)] = CALICO_YAML.encode()
    files[mirrors.gateway_api_url(GATEWAY_API)] = GATEWAY_CRDS.encode()
    served.files = {url[len(base) :]: data for url, data in files.items()}
    return Release(base, served, mirrors, kubelet)


GATEWAY_API = str(source.load_components()["gateway_api"]["version"])
GATEWAY_CRDS = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: gateways.gateway.networking.k8s.io}\n"


def _stage(tmp_path: Path) -> Bundle:
    return Bundle(path=staging_dir(VERSIONS, root=tmp_path / "bundles"), versions=VERSIONS, source="download")


# ---------------------------------------------------------------------------------------------------
# Settings, names and image lists


def test_mirrors_come_from_a_yaml_or_json_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Mirrors.from_env() == Mirrors()
    assert Mirrors().kube_url(VERSIONS, "kubeadm").startswith("https://dl.k8s.io/release/v1.37.2/bin/linux/")
    yml = tmp_path / "mirrors.yaml"
    yml.write_text(
        "kube_base: http://127.0.0.1:8/k8s/\ncrictl_version: v1.38.0\narch: arm64\nretries: 2\n"
        "registries: {registry.k8s.io: '127.0.0.1:5000'}\nregistry_tls_verify: false\n"
    )
    monkeypatch.setenv(download.MIRRORS_ENV, str(yml))
    m = Mirrors.from_env()
    assert m.kube_url(VERSIONS, "kubelet") == "http://127.0.0.1:8/k8s/v1.37.2/bin/linux/arm64/kubelet"
    assert m.crictl_url().endswith("/v1.38.0/crictl-v1.38.0-linux-arm64.tar.gz")
    assert m.cni_url() == Mirrors().cni_url().replace(Mirrors().arch, "arm64")
    assert (m.retries, m.registry_tls_verify) == (2, False)
    assert m.image_source(ImageRef.parse("registry.k8s.io/pause:3.10")) == "docker://127.0.0.1:5000/pause:3.10"
    assert m.image_source(ImageRef.parse("calico/cni:v3.31.0")) == "docker://docker.io/calico/cni:v3.31.0"
    js = tmp_path / "mirrors.json"
    js.write_text(json.dumps({"calico_base": "http://127.0.0.1:9/calico", "kube_bsae": "typo"}))
    with pytest.raises(ProvisionError, match=r"unknown key.*kube_bsae"):
        Mirrors.from_file(js)
    js.write_text(json.dumps({"timeout": "soon"}))
    with pytest.raises(ProvisionError, match="timeout must be a non-negative number"):
        Mirrors.from_file(js)


@pytest.mark.parametrize(
    ("name", "registry", "path", "tag", "full", "file"),
    [
        ("registry.k8s.io/kube-apiserver:v1.37.2", "registry.k8s.io", "kube-apiserver", "v1.37.2", None, None),
        ("registry.k8s.io/coredns/coredns:v1.12.1", "registry.k8s.io", "coredns/coredns", "v1.12.1", None, None),
        (
            "docker.io/calico/cni:v3.31.0",
            "docker.io",
            "calico/cni",
            "v3.31.0",
            None,
            "docker.io_calico_cni_v3.31.0.tar",
        ),
        ("calico/node:v3.31.0", "docker.io", "calico/node", "v3.31.0", "docker.io/calico/node:v3.31.0", None),
        ("busybox:1.36", "docker.io", "library/busybox", "1.36", "docker.io/library/busybox:1.36", None),
        ("quay.io/tigera/operator", "quay.io", "tigera/operator", "latest", "quay.io/tigera/operator:latest", None),
        ("127.0.0.1:5000/a/b:c", "127.0.0.1:5000", "a/b", "c", None, "127.0.0.1_5000_a_b_c.tar"),
    ],
)
def test_image_names(name: str, registry: str, path: str, tag: str, full: str | None, file: str | None) -> None:
    ref = ImageRef.parse(name)
    assert (ref.registry, ref.path, ref.tag) == (registry, path, tag)
    assert ref.name == (full or name)
    if file:
        assert ref.file_name == file


def test_image_names_without_a_tag_are_refused() -> None:
    with pytest.raises(ProvisionError, match="digest only"):
        ImageRef.parse("registry.k8s.io/pause@sha256:" + "0" * 64)
    pinned = ImageRef.parse("registry.k8s.io/pause:3.10@sha256:" + "0" * 64)
    assert pinned.name == "registry.k8s.io/pause:3.10"
    assert Mirrors().image_source(pinned) == "docker://registry.k8s.io/pause@sha256:" + "0" * 64


def test_the_calico_images_are_the_manifests_image_fields() -> None:
    assert download.manifest_images(CALICO_YAML, "calico.yaml") == CALICO_IMAGES
    with pytest.raises(ProvisionError, match="names no images"):
        download.manifest_images("kind: ConfigMap\n", "calico.yaml")


def test_the_kubernetes_images_come_from_kubeadm(tmp_path: Path) -> None:
    kubeadm = tmp_path / "kubeadm"
    kubeadm.write_text(KUBEADM)
    kubeadm.chmod(0o755)
    assert download.kubeadm_images(kubeadm, VERSIONS) == KUBEADM_IMAGES
    with pytest.raises(ProvisionError, match="kubeadm config images list failed"):
        download.kubeadm_images(kubeadm, Versions("1.36.0", "3.31.0"))
    kubeadm.write_bytes(b"\x7fELF for another architecture")
    with pytest.raises(ProvisionError, match=r"the downloaded kubeadm does not run on this .* machine \(Exec format"):
        download.kubeadm_images(kubeadm, VERSIONS)


# ---------------------------------------------------------------------------------------------------
# Downloads


def test_binaries_and_manifest_land_in_the_bundle_layout_with_their_sha256(tmp_path: Path, release: Release) -> None:
    stage = _stage(tmp_path)
    notes: list[str] = []
    download.fetch_binaries(VERSIONS, stage, notes.append, release.mirrors)
    download.fetch_gateway_api(stage, notes.append, release.mirrors)

    by_path = {f.path: f for f in stage.files}
    plugins = [f"bin/cni/{p}" for p in CNI_PLUGINS]
    crds = f"manifests/gateway-api-{GATEWAY_API}.yaml"
    want = ["bin/kubeadm", "bin/kubelet", "bin/kubectl", "bin/crictl", *plugins, "manifests/calico-3.31.0.yaml", crds]
    assert sorted(by_path) == sorted(want)
    assert not (stage.path / "bin/cni/LICENSE").exists() and not (stage.path / "bin/cni/README.md").exists()
    for rel, entry in by_path.items():
        target = stage.path / rel
        assert entry.sha256 == sha256_file(target) and entry.size == target.stat().st_size
        assert entry.source.startswith(release.base)
        if rel.startswith("bin/"):
            assert os.access(target, os.X_OK), rel
    assert (stage.path / "bin/kubelet").read_bytes() == release.kubelet
    assert by_path["bin/kubelet"].sha256 == _sha(release.kubelet)
    assert (by_path["bin/kubeadm"].component, by_path["bin/kubeadm"].version) == ("kubernetes", "1.37.2")
    assert (by_path["bin/crictl"].component, by_path["bin/crictl"].version) == ("crictl", "1.37.0")
    assert (by_path["bin/cni/portmap"].component, by_path["bin/cni/portmap"].version) == ("cni-plugins", "1.10.0")
    assert by_path["bin/cni/portmap"].source == release.mirrors.cni_url() + "#portmap"
    assert (by_path["manifests/calico-3.31.0.yaml"].component, by_path["bin/kubectl"].image) == ("calico", "")
    assert (stage.path / "manifests/calico-3.31.0.yaml").read_text() == CALICO_YAML
    assert (by_path[crds].component, by_path[crds].version) == ("gateway-api-crds", GATEWAY_API)
    assert (stage.path / crds).read_text() == GATEWAY_CRDS
    assert any("kubelet" in n and "sha256 verified" in n for n in notes), notes
    # Nothing but the layout is left in the stage (tarballs stay in the download cache).
    assert sorted(p.name for p in stage.path.iterdir()) == ["bin", "images", "manifests"]

    # A second build takes the verified files from the download cache: only the checksums are fetched.
    before = len(release.served.requests)
    download.fetch_binaries(VERSIONS, _stage(tmp_path), notes.append, release.mirrors)
    fetched = [p for _, p, _ in release.served.requests[before:]]
    assert all(p.endswith((".sha256", "calico-vxlan.yaml", "standard-install.yaml")) for p in fetched), fetched


def test_a_corrupt_download_is_refused_and_not_kept(tmp_path: Path, release: Release) -> None:
    url = release.mirrors.kube_url(VERSIONS, "kubelet")
    release.served.corrupt.add(release.path(url))
    stage = _stage(tmp_path)
    with pytest.raises(ProvisionError) as err:
        download.fetch_binaries(VERSIONS, stage, lambda _: None, release.mirrors)
    message = err.value.message
    bad = bytes([release.kubelet[0] ^ 0xFF]) + release.kubelet[1:]
    assert (
        f"kubelet downloaded from {url} has sha256 {_sha(bad)} but the published sha256 is {_sha(release.kubelet)}"
        in message
    )
    assert message.count(". ") == 0 and message.endswith("intact files")  # one sentence
    assert not (stage.path / "bin/kubelet").exists()
    assert "bin/kubelet" not in {f.path for f in stage.files}
    assert not list((tmp_path / "cache").rglob("kubelet*")), "nothing of the corrupt file stays in the cache"

    release.served.corrupt.clear()
    download.fetch_binaries(VERSIONS, stage, lambda _: None, release.mirrors)
    assert (stage.path / "bin/kubelet").read_bytes() == release.kubelet


def test_an_interrupted_download_resumes_with_a_range_request(tmp_path: Path, release: Release) -> None:
    url = release.mirrors.kube_url(VERSIONS, "kubelet")
    path = release.path(url)
    release.served.cut[path] = 100_000
    dest = tmp_path / "kubelet"
    once = replace(release.mirrors, retries=1)
    with pytest.raises(ProvisionError, match=r"failed 1 times .*100000 of 300000 bytes.*resumes"):
        download.fetch_checked(url, dest, once, lambda _: None)
    parts = list((tmp_path / "cache").rglob("kubelet.part"))
    assert len(parts) == 1 and parts[0].read_bytes() == release.kubelet[:100_000]
    assert not dest.exists()

    notes: list[str] = []
    download.fetch_checked(url, dest, release.mirrors, notes.append)
    assert release.served.gets(path) == ["", "bytes=100000-"]
    assert dest.read_bytes() == release.kubelet
    assert not parts[0].exists()
    assert any("resuming at 0.1 MB" in n for n in notes), notes


def test_a_cut_download_is_resumed_by_the_next_attempt_of_the_same_run(tmp_path: Path, release: Release) -> None:
    url = release.mirrors.kube_url(VERSIONS, "kubelet")
    release.served.cut[release.path(url)] = 12_345
    download.fetch_checked(url, tmp_path / "kubelet", release.mirrors, lambda _: None)
    assert release.served.gets(release.path(url)) == ["", "bytes=12345-"]
    assert (tmp_path / "kubelet").read_bytes() == release.kubelet


def test_a_server_that_ignores_range_gets_a_fresh_download(tmp_path: Path, release: Release) -> None:
    url = release.mirrors.kube_url(VERSIONS, "kubelet")
    path = release.path(url)
    release.served.ignore_range = True
    release.served.cut[path] = 50_000
    notes: list[str] = []
    download.fetch_checked(url, tmp_path / "kubelet", release.mirrors, notes.append)
    assert release.served.gets(path) == ["", "bytes=50000-"]  # asked to resume, was sent the whole file
    assert (tmp_path / "kubelet").read_bytes() == release.kubelet
    assert any("cannot resume" in n for n in notes), notes


@pytest.mark.parametrize("size", [2_400, 400_000], ids=["wrong-prefix", "longer-than-the-file"])
def test_a_stale_part_that_does_not_match_is_downloaded_again(tmp_path: Path, release: Release, size: int) -> None:
    url = release.mirrors.kube_url(VERSIONS, "kubelet")
    stale = download._cache_path(url).with_name("kubelet.part")
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"x" * size)
    download.fetch_checked(url, tmp_path / "kubelet", release.mirrors, lambda _: None)
    # A prefix that is not the file's is found by the sha256 after resuming; one longer than the file
    # by the server's 416. Either way the file is fetched again from its start.
    assert release.served.gets(release.path(url)) == [f"bytes={size}-", ""]
    assert (tmp_path / "kubelet").read_bytes() == release.kubelet


def test_a_silent_server_times_out_and_is_retried(tmp_path: Path, release: Release) -> None:
    url = release.mirrors.kube_url(VERSIONS, "kubectl")
    release.served.stall[release.path(url)] = 1.5
    quick = replace(release.mirrors, timeout=0.5)
    started = time.monotonic()
    download.fetch_checked(url, tmp_path / "kubectl", quick, lambda _: None)
    assert time.monotonic() - started < 1.5
    assert len(release.served.gets(release.path(url))) == 2


def test_a_missing_file_or_checksum_fails_at_once(tmp_path: Path, release: Release) -> None:
    url = release.mirrors.kube_url(Versions("1.99.0", "3.31.0"), "kubeadm")
    with pytest.raises(ProvisionError, match=r"kubeadm.sha256 answered HTTP 404 .*check the version"):
        download.fetch_checked(url, tmp_path / "kubeadm", release.mirrors, lambda _: None)
    assert len(release.served.requests) == 1
    good = release.mirrors.kube_url(VERSIONS, "kubectl")
    release.served.files[release.path(good) + ".sha256"] = b"<html>not found</html>"
    with pytest.raises(ProvisionError, match="does not hold a sha256 digest"):
        download.fetch_checked(good, tmp_path / "kubectl", release.mirrors, lambda _: None)


def test_a_cni_tarball_without_the_needed_plugins_is_refused(tmp_path: Path, release: Release) -> None:
    data = _tarball({"./loopback": (b"x", 0o755), "./bridge": (b"x", 0o755)})
    path = release.path(release.mirrors.cni_url())
    release.served.files[path] = data
    release.served.files[path + ".sha256"] = _sha(data).encode()
    with pytest.raises(ProvisionError, match=r"lacks the CNI plugin.*host-local, portmap, bandwidth, tuning"):
        download.fetch_binaries(VERSIONS, _stage(tmp_path), lambda _: None, release.mirrors)


def test_reachable_says_which_site_does_not_answer(release: Release) -> None:
    local = replace(release.mirrors, registries={"registry.k8s.io": release.base[7:], "docker.io": release.base[7:]})
    local = replace(local, registry_tls_verify=False)
    assert download.reachable(local) == ""
    assert {m for m, _, _ in release.served.requests} == {"HEAD"}

    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    reason = download.reachable(replace(local, calico_base=f"{closed}/calico"))
    assert reason.startswith(f"{closed}/calico did not answer within 1 s")


# ---------------------------------------------------------------------------------------------------
# Images, through skopeo and a registry on 127.0.0.1


def _ensure_tools() -> str:
    """Empty when skopeo and docker-registry are here (installed with apt-get when missing), else why not."""
    missing = [
        pkg for tool, pkg in (("skopeo", "skopeo"), ("docker-registry", "docker-registry")) if not shutil.which(tool)
    ]
    if not missing:
        return ""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{' and '.join(missing)} not installed and this is not root with apt-get to install them"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
        if proc.returncode != 0:  # the package lists may be missing or old
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300, check=False)
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        return f"`apt-get install {' '.join(missing)}` did not finish within 10 minutes"
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-2:])
        return f"`apt-get install {' '.join(missing)}` failed: {tail}"
    still = [tool for tool in ("skopeo", "docker-registry") if not shutil.which(tool)]
    return f"{', '.join(still)} still missing after apt-get install" if still else ""


def _oci_layout(root: Path, refs: list[str]) -> None:
    """An OCI image layout with one tiny single-layer image per ref; each image's hello.txt names it."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> dict[str, object]:
        digest = _sha(data)
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    manifests = []
    for ref in refs:
        layer = _tarball({"hello.txt": (ref.encode(), 0o644)}, gz=False)
        layer_desc = blob(layer) | {"mediaType": "application/vnd.oci.image.layer.v1.tar"}
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{_sha(layer)}"]},
        }
        config_desc = blob(json.dumps(config).encode()) | {"mediaType": "application/vnd.oci.image.config.v1+json"}
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config_desc,
            "layers": [layer_desc],
        }
        desc = blob(json.dumps(manifest).encode()) | {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "annotations": {"org.opencontainers.image.ref.name": ref},
        }
        manifests.append(desc)
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": manifests}))
    (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))


@dataclass
class Registry:
    host: str  # 127.0.0.1:PORT


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """docker-registry on a random 127.0.0.1 port holding a tiny image under each path the test's
    kubeadm and calico.yaml name (so that registry.k8s.io and docker.io can both be mirrored to it)."""
    why = _ensure_tools()
    if why:
        pytest.skip(f"the image tests need a local registry: {why}")
    root = tmp_path_factory.mktemp("registry")
    config = root / "config.yml"
    config.write_text(
        f"version: 0.1\nlog: {{level: info}}\nstorage: {{filesystem: {{rootdirectory: {root / 'data'}}}}}\n"
        "http: {addr: '127.0.0.1:0', secret: test-only}\n"
    )
    log_path = root / "registry.log"
    with log_path.open("wb") as log_file:
        reg = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log_file, stderr=subprocess.STDOUT)
    try:
        host = ""
        deadline = time.monotonic() + 15
        while not host and time.monotonic() < deadline and reg.poll() is None:
            found = re.search(r"listening on (127\.0\.0\.1:\d+)", log_path.read_text(errors="replace"))
            host = found.group(1) if found else ""
            time.sleep(0.05)
        if not host:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            pytest.skip(f"docker-registry did not start listening on 127.0.0.1 within 15 s: {' | '.join(tail)}")
        refs = {ImageRef.parse(name) for name in ALL_IMAGES}
        layout = root / "oci"
        _oci_layout(layout, sorted(r.name for r in refs))
        for ref in refs:
            subprocess.run(
                [
                    "skopeo",
                    "copy",
                    "--quiet",
                    "--dest-tls-verify=false",
                    f"oci:{layout}:{ref.name}",
                    f"docker://{host}/{ref.path}:{ref.tag}",
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
        yield Registry(host)
    finally:
        reg.terminate()
        try:
            reg.wait(10)
        except subprocess.TimeoutExpired:
            reg.kill()
            reg.wait()


def _archive(path: Path) -> tuple[list[str], bytes]:
    """The RepoTags and the hello.txt of a single-image docker-archive tarball."""
    with tarfile.open(path) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        (entry,) = json.load(member)
        layer = tar.extractfile(entry["Layers"][0])
        assert layer is not None
        with tarfile.open(fileobj=io.BytesIO(layer.read())) as inner:
            hello = inner.extractfile("hello.txt")
            assert hello is not None
            return list(entry["RepoTags"]), hello.read()


SMOKE_NAME = "provisioner.local/smoke-web:1.37.2"


@pytest.fixture
def smoke_stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The smoke-test image's build (a real go build, tests/unit/test_bundle_smoke.py) replaced by a
    stand-in archive of the same name; the versions asked for are recorded."""
    asked: list[str] = []

    def stand_in(kube_version: str, log_file: Path | None = None, on_progress: object = None) -> Path:
        asked.append(kube_version)
        program = tmp_path / "smoke-web-stand-in"
        program.write_bytes(b"smoke-web stand-in")
        out = smoke.archive_path(kube_version)
        out.parent.mkdir(parents=True, exist_ok=True)
        img.write_archive(img.ImageSpec(name=smoke.image_name(kube_version), files={"/smoke-web": program}), out, None)
        return out

    monkeypatch.setattr(smoke, "ensure_archive", stand_in)
    monkeypatch.setattr(source, "check_go", lambda: "go1.26.8")
    return asked


def test_a_full_download_fills_the_staged_bundle(
    tmp_path: Path, release: Release, registry: Registry, smoke_stand_in: list[str]
) -> None:
    mirrors = replace(
        release.mirrors,
        registries={"registry.k8s.io": registry.host, "docker.io": registry.host},
        registry_tls_verify=False,
    )
    stage = _stage(tmp_path)
    notes: list[str] = []
    # With the ingress add-on: Traefik's image and the Gateway API's CRDs as well.
    assert download.build(VERSIONS, stage, notes.append, mirrors, ingress=True) is stage
    bundle = finish(stage, created="2026-01-01T00:00:00Z")
    assert source.has_ingress(bundle) and (bundle.path / source.gateway_api_rel()).read_text() == GATEWAY_CRDS

    assert bundle.path == tmp_path / "bundles" / VERSIONS.name
    loaded = load(bundle.path)
    assert verify_files(loaded) == []
    assert {"download", "images"} <= set(loaded.timings)
    names = [ImageRef.parse(n).name for n in ALL_IMAGES]
    assert sorted(f.image for f in loaded.images) == sorted([*names, SMOKE_NAME])
    # verify's smoke-test image, which no registry has, is in the bundle as in a source-built one.
    assert smoke_stand_in == ["1.37.2"]
    assert smoke_image(loaded) == SMOKE_NAME
    entry = next(f for f in loaded.images if f.image == SMOKE_NAME)
    assert (entry.path, entry.component, entry.version) == ("images/smoke-web.tar", "smoke-web", "1.37.2")
    assert img.archive_tags(bundle.path / entry.path) == [SMOKE_NAME]
    assert any(SMOKE_NAME in n for n in notes), notes
    for entry in loaded.images:
        if entry.image == SMOKE_NAME:
            continue
        tags, hello = _archive(bundle.path / entry.path)
        assert tags == [entry.image]  # the name kubeadm / the manifest asks for
        assert hello == entry.image.encode()  # and the image pulled for it through the mirror
        assert entry.source.startswith(f"docker://{registry.host}/")
        component = (
            "kubernetes" if entry.image in KUBEADM_IMAGES else "addons" if entry.image in ADDON_IMAGES else "calico"
        )
        assert entry.component == component
    assert (bundle.path / "images/registry.k8s.io_kube-apiserver_v1.37.2.tar").is_file()
    by_image = {f.image: f for f in loaded.images}
    assert by_image["docker.io/calico/cni:v3.31.0"].version == "3.31.0"
    assert by_image["registry.k8s.io/pause:3.10"].version == "1.37.2"
    assert {f.path for f in loaded.files if not f.image} >= {"bin/kubeadm", "bin/crictl", "bin/cni/loopback"}
    assert any(n.startswith(f"image {len(ALL_IMAGES)}/{len(ALL_IMAGES)}: ") for n in notes), notes
    assert by_image["docker.io/library/busybox:1.37.0"].version == "1.37.0"


def test_without_go_the_download_is_refused_before_anything_is_fetched(tmp_path: Path, release: Release) -> None:
    def no_go() -> str:
        raise ToolMissing("Go 1.26 or newer", "run scripts/setup.sh")

    stage = _stage(tmp_path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(source, "check_go", no_go)
        mp.setattr(download, "skopeo", lambda: "/usr/bin/skopeo")
        with pytest.raises(ToolMissing, match=r"Go 1\.26 or newer"):
            download.build(VERSIONS, stage, lambda _: None, release.mirrors)
    assert release.served.requests == []
    assert sorted(p.name for p in (stage.path / "bin").iterdir()) == []


def test_an_image_the_registry_lacks_fails_with_the_name(tmp_path: Path, release: Release, registry: Registry) -> None:
    stage = _stage(tmp_path)
    mirrors = replace(release.mirrors, registries={"registry.k8s.io": registry.host}, registry_tls_verify=False)
    with pytest.raises(ProvisionError, match=r"could not save image registry.k8s.io/etcd:3.6.0-0 from docker://127"):
        download.save_image("registry.k8s.io/etcd:3.6.0-0", stage, replace(mirrors, retries=0), "kubernetes", "1.37.2")
    assert list((stage.path / "images").iterdir()) == []
