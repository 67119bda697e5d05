"""`provision.py destroy`: the machines, generated inventory and state of one cluster."""

from __future__ import annotations

import shutil
import sys
from typing import TextIO

from provisioner import machines
from provisioner.errors import ProvisionError
from provisioner.progress import Progress
from provisioner.spec import ClusterSpec
from provisioner.vagrant import Vagrant
from provisioner.workspace import Workspace


def destroy(ws: Workspace, force: bool, out: TextIO = sys.stdout, inp: TextIO = sys.stdin) -> int:
    saved = ws.load_saved()
    if saved is None and not ws.root.exists():
        out.write(f"nothing to destroy: no cluster under {ws.root}\n")
        return 0
    spec = ClusterSpec.from_dict(saved["spec"]) if saved else None
    if not force:
        if not inp.isatty():
            raise ProvisionError("destroy needs confirmation; run it in a terminal or pass -f", exit_code=2)
        name = spec.name if spec else ws.root.name
        out.write(f"Destroy cluster '{name}' and all its machines? [y/N] ")
        out.flush()
        if inp.readline().strip().lower() not in ("y", "yes"):
            out.write("aborted\n")
            return 1
    progress = Progress(out)
    if spec is not None:
        machines_of = machines.for_name(spec.provider)
        machines_of.before_destroy()
        if (ws.root / "vagrant").exists():
            progress.start(f"destroy {len(spec.nodes)} machines")
            Vagrant(ws.root, spec.provider).destroy(ws.logs / "destroy.log")
            progress.stop("done")
        machines_of.clean_up(spec, str(saved.get("cluster_id", "")) if saved else "", out)
    shutil.rmtree(ws.root, ignore_errors=True)
    out.write(f"removed machines, inventory and state ({ws.root})\n")
    return 0
