"""Filters of the swarm role: the decisions of the role, as pure functions that unit tests can feed.

swarm_address_in      a node's address inside the cluster network, for hosts without node_ip
swarm_membership      who initializes, who joins as what, who is promoted or demoted, and what is wrong
swarm_label_changes   the `--label-add` arguments that bring a node's labels to the planned ones
swarm_stale_nodes     entries of `docker node ls` left behind by machines that were recreated
swarm_overlapping     the address pools that overlap a network (the overlay pool against the node network)

The swarm state of a node is what `docker info --format '{{json .Swarm}}'` prints: LocalNodeState
(inactive | pending | active | error | locked), NodeID, ControlAvailable (true on managers), Cluster
(with ID, on managers only) and RemoteManagers (a list of {NodeID, Addr}).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from typing import Any

JOINABLE = "inactive"
MEMBER = "active"


def swarm_address_in(addresses: Iterable[Any] | None, cidr: str) -> str:
    """First entry of ``addresses`` that lies inside ``cidr`` ("" when none does; junk entries are ignored)."""
    network = ipaddress.ip_network(str(cidr), strict=False)
    for raw in addresses or []:
        try:
            address = ipaddress.ip_address(str(raw).split("/", 1)[0])
        except ValueError:
            continue
        if address.version == network.version and address in network:
            return str(address)
    return ""


def _state(states: Mapping[str, Any], host: str) -> dict[str, Any]:
    raw = states.get(host)
    return dict(raw) if isinstance(raw, Mapping) else {}


def _local_state(state: Mapping[str, Any]) -> str:
    return str(state.get("LocalNodeState") or "").lower()


def _cluster_id(state: Mapping[str, Any]) -> str:
    cluster = state.get("Cluster")
    return str(cluster.get("ID") or "") if isinstance(cluster, Mapping) else ""


def _remote_manager_ids(state: Mapping[str, Any]) -> set[str]:
    remotes = state.get("RemoteManagers") or []
    return {str(r.get("NodeID")) for r in remotes if isinstance(r, Mapping) and r.get("NodeID")}


def swarm_membership(states: Mapping[str, Any], managers: Iterable[str], workers: Iterable[str]) -> dict[str, Any]:
    """Plan the swarm from every node's current state.

    ``states`` maps each host to its swarm state; ``managers`` and ``workers`` are the hosts of the
    swarm_manager and swarm_worker groups, in inventory order. The result:

    bootstrap       the manager that runs init (when ``init``) and every later manager-side command:
                    the first planned manager that already controls the swarm, else the first manager
    init            true when no planned manager is in a swarm yet
    join_managers   inactive hosts of swarm_manager (join with the manager token)
    join_workers    inactive hosts of swarm_worker (join with the worker token)
    promote         active members planned as managers that are workers today
    demote          active members planned as workers that are managers today
    problems        sentences describing what the role must not touch (empty when all is well)
    """
    manager_list = list(managers)
    worker_list = [w for w in workers if w not in manager_list]
    problems: list[str] = []

    both = sorted(set(manager_list) & set(workers))
    if both:
        problems.append(f"{', '.join(both)} listed in both swarm_manager and swarm_worker; keep each host in one group")
    if not manager_list:
        problems.append("swarm_manager is empty; put at least one host in it")
    elif len(manager_list) % 2 == 0:
        problems.append(
            f"swarm_manager has {len(manager_list)} hosts; use an odd number (1, 3, 5) so the managers keep a Raft majority"
        )

    everyone = manager_list + worker_list
    for host in everyone:
        local = _local_state(_state(states, host))
        if local not in (JOINABLE, MEMBER):
            hint = {
                "locked": "the swarm is autolocked: run `docker swarm unlock` on it",
                "pending": "a join is still in progress or hangs: wait, or run `docker swarm leave --force` on it",
                "error": "its last join failed: run `docker swarm leave --force` on it",
            }.get(local, "`docker info` reports no usable swarm state")
            problems.append(f"{host} is in swarm state '{local or 'unknown'}'; {hint}")

    controlling = [m for m in manager_list if _state(states, m).get("ControlAvailable") is True]
    bootstrap = controlling[0] if controlling else (manager_list[0] if manager_list else "")
    init = not controlling

    cluster_ids = {_cluster_id(_state(states, m)) for m in controlling} - {""}
    if len(cluster_ids) > 1:
        problems.append(
            f"the managers {', '.join(controlling)} belong to {len(cluster_ids)} different swarms; "
            f"make one of them leave (`docker swarm leave --force`) and run again"
        )

    our_manager_ids = {str(_state(states, m).get("NodeID") or "") for m in controlling} - {""}
    members = [h for h in everyone if _local_state(_state(states, h)) == MEMBER]
    for host in members:
        if host in controlling:
            continue
        if init:
            problems.append(
                f"{host} is in a swarm but no host of swarm_manager manages one; run `docker swarm leave --force` on "
                f"{host}, or list its manager in swarm_manager"
            )
        elif not (_remote_manager_ids(_state(states, host)) & our_manager_ids):
            problems.append(
                f"{host} is in a swarm that none of the planned managers ({', '.join(controlling)}) manages; run "
                f"`docker swarm leave --force` on {host} to let it join this one"
            )

    def joinable(hosts: list[str]) -> list[str]:
        return [h for h in hosts if _local_state(_state(states, h)) == JOINABLE]

    join_managers = [m for m in joinable(manager_list) if not (init and m == bootstrap)]
    return {
        "bootstrap": bootstrap,
        "init": init,
        "join_managers": join_managers,
        "join_workers": joinable(worker_list),
        "promote": [m for m in manager_list if m in members and m not in controlling],
        "demote": [w for w in worker_list if w in members and _state(states, w).get("ControlAvailable") is True],
        "problems": problems,
    }


def _label_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def swarm_label_changes(current: Mapping[str, Any] | None, desired: Mapping[str, Any] | None) -> list[str]:
    """`--label-add key=value` arguments (flattened, sorted by key) for the labels missing or different.

    Labels present on the node but not planned are left alone. YAML booleans become "true"/"false",
    as a user writing `ssd: true` means.
    """
    have = {str(k): _label_value(v) for k, v in (current or {}).items()}
    args: list[str] = []
    for key in sorted(desired or {}, key=str):
        value = _label_value((desired or {})[key])
        if have.get(str(key)) != value:
            args += ["--label-add", f"{key}={value}"]
    return args


def swarm_stale_nodes(rows: Iterable[Mapping[str, Any]], current: Mapping[str, str]) -> list[dict[str, Any]]:
    """Entries of `docker node ls --format '{{json .}}'` that a recreated machine left behind.

    ``current`` maps each inventory node's hostname to its NodeID today. An entry is stale when it
    is Down, carries the hostname of an inventory node, and is not that node's current ID: the
    machine was recreated and joined again under a new ID. Nothing else is ever reported.
    """
    stale: list[dict[str, Any]] = []
    for row in rows or []:
        hostname = str(row.get("Hostname") or "")
        node = str(row.get("ID") or "")
        if not node or hostname not in current or not current[hostname] or current[hostname] == node:
            continue
        if str(row.get("Status") or "").lower() != "down":
            continue
        stale.append({"ID": node, "Hostname": hostname, "manager": bool(row.get("ManagerStatus"))})
    return stale


def swarm_overlapping(pools: Iterable[str] | None, cidr: str) -> list[str]:
    """The entries of ``pools`` that overlap ``cidr`` (unparsable entries are returned too: they are wrong)."""
    network = ipaddress.ip_network(str(cidr), strict=False)
    clashes: list[str] = []
    for pool in pools or []:
        try:
            if ipaddress.ip_network(str(pool), strict=False).overlaps(network):
                clashes.append(str(pool))
        except ValueError:
            clashes.append(str(pool))
    return clashes


class FilterModule:
    """Ansible entry point."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {
            "swarm_address_in": swarm_address_in,
            "swarm_membership": swarm_membership,
            "swarm_label_changes": swarm_label_changes,
            "swarm_stale_nodes": swarm_stale_nodes,
            "swarm_overlapping": swarm_overlapping,
        }
