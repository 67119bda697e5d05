"""Parsers of Vagrant's output, fed with saved output."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from provisioner import vagrant as vagrant_mod
from provisioner.errors import ProvisionError
from provisioner.vagrant import (
    Vagrant,
    cluster_key,
    ensure_cluster_key,
    last_error,
    machines_without_address,
    parse_progress_line,
    parse_ssh_config,
)

SSH_CONFIG = """Host cp1
  HostName 127.0.0.1
  User vagrant
  Port 2200
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no
  IdentityFile /work/.provision/vagrant/machines/cp1/docker/private_key
  IdentitiesOnly yes
  LogLevel FATAL
  PubkeyAcceptedKeyTypes +ssh-rsa
  HostKeyAlgorithms +ssh-rsa

Host worker1
  HostName 192.168.121.7
  User vagrant
  Port 22
  IdentityFile "/home/u/my dir/private_key"
"""


def test_parse_ssh_config() -> None:
    info = parse_ssh_config(SSH_CONFIG)
    assert set(info) == {"cp1", "worker1"}
    assert (info["cp1"].hostname, info["cp1"].port, info["cp1"].user) == ("127.0.0.1", 2200, "vagrant")
    assert info["cp1"].identity_file.endswith("cp1/docker/private_key")
    assert info["worker1"].identity_file == "/home/u/my dir/private_key"
    assert info["worker1"].port == 22


def test_parse_ssh_config_without_hostname_is_an_error() -> None:
    with pytest.raises(ProvisionError, match="no HostName for cp1"):
        parse_ssh_config("Host cp1\n  User vagrant\n")


def test_progress_lines() -> None:
    assert parse_progress_line("==> worker2: Creating the container...") == ("worker2", "Creating the container...")
    assert parse_progress_line("    worker2: Name: lab-worker2") is None


def test_last_error_prefers_error_lines(tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    log.write_text("==> cp1: Creating\nStderr: Error response from daemon: Address already in use\nsome tail\n")
    assert "Address already in use" in last_error(log)
    assert last_error(tmp_path / "missing.log") == "no output"


def test_last_error_names_the_machine_and_message_of_an_unexpected_error_not_its_backtrace(tmp_path: Path) -> None:
    frames = "".join(f"\tfrom /usr/share/gems/vagrant-libvirt/lib/x{i}.rb:{i}:in `call'\n" for i in range(80))
    log = tmp_path / "up.log"
    log.write_text(
        "==> manager1: Waiting for domain to get an IP address...\n"
        "An error occurred while executing multiple actions in parallel.\n"
        "An unexpected error occurred when executing the action on the\n"
        "'manager1' machine. Please report this as a bug:\n\n"
        "Timeout waiting for the domain's address (Fog::Errors::TimeoutError)\n\n"
        "/usr/share/gems/fog-core/lib/fog/core/wait_for.rb:11:in `wait_for'\n"
        + frames
        + "/usr/share/rubygems-integration/all/gems/vagrant-2.3.4/lib/vagrant/batch_action.rb:86:in `block (2 levels) in run'\n"
    )
    assert last_error(log) == "manager1: Timeout waiting for the domain's address (Fog::Errors::TimeoutError)"


def _fake_vagrant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "vagrant"
    fake.write_text("#!/bin/sh\n" + script)
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setattr(vagrant_mod, "LOCK_WAIT", 0.01)
    return tmp_path / "calls"


def test_destroy_waits_for_a_machine_locked_by_another_vagrant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_vagrant(
        tmp_path,
        monkeypatch,
        f"echo x >> {tmp_path}/calls\n[ $(wc -l < {tmp_path}/calls) -ge 3 ] && exit 0\n"
        'echo "Vagrant can\'t use the requested machine because it is locked! This"; exit 1\n',
    )
    Vagrant(tmp_path, "docker").destroy(tmp_path / "destroy.log")
    assert len(calls.read_text().split()) == 3


def test_other_vagrant_failures_are_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_vagrant(tmp_path, monkeypatch, f"echo x >> {tmp_path}/calls\necho 'The provider failed'; exit 1\n")
    with pytest.raises(ProvisionError, match="vagrant destroy failed"):
        Vagrant(tmp_path, "docker").destroy(tmp_path / "destroy.log")
    assert len(calls.read_text().split()) == 1


def test_cluster_key_is_made_once_with_private_modes(tmp_path: Path) -> None:
    key = ensure_cluster_key(tmp_path, "lab", create=True)
    assert key == cluster_key(tmp_path)
    pub = key.with_suffix(".pub")
    assert pub.read_text().startswith("ssh-ed25519 ") and pub.read_text().strip().endswith("provisioner-lab")
    assert key.stat().st_mode & 0o777 == 0o600
    assert key.parent.stat().st_mode & 0o777 == 0o700
    first = key.read_bytes()
    assert ensure_cluster_key(tmp_path, "lab", create=True) == key
    assert key.read_bytes() == first, "an existing key must be kept: the nodes trust it"


def test_cluster_key_not_made_for_a_cluster_that_has_machines(tmp_path: Path) -> None:
    assert ensure_cluster_key(tmp_path, "lab", create=False) is None
    assert not cluster_key(tmp_path).exists()


def test_lost_public_half_is_derived_from_the_private_key(tmp_path: Path) -> None:
    key = ensure_cluster_key(tmp_path, "lab", create=True)
    assert key is not None
    pub = key.with_suffix(".pub")
    old = pub.read_text().split()[:2]
    pub.unlink()
    first = key.read_bytes()
    assert ensure_cluster_key(tmp_path, "lab", create=False) == key
    assert key.read_bytes() == first
    assert pub.read_text().split()[:2] == old
    assert pub.stat().st_mode & 0o777 == 0o644


def test_up_is_retried_once_after_the_docker_network_race(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The docker provider creating a node network from several machines at once can fail one of
    them with "No such object"; a second `vagrant up` goes on. Other failures are not retried."""
    from provisioner import vagrant as vagrant_mod

    counter = tmp_path / "calls"
    fake = tmp_path / "bin" / "vagrant"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\n"
        f'echo x >> "{counter}"\n'
        f'if [ "$(wc -l < "{counter}")" -eq 1 ]; then echo "Stderr: Error: No such object: 1bd0fc"; exit 1; fi\n'
        "exit 0\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    monkeypatch.setattr(vagrant_mod, "LOCK_WAIT", 0.0)
    vg = vagrant_mod.Vagrant(tmp_path / "ws", "docker")
    vg.up(["cp1"], tmp_path / "machines.log")
    assert counter.read_text().count("x") == 2
    # a plain failure is reported at once
    fake.write_text("#!/bin/sh\necho 'Stderr: The box could not be found'\nexit 1\n")
    with pytest.raises(ProvisionError, match="vagrant up failed"):
        vg.up(["cp1"], tmp_path / "machines2.log")


def _running_setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docker_out: str, rc: int = 0
) -> tuple[Vagrant, Path]:
    """Two recorded docker machines, the last inventory, and a `docker` that prints `docker_out`."""
    root = tmp_path / "ws"
    for node, cid in (("cp1", "aaa"), ("worker1", "bbb")):
        d = root / "vagrant" / "machines" / node / "docker"
        d.mkdir(parents=True)
        (d / "id").write_text(cid + "\n")
    inventory = root / "inventory" / "hosts.yml"
    inventory.parent.mkdir(parents=True)
    hosts = {
        node: {
            "ansible_host": "127.0.0.1",
            "ansible_port": port,
            "ansible_user": "vagrant",
            "ansible_ssh_private_key_file": str(root / "ssh" / "id_ed25519"),
        }
        for node, port in (("cp1", 2200), ("worker1", 2201))
    }
    inventory.write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "docker").write_text(
        f"#!/bin/sh\necho \"$@\" > {tmp_path}/docker-args\nprintf '{docker_out}'\nexit {rc}\n"
    )
    (bindir / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return Vagrant(root, "docker"), inventory


def test_running_docker_machines_come_from_docker_and_the_last_inventory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vg, inventory = _running_setup(
        tmp_path,
        monkeypatch,
        'true [{"HostIp":"127.0.0.1","HostPort":"2200"}]\\ntrue [{"HostIp":"127.0.0.1","HostPort":"2201"}]\\n',
    )
    found = vg.running_docker_machines(["cp1", "worker1"], inventory)
    assert found is not None
    assert {n: (i.hostname, i.port, i.user) for n, i in found.items()} == {
        "cp1": ("127.0.0.1", 2200, "vagrant"),
        "worker1": ("127.0.0.1", 2201, "vagrant"),
    }
    assert (tmp_path / "docker-args").read_text().split()[-2:] == ["aaa", "bbb"]


@pytest.mark.parametrize(
    ("out", "rc", "nodes"),
    [
        ('true [{"HostIp":"127.0.0.1","HostPort":"2200"}]\\nfalse null\\n', 0, ["cp1", "worker1"]),  # a node stopped
        (
            'true [{"HostIp":"127.0.0.1","HostPort":"2200"}]\\ntrue [{"HostIp":"127.0.0.1","HostPort":"2299"}]\\n',
            0,
            ["cp1", "worker1"],
        ),  # SSH moved
        ("", 1, ["cp1", "worker1"]),  # a container is gone
        ('true [{"HostIp":"127.0.0.1","HostPort":"2200"}]\\n', 0, ["cp1", "worker1", "worker2"]),  # a node not made yet
    ],
)
def test_any_doubt_leaves_the_machines_to_vagrant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, out: str, rc: int, nodes: list[str]
) -> None:
    vg, inventory = _running_setup(tmp_path, monkeypatch, out, rc)
    assert vg.running_docker_machines(nodes, inventory) is None
    assert Vagrant(vg.provision_dir, "libvirt").running_docker_machines(["cp1"], inventory) is None


STUCK_UP = (
    "==> manager1: Starting domain.\n==> worker1: Starting domain.\n"
    "==> manager1: Waiting for domain to get an IP address...\n==> worker1: Waiting for domain to get an IP address...\n"
    "==> worker1: Waiting for SSH to become available...\n"
    "An unexpected error occurred when executing the action on the\n'manager1' machine. Please report this as a bug:\n"
)


def test_machines_left_waiting_for_an_address_are_named() -> None:
    assert machines_without_address(STUCK_UP) == ["manager1"]
    assert (
        machines_without_address("==> cp1: Waiting for domain to get an IP address...\n==> cp1: Machine booted\n") == []
    )


def test_a_libvirt_machine_that_got_no_address_is_powered_off_and_started_once_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stuck = tmp_path / "stuck.txt"
    stuck.write_text(STUCK_UP)
    calls = _fake_vagrant(
        tmp_path,
        monkeypatch,
        f'echo "$*" >> {tmp_path}/calls\n'
        f'case "$1" in up) [ $(grep -c "^up" {tmp_path}/calls) -ge 2 ] && exit 0; cat {stuck}; exit 1;; esac\nexit 0\n',
    )
    Vagrant(tmp_path, "libvirt").up(["manager1", "worker1"], tmp_path / "machines.log")
    lines = calls.read_text().splitlines()
    assert [ln.split()[0] for ln in lines] == ["up", "halt", "up"]
    assert lines[1] == "halt -f manager1"


def test_a_second_stuck_boot_fails_with_the_machine_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stuck = tmp_path / "stuck.txt"
    stuck.write_text(STUCK_UP)
    calls = _fake_vagrant(
        tmp_path, monkeypatch, f'echo "$*" >> {tmp_path}/calls\ncase "$1" in up) cat {stuck}; exit 1;; esac\nexit 0\n'
    )
    with pytest.raises(ProvisionError, match="vagrant up failed"):
        Vagrant(tmp_path, "libvirt").up(["manager1", "worker1"], tmp_path / "machines.log")
    assert [ln.split()[0] for ln in calls.read_text().splitlines()] == ["up", "halt", "up"]


def test_the_docker_provider_is_not_restarted_for_an_address(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stuck = tmp_path / "stuck.txt"
    stuck.write_text(STUCK_UP)
    calls = _fake_vagrant(tmp_path, monkeypatch, f'echo "$*" >> {tmp_path}/calls\ncat {stuck}; exit 1\n')
    with pytest.raises(ProvisionError):
        Vagrant(tmp_path, "docker").up(["manager1", "worker1"], tmp_path / "machines.log")
    assert len(calls.read_text().splitlines()) == 1


STATUS_OUT = (
    "1700000000,cp1,metadata,provider,docker\n1700000000,cp1,provider-name,docker\n"
    "1700000000,cp1,state,running\n1700000000,cp1,state-human-short,running\n"
)
# Vagrant's machine-readable error: a comma as %!(VAGRANT_COMMA), a line break as backslash-n.
STATUS_ERROR = (
    "1700000000,,ui,error,Docker isn't running\n"
    "1700000000,,error-exit,Vagrant::Errors::DockerNotRunning,"
    "Docker isn't running%!(VAGRANT_COMMA) or the daemon did not answer.\\nStart it.\n"
)


def test_machine_readable_error_reads_the_last_error_exit_line() -> None:
    assert vagrant_mod.machine_readable_error(STATUS_ERROR.encode()) == (
        "Docker isn't running, or the daemon did not answer. Start it."
    )
    assert vagrant_mod.machine_readable_error(STATUS_OUT) == ""


def test_status_is_asked_again_after_a_failure_and_says_vagrants_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ok").write_text(STATUS_OUT)
    (tmp_path / "error").write_text(STATUS_ERROR)
    calls = _fake_vagrant(
        tmp_path,
        monkeypatch,
        f"echo x >> {tmp_path}/calls\n"
        f"[ $(wc -l < {tmp_path}/calls) -ge 3 ] && {{ cat {tmp_path}/ok; exit 0; }}\n"
        f"cat {tmp_path}/error; exit 1\n",
    )
    (machine,) = Vagrant(tmp_path, "docker").status(pause=0)
    assert (machine.name, machine.state) == ("cp1", "running")
    assert len(calls.read_text().split()) == 3

    calls.unlink()
    with pytest.raises(
        ProvisionError, match=r"2 tries\): Docker isn't running, or the daemon did not answer\. Start it\."
    ):
        Vagrant(tmp_path, "docker").status(attempts=2, pause=0)
    assert len(calls.read_text().split()) == 2
