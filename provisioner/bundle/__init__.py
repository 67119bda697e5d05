"""The Kubernetes + Calico bundle: every binary, image and manifest a kubeadm + Calico cluster needs,
in one directory, so that nodes install and import them and never reach a package repository or an
image registry.

One bundle holds one Kubernetes patch release and one Calico release:

    <bundle root>/<name>/
        bin/          kubeadm, kubelet, kubectl, crictl, the CNI plugins
        images/       one docker-archive tarball per image, tagged with the names kubeadm and the
                      Calico manifest ask for
        manifests/    calico-<version>.yaml
        tools/        helm, for this host (source bundles; a download bundle leaves it to
                      `provision.py helm`, which fetches the release once)
        manifest.json every file with its component, version, sha256 and source

Sources (one module each, all returning the same layout): `download` (release binaries and images
from the upstream release sites, checked by sha256) and `source` (built here from Go modules).
A bundle is complete or absent: it is assembled under a temporary name and renamed into place only
when every file is written and `manifest.json` lists it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner.errors import ProvisionError

# The toolkit's one default release pair, shared by every install source.
DEFAULT_KUBERNETES = "1.37.2"
DEFAULT_CALICO = "3.31.0"
# Releases the source build knows how to make (the Go module versions it pins in bundle/;
# components.yaml kubernetes_releases), oldest first: 1.36 is there for `upgrade`.
KNOWN_KUBERNETES = ("1.36.3", "1.37.2")
KNOWN_CALICO = ("3.31.0",)

MANIFEST = "manifest.json"
FORMAT = 1
DEFAULT_ROOT = Path("/var/cache/provisioner/bundles")


def bundle_root() -> Path:
    """Where bundles live: $PROVISION_BUNDLE_DIR, else /var/cache/provisioner/bundles (outside any
    clone, so every checkout and CI run on the machine shares them)."""
    return Path(os.environ.get("PROVISION_BUNDLE_DIR") or DEFAULT_ROOT)


def image_mirror() -> str:
    """The Debian mirror the images' userland is built from: $PROVISION_DEBIAN_MIRROR, else the host's."""
    from provisioner.image import host_debian_mirror

    return os.environ.get("PROVISION_DEBIAN_MIRROR") or host_debian_mirror()


def cache_root() -> Path:
    """Stable cache for builds (Go's module and build caches, downloads): $PROVISION_CACHE_DIR, else
    /var/cache/provisioner."""
    return Path(os.environ.get("PROVISION_CACHE_DIR") or "/var/cache/provisioner")


@dataclass(frozen=True)
class Versions:
    kubernetes: str  # "1.37.2", no leading v
    calico: str  # "3.31.0"

    @property
    def name(self) -> str:
        return f"k8s-{self.kubernetes}-calico-{self.calico}"

    @property
    def kube_tag(self) -> str:
        return f"v{self.kubernetes}"

    @property
    def kube_minor(self) -> str:
        return ".".join(self.kubernetes.split(".")[:2])


def resolve_versions(kubernetes: str | None, calico: str | None) -> Versions:
    """A minor ("1.37") resolves to the newest patch this toolkit knows; a full version is taken as is
    when known. Unknown versions are refused with the list of known ones."""
    kube = (kubernetes or DEFAULT_KUBERNETES).lstrip("v")
    cal = (calico or DEFAULT_CALICO).lstrip("v")
    kube_full = _pick(kube, KNOWN_KUBERNETES, "Kubernetes", "--kubernetes")
    cal_full = _pick(cal, KNOWN_CALICO, "Calico", "--calico")
    return Versions(kube_full, cal_full)


def _pick(want: str, known: tuple[str, ...], what: str, flag: str) -> str:
    parts = want.split(".")
    if not all(p.isdigit() for p in parts) or len(parts) not in (2, 3):
        raise ProvisionError(f"{what} version {want!r} is not X.Y or X.Y.Z; give e.g. {flag} {known[-1]}", exit_code=2)
    matches = [k for k in known if k == want or (len(parts) == 2 and k.startswith(want + "."))]
    if not matches:
        raise ProvisionError(
            f"the bundle knows {what} {', '.join(known)}, not {want}; pass {flag} {known[-1]}", exit_code=2
        )
    return sorted(matches, key=lambda v: [int(x) for x in v.split(".")])[-1]


@dataclass
class FileEntry:
    path: str  # relative to the bundle directory
    component: str
    version: str
    sha256: str
    source: str  # where it came from: a URL, or the Go module@version it was built from
    size: int = 0
    image: str = ""  # for images/: the image name it carries

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "path": self.path,
            "component": self.component,
            "version": self.version,
            "sha256": self.sha256,
            "source": self.source,
            "size": self.size,
        }
        if self.image:
            data["image"] = self.image
        return data


@dataclass
class Bundle:
    path: Path
    versions: Versions
    source: str  # download | source
    files: list[FileEntry] = field(default_factory=list)
    created: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def images(self) -> list[FileEntry]:
        return [f for f in self.files if f.path.startswith("images/")]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.versions.name,
            "kubernetes": self.versions.kubernetes,
            "calico": self.versions.calico,
            "source": self.source,
            "created": self.created,
            "timings": {k: round(v, 1) for k, v in self.timings.items()},
            "files": [f.to_dict() for f in sorted(self.files, key=lambda f: f.path)],
        }


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load(path: Path) -> Bundle:
    """A finished bundle directory; ProvisionError when it is not one."""
    man = path / MANIFEST
    try:
        data = json.loads(man.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ProvisionError(
            f"{path} is not a finished bundle ({MANIFEST}: {exc}); rebuild it with `bundle build --force`"
        ) from exc
    if data.get("format") != FORMAT:
        raise ProvisionError(
            f"{path} has bundle format {data.get('format')}, not {FORMAT}; rebuild it with `bundle build --force`"
        )
    try:
        files = [
            FileEntry(
                path=f["path"],
                component=f["component"],
                version=f["version"],
                sha256=f["sha256"],
                source=f["source"],
                size=int(f.get("size", 0)),
                image=f.get("image", ""),
            )
            for f in data["files"]
        ]
        return Bundle(
            path=path,
            versions=Versions(data["kubernetes"], data["calico"]),
            source=data["source"],
            files=files,
            created=data.get("created", ""),
            timings={k: float(v) for k, v in data.get("timings", {}).items()},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProvisionError(
            f"{path} is not a finished bundle ({MANIFEST} lacks {exc}); rebuild it with `bundle build --force`"
        ) from exc


def smoke_image(bundle: Bundle) -> str:
    """The smoke-test image the bundle carries for verify ("" when it has none, e.g. a download bundle)."""
    return next((f.image for f in bundle.images if "/smoke-web:" in f.image), "")


def find(versions: Versions, root: Path | None = None) -> Bundle | None:
    """The finished bundle for these versions, or None."""
    path = (root or bundle_root()) / versions.name
    if not (path / MANIFEST).is_file():
        return None
    return load(path)


def list_bundles(root: Path | None = None) -> Iterator[Bundle]:
    base = root or bundle_root()
    if not base.is_dir():
        return
    for child in sorted(base.iterdir()):
        if child.name.startswith(".") or not (child / MANIFEST).is_file():
            continue  # unfinished builds live under a dot name and are never listed
        try:
            yield load(child)
        except ProvisionError:
            continue


def verify_files(bundle: Bundle) -> list[str]:
    """Files whose sha256 no longer matches the manifest (or that are gone)."""
    bad = []
    for entry in bundle.files:
        target = bundle.path / entry.path
        if not target.is_file() or sha256_file(target) != entry.sha256:
            bad.append(entry.path)
    return bad


def staging_dir(versions: Versions, root: Path | None = None) -> Path:
    """A fresh directory to assemble a bundle in, beside where it will live (same file system, so the
    final rename is atomic). A leftover of an interrupted build is removed first."""
    base = root or bundle_root()
    base.mkdir(parents=True, exist_ok=True)
    stage = base / f".{versions.name}.partial"
    if stage.exists():
        shutil.rmtree(stage)
    for sub in ("bin", "images", "manifests"):
        (stage / sub).mkdir(parents=True)
    return stage


def add_file(bundle: Bundle, rel: str, component: str, version: str, source: str, image: str = "") -> FileEntry:
    target = bundle.path / rel
    entry = FileEntry(
        path=rel,
        component=component,
        version=version,
        sha256=sha256_file(target),
        source=source,
        size=target.stat().st_size,
        image=image,
    )
    bundle.files = [f for f in bundle.files if f.path != rel] + [entry]
    return entry


def finish(bundle: Bundle, created: str) -> Bundle:
    """Write manifest.json and move the staged bundle into place (replacing an older one)."""
    bundle.created = created
    man = bundle.path / MANIFEST
    man.write_text(json.dumps(bundle.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    final = bundle.path.parent / bundle.versions.name
    if final.exists():
        old = final.parent / f".{final.name}.old"
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
        bundle.path.rename(final)
        shutil.rmtree(old)
    else:
        bundle.path.rename(final)
    bundle.path = final
    return bundle
