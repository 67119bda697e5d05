"""Overlap checks against the host's own networks, fed with saved `ip -j` output."""

from __future__ import annotations

import pytest

from provisioner.errors import SpecError
from provisioner.hostnet import check_against_host, parse_ip_json

ROUTES = """[{"dst":"default","gateway":"192.0.2.1","dev":"eth0","flags":[]},
{"dst":"172.17.0.0/16","dev":"docker0","protocol":"kernel","scope":"link","prefsrc":"172.17.0.1","flags":[]},
{"dst":"10.250.0.0/16","dev":"tun0","flags":[]},
{"dst":"192.168.56.0/24","dev":"br-7ffd1d777fa1","protocol":"kernel","scope":"link","flags":[]}]"""
ADDRS = """[{"ifindex":1,"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"}]},
{"ifindex":2,"ifname":"eth0","addr_info":[{"family":"inet","local":"192.0.2.2","prefixlen":24,"scope":"global"}]}]"""

NAMED = {"network": "192.168.56.0/24", "pod_cidr": "10.244.0.0/16", "service_cidr": "10.96.0.0/12"}


def test_parse_skips_default_route_and_loopback() -> None:
    nets = parse_ip_json(ROUTES, ADDRS)
    assert {str(n.network) for n in nets} == {"172.17.0.0/16", "10.250.0.0/16", "192.168.56.0/24", "192.0.2.0/24"}


def test_own_node_network_on_provider_bridge_is_accepted() -> None:
    check_against_host(NAMED, parse_ip_json(ROUTES, ADDRS), own_node_network="192.168.56.0/24")


def test_pod_cidr_overlapping_a_host_route_is_refused() -> None:
    named = dict(NAMED, pod_cidr="10.250.0.0/16")
    with pytest.raises(SpecError, match=r"pod_cidr 10.250.0.0/16 overlaps the host's network 10.250.0.0/16 on tun0"):
        check_against_host(named, parse_ip_json(ROUTES, ADDRS), own_node_network="192.168.56.0/24")


def test_node_network_overlapping_docker0_is_refused() -> None:
    named = dict(NAMED, network="172.17.5.0/24")
    with pytest.raises(SpecError, match="docker0"):
        check_against_host(named, parse_ip_json(ROUTES, ADDRS), own_node_network="172.17.5.0/24")


def test_node_network_inside_a_larger_bridge_network_is_refused() -> None:
    routes = '[{"dst":"192.168.0.0/16","dev":"br-0123456789ab"}]'
    with pytest.raises(SpecError, match=r"overlaps the host's network 192\.168\.0\.0/16"):
        check_against_host(NAMED, parse_ip_json(routes, "[]"), own_node_network="192.168.56.0/24")
