"""End to end on real docker-provider nodes: orchestrator, Vagrant, inventory, Ansible stages and
testinfra together, with the swarm engine, on three managers (issue 15's failure test for the swarm:
the leader is stopped, another manager becomes leader and a replicated service keeps running).

The tests run in file order against one cluster; each step builds on the previous one. Workers
join later (adding a node) and leave again (shrinking).
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.verify import closing_counts
from tests.integration.conftest import REPO, Cluster, assert_verified, make_cluster

pytestmark = pytest.mark.integration

NAME = "it-swarm"
NETWORK = "192.168.157.0/24"
MANAGERS = ("manager1", "manager2", "manager3")
IPS = {"manager1": "192.168.157.10", "manager2": "192.168.157.11", "manager3": "192.168.157.12"}
SERVICE = "ha-probe"
# What verify must show as passed (an ok cell in its table): every node in the swarm, the Raft view
# of every manager, and the smoke service over the overlay network (run from the first manager).
WANTED = {
    "swarm_member": MANAGERS,
    "node_ready_active": MANAGERS,
    "other_managers_reachable": MANAGERS,
    "smoke_replicas_on_distinct_nodes": ("manager1",),
    "smoke_overlay_data_path": ("manager1",),
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from make_cluster(tmp_path_factory, NAME, NETWORK)


def _status_rows(text: str) -> dict[str, tuple[str, str]]:
    rows = {}
    for line in text.splitlines():
        m = re.match(r"^\s+(\S+)\s+(manager|worker|control_plane)\s+(\S+)\s+(\S+)", line)
        if m:
            rows[m.group(1)] = (m.group(3), m.group(4))
    return rows


def docker_on(node: str, *args: str, check: bool = True) -> str:
    proc = subprocess.run(
        ["docker", "exec", f"{NAME}-{node}", "docker", *args], capture_output=True, text=True, check=False
    )
    if check:
        assert proc.returncode == 0, f"{node}: docker {' '.join(args)}: {proc.stderr.strip()}"
    return proc.stdout


def manager_status(via: str) -> dict[str, str]:
    out = docker_on(via, "node", "ls", "--format", "{{.Hostname}} {{.ManagerStatus}}", check=False)
    return {line.split()[0]: [*line.split(), ""][1] for line in out.splitlines() if line.strip()}


def running_replicas(via: str, off: str = "") -> int:
    """Tasks of the probe service that run, on nodes other than `off`."""
    out = docker_on(
        via,
        "service",
        "ps",
        SERVICE,
        "--filter",
        "desired-state=running",
        "--format",
        "{{.Node}} {{.CurrentState}}",
        check=False,
    )
    rows = [line.split(maxsplit=1) for line in out.splitlines() if line.strip()]
    return sum(1 for node, state in rows if node != off and state.startswith("Running"))


def test_up_from_clean_state(cluster: Cluster) -> None:
    proc = cluster.run(
        "up", "--nodes", "3", "--managers", "3", "--engine", "swarm", "--name", NAME, "--network", NETWORK
    )
    out = proc.stdout
    for stage in ("machines", "stage prepare", "stage runtime", "stage swarm", "verify (testinfra)"):
        assert f"==> {stage}" in out, out
    assert_verified(out, WANTED)
    for node, ip in IPS.items():
        assert re.search(rf"{node}\s+\S+\s+{re.escape(ip)}", out)
    assert "FAIL" not in out
    status = manager_status("manager1")
    assert sorted(status.values()) == ["Leader", "Reachable", "Reachable"], status


def test_status_shows_running_nodes_with_planned_ips(cluster: Cluster) -> None:
    proc = cluster.run("status")
    rows = _status_rows(proc.stdout)
    assert rows == {node: (ip, "running") for node, ip in IPS.items()}
    assert re.search(r"swarm\s+done", proc.stdout)


def test_nodes_reachable_over_ssh_through_generated_inventory(cluster: Cluster) -> None:
    ping = subprocess.run(
        [str(REPO / ".venv/bin/ansible"), "all", "-i", str(cluster.inventory), "-m", "ansible.builtin.ping", "-o"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert sorted(re.findall(r"^(\S+) \| SUCCESS", ping.stdout, re.M)) == sorted(IPS)
    proc = cluster.run("exec", "--", "ip", "-4", "-o", "addr", "show")
    for node, ip in IPS.items():
        assert re.search(rf"^\[{node}\s*\] .*inet {re.escape(ip)}/24", proc.stdout, re.M), proc.stdout
    assert "3 of 3 hosts succeeded" in proc.stdout


def test_exec_fails_when_any_host_fails(cluster: Cluster) -> None:
    proc = cluster.run("exec", "--group", "swarm_manager", "--", "test", "$(hostname)", "=", "manager1", check=False)
    assert proc.returncode == 1
    assert "[manager2] exit 1" in proc.stdout and "1 of 3 hosts succeeded" in proc.stdout


def test_losing_the_leader_elects_another_and_services_keep_running(cluster: Cluster) -> None:
    image = docker_on(
        "manager1", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}", "--filter", "reference=provisioner/smoke"
    ).split()
    assert image, "no smoke image on manager1"
    # Three replicas on three managers: one runs on the leader, so losing it must reschedule one.
    docker_on(
        "manager1",
        "service",
        "create",
        "--detach",
        "--no-resolve-image",
        "--name",
        SERVICE,
        "--replicas",
        str(len(MANAGERS)),
        image[0],
        "httpd",
        "-f",
        "-p",
        "8080",
        "-h",
        "/www",
    )
    deadline = time.monotonic() + 120
    while running_replicas("manager1") < len(MANAGERS) and time.monotonic() < deadline:
        time.sleep(2)
    assert running_replicas("manager1") == len(MANAGERS)
    leader = next(n for n, s in manager_status("manager1").items() if s == "Leader")
    survivor = next(m for m in MANAGERS if m != leader)
    assert running_replicas(survivor, off=leader) < len(MANAGERS), "no replica ran on the leader"
    subprocess.run(["docker", "stop", "-t", "2", f"{NAME}-{leader}"], capture_output=True, check=True)
    try:
        t0 = time.monotonic()
        status: dict[str, str] = {}
        while time.monotonic() - t0 < 60:
            status = manager_status(survivor)
            if "Leader" in status.values() and status.get(leader) != "Leader":
                break
            time.sleep(1)
        print(f"new leader after {time.monotonic() - t0:.1f} s: {status}")
        assert "Leader" in status.values() and status.get(leader) != "Leader", status
        # The leader's replica is rescheduled: all three run on the two managers that remain.
        deadline = time.monotonic() + 120
        while running_replicas(survivor, off=leader) < len(MANAGERS) and time.monotonic() < deadline:
            time.sleep(2)
        assert running_replicas(survivor, off=leader) == len(MANAGERS), docker_on(
            survivor, "service", "ps", SERVICE, check=False
        )
        print(f"all replicas running on the two managers left after {time.monotonic() - t0:.1f} s")
    finally:
        docker_on(survivor, "service", "rm", SERVICE, check=False)
        subprocess.run(["docker", "start", f"{NAME}-{leader}"], capture_output=True, check=True)


def test_the_old_leader_comes_back_and_verify_is_green(cluster: Cluster) -> None:
    # Its systemd brings Docker up a few seconds after the container starts: wait for that, bounded.
    deadline = time.monotonic() + 180
    states: list[str] = []
    while time.monotonic() < deadline:
        states = [
            subprocess.run(
                ["docker", "exec", f"{NAME}-{m}", "systemctl", "is-active", "docker"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            for m in MANAGERS
        ]
        if states == ["active"] * len(MANAGERS):
            break
        time.sleep(2)
    assert states == ["active"] * len(MANAGERS), states
    proc = cluster.run("verify", timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_second_up_changes_nothing(cluster: Cluster) -> None:
    proc = cluster.run("up", "--converge")
    changed = cluster.timings()["changed"]
    assert isinstance(changed, dict)
    assert set(changed) == {"prepare", "runtime", "swarm"}
    assert all(v == 0 for v in changed.values()), changed
    assert_verified(proc.stdout, WANTED)


def test_rerun_with_nothing_new_verifies_instead_of_reapplying(cluster: Cluster) -> None:
    proc = cluster.run("up")
    assert "nothing changed since the last converge" in proc.stdout, proc.stdout
    assert "==> stage prepare" not in proc.stdout and "==> stage swarm" not in proc.stdout
    assert_verified(proc.stdout, WANTED)
    stages = cluster.timings()["stages"]
    assert isinstance(stages, dict) and set(stages) == {"machines", "verify"}, stages


def test_rerun_notices_drift_and_converges(cluster: Cluster) -> None:
    subprocess.run(
        ["docker", "exec", f"{NAME}-manager2", "systemctl", "stop", "docker.socket", "docker"],
        capture_output=True,
        check=True,
    )
    proc = cluster.run("up")
    assert "the nodes drifted from what the roles set" in proc.stdout, proc.stdout
    assert "manager2" in proc.stdout
    assert "==> stage runtime" in proc.stdout
    changed = cluster.timings()["changed"]
    assert isinstance(changed, dict) and changed["runtime"] > 0, changed  # docker started again
    # Two verifies: the first found the drift (failed), the one after the converge passed.
    assert [c.failed > 0 for c in closing_counts(proc.stdout)] == [True, False], proc.stdout[-4000:]
    assert_verified(proc.stdout, WANTED)
    assert _status_rows(cluster.run("status").stdout)["manager2"] == (IPS["manager2"], "running")


def test_join_tokens_never_reach_the_host(cluster: Cluster) -> None:
    proc = cluster.run(
        "exec", "--group", "swarm_manager", "--sudo", "--", "docker", "swarm", "join-token", "-q", "worker"
    )
    token = proc.stdout.split("] ", 1)[1].split()[0]
    assert token.startswith("SWMTKN-")
    leaks = [p for p in cluster.root.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]
    assert leaks == []


def test_node_stopped_mid_run_is_named_and_up_resumes(cluster: Cluster) -> None:
    victim = f"{NAME}-manager3"
    events = cluster.root / "logs" / "prepare.events.jsonl"
    events.unlink(missing_ok=True)
    runner = cluster.popen("up", "--converge")
    # Stop the node once Ansible is really at work on the prepare stage (its first task has started).
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (events.exists() and '"event": "task"' in events.read_text()):
        time.sleep(0.2)
    assert runner.poll() is None, "up finished before the prepare stage started"
    subprocess.run(["docker", "stop", "-t", "2", victim], capture_output=True, check=True)
    out, err = runner.communicate(timeout=900)
    assert runner.returncode != 0, out
    assert "node manager3 (now stopped) stopped or vanished during the run and became unreachable" in err, err
    assert "log: " in err
    proc = cluster.run("up")
    assert_verified(proc.stdout, WANTED)
    assert _status_rows(cluster.run("status").stdout)["manager3"] == (IPS["manager3"], "running")


def test_node_destroyed_outside_is_noticed_and_recreated(cluster: Cluster) -> None:
    # A manager lost for good: the two left keep the quorum, the new machine joins as a manager and
    # its old entry (Down) is demoted and removed, so three managers remain.
    subprocess.run(["docker", "rm", "-f", f"{NAME}-manager2"], capture_output=True, check=True)
    status = cluster.run("status", check=False)
    assert status.returncode == 1
    assert "missing" in status.stdout and "manager2" in status.stdout
    proc = cluster.run("up")
    assert "created manager2" in proc.stdout
    assert_verified(proc.stdout, WANTED)
    rows = docker_on("manager1", "node", "ls", "--format", "{{.Hostname}} {{.ManagerStatus}}").splitlines()
    assert sorted([*r.split(), ""][1] for r in rows) == ["Leader", "Reachable", "Reachable"], rows  # no stale entry


def test_adding_nodes_leaves_the_others_alone(cluster: Cluster) -> None:
    proc = cluster.run("up", "--nodes", "4")
    assert "created worker1" in proc.stdout
    assert_verified(proc.stdout, WANTED)
    rows = _status_rows(cluster.run("status").stdout)
    assert rows["worker1"] == ("192.168.157.13", "running")
    assert {n: r[1] for n, r in rows.items()} == dict.fromkeys([*MANAGERS, "worker1"], "running")


def test_shrinking_removes_the_dropped_worker_from_the_swarm(cluster: Cluster) -> None:
    proc = cluster.run("up", "--nodes", "3", "--shrink")
    assert "removed worker1" in proc.stdout, proc.stdout[-3000:]
    assert_verified(proc.stdout, WANTED)
    assert f"{NAME}-worker1" not in cluster.containers()
    hosts = subprocess.run(
        ["docker", "exec", f"{NAME}-manager1", "docker", "node", "ls", "--format", "{{.Hostname}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert sorted(hosts) == list(MANAGERS)
    assert "worker1" not in _status_rows(cluster.run("status").stdout)


def test_destroy_leaves_nothing_behind(cluster: Cluster) -> None:
    cluster.run("destroy", "-f")
    assert cluster.containers() == []
    assert not cluster.docker_network_exists()
    assert not Path(cluster.root).exists()
