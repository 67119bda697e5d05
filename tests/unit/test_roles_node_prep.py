"""Unit tests of the node_prep role's filter plugin (no machines, no network)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import yaml

PLUGIN = Path(__file__).resolve().parents[2] / "roles" / "node_prep" / "filter_plugins" / "node_prep.py"


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
    assert set(FILTERS.FilterModule().filters()) == {"node_prep_address_in", "node_prep_group_union"}


DEFAULTS = yaml.safe_load((PLUGIN.parents[1] / "defaults" / "main.yml").read_text())
NODEPORTS = "30000-32767/tcp"
# group_names of each kind of node as the generated and the sample inventories make them.
NODES = {
    "control plane": ["k8s_cluster", "kube_control_plane"],
    "worker": ["k8s_cluster", "kube_node"],
    "swarm manager": ["swarm_manager"],
    "swarm worker": ["swarm_worker"],
}


def _ports(node: str) -> list[str]:
    plan: list[str] = FILTERS.node_prep_group_union(DEFAULTS["node_prep_firewall_ports"], NODES[node])
    return plan


@pytest.mark.parametrize("node", ["control plane", "worker"])
def test_nodeports_are_open_on_every_kubernetes_node(node: str) -> None:
    """kube-proxy serves NodePort services on every node, so every node opens the range (a single-node
    cluster's control plane included)."""
    assert NODEPORTS in _ports(node)


def test_port_plan_per_node_kind() -> None:
    assert _ports("control plane") == [
        "6443/tcp",
        "2379-2380/tcp",
        "10250/tcp",
        "10257/tcp",
        "10259/tcp",
        NODEPORTS,
        "179/tcp",
        "4789/udp",
        "5473/tcp",
    ]
    assert _ports("worker") == ["10250/tcp", "10256/tcp", NODEPORTS, "179/tcp", "4789/udp", "5473/tcp"]
    assert NODEPORTS not in _ports("swarm manager") + _ports("swarm worker")
    # A node in both Kubernetes groups opens each port once.
    both = FILTERS.node_prep_group_union(DEFAULTS["node_prep_firewall_ports"], [*NODES["control plane"], "kube_node"])
    assert len(both) == len(set(both)) and "10256/tcp" in both


def test_group_union_flattens_and_skips_empty_entries() -> None:
    per_group = {"a": ["x", ["y", "x"]], "b": [], "c": ["z"], "d": None}
    assert FILTERS.node_prep_group_union(per_group, ["a", "b", "d"]) == ["x", "y"]
    assert FILTERS.node_prep_group_union(per_group, []) == []
    assert FILTERS.node_prep_group_union(None, ["a"]) == []
