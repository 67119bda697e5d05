"""Which Vagrant provider to use, and the checks each one needs before machines are created."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass

from provisioner.errors import ProvisionError, ToolMissing

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
    if shutil.which("virsh") is None:
        return False, "virsh not installed"
    if not _ok(["virsh", "-c", "qemu:///system", "version"]):
        return False, "libvirtd does not answer on qemu:///system"
    plugins = subprocess.run(["vagrant", "plugin", "list"], capture_output=True, text=True, check=False)
    if "vagrant-libvirt" not in plugins.stdout:
        return False, "the vagrant-libvirt plugin is not installed"
    return True, "libvirtd answers and vagrant-libvirt is installed"


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


def choose(requested: str) -> Choice:
    """Resolve `auto` to the first provider that works here; check an explicit one."""
    if requested != "auto":
        ok, why = CHECKS[requested]()
        if not ok:
            raise ProvisionError(
                f"provider {requested} is not usable here: {why}; {FIXES[requested]}, or pick another with --provider",
                exit_code=3,
            )
        return Choice(requested, why)
    reasons: list[str] = []
    for name in ("virtualbox", "libvirt", "docker"):
        ok, why = CHECKS[name]()
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
    nets = subprocess.run(["docker", "network", "ls", "-q"], capture_output=True, text=True, check=False)
    ids = nets.stdout.split()
    if not ids:
        return {}
    inspect = subprocess.run(["docker", "network", "inspect", *ids], capture_output=True, text=True, check=False)
    if inspect.returncode != 0:
        return {}
    users: dict[str, str] = {}
    for net in json.loads(inspect.stdout or "[]"):
        subnets = [c.get("Subnet") for c in (net.get("IPAM", {}).get("Config") or [])]
        if subnet not in subnets:
            continue
        for cid, info in (net.get("Containers") or {}).items():
            users[info.get("Name", cid)] = _container_cluster(cid)
    return users


def _container_cluster(cid: str) -> str:
    out = subprocess.run(
        ["docker", "inspect", "-f", '{{ index .Config.Labels "org.provisioner.cluster" }}', cid],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip()


def check_docker_network_free(subnet: str, cluster: str) -> None:
    others = {name: owner for name, owner in docker_network_users(subnet).items() if owner != cluster}
    if others:
        name, owner = next(iter(others.items()))
        who = f"cluster '{owner}'" if owner else "a container outside this toolkit"
        raise ProvisionError(
            f"network {subnet} is already used by {who} (container {name}); "
            f"pick another --network or destroy that cluster first",
            exit_code=2,
        )
