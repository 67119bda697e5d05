"""`provision.py provision` (rerun chosen stages) and `provision.py reset` (kubeadm reset on every node)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from provisioner import REPO_ROOT, stages
from provisioner.ansible import forget_facts, run_playbook
from provisioner.command.up import lost_machines_error
from provisioner.errors import ProvisionError
from provisioner.kubesource import kubernetes_blocker
from provisioner.progress import Progress
from provisioner.state import State
from provisioner.vagrant import Vagrant
from provisioner.workspace import Workspace


def provision(ws: Workspace, only: str | None, start: str | None, verbose: bool, out: TextIO = sys.stdout) -> int:
    spec = ws.saved_spec()
    if not ws.inventory.exists():
        raise ProvisionError("no inventory yet; run `provision.py up` first")
    state = State.load(ws.state_file)
    progress = Progress(out, verbose=verbose)
    skip_reason = kubernetes_blocker(spec)
    forget_facts(ws.root)
    said = False
    for stage in stages.select(spec.engine, only, start):
        if stage.kubernetes and skip_reason:
            out.write(f"==> {stage.name}: not run" + (" (the reason above)\n" if said else f": {skip_reason}\n"))
            said = True
            continue
        t0 = time.monotonic()
        try:
            run = run_playbook(
                stage.path,
                ws.inventory,
                ws.root,
                ws.logs / f"{stage.name}.log",
                progress,
                f"stage {stage.name} ({stage.description})",
                verbose=verbose,
            )
        except ProvisionError as exc:
            err = lost_machines_error(exc, Vagrant(ws.root, spec.provider), stage.name)
            state.mark(stage.name, "failed", time.monotonic() - t0, message=err.message)
            if err is exc:
                raise
            raise err from exc
        state.mark(stage.name, "done", time.monotonic() - t0, changed=run.changed)
    return 0


def reset(ws: Workspace, verbose: bool, out: TextIO = sys.stdout) -> int:
    spec = ws.saved_spec()
    playbook = REPO_ROOT / "playbooks" / "reset.yml"
    if spec.engine != "kubernetes":
        raise ProvisionError("reset is for the kubernetes engine; for swarm use `destroy` and `up`", exit_code=2)
    if not playbook.exists():
        raise ProvisionError("playbooks/reset.yml is missing from this checkout")
    run_playbook(
        playbook,
        ws.inventory,
        ws.root,
        ws.logs / "reset.log",
        Progress(out, verbose=verbose),
        "reset (kubeadm reset)",
        extra_vars={"kube_reset_confirm": True},  # the playbook refuses to run without it
    )
    state = State.load(ws.state_file)
    for stage in ("control_plane", "cni", "join", "addons"):
        state.stages.pop(stage, None)
    state.fingerprint = ""
    state.save()
    return 0
