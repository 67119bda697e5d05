"""The docker provider's node image: Debian 12 with systemd, sshd, python3, sudo and a `vagrant` user.

Built locally from Debian's packages with mmdebstrap and imported into Docker; tagged with a hash of
the recipe so that a changed recipe builds a new image and an unchanged one is reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from provisioner import hostlock, proc
from provisioner.errors import ProvisionError
from provisioner.kubeimage import IMAGE_REPO_KUBE

log = logging.getLogger(__name__)

IMAGE_REPO = "provisioner/node"
# The same image with the container runtime baked in (`image build --with-runtime`, or `--image
# provisioner/node-runtime`): nodes start with the packages the container_runtime role would install
# from Debian (container_runtime_source: distro), so the runtime stage only configures them.
IMAGE_REPO_RUNTIME = "provisioner/node-runtime"
SUITE = "bookworm"
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "sudo",
    "iproute2",
    "iputils-ping",
    "procps",
    "kmod",
    "ca-certificates",
    "less",
)
# Baked in with the runtime: the container_runtime role's distro list (apparmor included: its parser
# loads the runtimes' profiles), busybox-static, from which the swarm role builds its smoke image, and
# python3-apt, which node_prep would otherwise install after an `apt-get update` (about 11 s per node,
# and a mirror to reach). The plain image stays without it, as a fresh server may be.
RUNTIME_PACKAGES = ("docker.io", "containerd", "runc", "apparmor", "busybox-static", "python3-apt")
# Where Vagrant's Debian package ships its well-known insecure public key. On a docker node created
# with the cluster key (provision.py makes it before a cluster's first machine), the key's public half
# is bind-mounted over it (see the Vagrantfile), so it opens nothing; on a node created without it,
# Vagrant replaces it with a per-machine key on first boot (config.ssh.insert_key).
VAGRANT_KEY_CANDIDATES = (
    "/usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub",
    "/opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub",
)

# sshd's drop-in on the node image and on the libvirt box (box.py): keys only.
SSHD_KEYS_ONLY = r"""# sshd takes keys only: every account is locked, the vagrant user logs in with its key and uses
# sudo, and nobody logs in as root.
cat > "$root/etc/ssh/sshd_config.d/10-provisioner.conf" <<'SSHD'
UseDNS no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
SSHD
"""

# Shell run against the unpacked root file system (argument $1) before it is imported.
CUSTOMIZE = (
    r"""
set -eu
root="$1"
chroot "$root" useradd --create-home --shell /bin/bash --groups sudo vagrant
echo 'vagrant ALL=(ALL) NOPASSWD:ALL' > "$root/etc/sudoers.d/vagrant"
chmod 0440 "$root/etc/sudoers.d/vagrant"
install -d -m 0700 -o 1000 -g 1000 "$root/home/vagrant/.ssh"
install -m 0600 -o 1000 -g 1000 "$VAGRANT_PUBKEY" "$root/home/vagrant/.ssh/authorized_keys"
# Every node gets its own SSH host keys at first boot, not a copy of the builder's.
rm -f "$root"/etc/ssh/ssh_host_*
cat > "$root/etc/systemd/system/ssh-hostkeys.service" <<'UNIT'
[Unit]
Description=Generate SSH host keys on first boot
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
UNIT
chroot "$root" systemctl enable ssh-hostkeys.service ssh.service
# Units that have nothing to do in a container node.
chroot "$root" systemctl mask getty@tty1.service console-getty.service systemd-remount-fs.service \
    systemd-udevd.service sys-kernel-config.mount sys-kernel-debug.mount
: > "$root/etc/machine-id"
"""
    + SSHD_KEYS_ONLY
    + r"""printf 'node\n' > "$root/etc/hostname"
# With the runtime baked in, its daemons stay off at boot: the runtime stage writes their
# configuration and starts them once, instead of a start with the package defaults and a restart.
if [ -e "$root/lib/systemd/system/containerd.service" ]; then
    chroot "$root" systemctl disable containerd.service docker.service docker.socket
fi
# The node's entrypoint: named fix-ups, in order, that a container started without --privileged needs
# before systemd (and, on Kubernetes nodes, kubelet and containerd) can run; then systemd as PID 1.
cat > "$root/usr/local/sbin/node-init" <<'INIT'
#!/bin/sh
# Container-node fix-ups (provisioner), run before systemd. Each one is harmless where it has
# nothing to do, so the same image serves every engine.
set -u
say() { echo "node-init: $*" >&2; }

# 1. cgroups: with a private cgroup namespace (Kubernetes nodes) Docker mounts the hierarchies
#    read-only unless --privileged; systemd, containerd and kubelet create cgroups below the node's
#    own root, so make the mounts writable (each stays limited to the node's namespace).
fix_cgroups() {
    for m in /sys/fs/cgroup /sys/fs/cgroup/*; do
        if mountpoint -q "$m" && grep -q " $m ro," /proc/self/mountinfo; then
            mount -o remount,bind,rw "$m" || say "could not make $m writable"
        fi
    done
}

# 2. /dev/kmsg: kubelet's OOM watcher reads it; without the host's, point it at the console.
fix_kmsg() {
    [ -e /dev/kmsg ] || ln -s /dev/console /dev/kmsg
}

# 3. Mount propagation: kubelet and the CSI/volume code need shared mounts below /.
fix_mounts() {
    mount --make-rshared / || say "could not make / shared"
}

fix_cgroups
fix_kmsg
fix_mounts
exec /sbin/init "$@"
INIT
chmod 0755 "$root/usr/local/sbin/node-init"
# apt on the nodes fetches no translated package descriptions (less to download on every `apt update`).
echo 'Acquire::Languages "none";' > "$root/etc/apt/apt.conf.d/90provisioner-no-translations"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
"""
)


@dataclass(frozen=True)
class ImageRecipe:
    suite: str = SUITE
    packages: tuple[str, ...] = PACKAGES
    customize: str = CUSTOMIZE
    mirror: str = ""
    with_runtime: bool = False

    @property
    def all_packages(self) -> tuple[str, ...]:
        return self.packages + (RUNTIME_PACKAGES if self.with_runtime else ())

    def digest(self) -> str:
        blob = json.dumps(
            {"suite": self.suite, "packages": self.all_packages, "customize": self.customize}, sort_keys=True
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def repo(self) -> str:
        return IMAGE_REPO_RUNTIME if self.with_runtime else IMAGE_REPO

    @property
    def tag(self) -> str:
        return f"{self.repo}:{self.suite}-{self.digest()}"


def own_image(name: str) -> bool | None:
    """Whether `name` is one of the toolkit's own node images (True: one with the runtime baked in,
    the Kubernetes node image included; False: the plain one), or None for anybody else's image.
    "" means the plain one."""
    repo = name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name  # without the tag
    if repo in ("", IMAGE_REPO):
        return False
    if repo in (IMAGE_REPO_RUNTIME, IMAGE_REPO_KUBE):
        return True
    return None


def host_debian_mirror(sources_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this host's apt uses (so the image builds where the host's apt works)."""
    candidates = sorted((sources_dir / "sources.list.d").glob("*.sources")) if sources_dir.exists() else []
    for path in candidates:
        mirror = parse_deb822_mirror(path.read_text(encoding="utf-8", errors="replace"))
        if mirror:
            return mirror
    legacy = sources_dir / "sources.list"
    if legacy.exists():
        for line in legacy.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[-2]:
                url = next((p for p in parts[1:] if re.match(r"^(https?|file)://", p)), "")
                if url:
                    return url
    return ""


def parse_deb822_mirror(text: str) -> str:
    """First URI of a deb822 stanza that carries the main archive (not security, not updates-only)."""
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        suites = fields.get("suites", "").split()
        uris = fields.get("uris", "").split()
        if uris and "deb" in fields.get("types", "deb").split() and any("-" not in s for s in suites):
            return uris[0]
    return ""


def find_vagrant_pubkey() -> Path:
    for pattern in VAGRANT_KEY_CANDIDATES:
        matches = sorted(Path("/").glob(pattern.lstrip("/")))
        if matches:
            return matches[-1]
    raise ProvisionError(
        "Vagrant's insecure public key (keys/vagrant.pub) was not found; install vagrant with "
        "`apt-get install vagrant` (or run scripts/setup.sh)"
    )


def image_exists(tag: str) -> bool:
    return proc.run(["docker", "image", "inspect", tag], check=False).returncode == 0


def ensure_image(recipe: ImageRecipe | None = None, *, force: bool = False) -> str:
    """Return the node image tag, building it first if it is missing (or `force`)."""
    recipe = recipe or ImageRecipe(mirror=host_debian_mirror())
    if not force and image_exists(recipe.tag):
        log.info("node image %s present", recipe.tag)
        return recipe.tag
    with hostlock.held("provisioner-node-image"):  # another `up` building it: wait, then use its image
        if force or not image_exists(recipe.tag):
            build_image(recipe)
    return recipe.tag


def build_image(recipe: ImageRecipe) -> None:
    proc.require_tool("mmdebstrap")
    pubkey = find_vagrant_pubkey()
    log.info("building node image %s from Debian %s packages (about a minute)", recipe.tag, recipe.suite)
    with tempfile.TemporaryDirectory(prefix="provision-image-") as tmp:
        hook = Path(tmp) / "customize.sh"
        hook.write_text(recipe.customize, encoding="utf-8")
        tarball = Path(tmp) / "rootfs.tar"
        cmd = [
            "mmdebstrap",
            "--variant=minbase",
            "--include=" + ",".join(recipe.all_packages),
            f'--customize-hook=VAGRANT_PUBKEY={pubkey} sh {hook} "$1"',
            recipe.suite,
            str(tarball),
        ]
        if recipe.mirror:
            cmd.append(recipe.mirror)
        proc.run(cmd, timeout=900, what="mmdebstrap (node image root file system)")
        proc.run(
            [
                "docker",
                "import",
                "--change",
                'CMD ["/usr/local/sbin/node-init"]',
                "--change",
                f"LABEL org.provisioner.recipe={recipe.digest()}",
                str(tarball),
                recipe.tag,
            ],
            timeout=600,
            what="docker import (node image)",
        )
    log.info("node image %s built", recipe.tag)
