"""Unit tests of the swarm role's filters (roles/swarm/filter_plugins/swarm.py): no machines."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

PLUGIN = Path(__file__).resolve().parents[2] / "roles" / "swarm" / "filter_plugins" / "swarm.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("swarm_role_filters", PLUGIN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


swarm = _load()

INACTIVE: dict[str, Any] = {
    "NodeID": "",
    "NodeAddr": "",
    "LocalNodeState": "inactive",
    "ControlAvailable": False,
    "Error": "",
    "RemoteManagers": None,
}


def manager_state(node_id: str, cluster: str = "c1") -> dict[str, Any]:
    return {
        "NodeID": node_id,
        "LocalNodeState": "active",
        "ControlAvailable": True,
        "Cluster": {"ID": cluster},
        "RemoteManagers": [{"NodeID": node_id, "Addr": "192.168.71.10:2377"}],
    }


def worker_state(node_id: str, manager_ids: list[str]) -> dict[str, Any]:
    return {
        "NodeID": node_id,
        "LocalNodeState": "active",
        "ControlAvailable": False,
        "RemoteManagers": [{"NodeID": m, "Addr": "192.168.71.10:2377"} for m in manager_ids],
    }


# --- swarm_address_in -------------------------------------------------------------------------


def test_address_in_skips_nat_and_junk() -> None:
    addresses = ["10.0.2.15", None, "garbage", "172.17.0.1", "192.168.71.12"]
    assert swarm.swarm_address_in(addresses, "192.168.71.0/24") == "192.168.71.12"


def test_address_in_none_found() -> None:
    assert swarm.swarm_address_in(["10.0.2.15"], "192.168.56.0/24") == ""
    assert swarm.swarm_address_in(None, "192.168.56.0/24") == ""


# --- swarm_membership -------------------------------------------------------------------------


def test_fresh_cluster_inits_on_first_manager_and_joins_the_rest() -> None:
    states = {h: INACTIVE for h in ("m1", "m2", "m3", "w1")}
    plan = swarm.swarm_membership(states, ["m1", "m2", "m3"], ["w1"])
    assert plan["init"] is True
    assert plan["bootstrap"] == "m1"
    assert plan["join_managers"] == ["m2", "m3"]
    assert plan["join_workers"] == ["w1"]
    assert plan["problems"] == []


def test_formed_cluster_changes_nothing() -> None:
    states = {"m1": manager_state("M1"), "w1": worker_state("W1", ["M1"]), "w2": worker_state("W2", ["M1"])}
    plan = swarm.swarm_membership(states, ["m1"], ["w1", "w2"])
    assert plan == {
        "bootstrap": "m1",
        "init": False,
        "join_managers": [],
        "join_workers": [],
        "promote": [],
        "demote": [],
        "problems": [],
    }


def test_added_workers_join_and_nothing_else() -> None:
    states = {"m1": manager_state("M1"), "w1": worker_state("W1", ["M1"]), "w3": INACTIVE, "w4": INACTIVE}
    plan = swarm.swarm_membership(states, ["m1"], ["w1", "w3", "w4"])
    assert (plan["init"], plan["join_workers"], plan["join_managers"]) == (False, ["w3", "w4"], [])


def test_bootstrap_is_a_manager_that_already_controls_the_swarm() -> None:
    # The first manager was recreated (inactive); the second still manages the swarm.
    states = {"m1": INACTIVE, "m2": manager_state("M2"), "m3": manager_state("M3")}
    plan = swarm.swarm_membership(states, ["m1", "m2", "m3"], [])
    assert (plan["init"], plan["bootstrap"], plan["join_managers"]) == (False, "m2", ["m1"])


def test_promote_and_demote_to_the_plan() -> None:
    states = {"m1": manager_state("M1"), "x": worker_state("X", ["M1"]), "y": worker_state("Y", ["M1"]), "q": INACTIVE}
    states["y"]["ControlAvailable"] = True
    plan = swarm.swarm_membership(states, ["m1", "x", "q"], ["y"])
    assert plan["promote"] == ["x"]
    assert plan["demote"] == ["y"]
    assert plan["join_managers"] == ["q"]


@pytest.mark.parametrize(
    ("managers", "workers", "needle"),
    [
        (["m1", "m2"], [], "odd number"),
        ([], ["w1"], "swarm_manager is empty"),
        (["m1"], ["m1"], "both swarm_manager and swarm_worker"),
    ],
)
def test_bad_groups_are_problems(managers: list[str], workers: list[str], needle: str) -> None:
    states = {h: INACTIVE for h in managers + workers}
    problems = swarm.swarm_membership(states, managers, workers)["problems"]
    assert any(needle in p for p in problems), problems


@pytest.mark.parametrize("local", ["locked", "pending", "error", ""])
def test_unusable_local_state_is_a_problem(local: str) -> None:
    states = {"m1": manager_state("M1"), "w1": {**INACTIVE, "LocalNodeState": local}}
    problems = swarm.swarm_membership(states, ["m1"], ["w1"])["problems"]
    assert len(problems) == 1 and problems[0].startswith("w1 is in swarm state")


def test_worker_of_another_swarm_is_a_problem() -> None:
    states = {"m1": manager_state("M1"), "w1": worker_state("W1", ["OTHER"])}
    problems = swarm.swarm_membership(states, ["m1"], ["w1"])["problems"]
    assert len(problems) == 1 and "none of the planned managers" in problems[0]


def test_member_without_any_planned_manager_is_a_problem() -> None:
    states = {"m1": INACTIVE, "w1": worker_state("W1", ["GONE"])}
    plan = swarm.swarm_membership(states, ["m1"], ["w1"])
    assert plan["init"] is True
    assert any("no host of swarm_manager manages one" in p for p in plan["problems"])


def test_managers_of_two_swarms_are_a_problem() -> None:
    states = {"m1": manager_state("M1", "c1"), "m2": manager_state("M2", "c2"), "m3": INACTIVE}
    problems = swarm.swarm_membership(states, ["m1", "m2", "m3"], [])["problems"]
    assert any("2 different swarms" in p for p in problems)


def test_missing_state_counts_as_unknown() -> None:
    plan = swarm.swarm_membership({}, ["m1"], [])
    assert any("unknown" in p for p in plan["problems"])


# --- swarm_label_changes ----------------------------------------------------------------------


def test_labels_only_missing_or_different() -> None:
    current = {"zone": "a", "rack": "2", "keep": "x"}
    desired = {"zone": "a", "rack": 3, "ssd": True}
    assert swarm.swarm_label_changes(current, desired) == ["--label-add", "rack=3", "--label-add", "ssd=true"]


def test_labels_nothing_to_do() -> None:
    assert swarm.swarm_label_changes({"ssd": "false"}, {"ssd": False}) == []
    assert swarm.swarm_label_changes(None, {}) == []
    assert swarm.swarm_label_changes(None, None) == []


def test_labels_on_a_node_without_any() -> None:
    assert swarm.swarm_label_changes(None, {"zone": "b"}) == ["--label-add", "zone=b"]


# --- swarm_stale_nodes ------------------------------------------------------------------------


def _row(node: str, hostname: str, status: str, manager: str = "") -> dict[str, Any]:
    return {"ID": node, "Hostname": hostname, "Status": status, "Availability": "Active", "ManagerStatus": manager}


def test_stale_entry_of_a_recreated_node() -> None:
    rows = [
        _row("M1", "manager1", "Ready", "Leader"),
        _row("OLD", "worker1", "Down"),
        _row("NEW", "worker1", "Ready"),
        _row("OLDM", "manager2", "Down", "Unreachable"),
        _row("M2", "manager2", "Ready", "Reachable"),
    ]
    current = {"manager1": "M1", "worker1": "NEW", "manager2": "M2"}
    assert swarm.swarm_stale_nodes(rows, current) == [
        {"ID": "OLD", "Hostname": "worker1", "manager": False},
        {"ID": "OLDM", "Hostname": "manager2", "manager": True},
    ]


def test_stale_never_touches_live_or_foreign_nodes() -> None:
    rows = [
        _row("W1", "worker1", "Down"),  # the node's own current ID, merely down: keep
        _row("X", "elsewhere", "Down"),  # not an inventory node: keep
        _row("OLD", "worker2", "Ready"),  # not down: keep
    ]
    assert swarm.swarm_stale_nodes(rows, {"worker1": "W1", "worker2": "NEW"}) == []
    assert swarm.swarm_stale_nodes(rows, {"worker1": ""}) == []


# --- swarm_overlapping ------------------------------------------------------------------------


def test_overlapping_pools() -> None:
    assert swarm.swarm_overlapping(["10.0.0.0/8"], "192.168.56.0/24") == []
    assert swarm.swarm_overlapping(["10.0.0.0/8"], "10.20.0.0/24") == ["10.0.0.0/8"]
    assert swarm.swarm_overlapping(["172.30.0.0/16", "nonsense"], "192.168.56.0/24") == ["nonsense"]
    assert swarm.swarm_overlapping(None, "192.168.56.0/24") == []


def test_filter_module_exports() -> None:
    names = set(swarm.FilterModule().filters())
    assert names == {
        "swarm_address_in",
        "swarm_membership",
        "swarm_label_changes",
        "swarm_stale_nodes",
        "swarm_overlapping",
    }
