"""sshd on the docker provider's node image and on the libvirt box takes keys only: the drop-in each
recipe's customize script writes, run against an empty directory."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from provisioner import box, image

DROP_IN = "etc/ssh/sshd_config.d/10-provisioner.conf"


def _written_drop_in(script: str, root: Path) -> str:
    """Run the lines of `script` that write the drop-in (a heredoc) with $root set, return the file."""
    lines = script.splitlines()
    start = next(i for i, line in enumerate(lines) if f'"$root/{DROP_IN}"' in line)
    heredoc = re.search(r"<<'?(\w+)'?", lines[start])
    end = lines.index(heredoc.group(1), start + 1) + 1 if heredoc else start + 1
    (root / DROP_IN).parent.mkdir(parents=True)
    subprocess.run(
        ["sh", "-eu", "-c", "\n".join(lines[start:end])], env=dict(os.environ, root=str(root)), check=True, timeout=10
    )
    return (root / DROP_IN).read_text(encoding="utf-8")


@pytest.mark.parametrize("script", [image.CUSTOMIZE, box.CUSTOMIZE], ids=["node-image", "libvirt-box"])
def test_sshd_takes_keys_only_and_no_root(script: str, tmp_path: Path) -> None:
    settings: dict[str, str] = {}
    for line in _written_drop_in(script, tmp_path).splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, value = line.split(None, 1)
            settings[key.lower()] = value.strip()
    assert settings == {
        "usedns": "no",
        "passwordauthentication": "no",
        "kbdinteractiveauthentication": "no",
        "permitrootlogin": "no",
    }
    # No other line of the recipe turns them on again (sshd takes the first value it reads).
    for key in ("PasswordAuthentication yes", "KbdInteractiveAuthentication yes", "PermitRootLogin yes"):
        assert key not in script
