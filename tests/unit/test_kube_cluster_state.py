"""Parsing kubectl JSON: node readiness, calico-node per node, operator resource drift, interfaces."""

from __future__ import annotations

import json
from typing import Any

import pytest

from provisioner.kube import KubeConfigError, calico, clusterstate


def node(name: str, ip: str, ready: bool = True, reason: str = "KubeletReady") -> dict[str, Any]:
    return {
        "kind": "Node",
        "metadata": {"name": name},
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
            "conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {"type": "Ready", "status": "True" if ready else "False", "reason": reason},
            ],
        },
    }


def pod(name: str, node_name: str, ready: bool, app: str = "calico-node") -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"k8s-app": app}},
        "spec": {"nodeName": node_name},
        "status": {"phase": "Running" if ready else "Pending", "conditions": [{"type": "Ready", "status": str(ready)}]},
    }


def as_list(*items: dict[str, Any]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": list(items)})


def test_all_nodes_ready() -> None:
    nodes = as_list(node("cp1", "192.168.56.10"), node("w1", "192.168.56.11"))
    assert clusterstate.node_problems(nodes) == []
    assert clusterstate.node_addresses(nodes) == {"cp1": "192.168.56.10", "w1": "192.168.56.11"}


def test_not_ready_node_is_named_with_its_reason() -> None:
    nodes = as_list(node("cp1", "192.168.56.10"), node("w1", "192.168.56.11", False, "KubeletNotReady"))
    assert clusterstate.node_problems(nodes) == ["node w1 (192.168.56.11) not Ready: KubeletNotReady"]


def test_expected_ips_limit_the_check_and_must_be_registered() -> None:
    nodes = as_list(node("cp1", "192.168.56.10", False), node("w1", "192.168.56.11"))
    assert clusterstate.node_problems(nodes, ["192.168.56.11"]) == []
    assert clusterstate.node_problems(nodes, ["192.168.56.12"]) == ["no node registered with InternalIP 192.168.56.12"]


def test_no_nodes() -> None:
    assert clusterstate.node_problems(as_list()) == ["no nodes registered"]


def test_calico_ready_everywhere() -> None:
    state = as_list(
        node("cp1", "192.168.56.10"),
        node("w1", "192.168.56.11"),
        pod("calico-node-a", "cp1", True),
        pod("calico-node-b", "w1", True),
        pod("calico-typha-x", "w1", False, app="calico-typha"),
    )
    assert clusterstate.calico_node_problems(state) == []


def test_calico_problems_name_the_node() -> None:
    state = as_list(
        node("cp1", "192.168.56.10"),
        node("w1", "192.168.56.11"),
        node("w2", "192.168.56.12"),
        pod("calico-node-a", "cp1", True),
        pod("calico-node-b", "w1", False),
    )
    assert clusterstate.calico_node_problems(state) == [
        "node w1: calico-node pod calico-node-b not ready (Pending)",
        "node w2: no calico-node pod yet",
    ]


def test_calico_before_the_operator_created_anything() -> None:
    assert clusterstate.calico_node_problems(as_list(node("cp1", "192.168.56.10"))) == [
        "node cp1: no calico-node pod yet"
    ]


def test_kubectl_error_text_is_not_json() -> None:
    with pytest.raises(KubeConfigError, match="did not return JSON"):
        clusterstate.calico_node_problems("The connection to the server was refused")


DESIRED = [
    {
        "apiVersion": "operator.tigera.io/v1",
        "kind": "Installation",
        "metadata": {"name": "default"},
        "spec": {
            "calicoNetwork": {
                "ipPools": [{"cidr": "10.244.0.0/16", "encapsulation": "VXLANCrossSubnet"}],
                "nodeAddressAutodetectionV4": {"cidrs": ["192.168.56.0/24"]},
            }
        },
    },
    {"apiVersion": "operator.tigera.io/v1", "kind": "APIServer", "metadata": {"name": "default"}, "spec": {}},
]


def live_installation(encapsulation: str = "VXLANCrossSubnet") -> dict[str, Any]:
    """What the operator writes back: our fields plus its defaults and status."""
    return {
        "apiVersion": "operator.tigera.io/v1",
        "kind": "Installation",
        "metadata": {"name": "default", "resourceVersion": "812"},
        "spec": {
            "variant": "Calico",
            "calicoNetwork": {
                "bgp": "Enabled",
                "mtu": 1450,
                "ipPools": [
                    {
                        "cidr": "10.244.0.0/16",
                        "encapsulation": encapsulation,
                        "blockSize": 26,
                        "allowedUses": ["Workload", "Tunnel"],
                    }
                ],
                "nodeAddressAutodetectionV4": {"cidrs": ["192.168.56.0/24"]},
            },
        },
        "status": {"computed": {}},
    }


def test_no_drift_when_operator_only_added_defaults() -> None:
    live = as_list(live_installation(), {"kind": "APIServer", "metadata": {"name": "default"}, "spec": {}})
    assert calico.resource_drift(DESIRED, live) == []


def test_drift_names_the_field() -> None:
    live = as_list(live_installation("IPIP"), {"kind": "APIServer", "metadata": {"name": "default"}, "spec": {}})
    assert calico.resource_drift(DESIRED, live) == [
        "Installation/default.spec.calicoNetwork.ipPools[0].encapsulation: 'IPIP' -> 'VXLANCrossSubnet'"
    ]


def test_absent_resources_drift() -> None:
    assert calico.resource_drift(DESIRED, as_list()) == ["Installation/default: absent", "APIServer/default: absent"]


def test_interface_names_from_ip_link() -> None:
    output = "\n".join(
        [
            "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT",
            "2: eth0@if41: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP",
            "5: cali1a2b3c4d5e6@if3: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 qdisc noqueue state UP",
            "6: vxlan.calico: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 qdisc noqueue state UNKNOWN",
            "7: tunl0@NONE: <NOARP,UP,LOWER_UP> mtu 1480 qdisc noqueue state UNKNOWN",
        ]
    )
    assert clusterstate.interface_names(output) == ["lo", "eth0", "cali1a2b3c4d5e6", "vxlan.calico", "tunl0"]


def test_manifest_url_is_the_releases_vxlan_manifest() -> None:
    assert calico.calico_manifest_url("3.31.0") == (
        "https://raw.githubusercontent.com/projectcalico/calico/v3.31.0/manifests/calico-vxlan.yaml"
    )
    assert calico.calico_manifest_url("v3.31.0", "https://mirror.example.test/calico/") == (
        "https://mirror.example.test/calico/v3.31.0/manifests/calico-vxlan.yaml"
    )


@pytest.mark.parametrize("version", ["3.31", "latest", "4.0.0"])
def test_manifest_url_needs_an_exact_release(version: str) -> None:
    with pytest.raises(KubeConfigError, match="exact release"):
        calico.calico_manifest_url(version)


def labelled(item: dict[str, Any], control_plane: bool, taints: list[dict[str, str]] | None = None) -> dict[str, Any]:
    item["metadata"]["labels"] = {"kubernetes.io/hostname": item["metadata"]["name"]}
    if control_plane:
        item["metadata"]["labels"][clusterstate.CONTROL_PLANE_LABEL] = ""
    if taints is not None:
        item["spec"] = {"taints": taints}
    return item


NO_SCHEDULE = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}
TAINT_CP1 = {"node": "cp1", "taint": "node-role.kubernetes.io/control-plane:NoSchedule"}


@pytest.mark.parametrize(
    ("cp_taints", "workers", "schedulable", "expected"),
    [
        pytest.param(None, 2, False, [TAINT_CP1], id="one-node-cluster-got-workers"),
        pytest.param([NO_SCHEDULE], 2, False, [], id="already-tainted"),
        pytest.param(None, 0, False, [], id="no-workers-yet"),
        pytest.param(None, 2, True, [], id="schedulable-on-purpose"),
        pytest.param([{**NO_SCHEDULE, "effect": "PreferNoSchedule"}], 1, False, [TAINT_CP1], id="other-effect"),
        pytest.param(
            [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}], 1, False, [TAINT_CP1], id="other-key"
        ),
    ],
)
def test_control_plane_taint_targets(
    cp_taints: list[dict[str, str]] | None, workers: int, schedulable: bool, expected: list[dict[str, str]]
) -> None:
    items = [labelled(node("cp1", "192.168.56.10"), True, cp_taints)]
    items += [labelled(node(f"w{i}", f"192.168.56.{11 + i}"), False) for i in range(workers)]
    assert clusterstate.control_plane_taint_targets(as_list(*items), schedulable) == expected


def test_taint_targets_read_kubectl_json_text_and_ignore_tainted_workers() -> None:
    """Workers with taints of their own are never touched; only control-plane labelled nodes are named."""
    items = [
        labelled(node("cp1", "192.168.56.10"), True, []),
        labelled(node("w1", "192.168.56.11"), False, [{"key": "gpu", "effect": "NoSchedule"}]),
    ]
    assert clusterstate.control_plane_taint_targets(as_list(*items)) == [TAINT_CP1]
    assert clusterstate.control_plane_taint_targets(as_list()) == []
