"""`provision.py conformance [--focus RE] [--skip RE] [--parallel N]`: Kubernetes' conformance suite
against the cluster, offline.

The suite (e2e.test, ginkgo, agnhost) is built from the Go module bundle/conformance pins the first
time and cached (provisioner.conformance.suite); the test images are made under the names the suite
asks for (provisioner.conformance.testimages) and imported on every node by playbooks/conformance.yml;
then ginkgo runs e2e.test from this host with the cluster's kubeconfig: the tests that may run side by
side first, on `--parallel` processes, then the [Serial] ones alone. Each phase writes its e2e.log and
junit_01.xml under <state dir>/conformance/<time>/<phase>/ (parallel, serial, or all), the summary goes
to <time>/summary.txt, and the command ends with passed, failed and skipped by SIG; its exit code is 0 only when every test that ran passed.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from provisioner import REPO_ROOT, bundle, proc
from provisioner.ansible import forget_facts, run_playbook
from provisioner.command.kubectl import cluster_kubeconfig, kubectl_binary
from provisioner.conformance import report
from provisioner.conformance.suite import Suite, ensure_suite
from provisioner.conformance.testimages import ensure_images
from provisioner.errors import ProvisionError
from provisioner.progress import Progress
from provisioner.state import State
from provisioner.workspace import Workspace

PLAYBOOK = REPO_ROOT / "playbooks" / "conformance.yml"
DEFAULT_FOCUS = r"\[Conformance\]"


@dataclass(frozen=True)
class Phase:
    name: str
    label_filter: str
    procs: int


def phases(parallel: int) -> list[Phase]:
    """The runs: everything on one process, or the tests that may share the cluster on `parallel`
    processes and then the [Serial] ones alone (as kind runs the suite)."""
    if parallel <= 1:
        return [Phase("all", "", 1)]
    return [Phase("parallel", "!Serial", parallel), Phase("serial", "Serial", 1)]


def check_regex(flag: str, value: str) -> None:
    """Refuse what is no regular expression at all before anything runs (ginkgo reads Go's RE2 syntax,
    which has no lookarounds or backreferences: those fail in its dry run, naming the pattern)."""
    try:
        re.compile(value)
    except re.error as exc:
        raise ProvisionError(
            f"{flag} {value!r} is not a regular expression ({exc}); give one in Go's RE2 syntax, quoted for the shell",
            2,
        ) from None


def conformance(
    ws: Workspace, focus: str, skip: str, parallel: int, verbose: bool = False, out: TextIO = sys.stdout
) -> int:
    focus = focus or DEFAULT_FOCUS
    check_regex("--focus", focus)
    if skip:
        check_regex("--skip", skip)
    if parallel < 1:
        raise ProvisionError(f"--parallel {parallel}: give 1 or more test processes", exit_code=2)
    kubeconfig = cluster_kubeconfig(ws, "conformance suite")
    spec = ws.saved_spec()
    state = State.load(ws.state_file)
    if not ws.inventory.exists() or not state.done("join"):
        raise ProvisionError(
            "this cluster has not formed yet (its join stage is not done); run `provision.py up` until it is", 2
        )
    # The release the cluster runs: a spec that names a minor (1.37) took the bundle's patch of it.
    kubernetes = bundle.resolve_versions(spec.versions["kubernetes"], spec.versions["calico"]).kubernetes
    progress = Progress(out, verbose=verbose)
    step = {"what": ""}
    progress.start(f"conformance suite for Kubernetes {kubernetes}", lambda: step["what"])

    def note(text: str) -> None:
        step["what"] = text

    try:
        suite = ensure_suite(kubernetes, ws.logs / "conformance-build.log", note)
        images = ensure_images(suite, note)
    except ProvisionError:
        progress.stop("FAILED")
        raise
    progress.stop(f"ok ({suite.dir}, {len(images.made)} test images)")
    if images.not_made:
        out.write(f"    not made here yet, so the tests that run them fail: {', '.join(images.not_made)}\n")
    forget_facts(ws.root)
    try:
        run_playbook(
            PLAYBOOK,
            ws.inventory,
            ws.root,
            ws.logs / "conformance-images.log",
            progress,
            "test images on every node",
            extra_vars={"conformance_images_dir": str(images.dir), "conformance_images_names": images.made},
            verbose=verbose,
        )
    except ProvisionError as exc:
        exc.message = exc.message.replace("run `up` again to resume here", "run `provision.py conformance` again")
        raise
    kubectl = kubectl_binary(kubernetes, spec.versions["calico"], out)
    run_dir = ws.root / "conformance" / time.strftime("%Y%m%dT%H%M%S")
    run_dir.mkdir(parents=True)
    started = time.monotonic()
    junits: list[Path] = []
    for phase in phases(parallel):
        report_dir = run_dir / phase.name
        report_dir.mkdir()
        ran = run_phase(suite, phase, focus, skip, kubeconfig, kubectl, report_dir, progress)
        junits += sorted(report_dir.glob("junit*.xml")) if ran else []
    if not junits:
        out.write(f"==> no test matched --focus {focus!r}{f' --skip {skip!r}' if skip else ''}\n")
        return 1
    summary = report.read_junit(junits)
    if summary.passed == 0 and summary.failed == 0:
        out.write("==> every selected test was skipped (the reasons are in e2e.log): nothing passed\n")
    text = report.table(summary)
    (run_dir / "summary.txt").write_text(text + "\n", encoding="utf-8")
    out.write(text + "\n")
    for name in summary.failures:
        out.write(f"    FAILED: {name}\n")
    minutes = (time.monotonic() - started) / 60
    out.write(
        f"==> conformance: {summary.passed} passed, {summary.failed} failed, {summary.skipped} skipped in "
        f"{minutes:.1f} min; e2e.log and junit under {run_dir}\n"
    )
    return 0 if summary.failed == 0 and summary.passed > 0 else 1


def ginkgo_filters(phase: Phase, focus: str, skip: str) -> list[str]:
    flags = [f"--focus={focus}"]
    if skip:
        flags.append(f"--skip={skip}")
    if phase.label_filter:
        flags.append(f"--label-filter={phase.label_filter}")
    return flags


def count_specs(suite: Suite, phase: Phase, focus: str, skip: str) -> int:
    """How many specs the phase runs (a dry run of e2e.test, which needs no cluster)."""
    flags = ["--ginkgo." + f.removeprefix("--") for f in ginkgo_filters(phase, focus, skip)]
    res = proc.run(
        [str(suite.e2e_test), "--ginkgo.dry-run", "--ginkgo.no-color", *flags, "--provider=skeleton"],
        timeout=300,
        what="e2e.test --ginkgo.dry-run",
        check=False,
    )
    found = report.WILL_RUN.search(res.stdout + res.stderr)
    if not found:
        raise ProvisionError(
            f"e2e.test's dry run printed no count of specs (exit {res.returncode}): "
            f"{(res.stdout + res.stderr).strip()[-300:]}"
        )
    return int(found.group(1))


def run_phase(
    suite: Suite,
    phase: Phase,
    focus: str,
    skip: str,
    kubeconfig: Path,
    kubectl: Path,
    report_dir: Path,
    progress: Progress,
) -> bool:
    """One ginkgo run; whether it ran any spec. Failed specs are the summary's business, not an error."""
    total = count_specs(suite, phase, focus, skip)
    if total == 0:
        return False
    tally = report.Tally(total=total)
    t0 = time.monotonic()

    def detail() -> str:
        left = ""
        if tally.done:
            per = (time.monotonic() - t0) / tally.done
            left = f", about {per * (tally.total - tally.done) / 60:.0f} min left"
        return f"{tally.done} of {tally.total} done, {tally.failed} failed{left}"

    cmd = [
        str(suite.ginkgo),
        f"--procs={phase.procs}",
        "--timeout=24h",
        "-v",
        "--no-color",
        *ginkgo_filters(phase, focus, skip),
        str(suite.e2e_test),
        "--",
        "--provider=skeleton",
        f"--kubeconfig={kubeconfig}",
        f"--kubectl-path={kubectl}",
        f"--report-dir={report_dir}",
    ]
    title = f"{phase.name}: {total} tests on {phase.procs} process{'es' if phase.procs > 1 else ''}"
    progress.start(title, detail)

    name_next = [False]  # ginkgo names a finished spec on the line after its bullet

    def seen(line: str) -> None:
        if name_next[0] and line.strip():
            progress.note(f"FAILED: {line.strip()[:200]}")
            name_next[0] = False
        failed = tally.failed
        if tally.feed(line) and tally.failed > failed:
            name_next[0] = True

    try:
        rc = proc.stream(cmd, cwd=report_dir, log_file=report_dir / "e2e.log", on_line=seen)
    except BaseException:
        progress.stop("FAILED")
        raise
    progress.stop(f"exit {rc}, {tally.done} of {tally.total} done, {tally.failed} failed")
    if not list(report_dir.glob("junit*.xml")):
        raise ProvisionError(
            f"the conformance suite's {phase.name} run ended (exit {rc}) without a junit report",
            log_path=str(report_dir / "e2e.log"),
        )
    return True
