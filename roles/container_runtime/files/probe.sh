#!/bin/sh
# probe.sh [--scope] DATA_DIR...
# What the runtime stage needs to know about this node, in one run and read-only, one fact a line:
#   bin NAME yes|no            containerd and dockerd in /usr/bin
#   containerd-version TEXT    the first line of `containerd --version`, when the binary is there
#   fs PATH FSTYPE             for each DATA_DIR, from its nearest existing ancestor when the
#                              directory does not exist yet (before the runtime's first start)
#   scope-rc N, scope-out LINE with --scope: whether systemd can put a process into a transient
#                              scope (what the systemd cgroup driver does), exit code and output
set -eu
scope=no
if [ "${1:-}" = --scope ]; then
    scope=yes
    shift
fi
for name in containerd dockerd; do
    if [ -e "/usr/bin/$name" ]; then echo "bin $name yes"; else echo "bin $name no"; fi
done
if [ -x /usr/bin/containerd ]; then
    echo "containerd-version $(/usr/bin/containerd --version 2>/dev/null | head -n 1)"
fi
for path in "$@"; do
    probe=$path
    while [ ! -e "$probe" ] && [ "$probe" != / ]; do
        probe=$(dirname "$probe")
    done
    echo "fs $path $(stat -f -c %T "$probe")"
done
if [ "$scope" = yes ]; then
    rc=0
    out=$(systemd-run --scope --quiet --collect --unit=container-runtime-cgroup-probe -- cat /proc/self/cgroup 2>&1) || rc=$?
    echo "scope-rc $rc"
    printf '%s\n' "$out" | sed 's/^/scope-out /'
fi
