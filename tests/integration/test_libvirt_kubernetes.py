"""VM lane: a Kubernetes cluster on two real virtual machines with the libvirt provider, from the
toolkit's own box.

What it proves, in file order against one cluster: libvirt comes up on a host without a service
manager, the box builds from Debian packages, two VMs boot (qemu; KVM only where a stock kernel
really runs), `up` forms a kubeadm + Calico cluster on them (a control plane and a worker) with the
bundle shared over virtiofs, mounted read-only, and verify passes with the data-plane checks (DNS from a pod,
pod to pod across the VMs, the NodePort on every VM from the host); swap turned on behind the
toolkit's back is turned off again; after a reboot of the worker, with no toolkit run in between,
swap stays off, the modules and sysctl values hold, containerd and kubelet run again, the bundle
share is mounted again, and verify passes; a second converge changes nothing in any stage; destroy
leaves no domain, volume, network, iptables chain or daemon of ours behind.

Opt-in for now (PROVISION_VM_KUBE_LANE=1): alone under qemu software emulation `up` alone takes
about 20 minutes here and the control plane's components restart under the load, so the lane does
not yet fit CI's budget beside the others; tests/integration/test_libvirt_vms.py is the VM lane CI
runs (swarm). It also skips, with the reason, where libvirt and qemu cannot be installed or started
(not root, no apt, libvirtd refusing to start) or when PROVISION_VM_LANE=0. Traffic goes only to
these two VMs.

Under software emulation (qemu TCG, the case on PVM hosts) one Ansible task costs seconds, so the
lane uses the box with containerd baked in (PROVISION_VM_LANE_BOX=plain builds and uses the plain
box, where the role installs it), scales the cluster's waits and timeouts (--time-scale), raises
Ansible's connection and become timeout, shares one SSH connection per VM between Ansible and
testinfra, and re-runs only the swap part of node preparation for the swap-drift check.

PROVISION_VM_LANE_KEEP=1 leaves the VMs running after a failure, for a look inside (the fixture
prints the `provision.py --dir DIR destroy -f` that removes them). Durations: pytest's --durations
lists each test; the lane writes its steps' times to $PROVISION_VM_LANE_TIMINGS (default:
vm-lane-timings.json in the test's temporary directory) and prints them at the end, with the stage
times of the first `up`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provisioner import libvirt
from tests.integration import test_libvirt_vms as vm_lane
from tests.integration.conftest import REPO, Cluster, assert_verified
from tests.integration.test_kubernetes_cluster import NODE_CHECKS

pytestmark = pytest.mark.integration

NAME = "vmkube"
# A network of its own: the lane runs beside the container lanes (scripts/test.sh runs two at once).
SUBNET = "192.168.166"
NETWORK = f"{SUBNET}.0/24"
IPS = {"cp1": f"{SUBNET}.10", "worker1": f"{SUBNET}.11"}
DOMAINS = [f"{NAME}-{n}" for n in sorted(IPS)]
# Two vCPUs each (kubeadm's preflight wants two on a control plane) and 2 GiB; waits scaled by 4 for
# the emulated CPUs. The metrics add-on stays off: it adds a Deployment and a wait of minutes under
# emulation and proves nothing VM-specific (the container lanes check it); storage stays on.
UP_ARGS = (
    "--nodes", "2", "--provider", "libvirt", "--engine", "kubernetes", "--name", NAME, "--network", NETWORK,
    "--cpus", "2", "--memory", "2048", "--runtime-source", "distro", "--time-scale", "4", "--no-metrics",
)  # fmt: skip
KUBE_STAGES = ("prepare", "runtime", "kube_packages", "control_plane", "cni", "join", "addons")
# What verify must show as passed on both VMs: the life-cycle lane's node and data-plane checks.
WANTED = {check: sorted(IPS) for check in NODE_CHECKS} | {"system_pods_running_and_ready": ["(cluster)"]}


def lane_blocker() -> str:
    """Why this lane cannot run here ("" when it can): opt-in, then what the swarm VM lane needs."""
    if os.environ.get("PROVISION_VM_KUBE_LANE") != "1":
        return (
            "the Kubernetes VM lane is opt-in (PROVISION_VM_KUBE_LANE=1): under qemu software emulation it does "
            "not yet fit CI's budget beside the other lanes"
        )
    return vm_lane.lane_blocker()


class Lane(vm_lane.Lane):
    """The swarm VM lane's helpers, with this lane's two nodes."""

    def hosts(self) -> dict[str, Any]:
        import testinfra

        os.environ.setdefault("ANSIBLE_CONFIG", str(REPO / "ansible.cfg"))  # its ssh_args (ControlMaster)
        inv = self.cluster.inventory
        return {n: testinfra.get_host(f"ansible://{n}?ansible_inventory={inv}") for n in IPS}


def _cleanup(lane: Lane) -> None:
    lane.cluster.run("destroy", "-f", check=False, timeout=900)
    if libvirt.answers():
        nets = [f"{NAME}-mgmt", *([lane.node_net] if lane.node_net else [])]
        libvirt.cleanup_cluster(DOMAINS, nets)
    libvirt.teardown_host()


@pytest.fixture(scope="module")
def lane(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Lane]:
    started = time.monotonic()
    reason = lane_blocker()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp(NAME)
    control_dir = tempfile.mkdtemp(prefix="vmcp-")  # short: a socket path has at most 107 bytes
    # testinfra's ansible backend runs ansible-inventory from PATH: the one next to this Python.
    bindir = str(Path(sys.executable).parent)
    lane_env = vm_lane.SLOW_TIMEOUT | {
        "ANSIBLE_SSH_EXTRA_ARGS": vm_lane.CONTROL_PATH_ARG.format(control_dir),
        "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
    }
    saved_env = {k: os.environ.get(k) for k in lane_env}
    os.environ.update(lane_env)
    lane = Lane(
        Cluster(root / "ws", NAME, NETWORK), daemons_before=libvirt.started_daemons(), deadline=started + vm_lane.BUDGET
    )
    lane.timings["libvirt host ready"] = round(time.monotonic() - started, 1)
    libvirt.cleanup_cluster(DOMAINS, [f"{NAME}-mgmt"])  # leftovers of an interrupted run
    failed_before = request.session.testsfailed
    try:
        yield lane
    finally:
        keep = os.environ.get("PROVISION_VM_LANE_KEEP") == "1" and request.session.testsfailed > failed_before
        if keep:
            sys.stderr.write(f"\nVM lane kept for a look: provision.py --dir {lane.cluster.root} destroy -f\n")
        else:
            _cleanup(lane)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(control_dir, ignore_errors=True)
        out = Path(os.environ.get("PROVISION_VM_LANE_TIMINGS") or root / "vm-lane-timings.json")
        lane.timings["total"] = round(time.monotonic() - started, 1)
        out.write_text(json.dumps(lane.timings, indent=2))
        sys.stderr.write(f"\nVM lane timings ({out}): {json.dumps(lane.timings)}\n")


def test_up_forms_a_verified_kubernetes_cluster_on_two_vms(lane: Lane) -> None:
    from provisioner import box

    t0 = time.monotonic()
    box_args = ("--box", box.BOX_NAME_RUNTIME) if vm_lane.RUNTIME_BOX else ()
    proc = lane.cluster.run("up", *UP_ARGS, *box_args, timeout=lane.left(3600))
    lane.step("up (2 VMs, kubeadm + Calico, verify)", t0)
    lane.node_net = libvirt.network_for_subnet(f"{SUBNET}.")
    assert re.search(r"libvirt domain type: (qemu|kvm) ", proc.stdout), proc.stdout
    state = lane.state()
    for stage in ("machines", *KUBE_STAGES):
        assert state["stages"][stage]["status"] == "done", state
        lane.timings[f"up: {stage}"] = round(float(state["stages"][stage].get("seconds") or 0), 1)
    assert_verified(proc.stdout, WANTED)


def test_the_bundle_reaches_the_vms_over_a_read_only_share(lane: Lane) -> None:
    """The nodes took the bundle from a virtiofs share of the host's bundle directory, not over SSH:
    mounted read-only, in fstab for the next boot, and no copy of the image tarballs on the node."""
    for name, host in lane.hosts().items():
        mount = host.check_output("findmnt --noheadings --output FSTYPE,OPTIONS --mountpoint /opt/provisioner/bundles")
        fstype, options = mount.split()
        assert fstype == "virtiofs" and "ro" in options.split(","), f"{name}: {mount}"
        assert host.run("grep -q ' /opt/provisioner/bundles virtiofs ' /etc/fstab").rc == 0, f"{name}: no fstab line"
        copies = host.run("ls /var/cache/kube-packages/images/*.tar 2>/dev/null | wc -l").stdout.strip()
        assert copies == "0", f"{name}: {copies} image tarballs were copied to the node"


def test_status_shows_both_vms_running(lane: Lane) -> None:
    proc = lane.cluster.run("status")
    for node, ip in IPS.items():
        assert re.search(rf"^\s+{node}\s+\S+\s+{re.escape(ip)}\s+running", proc.stdout, re.M), proc.stdout
    domains = libvirt.cluster_resources(DOMAINS).domains
    assert sorted(domains) == [f"{NAME}-{n}" for n in sorted(IPS)]
    # Each domain carries the cluster's identity (its description) and sits on the node network:
    # what `up` of another cluster checks before it makes anything.
    cluster_id = json.loads((lane.cluster.root / "cluster.json").read_text())["cluster_id"]
    mine = {m.name: m for m in libvirt.domains() if m.name in domains}
    for name in domains:
        assert mine[name].cluster_id == cluster_id, mine[name]
        assert mine[name].cluster == NAME, mine[name]
        assert NETWORK in mine[name].subnets, mine[name]


def test_vms_are_real_machines_on_the_node_network(lane: Lane) -> None:
    for name, host in lane.hosts().items():
        virt = host.run("systemd-detect-virt")
        assert virt.stdout.strip() in ("qemu", "kvm"), virt.stdout  # a VM, not a container
        assert IPS[name] in host.check_output("ip -4 -o addr show")
    ping = lane.hosts()["cp1"].run(f"ping -c1 -W5 {IPS['worker1']}")
    assert ping.rc == 0, ping.stdout + ping.stderr


def test_swap_turned_on_behind_our_back_is_turned_off_by_prepare(lane: Lane) -> None:
    on = lane.ansible("-b", "-m", "ansible.builtin.shell", "-a", vm_lane.SWAP_ON)
    assert on.returncode == 0, on.stdout + on.stderr
    assert all("/swapfile" in h.check_output("cat /proc/swaps") for h in lane.hosts().values())
    t0 = time.monotonic()
    run = lane.ansible(str(REPO / "playbooks" / "prepare.yml"), "--tags", "swap", tool="ansible-playbook")
    lane.step("prepare --tags swap (swap drift)", t0)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    recap = re.findall(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)", run.stdout, re.M)
    assert recap and all(int(c) > 0 for _, c in recap), run.stdout[-2000:]
    for host in lane.hosts().values():
        assert host.file("/proc/swaps").content_string.splitlines()[1:] == []


def test_reboot_the_worker(lane: Lane) -> None:
    t0 = time.monotonic()
    host = lane.hosts()["worker1"]
    boot = host.check_output("cat /proc/sys/kernel/random/boot_id")
    proc = lane.ansible(
        "-b", "-m", "ansible.builtin.reboot", "-a", "reboot_timeout=1200", "--limit", "worker1",
        timeout=lane.left(1800),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lane.step("reboot (worker)", t0)
    assert host.check_output("cat /proc/sys/kernel/random/boot_id") != boot, "worker1 did not reboot"


# One remote command per node gathers every after-reboot fact (each round trip costs seconds on an
# emulated CPU); tests/infra's suites then check the same in depth through `provision.py verify`.
AFTER_REBOOT_PROBE = (
    "echo swaps=$(($(wc -l < /proc/swaps) - 1)); "
    # loaded as a module, or built in (then only the feature shows)
    "{ test -d /sys/module/overlay || grep -qw overlay /proc/filesystems; } && echo module_overlay=1; "
    "{ test -d /sys/module/br_netfilter || test -d /proc/sys/net/bridge; } && echo module_br_netfilter=1; "
    "for k in net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables net.ipv4.ip_forward; do "
    "echo $k=$(cat /proc/sys/$(echo $k | tr . /) 2>/dev/null); done; "
    "for u in containerd kubelet; do echo $u=$(systemctl is-active $u)/$(systemctl is-enabled $u); done; "
    "echo bundle_share=$(findmnt --noheadings --output FSTYPE --mountpoint /opt/provisioner/bundles)"
)
AFTER_REBOOT_WANT = {
    "swaps": "0",
    "module_overlay": "1",
    "module_br_netfilter": "1",
    "net.bridge.bridge-nf-call-iptables": "1",
    "net.bridge.bridge-nf-call-ip6tables": "1",
    "net.ipv4.ip_forward": "1",
    "containerd": "active/enabled",
    "kubelet": "active/enabled",
    "bundle_share": "virtiofs",
}


def test_after_reboot_swap_modules_sysctl_runtime_and_share_held(lane: Lane) -> None:
    host = lane.hosts()["worker1"]
    deadline = time.monotonic() + 300  # units may still be starting on a slow emulated machine
    while True:
        facts = dict(line.split("=", 1) for line in host.check_output(AFTER_REBOOT_PROBE).splitlines() if "=" in line)
        wrong = {k: facts.get(k) for k, v in AFTER_REBOOT_WANT.items() if facts.get(k) != v}
        if not wrong or time.monotonic() > deadline:
            break
        time.sleep(10)
    assert wrong == {}, f"worker1 after reboot: {wrong} (want {AFTER_REBOOT_WANT})"


def test_verify_passes_after_the_reboot(lane: Lane) -> None:
    """The worker is Ready again, Calico and the smoke workload run on it: verify, no toolkit run in
    between (verify's Kubernetes checks wait, bounded, for the node to come back)."""
    t0 = time.monotonic()
    proc = lane.cluster.run("verify", check=False, timeout=lane.left(1800))
    lane.step("verify after the reboot", t0)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    # Nothing failed, and on these VMs no check skipped as on a container node (verify fails those).
    assert_verified(proc.stdout, WANTED)


def test_second_converge_changes_nothing(lane: Lane) -> None:
    """Every stage converges again with nothing to do, after the reboot too."""
    t0 = time.monotonic()
    lane.cluster.run("up", "--converge", "--no-verify", timeout=lane.left(3600))
    lane.step("second converge (every stage)", t0)
    stages = lane.state()["stages"]
    changed = {name: stages[name].get("changed") for name in KUBE_STAGES}
    assert all(v == 0 for v in changed.values()), changed


def test_destroy_leaves_nothing_behind(lane: Lane) -> None:
    node_net = lane.node_net
    t0 = time.monotonic()
    lane.cluster.run("destroy", "-f", timeout=900)
    lane.step("destroy", t0)
    assert not lane.cluster.root.exists()
    left = libvirt.cluster_resources(DOMAINS, [f"{NAME}-mgmt", *([node_net] if node_net else [])])
    assert left.empty(), left
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
    assert NETWORK not in routes and "10.254.166.0/24" not in routes, routes  # bridges gone
    assert vm_lane._dnsmasq_of(NAME) == [], "dnsmasq of the cluster's networks still runs"
    ours = lane.daemons_before | libvirt.HostState.load().daemons
    if libvirt.answers():
        # libvirtd still runs: someone else's (a service manager, or another cluster's machines).
        assert libvirt.cluster_resources(DOMAINS).empty()
    else:
        assert libvirt.started_daemons() == {}
        assert all(not libvirt.pid_alive(p, n) for n, p in ours.items())
        assert libvirt.leftover_chains() == []
