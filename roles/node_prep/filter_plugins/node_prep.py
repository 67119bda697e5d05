"""Filters of the node_prep role.

node_prep_address_in: pick a node's address on the cluster's private network from the addresses
Ansible discovered (ansible_facts.all_ipv4_addresses), for hosts whose inventory has no node_ip.
Vagrant VMs carry a NAT address (10.0.2.15) first, so "the first address" is never good enough.

node_prep_group_union: the union of the ports (or IP protocols) listed for the inventory groups a node
belongs to.

node_prep_firewall_plan: what the firewall of a node opens and to whom. Ports open to every source
(the API server, the endpoint of several control planes), ports and IP protocols open to the node
network only (etcd, kubelet, VXLAN, VRRP...), and what to take away: the rules that open one of those
to every source (earlier versions of the role made them) and the ports nothing here uses any more.
The firewalld rich rules and ufw's before.rules lines are written here, so that both backends apply
the same plan and a unit test can read it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

# "PORT/PROTO" or "FIRST-LAST/PROTO", as firewalld writes them (ufw wants FIRST:LAST).
PORT_SPEC = re.compile(r"^([0-9]{1,5})(?:-([0-9]{1,5}))?/(tcp|udp)$")


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


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(str(i) for i in items))


def _port_specs(entries: Iterable[str], what: str) -> list[str]:
    specs: list[str] = []
    for entry in entries:
        match = PORT_SPEC.match(entry)
        if match is None:
            raise ValueError(f"{what}: {entry!r} is not PORT/PROTO or FIRST-LAST/PROTO (proto tcp or udp)")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if not 1 <= first <= last <= 65535:
            raise ValueError(f"{what}: {entry!r} is not a port or an ascending range within 1-65535")
        specs.append(entry)
    return specs


def _source_network(source: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    text = "" if source is None else str(source).strip()
    if not text:
        raise ValueError(
            "node_prep_firewall_source is empty: the cluster's ports are opened to the node network only, "
            "so set node_network_cidr (group_vars) or node_prep_firewall_source to it"
        )
    try:
        # strict=False: 192.168.56.10/24 is taken as its network, the form both firewalls store.
        return ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise ValueError(f"node_prep_firewall_source {text!r} is not a network (CIDR): {exc}") from exc


def node_prep_firewall_plan(
    group_names: Iterable[str],
    public_ports: Mapping[str, Any] | None,
    ports: Mapping[str, Any] | None,
    protocols: Mapping[str, Any] | None,
    source: Any,
    ip_protocols: Mapping[str, Any],
    retired_ports: Iterable[str] = (),
    retired_protocols: Iterable[Any] = (),
    ssh_port: Any = 22,
) -> dict[str, Any]:
    """The firewall plan of a node in the groups ``group_names``.

    public_ports / ports / protocols: group -> list (see node_prep_group_union); ``ports`` and
    ``protocols`` are opened to ``source`` (the node network) only, ``public_ports`` to every source.
    ip_protocols: protocol name -> IP protocol number. retired_*: what earlier versions of the role
    opened to every source and nothing uses now; they are taken away unless a list above names them.
    The ssh port is never taken away (the play must not lock itself out).
    """
    public = _port_specs(node_prep_group_union(public_ports, group_names), "node_prep_firewall_public_ports")
    restricted = [
        p for p in _port_specs(node_prep_group_union(ports, group_names), "node_prep_firewall_ports") if p not in public
    ]
    wanted = node_prep_group_union(protocols, group_names)
    unknown = [name for name in wanted if name not in ip_protocols]
    if unknown:
        raise ValueError(
            f"node_prep_firewall_protocols: unknown protocol(s) {', '.join(unknown)}; known: {', '.join(ip_protocols)}"
        )
    numbers = {name: int(number) for name, number in ip_protocols.items()}
    ssh = f"{ssh_port}/tcp"
    # Never open to every source: the node network's ports, and the retired ones nobody listed as public.
    revoke_ports = [p for p in _unique([*restricted, *retired_ports]) if p not in public and p != ssh]
    revoke_protocols = _unique([*(str(n) for n in numbers.values()), *(str(int(n)) for n in retired_protocols)])
    plan: dict[str, Any] = {
        "source": "",
        "family": "",
        "public_ports": public,
        "ports": restricted,
        "protocols": wanted,
        "rich_rules": [],
        "withdrawn_rich_rules": [],
        "ufw_rules_file": "/etc/ufw/before.rules",
        "ufw_protocol_rules": [],
        "revoke_ports": revoke_ports,
        "revoke_protocols": revoke_protocols,
    }
    if not restricted and not wanted:
        return plan
    network = _source_network(source)
    family = f"ipv{network.version}"
    head = f'rule family="{family}" source address="{network}"'
    chain = "ufw-before-input" if network.version == 4 else "ufw6-before-input"
    plan |= {
        "source": str(network),
        "family": family,
        "rich_rules": [
            *(f'{head} port port="{p.split("/")[0]}" protocol="{p.split("/")[1]}" accept' for p in restricted),
            *(f'{head} protocol value="{numbers[name]}" accept' for name in wanted),
        ],
        "withdrawn_rich_rules": [
            f'{head} protocol value="{number}" accept' for name, number in numbers.items() if name not in wanted
        ],
        "ufw_rules_file": "/etc/ufw/before.rules" if network.version == 4 else "/etc/ufw/before6.rules",
        "ufw_protocol_rules": [f"-A {chain} -p {numbers[name]} -s {network} -j ACCEPT" for name in wanted],
    }
    return plan


class FilterModule:
    """Ansible entry point."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {
            "node_prep_address_in": node_prep_address_in,
            "node_prep_firewall_plan": node_prep_firewall_plan,
            "node_prep_group_union": node_prep_group_union,
        }
