"""The commands behind the CLI. Each stays thin and calls the collaborators: spec, state, Vagrant,
inventory, Ansible runner, verifier."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from provisioner import box, hostnet, identity, image, inventory, libvirt, machines, providers, stages, verify
from provisioner.ansible import StageRun, forget_facts, run_playbook
from provisioner.errors import ProvisionError
from provisioner.progress import Progress
from provisioner.spec import DEFAULT_SWARM_POOL, SWARM_POOL_MASK, ClusterSpec, build_spec, group_of
from provisioner.state import State
from provisioner.vagrant import Vagrant, parse_progress_line

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent


def default_provision_dir() -> Path:
    return Path(os.environ.get("PROVISION_DIR") or REPO_ROOT / ".provision").resolve()


@dataclass
class Workspace:
    """Everything a cluster keeps on the host, under one directory (default .provision/)."""

    root: Path

    @property
    def spec_file(self) -> Path:
        return self.root / "cluster.json"

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def inventory(self) -> Path:
        return self.root / "inventory" / "hosts.yml"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def timings(self) -> Path:
        return self.root / "timings.json"

    def load_saved(self) -> dict[str, Any] | None:
        if not self.spec_file.exists():
            return None
        try:
            data: dict[str, Any] = json.loads(self.spec_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ProvisionError(f"{self.spec_file} is unreadable ({exc}); run `destroy -f` and `up` again") from exc
        return data

    @contextlib.contextmanager
    def lock(self, command: str) -> Iterator[None]:
        """One changing command at a time per state directory: a second `up` while one runs would
        overwrite the other's state. The lock file lives outside the state directory (a refused first
        `up` leaves no directory behind), keyed by its path."""
        locks = Path(tempfile.gettempdir()) / "provisioner-locks"
        locks.mkdir(mode=0o700, exist_ok=True)
        path = locks / (hashlib.sha256(str(self.root).encode()).hexdigest()[:16] + ".lock")
        with open(path, "a+", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another command"
                raise ProvisionError(
                    f"{holder} is already working on the cluster in {self.root}; wait for it to finish "
                    f"(or stop it: a rerun resumes where it left off)",
                    exit_code=2,
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"`provision.py {command}` (pid {os.getpid()})")
            handle.flush()
            try:
                yield
            finally:
                handle.truncate(0)
                fcntl.flock(handle, fcntl.LOCK_UN)

    def cluster_id(self) -> str:
        """The identity made when this cluster was first created ("" before that, or for a cluster
        made before identities existed)."""
        saved = self.load_saved()
        return str(saved.get("cluster_id", "")) if saved else ""

    def saved_spec(self) -> ClusterSpec:
        data = self.load_saved()
        if data is None:
            raise ProvisionError(f"no cluster here ({self.spec_file} missing); create one with `provision.py up`")
        return ClusterSpec.from_dict(data["spec"])

    def save_spec(self, spec: ClusterSpec, inputs: dict[str, Any], vagrant_extra: dict[str, Any] | None = None) -> None:
        """`vagrant_extra`: settings only the Vagrantfile reads (e.g. libvirt_driver), kept beside the spec."""
        self.root.mkdir(parents=True, exist_ok=True)
        payload = spec.to_dict() | (vagrant_extra or {}) | {"spec": spec.to_dict(), "inputs": inputs}
        tmp = self.spec_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True), encoding="utf-8")
        tmp.replace(self.spec_file)


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


def resolve_spec(ws: Workspace, overrides: dict[str, Any], config: Path | None) -> tuple[ClusterSpec, dict[str, Any]]:
    """Defaults < the saved inputs of an existing cluster < the spec file < the flags."""
    from provisioner.spec import check_engine_fields, load_file

    saved = ws.load_saved()
    inputs: dict[str, Any] = dict(saved.get("inputs", {})) if saved else {}
    given: dict[str, Any] = load_file(config) if config is not None else {}
    given.update({k: v for k, v in overrides.items() if v is not None})
    inputs.update(given)
    spec = build_spec(inputs)
    # Only what this run gave: a stored value the user cannot drop with a flag is not refused again.
    check_engine_fields(spec.engine, set(given))
    return spec, inputs


def check_networks(spec: ClusterSpec) -> list[str]:
    """Refuse the spec's ranges that overlap the host's networks: the node network, and the ranges of
    the engine (pod and service CIDRs for kubernetes, the overlay address pool for swarm). Returns
    notes to print: Docker's default swarm pool overlapping a host network is only warned about."""
    host = hostnet.host_networks()
    named = {"network": spec.network}
    if spec.engine == "kubernetes":
        named |= {"pod_cidr": spec.pod_cidr, "service_cidr": spec.service_cidr}
    hostnet.check_against_host(named, host, own_node_network=spec.network)
    if spec.engine != "swarm":
        return []
    chosen = spec.swarm_address_pool != DEFAULT_SWARM_POOL
    note = hostnet.check_swarm_pool(spec.swarm_address_pool, chosen, spec.network, host)
    return [note] if note else []


def plan(ws: Workspace, opts: UpOptions, out: TextIO = sys.stdout) -> int:
    spec, _ = resolve_spec(ws, opts.overrides, opts.config)
    notes = check_networks(spec)
    choice = providers.choose(spec.provider, opts.prefer_speed) if spec.provider == "auto" else None
    provider = f"{choice.provider} (auto: {choice.reason})" if choice else spec.provider
    if (choice.provider if choice else spec.provider) == "libvirt":
        kind, why = libvirt.domain_type()
        provider += f"; domain type {kind}: {why}"
    chosen = choice.provider if choice else spec.provider
    # The same refusal as `up`: a name, machine name or node network another cluster holds.
    machines.for_name(chosen).check_clear(spec.with_provider(chosen), ws.root, ws.cluster_id())
    out.write(f"cluster      {spec.name}\n")
    out.write(f"engine       {spec.engine}\n")
    out.write(f"provider     {provider}\n")
    out.write(f"resources    {spec.cpus} CPUs, {spec.memory} MiB per node\n")
    out.write(f"runtime      {spec.runtime} (source: {spec.runtime_source})\n")
    out.write(f"versions     kubernetes {spec.versions['kubernetes']}, calico {spec.versions['calico']}\n")
    out.write(f"node network {spec.network}\n")
    if spec.engine == "swarm":
        default = " (Docker's default)" if spec.swarm_address_pool == DEFAULT_SWARM_POOL else ""
        out.write(f"swarm pool   {spec.swarm_address_pool}{default}, /{SWARM_POOL_MASK} overlay networks\n")
    else:
        out.write(f"pod CIDR     {spec.pod_cidr}\nservice CIDR {spec.service_cidr}\n")
    if spec.api_vip:
        out.write(
            f"API endpoint {spec.api_vip}:8443 (virtual IP held by one of {spec.control_planes} control planes, "
            f"keepalived + HAProxy; reserved on the node network)\n"
        )
    out.write("checks       CIDRs pairwise disjoint and clear of the host's networks\n")
    for note in notes:
        out.write(f"note         {note}\n")
    out.write("\n")
    out.write(f"{'node':<14}{'role':<15}{'group':<20}ip\n")
    for n in spec.nodes:
        out.write(f"{n.name:<14}{n.role:<15}{group_of(spec.engine, n.role):<20}{n.ip}\n")
    eng = [s.name for s in stages.stages_for(spec.engine)]
    saved = ws.load_saved()
    if saved is not None:
        keep = {n.name for n in spec.nodes}
        leaving = [n["name"] for n in saved["spec"]["nodes"] if n["name"] not in keep]
        if leaving:
            out.write(f"\nshrinking    {', '.join(leaving)} leave the cluster and their machines go (up --shrink)\n")
    out.write(f"\nstages       machines, {', '.join(eng)}, verify\n")
    if spec.engine == "kubernetes":
        from provisioner import kubenode

        blocker = kubernetes_blocker(spec.with_provider(chosen))
        source, why = kube_source_choice(spec.with_provider(chosen)) if not blocker else ("none", blocker)
        out.write(f"kubernetes   binaries and images: {source} ({why})\n")
        if chosen == "docker" and not blocker:
            v1 = host_cgroup_version() == 1
            out.write("container-node settings (the nodes are containers on this host's kernel):\n")
            out.write("\n".join(kubenode.plan_lines(v1)) + "\n")
    return 0


def up(ws: Workspace, opts: UpOptions, out: TextIO = sys.stdout, inp: TextIO = sys.stdin) -> int:
    """The pipeline of DESIGN.md: spec, host (images or boxes), bundle, machines, inventory, stages,
    verify."""
    started = time.monotonic()
    progress = Progress(out, verbose=opts.verbose)
    timings: dict[str, float] = {}
    spec, inputs = _spec_for_up(ws, opts, out)
    provider = machines.for_name(spec.provider)
    cluster_id = ws.cluster_id() or identity.new_id()
    provider.check_clear(spec, ws.root, cluster_id)
    leaving = _leaving_nodes(ws, spec, opts, out, inp)
    spec, vagrant_extra = provider.prepare_host(spec, inputs, progress, timings, out)
    spec, kube_bundle = ensure_kube_bundle(spec, out, opts.verbose)
    vagrant_extra |= provider.mount_bundle(kube_bundle) | {"cluster_id": cluster_id, "state_dir": str(ws.root)}

    state = State.load(ws.state_file)
    previous_run = state.last_run
    if leaving:
        _remove_nodes(ws, leaving, progress, timings, opts.verbose, out)
    ws.save_spec(spec, inputs, vagrant_extra)
    vg = Vagrant(ws.root, spec.provider)
    new_nodes = _machines_stage(ws, spec, provider, vg, state, progress, timings, started)

    ssh = vg.ssh_config([n.name for n in spec.nodes])
    inventory.write_inventory(inventory.build_inventory(spec, ssh, ws.root, kube_bundle), ws.inventory)
    out.write(f"    inventory: {ws.inventory}\n")

    runs: dict[str, StageRun] = {}
    rc = _stages_and_verify(ws, spec, opts, vg, state, previous_run, new_nodes, progress, timings, runs, started, out)
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


def _spec_for_up(ws: Workspace, opts: UpOptions, out: TextIO) -> tuple[ClusterSpec, dict[str, Any]]:
    """The validated spec with its provider decided; refused before anything is created."""
    spec, inputs = resolve_spec(ws, opts.overrides, opts.config)
    for note in check_networks(spec):
        out.write(f"note: {note}\n")
    check_stack(spec)
    saved = ws.load_saved()
    if saved is not None:
        old = ClusterSpec.from_dict(saved["spec"])
        _refuse_incompatible_change(old, spec)
        if spec.provider == "auto":
            spec = spec.with_provider(old.provider)
    if spec.provider == "auto":
        choice = providers.choose("auto", opts.prefer_speed)
        out.write(f"provider: {choice.provider} ({choice.reason})\n")
        spec = spec.with_provider(choice.provider)
    else:
        providers.choose(spec.provider)
    _check_bundle_versions(spec)
    return spec, inputs


def _check_bundle_versions(spec: ClusterSpec) -> None:
    """A cluster that will install from the bundle asks for releases the bundle knows: refused here,
    before any image or machine is made, naming the spec's own flag."""
    from provisioner import bundle

    if spec.engine != "kubernetes" or kubernetes_blocker(spec) or kube_source_choice(spec)[0] != "bundle":
        return
    try:
        bundle.resolve_versions(spec.versions["kubernetes"], spec.versions["calico"])
    except ProvisionError as exc:
        raise ProvisionError(
            f"{exc.message.split(';')[0]}; pass --kube-version {bundle.KNOWN_KUBERNETES[-1]} (or versions.calico "
            f"{bundle.KNOWN_CALICO[-1]} in the spec file), or kube_source: upstream where pkgs.k8s.io answers",
            exit_code=2,
        ) from exc


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
) -> list[str]:
    """`vagrant up` of the machines that are not running; returns their names."""
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
    if new_nodes and any(state.done(s.name) for s in todo):
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
        t0 = time.monotonic()
        try:
            runs[stage.name] = run_playbook(
                stage.path,
                ws.inventory,
                ws.root,
                ws.logs / f"{stage.name}.log",
                progress,
                f"stage {stage.name} ({stage.description})",
                verbose=opts.verbose,
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


def converge_fingerprint(ws: Workspace, spec: ClusterSpec) -> str:
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
    digest.update(ws.inventory.read_bytes() if ws.inventory.exists() else b"")
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


def check_stack(spec: ClusterSpec) -> Path | None:
    """The compose file of `--stack`, checked before anything is created."""
    if not spec.stack:
        return None
    if spec.engine != "swarm":
        raise ProvisionError("--stack deploys a compose file on a swarm; use it with --engine swarm", exit_code=2)
    stack = Path(spec.stack).expanduser().resolve()
    if not stack.is_file():
        raise ProvisionError(f"stack file {spec.stack} does not exist; give the path of a compose file", exit_code=2)
    return stack


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


def _refuse_incompatible_change(old: ClusterSpec, new: ClusterSpec) -> None:
    if (old.control_planes, old.api_vip) != (new.control_planes, new.api_vip):
        raise ProvisionError(
            f"this cluster was made with {old.control_planes} control plane(s)"
            + (f" behind {old.api_vip}" if old.api_vip else "")
            + f", the spec now says {new.control_planes}"
            + (f" behind {new.api_vip}" if new.api_vip else "")
            + "; the control planes and their endpoint are fixed when the cluster is made (kubeadm's "
            "controlPlaneEndpoint, the certificates, the node addresses): `destroy -f` and `up` with the new count",
            exit_code=2,
        )
    # The swarm reads its address pool once, at `docker swarm init`.
    for attr in ("name", "engine", "network", *(("swarm_address_pool",) if old.engine == "swarm" else ())):
        if getattr(old, attr) != getattr(new, attr):
            raise ProvisionError(
                f"this cluster exists with {attr} {getattr(old, attr)}, the spec now says {getattr(new, attr)}; "
                f"run `destroy -f` first, or use another --dir for a second cluster",
                exit_code=2,
            )
    if new.provider not in ("auto", old.provider):
        raise ProvisionError(
            f"this cluster exists on provider {old.provider}, not {new.provider}; run `destroy -f` first",
            exit_code=2,
        )


_vagrant_status: dict[str, str] = {}


def _on_vagrant_line(line: str) -> None:
    parsed = parse_progress_line(line)
    if parsed:
        _vagrant_status[parsed[0]] = parsed[1][:60]


def _vagrant_detail_tracker(progress: Progress) -> Any:
    _vagrant_status.clear()
    return lambda: " | ".join(f"{n}: {m}" for n, m in sorted(_vagrant_status.items()))


def host_cgroup_version() -> int:
    try:
        fs = subprocess.run(["stat", "-fc", "%T", "/sys/fs/cgroup"], capture_output=True, text=True, check=False)
    except OSError:
        return 0
    return 2 if fs.stdout.strip() == "cgroup2fs" else 1


def kubernetes_blocker(spec: ClusterSpec) -> str:
    """Why the Kubernetes stages cannot run on these nodes at all ("" when they can be tried)."""
    from provisioner.kubeconf import LAST_CGROUP_V1_MINOR

    if spec.engine != "kubernetes" or spec.provider != "docker":
        return ""
    minor = int(spec.versions["kubernetes"].split(".")[1])
    if minor > LAST_CGROUP_V1_MINOR and host_cgroup_version() == 1:
        return (
            f"container nodes share this host's kernel, which runs cgroup v1, and kubelet 1.{minor} has no "
            f"switch left to run there (1.{LAST_CGROUP_V1_MINOR} was the last); nodes are prepared with the container "
            f"runtime. Use --kube-version 1.{LAST_CGROUP_V1_MINOR}, a VM provider, or --engine swarm here"
        )
    return ""


def kube_source_choice(spec: ClusterSpec) -> tuple[str, str]:
    """(upstream | bundle, why) for the Kubernetes binaries and images of this cluster."""
    if spec.kube_source != "auto":
        return spec.kube_source, "asked for"
    if spec.provider == "docker":
        return "bundle", "container nodes install from the bundle (no registry needed)"
    why = providers.pkgs_k8s_io_unreachable()
    if why:
        return "bundle", f"pkgs.k8s.io does not answer here ({why})"
    return "upstream", "pkgs.k8s.io answers"


def ensure_kube_bundle(spec: ClusterSpec, out: TextIO, verbose: bool) -> tuple[ClusterSpec, Path | None]:
    """The bundle this cluster installs from (built first when missing, with its progress), and the
    spec with the bundle's exact versions; (spec, None) when the cluster installs from upstream."""
    from provisioner import bundle
    from provisioner.bundle import make

    if spec.engine != "kubernetes" or kubernetes_blocker(spec):
        return spec, None
    source, why = kube_source_choice(spec)
    if source != "bundle":
        out.write(f"kubernetes: packages from pkgs.k8s.io ({why})\n")
        return spec, None
    versions = bundle.resolve_versions(spec.versions["kubernetes"], spec.versions["calico"])
    found = make.ensure(versions, "auto", force=False, out=out, verbose=verbose)
    out.write(f"kubernetes: bundle {found.path} ({why})\n")
    data = spec.to_dict()
    data["versions"] = dict(spec.versions, kubernetes=versions.kubernetes, calico=versions.calico)
    return ClusterSpec.from_dict(data), found.path


def run_verify(ws: Workspace, spec: ClusterSpec, state: State, out: TextIO) -> int:
    finished = [name for name, rec in state.stages.items() if rec.status == "done"]
    names = [n.name for n in spec.nodes]
    progress = Progress(out)
    progress.start("verify (testinfra)")
    state.last_verify = ""
    state.save()
    report, logf = verify.run_verify(ws.inventory, ws.root, finished, names)
    failed = report.failed
    state.last_verify = "failed" if failed else "passed"
    state.save()
    progress.stop("all checks passed" if not failed else f"{len(failed)} checks FAILED")
    out.write(report.table(names) + "\n")
    for line in report.skip_reasons():
        out.write(line + "\n")
    if failed:
        for r in failed[:20]:
            out.write(f"  FAIL {r.node}: {r.check}: {r.message}\n")
        raise ProvisionError(
            f"verify: {len(failed)} checks failed (first: {failed[0].node}: {failed[0].check})",
            exit_code=5,
            log_path=str(logf),
        )
    return 0


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


def verify_cmd(ws: Workspace, out: TextIO = sys.stdout) -> int:
    spec = ws.saved_spec()
    state = State.load(ws.state_file)
    return run_verify(ws, spec, state, out)


def ssh(ws: Workspace, node: str) -> int:
    spec = ws.saved_spec()
    names = [n.name for n in spec.nodes]
    if node not in names:
        raise ProvisionError(f"no node named '{node}'; nodes are: {', '.join(names)}", exit_code=2)
    vg = Vagrant(ws.root, spec.provider)
    os.execvpe("vagrant", vg.ssh_exec_args(node), vg.env)
    return 0  # not reached


def exec_cmd(ws: Workspace, group: str, command: list[str], sudo: bool, out: TextIO = sys.stdout) -> int:
    from provisioner import remote

    if not command:
        raise ProvisionError("exec needs a command after --, e.g. `exec -- uptime`", exit_code=2)
    hosts = inventory.load_inventory_hosts(ws.inventory)
    members = inventory.group_members(ws.inventory, group)
    if not members:
        raise ProvisionError(f"group '{group}' has no hosts", exit_code=2)
    results = remote.run_on_hosts({h: hosts[h] for h in members}, " ".join(command), sudo=sudo)
    return remote.print_results(results, out)


def kubeconfig(ws: Workspace, out: TextIO = sys.stdout) -> int:
    path = ws.root / "kubeconfig"
    if not path.exists():
        raise ProvisionError(f"no kubeconfig at {path} yet; it is fetched by the control_plane stage of `up`")
    out.write(f"{path}\nexport KUBECONFIG={path}\n")
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
    for stage in ("control_plane", "cni", "join"):
        state.stages.pop(stage, None)
    state.fingerprint = ""
    state.save()
    return 0


def box_build(provider: str, with_runtime: bool, force: bool, out: TextIO = sys.stdout) -> int:
    """Build the VM box from Debian packages (libvirt provider) and add it to Vagrant."""
    if provider != "libvirt":
        raise ProvisionError(f"box build supports --provider libvirt only, not {provider}", exit_code=2)
    recipe = box.BoxRecipe(mirror=image.host_debian_mirror(), with_runtime=with_runtime)
    if box.box_present(recipe) and not force:
        out.write(f"{recipe.name} {recipe.version} is present (recipe unchanged); --force rebuilds it\n")
        return 0
    progress = Progress(out)
    progress.start(f"box {recipe.name} {recipe.version}")
    box.ensure_box(recipe, force=True)
    progress.stop("built and added to Vagrant")
    return 0


def image_build(force: bool, with_runtime: bool = False, out: TextIO = sys.stdout) -> int:
    providers.choose("docker")
    recipe = image.ImageRecipe(mirror=image.host_debian_mirror(), with_runtime=with_runtime)
    progress = Progress(out)
    if image.image_exists(recipe.tag) and not force:
        out.write(f"{recipe.tag} is present (recipe unchanged); --force rebuilds it\n")
        return 0
    progress.start(f"node image {recipe.tag}")
    image.ensure_image(recipe, force=True)
    progress.stop("built")
    return 0
