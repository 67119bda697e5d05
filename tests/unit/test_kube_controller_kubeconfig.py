"""kube_control_plane's copy of admin.conf on the controller (tasks/0040-controller-kubeconfig.yml).

The role's own task file runs through ansible-playbook on localhost (local connection, no machine),
with admin.conf a file of the test. A small callback looks at the kubeconfig after every task, so
a moment in which the file exists with the controller's umask (0644 under umask 022) is caught,
not only the end state.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.unit.test_playbooks_syntax import _ansible_playbook

REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "roles" / "kube_control_plane" / "tasks" / "0040-controller-kubeconfig.yml"
SECRET = "client-key-data: U0VDUkVULUtFWS1PRi1USEUtVEVTVA=="

WATCHER = """
import json, os, stat
from ansible.plugins.callback import CallbackBase

class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "kubeconfig_mode_watch"
    CALLBACK_NEEDS_ENABLED = True

    def _look(self, result):
        path = os.environ["WATCH_PATH"]
        mode = stat.S_IMODE(os.stat(path).st_mode) if os.path.exists(path) else None
        with open(os.environ["WATCH_LOG"], "a") as log:
            log.write(json.dumps([result._task.get_name(), mode]) + "\\n")

    v2_runner_on_ok = _look
    v2_runner_on_skipped = _look
    v2_runner_on_failed = lambda self, result, ignore_errors=False: self._look(result)
"""


class Controller:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.admin_conf = root / "node" / "admin.conf"
        self.dest = root / "controller" / ".provision" / "kubeconfig"
        self.log = root / "modes.jsonl"
        (root / "callbacks").mkdir()
        (root / "callbacks" / "kubeconfig_mode_watch.py").write_text(WATCHER)
        self.admin_conf.parent.mkdir()
        play = [
            {
                "hosts": "localhost",
                "gather_facts": False,
                "vars": {
                    "kube_control_plane_kubeconfig_dest": str(self.dest),
                    # What 0020-init.yml registers: kubeadm init did not run (admin.conf is there).
                    "kube_control_plane_init": {"changed": False},
                },
                "tasks": [{"ansible.builtin.import_tasks": str(TASKS)}],
            }
        ]
        (root / "play.yml").write_text(yaml.safe_dump(play))

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        self.log.write_text("")
        env = {
            **os.environ,
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "ANSIBLE_CALLBACK_PLUGINS": str(self.root / "callbacks"),
            "ANSIBLE_CALLBACKS_ENABLED": "kubeconfig_mode_watch",
            "ANSIBLE_LOCAL_TEMP": str(self.root / "tmp"),
            "WATCH_PATH": str(self.dest),
            "WATCH_LOG": str(self.log),
        }
        proc = subprocess.run(
            [
                _ansible_playbook(),
                "-i",
                "localhost,",
                "-c",
                "local",
                "-v",
                "-e",
                f"ansible_python_interpreter={sys.executable}",
                "-e",
                f"kube_control_plane_admin_conf={self.admin_conf}",
                *args,
                str(self.root / "play.yml"),
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=180,
            check=False,
            # The umask a controller commonly has: a file created without a mode is 0644.
            preexec_fn=lambda: os.umask(0o022),
        )
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        return proc

    def modes(self) -> list[tuple[str, int | None]]:
        return [(str(name), mode) for name, mode in map(json.loads, self.log.read_text().splitlines())]


def _changed(proc: subprocess.CompletedProcess[str]) -> int:
    match = re.search(r"localhost\s+:\s+ok=\d+\s+changed=(\d+)", proc.stdout)
    assert match, proc.stdout[-2000:]
    return int(match.group(1))


@pytest.fixture
def controller(tmp_path: Path) -> Controller:
    return Controller(tmp_path)


def test_the_kubeconfig_is_0600_from_the_moment_it_exists(controller: Controller) -> None:
    controller.admin_conf.write_text(f"apiVersion: v1\nkind: Config\n{SECRET}\n")
    proc = controller.run()
    seen = controller.modes()
    assert seen and seen[-1][1] is not None, seen
    assert all(mode in (None, 0o600) for _, mode in seen), f"the kubeconfig was readable by others after: {seen}"
    assert controller.dest.read_text() == controller.admin_conf.read_text()
    assert stat.S_IMODE(controller.dest.parent.stat().st_mode) == 0o700
    assert SECRET not in proc.stdout + proc.stderr
    # A second run changes nothing.
    assert _changed(controller.run()) == 0


def test_check_mode_reports_and_writes_nothing(controller: Controller) -> None:
    controller.admin_conf.write_text(f"apiVersion: v1\nkind: Config\n{SECRET}\n")
    proc = controller.run("--check", "--diff")
    assert _changed(proc) > 0
    assert not controller.dest.parent.exists()
    assert SECRET not in proc.stdout + proc.stderr
    controller.run()
    controller.admin_conf.write_text(f"apiVersion: v1\nkind: Config\n{SECRET}\n# renewed\n")
    proc = controller.run("--check", "--diff")
    assert _changed(proc) == 1
    assert "renewed" not in controller.dest.read_text()
    assert SECRET not in proc.stdout + proc.stderr


def test_check_mode_before_kubeadm_init_has_run(controller: Controller) -> None:
    """No admin.conf yet (check mode reports kubeadm init as a change): nothing is read or written."""
    proc = controller.run("--check", "-e", '{"kube_control_plane_init": {"changed": true}}')
    assert not controller.dest.exists()
    assert "skipping" in proc.stdout
