"""Locks that one build at a time takes on this machine: two clusters' `up` (or two test lanes) may
ask for the same image or box at once; the second waits, then finds it built."""

from __future__ import annotations

import contextlib
import fcntl
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def held(name: str) -> Iterator[None]:
    """Hold the host-wide lock `name` (a file in the temporary directory) for the block."""
    path = Path(tempfile.gettempdir()) / f"{name}.lock"
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
