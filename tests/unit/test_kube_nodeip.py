"""Node IP selection from Ansible facts (the address kubelet, the API server and Calico use)."""

from __future__ import annotations

from typing import Any

import pytest

from provisioner.kube import KubeConfigError, clusterstate, kubeadm, nodeip


def facts(interfaces: dict[str, list[str]]) -> dict[str, Any]:
    """Ansible-like facts: interfaces list, per-interface ipv4 (+ secondaries), all_ipv4_addresses."""
    out: dict[str, Any] = {"interfaces": [*interfaces, "lo"], "lo": {"ipv4": {"address": "127.0.0.1"}}}
    everything: list[str] = []
    for name, addresses in interfaces.items():
        entry: dict[str, Any] = {"device": name}
        if addresses:
            entry["ipv4"] = {"address": addresses[0], "netmask": "255.255.255.0"}
            entry["ipv4_secondaries"] = [{"address": a} for a in addresses[1:]]
        out[name.replace("-", "_")] = entry
        everything += addresses
    out["all_ipv4_addresses"] = everything
    return out


VAGRANT_VM = facts({"eth0": ["10.0.2.15"], "eth1": ["192.168.56.11"]})


def test_vagrant_vm_picks_the_private_network_not_nat() -> None:
    assert nodeip.select_node_ip(VAGRANT_VM, "192.168.56.0/24") == "192.168.56.11"


def test_nat_address_is_never_picked_even_inside_the_cidr() -> None:
    vm = facts({"eth0": ["10.0.2.15"], "eth1": ["10.0.2.20"]})
    assert nodeip.select_node_ip(vm, "10.0.2.0/24") == "10.0.2.20"


def test_explicit_node_ip_wins() -> None:
    vm = facts({"eth0": ["10.0.2.15"], "eth1": ["192.168.56.11", "192.168.56.50"]})
    assert nodeip.select_node_ip(vm, "192.168.56.0/24", "192.168.56.50") == "192.168.56.50"


def test_explicit_node_ip_without_facts_is_trusted() -> None:
    assert nodeip.select_node_ip({}, "192.168.56.0/24", "192.168.56.12") == "192.168.56.12"


def test_container_node_with_dashed_interface_name() -> None:
    node = facts({"eth0": ["172.17.0.3"], "br-private": ["192.168.94.21"]})
    assert nodeip.select_node_ip(node, "192.168.94.0/24") == "192.168.94.21"


def test_secondary_address_is_found() -> None:
    node = facts({"eth0": ["203.0.113.7", "192.168.56.30"]})
    assert nodeip.select_node_ip(node, "192.168.56.0/24") == "192.168.56.30"


def test_primary_addresses_come_before_secondaries() -> None:
    node = facts({"eth0": ["203.0.113.7", "192.168.56.99"], "eth1": ["192.168.56.13"]})
    assert nodeip.select_node_ip(node, "192.168.56.0/24") == "192.168.56.13"


def test_no_address_in_cidr_is_a_clear_error() -> None:
    with pytest.raises(KubeConfigError) as info:
        nodeip.select_node_ip(facts({"eth0": ["10.0.2.15"]}), "192.168.56.0/24")
    message = str(info.value)
    assert "no address of this host lies inside node_network_cidr 192.168.56.0/24" in message
    assert "10.0.2.15" in message
    assert "set node_ip" in message


def test_no_facts_at_all_says_so() -> None:
    with pytest.raises(KubeConfigError, match=r"were facts gathered"):
        nodeip.select_node_ip({}, "192.168.56.0/24")


@pytest.mark.parametrize(
    ("node_ip", "message"),
    [
        ("192.168.57.11", "outside node_network_cidr"),
        ("node1", "not an IPv4 address"),
        ("192.168.56.77", "not configured on this host"),
    ],
)
def test_bad_explicit_node_ip(node_ip: str, message: str) -> None:
    with pytest.raises(KubeConfigError, match=message):
        nodeip.select_node_ip(VAGRANT_VM, "192.168.56.0/24", node_ip)


def test_bad_cidr() -> None:
    with pytest.raises(KubeConfigError, match="node_network_cidr"):
        nodeip.select_node_ip(VAGRANT_VM, "192.168.56.0/33")


# The API endpoint of several control planes (role kube_api_endpoint)

HA_FACTS = {
    "interfaces": ["lo", "eth0", "eth1"],
    "lo": {"ipv4": {"address": "127.0.0.1"}},
    "eth0": {"ipv4": {"address": "172.17.0.3"}},
    "eth1": {"ipv4": {"address": "192.168.56.11"}, "ipv4_secondaries": [{"address": "192.168.56.9"}]},
}


def test_api_endpoint_plan_puts_the_vip_on_the_node_network_interface() -> None:
    plan = kubeadm.api_endpoint_plan(
        HA_FACTS,
        "192.168.56.9",
        "192.168.56.0/24",
        "192.168.56.11",
        ["192.168.56.10", "192.168.56.11", "192.168.56.12"],
    )
    assert plan == {
        "interface": "eth1",
        "vip": "192.168.56.9",
        "peers": ["192.168.56.10", "192.168.56.12"],
        "port": 8443,
    }


@pytest.mark.parametrize(
    ("vip", "port", "message"),
    [
        ("192.168.57.9", 8443, "not a host address of the node network"),
        ("192.168.56.10", 8443, "a control plane's own address"),
        ("nine", 8443, "not an IPv4 address"),
        ("192.168.56.9", 6443, "other than the API servers' 6443"),
    ],
)
def test_api_endpoint_plan_refuses(vip: str, port: int, message: str) -> None:
    with pytest.raises(KubeConfigError, match=message):
        kubeadm.api_endpoint_plan(HA_FACTS, vip, "192.168.56.0/24", "192.168.56.11", ["192.168.56.10"], port)


def test_interface_for_ip_names_a_missing_address() -> None:
    with pytest.raises(KubeConfigError, match=r"no interface holds 192\.168\.56\.99"):
        kubeadm.interface_for_ip(HA_FACTS, "192.168.56.99")


def _status(leader: str) -> dict[str, Any]:
    return {"header": {"member_id": "1"}, "leader": leader}


MEMBERS = {"members": [{"ID": "1", "name": "cp1"}, {"ID": "2", "name": "cp2"}, {"ID": "3", "name": "cp3"}]}


def test_etcd_healthy_with_one_leader() -> None:
    statuses = {ip: _status("2") for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3")}
    assert clusterstate.etcd_problems(statuses, MEMBERS, 3) == []


def test_etcd_problems_are_named() -> None:
    statuses = {"10.0.0.1": _status("2"), "10.0.0.2": _status("3"), "10.0.0.3": {"error": "timed out"}}
    problems = clusterstate.etcd_problems(statuses, {"members": MEMBERS["members"][:2]}, 3)
    assert problems == [
        "etcd has 2 members (cp1, cp2), expected 3",
        "etcd on 10.0.0.3 does not answer: timed out",
        "the members disagree on the leader (2, 3)",
    ]
    assert clusterstate.etcd_problems({"a": _status("0")}, MEMBERS, 3) == ["the leader 0 is not a member"]
