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
