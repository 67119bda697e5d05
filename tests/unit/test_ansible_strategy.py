"""The Ansible strategy provision.py runs the stages with: Mitogen's by default, Ansible's on request."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from provisioner import REPO_ROOT
from provisioner.ansible import STRATEGY_ENV, ansible_env, strategy_env
from provisioner.errors import ProvisionError


def test_mitogen_is_the_default_and_its_strategy_plugin_is_on_disk() -> None:
    env = strategy_env({})
    assert env["ANSIBLE_STRATEGY"] == "mitogen_linear"
    plugin = Path(env["ANSIBLE_STRATEGY_PLUGINS"]) / "mitogen_linear.py"
    assert plugin.is_file(), plugin


def test_linear_on_request_names_no_plugin_directory() -> None:
    assert strategy_env({STRATEGY_ENV: "linear"}) == {"ANSIBLE_STRATEGY": "linear"}


def test_an_unknown_strategy_is_refused_with_the_choices() -> None:
    with pytest.raises(ProvisionError, match=r"PROVISION_ANSIBLE_STRATEGY='free'.*mitogen, linear"):
        strategy_env({STRATEGY_ENV: "free"})


def test_mitogen_asked_for_but_missing_is_refused_and_the_default_falls_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec

    def without_mitogen(name: str, package: str | None = None) -> object:
        return None if name == "ansible_mitogen" else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", without_mitogen)
    with pytest.raises(ProvisionError, match=r"mitogen package is not installed: run scripts/setup\.sh"):
        strategy_env({STRATEGY_ENV: "mitogen"})
    assert strategy_env({}) == {"ANSIBLE_STRATEGY": "linear"}


def test_the_stage_environment_carries_the_strategy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STRATEGY_ENV, raising=False)
    assert ansible_env(tmp_path)["ANSIBLE_STRATEGY"] == "mitogen_linear"
    monkeypatch.setenv(STRATEGY_ENV, "linear")
    assert ansible_env(tmp_path)["ANSIBLE_STRATEGY"] == "linear"


def test_ansible_loads_the_mitogen_strategy_and_runs_a_playbook_with_it(tmp_path: Path) -> None:
    """The plugin loads under the pinned ansible-core and runs tasks (against the implicit localhost,
    as the stages' tasks delegated to the controller run): a version of one that the other refused
    would fail here, not in a cluster's run."""
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.command: /bin/echo strategy-ok\n      register: out\n      changed_when: false\n"
        "    - ansible.builtin.assert:\n        that: out.stdout == 'strategy-ok'\n"
    )
    env = ansible_env(tmp_path)
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", ",", str(playbook)],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "ok=2" in proc.stdout
