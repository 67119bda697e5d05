"""Which files of a node make a runnable image of some of its binaries (verify's runtime probe).

The runtime suite (tests/infra/test_runtime.py) proves that Docker runs a container by importing a
tiny image made of the node's own files: a shell, cat, and the shared objects they load. Which
files those are depends on the distribution (dash or bash, /lib/x86_64-linux-gnu or /lib64, glibc or
musl), so the suite asks the node (readlink -f, ldd) and this module turns the answers into the
list of files to archive. Pure: text in, paths out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# "\tlibc.so.6 => /lib64/libc.so.6 (0x...)" or "\t/lib64/ld-linux-x86-64.so.2 (0x...)".
_RESOLVED = re.compile(r"^\s*\S+\s+=>\s+(?P<path>/\S+)(?:\s+\(0x[0-9a-fA-F]+\))?\s*$")
_DIRECT = re.compile(r"^\s*(?P<path>/\S+)(?:\s+\(0x[0-9a-fA-F]+\))?\s*$")
_NOT_FOUND = re.compile(r"^\s*(?P<name>\S+)\s+=>\s+not found\s*$")
# Lines without a file: the kernel's vDSO, a header naming the binary (several binaries at once),
# a static binary.
_NO_FILE = re.compile(r"^\s*(?:\S*vdso\S*\s+\(0x[0-9a-fA-F]+\)|\S+:|statically linked|not a dynamic executable)\s*$")


class NodeFilesError(ValueError):
    """ldd output that names a missing library or cannot be read."""


def ldd_files(ldd_output: str) -> list[str]:
    """The shared objects (the dynamic loader included) in `ldd BINARY...` output, as absolute paths,
    in order of appearance and without repeats."""
    files: list[str] = []
    for line in ldd_output.splitlines():
        if not line.strip() or _NO_FILE.match(line):
            continue
        missing = _NOT_FOUND.match(line)
        if missing:
            raise NodeFilesError(f"ldd: the shared library {missing.group('name')} is not found on the node")
        match = _RESOLVED.match(line) or _DIRECT.match(line)
        if not match:
            raise NodeFilesError(f'ldd printed "{line.strip()}", which is not a library line')
        if match.group("path") not in files:
            files.append(match.group("path"))
    return files


def image_members(binaries: Iterable[str], ldd_output: str) -> list[str]:
    """What `tar -C / -ch` archives for an image of binaries: each binary (by its real path) and every
    shared object ldd names, relative to / and without repeats."""
    members: list[str] = []
    for path in [*binaries, *ldd_files(ldd_output)]:
        text = str(path).strip()
        if not text.startswith("/"):
            raise NodeFilesError(f'"{text}" is not an absolute path')
        member = text.lstrip("/")
        if member not in members:
            members.append(member)
    return members
