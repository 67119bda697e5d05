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
              iproute2 iptables ca-certificates tmux skopeo fdisk gnupg dpkg-dev)
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

# Go for the bundle's source build (provision.py bundle build --from source): Go 1.26 or newer on
# PATH. Where there is none (Debian 12 ships 1.19), Debian's Go fetches the Go 1.26 toolchain module
# from the Go module proxy (golang.org/toolchain, the same module `GOTOOLCHAIN` uses) into
# /var/cache/provisioner/go/toolchain, linked as /usr/local/bin/go.
# The Go the bundle's modules need: the newest `go` line of bundle/*/go.mod.
GO_NEED="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$ROOT"/bundle/*/go.mod | sort -V | tail -1)"
GO_TOOLCHAIN="${PROVISION_GO_TOOLCHAIN:-go$GO_NEED}"
go_ok() {
    local have
    have="$(go env GOVERSION 2>/dev/null | sed 's/^go//')" || return 1
    [ -n "$have" ] && [ "$(printf '%s\n%s\n' "$GO_NEED" "$have" | sort -V | head -1)" = "$GO_NEED" ]
}
if command -v go >/dev/null 2>&1 && go_ok; then
    log "Go present ($(go env GOVERSION))"
else
    cache="${PROVISION_CACHE_DIR:-/var/cache/provisioner}/go"
    dest="$cache/toolchain/$GO_TOOLCHAIN"
    if [ ! -x "$dest/bin/go" ]; then
        command -v go >/dev/null 2>&1 || {
            log "installing Debian's Go to fetch $GO_TOOLCHAIN"
            $SUDO apt-get update -qq
            DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends golang-go >/dev/null
        }
        log "fetching the $GO_TOOLCHAIN toolchain from the Go module proxy"
        mod="golang.org/toolchain@v0.0.1-$GO_TOOLCHAIN.linux-$(dpkg --print-architecture)"
        dir="$(cd /tmp && GOMODCACHE="$cache/mod" GO111MODULE=on GOFLAGS=-mod=mod GOTOOLCHAIN=local \
               go mod download -json "$mod" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
        [ -n "$dir" ] && [ -d "$dir" ] || { echo "setup: could not fetch $mod from the Go module proxy" >&2; exit 1; }
        $SUDO mkdir -p "$(dirname "$dest")"
        $SUDO rm -rf "$dest.partial" && $SUDO cp -r "$dir" "$dest.partial"
        # Module zips keep no file modes: make the toolchain's programs executable again.
        $SUDO chmod -R u+w "$dest.partial"
        $SUDO find "$dest.partial/bin" "$dest.partial/pkg/tool" -type f -exec chmod 0755 {} +
        $SUDO mv "$dest.partial" "$dest"
    fi
    $SUDO ln -sf "$dest/bin/go" /usr/local/bin/go
    log "Go $("$dest/bin/go" env GOVERSION) from the toolchain module ($dest)"
fi

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
