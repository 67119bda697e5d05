"""A cluster's identity: made once when the cluster is first created, kept in its cluster.json and
on each of its machines (docker: container labels), so that the clean-up of one state directory
removes only its own machines, and a second cluster cannot take a name or node network that a
running cluster holds.

A machine is the cluster's own when it carries the cluster's id, or when the cluster's Vagrant
directory records it (machines made before identities existed carry only the cluster name).
The conflict rules are pure functions over what the provider reports, for the unit tests.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

from provisioner.errors import ProvisionError

LABEL_NAME = "org.provisioner.cluster"
LABEL_ID = "org.provisioner.cluster-id"
LABEL_DIR = "org.provisioner.dir"


def new_id() -> str:
    return secrets.token_hex(6)


@dataclass(frozen=True)
class Machine:
    """A machine (container or domain) as the provider reports it."""

    ident: str  # the provider's id (docker container id, libvirt domain uuid)
    name: str  # the provider's name (docker container name, libvirt domain name)
    cluster: str = ""  # the cluster name it was made for ("" when not the toolkit's)
    cluster_id: str = ""  # "" for machines made before identities, or not the toolkit's
    state_dir: str = ""  # the state directory of the cluster that made it, when known
    subnets: tuple[str, ...] = ()  # the networks it is attached to


def vagrant_machine_ids(root: Path, provider: str) -> set[str]:
    """The machine ids Vagrant keeps for this cluster (vagrant/machines/<node>/<provider>/id)."""
    base = root / "vagrant" / "machines"
    if not base.is_dir():
        return set()
    ids = set()
    for path in base.glob(f"*/{provider}/id"):
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        if text:
            ids.add(text)
    return ids


def is_ours(machine: Machine, cluster_id: str, vagrant_ids: set[str]) -> bool:
    if cluster_id and machine.cluster_id == cluster_id:
        return True
    # Docker reports short ids, Vagrant keeps the full one.
    return any(v.startswith(machine.ident) or machine.ident.startswith(v) for v in vagrant_ids if machine.ident)


def conflict(
    machines: list[Machine],
    *,
    name: str,
    network: str,
    node_names: list[str],
    cluster_id: str,
    vagrant_ids: set[str],
) -> str:
    """One sentence naming what another cluster (or a foreign machine) holds of this cluster's name,
    node network or machine names, and the fix; "" when all is clear."""
    others = [m for m in machines if not is_ours(m, cluster_id, vagrant_ids)]
    same_name = [m for m in others if m.cluster == name]
    if same_name:
        return (
            f"the cluster name '{name}' is taken by another cluster ({_where(same_name)}); "
            f"pass another --name, or destroy that cluster first"
        )
    wanted = set(node_names)
    clash = [m for m in others if m.name in wanted]
    if clash:
        return (
            f"machine name {clash[0].name} is taken ({_where(clash)}); pass another --name, or remove "
            f"that machine first"
        )
    on_net = [m for m in others if any(_overlap(network, s) for s in m.subnets)]
    if on_net:
        return (
            f"the node network {network} is used by {_where(on_net)}; pass another --network, or destroy "
            f"that cluster first"
        )
    return ""


def _overlap(a: str, b: str) -> bool:
    """Two networks share addresses (vagrant-libvirt takes an existing network by its address alone,
    so 192.168.56.0/25 would land on another cluster's 192.168.56.0/24)."""
    try:
        return ipaddress.ip_network(a, strict=False).overlaps(ipaddress.ip_network(b, strict=False))
    except ValueError:
        return a == b


def _where(machines: list[Machine]) -> str:
    first = machines[0]
    names = ", ".join(sorted(m.name for m in machines)[:4]) + (", ..." if len(machines) > 4 else "")
    if not first.cluster:
        return f"machines outside this toolkit: {names}"
    where = f"cluster '{first.cluster}'"
    if first.state_dir:
        where += f" of {first.state_dir}, `provision.py --dir {first.state_dir} destroy` removes it"
    return f"{where}; machines {names}"


def refuse_conflict(message: str) -> None:
    if message:
        raise ProvisionError(message, exit_code=2)
