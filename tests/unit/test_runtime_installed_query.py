"""The container_runtime role's list of installed packages, read on this (Debian) host with the role's
own task file and compared with what dpkg itself says. No network: a local connection only."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "roles" / "container_runtime" / "tasks" / "installed.yml"

PLAY = """
- hosts: localhost
  connection: local
  gather_facts: false
  vars:
    ansible_facts: {{os_family: Debian}}
  tasks:
    - ansible.builtin.import_tasks: {tasks}
    - ansible.builtin.copy:
        content: "{{{{ container_runtime_installed | to_json }}}}"
        dest: {out}
        mode: "0644"
"""


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="no dpkg-query: this host is not of the Debian family")
def test_installed_packages_match_dpkg(tmp_path: Path) -> None:
    out = tmp_path / "installed.json"
    play = tmp_path / "play.yml"
    play.write_text(PLAY.format(tasks=TASKS, out=out))
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            "localhost,",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            str(play),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    listed = json.loads(out.read_text())
    status = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Abbrev}|${Package}\n"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    installed = sorted(line.split("|", 1)[1] for line in status if line.startswith("ii"))
    not_installed = {line.split("|", 1)[1] for line in status if not line.startswith("ii")}
    assert sorted(listed) == installed
    assert "dpkg" in listed and not not_installed & set(listed)
