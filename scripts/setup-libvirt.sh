#!/usr/bin/env bash
# Prepare this machine for the libvirt provider: Debian's libvirt, qemu, the vagrant-libvirt plugin
# and the tools that build the toolkit's own Vagrant box. Installs only what is missing, so it is
# safe to run again. It does not start any daemon: `provisioner.libvirt` starts virtlogd and libvirtd
# on demand where no service manager runs them (and stops what it started).
# Usage (as root on Debian 12): scripts/setup-libvirt.sh [--check]
#   --check  install nothing; exit 0 when everything is present, 1 and the missing names otherwise
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "setup-libvirt: run as root (or install sudo): the Debian packages need it." >&2; exit 1
    fi
fi
log() { printf '[setup-libvirt] %s\n' "$*"; }

# What each package is for:
#   libvirt-daemon-system  libvirtd, virtlogd, the libvirt-qemu user, default config and network XML
#   libvirt-clients        virsh
#   qemu-system-x86        the emulator (software emulation, TCG, where KVM cannot run a stock kernel)
#   qemu-utils             qemu-img: box image creation and conversion
#   vagrant-libvirt        the Vagrant provider plugin (Debian's system plugin, no `vagrant plugin install`)
#   dnsmasq-base           DHCP and DNS on libvirt's NAT networks (the management network)
#   iptables               NAT and forwarding rules libvirt adds for its networks
#   dmidecode              host capability probe libvirtd runs at start
#   mmdebstrap             the box's root file system from Debian packages
#   extlinux, syslinux-common  boot loader and MBR code written into the box image
#   fdisk, e2fsprogs, util-linux  partition table, ext4 file system, losetup
DEB_PACKAGES=(libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils vagrant vagrant-libvirt
              dnsmasq-base iptables dmidecode mmdebstrap extlinux syslinux-common fdisk e2fsprogs
              util-linux)

missing=()
for p in "${DEB_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ "${1:-}" = "--check" ]; then
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "missing Debian packages: ${missing[*]}"
        exit 1
    fi
    exit 0
fi

if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    # Another apt run may hold the dpkg lock (other clusters install packages too): wait for it.
    $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null
else
    log "Debian packages present"
fi

# qemu runs guests as libvirt-qemu; the package creates it, but a half-configured install may not have.
if ! getent passwd libvirt-qemu >/dev/null; then
    echo "setup-libvirt: user libvirt-qemu is missing after installing libvirt-daemon-system; run 'dpkg --configure -a'" >&2
    exit 1
fi
if ! vagrant plugin list 2>/dev/null | grep -q '^vagrant-libvirt'; then
    echo "setup-libvirt: Vagrant does not list the vagrant-libvirt plugin although the package is installed" >&2
    exit 1
fi
log "ready: $(virsh --version 2>/dev/null | sed 's/^/libvirt /'), $(qemu-system-x86_64 --version | head -1), $(vagrant plugin list | grep '^vagrant-libvirt')"
