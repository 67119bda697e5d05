"""SSH host key checking: on for everyone (ansible.cfg, the sample inventory of real servers), off
only for the toolkit's own nodes, through the inventory provision.py generates (Ansible and testinfra)."""

from __future__ import annotations

import configparser
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner import verify
from provisioner.inventory import build_inventory, write_inventory
from provisioner.spec import build_spec
from provisioner.vagrant import SshInfo

REPO = Path(__file__).resolve().parents[2]
OFF_OPTIONS = ("StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null")


def _ssh(names: list[str]) -> dict[str, SshInfo]:
    return {n: SshInfo(n, "127.0.0.1", 2200 + i, "vagrant", f"/k/{n}") for i, n in enumerate(names)}


def _items(data: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (dotted key, value) of a YAML document, nested ones included."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield f"{path}.{key}".lstrip("."), value
            yield from _items(value, f"{path}.{key}")
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _items(value, f"{path}[{i}]")


def test_ansible_cfg_keeps_host_key_checking_on() -> None:
    text = (REPO / "ansible.cfg").read_text(encoding="utf-8")
    cfg = configparser.ConfigParser()
    cfg.read_string(text)
    assert cfg.getboolean("defaults", "host_key_checking", fallback=True) is True
    ssh_args = cfg.get("ssh_connection", "ssh_args")
    for option in OFF_OPTIONS:
        assert option not in text, f"ansible.cfg turns host key checking off for every host ({option})"
    for kept in ("ControlMaster=auto", "ControlPersist=", "ServerAliveInterval=", "IdentitiesOnly=yes"):
        assert kept in ssh_args


@pytest.mark.parametrize("engine", ["kubernetes", "swarm"])
def test_generated_inventory_turns_host_key_checking_off_for_each_node(engine: str, tmp_path: Path) -> None:
    spec = build_spec({"engine": engine, "provider": "docker"})
    names = [n.name for n in spec.nodes]
    path = write_inventory(build_inventory(spec, _ssh(names), tmp_path), tmp_path / "hosts.yml")
    hosts = yaml.safe_load(path.read_text(encoding="utf-8"))["all"]["hosts"]
    assert set(hosts) == set(names)
    for host in hosts.values():
        assert host["ansible_host_key_checking"] is False
        for option in OFF_OPTIONS:
            assert option in host["ansible_ssh_common_args"]


def test_sample_inventory_for_real_servers_keeps_host_key_checking_on() -> None:
    sample = REPO / "inventory" / "sample"
    files = sorted(sample.rglob("*.yml"))
    assert files
    for file in files:
        for key, value in _items(yaml.safe_load(file.read_text(encoding="utf-8"))):
            name = key.rsplit(".", 1)[-1]
            assert not (name.endswith("host_key_checking") and value in (False, "false", "False", "no")), (file, key)
            if isinstance(value, str):
                assert not any(o in value for o in OFF_OPTIONS), (file, key)


@pytest.mark.parametrize("common_args_in_env", ["", "-o ConnectTimeout=30"])
def test_verify_connects_to_nodes_without_checking_host_keys(
    common_args_in_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """testinfra (verify) builds its ssh command from ansible.cfg's ssh_args, then ANSIBLE_SSH_COMMON_ARGS
    from the environment or else the inventory's ansible_ssh_common_args, then the extra args: the
    nodes' options must survive that, and the shared ControlPath too."""
    from testinfra.utils.ansible_runner import AnsibleRunner

    spec = build_spec({"engine": "swarm", "provider": "docker", "nodes": 1})
    inventory = write_inventory(build_inventory(spec, _ssh(["manager1"]), tmp_path), tmp_path / "hosts.yml")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("ANSIBLE_SSH_EXTRA_ARGS", raising=False)
    if common_args_in_env:
        monkeypatch.setenv("ANSIBLE_SSH_COMMON_ARGS", common_args_in_env)
    else:
        monkeypatch.delenv("ANSIBLE_SSH_COMMON_ARGS", raising=False)
    for key, value in verify.testinfra_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    host = AnsibleRunner(str(inventory)).get_host("manager1")
    assert host is not None
    args = str(host.backend.ssh_extra_args)
    for option in (*OFF_OPTIONS, "ControlPath=", *common_args_in_env.split()):
        assert option in args, args
