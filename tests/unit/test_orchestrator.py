"""Inventory, state, stage selection, the event stream and the verify report: no machines."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner import stages
from provisioner.ansible import StageRun, stage_error
from provisioner.command.up import lost_machines_error
from provisioner.errors import ProvisionError
from provisioner.inventory import build_inventory, group_members, write_inventory
from provisioner.progress import Progress
from provisioner.spec import build_spec
from provisioner.state import State
from provisioner.vagrant import MachineStatus, SshInfo
from provisioner.verify import parse_junit, split_testcase
from provisioner.workspace import Workspace


def _ssh(names: list[str]) -> dict[str, SshInfo]:
    return {n: SshInfo(n, "127.0.0.1", 2200 + i, "vagrant", f"/k/{n}") for i, n in enumerate(names)}


def test_inventory_groups_and_vars(tmp_path: Path) -> None:
    spec = build_spec({"provider": "docker"})
    inv = build_inventory(spec, _ssh(["cp1", "worker1", "worker2"]), tmp_path)
    path = write_inventory(inv, tmp_path / "inventory" / "hosts.yml")
    data = yaml.safe_load(path.read_text())
    assert data["all"]["hosts"]["worker1"]["node_ip"] == "192.168.56.11"
    assert data["all"]["hosts"]["worker1"]["ansible_port"] == 2201
    assert data["all"]["vars"]["container_runtime_source"] == "distro"
    assert data["all"]["vars"]["kube_pods_subnet"] == "10.244.0.0/16"
    assert group_members(path, "k8s_cluster") == ["cp1", "worker1", "worker2"]
    assert group_members(path, "kube_node") == ["worker1", "worker2"]
    assert group_members(path, "swarm_manager") == []
    assert group_members(path, "all") == ["cp1", "worker1", "worker2"]
    with pytest.raises(ProvisionError, match="group 'nope' is not in the inventory"):
        group_members(path, "nope")


def test_inventory_carries_the_package_proxy(tmp_path: Path) -> None:
    names = ["cp1", "worker1", "worker2"]
    inv = build_inventory(build_spec({"package_proxy": "http://192.168.56.1:3142/"}), _ssh(names), tmp_path)
    data = yaml.safe_load(write_inventory(inv, tmp_path / "hosts.yml").read_text())
    assert data["all"]["vars"]["node_prep_package_proxy"] == "http://192.168.56.1:3142"
    # No proxy is an explicit "", so that a rerun removes a proxy set before.
    assert build_inventory(build_spec(), _ssh(names), tmp_path)["all"]["vars"]["node_prep_package_proxy"] == ""


def test_inventory_swarm_labels(tmp_path: Path) -> None:
    spec = build_spec({"engine": "swarm", "nodes": 2, "labels": {"worker1": {"disk": "ssd"}}})
    inv = build_inventory(spec, _ssh(["manager1", "worker1"]), tmp_path)
    assert inv["all"]["hosts"]["worker1"]["swarm_node_labels"] == {"disk": "ssd"}
    assert list(inv["all"]["children"]["swarm_worker"]["hosts"]) == ["worker1"]


def test_inventory_needs_every_node(tmp_path: Path) -> None:
    with pytest.raises(ProvisionError, match="node worker2 has no SSH address"):
        build_inventory(build_spec(), _ssh(["cp1", "worker1"]), tmp_path)


def test_state_roundtrip_and_failed_stage(tmp_path: Path) -> None:
    st = State.load(tmp_path / "state.json")
    st.mark("prepare", "done", 3.2, changed=4)
    st.mark("runtime", "failed", 1.0, message="host cp1 failed")
    again = State.load(tmp_path / "state.json")
    assert again.done("prepare") and not again.done("runtime")
    assert again.failed_stage() == "runtime"
    assert again.stages["prepare"].changed == 4


def test_corrupt_state_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(ProvisionError, match="unreadable"):
        State.load(tmp_path / "state.json")


def test_stage_order_and_selection() -> None:
    all_kube = [s.name for s in stages.stages_for("kubernetes", available_only=False)]
    assert all_kube == ["prepare", "runtime", "kube_packages", "control_plane", "cni", "join", "addons"]
    assert [s.name for s in stages.stages_for("swarm", available_only=False)] == ["prepare", "runtime", "swarm"]
    with pytest.raises(ProvisionError, match="stage 'bogus' does not exist"):
        stages.select("swarm", only="bogus")


EVENTS: list[dict[str, Any]] = [
    {"event": "task", "name": "Install docker", "t": 1.0},
    {"event": "result", "host": "cp1", "task": "Install docker", "status": "ok", "changed": True, "duration": 12.5},
    {"event": "result", "host": "w1", "task": "Install docker", "status": "ok", "changed": False, "duration": 3.0},
    {
        "event": "result",
        "host": "w1",
        "task": "Load br_netfilter",
        "status": "skipped",
        "changed": False,
        "duration": 0.1,
    },
    {
        "event": "result",
        "host": "w1",
        "task": "Start docker",
        "status": "failed",
        "changed": False,
        "msg": "unit not found",
    },
    {"event": "stats", "hosts": {"cp1": {"ok": 1, "changed": 1}, "w1": {"ok": 1, "changed": 0, "failures": 1}}},
]


def test_stage_run_counts_and_failure_message(tmp_path: Path) -> None:
    run = StageRun()
    for ev in EVENTS:
        run.feed(ev)
    assert run.changed == 1
    assert run.hosts["w1"].failed == 1 and run.hosts["w1"].skipped == 1
    assert run.slowest(1) == [(12.5, "cp1", "Install docker")]
    assert "w1 ok=1 changed=0 skipped=1 FAILED" in run.summary_line()
    err = stage_error("stage runtime", 2, run, tmp_path / "runtime.log")
    assert "host w1 failed at task 'Start docker': unit not found" in err.message
    assert err.log_path and err.log_path.endswith("runtime.log")


def test_progress_plain_when_not_a_terminal() -> None:
    out = io.StringIO()
    p = Progress(out, heartbeat=0.05)
    p.start("stage x", lambda: "cp1 ok=1")
    import time

    time.sleep(1.3)
    p.stop("ok")
    text = out.getvalue()
    assert text.startswith("==> stage x\n")
    assert "... stage x" in text and "cp1 ok=1" in text
    assert "\r" not in text
    assert text.rstrip().endswith("s)")


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.infra.test_prepare" name="test_sysctl[ansible://cp1-net.ipv4.ip_forward]" time="0.1"/>
<testcase classname="tests.infra.test_prepare" name="test_sysctl[ansible://worker-1-net.ipv4.ip_forward]" time="0.1">
<failure message="assert 0 == 1">trace</failure></testcase>
<testcase classname="tests.infra.test_prepare" name="test_swap[ansible://worker-1]" time="0.1">
<skipped message="container node: swap is the host's">skip</skipped></testcase>
</testsuite></testsuites>"""


def test_junit_report_table(tmp_path: Path) -> None:
    path = tmp_path / "v.xml"
    path.write_text(JUNIT)
    nodes = ["cp1", "worker-1", "worker"]
    report = parse_junit(path, nodes)
    assert [(r.node, r.check, r.outcome) for r in report.results] == [
        ("cp1", "sysctl net.ipv4.ip_forward", "passed"),
        ("worker-1", "sysctl net.ipv4.ip_forward", "failed"),
        ("worker-1", "swap", "skipped"),
    ]
    assert report.failed[0].message == "assert 0 == 1"
    table = report.table(["cp1", "worker-1"])
    assert "FAIL" in table and "skip" in table and "ok" in table
    assert split_testcase("test_x[plain]", nodes) == ("", "x plain")
    # The table says `skip`; the reason is printed under it.
    assert report.skip_reasons() == ["  skip: container node: swap is the host's: swap (worker-1)"]


def test_timings_file_written(tmp_path: Path) -> None:
    from provisioner.command.up import _write_timings
    from provisioner.workspace import Workspace

    run = StageRun()
    for ev in EVENTS:
        run.feed(ev)
    ws = Workspace(tmp_path)
    _write_timings(ws, {"machines": 10.0, "runtime": 20.0}, {"runtime": run}, 31.0)
    data = json.loads(ws.timings.read_text())
    assert data["stages"] == {"machines": 10.0, "runtime": 20.0}
    assert data["slowest_tasks"]["runtime"][0] == {"seconds": 12.5, "host": "cp1", "task": "Install docker"}


class _FakeVagrant:
    def __init__(self, states: dict[str, str] | None) -> None:
        self.states = states

    def status(self) -> list[MachineStatus]:
        if self.states is None:
            raise ProvisionError("vagrant status failed (exit 1)")
        return [MachineStatus(n, st, "docker") for n, st in self.states.items()]


def _failed_run(tmp_path: Path) -> ProvisionError:
    run = StageRun()
    for ev in EVENTS:
        run.feed(ev)
    return stage_error("stage prepare (node preparation)", 2, run, tmp_path / "prepare.log")


def test_stage_failure_on_a_machine_that_went_away_says_so(tmp_path: Path) -> None:
    exc = _failed_run(tmp_path)
    assert exc.hosts == ("w1",)
    err = lost_machines_error(exc, _FakeVagrant({"cp1": "running", "w1": "stopped"}), "prepare")  # type: ignore[arg-type]
    assert err is not exc
    assert "node w1 (now stopped) stopped or vanished during the run and became unreachable" in err.message
    assert "run `up` again" in err.message and err.exit_code == exc.exit_code and err.log_path == exc.log_path
    gone = lost_machines_error(exc, _FakeVagrant({"cp1": "running"}), "prepare")  # type: ignore[arg-type]
    assert "w1 (now not created)" in gone.message


def test_stage_failure_on_a_running_machine_keeps_the_ansible_reason(tmp_path: Path) -> None:
    exc = _failed_run(tmp_path)
    assert lost_machines_error(exc, _FakeVagrant({"cp1": "running", "w1": "running"}), "prepare") is exc  # type: ignore[arg-type]
    # When the provider cannot be asked, the original error stands rather than a second failure.
    assert lost_machines_error(exc, _FakeVagrant(None), "prepare") is exc  # type: ignore[arg-type]


def test_converge_fingerprint_follows_roles_inventory_and_machines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from provisioner.command import up as cluster

    repo = tmp_path / "repo"
    for rel in ("ansible.cfg", "playbooks/site.yml", "roles/r/tasks/main.yml", "roles/r/molecule/default/x.yml"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(rel)
    (repo / "filter_plugins").mkdir()
    monkeypatch.setattr(cluster, "REPO_ROOT", repo)
    ws = Workspace(tmp_path / "ws")
    spec = build_spec({"provider": "docker", "nodes": 1})
    ws.inventory.parent.mkdir(parents=True)
    ws.inventory.write_text("all: {}\n")
    ident = ws.root / "vagrant" / "machines" / "cp1" / "docker" / "id"
    ident.parent.mkdir(parents=True)
    ident.write_text("abc")
    first = cluster.converge_fingerprint(ws, spec)
    assert cluster.converge_fingerprint(ws, spec) == first
    (repo / "roles/r/molecule/default/x.yml").write_text("changed")  # test scenarios are not applied
    assert cluster.converge_fingerprint(ws, spec) == first
    seen = {first}
    for path, text in (
        (repo / "roles/r/tasks/main.yml", "new task"),
        (ws.inventory, "all: {vars: {a: 1}}\n"),
        (ident, "def"),
    ):
        path.write_text(text)
        now = cluster.converge_fingerprint(ws, spec)
        assert now not in seen, path
        seen.add(now)
