"""Shared fixtures of the testinfra suites (tests/infra/test_<stage>.py).

Run a suite against an inventory (ansible-inventory must be on PATH, e.g. the repo's .venv/bin):
    pytest tests/infra/test_prepare.py --ansible-inventory=INV --connection=ansible
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

CONTAINER_VIRT = {"docker", "container", "containerd", "podman", "lxc", "lxc-libvirt", "systemd-nspawn"}


_CONTAINER_NODES: dict[str, bool] = {}


def is_container_node(host: Any) -> bool:
    """True on a system container node: it shares the host's kernel (swap, modules, clock). Asked
    once per host and run: a node does not change kind between two checks."""
    key = host.backend.get_pytest_id()
    if key not in _CONTAINER_NODES:
        found = host.file("/.dockerenv").exists
        if not found:
            virt = host.run("systemd-detect-virt --container")
            found = virt.rc == 0 and virt.stdout.strip() in CONTAINER_VIRT
        _CONTAINER_NODES[key] = bool(found)
    return _CONTAINER_NODES[key]


@pytest.fixture
def container_node(host: Any) -> bool:
    """True when this test's host is a container node (is_container_node)."""
    return is_container_node(host)


@pytest.fixture
def container_node_of() -> Callable[[Any], bool]:
    """is_container_node, for tests whose host is not the `host` fixture."""
    return is_container_node


@pytest.fixture
def inventory_vars(host: Any) -> dict[str, Any]:
    """This host's inventory variables (group_vars included, plus groups and group_names)."""
    return dict(host.ansible.get_variables())
