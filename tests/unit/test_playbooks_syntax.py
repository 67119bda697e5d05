"""`ansible-playbook --syntax-check` on every playbook under playbooks/ (all stages, everyone's).

A small inventory with every group the toolkit uses is generated per run, so the plays' host
patterns resolve as they do on a real cluster. A playbook that imports a stage playbook that does
not exist yet is skipped with the names of the missing files, not failed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = sorted((REPO / "playbooks").glob("*.yml"))

INVENTORY = {
    "all": {
        "hosts": {
            "cp1": {"ansible_host": "192.168.56.10", "node_ip": "192.168.56.10"},
            "worker1": {"ansible_host": "192.168.56.11", "node_ip": "192.168.56.11"},
            "manager1": {"ansible_host": "192.168.56.20", "node_ip": "192.168.56.20"},
            "sworker1": {"ansible_host": "192.168.56.21", "node_ip": "192.168.56.21"},
        },
        "vars": {"ansible_user": "vagrant", "cluster_engine": "kubernetes", "node_network_cidr": "192.168.56.0/24"},
        "children": {
            "kube_control_plane": {"hosts": {"cp1": None}},
            "kube_node": {"hosts": {"worker1": None}},
            "k8s_cluster": {"children": {"kube_control_plane": None, "kube_node": None}},
            "swarm_manager": {"hosts": {"manager1": None}},
            "swarm_worker": {"hosts": {"sworker1": None}},
        },
    }
}


def _ansible_playbook() -> str:
    local = Path(sys.executable).with_name("ansible-playbook")
    if local.exists():
        return str(local)
    found = shutil.which("ansible-playbook")
    if found is None:
        pytest.skip("ansible-playbook is not installed")
    return found


def run_local_play(root: Path, inventory: dict[str, Any], play: list[dict[str, Any]]) -> None:
    """Write `inventory` and `play` under `root` and run the play with the project's ansible.cfg, its
    roles and filter plugins; fail the test with Ansible's output unless it passes."""
    (root / "hosts.yml").write_text(yaml.safe_dump(inventory))
    (root / "play.yml").write_text(yaml.safe_dump(play))
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
        "ANSIBLE_FILTER_PLUGINS": str(REPO / "filter_plugins"),
        "ANSIBLE_LOCAL_TEMP": str(root / "tmp"),
    }
    proc = subprocess.run(
        [_ansible_playbook(), "-i", str(root / "hosts.yml"), str(root / "play.yml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def render_role_template(
    root: Path, role: Path, template: str, hosts: dict[str, dict[str, Any]]
) -> dict[str, list[Any]]:
    """Render one of a role's templates with its defaults by Ansible's template module, once per host
    (each with its own variables), and return each host's YAML documents."""
    inventory = {
        "all": {
            "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
            "hosts": hosts,
        }
    }
    play = [
        {
            "hosts": "all",
            "gather_facts": False,
            "vars_files": [str(role / "defaults" / "main.yml")],
            "tasks": [
                {
                    "ansible.builtin.template": {
                        "src": str(role / "templates" / template),
                        "dest": f"{root}/{{{{ inventory_hostname }}}}.yaml",
                        "mode": "0600",
                    }
                }
            ],
        }
    ]
    run_local_play(root, inventory, play)
    return {h: list(yaml.safe_load_all((root / f"{h}.yaml").read_text())) for h in hosts}


def _missing_imports(playbook: Path) -> list[str]:
    plays = yaml.safe_load(playbook.read_text()) or []
    missing: list[str] = []
    for play in plays if isinstance(plays, list) else []:
        if not isinstance(play, dict):
            continue
        target = play.get("ansible.builtin.import_playbook") or play.get("import_playbook")
        if isinstance(target, str) and "{{" not in target and not (playbook.parent / target).exists():
            missing.append(target)
    return missing


@pytest.mark.parametrize("playbook", PLAYBOOKS, ids=[p.name for p in PLAYBOOKS])
def test_syntax_check(playbook: Path, tmp_path: Path) -> None:
    missing = _missing_imports(playbook)
    if missing:
        pytest.skip(f"{playbook.name} imports {', '.join(missing)}, which does not exist yet")
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump(INVENTORY))
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
        "ANSIBLE_FILTER_PLUGINS": str(REPO / "filter_plugins"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"),
    }
    result = subprocess.run(
        [_ansible_playbook(), "--syntax-check", "-i", str(inventory), str(playbook)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"{playbook.name}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
