#!/usr/bin/env bash
# Prepare this machine for the toolkit: Debian packages, a running Docker daemon and the
# Python virtualenv (.venv) with the pinned requirements. Safe to run again: every step checks first.
# Usage (as root on Debian 12): scripts/setup.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PROVISION_VENV:-$ROOT/.venv}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "setup: run as root (or install sudo): the Debian packages need it." >&2; exit 1
    fi
fi

log() { printf '[setup] %s\n' "$*"; }

DEB_PACKAGES=(vagrant docker.io mmdebstrap python3 python3-venv python3-pip openssh-client
              iproute2 iptables ca-certificates tmux)
missing=()
for p in "${DEB_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    log "Debian packages present"
fi

# Docker daemon: use the running one; otherwise start dockerd in the background (no systemd here).
if ! docker info >/dev/null 2>&1; then
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        log "starting docker with systemctl"
        $SUDO systemctl start docker
    else
        log "starting dockerd in the background (log: /var/log/dockerd.log)"
        $SUDO sh -c 'nohup dockerd >/var/log/dockerd.log 2>&1 &'
    fi
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || { echo "setup: dockerd did not answer within 60 s; see /var/log/dockerd.log" >&2; exit 1; }
fi
log "docker daemon answers ($(docker info --format '{{.ServerVersion}}, {{.Driver}}, cgroup v{{.CgroupVersion}}'))"

# Python virtualenv with pinned dependencies (reinstalled only when requirements.txt changes).
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtualenv $VENV"
    "$PY" -m venv "$VENV"
fi
stamp="$VENV/.requirements.sha256"
want="$(sha256sum "$ROOT/requirements.txt" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    log "installing Python requirements into $VENV"
    "$VENV/bin/pip" install -q --upgrade pip >/dev/null
    "$VENV/bin/pip" install -q -r "$ROOT/requirements.txt"
    echo "$want" > "$stamp"
else
    log "Python requirements up to date"
fi
log "ready: $VENV/bin/python provision.py --help"
