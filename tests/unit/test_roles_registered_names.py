"""No role registers a result under the name of one of its own variables (defaults/ or vars/): a
registered variable outranks both for the rest of the run, so the variable's value would be lost
from there on (kube_join once registered a stat result as kube_join_admin_conf, the path its taint
step reads, and so never put the control-plane taint back on a cluster grown from one node)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROLES = Path(__file__).resolve().parents[2] / "roles"


def _registered(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        if isinstance(node.get("register"), str):
            found.add(node["register"])
        for value in node.values():
            found |= _registered(value)
    elif isinstance(node, list):
        for value in node:
            found |= _registered(value)
    return found


def _variables(role: Path) -> set[str]:
    names: set[str] = set()
    for sub in ("defaults", "vars"):
        for path in sorted((role / sub).glob("*.yml")):
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                names |= set(data)
    return names


@pytest.mark.parametrize("role", sorted(p for p in ROLES.iterdir() if (p / "tasks").is_dir()), ids=lambda p: p.name)
def test_no_role_registers_over_its_own_variables(role: Path) -> None:
    registered: set[str] = set()
    for path in sorted((role / "tasks").glob("*.yml")) + sorted((role / "handlers").glob("*.yml")):
        registered |= _registered(yaml.safe_load(path.read_text(encoding="utf-8")))
    clashes = sorted(registered & _variables(role))
    assert not clashes, f"role {role.name} registers results under its own variables' names: {', '.join(clashes)}"
