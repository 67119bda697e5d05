"""The `--from download` bundle source: release binaries, the Calico manifest and every image, fetched
from the upstream release sites (or mirrors of them) on a connected machine.

Binaries are checked against the sha256 the release site publishes beside each file; a download that
is cut short is kept as a `.part` file under `cache_root()/downloads` and resumed with an HTTP Range
request on the next attempt (or the next run). Images are the ones the downloaded kubeadm lists for the
release plus the `image:` fields of the Calico manifest, each saved with skopeo as a docker-archive
tarball tagged with the name kubeadm or the manifest asks for; and verify's smoke-test image, which is
the project's own and is built here from bundle/images exactly as the source build makes it (so this
source needs Go too).

Every URL, registry mirror, the crictl and CNI plugin releases and the network limits are data in
`Mirrors`; `PROVISION_BUNDLE_MIRRORS` may name a JSON or YAML file that overrides any of them, e.g.

    kube_base: http://mirror.example/k8s-release
    registries: {registry.k8s.io: "mirror.example:5000", docker.io: "mirror.example:5000"}
    registry_tls_verify: false
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import http.client
import logging
import os
import platform
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from provisioner import proc
from provisioner.bundle import Bundle, Versions, add_file, cache_root, sha256_file
from provisioner.errors import ProvisionError, ToolMissing

log = logging.getLogger(__name__)

MIRRORS_ENV = "PROVISION_BUNDLE_MIRRORS"
KUBE_BINARIES = ("kubeadm", "kubelet", "kubectl")
# The CNI plugins a kubeadm + Calico node needs (Calico installs its own calico/calico-ipam).
CNI_REQUIRED = ("loopback", "host-local", "portmap", "bandwidth", "tuning")
# The registries whose answer `reachable` checks besides the download sites, with the host that
# serves each one's registry API.
PROBE_REGISTRIES = {"registry.k8s.io": "registry.k8s.io", "docker.io": "registry-1.docker.io"}
DOCKER_HUB = "docker.io"
CHUNK = 1 << 16
PROGRESS_EVERY = 1.0  # seconds between progress lines of one download

ProgressFn = Callable[[str], None]


def _host_arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)


@dataclass(frozen=True)
class Mirrors:
    """Where the download source fetches from, which auxiliary releases it takes, and its limits."""

    kube_base: str = "https://dl.k8s.io/release"
    crictl_base: str = "https://github.com/kubernetes-sigs/cri-tools/releases/download"
    cni_base: str = "https://github.com/containernetworking/plugins/releases/download"
    calico_base: str = "https://raw.githubusercontent.com/projectcalico/calico"
    helm_base: str = "https://get.helm.sh"
    gateway_api_base: str = "https://github.com/kubernetes-sigs/gateway-api/releases/download"
    crictl_version: str = "1.37.0"
    # The helm client `provision.py helm` fetches where no source bundle carries one: the release the
    # source bundle builds (bundle/helm/go.mod; a unit test holds the two equal).
    helm_version: str = "4.3.2"
    cni_version: str = "1.10.0"
    # Registry host -> mirror "host[:port]" serving the same repositories (e.g. registry.k8s.io or
    # docker.io -> a pull-through cache). Unlisted registries are pulled from directly.
    registries: Mapping[str, str] = field(default_factory=dict)
    registry_tls_verify: bool = True  # false for a plain-HTTP mirror (passes --src-tls-verify=false)
    arch: str = field(default_factory=_host_arch)  # the nodes' architecture, as the releases spell it
    timeout: float = 30.0  # seconds of silence before a connection or read gives up
    retries: int = 4  # attempts per file before the build fails
    retry_delay: float = 2.0  # seconds before the second attempt, doubled after each failure
    probe_timeout: float = 3.0  # seconds for each HEAD request of `reachable`
    image_timeout: float = 1800.0  # seconds for one skopeo copy

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], origin: str) -> Mirrors:
        """Mirrors with the defaults overridden by `data` (keys are the field names)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ProvisionError(
                f"{origin} has unknown key(s) {', '.join(unknown)}; use only {', '.join(sorted(fields))}", exit_code=2
            )
        values: dict[str, Any] = {}
        for key, value in data.items():
            default = getattr(cls(), key)
            if key == "registries":
                if not isinstance(value, Mapping) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in value.items()
                ):
                    raise ProvisionError(
                        f"{origin}: registries must map registry hosts to mirror host:port strings", exit_code=2
                    )
                values[key] = {k: v.rstrip("/") for k, v in value.items()}
            elif isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ProvisionError(f"{origin}: {key} must be true or false, not {value!r}", exit_code=2)
                values[key] = value
            elif isinstance(default, int | float):
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    raise ProvisionError(f"{origin}: {key} must be a non-negative number, not {value!r}", exit_code=2)
                values[key] = type(default)(value)
            else:
                if not isinstance(value, str) or not value:
                    raise ProvisionError(f"{origin}: {key} must be a non-empty string, not {value!r}", exit_code=2)
                if key.endswith("_base"):
                    value = value.rstrip("/")
                elif key.endswith("_version"):
                    value = value.lstrip("v")
                values[key] = value
        return cls(**values)

    @classmethod
    def from_file(cls, path: Path) -> Mirrors:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ProvisionError(
                f"cannot read the bundle mirrors file {path} ({exc}); fix it or unset {MIRRORS_ENV}", exit_code=2
            ) from exc
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ProvisionError(
                f"{path} must hold a mapping of mirror settings; fix it or unset {MIRRORS_ENV}", exit_code=2
            )
        return cls.from_mapping(data, str(path))

    @classmethod
    def from_env(cls) -> Mirrors:
        """The defaults, overridden by the file $PROVISION_BUNDLE_MIRRORS names (JSON or YAML)."""
        path = os.environ.get(MIRRORS_ENV)
        return cls.from_file(Path(path)) if path else cls()

    # The release URLs.
    def kube_url(self, versions: Versions, name: str) -> str:
        return f"{self.kube_base}/{versions.kube_tag}/bin/linux/{self.arch}/{name}"

    def crictl_url(self) -> str:
        v = self.crictl_version
        return f"{self.crictl_base}/v{v}/crictl-v{v}-linux-{self.arch}.tar.gz"

    def cni_url(self) -> str:
        v = self.cni_version
        return f"{self.cni_base}/v{v}/cni-plugins-linux-{self.arch}-v{v}.tgz"

    def helm_url(self) -> str:
        return f"{self.helm_base}/helm-v{self.helm_version}-linux-{self.arch}.tar.gz"

    def calico_url(self, versions: Versions) -> str:
        return f"{self.calico_base}/v{versions.calico}/manifests/calico-vxlan.yaml"

    def gateway_api_url(self, version: str) -> str:
        return f"{self.gateway_api_base}/{version}/standard-install.yaml"

    def image_source(self, image: ImageRef) -> str:
        """The `docker://` reference skopeo pulls `image` from (its registry's mirror, if any)."""
        registry = self.registries.get(image.registry, image.registry)
        return f"docker://{registry}/{image.path}{image.suffix}"


# ---------------------------------------------------------------------------------------------------
# Images


@dataclass(frozen=True)
class ImageRef:
    """An image name split the way a container runtime reads it (short names are Docker Hub's)."""

    registry: str  # registry.k8s.io, docker.io, quay.io, 127.0.0.1:5000
    path: str  # kube-apiserver, calico/cni, library/busybox
    tag: str  # v1.37.2 ("" when only a digest is given)
    digest: str = ""  # sha256:... when the name pins one

    @classmethod
    def parse(cls, name: str) -> ImageRef:
        rest, _, digest = name.strip().partition("@")
        slash = rest.find("/")
        first = rest[:slash] if slash >= 0 else ""
        if first and ("." in first or ":" in first or first == "localhost"):
            registry, path = first, rest[slash + 1 :]
        else:
            registry, path = DOCKER_HUB, rest
        last = path.rsplit("/", 1)[-1]
        tag = ""
        if ":" in last:
            path, _, tag = path.rpartition(":")
        if registry == DOCKER_HUB and "/" not in path:
            path = f"library/{path}"
        if not path or not re.fullmatch(r"[a-z0-9._/-]+", path):
            raise ProvisionError(f"{name!r} is not an image name; fix the image list it came from")
        if not tag and not digest:
            tag = "latest"  # what a container runtime pulls for a name without tag or digest
        if not tag:
            raise ProvisionError(
                f"image {name!r} is pinned by digest only, which a docker-archive tarball cannot carry as a name; give it a tag as well"
            )
        return cls(registry, path, tag, digest)

    @property
    def name(self) -> str:
        """The full name the tarball carries (and containerd resolves a short name to)."""
        return f"{self.registry}/{self.path}:{self.tag}"

    @property
    def suffix(self) -> str:
        return f"@{self.digest}" if self.digest else f":{self.tag}"

    @property
    def file_name(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{self.registry}/{self.path}_{self.tag}") + ".tar"


def kubeadm_images(kubeadm: Path, versions: Versions) -> list[str]:
    """The images kubeadm says this release needs (`kubeadm config images list`)."""
    try:
        out = proc.run(
            [str(kubeadm), "config", "images", "list", "--kubernetes-version", versions.kube_tag],
            timeout=120,
            what="kubeadm config images list",
        ).stdout
    except OSError as exc:
        raise ProvisionError(
            f"the downloaded {kubeadm.name} does not run on this {platform.machine()} machine ({exc.strerror}); build the bundle on a machine of the nodes' architecture (arch in {MIRRORS_ENV})"
        ) from exc
    names = [line.strip() for line in out.splitlines() if line.strip()]
    if not names:
        raise ProvisionError(
            f"{kubeadm} config images list printed no images; check that the downloaded kubeadm runs here"
        )
    return names


def manifest_images(text: str, origin: str) -> list[str]:
    """Every `image:` value of a Kubernetes manifest, in order, without repeats."""
    loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        docs = list(yaml.load_all(text, Loader=loader))
    except yaml.YAMLError as exc:
        raise ProvisionError(f"{origin} is not valid YAML ({exc}); check the Calico release and mirror") from exc
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "image" and isinstance(value, str):
                    if value not in found:
                        found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for doc in docs:
        walk(doc)
    if not found:
        raise ProvisionError(f"{origin} names no images; check the Calico release and mirror")
    return found


def skopeo() -> str:
    path = shutil.which("skopeo")
    if path is None:
        raise ToolMissing("skopeo", "install it with `apt-get install skopeo`")
    return path


def _policy_args() -> list[str]:
    """skopeo refuses to run without a trust policy; where the machine has none, accept any image
    (the tarball's sha256 is recorded either way)."""
    home = Path(os.environ.get("HOME", "/root"))
    if (home / ".config/containers/policy.json").is_file() or Path("/etc/containers/policy.json").is_file():
        return []
    log.info("no containers policy.json on this machine: running skopeo with --insecure-policy")
    return ["--insecure-policy"]


def save_image(name: str, stage: Bundle, mirrors: Mirrors, component: str, version: str) -> None:
    """Save one image into images/ as a docker-archive tarball tagged `name` and record it."""
    ref = ImageRef.parse(name)
    rel = f"images/{ref.file_name}"
    target = stage.path / rel
    target.unlink(missing_ok=True)  # docker-archive refuses to add to an existing file
    source = mirrors.image_source(ref)
    cmd = [skopeo(), *_policy_args(), "--override-os", "linux", "--override-arch", mirrors.arch]
    cmd += ["copy", "--quiet", "--retry-times", str(mirrors.retries)]
    if not mirrors.registry_tls_verify:
        cmd.append("--src-tls-verify=false")
    cmd += [source, f"docker-archive:{target}:{ref.name}"]
    try:
        proc.run(cmd, timeout=mirrors.image_timeout, what=f"skopeo copy {source}")
    except ProvisionError as exc:
        target.unlink(missing_ok=True)
        raise ProvisionError(
            f"could not save image {name} from {source} ({exc.message}); check the registry or set a mirror in {MIRRORS_ENV}"
        ) from exc
    add_file(stage, rel, component, version, source, image=ref.name)


def save_images(
    stage: Bundle, versions: Versions, mirrors: Mirrors, on_progress: ProgressFn, ingress: bool = False
) -> None:
    """Every image kubeadm and the staged Calico manifest name, and the add-ons' (the ingress add-on's
    with `ingress`), saved into the staged bundle."""
    wanted: list[tuple[str, str, str]] = []
    for name in kubeadm_images(stage.path / "bin" / "kubeadm", versions):
        wanted.append((name, "kubernetes", versions.kubernetes))
    manifest = stage.path / "manifests" / f"calico-{versions.calico}.yaml"
    for name in manifest_images(manifest.read_text(encoding="utf-8"), str(manifest)):
        wanted.append((name, "calico", versions.calico))
    from provisioner.bundle import source

    for name in source.addon_images(kind="download", ingress=ingress):
        wanted.append((name, "addons", ImageRef.parse(name).tag or "latest"))
    unique: dict[str, tuple[str, str, str]] = {}
    for item in wanted:
        unique.setdefault(ImageRef.parse(item[0]).name, item)
    for index, (name, component, version) in enumerate(unique.values(), 1):
        on_progress(f"image {index}/{len(unique)}: {name}")
        save_image(name, stage, mirrors, component, version)


# ---------------------------------------------------------------------------------------------------
# Files


class _Retryable(Exception):
    """A transfer failure worth another attempt (timeout, reset, short body, 5xx)."""


def download_cache() -> Path:
    return cache_root() / "downloads"


def _cache_path(url: str) -> Path:
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    name = PurePosixPath(urllib.parse.urlsplit(url).path).name or "download"
    return download_cache() / key / name


def _open(url: str, mirrors: Mirrors, headers: Mapping[str, str] | None = None, method: str = "GET") -> Any:
    req = urllib.request.Request(url, headers=dict(headers or {}), method=method)
    req.add_header("User-Agent", "provisioner-bundle/1")
    try:
        return urllib.request.urlopen(req, timeout=mirrors.timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416:
            return exc  # the caller restarts without Range
        if exc.code >= 500 or exc.code in (408, 429):
            raise _Retryable(f"HTTP {exc.code} {exc.reason}") from exc
        raise ProvisionError(
            f"{url} answered HTTP {exc.code} {exc.reason}; check the version and the mirror in {MIRRORS_ENV}"
        ) from exc
    except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets, TLS errors
        raise _Retryable(str(getattr(exc, "reason", exc))) from exc


def _with_retries(what: str, mirrors: Mirrors, attempt: Callable[[], Any]) -> Any:
    delay = mirrors.retry_delay
    tries = max(1, mirrors.retries)
    for n in range(1, tries + 1):
        try:
            return attempt()
        except _Retryable as exc:
            if n == tries:
                raise ProvisionError(
                    f"downloading {what} failed {tries} times (last: {exc}); check the network or the mirror in {MIRRORS_ENV} and run the build again (a partial download resumes)"
                ) from exc
            log.warning("%s: attempt %d/%d failed (%s); retrying in %.1f s", what, n, tries, exc, delay)
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover


def published_sha256(url: str, mirrors: Mirrors) -> str:
    """The hex digest in the `.sha256` file at `url` (a digest, optionally followed by a name)."""

    def attempt() -> str:
        resp = _open(url, mirrors)
        with resp:
            try:
                return str(resp.read(4096).decode("utf-8", "replace"))
            except (OSError, http.client.HTTPException) as exc:
                raise _Retryable(str(exc)) from exc

    text: str = _with_retries(url, mirrors, attempt)
    words = text.split()
    digest = words[0].lower() if words else ""
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ProvisionError(f"{url} does not hold a sha256 digest; check the mirror in {MIRRORS_ENV}")
    return digest


def _transfer(url: str, part: Path, mirrors: Mirrors, on_progress: ProgressFn, resume: bool) -> None:
    """One attempt: fetch `url` into `part`, continuing after its bytes when `resume` and the server
    honours Range. Raises _Retryable when the body ends early (the bytes so far stay in `part`)."""
    name = part.name.removesuffix(".part")
    have = part.stat().st_size if resume and part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    resp = _open(url, mirrors, headers)
    if isinstance(resp, urllib.error.HTTPError):  # 416: what we hold is not a prefix of the file
        resp.close()
        log.info("%s: the server refused the range from byte %d; downloading it again", name, have)
        part.unlink(missing_ok=True)
        have = 0
        resp = _open(url, mirrors)
    with resp:
        status = resp.status
        content_range = resp.headers.get("Content-Range", "")
        length = resp.headers.get("Content-Length")
        if status == 206 and not (have and content_range.startswith(f"bytes {have}-")):
            part.unlink(missing_ok=True)
            raise _Retryable(f"unexpected partial answer {content_range!r} to a request from byte {have}")
        if status == 206:
            mode = "ab"
            on_progress(f"{name}: resuming at {have / 1e6:.1f} MB")
        else:
            if have:
                log.info("%s: the server ignored the range request; downloading from the start", name)
                on_progress(f"{name}: the server cannot resume, downloading from the start")
            have, mode = 0, "wb"
        total = have + int(length) if length is not None and length.isdigit() else None
        got = have
        last = time.monotonic()
        with part.open(mode) as out:
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, TLS errors
                    raise _Retryable(f"{exc.__class__.__name__} after {got} bytes") from exc
                if not chunk:
                    break
                out.write(chunk)
                got += len(chunk)
                if time.monotonic() - last >= PROGRESS_EVERY:
                    last = time.monotonic()
                    of = f"/{total / 1e6:.1f}" if total else ""
                    on_progress(f"{name}: {got / 1e6:.1f}{of} MB")
    if total is not None and got < total:
        raise _Retryable(f"connection closed after {got} of {total} bytes")


def download_file(url: str, dest: Path | None, expected: str | None, mirrors: Mirrors, on_progress: ProgressFn) -> Path:
    """Download `url` (checked against the `expected` sha256, when given) into the download cache and
    copy it to `dest` (when given). Returns the cached file.

    A verified file already in the cache is reused; a `.part` file left by an interrupted download is
    resumed (checked files only). A file whose sha256 differs from `expected` is deleted and refused."""
    cached = _cache_path(url)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        lock = (cached.parent / ".lock").open("w")
    except OSError as exc:
        raise ProvisionError(
            f"cannot write to the download cache {cached.parent} ({exc.strerror}); set PROVISION_CACHE_DIR to a writable directory"
        ) from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another build fetching the same URL waits for this one
        _download_locked(url, cached, expected, mirrors, on_progress)
    if dest is not None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cached, dest)
    return cached


def _download_locked(url: str, cached: Path, expected: str | None, mirrors: Mirrors, on_progress: ProgressFn) -> None:
    part = cached.with_name(cached.name + ".part")
    name = cached.name
    if expected and cached.is_file() and sha256_file(cached) == expected:
        on_progress(f"{name}: in the download cache")
    else:
        cached.unlink(missing_ok=True)
        resume = expected is not None  # an unchecked file is always fetched whole
        resumed = resume and part.is_file() and part.stat().st_size > 0
        on_progress(f"{name}: downloading {url}")
        _with_retries(url, mirrors, lambda: _transfer(url, part, mirrors, on_progress, resume))
        digest = sha256_file(part)
        if expected and digest != expected and resumed:
            log.warning("%s: the resumed download does not match; downloading it again from the start", name)
            part.unlink()
            _with_retries(url, mirrors, lambda: _transfer(url, part, mirrors, on_progress, False))
            digest = sha256_file(part)
        if expected and digest != expected:
            part.unlink()
            raise ProvisionError(
                f"{name} downloaded from {url} has sha256 {digest} but the published sha256 is {expected}, so it was refused; run the build again, or point {MIRRORS_ENV} at a mirror with intact files"
            )
        part.rename(cached)
        on_progress(f"{name}: {cached.stat().st_size / 1e6:.1f} MB" + (", sha256 verified" if expected else ""))


def fetch_checked(url: str, dest: Path | None, mirrors: Mirrors, on_progress: ProgressFn) -> Path:
    """Download `url` (into `dest`, when given), verified against the digest published at `url`.sha256.
    Returns the verified file in the download cache."""
    return download_file(url, dest, published_sha256(f"{url}.sha256", mirrors), mirrors, on_progress)


def _members(archive: Path, url: str) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo, str]]:
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                base = PurePosixPath(member.name).name
                if member.isfile() and base and base not in (".", ".."):
                    yield tar, member, base
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ProvisionError(
            f"{archive.name} from {url} is not a readable tarball ({exc}); run the build again"
        ) from exc


def extract_executables(archive: Path, url: str, dest_dir: Path, names: tuple[str, ...] | None = None) -> list[str]:
    """Write the executable regular files of a tarball (only `names`, when given) flat into `dest_dir`."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    for tar, member, base in _members(archive, url):
        if (names is not None and base not in names) or not member.mode & 0o111:
            continue
        src = tar.extractfile(member)
        if src is None:
            continue
        target = dest_dir / base
        with src, target.open("wb") as out:
            shutil.copyfileobj(src, out)
        target.chmod(0o755)
        written.append(base)
    return written


# ---------------------------------------------------------------------------------------------------
# The source


def fetch_binaries(versions: Versions, stage: Bundle, on_progress: ProgressFn, mirrors: Mirrors) -> None:
    """kubeadm, kubelet, kubectl, crictl, the CNI plugins and the Calico manifest, into the stage."""
    for name in KUBE_BINARIES:
        url = mirrors.kube_url(versions, name)
        rel = f"bin/{name}"
        fetch_checked(url, stage.path / rel, mirrors, on_progress)
        (stage.path / rel).chmod(0o755)
        add_file(stage, rel, "kubernetes", versions.kubernetes, url)

    url = mirrors.crictl_url()
    tarball = fetch_checked(url, None, mirrors, on_progress)
    if "crictl" not in extract_executables(tarball, url, stage.path / "bin", ("crictl",)):
        raise ProvisionError(f"{url} holds no executable crictl; check crictl_version and the mirror in {MIRRORS_ENV}")
    add_file(stage, "bin/crictl", "crictl", mirrors.crictl_version, url)

    url = mirrors.cni_url()
    tarball = fetch_checked(url, None, mirrors, on_progress)
    plugins = extract_executables(tarball, url, stage.path / "bin" / "cni")
    missing = [p for p in CNI_REQUIRED if p not in plugins]
    if missing:
        raise ProvisionError(
            f"{url} lacks the CNI plugin(s) {', '.join(missing)}; check cni_version and the mirror in {MIRRORS_ENV}"
        )
    for plugin in sorted(plugins):
        add_file(stage, f"bin/cni/{plugin}", "cni-plugins", mirrors.cni_version, f"{url}#{plugin}")

    url = mirrors.calico_url(versions)
    rel = f"manifests/calico-{versions.calico}.yaml"
    download_file(url, stage.path / rel, None, mirrors, on_progress)
    add_file(stage, rel, "calico", versions.calico, url)


def fetch_gateway_api(stage: Bundle, on_progress: ProgressFn, mirrors: Mirrors) -> None:
    """The Gateway API's standard CRDs for the ingress add-on, at the version the source bundle takes."""
    from provisioner.bundle import source

    gateway_version = str(source.load_components()["gateway_api"]["version"])
    url = mirrors.gateway_api_url(gateway_version)
    rel = source.gateway_api_rel()
    download_file(url, stage.path / rel, None, mirrors, on_progress)
    add_file(stage, rel, "gateway-api-crds", gateway_version, url)


def build(
    versions: Versions,
    stage: Bundle,
    on_progress: ProgressFn,
    mirrors: Mirrors | None = None,
    log_file: Path | None = None,
    ingress: bool = False,
) -> Bundle:
    """Fill the staged bundle `stage` (from `staging_dir`) with everything downloaded for `versions`
    (the ingress add-on's CRDs and image with `ingress`),
    and verify's smoke-test image, which no release site has: it is built here from the project's own
    Go module, as the source build makes it (provisioner.bundle.smoke; `log_file` takes its go build
    output). The caller writes the manifest and moves it into place with `finish`."""
    from provisioner.bundle import smoke, source

    mirrors = mirrors or Mirrors.from_env()
    if stage.versions != versions:
        raise ProvisionError(
            f"the staged bundle is for {stage.versions.name}, not {versions.name}; stage it again with staging_dir"
        )
    skopeo()  # refuse before any download when images cannot be saved
    source.check_go()  # or the smoke-test image cannot be built
    started = time.monotonic()
    fetch_binaries(versions, stage, on_progress, mirrors)
    if ingress:
        fetch_gateway_api(stage, on_progress, mirrors)
    stage.timings["download"] = time.monotonic() - started
    started = time.monotonic()
    save_images(stage, versions, mirrors, on_progress, ingress=ingress)
    on_progress(f"image: {smoke.image_name(versions.kubernetes)} (built from bundle/images)")
    smoke.add_to_bundle(stage, log_file, on_progress)
    stage.timings["images"] = time.monotonic() - started
    return stage


def _probe(url: str, timeout: float) -> str:
    req = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "provisioner-bundle/1"})
    try:
        with contextlib.closing(urllib.request.urlopen(req, timeout=timeout)):
            return ""
    except urllib.error.HTTPError:
        return ""  # any HTTP answer means the site is there
    except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException, ValueError) as exc:
        return f"{url} did not answer within {timeout:g} s ({getattr(exc, 'reason', exc)})"


def probe_urls(mirrors: Mirrors) -> list[str]:
    """One URL per site the download source uses: the release sites and the image registries."""
    urls = [mirrors.kube_base, mirrors.crictl_base, mirrors.cni_base, mirrors.calico_base, mirrors.gateway_api_base]
    scheme = "https" if mirrors.registry_tls_verify else "http"
    for registry, api_host in PROBE_REGISTRIES.items():
        host = mirrors.registries.get(registry, api_host)
        urls.append(f"{scheme}://{host}/v2/")
    sites: dict[str, str] = {}
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        sites.setdefault(f"{parts.scheme}://{parts.netloc}", url)
    return list(sites.values())


def reachable(mirrors: Mirrors | None = None) -> str:
    """Empty when every release site and registry answers a HEAD request, else why not (for `--from auto`)."""
    mirrors = mirrors or Mirrors.from_env()
    urls = probe_urls(mirrors)
    with ThreadPoolExecutor(max_workers=len(urls)) as pool:
        reasons = [r for r in pool.map(lambda u: _probe(u, mirrors.probe_timeout), urls) if r]
    return "; ".join(reasons)
