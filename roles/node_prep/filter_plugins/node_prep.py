"""Filters of the node_prep role.

node_prep_address_in: pick a node's address on the cluster's private network from the addresses
Ansible discovered (ansible_facts.all_ipv4_addresses), for hosts whose inventory has no node_ip.
Vagrant VMs carry a NAT address (10.0.2.15) first, so "the first address" is never good enough.

node_prep_group_union: the firewall plan of a node, the union of the ports (or IP protocols) listed
for the inventory groups it belongs to.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def node_prep_group_union(per_group: Mapping[str, Any] | None, group_names: Iterable[str]) -> list[str]:
    """The entries of ``per_group`` (group -> list, nested lists flattened) for the groups in
    ``group_names``, in the mapping's order and without repeats."""
    groups = {str(g) for g in group_names or []}
    union: list[str] = []

    def add(value: Any) -> None:
        if isinstance(value, list | tuple):
            for item in value:
                add(item)
        elif value is not None and value != "" and str(value) not in union:
            union.append(str(value))

    for group, entries in (per_group or {}).items():
        if str(group) in groups:
            add(entries)
    return union


def node_prep_address_in(addresses: Iterable[Any], cidr: str) -> str:
    """Return the first address of ``addresses`` inside ``cidr``, or "" when none is.

    Entries that are not IP addresses (None, "", garbage) are ignored, so the filter can be fed
    straight from facts of any host.
    """
    network = ipaddress.ip_network(str(cidr), strict=False)
    for raw in addresses or []:
        try:
            address = ipaddress.ip_address(str(raw).split("/", 1)[0])
        except ValueError:
            continue
        if address.version == network.version and address in network:
            return str(address)
    return ""


class FilterModule:
    """Ansible entry point."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {"node_prep_address_in": node_prep_address_in, "node_prep_group_union": node_prep_group_union}
