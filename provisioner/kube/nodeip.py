"""Node IP: the node's address on the cluster network (kubelet's --node-ip), from Ansible's facts."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from provisioner.kube import KubeConfigError, ipv4_network

# The address VirtualBox/libvirt NAT gives every Vagrant VM: identical on all nodes, never a node IP.
VAGRANT_NAT_ADDRESS = "10.0.2.15"


def host_ipv4_addresses(facts: Mapping[str, Any]) -> list[str]:
    """Every IPv4 address in a host's Ansible facts: primaries (by interface name), secondaries, the rest."""
    primaries: list[str] = []
    secondaries: list[str] = []
    for name in sorted(str(i) for i in facts.get("interfaces") or []):
        iface = facts.get(name.replace("-", "_").replace(".", "_")) or facts.get(name)
        if not isinstance(iface, Mapping):
            continue
        ipv4 = iface.get("ipv4")
        if isinstance(ipv4, Mapping) and ipv4.get("address"):
            primaries.append(str(ipv4["address"]))
        for extra in iface.get("ipv4_secondaries") or []:
            if isinstance(extra, Mapping) and extra.get("address"):
                secondaries.append(str(extra["address"]))
    rest = [str(a) for a in facts.get("all_ipv4_addresses") or []]
    ordered: list[str] = []
    for address in (*primaries, *secondaries, *rest):
        if address not in ordered:
            ordered.append(address)
    return ordered


def select_node_ip(facts: Mapping[str, Any], network_cidr: str, node_ip: object = "") -> str:
    """The node's address on the cluster network.

    An explicit node_ip wins (it must lie inside node_network_cidr and, when facts list addresses,
    be one of them). Otherwise the first address inside node_network_cidr, never the Vagrant NAT
    address 10.0.2.15 that every VM shares.
    """
    network = ipv4_network(network_cidr, "node_network_cidr")
    addresses = host_ipv4_addresses(facts)
    explicit = str(node_ip or "").strip()
    if explicit:
        try:
            address = ipaddress.IPv4Address(explicit)
        except ValueError:
            raise KubeConfigError(f'node_ip "{explicit}" is not an IPv4 address; fix the inventory') from None
        if address not in network:
            raise KubeConfigError(
                f"node_ip {explicit} is outside node_network_cidr {network}; set node_ip to the "
                "node's address on the cluster network"
            )
        if addresses and explicit not in addresses:
            raise KubeConfigError(
                f"node_ip {explicit} is not configured on this host (its addresses: "
                f"{', '.join(addresses)}); fix node_ip in the inventory"
            )
        return explicit
    candidates = [a for a in addresses if a != VAGRANT_NAT_ADDRESS and ipaddress.IPv4Address(a) in network]
    if not candidates:
        seen = ", ".join(addresses) if addresses else "none (were facts gathered?)"
        raise KubeConfigError(
            f"no address of this host lies inside node_network_cidr {network} (addresses: {seen}); "
            "set node_ip for the host or fix node_network_cidr"
        )
    return candidates[0]
