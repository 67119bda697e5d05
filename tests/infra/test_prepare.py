"""Stage prepare (role node_prep): what kubeadm and Docker Swarm need from every node.

On container nodes (docker provider) the kernel is the host's: the checks that only the host can
satisfy are skipped with the reason, exactly as the role reports them, or checked for what the
container really shows. Every skip's reason starts with a category of provisioner.verify.SKIP_CATEGORIES
("container node:", "not configured:", "absent:"); verify counts any other skip as a failure.
"""

from __future__ import annotations

import configparser
import ipaddress
from typing import Any

import pytest

testinfra_hosts = ["ansible://k8s_cluster", "ansible://swarm_manager", "ansible://swarm_worker"]

SYSCTL_KEYS = [
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.ipv4.ip_forward",
]
SYSCTL_FILE = "/etc/sysctl.d/99-kubernetes.conf"
MODULES_LOAD_FILE = "/etc/modules-load.d/k8s.conf"
# Built-in modules without parameters leave no /sys/module/NAME: the feature they provide shows.
MODULE_FEATURES = {
    "overlay": ("/proc/filesystems", "overlay"),
    "br_netfilter": ("/proc/sys/net/bridge/bridge-nf-call-iptables", None),
}
APT_PROXY_FILE = "/etc/apt/apt.conf.d/01provisioner-proxy"
DNF_CONF = "/etc/dnf/dnf.conf"
CALICO_UNMANAGED = "interface-name:cali*;interface-name:tunl*;interface-name:vxlan.calico"


def test_selinux_permissive_or_absent(host: Any, container_node: bool) -> None:
    if not host.file("/sys/fs/selinux/enforce").exists:
        assert not host.exists("getenforce") or host.check_output("getenforce") == "Disabled"
        return
    if container_node:
        pytest.skip("container node: SELinux is the host kernel's")
    with host.sudo():
        assert host.check_output("getenforce") == "Permissive"
    assert host.file("/etc/selinux/config").contains("^SELINUX=permissive")


def test_swap_off(host: Any, container_node: bool) -> None:
    areas = host.file("/proc/swaps").content_string.splitlines()[1:]
    if container_node and areas:
        pytest.skip(f"container node: the host has swap on ({len(areas)} area(s)); only the host can turn it off")
    meminfo = dict(line.split(":", 1) for line in host.file("/proc/meminfo").content_string.splitlines() if ":" in line)
    assert areas == []
    assert meminfo["SwapTotal"].split()[0] == "0"


def test_fstab_swap_lines_commented(host: Any) -> None:
    fstab = host.file("/etc/fstab")
    if not fstab.exists:
        pytest.skip("absent: no /etc/fstab on this node")
    active = [
        line
        for line in fstab.content_string.splitlines()
        if line.strip() and not line.lstrip().startswith("#") and len(line.split()) > 2 and line.split()[2] == "swap"
    ]
    assert active == []


@pytest.mark.parametrize("module", sorted(MODULE_FEATURES))
def test_kernel_module_present(host: Any, module: str) -> None:
    if host.file(f"/sys/module/{module}").exists:
        return
    path, word = MODULE_FEATURES[module]
    feature = host.file(path)
    assert feature.exists, f"{module}: neither /sys/module/{module} nor {path}"
    if word:
        assert feature.contains(word)


@pytest.mark.parametrize("module", sorted(MODULE_FEATURES))
def test_kernel_module_loaded_at_boot(host: Any, module: str, container_node: bool) -> None:
    if container_node:
        pytest.skip("container node: loading modules at boot belongs to the host")
    assert host.file(MODULES_LOAD_FILE).contains(f"^{module}$")


@pytest.mark.parametrize("key", SYSCTL_KEYS)
def test_sysctl_value(host: Any, key: str) -> None:
    assert host.sysctl(key) == 1


@pytest.mark.parametrize("key", SYSCTL_KEYS)
def test_sysctl_persisted(host: Any, key: str) -> None:
    assert host.file(SYSCTL_FILE).contains(f"^{key} *= *1$")


def test_hosts_file_lists_the_nodes(host: Any, inventory_vars: dict[str, Any]) -> None:
    hosts = host.file("/etc/hosts").content_string
    assert "# BEGIN node_prep: cluster nodes" in hosts
    block = hosts.split("# BEGIN node_prep: cluster nodes", 1)[1].split("# END node_prep", 1)[0]
    names = {line.split()[1]: line.split()[0] for line in block.splitlines() if line.strip()}
    variables = inventory_vars
    me = variables["inventory_hostname"]
    assert me in names
    if variables.get("node_ip"):
        assert names[me] == variables["node_ip"]
    groups = variables["groups"]
    for group in ("k8s_cluster", "swarm_manager", "swarm_worker"):
        for node in groups.get(group, []):
            assert node in names, f"{node} of {group} missing from /etc/hosts"


def test_time_sync_running(host: Any, container_node: bool) -> None:
    if container_node:
        pytest.skip("container node: the clock is the host kernel's (timesyncd: ConditionVirtualization=!container)")
    services = [host.service(name) for name in ("chronyd", "chrony", "systemd-timesyncd")]
    assert any(s.is_running and s.is_enabled for s in services)


def test_firewall_opened_or_absent(host: Any, inventory_vars: dict[str, Any]) -> None:
    """ssh and the API ports open to every source; the cluster's ports (NodePorts here) and, with a
    virtual IP, VRRP to the node network only; Calico's unused BGP and Typha ports nowhere."""
    mode = inventory_vars.get("node_prep_firewall", "open")
    if mode != "open":
        pytest.skip(f"not configured: node_prep_firewall={mode}")
    groups = set(inventory_vars.get("group_names", []))
    cidr = str(ipaddress.ip_network(str(inventory_vars["node_network_cidr"]), strict=False))
    control_plane = "kube_control_plane" in groups
    vip_port = f"{inventory_vars.get('kube_api_vip_port') or 8443}/tcp"
    vrrp = control_plane and bool(inventory_vars.get("kube_api_vip"))
    with host.sudo():
        if host.exists("firewall-cmd"):
            listed = host.check_output("firewall-cmd --list-ports").split()
            rich = host.check_output("firewall-cmd --list-rich-rules")
            assert "22/tcp" in listed
            assert ("6443/tcp" in listed) == control_plane
            assert (vip_port in listed) == vrrp
            assert (f'source address="{cidr}" protocol value="112" accept' in rich) == vrrp
            for unused in ("179/tcp", "5473/tcp", "30000-32767/tcp"):
                assert unused not in listed
            assert 'port="179"' not in rich and 'port="5473"' not in rich
            if "k8s_cluster" in groups:
                # NodePort services answer on every node, control planes included: from the node network.
                assert f'source address="{cidr}" port port="30000-32767" protocol="tcp" accept' in rich
        elif host.exists("ufw"):
            status = host.check_output("ufw status")
            rules = [line.split("#")[0].split() for line in status.splitlines()]
            opened = {(r[0], r[-1]) for r in rules if len(r) >= 3 and r[1] == "ALLOW" and "(v6)" not in r}
            assert "Status: active" in status
            assert ("22/tcp", "Anywhere") in opened
            assert (("6443/tcp", "Anywhere") in opened) == control_plane
            assert ((vip_port, "Anywhere") in opened) == vrrp
            assert not {port for port, _ in opened} & {"179/tcp", "5473/tcp"}
            if "k8s_cluster" in groups:
                # NodePort services answer on every node, control planes included: from the node network.
                assert ("30000:32767/tcp", cidr) in opened
                assert ("30000:32767/tcp", "Anywhere") not in opened
            before = host.file("/etc/ufw/before.rules").content_string
            assert (f"-A ufw-before-input -p 112 -s {cidr} -j ACCEPT" in before) == vrrp
            assert "IP-in-IP" not in before
        else:
            pytest.skip("absent: no firewall installed (node_prep_firewall_install false): the role reports a no-op")


def test_networkmanager_leaves_calico_alone(host: Any) -> None:
    if not host.file("/usr/sbin/NetworkManager").exists:
        pytest.skip("absent: NetworkManager is not installed")
    assert host.file("/etc/NetworkManager/conf.d/calico.conf").contains(CALICO_UNMANAGED.replace("*", r"\*"))


def test_package_proxy_matches_the_inventory(host: Any, inventory_vars: dict[str, Any]) -> None:
    """node_prep_package_proxy set: apt (http only) or dnf goes through it; empty: no proxy setting."""
    proxy = inventory_vars.get("node_prep_package_proxy") or ""
    if host.exists("apt-get"):
        conf = host.file(APT_PROXY_FILE)
        effective = host.run("apt-config dump Acquire::http::Proxy").stdout
        if proxy:
            assert conf.exists and conf.user == "root" and conf.mode == 0o644
            assert f'Acquire::http::Proxy "{proxy}";' in conf.content_string
            assert "Acquire::https::Proxy" not in conf.content_string  # https repositories stay direct
            assert f'Acquire::http::Proxy "{proxy}";' in effective
        else:
            assert not conf.exists, f"{APT_PROXY_FILE} left behind with node_prep_package_proxy empty"
    elif host.file(DNF_CONF).exists:
        parser = configparser.ConfigParser(interpolation=None)
        parser.read_string(host.file(DNF_CONF).content_string)
        assert parser.get("main", "proxy", fallback="") == proxy
    else:
        pytest.fail("neither apt nor dnf on this node: the roles support the Debian and RedHat families only")
