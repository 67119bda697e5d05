"""`bundle build` and `bundle list`, and the `ensure` that `up` calls: pick a source, build into a
staging directory with progress and a log, and move the finished bundle into place."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from provisioner.bundle import (
    Bundle,
    Versions,
    bundle_root,
    cache_root,
    find,
    finish,
    list_bundles,
    staging_dir,
)
from provisioner.errors import ProvisionError
from provisioner.progress import Progress

log = logging.getLogger(__name__)

SOURCES = ("auto", "download", "source")


def choose_source(wanted: str) -> tuple[str, str]:
    """(source, why) for `--from`: auto takes download where the release sites answer, else source
    where Go and the module proxy answer, else one sentence naming what is missing."""
    from provisioner.bundle import download, source

    if wanted not in SOURCES:
        raise ProvisionError(f"unknown bundle source {wanted!r}; use one of {', '.join(SOURCES)}", exit_code=2)
    if wanted != "auto":
        return wanted, "asked for"
    why_not_download = download.reachable()
    if not why_not_download:
        return "download", "the release sites answer"
    try:
        go = source.check_go()
    except ProvisionError as exc:
        raise ProvisionError(
            f"no bundle source works here: the release sites do not answer ({why_not_download}) and {exc.message}"
        ) from exc
    return "source", f"the release sites do not answer ({why_not_download}); {go} builds it from Go modules"


def _find_usable(versions: Versions, force: bool) -> Bundle | None:
    """The finished bundle, or None; with `force`, an unreadable one counts as absent (it is rebuilt)."""
    try:
        return find(versions)
    except ProvisionError:
        if force:
            return None
        raise


@contextlib.contextmanager
def _build_lock(versions: Versions) -> Iterator[None]:
    """One build of a bundle at a time on this machine (two clusters may ask for it at once)."""
    root = bundle_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle = (root / f".{versions.name}.lock").open("w")
    except OSError as exc:
        raise ProvisionError(
            f"cannot write the bundle directory {root} ({exc.strerror}); set PROVISION_BUNDLE_DIR to a writable directory"
        ) from exc
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def ensure(
    versions: Versions,
    wanted: str,
    force: bool,
    out: TextIO = sys.stdout,
    verbose: bool = False,
    addons: bool = False,
    ingress: bool = False,
) -> Bundle:
    """The finished bundle for `versions`, built first when missing (or with `force`). With `addons`
    (the cluster wants its add-ons), a bundle made before it carried the add-on images is made again
    from its own source; when that cannot be done here, the bundle is kept as it is, with a note (the
    nodes then pull the add-ons' images)."""
    with _build_lock(versions):
        existing = _find_usable(versions, force)
        if existing is not None and not force:
            missing = [
                f.path
                for f in existing.files
                if not (existing.path / f.path).is_file() or (existing.path / f.path).stat().st_size != f.size
            ]
            if missing:
                out.write(
                    f"bundle {versions.name} lost {missing[0]} ({len(missing)} files in all): building it again\n"
                )
            else:
                from provisioner.bundle import source

                lacking = source.missing_addon_images(existing, ingress) if addons or ingress else []
                if not lacking:
                    return existing
                adding_ingress = ingress and not source.has_ingress(existing)
                if adding_ingress:
                    out.write(
                        f"bundle {versions.name} has no ingress add-on, which this cluster turns on: adding Traefik's "
                        f"image and the Gateway API's CRDs from {existing.source} (the rest comes from the caches; "
                        "Traefik's first compile takes about 7 minutes)\n"
                    )
                else:
                    out.write(
                        f"bundle {versions.name} predates {lacking[0]}, which this toolkit now puts in a bundle "
                        f"({len(lacking)} in all): making it again from {existing.source} (what it already has comes "
                        "from the caches)\n"
                    )
                try:
                    return _build(versions, existing.source, out, verbose, ingress or source.has_ingress(existing))
                except ProvisionError as exc:
                    if adding_ingress:
                        raise ProvisionError(
                            f"the ingress add-on could not be added to bundle {versions.name} ({exc.message}); nothing "
                            "was changed: fix that and rerun, or turn ingress off (--no-ingress)",
                            log_path=exc.log_path,
                        ) from exc
                    out.write(
                        f"note: bundle {versions.name} could not be made again ({exc.message}); it is kept as it was, "
                        "and the nodes pull the add-ons' images from their registries\n"
                    )
                    return existing
        return _build(versions, wanted, out, verbose, ingress or _had_ingress(existing))


def _had_ingress(existing: Bundle | None) -> bool:
    """A bundle made again keeps the ingress add-on's parts it had."""
    from provisioner.bundle import source

    return existing is not None and source.has_ingress(existing)


def _build(versions: Versions, wanted: str, out: TextIO, verbose: bool, ingress: bool = False) -> Bundle:
    src, why = choose_source(wanted)
    progress = Progress(out, verbose=verbose)
    logs = cache_root() / "logs"
    log_file = logs / f"bundle-{versions.name}.log"
    try:
        logs.mkdir(parents=True, exist_ok=True)
        log_file.write_text("", encoding="utf-8")
        stage = Bundle(path=staging_dir(versions), versions=versions, source=src)
    except OSError as exc:
        raise ProvisionError(
            f"cannot write the bundle's cache or build directory ({exc}); set PROVISION_CACHE_DIR and "
            f"PROVISION_BUNDLE_DIR to writable directories"
        ) from exc
    with_ingress = ", with the ingress add-on" if ingress else ""
    out.write(f"bundle {versions.name}: building from {src} ({why}){with_ingress}; log: {log_file}\n")
    detail = {"text": ""}

    def on_progress(text: str) -> None:
        detail["text"] = text
        with log_file.open("a", encoding="utf-8") as fh:
            fh.write(f"[progress] {text}\n")

    started = time.monotonic()
    progress.start(f"bundle {versions.name} ({src})", lambda: detail["text"])
    try:
        if src == "download":
            from provisioner.bundle import download

            download.build(versions, stage, on_progress, log_file=log_file, ingress=ingress)
        else:
            from provisioner.bundle import image_mirror, source

            source.build(versions, stage, on_progress, log_file, mirror=image_mirror(), ingress=ingress)
    except BaseException:
        progress.stop("FAILED (nothing was kept as a bundle; a rerun resumes from the caches)")
        raise
    done = finish(stage, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    progress.stop(f"{len(done.files)} files, {done.size / 1e6:.0f} MB")
    out.write(
        f"  took {time.monotonic() - started:.0f}s: "
        + ", ".join(f"{k} {v:.0f}s" for k, v in done.timings.items())
        + "\n"
    )
    for comp, size in component_sizes(done):
        out.write(f"  {comp:<26}{size / 1e6:8.1f} MB\n")
    return done


def component_sizes(bundle: Bundle) -> list[tuple[str, int]]:
    sizes: dict[str, int] = {}
    for f in bundle.files:
        key = f.path if f.path.startswith("images/") else f.component
        sizes[key] = sizes.get(key, 0) + f.size
    return sorted(sizes.items())


def build_cmd(
    versions: Versions,
    wanted: str,
    force: bool,
    out: TextIO = sys.stdout,
    verbose: bool = False,
    ingress: bool = False,
) -> int:
    existing = _find_usable(versions, force)
    if existing is not None and not force:
        from provisioner.bundle import source

        if source.missing_addon_images(existing, ingress):
            # Made before the add-ons it now carries: completed from its own source (ensure says so).
            existing = ensure(versions, wanted, force=False, out=out, verbose=verbose, addons=True, ingress=ingress)
        else:
            out.write(
                f"bundle {versions.name} is present ({existing.source}, {existing.created}); --force rebuilds it\n"
            )
    else:
        existing = ensure(versions, wanted, force=True, out=out, verbose=verbose, ingress=ingress)
    out.write(f"{existing.path}\n")
    return 0


def list_cmd(out: TextIO = sys.stdout, root: Path | None = None) -> int:
    base = root or bundle_root()
    found = list(list_bundles(base))
    if not found:
        out.write(f"no bundles under {base}; make one with `provision.py bundle build`\n")
        return 0
    out.write(f"{'name':<34}{'kubernetes':<12}{'calico':<9}{'source':<10}{'size':>9}  {'created':<22}path\n")
    for b in found:
        out.write(
            f"{b.versions.name:<34}{b.versions.kubernetes:<12}{b.versions.calico:<9}{b.source:<10}"
            f"{b.size / 1e6:>7.0f}MB  {b.created:<22}{b.path}\n"
        )
    return 0
