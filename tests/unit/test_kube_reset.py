"""kube_reset's choice of interfaces to delete (kube_reset_interface_regex over `ip -o link show`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from provisioner.kube import clusterstate

REPO = Path(__file__).resolve().parents[2]
DEFAULTS = yaml.safe_load((REPO / "roles" / "kube_reset" / "defaults" / "main.yml").read_text())
REGEX = DEFAULTS["kube_reset_interface_regex"]

# A node after Calico (VXLAN) ran and the ipip module got loaded: tunl0 exists and stays.
IP_LINK = """1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000\\    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00
2: eth0@if12: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT group default \\    link/ether 02:42:c0:a8:38:0a brd ff:ff:ff:ff:ff:ff link-netnsid 0
3: tunl0@NONE: <NOARP> mtu 1480 qdisc noop state DOWN mode DEFAULT group default qlen 1000\\    link/ipip 0.0.0.0 brd 0.0.0.0
4: vxlan.calico: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 qdisc noqueue state UNKNOWN mode DEFAULT group default \\    link/ether 66:1b:4e:8f:2a:10 brd ff:ff:ff:ff:ff:ff
5: cali3f2a9b1c0d4@if3: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 qdisc noqueue state UP mode DEFAULT group default \\    link/ether ee:ee:ee:ee:ee:ee brd ff:ff:ff:ff:ff:ff link-netns cni-1234
6: docker0: <NO-CARRIER,BROADCAST,MULTICAST,UP> mtu 1500 qdisc noqueue state DOWN mode DEFAULT group default \\    link/ether 02:42:5d:1a:2b:3c brd ff:ff:ff:ff:ff:ff
7: kube-ipvs0: <BROADCAST,NOARP> mtu 1500 qdisc noop state DOWN mode DEFAULT group default \\    link/ether 0a:1b:2c:3d:4e:5f brd ff:ff:ff:ff:ff:ff
"""


def _deleted(ip_link_output: str) -> list[str]:
    """What the role's task loops over: kube_interface_names | select('match', regex) (re.match)."""
    return [name for name in clusterstate.interface_names(ip_link_output) if re.match(REGEX, name)]


def test_reset_deletes_the_cni_interfaces_but_not_tunl0() -> None:
    assert _deleted(IP_LINK) == ["vxlan.calico", "cali3f2a9b1c0d4", "kube-ipvs0"]


@pytest.mark.parametrize("name", ["cali3f2a9b1c0d4", "vxlan.calico", "vxlan-v6.calico", "cni0", "kube-ipvs0"])
def test_cni_interfaces_match(name: str) -> None:
    assert re.match(REGEX, name)


@pytest.mark.parametrize(
    "name", ["tunl0", "lo", "eth0", "docker0", "vxlan_calico", "calico", "cali-not-hex", "cni0x", "xcni0"]
)
def test_other_interfaces_stay(name: str) -> None:
    """tunl0 belongs to the kernel's ipip module, which refuses to delete it: a second reset would
    otherwise report a change every time."""
    assert not re.match(REGEX, name)


def test_a_second_reset_finds_nothing_to_delete() -> None:
    left = "\n".join(
        line for line in IP_LINK.splitlines() if not re.match(r"^\d+: (vxlan\.calico|cali|kube-ipvs0)", line)
    )
    assert _deleted(left) == []
