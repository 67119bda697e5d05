"""The host's own networks, so that a cluster spec never collides with them."""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from provisioner.errors import SpecError

log = logging.getLogger(__name__)

# Interfaces that a provider creates for the node network itself; a route on one of these that is
# exactly the node network is the cluster's own network from an earlier run, not a clash.
PROVIDER_BRIDGES = re.compile(r"^(br-[0-9a-f]{12}|vboxnet\d+|virbr\d+)$")


@dataclass(frozen=True)
class HostNet:
    network: ipaddress.IPv4Network
    device: str
    source: str  # "route" or "address"


def parse_ip_json(routes_json: str, addrs_json: str) -> list[HostNet]:
    """Host networks from `ip -j -4 route show` and `ip -j -4 addr show`; the default route is left out."""
    nets: list[HostNet] = []
    for route in json.loads(routes_json or "[]"):
        dst = route.get("dst", "")
        if dst in ("default", "") or not route.get("dev"):
            continue
        try:
            net = ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False)
        except ValueError:
            continue
        if isinstance(net, ipaddress.IPv4Network):
            nets.append(HostNet(net, route["dev"], "route"))
    for link in json.loads(addrs_json or "[]"):
        for info in link.get("addr_info", []):
            if info.get("family") != "inet" or info.get("scope") == "host":
                continue
            net = ipaddress.ip_network(f"{info['local']}/{info.get('prefixlen', 32)}", strict=False)
            if isinstance(net, ipaddress.IPv4Network):
                nets.append(HostNet(net, link.get("ifname", "?"), "address"))
    return nets


def host_networks() -> list[HostNet]:
    if shutil.which("ip") is None:
        log.warning("`ip` not found (apt-get install iproute2): the host's networks are not checked")
        return []
    routes = subprocess.run(["ip", "-j", "-4", "route", "show"], capture_output=True, text=True, check=False)
    addrs = subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True, check=False)
    return parse_ip_json(routes.stdout, addrs.stdout)


def check_against_host(named: dict[str, str], host: list[HostNet], own_node_network: str | None) -> None:
    """Refuse any spec range that overlaps one of the host's networks.

    `own_node_network` is the spec's node network: a host route that equals it exactly on a provider
    bridge is the cluster's own network (an earlier `up`), which is fine.
    """
    for field_name, cidr in named.items():
        net = ipaddress.ip_network(cidr)
        for hn in host:
            if not net.overlaps(hn.network):
                continue
            if cidr == own_node_network and hn.network == net and PROVIDER_BRIDGES.match(hn.device):
                continue
            raise SpecError(
                f"{field_name} {cidr} overlaps the host's network {hn.network} on {hn.device}; "
                f"choose a {field_name} outside it (e.g. --{field_name.replace('_', '-')} with another range)"
            )


def overlapping(cidr: str, host: list[HostNet]) -> list[HostNet]:
    """The host's networks that overlap `cidr`, each network on each device once."""
    net = ipaddress.ip_network(cidr)
    found: dict[tuple[ipaddress.IPv4Network, str], HostNet] = {}
    for hn in host:
        if net.overlaps(hn.network):
            found.setdefault((hn.network, hn.device), hn)
    return list(found.values())


def clear_swarm_pool(avoid: list[ipaddress.IPv4Network]) -> str:
    """The first /16 of 10.0.0.0/8 from 10.1.0.0/16 on that overlaps none of `avoid` ("" if none is
    left). 10.0.0.0/16 is passed over: on VirtualBox VMs it holds the NAT network 10.0.2.0/24."""
    for second in range(1, 256):
        candidate = ipaddress.IPv4Network(f"10.{second}.0.0/16")
        if not any(candidate.overlaps(net) for net in avoid):
            return str(candidate)
    return ""


def check_swarm_pool(pool: str, chosen: bool, node_network: str, host: list[HostNet]) -> str:
    """Check the swarm's overlay address pool against the host's networks before anything is made.

    A pool the spec chose (`chosen`) that overlaps one of them is refused: a service on an overlay
    network given those addresses could not reach that network. Docker's default pool (10.0.0.0/8,
    when the spec names none) is only warned about, with the returned note ("" when clear): many
    hosts route some 10.x network (a VPN, a libvirt network of another cluster), and Docker hands
    out a pool's /24s from its start, so those rarely meet; refusing would stop every default
    swarm there."""
    clashes = overlapping(pool, host)
    if not clashes:
        return ""
    noun, them = ("network", "it") if len(clashes) == 1 else ("networks", "them")
    where = f"{noun} " + ", ".join(f"{hn.network} on {hn.device}" for hn in clashes)
    avoid = [hn.network for hn in host] + [ipaddress.IPv4Network(node_network)]
    suggestion = clear_swarm_pool(avoid)
    fix = f"--swarm-address-pool {suggestion}" if suggestion else f"--swarm-address-pool with a range clear of {them}"
    if chosen:
        raise SpecError(
            f"swarm_address_pool {pool} overlaps the host's {where}; choose a pool clear of {them}, "
            f"e.g. {fix} (or swarm_address_pool in the spec file)"
        )
    return (
        f"the swarm's overlay networks take addresses from Docker's default pool {pool}, which overlaps "
        f"the host's {where}; to keep them apart, pass {fix}"
    )


def upstream_nameservers(
    paths: tuple[Path, ...] = (Path("/etc/resolv.conf"), Path("/run/systemd/resolve/resolv.conf")),
) -> list[str]:
    """This host's DNS servers that are not on loopback (a stub resolver such as systemd-resolved's
    127.0.0.53 is replaced by the upstream servers it lists in its own file): what Docker's embedded
    DNS forwards container nodes' queries to."""
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            continue
        servers = parse_nameservers(text)
        if servers:
            return servers
    return []


def parse_nameservers(text: str) -> list[str]:
    servers = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                addr = ipaddress.ip_address(parts[1].split("%")[0])
            except ValueError:
                continue
            if not addr.is_loopback:
                servers.append(parts[1])
    return servers
