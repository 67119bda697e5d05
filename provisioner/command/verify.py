"""`provision.py verify`: the testinfra suites of the finished stages, as a table per node."""

from __future__ import annotations

import sys
from typing import TextIO

from provisioner import verify
from provisioner.errors import ProvisionError
from provisioner.progress import Progress
from provisioner.spec import ClusterSpec
from provisioner.state import State
from provisioner.workspace import Workspace


def run_verify(ws: Workspace, spec: ClusterSpec, state: State, out: TextIO) -> int:
    finished = [name for name, rec in state.stages.items() if rec.status == "done"]
    names = [n.name for n in spec.nodes]
    progress = Progress(out)
    progress.start("verify (testinfra)")
    state.last_verify = ""
    state.save()
    # Container nodes (the docker provider) share the host's kernel: their checks of it may skip.
    report, logf = verify.run_verify(ws.inventory, ws.root, finished, names, container_nodes=spec.provider == "docker")
    failed = report.failed
    state.last_verify = "failed" if failed else "passed"
    state.save()
    progress.stop(report.summary())
    out.write(report.table(names) + "\n")
    for line in report.skip_reasons():
        out.write(line + "\n")
    for r in failed[:20]:
        out.write(f"  FAIL {r.node}: {r.check}: {r.message}\n")
    out.write(report.closing_line() + "\n")
    if failed:
        unexpected = sum(r.unexpected_skip for r in failed)
        raise ProvisionError(
            f"verify: {len(failed)} checks failed"
            + (f" ({unexpected} of them skipped for a reason this cluster does not explain)" if unexpected else "")
            + f" (first: {failed[0].node}: {failed[0].check})",
            exit_code=5,
            log_path=str(logf),
        )
    return 0


def verify_cmd(ws: Workspace, out: TextIO = sys.stdout) -> int:
    spec = ws.saved_spec()
    state = State.load(ws.state_file)
    return run_verify(ws, spec, state, out)
