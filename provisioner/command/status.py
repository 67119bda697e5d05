"""`provision.py status`: the machines, their state and addresses, and the finished stages."""

from __future__ import annotations

import sys
from typing import TextIO

from provisioner import stages
from provisioner.state import State
from provisioner.vagrant import Vagrant
from provisioner.workspace import Workspace


def status(ws: Workspace, out: TextIO = sys.stdout) -> int:
    spec = ws.saved_spec()
    state = State.load(ws.state_file)
    vg = Vagrant(ws.root, spec.provider)
    machines = {m.name: m.state for m in vg.status()}
    out.write(f"cluster {spec.name}: engine {spec.engine}, provider {spec.provider}, network {spec.network}\n")
    out.write(f"  {'node':<14}{'role':<15}{'ip':<16}state\n")
    missing = []
    for n in spec.nodes:
        st = machines.get(n.name, "not_created")
        if st != "running":
            missing.append(n.name)
        note = "  (missing: `up` recreates it)" if st == "not_created" else ""
        out.write(f"  {n.name:<14}{n.role:<15}{n.ip:<16}{st}{note}\n")
    out.write("stages:\n")
    for stage in ["machines", *[s.name for s in stages.stages_for(spec.engine)]]:
        rec = state.stages.get(stage)
        if rec is None:
            out.write(f"  {stage:<15}not run\n")
        else:
            msg = f"  {rec.message}" if rec.status in ("failed", "skipped") and rec.message else ""
            out.write(f"  {stage:<15}{rec.status:<8}{rec.seconds:7.1f}s{msg}\n")
    out.write(f"inventory: {ws.inventory if ws.inventory.exists() else '(none)'}\n")
    return 0 if not missing else 1
