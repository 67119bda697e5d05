"""The tools `provision.py` runs on this host against a cluster (kubectl, helm): the bundle's copy when
this machine has one, else an earlier download kept in the cache, else a download now, checked against
the sha256 published beside it and put into place whole, once."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from provisioner import bundle
from provisioner.errors import ProvisionError

if TYPE_CHECKING:
    from provisioner.bundle.download import Mirrors


def cached_tool(
    name: str,
    version: str,
    bundled: Path | None,
    url_of: Callable[[Mirrors], str],
    out: TextIO,
    place: Callable[[Path, Path], None],
    fix: str,
) -> Path:
    """The executable `name` at `version`: `bundled` when it is a file, else
    <cache>/<name>/<version>/<name>, downloaded first when missing from `url_of(mirrors)` (asked only
    then). `place(download, part)`
    turns the checked download into the executable at `part` (a copy, or the one file of an archive);
    `fix` ends the message of a failed download (what else gives the tool)."""
    from provisioner.bundle import download

    if bundled is not None and bundled.is_file():
        return bundled
    dest = bundle.cache_root() / name / version / name
    if dest.is_file():
        return dest
    mirrors = download.Mirrors.from_env()
    url = url_of(mirrors)
    out.write(f"{name} {version}: no bundle here carries it; downloading {url} (checked against its sha256)\n")

    def progress(line: str) -> None:
        out.write(f"    {line}\n")

    try:
        fetched = download.fetch_checked(url, None, mirrors, progress)
    except ProvisionError as exc:
        raise ProvisionError(
            f"no {name} {version} on this machine and the download failed ({exc.message}); {fix}, or set "
            f"{download.MIRRORS_ENV} to a mirror that answers",
            exit_code=1,
        ) from exc
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Into place whole: an interrupted copy leaves no executable that a later run would take.
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        part = Path(tmp) / name
        place(fetched, part)
        part.chmod(0o755)
        part.replace(dest)
    return dest
