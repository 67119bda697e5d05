"""kube_upgrade's leadership move (roles/kube_upgrade/tasks/leader.yml): its task's own expressions,
rendered as Ansible renders them (native types, Ansible's core filters), on etcdctl's JSON as it
prints it (decimal uint64 member IDs; `name`, `isLearner` and `leader` left out when empty). No machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.plugins.filter.core import FilterModule as CoreFilters
from ansible.plugins.test.core import TestModule as CoreTests
from jinja2 import StrictUndefined, meta
from jinja2.nativetypes import NativeEnvironment

REPO = Path(__file__).resolve().parents[2]
TASKS = yaml.safe_load((REPO / "roles" / "kube_upgrade" / "tasks" / "leader.yml").read_text())
(MOVE,) = [t for t in TASKS if t["name"].startswith("Leader | Hand")]

# IDs as etcd draws them: the first above 2**63, where a signed conversion would break.
IDS = {"cp1": 0xAE3A1B0F5D2C7E91, "cp2": 0x1D4E5F60718293A4, "cp3": 0x7C6B5A4938271605}
CONTROL_PLANES = ["cp1", "cp2", "cp3"]


def etcdctl_output(me: str, leader: str | None, members: list[dict[str, Any]] | None = None) -> str:
    """What the read task prints: `endpoint status -w json`, then `member list -w json`."""
    status: dict[str, Any] = {"header": {"cluster_id": 1, "member_id": IDS[me], "raft_term": 3}, "version": "3.6.5"}
    if leader is not None:
        status["leader"] = IDS[leader]
    listed = members if members is not None else [{"ID": IDS[n], "name": n} for n in CONTROL_PLANES]
    return (
        json.dumps([{"Endpoint": "https://127.0.0.1:2379", "Status": status}]) + "\n" + json.dumps({"members": listed})
    )


def move(host: str, output: str, rc: int = 0) -> tuple[bool, str]:
    """Whether the move task runs on `host`, and the member it names (hex) when it does. The task's
    variables are rendered only when a condition or the command refers to them, as Ansible does."""
    env = NativeEnvironment(undefined=StrictUndefined)
    # Jinja's own filters and tests where it has them (default, defined); Ansible's for the rest.
    env.filters.update({k: f for k, f in CoreFilters().filters().items() if k not in env.filters})
    env.tests.update({k: t for k, t in CoreTests().tests().items() if k not in env.tests})
    context: dict[str, Any] = {
        "inventory_hostname": host,
        "groups": {"kube_control_plane": CONTROL_PLANES},
        "hostvars": {h: {"kube_upgrade_node_name": h} for h in CONTROL_PLANES},
        "kube_upgrade_etcd_members": {"rc": rc, "stdout_lines": output.splitlines()},
    }

    def render(text: str) -> Any:
        for name in meta.find_undeclared_variables(env.parse(text)):
            if name not in context and name in MOVE["vars"]:
                context[name] = render(MOVE["vars"][name])
        return env.from_string(text).render(**context)

    for condition in MOVE["when"]:
        if not render("{{ " + condition + " }}"):
            return False, ""
    return True, str(render(MOVE["ansible.builtin.shell"]["cmd"].split("move-leader ", 1)[1].split("\n")[0]))


def test_the_leader_hands_on_to_the_next_member_on_the_first_turn() -> None:
    runs, target = move("cp1", etcdctl_output("cp1", leader="cp1"))
    assert runs and target == f"{IDS['cp2']:x}"


def test_a_member_whose_node_had_its_turn_is_preferred() -> None:
    runs, target = move("cp3", etcdctl_output("cp3", leader="cp3"))
    assert runs and target == f"{IDS['cp1']:x}"
    runs, target = move("cp2", etcdctl_output("cp2", leader="cp2"))
    assert runs and target == f"{IDS['cp1']:x}"


def test_a_member_that_does_not_lead_moves_nothing() -> None:
    assert move("cp2", etcdctl_output("cp2", leader="cp1")) == (False, "")


def test_no_leader_at_the_moment_moves_nothing() -> None:
    assert move("cp1", etcdctl_output("cp1", leader=None)) == (False, "")


def test_learners_and_members_not_started_are_never_chosen() -> None:
    members: list[dict[str, Any]] = [
        {"ID": IDS["cp1"], "name": "cp1"},
        {"ID": IDS["cp2"], "name": "cp2", "isLearner": True},
        {"ID": IDS["cp3"]},  # added, not started yet: no name
    ]
    assert move("cp1", etcdctl_output("cp1", "cp1", members)) == (False, "")
    members.append({"ID": 42, "name": "cp4"})
    assert move("cp1", etcdctl_output("cp1", "cp1", members)) == (True, "2a")


@pytest.mark.parametrize("rc", [1, 127])
def test_an_unanswered_read_moves_nothing(rc: int) -> None:
    assert move("cp1", "", rc=rc) == (False, "")
