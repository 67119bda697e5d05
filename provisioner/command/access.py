"""Reaching a running cluster: `ssh`, `exec` and `kubeconfig`."""

from __future__ import annotations

import os
import sys
from typing import TextIO

from provisioner import inventory
from provisioner.errors import ProvisionError
from provisioner.vagrant import Vagrant
from provisioner.workspace import Workspace


def ssh(ws: Workspace, node: str) -> int:
    spec = ws.saved_spec()
    names = [n.name for n in spec.nodes]
    if node not in names:
        raise ProvisionError(f"no node named '{node}'; nodes are: {', '.join(names)}", exit_code=2)
    vg = Vagrant(ws.root, spec.provider)
    os.execvpe("vagrant", vg.ssh_exec_args(node), vg.env)
    return 0  # not reached


def exec_cmd(ws: Workspace, group: str, command: list[str], sudo: bool, out: TextIO = sys.stdout) -> int:
    from provisioner import remote

    if not command:
        raise ProvisionError("exec needs a command after --, e.g. `exec -- uptime`", exit_code=2)
    hosts = inventory.load_inventory_hosts(ws.inventory)
    members = inventory.group_members(ws.inventory, group)
    if not members:
        raise ProvisionError(f"group '{group}' has no hosts", exit_code=2)
    results = remote.run_on_hosts({h: hosts[h] for h in members}, " ".join(command), sudo=sudo)
    return remote.print_results(results, out)


def kubeconfig(ws: Workspace, out: TextIO = sys.stdout) -> int:
    path = ws.root / "kubeconfig"
    if not path.exists():
        raise ProvisionError(f"no kubeconfig at {path} yet; it is fetched by the control_plane stage of `up`")
    out.write(f"{path}\nexport KUBECONFIG={path}\n")
    return 0
