"""Unit tests of the node_prep role's filter plugin (no machines, no network)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.unit.test_playbooks_syntax import _ansible_playbook, run_local_play

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "roles" / "node_prep" / "filter_plugins" / "node_prep.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("node_prep_filters", PLUGIN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FILTERS = _load()


@pytest.mark.parametrize(
    ("addresses", "cidr", "expected"),
    [
        pytest.param(["10.0.2.15", "192.168.56.11"], "192.168.56.0/24", "192.168.56.11", id="skips-vagrant-nat"),
        pytest.param(["192.168.56.12", "192.168.56.11"], "192.168.56.0/24", "192.168.56.12", id="first-match"),
        pytest.param(["10.0.2.15"], "192.168.56.0/24", "", id="none-inside"),
        pytest.param([], "192.168.56.0/24", "", id="empty"),
        pytest.param(None, "192.168.56.0/24", "", id="none"),
        pytest.param(
            ["garbage", "", "172.17.0.1", "192.168.70.13"], "192.168.70.0/24", "192.168.70.13", id="ignores-garbage"
        ),
        pytest.param(["192.168.70.13/24"], "192.168.70.0/24", "192.168.70.13", id="with-prefix"),
        pytest.param(["192.168.70.13"], "192.168.70.5/24", "192.168.70.13", id="non-strict-cidr"),
        pytest.param(["fd00::5", "192.168.70.13"], "fd00::/64", "fd00::5", id="ipv6"),
    ],
)
def test_address_in(addresses: list[str] | None, cidr: str, expected: str) -> None:
    assert FILTERS.node_prep_address_in(addresses, cidr) == expected


def test_bad_cidr_raises() -> None:
    with pytest.raises(ValueError):
        FILTERS.node_prep_address_in(["192.168.56.1"], "not-a-cidr")


def test_filter_module_exports() -> None:
    assert set(FILTERS.FilterModule().filters()) == {
        "node_prep_address_in",
        "node_prep_firewall_plan",
        "node_prep_group_union",
    }


DEFAULTS = yaml.safe_load((PLUGIN.parents[1] / "defaults" / "main.yml").read_text())
ROLE_VARS = yaml.safe_load((PLUGIN.parents[1] / "vars" / "main.yml").read_text())
TASKS = PLUGIN.parents[1] / "tasks"
NODEPORTS = "30000-32767/tcp"
NET = "192.168.56.0/24"
# group_names of each kind of node as the generated and the sample inventories make them.
NODES = {
    "control plane": ["k8s_cluster", "kube_control_plane"],
    "worker": ["k8s_cluster", "kube_node"],
    "swarm manager": ["swarm_manager"],
    "swarm worker": ["swarm_worker"],
}
# Ports nothing in this toolkit listens on: Calico runs its vxlan backend (no bird, no Typha, no IP-in-IP).
UNUSED = ["179/tcp", "5473/tcp"]


def _ports(node: str) -> list[str]:
    plan: list[str] = FILTERS.node_prep_group_union(DEFAULTS["node_prep_firewall_ports"], NODES[node])
    return plan


@pytest.mark.parametrize("node", ["control plane", "worker"])
def test_nodeports_are_open_on_every_kubernetes_node(node: str) -> None:
    """kube-proxy serves NodePort services on every node, so every node opens the range (a single-node
    cluster's control plane included)."""
    assert NODEPORTS in _ports(node)


def test_port_plan_per_node_kind() -> None:
    """The ports opened to the node network only; the API server's 6443 is in the public map."""
    assert _ports("control plane") == [
        "2379-2380/tcp",
        "10250/tcp",
        "10257/tcp",
        "10259/tcp",
        NODEPORTS,
        "4789/udp",
    ]
    assert _ports("worker") == ["10250/tcp", "10256/tcp", NODEPORTS, "4789/udp"]
    assert _ports("swarm manager") == ["2377/tcp", "7946/tcp", "7946/udp", "4789/udp"]
    assert _ports("swarm worker") == ["7946/tcp", "7946/udp", "4789/udp"]
    assert DEFAULTS["node_prep_firewall_public_ports"]["kube_control_plane"][0] == "6443/tcp"
    # A node in both Kubernetes groups opens each port once.
    both = FILTERS.node_prep_group_union(DEFAULTS["node_prep_firewall_ports"], [*NODES["control plane"], "kube_node"])
    assert len(both) == len(set(both)) and "10256/tcp" in both


def test_nothing_opens_what_nothing_uses() -> None:
    """BGP 179, Typha 5473 and IP-in-IP are in no group's list; they are only retired (closed again)."""
    listed = [
        str(entry)
        for key in ("node_prep_firewall_ports", "node_prep_firewall_public_ports", "node_prep_firewall_protocols")
        for entries in DEFAULTS[key].values()
        for entry in (entries if isinstance(entries, list) else [entries])
    ]
    for unused in [*UNUSED, "ipip"]:
        assert not any(unused in entry for entry in listed), unused
    assert "ipip" not in ROLE_VARS["node_prep_ip_protocols"]
    assert ROLE_VARS["node_prep_ip_protocols"]["vrrp"] == 112
    assert ROLE_VARS["node_prep_firewall_retired_ports"] == UNUSED
    assert ROLE_VARS["node_prep_firewall_retired_protocols"] == [4]


# The plan filter on explicit maps (the defaults themselves go through Ansible further down).

PUBLIC = {"kube_control_plane": ["6443/tcp", ["8443/tcp"]]}
RESTRICTED = {"kube_control_plane": ["2379-2380/tcp", "10250/tcp"], "k8s_cluster": ["4789/udp"]}
PROTOCOLS = {"kube_control_plane": ["vrrp"], "swarm_manager": []}
IP_PROTOCOLS = ROLE_VARS["node_prep_ip_protocols"]


def _plan(groups: list[str], **overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "public_ports": PUBLIC,
        "ports": RESTRICTED,
        "protocols": PROTOCOLS,
        "source": NET,
        "ip_protocols": IP_PROTOCOLS,
        "retired_ports": UNUSED,
        "retired_protocols": [4],
        "ssh_port": 22,
    }
    arguments.update(overrides)
    plan: dict[str, Any] = FILTERS.node_prep_firewall_plan(groups, **arguments)
    return plan


def test_plan_restricts_the_cluster_ports_and_vrrp_to_the_node_network() -> None:
    plan = _plan(NODES["control plane"])
    head = f'rule family="ipv4" source address="{NET}"'
    assert plan == {
        "source": NET,
        "family": "ipv4",
        "public_ports": ["6443/tcp", "8443/tcp"],
        "ports": ["2379-2380/tcp", "10250/tcp", "4789/udp"],
        "protocols": ["vrrp"],
        "rich_rules": [
            f'{head} port port="2379-2380" protocol="tcp" accept',
            f'{head} port port="10250" protocol="tcp" accept',
            f'{head} port port="4789" protocol="udp" accept',
            f'{head} protocol value="112" accept',
        ],
        "withdrawn_rich_rules": [f'{head} protocol value="50" accept'],
        "ufw_rules_file": "/etc/ufw/before.rules",
        "ufw_protocol_rules": [f"-A ufw-before-input -p 112 -s {NET} -j ACCEPT"],
        # Open to every source by earlier versions: taken away; the API ports and ssh stay.
        "revoke_ports": ["2379-2380/tcp", "10250/tcp", "4789/udp", *UNUSED],
        "revoke_protocols": ["50", "112", "4"],
    }


def test_plan_of_a_worker_has_no_api_port_and_no_vrrp() -> None:
    plan = _plan(NODES["worker"])
    assert plan["public_ports"] == [] and plan["protocols"] == []
    assert plan["ports"] == ["4789/udp"]
    assert plan["ufw_protocol_rules"] == []
    assert f'rule family="ipv4" source address="{NET}" protocol value="112" accept' in plan["withdrawn_rich_rules"]


def test_plan_takes_the_network_of_a_host_address_and_ipv6() -> None:
    assert _plan(NODES["worker"], source="192.168.56.10/24")["source"] == NET
    plan = _plan(NODES["control plane"], source="fd00:56::/64")
    assert plan["family"] == "ipv6" and plan["ufw_rules_file"] == "/etc/ufw/before6.rules"
    assert plan["ufw_protocol_rules"] == ["-A ufw6-before-input -p 112 -s fd00:56::/64 -j ACCEPT"]


def test_plan_never_takes_ssh_or_a_public_port_away() -> None:
    plan = _plan(NODES["control plane"], ports={"k8s_cluster": ["22/tcp", "6443/tcp", "179/tcp"]})
    assert plan["ports"] == ["22/tcp", "179/tcp"]  # 6443 is public, so not also restricted
    assert plan["revoke_ports"] == ["179/tcp", "5473/tcp"]
    public_bgp = _plan(NODES["worker"], public_ports={"k8s_cluster": ["179/tcp"]})
    assert "179/tcp" not in public_bgp["revoke_ports"]


@pytest.mark.parametrize("source", ["", None, "  "])
def test_plan_needs_the_node_network(source: str | None) -> None:
    with pytest.raises(ValueError, match="node_network_cidr"):
        _plan(NODES["worker"], source=source)
    # Nothing restricted (a node of no cluster group): no source needed.
    assert _plan(["other"], source=source)["source"] == ""


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"source": "192.168.56.0/33"}, "not a network"),
        ({"ports": {"k8s_cluster": ["4789"]}}, "not PORT/PROTO"),
        ({"ports": {"k8s_cluster": ["4789/sctp"]}}, "not PORT/PROTO"),
        ({"public_ports": {"k8s_cluster": ["32767-30000/tcp"]}}, "ascending range"),
        ({"protocols": {"k8s_cluster": ["ipip"]}}, "unknown protocol"),
    ],
)
def test_plan_refuses_bad_input(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _plan(NODES["worker"], **overrides)


def test_group_union_flattens_and_skips_empty_entries() -> None:
    per_group = {"a": ["x", ["y", "x"]], "b": [], "c": ["z"], "d": None}
    assert FILTERS.node_prep_group_union(per_group, ["a", "b", "d"]) == ["x", "y"]
    assert FILTERS.node_prep_group_union(per_group, []) == []
    assert FILTERS.node_prep_group_union(None, ["a"]) == []


# The role's defaults evaluated by Ansible itself: firewall-plan.yml through include_role (the role's
# defaults, vars and filter plugin, as the prepare stage has them) on stand-in hosts of every kind,
# run locally. Each host writes its plan to a JSON file.

HOSTS: dict[str, dict[str, object]] = {
    "cp-vip": {"kube_api_vip": "192.168.56.9"},
    "cp-vip-port": {"kube_api_vip": "192.168.56.9", "kube_api_vip_port": 9443},
    "cp-single": {"kube_api_vip": ""},
    "worker": {"kube_api_vip": "192.168.56.9"},
    "manager": {},
    "sworker": {"node_prep_firewall_swarm_encrypted": True},
}
GROUPS = {
    "kube_control_plane": ["cp-vip", "cp-vip-port", "cp-single"],
    "kube_node": ["worker"],
    "swarm_manager": ["manager"],
    "swarm_worker": ["sworker"],
}


@pytest.fixture(scope="module")
def role_plans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    root = tmp_path_factory.mktemp("node_prep_plan")
    inventory = {
        "all": {
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
                "node_network_cidr": NET,
            },
            "hosts": HOSTS,
            "children": {
                **{group: {"hosts": dict.fromkeys(members)} for group, members in GROUPS.items()},
                "k8s_cluster": {"children": {"kube_control_plane": None, "kube_node": None}},
            },
        }
    }
    play = [
        {
            "hosts": "all",
            "gather_facts": False,
            "tasks": [
                {"ansible.builtin.include_role": {"name": "node_prep", "tasks_from": "firewall-plan.yml"}},
                {
                    "ansible.builtin.copy": {
                        "content": "{{ node_prep_fw | to_json }}",
                        "dest": f"{root}/{{{{ inventory_hostname }}}}.json",
                        "mode": "0600",
                    }
                },
            ],
        }
    ]
    run_local_play(root, inventory, play)
    return {host: json.loads((root / f"{host}.json").read_text()) for host in HOSTS}


VRRP_RICH_RULE = f'rule family="ipv4" source address="{NET}" protocol value="112" accept'
VRRP_UFW_RULE = f"-A ufw-before-input -p 112 -s {NET} -j ACCEPT"


def test_control_planes_with_a_vip_open_haproxy_and_vrrp(role_plans: dict[str, dict[str, Any]]) -> None:
    """Several control planes: HAProxy's port for everyone (like 6443), VRRP from the node network, or
    every control plane takes the VIP and the joins to VIP:8443 fail."""
    plan = role_plans["cp-vip"]
    assert plan["public_ports"] == ["6443/tcp", "8443/tcp"]
    assert plan["protocols"] == ["vrrp"]
    assert VRRP_RICH_RULE in plan["rich_rules"]
    assert plan["ufw_protocol_rules"] == [VRRP_UFW_RULE]
    assert role_plans["cp-vip-port"]["public_ports"] == ["6443/tcp", "9443/tcp"]


def test_without_a_vip_neither_haproxy_nor_vrrp(role_plans: dict[str, dict[str, Any]]) -> None:
    for host in ("cp-single", "worker", "manager"):
        plan = role_plans[host]
        assert "8443/tcp" not in plan["public_ports"] + plan["ports"], host
        assert "vrrp" not in plan["protocols"], host
        assert VRRP_RICH_RULE not in plan["rich_rules"] and plan["ufw_protocol_rules"] == [], host
        assert VRRP_RICH_RULE in plan["withdrawn_rich_rules"], host
    assert role_plans["cp-single"]["public_ports"] == ["6443/tcp"]
    assert role_plans["worker"]["public_ports"] == []  # a worker has no VIP port even when the cluster has one


@pytest.mark.parametrize("host", list(HOSTS))
def test_cluster_ports_only_from_the_node_network(role_plans: dict[str, dict[str, Any]], host: str) -> None:
    plan = role_plans[host]
    assert plan["source"] == NET
    for port in plan["ports"]:
        number, proto = port.split("/")
        rule = f'rule family="ipv4" source address="{NET}" port port="{number}" protocol="{proto}" accept'
        assert rule in plan["rich_rules"]
        assert port in plan["revoke_ports"]  # any-source rules of earlier versions go
    for port in UNUSED:
        assert port not in plan["ports"] + plan["public_ports"] and port in plan["revoke_ports"]
    assert "4" in plan["revoke_protocols"]  # IP-in-IP
    assert not set(plan["public_ports"]) & set(plan["revoke_ports"])
    assert "22/tcp" not in plan["revoke_ports"]


def test_each_kind_of_node_gets_its_cluster_ports(role_plans: dict[str, dict[str, Any]]) -> None:
    assert role_plans["cp-vip"]["ports"] == [
        "2379-2380/tcp",
        "10250/tcp",
        "10257/tcp",
        "10259/tcp",
        NODEPORTS,
        "4789/udp",
    ]
    assert role_plans["worker"]["ports"] == ["10250/tcp", "10256/tcp", NODEPORTS, "4789/udp"]
    assert role_plans["manager"]["ports"] == ["2377/tcp", "7946/tcp", "7946/udp", "4789/udp"]
    assert role_plans["sworker"]["ports"] == ["7946/tcp", "7946/udp", "4789/udp"]
    assert role_plans["sworker"]["ufw_protocol_rules"] == [f"-A ufw-before-input -p 50 -s {NET} -j ACCEPT"]
    assert role_plans["manager"]["protocols"] == []


# The backends apply the plan: nothing but ssh and the public ports is opened to every source.


def _tasks(name: str) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = yaml.safe_load((TASKS / name).read_text())
    return tasks


def test_ufw_opens_only_ssh_and_the_public_ports_to_every_source() -> None:
    rules = [t for t in _tasks("firewall-ufw.yml") if "rule" in t.get("community.general.ufw", {})]
    opened = [t for t in rules if not t["community.general.ufw"].get("delete")]
    everyone = [t for t in opened if "from_ip" not in t["community.general.ufw"]]
    assert [t.get("loop") for t in everyone] == [None, "{{ node_prep_fw.public_ports }}"]
    assert "node_prep_firewall_ssh_port" in everyone[0]["community.general.ufw"]["port"]
    restricted = [t for t in opened if "from_ip" in t["community.general.ufw"]]
    assert [(t["loop"], t["community.general.ufw"]["from_ip"]) for t in restricted] == [
        ("{{ node_prep_fw.ports }}", "{{ node_prep_fw.source }}")
    ]
    blocks = [
        t["ansible.builtin.blockinfile"] for t in _tasks("firewall-ufw.yml") if "ansible.builtin.blockinfile" in t
    ]
    assert any("node_prep_fw.ufw_protocol_rules" in b["block"] for b in blocks)


def test_firewalld_opens_only_ssh_and_the_public_ports_to_every_source() -> None:
    rules = [t for t in _tasks("firewall-firewalld.yml") if "ansible.posix.firewalld" in t]
    enabled = [t for t in rules if t["ansible.posix.firewalld"]["state"] == "enabled"]
    zone_wide = [t for t in enabled if "rich_rule" not in t["ansible.posix.firewalld"]]
    assert [t.get("loop") for t in zone_wide] == [None, "{{ node_prep_fw.public_ports }}"]
    assert all("protocol" not in t["ansible.posix.firewalld"] for t in zone_wide)
    assert [t["loop"] for t in enabled if "rich_rule" in t["ansible.posix.firewalld"]] == [
        "{{ node_prep_fw.rich_rules }}"
    ]


BEFORE_RULES = """*filter
:ufw-before-input - [0:0]
-A ufw-before-input -i lo -j ACCEPT
# BEGIN node_prep: IP-in-IP (Calico)
-A ufw-before-input -p 4 -j ACCEPT
# END node_prep: IP-in-IP (Calico)
# don't delete the 'COMMIT' line or these rules won't be processed
COMMIT
"""


def _run_before_rules_tasks(root: Path, rules_file: Path, protocol_rules: list[str]) -> tuple[int, bool]:
    """The blockinfile tasks of firewall-ufw.yml, as written, on a copy of before.rules; returns the
    number of changed tasks and whether ufw's reload was notified."""
    tasks = [t for t in _tasks("firewall-ufw.yml") if "ansible.builtin.blockinfile" in t]
    for task in tasks:
        if task["ansible.builtin.blockinfile"]["path"] == "/etc/ufw/before.rules":
            task["ansible.builtin.blockinfile"]["path"] = str(rules_file)
    marker = root / "reloaded"
    marker.unlink(missing_ok=True)
    play = [
        {
            "hosts": "localhost",
            "gather_facts": False,
            "vars": {
                "ansible_python_interpreter": sys.executable,
                "node_prep_fw": {"ufw_rules_file": str(rules_file), "ufw_protocol_rules": protocol_rules},
            },
            "tasks": tasks,
            "handlers": [
                {
                    "name": "Ufw | reload",
                    "ansible.builtin.file": {"path": str(marker), "state": "touch", "mode": "0600"},
                }
            ],
        }
    ]
    (root / "play.yml").write_text(yaml.safe_dump(play))
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_LOCAL_TEMP": str(root / "tmp")}
    proc = subprocess.run(
        [_ansible_playbook(), "-i", "localhost,", "-c", "local", str(root / "play.yml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    match = re.search(r"localhost\s+:\s+ok=\d+\s+changed=(\d+)", proc.stdout)
    assert match, proc.stdout[-2000:]
    return int(match.group(1)) - marker.exists(), marker.exists()


def test_ufw_before_rules_vrrp_from_the_node_network_and_no_ip_in_ip(tmp_path: Path) -> None:
    rules_file = tmp_path / "before.rules"
    rules_file.write_text(BEFORE_RULES)
    changed, reloaded = _run_before_rules_tasks(tmp_path, rules_file, [VRRP_UFW_RULE])
    assert (changed, reloaded) == (2, True)
    text = rules_file.read_text()
    assert "IP-in-IP" not in text and "-p 4 " not in text
    block = f"# BEGIN node_prep: IP protocols from the node network\n{VRRP_UFW_RULE}\n# END node_prep: IP protocols from the node network\n"
    assert block in text
    assert text.index(block) < text.index("\nCOMMIT")
    # Converged: a rerun changes nothing.
    assert _run_before_rules_tasks(tmp_path, rules_file, [VRRP_UFW_RULE]) == (0, False)
    # No protocol wanted any more (the VIP gone): the block goes.
    assert _run_before_rules_tasks(tmp_path, rules_file, []) == (1, True)
    assert "node_prep" not in rules_file.read_text() and "COMMIT" in rules_file.read_text()
