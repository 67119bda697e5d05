"""`provision.py upgrade --kube-version X`: move a running Kubernetes cluster one release step.

Python decides and prepares (the cluster exists and formed, the step is one the version skew policy
allows; from the bundle, the target's bundle is built; from pkgs.k8s.io, verify's smoke-test image of
the target is made), playbooks/upgrade.yml does the work node by node (the same
playbook an operator runs with ansible-playbook), and only when it finished do the spec, the inventory
and the state name the new release; verify then checks the cluster as `up` does.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TextIO

from provisioner import REPO_ROOT, bundle, inventory
from provisioner.ansible import StageRun, forget_facts, run_playbook
from provisioner.command.up import lost_machines_error
from provisioner.command.verify import run_verify
from provisioner.errors import ProvisionError
from provisioner.kube import upgrade as rules
from provisioner.kubesource import ensure_bundle, ensure_smoke_archive, kube_source_choice, kubernetes_blocker
from provisioner.progress import Progress
from provisioner.spec import ClusterSpec
from provisioner.state import State
from provisioner.vagrant import Vagrant
from provisioner.workspace import Workspace

PLAYBOOK = REPO_ROOT / "playbooks" / "upgrade.yml"
STAGE = "upgrade"


def check_cluster(ws: Workspace, spec: ClusterSpec, state: State) -> None:
    """Refuse, before anything changes, a cluster the upgrade cannot start from."""
    if spec.engine != "kubernetes":
        raise ProvisionError("upgrade is for the kubernetes engine; a swarm's nodes are upgraded with their packages")
    blocker = kubernetes_blocker(spec)
    if blocker:
        raise ProvisionError(f"this cluster's Kubernetes stages cannot run here: {blocker}", exit_code=2)
    if not ws.inventory.exists() or not state.done("join"):
        raise ProvisionError(
            "this cluster has not formed yet (its join stage is not done); run `provision.py up` until it is, "
            "then upgrade",
            exit_code=2,
        )


CHECK_PLAY = "Upgrade | checks"


def only_checks_ran(events: Path) -> bool:
    """Whether a failed run of playbooks/upgrade.yml stopped in its first play, the checks, which change
    nothing (from the run's events, callback_plugins/provision_events)."""
    try:
        lines = events.read_text(encoding="utf-8").splitlines()
    except OSError:
        return False
    plays = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "play":
            plays.append(str(event.get("name", "")))
    return bool(plays) and all(name.startswith(CHECK_PLAY) for name in plays)


def target_versions(spec: ClusterSpec, wanted: str, source: str) -> tuple[str, str]:
    """The target release and the step ('none', 'patch' or 'minor'), refused with one sentence when the
    step is not allowed, or, from the bundle, when the bundle does not know the release. From
    pkgs.k8s.io the release is named in full (the role checks that the repository carries it)."""
    if source == "bundle":
        target = bundle.resolve_versions(wanted, spec.versions["calico"]).kubernetes
    else:
        try:
            target = ".".join(map(str, rules.parse_release(wanted)))
        except ProvisionError:
            raise ProvisionError(
                f"--kube-version {wanted}: this cluster upgrades from pkgs.k8s.io, so name the release in full "
                "(major.minor.patch, e.g. 1.37.2)",
                exit_code=2,
            ) from None
    try:
        step = rules.upgrade_step(spec.versions["kubernetes"], target)
    except ProvisionError as exc:
        raise ProvisionError(exc.message, exit_code=2) from None
    return target, step


def upgrade(ws: Workspace, wanted: str, verbose: bool = False, out: TextIO = sys.stdout) -> int:

    started = time.monotonic()
    spec = ws.saved_spec()
    state = State.load(ws.state_file)
    check_cluster(ws, spec, state)
    current = spec.versions["kubernetes"]
    source, why = kube_source_choice(spec)
    target, step = target_versions(spec, wanted, source)
    if step == "none":
        out.write(f"==> the cluster's spec says Kubernetes {current}: checking that every node runs it\n")
    else:
        out.write(f"==> upgrade: Kubernetes {current} -> {target} (a {step} step), one node at a time\n")
    snapshots = ws.root / "etcd-snapshots"
    snapshots.mkdir(exist_ok=True)
    extra: dict[str, str] = {
        "kube_upgrade_version": target,
        "kube_upgrade_source": source,
        "kube_upgrade_snapshot_dest": str(snapshots),
    }
    found: bundle.Bundle | None = None
    if source == "bundle":
        found = ensure_bundle(spec, bundle.resolve_versions(target, spec.versions["calico"]), out, verbose)
        out.write(f"    bundle: {found.path}\n")
        extra["kube_upgrade_bundle_dir"] = str(found.path)
        if spec.provider in inventory.BUNDLE_SHARED:
            extra["kube_upgrade_bundle_node_dir"] = f"{inventory.BUNDLES_NODE_DIR}/{found.path.name}"
    else:
        out.write(f"    packages from pkgs.k8s.io ({why}), images through the nodes' registries\n")
        smoke = inventory.smoke_vars(target, None)
        ensure_smoke_archive(target, out)
        extra["kube_upgrade_smoke_image"] = smoke["kube_smoke_image"]
        extra["kube_upgrade_smoke_image_archive"] = smoke["kube_smoke_image_archive"]
    forget_facts(ws.root)
    progress = Progress(out, verbose=verbose)
    t0 = time.monotonic()
    try:
        run: StageRun = run_playbook(
            PLAYBOOK,
            ws.inventory,
            ws.root,
            ws.logs / "upgrade.log",
            progress,
            f"upgrade to {target} (checks, images, etcd snapshot, then node by node)",
            verbose=verbose,
            extra_vars=extra,
        )
    except ProvisionError as exc:
        resume = f"run `provision.py upgrade --kube-version {target}` again to resume at that node"
        exc.message = exc.message.replace("run `up` again to resume here", resume)
        exc.args = (exc.message,)
        err = lost_machines_error(exc, Vagrant(ws.root, spec.provider), STAGE)
        if only_checks_ran(ws.logs / "upgrade.events.jsonl"):
            # Refused by the checks: the cluster is as it was, and `up` may go on converging it.
            out.write("    the upgrade's checks refused it and nothing was changed\n")
        else:
            # `up` refuses to converge a cluster half-way between two releases (see up.unfinished_upgrade).
            state.mark(STAGE, "failed", time.monotonic() - t0, message=f"to {target}: {err.message}")
            state.save()
            out.write(
                f"    the upgrade stopped; `provision.py upgrade --kube-version {target}` resumes at the "
                "node it stopped on\n"
            )
        if err is exc:
            raise
        raise err from exc
    took = time.monotonic() - t0
    state.mark(STAGE, "done", took, changed=run.changed)
    # From here on the cluster is at the target: the spec, its inputs and the inventory say so, so that
    # `up` and verify work from the target's bundle (or packages).
    saved = ws.load_saved() or {}
    inputs = dict(saved.get("inputs") or {})
    inputs["versions"] = {**(inputs.get("versions") or {}), "kubernetes": target}
    data = spec.to_dict()
    data["versions"] = dict(spec.versions, kubernetes=target)
    new_spec = ClusterSpec.from_dict(data)
    keep = {k: v for k, v in saved.items() if k not in ("spec", "inputs", *data)}
    ws.save_spec(new_spec, inputs, keep)
    vg = Vagrant(ws.root, new_spec.provider)
    names = [n.name for n in new_spec.nodes]
    ssh = vg.running_docker_machines(names, ws.inventory) or vg.ssh_config(names)
    inventory.write_inventory(
        inventory.build_inventory(new_spec, ssh, ws.root, found.path if found else None), ws.inventory
    )
    state.fingerprint = ""  # the next `up` converges every stage against the new release
    state.save()
    snapshot = snapshots / f"etcd-before-v{target}.db"
    out.write(f"    upgrade: {took:.0f} s, {run.summary_line()}\n")
    if snapshot.exists():
        out.write(f"    etcd snapshot from before the upgrade: {snapshot} (README: Upgrade, to roll back)\n")
    rc = run_verify(ws, new_spec, state, out)
    out.write(f"==> Kubernetes {target} in {time.monotonic() - started:.0f} s\n")
    return rc
