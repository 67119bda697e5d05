"""The libvirt provider's Vagrant box: Debian 12 built locally from Debian's packages.

No box is downloaded from anywhere: mmdebstrap assembles the root file system (kernel, systemd, sshd,
python3, sudo, a `vagrant` user with Vagrant's insecure key, optionally Docker and containerd), the
builder writes it into a partitioned disk image with the extlinux boot loader, converts that to
qcow2 and packages it as a vagrant-libvirt box (metadata.json, box.img, Vagrantfile). The box is
added to Vagrant under a fixed name with a version derived from a hash of the recipe, so an unchanged
recipe is reused and a changed one replaces the old version.

Building needs root (loop devices and a mount); there is no udev here, so the partition is reached
with `losetup -o OFFSET` instead of partition device nodes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from provisioner import hostlock, libvirt, proc
from provisioner.errors import ProvisionError
from provisioner.image import SSHD_KEYS_ONLY, find_vagrant_pubkey, host_debian_mirror

log = logging.getLogger(__name__)

BOX_NAME = "provisioner/bookworm-libvirt"
BOX_NAME_RUNTIME = "provisioner/bookworm-runtime-libvirt"
SUITE = "bookworm"
DISK_GIB = 20  # virtual size; the qcow2 only holds what is written (about 1 GiB)
PARTITION_OFFSET = 1024 * 1024  # the root partition starts at 1 MiB (sector 2048)
MBR_CANDIDATES = ("/usr/lib/EXTLINUX/mbr.bin", "/usr/lib/syslinux/mbr/mbr.bin")

PACKAGES = (
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "zstd",
    "systemd",
    "systemd-sysv",
    "systemd-resolved",
    "systemd-timesyncd",
    "udev",
    "dbus",
    "openssh-server",
    "python3",
    "python3-apt",
    "sudo",
    "iproute2",
    "iputils-ping",
    "procps",
    "kmod",
    "ca-certificates",
    "less",
    "extlinux",
    # Debian's kernel enables AppArmor: Docker refuses to start containers when apparmor_parser is
    # missing ("AppArmor enabled on system but the docker-default profile could not be loaded").
    "apparmor",
)
# Baked in with --with-runtime so that nodes start with the runtime installed (Debian's packages,
# the same ones the container_runtime role installs with container_runtime_source: distro), and
# busybox-static, from which the swarm role builds its registry-free smoke-test image.
RUNTIME_PACKAGES = ("docker.io", "containerd", "runc", "busybox-static")

# Run by mmdebstrap against the finished root file system ($1) before it is packed.
CUSTOMIZE = (
    r"""
set -eu
root="$1"
chroot "$root" useradd --create-home --shell /bin/bash --groups sudo vagrant
echo 'vagrant ALL=(ALL) NOPASSWD:ALL' > "$root/etc/sudoers.d/vagrant"
chmod 0440 "$root/etc/sudoers.d/vagrant"
install -d -m 0700 -o 1000 -g 1000 "$root/home/vagrant/.ssh"
install -m 0600 -o 1000 -g 1000 "$VAGRANT_PUBKEY" "$root/home/vagrant/.ssh/authorized_keys"

# Every machine gets its own SSH host keys and machine-id at first boot. Ed25519 and ECDSA only:
# an RSA key takes more than a minute to generate on an emulated CPU, and sshd is offered only the
# two keys that exist.
rm -f "$root"/etc/ssh/ssh_host_*
printf 'HostKey /etc/ssh/ssh_host_ed25519_key\nHostKey /etc/ssh/ssh_host_ecdsa_key\n' \
    > "$root/etc/ssh/sshd_config.d/05-hostkeys.conf"
cat > "$root/etc/systemd/system/ssh-hostkeys.service" <<'UNIT'
[Unit]
Description=Generate SSH host keys on first boot
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key
ExecStart=/usr/bin/ssh-keygen -q -t ecdsa -N "" -f /etc/ssh/ssh_host_ecdsa_key

[Install]
WantedBy=multi-user.target
UNIT
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
"""
    + SSHD_KEYS_ONLY
    + r"""
# The root file system, by the UUID the builder gives it.
printf 'UUID=%s / ext4 errors=remount-ro 0 1\n' "$ROOT_UUID" > "$root/etc/fstab"
printf 'bookworm\n' > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tbookworm\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"

# Network: DHCP on the first NIC (eth0, the management network vagrant-libvirt reaches the machine
# on) with systemd-networkd; Vagrant writes the private network's static address next to it.
cat > "$root/etc/systemd/network/90-eth0-dhcp.network" <<'NET'
[Match]
Name=eth0

[Network]
DHCP=ipv4

[DHCPv4]
UseDomains=true
NET
ln -sf ../run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"
# Names resolve from /etc/hosts and the management network's DNS only: no LLMNR/mDNS multicast
# (a lookup of an unlisted single-label name would otherwise wait for multicast answers).
mkdir -p "$root/etc/systemd/resolved.conf.d"
printf '[Resolve]\nLLMNR=no\nMulticastDNS=no\n' > "$root/etc/systemd/resolved.conf.d/10-provisioner.conf"
# Time sync from the NTP servers the network announces (DHCP) only: no built-in fallback to the
# public pool, so a lab VM sends nothing outside on its own (set NTP= in timesyncd.conf.d for more).
mkdir -p "$root/etc/systemd/timesyncd.conf.d"
printf '[Time]\nFallbackNTP=\n' > "$root/etc/systemd/timesyncd.conf.d/10-provisioner.conf"

# Boot: extlinux, classic interface names (eth0, eth1), kernel messages on the serial console too.
mkdir -p "$root/boot/extlinux"
cat > "$root/boot/extlinux/extlinux.conf" <<CONF
DEFAULT debian
TIMEOUT 1
PROMPT 0
LABEL debian
    LINUX /vmlinuz
    INITRD /initrd.img
    APPEND root=UUID=$ROOT_UUID ro net.ifnames=0 biosdevname=0 console=tty0 console=ttyS0,115200n8
CONF

# A small initramfs with the drivers a libvirt machine boots from (virtio, or SATA/SCSI disks) instead
# of most of the kernel's modules: less to load and unpack on every boot.
printf 'MODULES=list\n' > "$root/etc/initramfs-tools/conf.d/10-provisioner.conf"
printf '%s\n' virtio_pci virtio_blk virtio_scsi virtio_net virtio_console ahci sd_mod \
    >> "$root/etc/initramfs-tools/modules"
chroot "$root" update-initramfs -u -k all

chroot "$root" systemctl enable ssh-hostkeys.service ssh.service systemd-networkd.service systemd-resolved.service
# Periodic apt runs would take the dpkg lock in the middle of a provisioning run.
chroot "$root" systemctl mask apt-daily.timer apt-daily-upgrade.timer
# The package lists stay (as in other Vagrant boxes): a role that installs a package without
# refreshing them first still finds it; so do apt's binary caches built from them, which take
# minutes to rebuild on an emulated CPU. Downloaded .debs go.
rm -rf "$root"/var/cache/apt/archives/*.deb
"""
)


@dataclass(frozen=True)
class BoxRecipe:
    """Everything that decides the box's content; its hash versions the box."""

    suite: str = SUITE
    packages: tuple[str, ...] = PACKAGES
    with_runtime: bool = False
    customize: str = CUSTOMIZE
    disk_gib: int = DISK_GIB
    mirror: str = field(default="", compare=False)

    @property
    def name(self) -> str:
        return BOX_NAME_RUNTIME if self.with_runtime else BOX_NAME

    @property
    def all_packages(self) -> tuple[str, ...]:
        return self.packages + (RUNTIME_PACKAGES if self.with_runtime else ())

    def digest(self) -> str:
        blob = json.dumps(
            {
                "suite": self.suite,
                "packages": self.all_packages,
                "customize": self.customize,
                "disk_gib": self.disk_gib,
                "builder": BUILDER_REVISION,
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def version(self) -> str:
        return box_version(self.digest())


# Bump when the way the disk is assembled changes (partitioning, boot loader install).
BUILDER_REVISION = 1


def box_version(digest: str) -> str:
    """A Vagrant box version (digits only) that is a pure function of the recipe hash."""
    return f"0.0.{int(digest[:8], 16)}"


@dataclass(frozen=True)
class InstalledBox:
    name: str
    provider: str
    version: str


def parse_box_list(text: str) -> list[InstalledBox]:
    """Parse `vagrant box list --machine-readable`: box-name, box-provider, box-version rows in turn."""
    boxes: list[InstalledBox] = []
    name = provider = ""
    for line in text.splitlines():
        parts = line.split(",", 3)
        if len(parts) < 4:
            continue
        kind, value = parts[2], parts[3].strip()
        if kind == "box-name":
            name, provider = value, ""
        elif kind == "box-provider":
            provider = value
        elif kind == "box-version" and name:
            boxes.append(InstalledBox(name, provider, value))
    return boxes


def box_metadata(virtual_size_gib: int, digest: str) -> dict[str, object]:
    """metadata.json of a vagrant-libvirt box (format v1: one qcow2 disk, box.img)."""
    return {"provider": "libvirt", "format": "qcow2", "virtual_size": virtual_size_gib, "provisioner_recipe": digest}


BOX_VAGRANTFILE = """\
# Defaults shipped inside the box built by provisioner/box.py (the project's Vagrantfile overrides them).
Vagrant.configure("2") do |config|
  config.vm.synced_folder ".", "/vagrant", disabled: true
  config.vm.provider :libvirt do |libvirt|
    libvirt.disk_bus = "virtio"
    libvirt.nic_model_type = "virtio"
  end
end
"""


def catalog(name: str, version: str, box_file: Path, sha256: str, digest: str) -> dict[str, object]:
    """A local Vagrant box catalog, so that `vagrant box add` records a version for the box."""
    return {
        "name": name,
        "description": f"Debian {SUITE} built locally from Debian packages (recipe {digest})",
        "versions": [
            {
                "version": version,
                "providers": [
                    {
                        "name": "libvirt",
                        "url": box_file.resolve().as_uri(),
                        "checksum_type": "sha256",
                        "checksum": sha256,
                    }
                ],
            }
        ],
    }


def sfdisk_script(offset: int = PARTITION_OFFSET) -> str:
    """One bootable Linux partition from `offset` to the end of the disk, MBR label (extlinux)."""
    return f"label: dos\nstart={offset // 512}, type=83, bootable\n"


def installed(name: str) -> list[InstalledBox]:
    out = proc.run(["vagrant", "box", "list", "--machine-readable"], env=_vagrant_env(), what="vagrant box list")
    return [b for b in parse_box_list(out.stdout) if b.name == name and b.provider == "libvirt"]


def box_present(recipe: BoxRecipe) -> bool:
    return any(b.version == recipe.version for b in installed(recipe.name))


def ensure_box(recipe: BoxRecipe | None = None, *, force: bool = False) -> str:
    """Return the box name, building and adding it first when this recipe's version is missing."""
    recipe = recipe or BoxRecipe(mirror=host_debian_mirror())
    with hostlock.held("provisioner-box"):
        if not force and box_present(recipe):
            log.info("box %s %s present", recipe.name, recipe.version)
            return recipe.name
        with tempfile.TemporaryDirectory(prefix="provision-box-", dir=_work_dir()) as tmp:
            box_file = build_box(recipe, Path(tmp))
            add_box(recipe, box_file)
    return recipe.name


def build_box(recipe: BoxRecipe, workdir: Path) -> Path:
    """Build the box file (a tar of metadata.json, Vagrantfile, box.img) under `workdir`."""
    if os.geteuid() != 0:
        raise ProvisionError("building the libvirt box needs root (loop devices and a mount); run it as root")
    for tool in ("mmdebstrap", "qemu-img", "sfdisk", "losetup", "mkfs.ext4", "extlinux", "mount"):
        if shutil.which(tool) is None:
            raise ProvisionError(
                f"{tool} is needed to build the libvirt box but is not installed; run scripts/setup-libvirt.sh"
            )
    mbr = next((Path(p) for p in MBR_CANDIDATES if Path(p).exists()), None)
    if mbr is None:
        raise ProvisionError("extlinux's mbr.bin is missing; run scripts/setup-libvirt.sh (package extlinux)")
    pubkey = find_vagrant_pubkey()
    root_uuid = str(uuid.uuid4())
    started = time.monotonic()
    log.info("building box %s %s from Debian %s packages", recipe.name, recipe.version, recipe.suite)

    hook = workdir / "customize.sh"
    hook.write_text(recipe.customize, encoding="utf-8")
    rootfs = workdir / "rootfs.tar"
    cmd = [
        "mmdebstrap",
        "--variant=minbase",
        "--skip=cleanup/apt",  # keep the package lists and apt's binary cache (see CUSTOMIZE)
        "--include=" + ",".join(recipe.all_packages),
        f'--customize-hook=VAGRANT_PUBKEY={pubkey} ROOT_UUID={root_uuid} sh {hook} "$1"',
        recipe.suite,
        str(rootfs),
    ]
    if recipe.mirror:
        cmd.append(recipe.mirror)
    proc.run(cmd, timeout=1800, what="mmdebstrap (box root file system)")

    raw = workdir / "disk.raw"
    size = recipe.disk_gib * 1024**3
    with raw.open("wb") as f:
        f.truncate(size)
    proc.run(["sfdisk", "--quiet", str(raw)], input_text=sfdisk_script(), what="sfdisk (box partition table)")
    with mbr.open("rb") as src, raw.open("r+b") as dst:
        dst.write(src.read(440))  # boot code only: the partition table after byte 440 stays
    with _loop_partition(raw, PARTITION_OFFSET, size - PARTITION_OFFSET) as dev:
        proc.run(
            ["mkfs.ext4", "-q", "-F", "-L", "root", "-U", root_uuid, "-O", "^64bit", dev],
            what="mkfs.ext4 (box root file system)",
        )
        mnt = workdir / "mnt"
        mnt.mkdir()
        proc.run(["mount", dev, str(mnt)], what="mount (box root file system)")
        try:
            proc.run(
                ["tar", "-C", str(mnt), "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", str(rootfs)],
                timeout=900,
                what="tar (unpack the box root file system)",
            )
            proc.run(["extlinux", "--install", str(mnt / "boot" / "extlinux")], what="extlinux --install")
        finally:
            proc.run(["umount", str(mnt)], check=False)
    rootfs.unlink()

    boxdir = workdir / "box"
    boxdir.mkdir()
    proc.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(boxdir / "box.img")],
        timeout=900,
        what="qemu-img convert (box disk to qcow2)",
    )
    raw.unlink()
    (boxdir / "metadata.json").write_text(json.dumps(box_metadata(recipe.disk_gib, recipe.digest())) + "\n")
    (boxdir / "Vagrantfile").write_text(BOX_VAGRANTFILE)
    box_file = workdir / f"{recipe.name.replace('/', '-')}-{recipe.version}.box"
    with tarfile.open(box_file, "w") as tar:
        for member in ("metadata.json", "Vagrantfile", "box.img"):
            tar.add(boxdir / member, arcname=member)
    shutil.rmtree(boxdir)
    log.info("box file %s built in %.0f s", box_file, time.monotonic() - started)
    return box_file


def add_box(recipe: BoxRecipe, box_file: Path) -> None:
    """Add the box under its fixed name and recipe version, then drop the other versions."""
    sha = _sha256(box_file)
    cat = box_file.with_suffix(".json")
    cat.write_text(json.dumps(catalog(recipe.name, recipe.version, box_file, sha, recipe.digest()), indent=2))
    proc.run(
        ["vagrant", "box", "add", "--force", "--provider", "libvirt", str(cat)],
        env=_vagrant_env(),
        timeout=900,
        what="vagrant box add",
    )
    for old in installed(recipe.name):
        if old.version != recipe.version:
            remove_box(old)


def remove_box(box: InstalledBox) -> None:
    """Remove one box version from Vagrant and its copy in libvirt's storage pool, if any."""
    proc.run(
        ["vagrant", "box", "remove", "--force", "--provider", "libvirt", "--box-version", box.version, box.name],
        env=_vagrant_env(),
        check=False,
    )
    libvirt.remove_box_volumes(box.name, box.version)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _loop_partition(image: Path, offset: int, size: int) -> Iterator[str]:
    """A loop device over one partition of `image` (offset form: no udev, no partition nodes)."""
    out = proc.run(
        ["losetup", "--find", "--show", "--offset", str(offset), "--sizelimit", str(size), str(image)],
        what="losetup (box partition)",
    )
    dev = out.stdout.strip()
    if not re.match(r"^/dev/loop\d+$", dev):
        raise ProvisionError(f"losetup returned '{dev}' instead of a loop device; check `losetup -a`")
    try:
        yield dev
    finally:
        proc.run(["losetup", "--detach", dev], check=False)


def _work_dir() -> str:
    """Scratch space for the 20 GiB sparse image: $PROVISION_BOX_TMP, else /var/tmp (on disk, not tmpfs)."""
    return os.environ.get("PROVISION_BOX_TMP") or "/var/tmp"


def _vagrant_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_BOX_UPDATE_CHECK_DISABLE": "1", "VAGRANT_NO_COLOR": "1"})
    return env
