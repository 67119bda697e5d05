"""Which Vagrant provider to use, and the checks each one needs before machines are created."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioner import identity
from provisioner.errors import ProvisionError, ToolMissing
from provisioner.spec import ClusterSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Choice:
    provider: str
    reason: str


def _ok(cmd: list[str], timeout: float = 20) -> bool:
    if shutil.which(cmd[0]) is None:
        return False
    try:
        return subprocess.run(cmd, capture_output=True, timeout=timeout, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def virtualbox_usable() -> tuple[bool, str]:
    if shutil.which("VBoxManage") is None:
        return False, "VBoxManage not installed"
    if not os.path.exists("/dev/vboxdrv"):
        return False, "VirtualBox kernel driver /dev/vboxdrv missing"
    if not _ok(["VBoxManage", "list", "hostonlyifs"]):
        return False, "VBoxManage does not answer"
    return True, "VirtualBox installed and its kernel driver loaded"


def libvirt_usable() -> tuple[bool, str]:
    """libvirt, qemu and vagrant-libvirt installed, and libvirtd answering or startable by the toolkit
    (provisioner.libvirt starts it where no service manager does). The reason names the domain type."""
    for tool, pkg in (
        ("virsh", "libvirt-clients"),
        ("libvirtd", "libvirt-daemon-system"),
        ("qemu-system-x86_64", "qemu-system-x86"),
    ):
        if shutil.which(tool) is None:
            return False, f"{tool} not installed (Debian package {pkg}; scripts/setup-libvirt.sh installs it)"
    if shutil.which("vagrant") is None:
        return False, "vagrant not installed"
    plugins = subprocess.run(["vagrant", "plugin", "list"], capture_output=True, text=True, check=False)
    if "vagrant-libvirt" not in plugins.stdout:
        return False, "the vagrant-libvirt plugin is not installed (Debian package vagrant-libvirt)"
    kind, why = libvirt_domain_type()
    if _ok(["virsh", "-c", "qemu:///system", "version"]):
        state = "libvirtd answers"
    elif os.geteuid() == 0:
        state = "libvirtd is started on demand"
    else:
        return False, "libvirtd does not answer on qemu:///system and only root can start it"
    return True, f"{state}, vagrant-libvirt installed; domain type {kind}: {why}"


def libvirt_domain_type() -> tuple[str, str]:
    """`kvm` only where a stock guest kernel really runs under /dev/kvm (not PVM), else `qemu` (TCG)."""
    from provisioner.libvirt import domain_type

    return domain_type()


def docker_usable() -> tuple[bool, str]:
    if shutil.which("docker") is None:
        return False, "docker not installed"
    if not _ok(["docker", "info"]):
        return False, "the Docker daemon does not answer (`docker info` fails)"
    return True, "the Docker daemon answers (container nodes)"


CHECKS = {"virtualbox": virtualbox_usable, "libvirt": libvirt_usable, "docker": docker_usable}
FIXES = {
    "virtualbox": "install VirtualBox with its kernel modules",
    "libvirt": "install libvirt, qemu and vagrant-libvirt (scripts/setup-libvirt.sh) and start libvirtd",
    "docker": "run scripts/setup.sh (it installs docker.io and starts dockerd)",
}


AUTO_ORDER = ("virtualbox", "libvirt", "docker")
SPEED_ORDER = ("docker", "virtualbox", "libvirt")


def choose(requested: str, prefer_speed: bool = False) -> Choice:
    """Resolve `auto` to the first provider that works here; check an explicit one.

    `auto` prefers real VMs (virtualbox, then libvirt) over container nodes, except libvirt under
    software emulation (no usable KVM): VMs there are about ten times slower, so docker goes first
    and libvirt stays available with --provider libvirt. `prefer_speed` puts docker first anyway."""
    if requested != "auto":
        ok, why = CHECKS[requested]()
        if not ok:
            raise ProvisionError(
                f"provider {requested} is not usable here: {why}; {FIXES[requested]}, or pick another with --provider",
                exit_code=3,
            )
        return Choice(requested, why)
    reasons: list[str] = []
    order = list(SPEED_ORDER if prefer_speed else AUTO_ORDER)
    for name in order:
        ok, why = CHECKS[name]()
        slow_vm = ok and name == "libvirt" and not prefer_speed and libvirt_domain_type()[0] == "qemu"
        if slow_vm and docker_usable()[0]:
            reasons.append(
                "libvirt: usable but only under software emulation (qemu TCG, no usable KVM), much slower "
                "than container nodes; ask for it with --provider libvirt"
            )
            continue
        if ok:
            skipped = "; ".join(reasons)
            return Choice(name, why + (f" (skipped: {skipped})" if skipped else ""))
        reasons.append(f"{name}: {why}")
    raise ToolMissing(
        "a Vagrant provider",
        "none works here (" + "; ".join(reasons) + "); run scripts/setup.sh to install Docker and start its daemon",
    )


def docker_network_users(subnet: str) -> dict[str, str]:
    """Containers (name -> cluster label) attached to the docker network that has `subnet`."""
    return {m.name: m.cluster for m in docker_machines() if subnet in m.subnets}


def docker_machines() -> list[identity.Machine]:
    """Every container on this host, with the toolkit's labels and the subnets it is attached to."""
    ids = subprocess.run(["docker", "ps", "-aq"], capture_output=True, text=True, check=False).stdout.split()
    nets = subprocess.run(["docker", "network", "ls", "-q"], capture_output=True, text=True, check=False).stdout.split()
    containers = _docker_inspect(["docker", "inspect", *ids]) if ids else []
    networks = _docker_inspect(["docker", "network", "inspect", *nets]) if nets else []
    return parse_docker_machines(containers, networks)


def _docker_inspect(cmd: list[str]) -> list[dict[str, Any]]:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    try:
        data = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        return []
    return data if isinstance(data, list) else []


def parse_docker_machines(containers: list[dict[str, Any]], networks: list[dict[str, Any]]) -> list[identity.Machine]:
    """`docker inspect` of containers and of networks -> Machines (pure, for the unit tests)."""
    # A stopped container is missing from its networks' Containers, but its own NetworkSettings still
    # name the networks it is attached to (by id): a stopped cluster keeps its node network.
    by_net: dict[str, list[str]] = {}
    subnets: dict[str, list[str]] = {}
    for net in networks:
        nets = [c.get("Subnet", "") for c in (net.get("IPAM", {}).get("Config") or []) if c.get("Subnet")]
        by_net[str(net.get("Id", ""))] = nets
        for cid in net.get("Containers") or {}:
            subnets.setdefault(cid, []).extend(nets)
    found = []
    for c in containers:
        labels = (c.get("Config") or {}).get("Labels") or {}
        cid = str(c.get("Id", ""))
        attached = ((c.get("NetworkSettings") or {}).get("Networks") or {}).values()
        for entry in attached:
            for subnet in by_net.get(str((entry or {}).get("NetworkID", "")), []):
                if subnet not in subnets.setdefault(cid, []):
                    subnets[cid].append(subnet)
        found.append(
            identity.Machine(
                ident=cid,
                name=str(c.get("Name", "")).lstrip("/"),
                cluster=labels.get(identity.LABEL_NAME, ""),
                cluster_id=labels.get(identity.LABEL_ID, ""),
                state_dir=labels.get(identity.LABEL_DIR, ""),
                subnets=tuple(subnets.get(cid, [])),
            )
        )
    return found


def check_docker_clear(spec: ClusterSpec, root: Path, cluster_id: str) -> None:
    """Refuse, before anything is made, a cluster name, machine name or node network that another
    cluster (or a container outside the toolkit) holds on this host."""
    if shutil.which("docker") is None:
        return
    identity.refuse_conflict(
        identity.conflict(
            docker_machines(),
            name=spec.name,
            network=spec.network,
            node_names=[f"{spec.name}-{n.name}" for n in spec.nodes],
            cluster_id=cluster_id,
            vagrant_ids=identity.vagrant_machine_ids(root, "docker"),
        )
    )


PKGS_K8S_IO = "https://pkgs.k8s.io/core:/stable:/"


def pkgs_k8s_io_unreachable(url: str = PKGS_K8S_IO, timeout: float = 5.0) -> str:
    """ "" when the Kubernetes package repository answers from this host, else why not (VM nodes reach
    what the host reaches, through its NAT)."""
    from provisioner.sources import unreachable

    return unreachable(url, timeout)
