#!/usr/bin/env bash
# The whole test suite: setup (idempotent), linters, unit tests, and the integration tests that
# bring real docker-provider nodes up and tear them down. CI runs exactly this (.ci/run).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# Each step's wall time, printed at the end below pytest's lane times.
STEP_TIMES=()
step_name="setup"
step_start=$SECONDS
minutes() { awk -v s="$1" 'BEGIN { printf "%6.1f min", s / 60 }'; }
end_step() {
    [ -z "$step_name" ] || STEP_TIMES+=("$(minutes $((SECONDS - step_start)))  $step_name")
    step_name=""
}
step() { end_step; step_name="$*"; step_start=$SECONDS; printf '\n=== %s ===\n' "$*"; }
bash scripts/setup.sh
PY=.venv/bin
export PATH="$ROOT/.venv/bin:$PATH"

step "ruff"
$PY/ruff check .
$PY/ruff format --check .
step "mypy"
$PY/mypy
step "ansible-lint (production profile, empty skip list)"
$PY/ansible-lint --offline -q
step "go: gofmt and go vet of the bundle's own Go code (bundle/images, bundle/coredns, bundle/ingress)"
export GOMODCACHE="${PROVISION_CACHE_DIR:-/var/cache/provisioner}/go/mod" GOCACHE="${PROVISION_CACHE_DIR:-/var/cache/provisioner}/go/build"
for mod in bundle/images bundle/coredns bundle/ingress/ext; do
    unformatted="$(cd "$mod" && gofmt -l .)"
    [ -z "$unformatted" ] || { echo "gofmt: $mod: $unformatted" >&2; exit 1; }
    (cd "$mod" && go vet ./...)
done
# bundle/ingress's own files (tools.go, the lego overlay): gofmt only, since its module builds only
# where the bundle build has made its trimmed lego beside it.
unformatted="$(gofmt -l bundle/ingress)"
[ -z "$unformatted" ] || { echo "gofmt: bundle/ingress: $unformatted" >&2; exit 1; }
step "bundle: Kubernetes + Calico from Go modules (cached under /var/cache/provisioner; built when missing)"
$PY/python provision.py bundle build --ingress
step "conformance: the suite and its test images from Go modules and Debian packages (cached; built when missing)"
$PY/python -m provisioner.conformance
# The libvirt VM lane (tests/integration/test_libvirt_vms.py) runs where libvirt and qemu can be
# installed and started (it says why it skips where not); about 13 minutes alone under qemu software
# emulation, bounded by PROVISION_VM_LANE_BUDGET. PROVISION_VM_LANE=0 switches it off.
export PROVISION_VM_LANE="${PROVISION_VM_LANE:-1}"
# Two lanes at once, one test module to a worker (tests/conftest.py orders them, longest first):
# the lanes spend much of their time waiting on nodes, and the two cores take both.
# PROVISION_TEST_WORKERS=0 runs them one after another in one process.
WORKERS="${PROVISION_TEST_WORKERS:-2}"
step "pytest: unit and integration ($WORKERS workers)"
# -p no:cacheprovider keeps the clone clean; -ra lists every skip with its reason.
set +e
$PY/pytest -p no:cacheprovider -ra --durations=15 -n "$WORKERS" --dist loadfile --no-loadscope-reorder "$@"
rc=$?
set -e
end_step
printf '\n=== step times (the lanes inside pytest are listed above it) ===\n'
printf '%s\n' "${STEP_TIMES[@]}"
printf '%s  the whole run\n' "$(minutes "$SECONDS")"
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure here" >&2
    exit 1
fi
exit "$rc"
