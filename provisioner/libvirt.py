"""libvirt on hosts where no service manager runs it, and a clean-up that leaves nothing behind.

`ensure_host()` makes qemu:///system answer: where systemd runs the host it asks systemctl; where no
service manager runs (containers, CI runners) it starts `virtlogd -d` and `libvirtd -d` itself and
records their process ids in a small state file, so that `teardown_host()` later stops exactly the
daemons it started, by process id, and no others. It also defines the storage pool the Vagrantfile
uses. The clean-up removes what a cluster leaves when Vagrant's own state was lost (domains, their
volumes, the libvirt networks it created) and, once no machine of any cluster is left, the box
volumes, the pool, the daemons it started and the LIBVIRT_* iptables chains libvirtd leaves behind.

Parsers of virsh and iptables-save output are pure functions that the unit tests feed.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from provisioner import identity, proc
from provisioner.errors import ProvisionError, ToolMissing

log = logging.getLogger(__name__)

URI = "qemu:///system"
POOL_NAME = os.environ.get("PROVISION_LIBVIRT_POOL", "provisioner")
POOL_PATH = Path(os.environ.get("PROVISION_LIBVIRT_POOL_PATH", "/var/lib/libvirt/images/provisioner"))
STATE_FILE = Path(os.environ.get("PROVISION_LIBVIRT_STATE", "/run/provisioner/libvirt.json"))
# Daemons in start order; they are stopped in reverse. (name, pid file the daemon writes with -d)
DAEMONS = (("virtlogd", "/run/virtlogd.pid"), ("libvirtd", "/run/libvirtd.pid"))
START_TIMEOUT = 60.0
CHAIN_PREFIX = "LIBVIRT_"
INSTALL_FIX = "run scripts/setup-libvirt.sh (Debian packages libvirt-daemon-system, qemu-system-x86, vagrant-libvirt)"


# ----------------------------------------------------------------------------- pure helpers


def parse_name_list(text: str) -> list[str]:
    """`virsh list --all --name`, `net-list --all --name`, `pool-list --all --name`: one name a line."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def parse_description(text: str) -> dict[str, str]:
    """The `key=value` lines of a domain's description (`virsh desc DOMAIN`): the Vagrantfile writes
    the cluster's identity there (org.provisioner.cluster=..., org.provisioner.cluster-id=...)."""
    pairs = (line.strip().split("=", 1) for line in text.splitlines() if "=" in line)
    return {k: v for k, v in pairs if k.startswith("org.provisioner.")}


def parse_domiflist(text: str) -> list[str]:
    """The networks a domain's interfaces are attached to, from `virsh domiflist DOMAIN` (a table:
    Interface, Type, Source, Model, MAC; Source is the network's name for type network)."""
    networks = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == "network":
            networks.append(parts[2])
    return networks


def parse_network_subnet(xml: str) -> str:
    """The IPv4 subnet (a.b.c.d/n) of a libvirt network from `virsh net-dumpxml`; "" when it has none."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return ""
    for ip in root.findall("ip"):
        if ip.get("family", "ipv4") != "ipv4" or not ip.get("address"):
            continue
        mask = ip.get("prefix") or ip.get("netmask") or "24"
        try:
            return str(ipaddress.ip_network(f"{ip.get('address')}/{mask}", strict=False))
        except ValueError:
            return ""
    return ""


def parse_vol_list(text: str) -> list[str]:
    """Volume names from `virsh vol-list POOL` (a table: Name, Path)."""
    names = []
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0] == "Name" or set(parts[0]) == {"-"}:
            continue
        names.append(parts[0])
    return names


@dataclass(frozen=True)
class IptablesCleanup:
    """Commands (iptables arguments after the binary) that remove leftover chains, in order."""

    delete_rules: list[list[str]] = field(default_factory=list)
    flush_chains: list[list[str]] = field(default_factory=list)
    delete_chains: list[list[str]] = field(default_factory=list)

    @property
    def commands(self) -> list[list[str]]:
        return self.delete_rules + self.flush_chains + self.delete_chains

    @property
    def chains(self) -> list[str]:
        return [f"{c[1]}/{c[3]}" for c in self.delete_chains]


def iptables_leftovers(save_text: str, prefix: str = CHAIN_PREFIX) -> IptablesCleanup:
    """From `iptables-save` output: the rules that jump to `prefix*` chains from other chains, and the
    chains themselves. Deleting the jumps first, then flushing, then deleting the chains always works."""
    plan = IptablesCleanup()
    table = ""
    for raw in save_text.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":") and table:
            chain = line[1:].split()[0]
            if chain.startswith(prefix):
                plan.flush_chains.append(["-t", table, "-F", chain])
                plan.delete_chains.append(["-t", table, "-X", chain])
        elif line.startswith("-A ") and table:
            args = shlex.split(line)
            chain = args[1]
            target = args[args.index("-j") + 1] if "-j" in args[:-1] else ""
            if not chain.startswith(prefix) and target.startswith(prefix):
                plan.delete_rules.append(["-t", table, "-D", *args[1:]])
    return plan


def choose_domain_type(
    kvm_device: bool, kvm_usable: bool, modules: Iterable[str], override: str = ""
) -> tuple[str, str]:
    """libvirt domain type: kvm only where a stock guest kernel can really run under it, else qemu (TCG).

    `modules` are the names under /sys/module. kvm_pvm is a paravirtual scheme that only runs guest
    kernels built for it; a stock Debian kernel hangs there, so PVM means qemu."""
    if override:
        if override not in ("kvm", "qemu"):
            raise ProvisionError(f"PROVISION_LIBVIRT_DRIVER must be kvm or qemu, not '{override}'", exit_code=2)
        return override, f"{override} as PROVISION_LIBVIRT_DRIVER asks"
    mods = set(modules)
    if not kvm_device:
        return "qemu", "no /dev/kvm on this host: qemu software emulation (TCG), much slower than KVM"
    if "kvm_pvm" in mods:
        return (
            "qemu",
            "/dev/kvm is PVM (kvm_pvm), which hangs stock guest kernels: qemu software emulation (TCG), much slower",
        )
    if not mods & {"kvm_intel", "kvm_amd"}:
        return "qemu", "/dev/kvm has no kvm_intel/kvm_amd behind it: qemu software emulation (TCG)"
    if not kvm_usable:
        return "qemu", "/dev/kvm cannot be opened for reading and writing: qemu software emulation (TCG)"
    return "kvm", "hardware virtualization (/dev/kvm with " + ", ".join(sorted(mods & {"kvm_intel", "kvm_amd"})) + ")"


def domain_type() -> tuple[str, str]:
    """The domain type for this host and why (see choose_domain_type)."""
    modules = os.listdir("/sys/module") if os.path.isdir("/sys/module") else []
    return choose_domain_type(
        os.path.exists("/dev/kvm"),
        os.access("/dev/kvm", os.R_OK | os.W_OK),
        modules,
        os.environ.get("PROVISION_LIBVIRT_DRIVER", ""),
    )


# ----------------------------------------------------------------------------- state file


@dataclass
class HostState:
    """What this toolkit started or defined on the host (so that it removes only that)."""

    path: Path
    daemons: dict[str, int] = field(default_factory=dict)  # name -> pid
    pool: str = ""
    kvm_mode: list[int] = field(default_factory=list)  # /dev/kvm [gid, mode] before ensure_host changed it

    @classmethod
    def load(cls, path: Path | None = None) -> HostState:
        path = path or STATE_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return cls(path)
        return cls(
            path,
            {str(k): int(v) for k, v in data.get("daemons", {}).items()},
            str(data.get("pool", "")),
            [int(v) for v in data.get("kvm_mode", [])],
        )

    def save(self) -> None:
        if not self.daemons and not self.pool and not self.kvm_mode:
            self.path.unlink(missing_ok=True)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"daemons": self.daemons, "pool": self.pool, "kvm_mode": self.kvm_mode}
        self.path.write_text(json.dumps(payload), encoding="utf-8")


# ----------------------------------------------------------------------------- commands


def virsh(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return proc.run(["virsh", "-c", URI, *args], check=check, timeout=timeout, what=f"virsh {args[0]}")


def answers() -> bool:
    """Whether libvirtd answers on qemu:///system."""
    try:
        return virsh("version", check=False, timeout=15).returncode == 0
    except ProvisionError:
        return False


def service_manager() -> bool:
    return Path("/run/systemd/system").is_dir()


def pid_alive(pid: int, name: str) -> bool:
    """True when process `pid` exists and is `name` (guards against a recycled pid)."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text(encoding="utf-8").strip()
    except OSError:
        return False
    return comm == name


def _pid_from_file(path: str, name: str) -> int:
    try:
        pid = int(Path(path).read_text(encoding="utf-8").split()[0])
    except (OSError, ValueError, IndexError):
        return 0
    return pid if pid_alive(pid, name) else 0


def ensure_host(state_path: Path | None = None) -> list[str]:
    """Make libvirt usable: daemons answering and the storage pool defined. Returns what it did."""
    for tool in ("virsh", "libvirtd", "virtlogd", "qemu-system-x86_64"):
        if shutil.which(tool) is None:
            raise ToolMissing(tool, INSTALL_FIX)
    state = HostState.load(state_path)
    done = fix_kvm_device(state)
    done += ensure_daemons(state)
    if ensure_pool(state):
        done.append(f"storage pool {POOL_NAME} at {POOL_PATH}")
    state.save()
    return done


def kvm_device_needs_group(st_gid: int, st_mode: int, kvm_gid: int | None) -> bool:
    """/dev/kvm as a kernel without udev leaves it (root:root 0600) while a `kvm` group exists."""
    return kvm_gid is not None and st_gid != kvm_gid and (st_mode & 0o777) == 0o600


def fix_kvm_device(state: HostState, device: str = "/dev/kvm") -> list[str]:
    """Give /dev/kvm Debian's udev ownership (root:kvm 0660) where no udev ran.

    libvirt probes qemu with KVM (as root) but then checks /dev/kvm as the libvirt-qemu user; with
    root:root 0600 the two disagree, the capability cache is thrown away on every lookup and each
    domain definition re-probes qemu a dozen times (about a minute). The domain type stays what
    domain_type() chose. teardown_host() puts the old owner and mode back."""
    import grp

    if not os.path.exists(device) or os.geteuid() != 0:
        return []
    try:
        kvm_gid: int | None = grp.getgrnam("kvm").gr_gid
    except KeyError:
        kvm_gid = None
    st = os.stat(device)
    if not kvm_device_needs_group(st.st_gid, st.st_mode, kvm_gid):
        return []
    assert kvm_gid is not None
    if not state.kvm_mode:
        state.kvm_mode = [st.st_gid, st.st_mode & 0o777]
    os.chown(device, -1, kvm_gid)
    os.chmod(device, 0o660)
    state.save()
    return [f"{device} root:kvm 0660 (as Debian's udev rule sets it)"]


def restore_kvm_device(state: HostState, device: str = "/dev/kvm") -> list[str]:
    if not state.kvm_mode or not os.path.exists(device):
        state.kvm_mode = []
        return []
    gid, mode = state.kvm_mode
    os.chown(device, -1, gid)
    os.chmod(device, mode)
    state.kvm_mode = []
    return [f"{device} back to gid {gid} mode {mode:o}"]


def ensure_daemons(state: HostState) -> list[str]:
    if answers():
        return []
    if os.geteuid() != 0:
        raise ProvisionError("libvirtd does not answer on qemu:///system and starting it needs root; run as root")
    if service_manager():
        proc.run(["systemctl", "start", "virtlogd.service", "libvirtd.service"], what="systemctl start libvirtd")
        _wait_answer()
        return ["libvirtd (systemctl)"]
    started = []
    for name, pidfile in DAEMONS:
        if _pid_from_file(pidfile, name):
            continue
        proc.run([name, "-d"], what=f"{name} -d")
        pid = 0
        deadline = time.monotonic() + 15
        while not pid and time.monotonic() < deadline:
            pid = _pid_from_file(pidfile, name)
            if not pid:
                time.sleep(0.2)
        if not pid:
            raise ProvisionError(f"{name} -d started but wrote no live pid to {pidfile}; see /var/log/libvirt/")
        state.daemons[name] = pid
        state.save()
        started.append(f"{name} (pid {pid})")
    _wait_answer()
    return started


def _wait_answer() -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if answers():
            return
        time.sleep(0.5)
    raise ProvisionError(
        f"libvirtd was started but does not answer on {URI} after {START_TIMEOUT:.0f} s; see /var/log/libvirt/libvirtd.log"
    )


def ensure_pool(state: HostState) -> bool:
    """Define, build, start and autostart the directory pool the Vagrantfile names. True if created."""
    pools = parse_name_list(virsh("pool-list", "--all", "--name").stdout)
    created = False
    if POOL_NAME not in pools:
        POOL_PATH.mkdir(parents=True, exist_ok=True)
        virsh("pool-define-as", POOL_NAME, "dir", "--target", str(POOL_PATH))
        virsh("pool-build", POOL_NAME, check=False)
        state.pool = POOL_NAME
        created = True
    info = virsh("pool-info", POOL_NAME).stdout
    if "running" not in info:
        virsh("pool-start", POOL_NAME)
    virsh("pool-autostart", POOL_NAME, check=False)
    return created


# ----------------------------------------------------------------------------- inventory of resources


@dataclass(frozen=True)
class Resources:
    domains: list[str]
    volumes: list[str]
    networks: list[str]

    def empty(self) -> bool:
        return not (self.domains or self.volumes or self.networks)


def owned_domain(name: str, match: str | Sequence[str]) -> bool:
    """A domain of the cluster: `match` is a name prefix (str) or the exact domain names."""
    return name.startswith(match) if isinstance(match, str) else name in match


def owned_volume(name: str, match: str | Sequence[str]) -> bool:
    """A volume of the cluster: vagrant-libvirt names a machine's disks DOMAIN.img, DOMAIN-vdb.qcow2 ..."""
    if isinstance(match, str):
        return name.startswith(match)
    return any(name.startswith((f"{d}.", f"{d}-vd", f"{d}-sd")) for d in match)


def cluster_resources(match: str | Sequence[str], networks: Iterable[str] = ()) -> Resources:
    """Domains and volumes of a cluster (`match`: the exact domain names, or a name prefix such as
    vagrant-libvirt's default_prefix), and the given networks where they exist. Empty when libvirtd
    does not answer. Exact names are the safe form: a prefix `lab-` also matches a cluster `lab-2`."""
    if not answers():
        return Resources([], [], [])
    domains = [d for d in parse_name_list(virsh("list", "--all", "--name").stdout) if owned_domain(d, match)]
    volumes = [v for v in pool_volumes() if owned_volume(v, match)]
    existing = set(parse_name_list(virsh("net-list", "--all", "--name").stdout))
    return Resources(domains, volumes, [n for n in networks if n in existing])


def domains() -> list[identity.Machine]:
    """Every domain, with the cluster identity of its description and the subnets of the networks its
    interfaces are attached to. Empty when libvirtd does not answer."""
    if not answers():
        return []
    subnets: dict[str, str] = {}
    for net in parse_name_list(virsh("net-list", "--all", "--name").stdout):
        subnets[net] = parse_network_subnet(virsh("net-dumpxml", net, check=False).stdout)
    found = []
    for dom in parse_name_list(virsh("list", "--all", "--name").stdout):
        desc = parse_description(virsh("desc", dom, check=False).stdout)
        nets = [subnets.get(n, "") for n in parse_domiflist(virsh("domiflist", dom, check=False).stdout)]
        found.append(
            identity.Machine(
                ident=virsh("domuuid", dom, check=False).stdout.strip(),
                name=dom,
                cluster=desc.get(identity.LABEL_NAME, ""),
                cluster_id=desc.get(identity.LABEL_ID, ""),
                state_dir=desc.get(identity.LABEL_DIR, ""),
                subnets=tuple(n for n in nets if n),
            )
        )
    return found


def foreign_domains(found: list[identity.Machine], names: Sequence[str], cluster_id: str) -> list[str]:
    """Of `found` (see domains()), those named in `names` that carry another cluster's id: a clean-up
    by name leaves them alone. A domain without an id (made before identities) is not foreign."""
    return sorted(m.name for m in found if m.name in names and m.cluster_id and m.cluster_id != cluster_id)


def pool_volumes(pool: str = POOL_NAME) -> list[str]:
    out = virsh("vol-list", pool, check=False)
    return parse_vol_list(out.stdout) if out.returncode == 0 else []


def network_for_subnet(subnet_address: str) -> str:
    """The libvirt network whose bridge holds an address of `subnet_address` (e.g. 192.168.159.)."""
    for name in parse_name_list(virsh("net-list", "--all", "--name").stdout):
        xml = virsh("net-dumpxml", name, check=False).stdout
        if f"address='{subnet_address}" in xml or f'address="{subnet_address}' in xml:
            return name
    return ""


def cleanup_cluster(match: str | Sequence[str], networks: Iterable[str] = ()) -> Resources:
    """Remove what is left of one cluster (see cluster_resources for `match`): its domains with their
    storage, its volumes in the pool, and the named networks. Returns what it removed."""
    found = cluster_resources(match, networks)
    for dom in found.domains:
        virsh("destroy", dom, check=False)
        virsh("undefine", dom, "--remove-all-storage", "--managed-save", "--snapshots-metadata", check=False)
    for vol in found.volumes:
        virsh("vol-delete", vol, "--pool", POOL_NAME, check=False)
    for net in found.networks:
        virsh("net-destroy", net, check=False)
        virsh("net-undefine", net, check=False)
    return found


def box_volume_prefix(name: str, version: str) -> str:
    """How vagrant-libvirt names a box's base volume in the storage pool (box name with `/` escaped)."""
    return f"{name.replace('/', '-VAGRANTSLASH-')}_vagrant_box_image_{version}"


def remove_box_volumes(name: str, version: str | None = None) -> list[str]:
    """Delete the base volumes vagrant-libvirt uploaded for box `name` (one version or all). Machines'
    disks are overlays on top of these, so nothing is deleted while any domain is defined: the
    volumes then go with teardown_host() once the last machine is gone."""
    if not answers() or parse_name_list(virsh("list", "--all", "--name").stdout):
        return []
    prefix = box_volume_prefix(name, version or "")
    gone = []
    for vol in pool_volumes():
        if vol.startswith(prefix):
            virsh("vol-delete", vol, "--pool", POOL_NAME, check=False)
            gone.append(vol)
    return gone


def teardown_host(state_path: Path | None = None, *, remove_box_volumes_too: bool = True) -> list[str]:
    """Once no domain is left on qemu:///system: drop the box volumes and the pool this toolkit
    made, stop the daemons it started (by pid) and remove the LIBVIRT_* iptables chains. Leaves
    everything alone while any domain or active network of someone else remains. Returns what it did."""
    state = HostState.load(state_path)
    done: list[str] = []
    if answers():
        if parse_name_list(virsh("list", "--all", "--name").stdout):
            return done  # machines remain (other clusters): keep the host as it is
        if parse_name_list(virsh("net-list", "--name").stdout):
            return done  # an active network that is not ours to remove
        if state.pool:
            if remove_box_volumes_too:
                for vol in pool_volumes(state.pool):
                    virsh("vol-delete", vol, "--pool", state.pool, check=False)
                    done.append(f"volume {vol}")
            if not pool_volumes(state.pool):
                virsh("pool-destroy", state.pool, check=False)
                virsh("pool-delete", state.pool, check=False)
                virsh("pool-undefine", state.pool, check=False)
                done.append(f"storage pool {state.pool}")
                state.pool = ""
    for name, _ in reversed(DAEMONS):
        pid = state.daemons.get(name, 0)
        if pid and pid_alive(pid, name):
            os.kill(pid, signal.SIGTERM)
            _wait_gone(pid, name)
            done.append(f"stopped {name} (pid {pid})")
        state.daemons.pop(name, None)
    if not state.daemons and not any(_pid_from_file(pf, n) for n, pf in DAEMONS):
        done += restore_kvm_device(state)
    state.save()
    if not any(_pid_from_file(pf, n) for n, pf in DAEMONS):
        done += remove_iptables_leftovers()
    return done


def _wait_gone(pid: int, name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while pid_alive(pid, name) and time.monotonic() < deadline:
        time.sleep(0.2)
    if pid_alive(pid, name):
        os.kill(pid, signal.SIGKILL)


def remove_iptables_leftovers() -> list[str]:
    """Remove LIBVIRT_* chains (and the jumps to them) from iptables and ip6tables, when present."""
    removed: list[str] = []
    for save, binary in (("iptables-save", "iptables"), ("ip6tables-save", "ip6tables")):
        if shutil.which(save) is None:
            continue
        plan = iptables_leftovers(proc.run([save], check=False).stdout)
        for args in plan.commands:
            proc.run([binary, "-w", *args], check=False)
        removed += [f"{binary} chain {c}" for c in plan.chains]
    return removed


def leftover_chains() -> list[str]:
    """LIBVIRT_* chains present now in iptables and ip6tables (for tests and status)."""
    chains: list[str] = []
    for save in ("iptables-save", "ip6tables-save"):
        if shutil.which(save) is not None:
            chains += [
                f"{save.split('-')[0]} {c}" for c in iptables_leftovers(proc.run([save], check=False).stdout).chains
            ]
    return chains


def started_daemons(state_path: Path | None = None) -> dict[str, int]:
    """Daemons this toolkit started that still run (name -> pid)."""
    state = HostState.load(state_path)
    return {n: p for n, p in state.daemons.items() if pid_alive(p, n)}
