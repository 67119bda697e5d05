"""Overlap checks against the host's own networks, fed with saved `ip -j` output."""

from __future__ import annotations

import ipaddress

import pytest

from provisioner.errors import SpecError
from provisioner.hostnet import check_against_host, check_swarm_pool, clear_swarm_pool, parse_ip_json

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


# A libvirt network of another cluster and a VPN route, both inside Docker's default swarm pool.
TEN_ROUTES = """[{"dst":"10.254.159.0/24","dev":"virbr1","protocol":"kernel","scope":"link","flags":[]},
{"dst":"10.1.0.0/16","dev":"tun0","flags":[]}]"""
TEN_ADDRS = (
    """[{"ifindex":5,"ifname":"virbr1","addr_info":[{"family":"inet","local":"10.254.159.1","prefixlen":24}]}]"""
)


def test_a_chosen_swarm_pool_overlapping_host_networks_is_refused_naming_them_and_a_clear_pool() -> None:
    host = parse_ip_json(TEN_ROUTES, TEN_ADDRS)
    with pytest.raises(SpecError) as info:
        check_swarm_pool("10.0.0.0/8", True, "192.168.56.0/24", host)
    message = info.value.message
    assert message.startswith("swarm_address_pool 10.0.0.0/8 overlaps the host's networks ")
    # Each network once (virbr1's route and address are the same network), then the fix.
    assert "10.254.159.0/24 on virbr1, 10.1.0.0/16 on tun0;" in message
    assert "--swarm-address-pool 10.2.0.0/16" in message and "\n" not in message
    assert info.value.exit_code == 2


def test_a_chosen_swarm_pool_clear_of_the_host_is_accepted() -> None:
    assert check_swarm_pool("10.2.0.0/16", True, "192.168.56.0/24", parse_ip_json(TEN_ROUTES, TEN_ADDRS)) == ""
    assert check_swarm_pool("172.30.0.0/16", True, "192.168.56.0/24", parse_ip_json(ROUTES, ADDRS)) == ""


def test_dockers_default_swarm_pool_overlapping_a_host_network_is_a_note_not_a_refusal() -> None:
    note = check_swarm_pool("10.0.0.0/8", False, "192.168.56.0/24", parse_ip_json(TEN_ROUTES, TEN_ADDRS))
    assert "Docker's default pool 10.0.0.0/8" in note and "10.254.159.0/24 on virbr1" in note
    assert "--swarm-address-pool 10.2.0.0/16" in note
    # Clear of the host (the sample host has 10.250.0.0/16 on tun0: that one is noted too).
    assert check_swarm_pool("10.0.0.0/8", False, "192.168.56.0/24", []) == ""
    assert "10.250.0.0/16 on tun0" in check_swarm_pool(
        "10.0.0.0/8", False, "192.168.56.0/24", parse_ip_json(ROUTES, ADDRS)
    )


def test_the_suggested_pool_avoids_the_host_and_the_node_network() -> None:
    assert clear_swarm_pool([]) == "10.1.0.0/16"
    avoid = [ipaddress.IPv4Network(n) for n in ("10.1.0.0/16", "10.2.3.0/24", "10.3.0.0/24")]
    assert clear_swarm_pool(avoid) == "10.4.0.0/16"
    assert clear_swarm_pool([ipaddress.IPv4Network("10.0.0.0/8")]) == ""
