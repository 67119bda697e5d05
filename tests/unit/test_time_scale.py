"""time_scale: the spec's one setting for slow machines, carried to every wait of the roles, Ansible's
connection timeout and (test_kube_templates.py) kubeadm's timeouts and the leader election."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from provisioner.errors import SpecError
from provisioner.inventory import cluster_vars
from provisioner.spec import build_spec

REPO = Path(__file__).resolve().parents[2]

# Each role's wait (defaults/main.yml): its value on an ordinary machine; a suffix after the number.
WAITS = {
    "calico": {"calico_wait_retries": "300"},
    "kube_control_plane": {"kube_control_plane_api_retries": "150"},
    "kube_join": {"kube_join_wait_retries": "300"},
    "kube_api_endpoint": {"kube_api_endpoint_wait_timeout": "60"},
    "kubelet_serving_cert": {"kubelet_serving_cert_retries": "60", "kubelet_serving_cert_timeout": "120"},
    "local_path_storage": {"local_path_storage_wait_timeout": "180"},
    "metrics_server": {"metrics_server_wait_timeout": "180"},
    "swarm": {"swarm_join_timeout": "120", "swarm_ready_retries": "30"},
    "cluster_leave": {"cluster_leave_drain_timeout": "180s"},
}


def _rendered(tmp_path: Path, extra_vars: dict[str, object]) -> dict[str, str]:
    """Every wait as Ansible templates it from the roles' defaults, with these extra variables."""
    names = [name for waits in WAITS.values() for name in waits]
    out = tmp_path / "waits.json"
    playbook = [
        {
            "hosts": "localhost",
            "gather_facts": False,
            "vars_files": [str(REPO / "roles" / role / "defaults" / "main.yml") for role in WAITS],
            "tasks": [
                {
                    "ansible.builtin.copy": {
                        "content": "{{ {" + ", ".join(f"'{n}': {n} | string" for n in names) + "} | to_json }}",
                        "dest": str(out),
                        "mode": "0600",
                    }
                }
            ],
        }
    ]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(playbook))
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp")}
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("ansible-playbook")), "-i", ",", str(tmp_path / "play.yml"),
         "-e", json.dumps(extra_vars)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    data: dict[str, str] = json.loads(out.read_text())
    return data


def test_every_wait_of_the_roles_scales_with_cluster_time_scale(tmp_path: Path) -> None:
    plain = _rendered(tmp_path, {})
    slow = _rendered(tmp_path, {"cluster_time_scale": 2.5})
    for waits in WAITS.values():
        for name, base in waits.items():
            number, suffix = base.rstrip("s"), "s" if base.endswith("s") else ""
            assert plain[name] == base, name
            assert slow[name] == f"{round(int(number) * 2.5)}{suffix}", name


def test_the_inventory_carries_the_scale_and_a_longer_connection_timeout(tmp_path: Path) -> None:
    plain = cluster_vars(build_spec({"provider": "libvirt", "engine": "swarm"}), tmp_path)
    assert plain["cluster_time_scale"] == 1 and "ansible_ssh_timeout" not in plain
    slow = cluster_vars(build_spec({"provider": "libvirt", "engine": "swarm", "time_scale": 4}), tmp_path)
    assert slow["cluster_time_scale"] == 4 and slow["ansible_ssh_timeout"] == 120


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0.5, "between 1 and 20, not 0.5"),
        (21, "between 1 and 20, not 21"),
        ("4", "must be a number from 1 to 20"),
        (True, "must be a number from 1 to 20"),
        (float("nan"), "must be a number from 1 to 20"),
    ],
)
def test_the_spec_refuses_a_scale_out_of_range(value: object, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        build_spec({"time_scale": value})


def test_a_whole_scale_stays_whole_and_a_fraction_is_kept() -> None:
    assert build_spec({"time_scale": 4.0}).time_scale == 4 and isinstance(
        build_spec({"time_scale": 4.0}).time_scale, int
    )
    assert build_spec({"time_scale": 2.5}).time_scale == 2.5


def test_the_flag_reaches_the_spec_and_bad_text_gets_the_specs_sentence(tmp_path: Path) -> None:
    def plan(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(REPO / "provision.py"), "--dir", str(tmp_path / "ws"), "plan", "--provider", "docker",
             "--network", "192.168.232.0/24", *args],
            capture_output=True, text=True, cwd=REPO, timeout=60, check=False,
        )  # fmt: skip

    bad = plan("--time-scale", "slow")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: time_scale must be a number from 1 to 20 (how many times slower than an ordinary machine the nodes "
        "are, e.g. 4 for VMs under software emulation), not 'slow'"
    ]
    assert not (tmp_path / "ws").exists()
