#!/bin/bash
# Entrypoint of the bundle's calico-node image (the toolkit's own; Calico's image uses runit).
# With the vxlan backend no BGP daemon runs: calico-node configures the node once, then its
# long-running parts run side by side. When one of them exits the container exits, and kubelet
# restarts it.
set -euo pipefail
say() { echo "start-calico-node: $*"; }

say "node start-up"
/bin/calico-node -startup
if [ ! -f /var/lib/calico/nodename ]; then
    say "/var/lib/calico/nodename was not written by the start-up; exiting"
    exit 1
fi
NODENAME="$(cat /var/lib/calico/nodename)"
export NODENAME
# felix takes the node name and the datastore from its own variables.
export FELIX_FELIXHOSTNAME="$NODENAME"
if [ -n "${DATASTORE_TYPE:-}" ]; then
    export FELIX_DATASTORETYPE="$DATASTORE_TYPE"
fi
/bin/calico-node -allocate-tunnel-addrs -allocate-tunnel-addrs-run-once

pids=()
run() {
    say "starting calico-node $*"
    /bin/calico-node "$@" &
    pids+=("$!")
}
stop() {
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait || true
}
trap 'stop; exit 0' TERM INT

run -felix
if [ "${CALICO_NETWORKING_BACKEND:-}" != "none" ]; then
    run -monitor-addresses
fi
run -allocate-tunnel-addrs
run -status-reporter
if [ "${CALICO_MANAGE_CNI:-true}" != "false" ]; then
    run -monitor-token
fi
# Clears the node's NetworkUnavailable condition once the node is up; retried until it succeeds.
( until /bin/calico-node -complete-startup; do sleep 5; done ) &

set +e
wait -n "${pids[@]}"
rc=$?
say "a calico-node process exited ($rc); stopping the others"
stop
exit "$rc"
