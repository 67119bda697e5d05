"""kube_api_endpoint: where HAProxy listens (templates/haproxy.cfg.j2 rendered by Ansible itself) and the
kernel setting that lets a control plane without the virtual IP bind it. No machine, no network."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_playbooks_syntax import run_local_play

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "kube_api_endpoint"
VIP = "192.168.56.9"
CONTROL_PLANES = {"cp1": "192.168.56.10", "cp2": "192.168.56.11", "cp3": "192.168.56.12"}


@pytest.fixture(scope="module")
def haproxy_configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """haproxy.cfg of each control plane, through the template module with the role's defaults and the
    facts the role's first tasks set (the node address; the plan as kube_api_endpoint_plan returns it)."""
    root = tmp_path_factory.mktemp("haproxy")
    inventory = {
        "all": {
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
                "node_network_cidr": "192.168.56.0/24",
                "kube_api_vip": VIP,
            },
            "children": {
                "kube_control_plane": {"hosts": {name: {"node_ip": ip} for name, ip in CONTROL_PLANES.items()}}
            },
        }
    }
    play = [
        {
            "hosts": "kube_control_plane",
            "gather_facts": False,
            "vars_files": [str(ROLE / "defaults" / "main.yml")],
            "tasks": [
                {
                    "ansible.builtin.set_fact": {
                        "kube_api_endpoint_node_ip_resolved": "{{ node_ip }}",
                        "kube_api_endpoint_plan": {
                            "interface": "eth1",
                            "vip": "{{ kube_api_endpoint_vip }}",
                            "port": "{{ kube_api_endpoint_port | int }}",
                            "peers": [],
                        },
                    }
                },
                {
                    "ansible.builtin.template": {
                        "src": str(ROLE / "templates" / "haproxy.cfg.j2"),
                        "dest": f"{root}/{{{{ inventory_hostname }}}}.cfg",
                        "mode": "0600",
                    }
                },
            ],
        }
    ]
    run_local_play(root, inventory, play)
    return {name: (root / f"{name}.cfg").read_text() for name in CONTROL_PLANES}


def _section(config: str, name: str) -> list[str]:
    """The lines of one section (`frontend kube-apiserver`...), comments left out."""
    lines: list[str] = []
    inside = False
    for line in config.splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            inside = line.strip() == name
            continue
        if inside and line.strip() and not line.strip().startswith("#"):
            lines.append(line.strip())
    return lines


@pytest.mark.parametrize("host", list(CONTROL_PLANES))
def test_haproxy_listens_on_the_node_address_and_the_vip_only(haproxy_configs: dict[str, str], host: str) -> None:
    frontend = _section(haproxy_configs[host], "frontend kube-apiserver")
    binds = [line for line in frontend if line.startswith("bind ")]
    assert binds == [f"bind {CONTROL_PLANES[host]}:8443", f"bind {VIP}:8443"]
    assert not re.search(r"^\s*bind\s+(\*|0\.0\.0\.0|:::?)", haproxy_configs[host], re.MULTILINE)


def test_haproxy_still_balances_over_every_api_server(haproxy_configs: dict[str, str]) -> None:
    servers = [
        line for line in _section(haproxy_configs["cp2"], "backend kube-apiservers") if line.startswith("server ")
    ]
    assert servers == [f"server {name} {ip}:6443" for name, ip in CONTROL_PLANES.items()]


def _tasks() -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = yaml.safe_load((ROLE / "tasks" / "main.yml").read_text())
    return tasks


def test_nonlocal_bind_is_allowed_before_haproxy_starts() -> None:
    """A control plane that does not hold the VIP must still start HAProxy (keepalived gives the VIP only
    to a node whose HAProxy runs): binding the VIP there needs net.ipv4.ip_nonlocal_bind=1, persisted."""
    tasks = _tasks()
    names = [t["name"] for t in tasks]
    sysctl = [i for i, t in enumerate(tasks) if "ansible.posix.sysctl" in t]
    assert len(sysctl) == 1
    module = tasks[sysctl[0]]["ansible.posix.sysctl"]
    assert module["name"] == "net.ipv4.ip_nonlocal_bind" and str(module["value"]) == "1"
    assert module["sysctl_set"] is True and module["state"] == "present"
    assert module["sysctl_file"] == "{{ kube_api_endpoint_sysctl_file }}"
    start = next(i for i, t in enumerate(tasks) if "ansible.builtin.systemd_service" in t)
    assert sysctl[0] < start, names
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    assert defaults["kube_api_endpoint_sysctl_file"].startswith("/etc/sysctl.d/")
