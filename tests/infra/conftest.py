"""Shared fixtures of the testinfra suites (tests/infra/test_<stage>.py).

Run a suite against an inventory (ansible-inventory must be on PATH, e.g. the repo's .venv/bin):
    pytest tests/infra/test_prepare.py --ansible-inventory=INV --connection=ansible
"""

from __future__ import annotations

from typing import Any

import pytest

CONTAINER_VIRT = {"docker", "container", "containerd", "podman", "lxc", "lxc-libvirt", "systemd-nspawn"}


@pytest.fixture
def container_node(host: Any) -> bool:
    """True on a system container node: it shares the host's kernel (swap, modules, clock)."""
    if host.file("/.dockerenv").exists:
        return True
    virt = host.run("systemd-detect-virt --container")
    return bool(virt.rc == 0 and virt.stdout.strip() in CONTAINER_VIRT)


@pytest.fixture
def inventory_vars(host: Any) -> dict[str, Any]:
    """This host's inventory variables (group_vars included, plus groups and group_names)."""
    return dict(host.ansible.get_variables())
