"""kube_control_plane writes the controller's kubeconfig where kube_reset removes it.

Both roles' defaults are resolved by Ansible itself, for a host of the sample inventory, from a
playbook directory like the repository's playbooks/: with the sample inventory (no
kube_kubeconfig_dest) and with kube_kubeconfig_dest set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from provisioner.kube import KubeConfigError, packages
from tests.unit.test_playbooks_syntax import _ansible_playbook

REPO = Path(__file__).resolve().parents[2]
DEFAULTS = {
    "kube_control_plane_kubeconfig_dest": REPO / "roles" / "kube_control_plane" / "defaults" / "main.yml",
    "kube_reset_local_kubeconfig": REPO / "roles" / "kube_reset" / "defaults" / "main.yml",
}


def _resolve(tmp_path: Path, extra: dict[str, str]) -> dict[str, str]:
    playbooks = tmp_path / "playbooks"
    playbooks.mkdir(exist_ok=True)
    out = tmp_path / "resolved.json"
    content = "{{ {" + ", ".join(f"'{name}': {name}" for name in DEFAULTS) + "} | to_json }}"
    play = [
        {
            "hosts": "cp1",
            "gather_facts": False,
            "vars_files": [str(path) for path in DEFAULTS.values()],
            "tasks": [
                {
                    "ansible.builtin.copy": {"content": content, "dest": str(out), "mode": "0600"},
                    "delegate_to": "localhost",
                }
            ],
        }
    ]
    (playbooks / "resolve.yml").write_text(yaml.safe_dump(play))
    args = [arg for key, value in extra.items() for arg in ("-e", f"{key}={value}")]
    proc = subprocess.run(
        [
            _ansible_playbook(),
            "-i",
            str(REPO / "inventory" / "sample" / "hosts.yml"),
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            *args,
            str(playbooks / "resolve.yml"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp")},
        cwd=REPO,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    resolved: dict[str, str] = json.loads(out.read_text())
    return resolved


def test_both_roles_resolve_the_same_kubeconfig_with_the_sample_inventory(tmp_path: Path) -> None:
    resolved = _resolve(tmp_path, {})
    expected = f"{tmp_path / 'playbooks'}/../.provision/kubeconfig"
    assert resolved == dict.fromkeys(DEFAULTS, expected)


def test_both_roles_follow_kube_kubeconfig_dest(tmp_path: Path) -> None:
    resolved = _resolve(tmp_path, {"kube_kubeconfig_dest": "/srv/state/kubeconfig"})
    assert resolved == dict.fromkeys(DEFAULTS, "/srv/state/kubeconfig")


def test_controller_kubeconfig() -> None:
    assert packages.controller_kubeconfig("", "/repo/playbooks/") == "/repo/playbooks/../.provision/kubeconfig"
    assert packages.controller_kubeconfig(None, "/repo/playbooks") == "/repo/playbooks/../.provision/kubeconfig"
    assert packages.controller_kubeconfig(" /k/config ", "/repo/playbooks") == "/k/config"
    with pytest.raises(KubeConfigError, match="set kube_kubeconfig_dest"):
        packages.controller_kubeconfig("", "")
