"""The runtime probe's file list (provisioner/nodefiles.py): ldd output of the node -> what tar archives."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from provisioner.nodefiles import NodeFilesError, image_members, ldd_files

DEBIAN = """/usr/bin/dash:
\tlinux-vdso.so.1 (0x00007ffc8d5f2000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f38ba789000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f38ba9a0000)
/usr/bin/cat:
\tlinux-vdso.so.1 (0x00007ffd5b7c4000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f3e2c71b000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f3e2c91c000)
"""
# Rocky 9: /bin/sh is bash, which also loads libtinfo; libraries live in /lib64.
EL9 = """/usr/bin/bash:
\tlinux-vdso.so.1 (0x00007ffe0e9f6000)
\tlibtinfo.so.6 => /lib64/libtinfo.so.6 (0x00007f2f5c9a1000)
\tlibc.so.6 => /lib64/libc.so.6 (0x00007f2f5c600000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f2f5cb0e000)
/usr/bin/cat:
\tlinux-vdso.so.1 (0x00007fff4c5e8000)
\tlibc.so.6 => /lib64/libc.so.6 (0x00007f9d4c400000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f9d4c63a000)
"""
ARM64 = """\tlinux-vdso.so.1 (0x0000ffff8b5a4000)
\tlibc.so.6 => /lib/aarch64-linux-gnu/libc.so.6 (0x0000ffff8b3b0000)
\t/lib/ld-linux-aarch64.so.1 (0x0000ffff8b567000)
"""
MUSL = """\t/lib/ld-musl-x86_64.so.1 (0x7f0b1c2a6000)
\tlibc.musl-x86_64.so.1 => /lib/ld-musl-x86_64.so.1 (0x7f0b1c2a6000)
"""


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        pytest.param(DEBIAN, ["/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"], id="debian"),
        pytest.param(EL9, ["/lib64/libtinfo.so.6", "/lib64/libc.so.6", "/lib64/ld-linux-x86-64.so.2"], id="el9"),
        pytest.param(ARM64, ["/lib/aarch64-linux-gnu/libc.so.6", "/lib/ld-linux-aarch64.so.1"], id="arm64"),
        pytest.param(MUSL, ["/lib/ld-musl-x86_64.so.1"], id="musl"),
        pytest.param("\tstatically linked\n", [], id="static"),
        pytest.param("/usr/bin/busybox:\n\tnot a dynamic executable\n", [], id="not-dynamic"),
    ],
)
def test_ldd_files(output: str, expected: list[str]) -> None:
    assert ldd_files(output) == expected


def test_image_members_on_an_el_node() -> None:
    """The probe image of a RHEL-family node: bash (its /bin/sh), cat and what they load, relative to /."""
    assert image_members(["/usr/bin/bash", "/usr/bin/cat"], EL9) == [
        "usr/bin/bash",
        "usr/bin/cat",
        "lib64/libtinfo.so.6",
        "lib64/libc.so.6",
        "lib64/ld-linux-x86-64.so.2",
    ]


def test_image_members_on_a_debian_node() -> None:
    assert image_members(["/usr/bin/dash", "/usr/bin/cat"], DEBIAN) == [
        "usr/bin/dash",
        "usr/bin/cat",
        "lib/x86_64-linux-gnu/libc.so.6",
        "lib64/ld-linux-x86-64.so.2",
    ]


def test_a_missing_library_is_named() -> None:
    with pytest.raises(NodeFilesError, match=r"libtinfo\.so\.6 is not found"):
        ldd_files("\tlibtinfo.so.6 => not found\n\tlibc.so.6 => /lib64/libc.so.6 (0x00007f2f5c600000)\n")


@pytest.mark.parametrize("output", ["ldd: /usr/bin/nope: No such file or directory", "\tlibc.so.6 => "])
def test_unreadable_output_is_refused(output: str) -> None:
    with pytest.raises(NodeFilesError):
        ldd_files(output)


def test_relative_binary_is_refused() -> None:
    with pytest.raises(NodeFilesError, match="not an absolute path"):
        image_members(["bash"], "")


def test_this_hosts_ldd_output_parses() -> None:
    """Real ldd output of this machine's shell and cat (skipped where there is no ldd)."""
    ldd = shutil.which("ldd")
    cat = shutil.which("cat")
    if ldd is None or cat is None:
        pytest.skip("no ldd here")
    shell, cat_path = str(Path("/bin/sh").resolve()), str(Path(cat).resolve())
    out = subprocess.run([ldd, shell, cat_path], capture_output=True, text=True, check=False).stdout
    members = image_members([shell, cat_path], out)
    assert members[:2] == [shell.lstrip("/"), cat_path.lstrip("/")]
    assert all((Path("/") / m).exists() for m in members)
