"""The machines stage of `up` (provisioner.command.up._machines_stage) with a stand-in for Vagrant: what it
says it did, and the exit code of its failure. No machine is created."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import pytest

from provisioner import identity, kubesource, machines, stages
from provisioner.command import up as cluster
from provisioner.errors import ProvisionError
from provisioner.progress import Progress
from provisioner.spec import build_spec
from provisioner.state import State
from provisioner.vagrant import MachineStatus
from provisioner.workspace import Workspace


class FakeVagrant:
    def __init__(self, states: dict[str, str], fail: ProvisionError | None = None) -> None:
        self.states = states
        self.fail = fail
        self.upped: list[str] = []

    def status(self) -> list[MachineStatus]:
        return [MachineStatus(n, s, "docker") for n, s in self.states.items()]

    def up(self, nodes: list[str], log_file: Path, on_line: object = None) -> None:
        if self.fail is not None:
            raise self.fail
        self.upped = nodes


def _run(tmp_path: Path, vg: FakeVagrant) -> tuple[list[str], str]:
    ws = Workspace(tmp_path)
    (tmp_path / "vagrant").mkdir(exist_ok=True)
    spec = build_spec({"nodes": 3, "provider": "virtualbox"})
    out = io.StringIO()
    fake: Any = vg
    new = cluster._machines_stage(
        ws, spec, machines.Provider(), fake, State.load(ws.state_file), Progress(out), {}, 0.0
    )
    return new, out.getvalue()


def test_a_stopped_node_is_said_to_be_started_and_a_missing_one_created(tmp_path: Path) -> None:
    new, out = _run(tmp_path, FakeVagrant({"cp1": "running", "worker1": "stopped", "worker2": "not_created"}))
    assert new == ["worker1", "worker2"]
    assert "up, created worker2; started worker1" in out


def test_all_running_needs_no_vagrant_up(tmp_path: Path) -> None:
    vg = FakeVagrant({"cp1": "running", "worker1": "running", "worker2": "running"})
    new, out = _run(tmp_path, vg)
    assert new == [] and vg.upped == [] and "up, all running" in out


def test_a_failed_machines_stage_exits_4_and_is_recorded(tmp_path: Path) -> None:
    vg = FakeVagrant({}, fail=ProvisionError("vagrant up failed (exit 1): boom", log_path="/x/machines.log"))
    with pytest.raises(ProvisionError) as info:
        _run(tmp_path, vg)
    assert info.value.exit_code == 4 and info.value.log_path == "/x/machines.log"
    assert State.load(tmp_path / "state.json").stages["machines"].status == "failed"


def test_a_missing_tool_keeps_its_own_exit_code(tmp_path: Path) -> None:
    vg = FakeVagrant({}, fail=ProvisionError("vagrant is required but not available", exit_code=3))
    with pytest.raises(ProvisionError) as info:
        _run(tmp_path, vg)
    assert info.value.exit_code == 3


def _fake_docker(monkeypatch: pytest.MonkeyPatch, found: list[identity.Machine]) -> list[list[str]]:
    import subprocess

    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr("provisioner.machines.shutil.which", lambda _: "/usr/bin/docker")
    monkeypatch.setattr("provisioner.machines.subprocess.run", fake_run)
    monkeypatch.setattr("provisioner.machines.providers.docker_machines", lambda: found)
    monkeypatch.setattr("provisioner.machines.providers.docker_network_users", lambda _: {})
    return calls


def test_destroy_removes_only_containers_with_its_own_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two clusters named lab: destroying one (id aaa) removed the other's containers too (issue 14.1)."""
    found = [
        identity.Machine("1", "lab-worker9", cluster="lab", cluster_id="aaa"),
        identity.Machine("2", "lab-cp1", cluster="lab", cluster_id="bbb"),
        identity.Machine("3", "lab-cp2", cluster="lab"),
    ]
    calls = _fake_docker(monkeypatch, found)
    out = io.StringIO()
    machines.Docker().clean_up(build_spec({"nodes": 1, "provider": "docker"}), "aaa", out)
    removals = [c for c in calls if c[:2] == ["docker", "rm"]]
    assert removals == [["docker", "rm", "-f", "-v", "lab-worker9"]]
    assert (
        "removed containers Vagrant no longer knew of (org.provisioner.cluster-id=aaa): lab-worker9" in out.getvalue()
    )


def test_destroy_of_a_cluster_without_identity_leaves_identified_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    found = [
        identity.Machine("2", "lab-cp1", cluster="lab", cluster_id="bbb"),
        identity.Machine("3", "lab-cp2", cluster="lab"),
    ]
    calls = _fake_docker(monkeypatch, found)
    machines.Docker().clean_up(build_spec({"nodes": 1, "provider": "docker"}), "", io.StringIO())
    assert [c for c in calls if c[:2] == ["docker", "rm"]] == [["docker", "rm", "-f", "-v", "lab-cp2"]]


def test_a_blocked_release_says_its_reason_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kubernetes 1.38 on container nodes of a cgroup v1 host: the first Kubernetes stage says why it
    did not run, the others point back to it (it was printed for every stage and again at the end)."""
    from provisioner.ansible import StageRun

    monkeypatch.setattr(kubesource, "host_cgroup_version", lambda: 1)
    monkeypatch.setattr(cluster, "run_playbook", lambda *a, **k: StageRun())
    monkeypatch.setattr(cluster, "forget_facts", lambda root: None)
    ws = Workspace(tmp_path)
    ws.inventory.parent.mkdir(parents=True)
    ws.inventory.write_text("all: {}\n")
    # The spec refuses 1.38 until it is in spec.KUBE_MINORS; the spec of that day is made by hand.
    known = build_spec({"nodes": 1, "provider": "docker"})
    spec = dataclasses.replace(known, versions={**known.versions, "kubernetes": "1.38"})
    opts = cluster.UpOptions(verify=False)
    out = io.StringIO()
    state = State.load(ws.state_file)
    fake: Any = FakeVagrant({"cp1": "running"})
    cluster._stages_and_verify(ws, spec, opts, fake, state, "", ["cp1"], "", Progress(out), {}, {}, 0.0, out)
    text = out.getvalue()
    assert text.count("1.37 was the last") == 1, text
    assert "==> kube_packages: not run: " in text
    for stage in ("control_plane", "cni", "join"):
        assert f"==> {stage}: not run (the reason above)" in text


@pytest.mark.parametrize("failed_at", ["", "runtime", "control_plane"])
def test_until_stops_the_pipeline_there_whatever_failed_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failed_at: str
) -> None:
    """`up --until runtime` after a failure at control_plane ran every remaining stage and recorded a
    whole converge: the cut applies to the pipeline first, then the resume point inside it."""
    from provisioner.ansible import StageRun

    ran: list[str] = []

    def playbook(path: Path, *args: Any, **kwargs: Any) -> StageRun:
        ran.append(path.stem)
        return StageRun()

    monkeypatch.setattr(cluster, "run_playbook", playbook)
    monkeypatch.setattr(cluster, "forget_facts", lambda root: None)
    ws = Workspace(tmp_path)
    ws.inventory.parent.mkdir(parents=True)
    ws.inventory.write_text("all: {}\n")
    spec = build_spec({"nodes": 1, "provider": "docker"})
    state = State.load(ws.state_file)
    for stage in ("prepare", "runtime", "kube_packages", "control_plane"):
        state.mark(stage, "failed" if stage == failed_at else "done", 1.0)
        if stage == failed_at:
            break
    out = io.StringIO()
    opts = cluster.UpOptions(verify=False, until="runtime")
    fake: Any = FakeVagrant({"cp1": "running"})
    cluster._stages_and_verify(ws, spec, opts, fake, state, "failed", [], "", Progress(out), {}, {}, 0.0, out)
    assert ran == (["runtime"] if failed_at == "runtime" else ["prepare", "runtime"]), ran
    assert state.last_run == "stopped" and state.fingerprint == ""
    assert "stopped after stage runtime (--until)" in out.getvalue()


def _settled(tmp_path: Path, spec: Any) -> tuple[Workspace, State]:
    """A workspace whose last converge of every stage passed verify, with its fingerprint."""
    ws = Workspace(tmp_path)
    ws.inventory.parent.mkdir(parents=True, exist_ok=True)
    ws.inventory.write_text("all: {}\n")
    state = State.load(ws.state_file)
    for stage in stages.stages_for(spec.engine):
        state.mark(stage.name, "done", 1.0)
    state.last_run, state.last_verify = "done", "passed"
    state.fingerprint = "before"
    return ws, state


@pytest.mark.parametrize(
    ("grown_from", "new", "converge", "expected"),
    [
        # Workers added to an unchanged cluster: they alone get the per-node stages, prepare runs on
        # every node (the others only write the hosts file), join with the control plane, control_plane,
        # cni and addons not at all.
        (
            "before",
            ["worker3"],
            False,
            [("prepare", None), ("runtime", "worker3"), ("kube_packages", "worker3"), ("join", "worker3,cp1")],
        ),
        # The cluster changed since its last converge (another fingerprint): every stage on every node.
        ("other", ["worker3"], False, None),
        # --converge asks for every stage everywhere.
        ("before", ["worker3"], True, None),
        # A recreated control plane is no growth.
        ("before", ["cp1"], False, None),
    ],
)
def test_growth_runs_the_stages_on_the_new_workers_only_when_the_rest_is_unchanged(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    grown_from: str,
    new: list[str],
    converge: bool,
    expected: list[tuple[str, str | None]] | None,
) -> None:
    from provisioner.ansible import StageRun

    ran: list[tuple[str, str | None]] = []
    extra: dict[str, Any] = {}

    def playbook(path: Path, *args: Any, **kwargs: Any) -> StageRun:
        ran.append((path.stem, kwargs.get("limit")))
        extra[path.stem] = kwargs.get("extra_vars")
        return StageRun()

    monkeypatch.setattr(cluster, "run_playbook", playbook)
    monkeypatch.setattr(cluster, "forget_facts", lambda root: None)
    monkeypatch.setattr(cluster, "kubernetes_blocker", lambda spec: "")
    spec = build_spec({"nodes": 4, "provider": "docker"})
    ws, state = _settled(tmp_path, spec)
    out = io.StringIO()
    opts = cluster.UpOptions(verify=False, converge=converge)
    fake: Any = FakeVagrant({n.name: "running" for n in spec.nodes})
    cluster._stages_and_verify(ws, spec, opts, fake, state, "done", new, grown_from, Progress(out), {}, {}, 0.0, out)
    everything = [(s.name, None) for s in stages.stages_for("kubernetes")]
    assert ran == (expected if expected is not None else everything), out.getvalue()
    assert state.last_run == "done" and all(state.done(s.name) for s in stages.stages_for("kubernetes"))
    if expected is not None:
        assert "nothing to do for new workers" in out.getvalue()
        # prepare runs on every node, but the nodes the cluster had only update their hosts file.
        assert extra["prepare"] == {"node_prep_hosts_file_only_on": ["cp1", "worker1", "worker2"]}, extra
    else:
        # join follows cni in this run: join waits for calico-node, cni does not.
        assert extra["cni"] == {"calico_wait_for_nodes": False} and extra["join"] is None, extra
