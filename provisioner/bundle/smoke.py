"""verify's smoke-test image, `provisioner.local/smoke-web`, for every Kubernetes cluster.

The image holds one program of the project's own (bundle/images/cmd/smoke-web, no third-party code):
a web server that answers with its pod's name and doubles as the DNS and HTTP client of the checks.
It is a few megabytes and needs no registry, so every install mode carries it:

- a source-built bundle and a download bundle hold it in images/ (`add_to_bundle`), imported on the
  nodes with the bundle's other images;
- a cluster installed from pkgs.k8s.io gets the archive this module keeps in the cache
  (`ensure_archive`, called before the machines are made); the inventory names it
  (`kube_smoke_image_archive`) and the kube_packages role imports it on every node.

Both build it the same way, through the source builder's binary cache: `go build` of the
bundle/images module (seconds once Go's build cache is warm), then the image assembled without a
Docker daemon (provisioner.bundle.images).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from provisioner.bundle import Bundle, FileEntry, Versions, add_file, cache_root
from provisioner.bundle import images as img
from provisioner.errors import ProvisionError

log = logging.getLogger(__name__)

# The build of bundle/components.yaml that holds the smoke-web binary, and the image's recipe key.
BUILD = "images"
RECIPE = "smoke-web"
# Where a bundle keeps the image.
BUNDLE_FILE = "images/smoke-web.tar"

Progress = Callable[[str], None]


def image_name(kube_version: str) -> str:
    """The image's full name for a Kubernetes version, from components.yaml's `smoke_image`
    ("provisioner.local/smoke-web:1.37.2")."""
    from provisioner.bundle import source

    return source.render(str(source.load_components()["smoke_image"]), _versions(kube_version), "", "")


def archive_path(kube_version: str) -> Path:
    """Where `ensure_archive` keeps the image's docker-archive for this Kubernetes version (whether or
    not it has been made yet): under the cache directory, outside any clone."""
    tag = image_name(kube_version).rsplit(":", 1)[-1]
    return cache_root() / "smoke" / f"smoke-web-{tag}.tar"


def ensure_archive(kube_version: str, log_file: Path | None = None, on_progress: Progress | None = None) -> Path:
    """The image's docker-archive at `archive_path`, built from bundle/images when missing or when its
    inputs changed (the binary comes from the source builder's cache, and the archive is reproducible,
    so an unchanged one is kept as it is: same bytes, same mtime). Needs Go (scripts/setup.sh)."""
    from provisioner.bundle import source

    notes = on_progress or (lambda _text: None)
    source.check_go()
    data = source.load_components()
    versions = _versions(kube_version)
    build = next((b for b in source.go_builds(data) if b.name == BUILD), None)
    if build is None or RECIPE not in build.packages:
        raise ProvisionError(
            f"bundle/components.yaml has no build {BUILD!r} with package {RECIPE!r}; the smoke-test image cannot be made"
        )
    logs = log_file or cache_root() / "logs" / "smoke-web.log"
    logs.parent.mkdir(parents=True, exist_ok=True)
    target = archive_path(kube_version)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock(target.parent), tempfile.TemporaryDirectory(prefix=".smoke-", dir=target.parent) as tmp:
        binaries, _ = source.build_binaries(build, versions, logs, notes, f"smoke image ({BUILD})")
        name = image_name(kube_version)
        (spec,) = source.image_specs(data, [name], {BUILD: binaries}, versions)
        fresh = Path(tmp) / target.name
        img.write_archive(spec, fresh, None)
        if target.is_file() and _same(fresh, target):
            notes(f"smoke image {name}: unchanged ({target})")
            return target
        os.replace(fresh, target)  # atomic: a concurrent `up` reads the old or the new archive
    notes(f"smoke image {name}: written ({target})")
    return target


def add_to_bundle(stage: Bundle, log_file: Path | None, on_progress: Progress) -> FileEntry:
    """Put the smoke-test image into a staged bundle (either source) and list it in its manifest."""
    archive = ensure_archive(stage.versions.kubernetes, log_file, on_progress)
    target = stage.path / BUNDLE_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(archive, target)
    name = image_name(stage.versions.kubernetes)
    return add_file(
        stage,
        BUNDLE_FILE,
        RECIPE,
        name.rsplit(":", 1)[-1],
        f"assembled from go build {BUILD} (bundle/images)",
        image=name,
    )


@contextlib.contextmanager
def _lock(directory: Path) -> Iterator[None]:
    """One smoke image build at a time on this machine (two clusters' `up` may ask at once)."""
    with (directory / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _versions(kube_version: str) -> Versions:
    """The versions the smoke image's build flags and tag are rendered with (Calico plays no part)."""
    return Versions(kubernetes=kube_version.lstrip("v"), calico="")


def _same(a: Path, b: Path) -> bool:
    from provisioner.bundle import sha256_file

    return a.stat().st_size == b.stat().st_size and sha256_file(a) == sha256_file(b)
