"""Shrinking (issue 14.3): `up --nodes 3` after 5 left worker3 and worker4 running, unseen."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner.command import up as cluster
from provisioner.errors import ProvisionError
from provisioner.spec import build_spec
from provisioner.workspace import Workspace


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _saved(tmp_path: Path, **spec: Any) -> Workspace:
    ws = Workspace(tmp_path)
    ws.save_spec(build_spec(spec), spec)
    return ws


def _made(tmp_path: Path) -> Workspace:
    """A saved four-node cluster whose machines and inventory exist."""
    ws = _saved(tmp_path, nodes=4, provider="docker")
    (tmp_path / "vagrant").mkdir()
    ws.inventory.parent.mkdir(parents=True)
    ws.inventory.write_text("all: {}\n")
    return ws


def test_fewer_workers_without_confirmation_are_refused_naming_them(tmp_path: Path) -> None:
    ws = _saved(tmp_path, nodes=5, provider="docker")
    with pytest.raises(ProvisionError) as info:
        cluster._leaving_nodes(
            ws, build_spec({"nodes": 3, "provider": "docker"}), cluster.UpOptions(), io.StringIO(), io.StringIO()
        )
    assert info.value.exit_code == 2
    assert "5 -> 3 nodes: worker3, worker4 will be drained, deleted from Kubernetes" in info.value.message
    assert "--shrink" in info.value.message


def test_shrink_flag_confirms(tmp_path: Path) -> None:
    ws = _saved(tmp_path, nodes=5, provider="docker", engine="swarm")
    out = io.StringIO()
    names = cluster._leaving_nodes(
        ws,
        build_spec({"nodes": 3, "provider": "docker", "engine": "swarm"}),
        cluster.UpOptions(shrink=True),
        out,
        io.StringIO(),
    )
    assert names == ["worker3", "worker4"]
    assert "removed from the swarm" in out.getvalue()


def test_a_terminal_is_asked(tmp_path: Path) -> None:
    ws = _saved(tmp_path, nodes=4, provider="docker")
    spec = build_spec({"nodes": 3, "provider": "docker"})
    assert cluster._leaving_nodes(ws, spec, cluster.UpOptions(), io.StringIO(), _Tty("y\n")) == ["worker3"]
    with pytest.raises(ProvisionError):
        cluster._leaving_nodes(ws, spec, cluster.UpOptions(), io.StringIO(), _Tty("n\n"))


def test_managers_and_control_planes_are_refused(tmp_path: Path) -> None:
    ws = _saved(tmp_path, nodes=5, managers=3, provider="docker", engine="swarm")
    with pytest.raises(ProvisionError) as info:
        cluster._leaving_nodes(
            ws,
            build_spec({"nodes": 5, "managers": 1, "provider": "docker", "engine": "swarm"}),
            cluster.UpOptions(shrink=True),
            io.StringIO(),
            io.StringIO(),
        )
    assert "manager2, manager3, a manager" in info.value.message
    assert "only workers can be removed" in info.value.message


def test_growing_or_the_same_count_removes_nothing(tmp_path: Path) -> None:
    ws = _saved(tmp_path, nodes=3, provider="docker")
    for n in (3, 4):
        spec = build_spec({"nodes": n, "provider": "docker"})
        assert cluster._leaving_nodes(ws, spec, cluster.UpOptions(), io.StringIO(), io.StringIO()) == []


def test_removal_runs_on_the_old_inventory_before_the_new_spec_is_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The playbook and `vagrant destroy` need the machines that the old spec still lists."""
    from provisioner.ansible import StageRun
    from provisioner.progress import Progress
    from provisioner.vagrant import MachineStatus, SshInfo

    ws = _made(tmp_path)
    seen: dict[str, Any] = {}

    class FakeVagrant:
        def __init__(self, root: Path, provider: str) -> None:
            pass

        def status(self) -> list[MachineStatus]:
            names = [n.name for n in ws.saved_spec().nodes]
            return [MachineStatus(n, "running", "docker") for n in names]

        def ssh_config(self, nodes: list[str]) -> dict[str, SshInfo]:
            return {n: SshInfo(n, "127.0.0.1", 2200 + i, "vagrant", "/k") for i, n in enumerate(nodes)}

        def destroy(self, log: Path, nodes: list[str] | None = None) -> None:
            seen["destroyed"] = nodes
            seen["spec_nodes_at_destroy"] = len(ws.saved_spec().nodes)

    def fake_playbook(path: Path, inv: Path, *a: Any, **k: Any) -> StageRun:
        seen["playbook"] = path.name
        # A fresh inventory of the cluster as it still is: every node, with the toolkit's SSH options.
        hosts = yaml.safe_load(inv.read_text())["all"]["hosts"]
        seen["hosts"] = sorted(hosts)
        assert all("StrictHostKeyChecking=no" in h["ansible_ssh_common_args"] for h in hosts.values())
        seen["vars"] = k["extra_vars"]
        return StageRun()

    monkeypatch.setattr(cluster, "Vagrant", FakeVagrant)
    monkeypatch.setattr(cluster, "run_playbook", fake_playbook)
    out = io.StringIO()
    cluster._remove_nodes(ws, ["worker3"], Progress(out), {}, False, out)
    assert seen == {
        "playbook": "remove_nodes.yml",
        "vars": {"cluster_leave_nodes": ["worker3"]},
        "hosts": ["cp1", "worker1", "worker2", "worker3"],
        "destroyed": ["worker3"],
        "spec_nodes_at_destroy": 4,
    }


def test_a_second_changing_command_on_the_same_cluster_is_refused(tmp_path: Path) -> None:
    """Two `up` runs on one state directory overwrote each other's state (a failed stage was lost)."""
    ws = Workspace(tmp_path / "c")
    with ws.lock("up"):
        with pytest.raises(ProvisionError) as info, Workspace(tmp_path / "c").lock("up"):
            pass
        assert "`provision.py up` (pid " in info.value.message
        with Workspace(tmp_path / "other").lock("up"):
            pass
    with ws.lock("destroy"):
        pass
    assert not ws.root.exists()


def test_shrinking_with_the_first_control_plane_stopped_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Destroying the workers' machines then would leave them in Kubernetes as NotReady nodes."""
    from provisioner.progress import Progress
    from provisioner.vagrant import MachineStatus

    ws = _made(tmp_path)

    class FakeVagrant:
        def __init__(self, root: Path, provider: str) -> None:
            pass

        def status(self) -> list[MachineStatus]:
            return [
                MachineStatus(n.name, "stopped" if n.name == "cp1" else "running", "docker")
                for n in ws.saved_spec().nodes
            ]

        def destroy(self, log: Path, nodes: list[str] | None = None) -> None:
            raise AssertionError("nothing may be destroyed")

    monkeypatch.setattr(cluster, "Vagrant", FakeVagrant)
    with pytest.raises(ProvisionError) as info:
        cluster._remove_nodes(ws, ["worker3"], Progress(io.StringIO()), {}, False, io.StringIO())
    assert info.value.message.startswith("cp1 is stopped, and the cluster forgets leaving nodes through it")
