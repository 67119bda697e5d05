"""`provision.py up`: the pipeline of DESIGN.md (spec, host, bundle, machines, inventory, stages, verify)."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from provisioner import REPO_ROOT, identity, inventory, machines, preflight, stages
from provisioner.ansible import StageRun, forget_facts, run_playbook
from provisioner.command.verify import run_verify
from provisioner.errors import ProvisionError
from provisioner.kubesource import ensure_kube_bundle, kubernetes_blocker
from provisioner.preflight import check_stack
from provisioner.progress import Progress
from provisioner.spec import ClusterSpec, group_of
from provisioner.state import State
from provisioner.vagrant import Vagrant, parse_progress_line
from provisioner.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass
class UpOptions:
    overrides: dict[str, Any] = field(default_factory=dict)
    config: Path | None = None
    verify: bool = True
    verbose: bool = False
    stack: str | None = None
    prefer_speed: bool = False  # provider auto: the fastest provider (container nodes) over VMs
    converge: bool = False  # re-apply every stage even when nothing changed since the last converge
    shrink: bool = False  # remove the workers the spec no longer has, without asking
    until: str | None = None  # stop after this stage (its verify still runs); the next `up` goes on
    # The fingerprint of a package repository signing key to accept in this run (a rotated key).
    accept_repo_key: str = ""


def up(ws: Workspace, opts: UpOptions, out: TextIO = sys.stdout, inp: TextIO = sys.stdin) -> int:
    """The pipeline of DESIGN.md: spec, host (images or boxes), bundle, machines, inventory, stages,
    verify."""
    started = time.monotonic()
    progress = Progress(out, verbose=opts.verbose)
    timings: dict[str, float] = {}
    spec, inputs = _spec_for_up(ws, opts, out)
    unfinished_upgrade(State.load(ws.state_file))
    provider = machines.for_name(spec.provider)
    cluster_id = ws.cluster_id() or identity.new_id()
    leaving = _leaving_nodes(ws, spec, opts, out, inp)
    spec, vagrant_extra = provider.prepare_host(spec, inputs, progress, timings, out)
    spec, kube_bundle = ensure_kube_bundle(spec, out, opts.verbose)
    spec = provider.preload(spec, inputs, kube_bundle, progress, timings)
    vagrant_extra |= provider.mount_bundle(kube_bundle) | {"cluster_id": cluster_id, "state_dir": str(ws.root)}

    state = State.load(ws.state_file)
    previous_run = state.last_run
    if leaving:
        _remove_nodes(ws, leaving, progress, timings, opts.verbose, out)
    ws.save_spec(spec, inputs, vagrant_extra)
    vg = Vagrant(ws.root, spec.provider)
    # A rerun whose docker machines all run as the last inventory says: no Vagrant call at all.
    running = vg.running_docker_machines([n.name for n in spec.nodes], ws.inventory) if not leaving else None
    new_nodes = _machines_stage(ws, spec, provider, vg, state, progress, timings, started, running is not None)

    ssh = running or vg.ssh_config([n.name for n in spec.nodes])
    inventory.write_inventory(inventory.build_inventory(spec, ssh, ws.root, kube_bundle), ws.inventory)
    out.write(f"    inventory: {ws.inventory}\n")
    # The cluster as it was before the new nodes, as a converge would see it: when that is what the
    # last converge saw, only the new workers need the stages (see _growth).
    old = [n.name for n in spec.nodes if n.name not in new_nodes]
    grown_from = (
        converge_fingerprint(
            ws,
            spec.with_nodes(old),
            inventory.render_inventory(
                inventory.build_inventory(
                    spec.with_nodes(old), {k: v for k, v in ssh.items() if k in old}, ws.root, kube_bundle
                )
            ).encode(),
        )
        if new_nodes and old
        else ""
    )

    runs: dict[str, StageRun] = {}
    rc = _stages_and_verify(
        ws, spec, opts, vg, state, previous_run, new_nodes, grown_from, progress, timings, runs, started, out
    )
    if spec.stack:
        t0 = time.monotonic()
        deploy_stack(ws, spec, progress, opts.verbose)
        timings["stack"] = time.monotonic() - t0
    total = time.monotonic() - started
    _write_timings(ws, timings, runs, total)
    summary(spec, timings, runs, total, out)
    if kubernetes_blocker(spec):
        out.write("\nNOTE: the Kubernetes stages did not run (the reason is above)\n")
    return rc


def unfinished_upgrade(state: State) -> None:
    """Refuse `up` on a cluster half-way between two releases: its inventory still names the old one,
    so a converge would put the old kubelet back on the nodes the upgrade already moved."""
    rec = state.stages.get("upgrade")
    if rec is not None and rec.status == "failed":
        target = rec.message.split(":", 1)[0].removeprefix("to ").strip()
        raise ProvisionError(
            f"an upgrade of this cluster to {target} stopped part-way; finish it first with "
            f"`provision.py upgrade --kube-version {target}` (it resumes at the node it stopped on), then `up`",
            exit_code=2,
        )


def _spec_for_up(ws: Workspace, opts: UpOptions, out: TextIO) -> tuple[ClusterSpec, dict[str, Any]]:
    """The validated spec with its provider decided; refused before anything is created."""
    checked = preflight.checked_spec(ws, opts.overrides, opts.config, opts.prefer_speed)
    if opts.until is not None:
        stages.select(checked.spec.engine, only=opts.until)  # an unknown stage is refused here
    if opts.accept_repo_key:
        _check_repo_key_use(checked.spec)
    for source in checked.sources:
        out.write(f"source: {source}\n")
    for note in checked.notes:
        out.write(f"note: {note}\n")
    if checked.provider_reason:
        out.write(f"provider: {checked.spec.provider} ({checked.provider_reason})\n")
    return checked.spec, checked.inputs


def _check_repo_key_use(spec: ClusterSpec) -> None:
    """--accept-repo-key only means something where kube_packages installs from a package repository;
    elsewhere it is refused, so that nobody believes a key was accepted when none was read. `spec` has
    its kube_source decided (provisioner.sources), so this is known before anything is made."""
    why = ""
    if spec.engine != "kubernetes":
        why = f"a {spec.engine} cluster installs no Kubernetes packages"
    elif spec.kube_source == "bundle":
        why = "this cluster installs Kubernetes from the offline bundle, which has no signing key"
    if why:
        raise ProvisionError(
            f"--accept-repo-key is for clusters that install Kubernetes from pkgs.k8s.io or a package mirror, and "
            f"{why}: run `up` without it",
            exit_code=2,
        )


def _leaving_nodes(ws: Workspace, spec: ClusterSpec, opts: UpOptions, out: TextIO, inp: TextIO) -> list[str]:
    """The saved cluster's nodes that the new spec no longer has (shrinking), confirmed: workers
    only; asked in a terminal, else `--shrink` says yes. Refused before anything changes."""
    saved = ws.load_saved()
    if saved is None:
        return []
    old = ClusterSpec.from_dict(saved["spec"])
    keep = {n.name for n in spec.nodes}
    leaving = [n for n in old.nodes if n.name not in keep]
    if not leaving:
        return []
    names = [n.name for n in leaving]
    held = [n for n in leaving if group_of(old.engine, n.role) in ("kube_control_plane", "swarm_manager")]
    if held:
        what = "control-plane node" if old.engine == "kubernetes" else "manager"
        raise ProvisionError(
            f"the spec drops {', '.join(n.name for n in held)}, a {what} (it holds the cluster's "
            f"{'etcd member' if old.engine == 'kubernetes' else 'Raft vote'}); only workers can be removed: keep "
            f"{'the control plane' if old.engine == 'kubernetes' else '--managers'} as it is, or `destroy -f` and `up`",
            exit_code=2,
        )
    what = (
        "drained, deleted from Kubernetes and reset"
        if old.engine == "kubernetes"
        else "drained and removed from the swarm"
    )
    plan_line = (
        f"{len(old.nodes)} -> {len(spec.nodes)} nodes: {', '.join(names)} will be {what}, and the machines destroyed"
    )
    if opts.shrink:
        out.write(f"shrinking {plan_line}\n")
        return names
    if not inp.isatty():
        raise ProvisionError(
            f"shrinking {plan_line}; pass --shrink to confirm (or go back to {len(old.nodes)} nodes)",
            exit_code=2,
        )
    out.write(f"Shrink the cluster {plan_line}? [y/N] ")
    out.flush()
    if inp.readline().strip().lower() not in ("y", "yes"):
        raise ProvisionError(f"not shrinking; go back to {len(old.nodes)} nodes or confirm", exit_code=1)
    return names


def _remove_nodes(
    ws: Workspace, names: list[str], progress: Progress, timings: dict[str, float], verbose: bool, out: TextIO
) -> None:
    """Take the leaving workers out of the engine (playbooks/remove_nodes.yml on the inventory that
    still lists them), then destroy their machines. Runs while cluster.json still holds the old spec,
    so an interrupted removal is done again by the next `up`."""
    old = ws.saved_spec()
    vg = Vagrant(ws.root, old.provider)
    present = {m.name: m.state for m in vg.status()} if (ws.root / "vagrant").exists() else {}
    lead = next(n.name for n in old.nodes if group_of(old.engine, n.role) in ("kube_control_plane", "swarm_manager"))
    made = [n for n in names if present.get(n, "not_created") != "not_created"]
    engine_formed = ws.inventory.exists() and present.get(lead, "not_created") != "not_created"
    if engine_formed and present.get(lead) != "running":
        # Without it nothing can drain the workers or take them out of the cluster, and destroying
        # their machines would leave them behind as NotReady / Down nodes.
        raise ProvisionError(
            f"{lead} is {present.get(lead, 'not created').replace('_', ' ')}, and the cluster forgets leaving nodes "
            f"through it; start it (`up` with the current node count) before shrinking",
            exit_code=2,
        )
    t0 = time.monotonic()
    if engine_formed:
        # The inventory of the cluster as it still is (every node, this toolkit's current connection
        # settings), beside the stages' own, which the new spec rewrites next.
        alive = [n.name for n in old.nodes if present.get(n.name) == "running"]
        leaving_inventory = inventory.write_inventory(
            inventory.build_inventory(old.with_nodes(alive), vg.ssh_config(alive), ws.root),
            ws.inventory.with_name("leaving.yml"),
        )
        run_playbook(
            stages.PLAYBOOKS / "remove_nodes.yml",
            leaving_inventory,
            ws.root,
            ws.logs / "remove_nodes.log",
            progress,
            f"remove {', '.join(names)} from the {old.engine}",
            extra_vars={"cluster_leave_nodes": names},
            verbose=verbose,
        )
    if made:
        progress.start(f"destroy the machines of {', '.join(made)}")
        vg.destroy(ws.logs / "remove_machines.log", nodes=made)
        progress.stop("done")
    timings["shrink"] = time.monotonic() - t0
    out.write(f"    removed {', '.join(names)}\n")


def _machines_stage(
    ws: Workspace,
    spec: ClusterSpec,
    provider: machines.Provider,
    vg: Vagrant,
    state: State,
    progress: Progress,
    timings: dict[str, float],
    started: float,
    all_running: bool = False,
) -> list[str]:
    """`vagrant up` of the machines that are not running; returns their names. `all_running`: the
    caller saw every machine running (Vagrant.running_docker_machines), so Vagrant is not asked."""
    if all_running:
        before = {n.name: "running" for n in spec.nodes}
    else:
        before = {m.name: m.state for m in vg.status()} if (ws.root / "vagrant").exists() else {}
    new_nodes = [n.name for n in spec.nodes if before.get(n.name) != "running"]
    provider.keys(ws.root, spec, before)
    progress.start(f"machines ({spec.provider}, {len(spec.nodes)} nodes)", _vagrant_detail_tracker(progress))
    state.provider = spec.provider
    state.last_run = "running"
    state.save()
    try:
        # `vagrant up` on machines that are all running does nothing but cost seconds of Vagrant's
        # start-up: the status read above already says so.
        if new_nodes:
            vg.up([n.name for n in spec.nodes], ws.logs / "machines.log", on_line=_on_vagrant_line)
    except ProvisionError as exc:
        progress.stop("FAILED")
        state.mark("machines", "failed", time.monotonic() - started)
        state.last_run = "failed"
        state.save()
        if exc.exit_code != 1:
            raise
        # A failed stage exits 4, as the README says; the machines stage is one.
        raise ProvisionError(exc.message, exit_code=4, log_path=exc.log_path, hosts=exc.hosts) from exc
    timings["machines"] = progress.stop(machines_result(new_nodes, before))
    state.mark("machines", "done", timings["machines"])
    return new_nodes


def machines_result(new_nodes: list[str], before: dict[str, str]) -> str:
    """What the machines stage did: the machines it created, and the ones it started again."""
    if not new_nodes:
        return "up, all running"
    created = [n for n in new_nodes if before.get(n, "not_created") == "not_created"]
    started = [n for n in new_nodes if n not in created]
    parts = ([f"created {', '.join(created)}"] if created else []) + (
        [f"started {', '.join(started)}"] if started else []
    )
    return "up, " + "; ".join(parts)


def _stages_and_verify(
    ws: Workspace,
    spec: ClusterSpec,
    opts: UpOptions,
    vg: Vagrant,
    state: State,
    previous_run: str,
    new_nodes: list[str],
    grown_from: str,
    progress: Progress,
    timings: dict[str, float],
    runs: dict[str, StageRun],
    started: float,
    out: TextIO,
) -> int:
    """Converge the stages (or only verify when nothing changed since the last converge), then verify."""
    todo = stages.stages_for(spec.engine)
    failed = state.failed_stage()
    fingerprint = converge_fingerprint(ws, spec)
    skip_reason = kubernetes_blocker(spec)
    rc = 0
    unchanged = (
        opts.verify
        and not opts.converge
        and not opts.accept_repo_key  # the key is read by kube_packages: the stages run
        and opts.until is None
        and not new_nodes
        and failed is None
        and previous_run == "done"
        and state.last_verify == "passed"
        and state.fingerprint == fingerprint
    )
    if unchanged:
        out.write(
            "==> stages: nothing changed since the last converge (same roles, playbooks, inventory and "
            "machines): verify checks the nodes instead of re-applying (`up --converge` re-applies)\n"
        )
        t0 = time.monotonic()
        try:
            rc = run_verify(ws, spec, state, out)
        except ProvisionError as exc:
            if exc.exit_code != 5:
                raise
            out.write(f"    the nodes drifted from what the roles set ({exc.message}): converging every stage\n")
            unchanged = False
        timings["verify"] = time.monotonic() - t0
    if unchanged:
        state.last_run = "done"
        state.save()
        return rc
    # --until first, on the whole pipeline: a failure past that stage is not resumed in this run.
    stopped = ""
    if opts.until is not None:
        names = [s.name for s in todo]
        stopped = opts.until if names[-1] != opts.until else ""
        todo = todo[: names.index(opts.until) + 1]
    growth = _growth(spec, opts, state, previous_run, new_nodes, grown_from, todo)
    if growth:
        out.write(
            f"    new workers ({', '.join(new_nodes)}) on a cluster unchanged since its last converge: "
            "they get every stage; the other nodes only prepare (their hosts files list the new ones) and the "
            "control planes join's token and checks; control_plane and cni have nothing to do\n"
        )
    elif new_nodes and any(state.done(s.name) for s in todo):
        out.write(f"    new or recreated nodes ({', '.join(new_nodes)}): every stage runs again\n")
    elif failed is not None and failed in [s.name for s in todo]:
        out.write(f"    resuming at stage {failed}, which failed last time: {state.stages[failed].message}\n")
        names = [s.name for s in todo]
        todo = todo[names.index(failed) :]
    state.fingerprint = ""  # until every stage has converged again
    forget_facts(ws.root)
    said = False
    for stage in todo:
        if stage.kubernetes and skip_reason:
            # The reason once; the other Kubernetes stages point back to it.
            out.write(f"==> {stage.name}: not run" + (" (the reason above)\n" if said else f": {skip_reason}\n"))
            said = True
            state.mark(stage.name, "skipped", 0.0, message=skip_reason)
            continue
        limit = None
        if growth:
            if stage.on_growth == "none":
                out.write(f"==> stage {stage.name} ({stage.description}): nothing to do for new workers\n")
                continue
            if stage.on_growth != "all":
                leads = (
                    [n.name for n in spec.nodes if n.role == "control_plane"] if stage.on_growth == "new+leads" else []
                )
                limit = ",".join(new_nodes + leads)
        t0 = time.monotonic()
        try:
            runs[stage.name] = run_playbook(
                stage.path,
                ws.inventory,
                ws.root,
                ws.logs / f"{stage.name}.log",
                progress,
                f"stage {stage.name} ({stage.description})" + (f" on {limit}" if limit else ""),
                verbose=opts.verbose,
                limit=limit,
                extra_vars=_stage_vars(stage.name, [s.name for s in todo], growth, spec, new_nodes, opts),
            )
        except ProvisionError as exc:
            err = lost_machines_error(exc, vg, stage.name)
            state.mark(stage.name, "failed", time.monotonic() - t0, message=err.message)
            state.last_run = "failed"
            state.save()
            _write_timings(ws, timings, runs, time.monotonic() - started)
            if err is exc:
                raise
            raise err from exc
        timings[stage.name] = time.monotonic() - t0
        state.mark(stage.name, "done", timings[stage.name], changed=runs[stage.name].changed)
    if stopped:
        # Not a whole converge: the next `up` runs every stage again and no rerun takes it as settled.
        out.write(f"==> stopped after stage {stopped} (--until); `up` without --until goes on from there\n")
        state.last_run = "stopped"
    else:
        state.last_run = "done"
        state.fingerprint = fingerprint
    state.save()
    if opts.verify:
        t0 = time.monotonic()
        rc = run_verify(ws, spec, state, out)
        timings["verify"] = timings.get("verify", 0.0) + time.monotonic() - t0
    return rc


# What a converge applies besides the inventory: the playbooks, the roles and the plugins they use.
CONVERGE_INPUTS = ("ansible.cfg", "playbooks", "roles", "filter_plugins")


def _stage_vars(
    stage: str, todo: list[str], growth: bool, spec: ClusterSpec, new_nodes: list[str], opts: UpOptions
) -> dict[str, Any] | None:
    """Extra variables of one stage's playbook in this run."""
    if stage == "kube_packages" and opts.accept_repo_key:
        return {"kube_packages_repo_key_fingerprint": opts.accept_repo_key}
    if stage == "cni" and "join" in todo:
        # join, later in this run, waits for calico-node on every node (playbooks/cni.yml).
        return {"calico_wait_for_nodes": False}
    if stage == "prepare" and growth:
        # The nodes the cluster had need only the new ones in their hosts file.
        return {"node_prep_hosts_file_only_on": [n.name for n in spec.nodes if n.name not in new_nodes]}
    return None


def _growth(
    spec: ClusterSpec,
    opts: UpOptions,
    state: State,
    previous_run: str,
    new_nodes: list[str],
    grown_from: str,
    todo: list[stages.Stage],
) -> bool:
    """Whether this run only adds workers to a Kubernetes cluster that is as its last converge left it
    (same Ansible content, inventory and machines for the nodes it had, every stage done, verify
    passed): then the stages run on the new workers only, except where Stage.on_growth says otherwise."""
    roles = {n.name: n.role for n in spec.nodes}
    return (
        spec.engine == "kubernetes"
        and bool(new_nodes)
        and bool(grown_from)
        and grown_from == state.fingerprint
        and not opts.converge
        and not opts.accept_repo_key  # the key is read by kube_packages: the stages run
        and opts.until is None
        and previous_run == "done"
        and state.last_verify == "passed"
        and state.failed_stage() is None
        and all(state.done(s.name) for s in todo)
        and all(roles.get(n) == "worker" for n in new_nodes)
    )


def converge_fingerprint(ws: Workspace, spec: ClusterSpec, inventory_text: bytes | None = None) -> str:
    """Digest of everything a converge of this cluster depends on: the project's Ansible content (the
    roles' Molecule scenarios aside), the generated inventory (spec, variables, addresses) and the
    identity of each machine (a recreated machine has a new one)."""
    digest = hashlib.sha256()
    files: list[Path] = []
    for name in CONVERGE_INPUTS:
        top = REPO_ROOT / name
        files += [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
    for path in files:
        rel = path.relative_to(REPO_ROOT)
        if "molecule" in rel.parts or "__pycache__" in rel.parts:
            continue
        digest.update(str(rel).encode() + b"\0" + path.read_bytes() + b"\0")
    if inventory_text is None:
        inventory_text = ws.inventory.read_bytes() if ws.inventory.exists() else b""
    digest.update(inventory_text)
    for node in spec.nodes:
        ident = ws.root / "vagrant" / "machines" / node.name / spec.provider / "id"
        digest.update(node.name.encode() + b"=" + (ident.read_bytes() if ident.exists() else b"?") + b"\0")
    return digest.hexdigest()


def lost_machines_error(exc: ProvisionError, vg: Vagrant, stage: str) -> ProvisionError:
    """A stage failed on some hosts: when their machines are no longer running (stopped or removed
    outside the tool during the run), say so instead of the Ansible symptom, which varies with the
    moment the machine went away (unreachable, a module that "failed to execute", a broken pipe)."""
    if not exc.hosts:
        return exc
    try:
        states = {m.name: m.state for m in vg.status()}
    except ProvisionError:
        return exc
    lost = [(h, states.get(h, "not_created")) for h in exc.hosts if states.get(h, "not_created") != "running"]
    if not lost:
        return exc
    names = ", ".join(f"{h} (now {st.replace('_', ' ')})" for h, st in lost)
    noun = "node" if len(lost) == 1 else "nodes"
    return ProvisionError(
        f"stage {stage}: {noun} {names} stopped or vanished during the run and became unreachable; "
        f"run `up` again: it starts or recreates the machine and resumes at this stage",
        exit_code=exc.exit_code,
        log_path=exc.log_path,
        hosts=tuple(h for h, _ in lost),
    )


def deploy_stack(ws: Workspace, spec: ClusterSpec, progress: Progress, verbose: bool) -> StageRun:
    """`docker stack deploy` of the spec's compose file on the first manager (the swarm role's stack tasks)."""
    stack = check_stack(spec)
    assert stack is not None
    return run_playbook(
        stages.PLAYBOOKS / "swarm.yml",
        ws.inventory,
        ws.root,
        ws.logs / "stack.log",
        progress,
        f"stack {stack.name} (docker stack deploy)",
        extra_vars={"swarm_stack_file": str(stack)},
        tags="swarm_stack",
        verbose=verbose,
    )


_vagrant_status: dict[str, str] = {}


def _on_vagrant_line(line: str) -> None:
    parsed = parse_progress_line(line)
    if parsed:
        _vagrant_status[parsed[0]] = parsed[1][:60]


def _vagrant_detail_tracker(progress: Progress) -> Any:
    _vagrant_status.clear()
    return lambda: " | ".join(f"{n}: {m}" for n, m in sorted(_vagrant_status.items()))


def _write_timings(ws: Workspace, timings: dict[str, float], runs: dict[str, StageRun], total: float) -> None:
    data = {
        "total_seconds": round(total, 2),
        "stages": {k: round(v, 2) for k, v in timings.items()},
        "slowest_tasks": {
            name: [{"seconds": round(s, 2), "host": h, "task": t} for s, h, t in run.slowest(5)]
            for name, run in runs.items()
        },
        "changed": {name: run.changed for name, run in runs.items()},
    }
    ws.root.mkdir(parents=True, exist_ok=True)
    ws.timings.write_text(json.dumps(data, indent=2), encoding="utf-8")


def summary(spec: ClusterSpec, timings: dict[str, float], runs: dict[str, StageRun], total: float, out: TextIO) -> None:
    out.write(f"\nCluster '{spec.name}' ({spec.engine} on {spec.provider}) is up:\n")
    out.write(f"  {'node':<14}{'role':<15}ip\n")
    for n in spec.nodes:
        out.write(f"  {n.name:<14}{n.role:<15}{n.ip}\n")
    out.write("Stage times:\n")
    for name, secs in timings.items():
        changed = f"  changed={runs[name].changed}" if name in runs else ""
        out.write(f"  {name:<15}{secs:7.1f}s{changed}\n")
    slow = sorted((t for r in runs.values() for t in r.slowest(3)), reverse=True)[:3]
    if slow:
        out.write("Slowest tasks:\n")
        for secs, host, task in slow:
            out.write(f"  {secs:6.1f}s  {host:<12} {task}\n")
    out.write(f"Total {total:.1f}s\n")
