"""Issue 19: nothing the toolkit did not make is ever deleted, bad state directories and changes a
live cluster cannot take are refused before anything changes, and a damaged state can be cleaned up.

Each test drives the real CLI (`provision.py ...` in a subprocess, or cli.main where a stand-in for
docker is needed) against directories made in tmp_path; no machine is started."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from provisioner import cli, machines, preflight, providers
from provisioner.command import destroy as destroy_cmd
from provisioner.command import status as status_cmd
from provisioner.command.up import UpOptions
from provisioner.errors import ProvisionError
from provisioner.spec import build_spec
from provisioner.workspace import MARKER, DamagedState, Workspace

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "provision.py"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def _one_sentence(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def _made_workspace(root: Path, spec_text: str | None = None) -> Workspace:
    """A state directory as `up` leaves it (the files, no machines)."""
    ws = Workspace(root)
    ws.save_spec(build_spec({"nodes": 2, "provider": "docker"}), {"nodes": 2, "provider": "docker"})
    for sub in ("inventory", "logs", "vagrant/machines/cp1/docker", "ssh"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ws.inventory.write_text("all: {}\n")
    (root / "state.json").write_text("{}")
    (root / "kubeconfig").write_text("apiVersion: v1\n")
    if spec_text is not None:
        ws.spec_file.write_text(spec_text)
    return ws


# 1. destroy removes only what the toolkit made -------------------------------------------------


def test_destroy_refuses_a_directory_that_holds_no_cluster(tmp_path: Path) -> None:
    """It ran `rm -r` on the directory, notes and all, and said it removed a cluster."""
    mine = tmp_path / "p"
    mine.mkdir()
    (mine / "notes.txt").write_text("x")
    proc = _cli("--dir", str(mine), "destroy", "-f")
    line = _one_sentence(proc)
    assert proc.returncode == 2
    assert "is not a cluster's state directory" in line and "notes.txt" in line and "nothing was removed" in line
    assert (mine / "notes.txt").read_text() == "x"


def test_destroy_keeps_files_it_did_not_write(tmp_path: Path) -> None:
    ws = _made_workspace(tmp_path / "c")
    (ws.root / "notes.txt").write_text("mine")
    (ws.root / "inventory" / "hosts.yml").write_text("all: {}\n")
    out = io.StringIO()
    assert destroy_cmd.destroy(ws, force=True, out=out) == 0
    left = sorted(p.name for p in ws.root.iterdir())
    assert left == ["notes.txt"], left
    assert "kept in" in out.getvalue() and "notes.txt" in out.getvalue()


def test_destroy_of_a_whole_workspace_removes_the_directory(tmp_path: Path) -> None:
    ws = _made_workspace(tmp_path / "c")
    assert (ws.root / MARKER).exists()
    assert destroy_cmd.destroy(ws, force=True, out=io.StringIO()) == 0
    assert not ws.root.exists()


@pytest.mark.parametrize("command", [["destroy", "-f"], ["up", "--nodes", "1"], ["status"], ["plan"]])
def test_an_empty_dir_is_refused_not_taken_for_the_current_directory(tmp_path: Path, command: list[str]) -> None:
    """`--dir ""` (an unset shell variable) meant the current directory: destroy deleted it."""
    here = tmp_path / "project"
    here.mkdir()
    (here / "keep.txt").write_text("x")
    proc = _cli("--dir", "", *command, cwd=here)
    assert proc.returncode == 2 and "--dir is empty" in _one_sentence(proc)
    assert (here / "keep.txt").exists()


@pytest.mark.parametrize("where", ["/", "~", str(REPO), "/proc/provisioner-test"])
def test_roots_that_are_not_a_clusters_own_are_refused(where: str) -> None:
    for command in (["destroy", "-f"], ["up", "--nodes", "1"]):
        proc = _cli("--dir", where, *command)
        assert proc.returncode == 2, proc.stderr
        line = _one_sentence(proc)
        assert "--dir" in line and ("of its own" in line or "kernel's own" in line), line
    assert Path(REPO / "README.md").exists()


# 2. destroy says what it could not remove ----------------------------------------------------------


def test_destroy_on_a_file_says_nothing_was_removed(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("data")
    proc = _cli("--dir", str(path), "destroy", "-f")
    assert proc.returncode == 2 and "is a file" in _one_sentence(proc)
    assert path.read_text() == "data"


def test_destroy_that_cannot_remove_says_so_and_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only mount: the old destroy ignored every error and printed its success line."""
    ws = _made_workspace(tmp_path / "c")

    def read_only(self: Path, missing_ok: bool = False) -> None:
        raise OSError(30, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "unlink", read_only)
    out = io.StringIO()
    with pytest.raises(ProvisionError) as info:
        destroy_cmd.destroy(ws, force=True, out=out)
    assert info.value.exit_code == 1
    assert "could not remove" in info.value.message and "Read-only file system" in info.value.message
    assert "removed the machines" not in out.getvalue()
    assert ws.spec_file.exists()


# 3. a damaged cluster.json ---------------------------------------------------------------------------


DAMAGED = ["{}", "[1, 2]", '{"spec": {"name": "lab", "nod', '{"spec": {"name": "lab"}}', "\udcff"]


@pytest.mark.parametrize("text", DAMAGED)
def test_status_says_the_state_is_damaged_and_how_to_recover(tmp_path: Path, text: str) -> None:
    ws = _made_workspace(tmp_path / "c")
    ws.spec_file.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(DamagedState) as info:
        status_cmd.status(ws, io.StringIO())
    assert info.value.exit_code == 6
    assert "is damaged" in info.value.message and "destroy -f" in info.value.message
    proc = _cli("--dir", str(ws.root), "status")
    assert proc.returncode == 6 and "is damaged" in _one_sentence(proc)


@pytest.mark.parametrize("text", DAMAGED)
def test_destroy_cleans_up_a_damaged_cluster_by_its_machines_identity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    ws = _made_workspace(tmp_path / "c")
    ws.spec_file.write_bytes(text.encode("utf-8", "surrogateescape"))
    removed: list[list[str]] = []
    from provisioner import identity

    found = [
        identity.Machine("1", "lab-cp1", "lab", "id1", str(ws.root), ("192.168.56.0/24",)),
        identity.Machine("2", "lab-worker1", "lab", "id1", str(ws.root), ("192.168.56.0/24",)),
        identity.Machine("3", "lab-cp1x", "lab", "id2", "/srv/other", ("192.168.57.0/24",)),
    ]

    def fake_run(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        removed.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(
        "provisioner.machines.shutil.which", lambda tool: "/usr/bin/docker" if tool == "docker" else None
    )
    monkeypatch.setattr("provisioner.machines.subprocess.run", fake_run)
    monkeypatch.setattr(providers, "docker_machines", lambda: found)
    monkeypatch.setattr(providers, "docker_network_users", lambda _: {})
    out = io.StringIO()
    assert destroy_cmd.destroy(ws, force=True, out=out) == 0
    assert ["docker", "rm", "-f", "-v", "lab-cp1", "lab-worker1"] in removed
    assert ["docker", "network", "rm", "vagrant_network_192.168.56.0/24"] in removed
    assert not any("lab-cp1x" in c for c in removed)
    assert "damaged" in out.getvalue() and not ws.root.exists()


# 4. changes a live cluster cannot take ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"pod_cidr": "10.50.0.0/16"}, "pod_cidr 10.244.0.0/16, the spec now says 10.50.0.0/16"),
        ({"service_cidr": "10.112.0.0/12"}, "service_cidr 10.96.0.0/12, the spec now says 10.112.0.0/12"),
        ({"versions": {"kubernetes": "1.36"}}, "runs Kubernetes 1.37.2, the spec now says 1.36"),
        ({"versions": {"kubernetes": "1.37.1"}}, "runs Kubernetes 1.37.2, the spec now says 1.37.1"),
        ({"runtime": "containerd"}, "runtime docker, the spec now says containerd"),
    ],
)
def test_a_change_the_live_cluster_cannot_take_is_refused(change: dict[str, Any], fragment: str) -> None:
    old = build_spec({"nodes": 3, "provider": "docker"})
    new = build_spec({"nodes": 5, "provider": "docker", **change})
    with pytest.raises(ProvisionError) as info:
        preflight.refuse_incompatible_change(old, new)
    assert info.value.exit_code == 2 and fragment in info.value.message
    assert "destroy -f" in info.value.message


def test_a_newer_release_in_the_spec_points_at_upgrade_not_destroy() -> None:
    old = build_spec({"nodes": 3, "provider": "docker", "versions": {"kubernetes": "1.36.3"}})
    new = build_spec({"nodes": 3, "provider": "docker"})
    with pytest.raises(ProvisionError) as info:
        preflight.refuse_incompatible_change(old, new)
    message = info.value.message
    assert info.value.exit_code == 2 and "runs Kubernetes 1.36.3, the spec now says 1.37.2" in message
    assert "provision.py upgrade --kube-version 1.37.2" in message and "destroy" not in message


def test_growing_with_the_same_release_named_by_its_minor_is_fine() -> None:
    old = build_spec({"nodes": 3, "provider": "docker"})
    preflight.refuse_incompatible_change(old, build_spec({"nodes": 5, "versions": {"kubernetes": "1.37"}}))
    preflight.refuse_incompatible_change(old, build_spec({"nodes": 5, "versions": {"calico": "3.31.0"}}))


def test_up_with_a_new_pod_cidr_changes_nothing_on_record(tmp_path: Path) -> None:
    """`up --nodes 5 --pod-cidr ...` joined two workers and recorded a pod CIDR nothing used."""
    ws = _made_workspace(tmp_path / "c")
    before = ws.spec_file.read_bytes()
    proc = _cli("--dir", str(ws.root), "up", "--nodes", "5", "--pod-cidr", "10.50.0.0/16")
    assert proc.returncode == 2 and "pod_cidr 10.244.0.0/16" in _one_sentence(proc)
    assert ws.spec_file.read_bytes() == before


# 5. the state directory is checked before anything is built -----------------------------------------


def test_a_dir_that_is_a_file_is_refused_before_any_build(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("data")
    for command in ("up", "plan"):
        proc = _cli("--dir", str(path), command, "--nodes", "1")
        assert proc.returncode == 2 and "is a file" in _one_sentence(proc)
    below = _cli("--dir", str(path / "sub"), "up", "--nodes", "1")
    assert below.returncode == 2 and "is a file" in _one_sentence(below)


def test_a_read_only_dir_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.statvfs

    class ReadOnly:
        def __init__(self, st: os.statvfs_result) -> None:
            self.f_flag = st.f_flag | os.ST_RDONLY

    monkeypatch.setattr("provisioner.workspace.os.statvfs", lambda p: ReadOnly(real(p)))
    with pytest.raises(ProvisionError) as info:
        Workspace(tmp_path / "new").check_writable()
    assert info.value.exit_code == 2 and "read-only file system" in info.value.message


def test_up_refuses_a_directory_of_the_users_own_files(tmp_path: Path) -> None:
    mine = tmp_path / "docs"
    mine.mkdir()
    (mine / "report.odt").write_text("x")
    proc = _cli("--dir", str(mine), "up", "--nodes", "1")
    assert proc.returncode == 2 and "report.odt" in _one_sentence(proc)
    assert sorted(p.name for p in mine.iterdir()) == ["report.odt"]


# 7. plan makes every check up makes -------------------------------------------------------------------


def test_plan_refuses_a_provider_that_is_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from provisioner.command import plan as plan_cmd

    monkeypatch.setattr("provisioner.providers.shutil.which", lambda _: None)
    with pytest.raises(ProvisionError) as info:
        plan_cmd.plan(Workspace(tmp_path / "ws"), UpOptions(overrides={"provider": "docker"}), io.StringIO())
    assert info.value.exit_code == 3


def test_plan_refuses_a_missing_stack_file(tmp_path: Path) -> None:
    config = tmp_path / "spec.yml"
    config.write_text(f"engine: swarm\nstack: {tmp_path / 'none.yml'}\n")
    proc = _cli("--dir", str(tmp_path / "ws"), "plan", "--config", str(config))
    assert proc.returncode == 2 and "stack file" in _one_sentence(proc)
    assert not (tmp_path / "ws").exists()


def test_plan_refuses_a_release_the_bundle_does_not_know(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from provisioner.command import plan as plan_cmd

    monkeypatch.setattr("provisioner.providers.shutil.which", lambda _: "/usr/bin/docker")
    monkeypatch.setattr(providers, "docker_machines", lambda: [])
    monkeypatch.setattr(providers, "docker_answers", lambda: True, raising=False)
    monkeypatch.setattr(preflight, "check_networks", lambda spec: [])
    monkeypatch.setattr(providers, "choose", lambda *a, **k: providers.Choice("docker", "test"))
    opts = UpOptions(overrides={"provider": "docker", "versions": {"kubernetes": "1.36.2"}})
    with pytest.raises(ProvisionError) as info:
        plan_cmd.plan(Workspace(tmp_path / "ws"), opts, io.StringIO())
    assert info.value.exit_code == 2 and "--kube-version" in info.value.message


# 9. no lock files left behind -------------------------------------------------------------------------


def test_commands_leave_no_lock_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("provisioner.workspace.tempfile.gettempdir", lambda: str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    for args in (["destroy", "-f"], ["up", "--nodes", "0"], ["destroy", "-f"]):
        cli.main(["--dir", str(tmp_path / "ws"), *args])
    assert list((tmp_path / "tmp" / "provisioner-locks").iterdir()) == []


def test_the_lock_still_refuses_a_second_command(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "c")
    with ws.lock("up"), pytest.raises(ProvisionError) as info, Workspace(tmp_path / "c").lock("destroy"):
        pass
    assert "`provision.py up`" in info.value.message


# --until ----------------------------------------------------------------------------------------------


def test_until_names_a_stage_of_the_engine(tmp_path: Path) -> None:
    proc = _cli("--dir", str(tmp_path / "ws"), "up", "--engine", "swarm", "--until", "join")
    assert proc.returncode == 2 and "stage 'join' does not exist for engine swarm" in _one_sentence(proc)
    assert not (tmp_path / "ws").exists()


def test_damaged_state_blocks_up_with_the_way_out(tmp_path: Path) -> None:
    ws = _made_workspace(tmp_path / "c", spec_text="[1, 2]")
    proc = _cli("--dir", str(ws.root), "up")
    assert proc.returncode == 6 and "destroy -f" in _one_sentence(proc)
    assert json.loads(ws.spec_file.read_text()) == [1, 2]


def test_machines_found_by_directory_only_where_tools_exist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("provisioner.machines.shutil.which", lambda _: None)
    assert machines.Docker().clean_up_by_dir(tmp_path) == ([], "")
    assert machines.Libvirt().clean_up_by_dir(tmp_path) == ([], "")
    # Machines Vagrant recorded but that cannot be asked for: named, never taken as gone.
    for provider in ("docker", "libvirt", "virtualbox"):
        record = tmp_path / "vagrant" / "machines" / "cp1" / provider / "id"
        record.parent.mkdir(parents=True)
        record.write_text("abc123")
        removed, problem = machines.for_name(provider).clean_up_by_dir(tmp_path)
        assert (removed == [] and "abc123" in problem) or "1 " in problem, problem


def test_a_damaged_state_whose_machines_cannot_be_removed_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The review's case: destroy deleted vagrant/, the machines' only record, and said it was done."""
    ws = _made_workspace(tmp_path / "c", spec_text="{}")
    record = ws.root / "vagrant" / "machines" / "cp1" / "docker" / "id"
    record.write_text("f00d")
    monkeypatch.setattr("provisioner.machines.shutil.which", lambda _: None)
    with pytest.raises(ProvisionError) as info:
        destroy_cmd.destroy(ws, force=True, out=io.StringIO())
    assert info.value.exit_code == 1 and "docker is not installed" in info.value.message
    assert record.exists() and ws.spec_file.exists()


def test_another_tools_cluster_json_is_not_taken_for_ours(tmp_path: Path) -> None:
    """The review's case: any cluster.json made a directory ours, and destroy took its inventory/ and logs/."""
    theirs = tmp_path / "proj"
    (theirs / "inventory").mkdir(parents=True)
    (theirs / "inventory" / "prod.yml").write_text("all: {}\n")
    (theirs / "cluster.json").write_text('{"clusters": ["prod"]}')
    proc = _cli("--dir", str(theirs), "destroy", "-f")
    assert proc.returncode == 2 and "not a cluster's state directory" in _one_sentence(proc)
    assert (theirs / "inventory" / "prod.yml").exists() and (theirs / "cluster.json").exists()


def test_a_half_failed_destroy_can_run_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = _made_workspace(tmp_path / "c")
    real_rmtree = shutil.rmtree

    def stuck(path: Any, *args: Any, **kwargs: Any) -> None:
        if Path(path).name == "vagrant":
            raise OSError(13, "Permission denied", str(path))
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr("provisioner.command.destroy.shutil.rmtree", stuck)
    with pytest.raises(ProvisionError) as info:
        destroy_cmd.destroy(ws, force=True, out=io.StringIO())
    assert "vagrant" in info.value.message
    assert ws.is_workspace() and (ws.root / MARKER).exists()
    monkeypatch.setattr("provisioner.command.destroy.shutil.rmtree", real_rmtree)
    assert destroy_cmd.destroy(ws, force=True, out=io.StringIO()) == 0
    assert not ws.root.exists()


def test_commands_find_the_repository() -> None:
    """The split of cluster.py left REPO_ROOT pointing at provisioner/: reset found no playbook and the
    converge fingerprint hashed no role."""
    from provisioner.command import provision, up

    for module in (up, provision):
        assert (module.REPO_ROOT / "playbooks" / "reset.yml").exists()
        assert (module.REPO_ROOT / "roles").is_dir()


def test_an_empty_kube_version_is_refused_not_taken_for_the_default(tmp_path: Path) -> None:
    """`--kube-version ""` (an unset variable) silently meant the default release."""
    proc = _cli("--dir", str(tmp_path / "ws"), "plan", "--kube-version", "")
    assert proc.returncode == 2 and "versions.kubernetes" in _one_sentence(proc)


def test_a_calico_minor_is_refused_where_calico_comes_from_upstream() -> None:
    from provisioner import kubesource

    spec = build_spec({"provider": "docker", "kube_source": "upstream", "versions": {"calico": "3.31"}})
    with pytest.raises(ProvisionError) as info:
        kubesource.check_bundle_versions(spec)
    assert info.value.exit_code == 2 and "3.31.0" in info.value.message
    kubesource.check_bundle_versions(build_spec({"provider": "docker", "versions": {"calico": "3.31"}}))


def _saved_cluster(root: Path, versions: dict[str, str]) -> Workspace:
    ws = Workspace(root)
    made = build_spec({"nodes": 3, "provider": "docker"})
    ws.save_spec(dataclasses.replace(made, versions={**made.versions, **versions}), {"nodes": 3, "provider": "docker"})
    return ws


def test_a_live_cluster_keeps_its_release_when_the_default_moves_on(tmp_path: Path) -> None:
    """The review's case: inputs hold only what the user gave, so a cluster made at an older default
    release was refused once the default moved ("runs 1.36.6, the spec now says 1.37.2")."""
    ws = _saved_cluster(tmp_path / "c", {"kubernetes": "1.36.6"})
    spec, _ = preflight.resolve_spec(ws, {"nodes": "4"}, None)
    assert spec.versions["kubernetes"] == "1.36.6"
    preflight.refuse_incompatible_change(ws.saved_spec(), spec)


def test_the_same_release_named_by_its_minor_keeps_the_patch_the_cluster_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1.37 on a cluster at 1.37.2 passed, and the bundle would have resolved it to its newest patch."""
    ws = _saved_cluster(tmp_path / "c", {"kubernetes": "1.37.2"})
    monkeypatch.setattr(preflight, "check_networks", lambda spec: [])
    monkeypatch.setattr(providers, "choose", lambda *a, **k: providers.Choice("docker", "test"))
    monkeypatch.setattr("provisioner.kubesource.check_bundle_versions", lambda spec: None)
    monkeypatch.setattr(machines.Docker, "check_clear", lambda self, spec, root, cid: None)
    checked = preflight.checked_spec(ws, {"nodes": "4", "versions": {"kubernetes": "1.37"}}, None, False)
    assert checked.spec.versions["kubernetes"] == "1.37.2"


def test_an_upstream_cluster_needs_go_for_its_smoke_image_and_plan_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from provisioner import kubesource
    from provisioner.bundle import smoke

    monkeypatch.setattr(smoke, "archive_path", lambda version: tmp_path / "none.tar")
    monkeypatch.setattr("provisioner.bundle.source.shutil.which", lambda tool: None)
    spec = build_spec({"provider": "docker", "kube_source": "upstream"})
    with pytest.raises(ProvisionError) as info:
        kubesource.check_bundle_versions(spec)
    assert info.value.exit_code == 3 and "Go" in info.value.message
