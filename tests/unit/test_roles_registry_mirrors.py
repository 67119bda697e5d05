"""container_runtime's registry mirrors (tasks/registry-mirrors.yml, the hosts.toml template and the
config_path line of config.toml), run by Ansible on this machine into a temporary directory."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_playbooks_syntax import REPO, run_local_play

ROLE = REPO / "roles" / "container_runtime"
CA = "-----BEGIN CERTIFICATE-----\nMIIBdGVzdA==\n-----END CERTIFICATE-----"


def _converge(root: Path, mirrors: dict[str, Any], ca: str = "") -> None:
    play = [
        {
            "hosts": "all",
            "gather_facts": False,
            "tasks": [
                {
                    "ansible.builtin.include_role": {"name": "container_runtime", "tasks_from": "registry-mirrors.yml"},
                    "vars": {
                        "container_runtime_registry_mirrors": mirrors,
                        "container_runtime_registry_ca": ca,
                        "container_runtime_registry_config_dir": str(root / "certs.d"),
                    },
                }
            ],
        }
    ]
    inventory = {
        "all": {"hosts": {"node": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}
    }
    run_local_play(root, inventory, play)


def test_each_registry_gets_its_mirrors_in_order_with_the_ca_and_paths_kept(tmp_path: Path) -> None:
    mirrors = {
        "registry.k8s.io": ["https://mirror.invalid:5000/v2/registry.k8s.io", "https://second.invalid"],
        "docker.io": ["http://plain.invalid:5000"],
    }
    _converge(tmp_path, mirrors, CA)
    k8s = tomllib.loads((tmp_path / "certs.d" / "registry.k8s.io" / "hosts.toml").read_text())
    assert k8s["server"] == "https://registry.k8s.io"
    assert list(k8s["host"]) == mirrors["registry.k8s.io"]
    first = k8s["host"]["https://mirror.invalid:5000/v2/registry.k8s.io"]
    assert first["override_path"] is True and first["capabilities"] == ["pull", "resolve"]
    assert first["ca"] == str(tmp_path / "certs.d" / "registry.k8s.io" / "mirror-ca.crt")
    assert "override_path" not in k8s["host"]["https://second.invalid"]
    hub = tomllib.loads((tmp_path / "certs.d" / "docker.io" / "hosts.toml").read_text())
    assert hub["server"] == "https://registry-1.docker.io"
    assert CA in (tmp_path / "certs.d" / "docker.io" / "mirror-ca.crt").read_text()


def test_a_registry_left_out_loses_only_the_files_this_role_wrote(tmp_path: Path) -> None:
    _converge(tmp_path, {"registry.k8s.io": ["https://mirror.invalid"], "quay.io": ["https://mirror.invalid"]}, CA)
    users = tmp_path / "certs.d" / "ghcr.io"
    users.mkdir()
    (users / "hosts.toml").write_text('server = "https://ghcr.io"\n')  # the operator's own
    _converge(tmp_path, {"registry.k8s.io": ["https://mirror.invalid"]})
    assert (tmp_path / "certs.d" / "registry.k8s.io" / "hosts.toml").exists()
    assert not (tmp_path / "certs.d" / "quay.io" / "hosts.toml").exists()
    assert not (tmp_path / "certs.d" / "quay.io" / "mirror-ca.crt").exists()
    assert not (tmp_path / "certs.d" / "registry.k8s.io" / "mirror-ca.crt").exists()  # the CA was dropped
    assert (users / "hosts.toml").read_text() == 'server = "https://ghcr.io"\n'


@pytest.mark.parametrize(
    "mirrors",
    [
        {"registry.k8s.io": "https://mirror.invalid"},  # a string, not a list
        {"registry.k8s.io": ["mirror.invalid:5000"]},  # no scheme
        {"registry.k8s.io/sub": ["https://mirror.invalid"]},  # not a registry name
        {"registry.k8s.io": []},
        {"registry.k8s.io": ["https://mirror.invalid/k8s"]},  # a path that is not the registry API's
    ],
)
def test_malformed_mirrors_are_refused(tmp_path: Path, mirrors: dict[str, Any]) -> None:
    with pytest.raises(AssertionError, match="must map a registry name"):
        _converge(tmp_path, mirrors)
    assert not (tmp_path / "certs.d").exists()


@pytest.mark.parametrize("major", [1, 2])
def test_config_toml_names_the_hosts_directory_only_when_there_are_mirrors(tmp_path: Path, major: int) -> None:
    base = {
        "container_runtime_containerd_major": major,
        "container_runtime_cgroup_effective": "systemd",
        "container_runtime_snapshotter_effective": "",
        "container_runtime_restrict_oom_score_adj_effective": False,
    }
    tasks = [
        {
            "ansible.builtin.template": {"src": str(ROLE / "templates" / "containerd-config.toml.j2"),
                                         "dest": str(tmp_path / f"{name}.toml"), "mode": "0600"},
            "vars": {**base, "container_runtime_registry_mirrors": mirrors},
        }
        for name, mirrors in (("plain", {}), ("mirrored", {"quay.io": ["https://mirror.invalid"]}))
    ]  # fmt: skip
    play = [
        {"hosts": "all", "gather_facts": False, "vars_files": [str(ROLE / "defaults" / "main.yml")], "tasks": tasks}
    ]
    inventory = {
        "all": {"hosts": {"node": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}
    }
    run_local_play(tmp_path, inventory, play)
    plain = tomllib.loads((tmp_path / "plain.toml").read_text())
    mirrored = tomllib.loads((tmp_path / "mirrored.toml").read_text())
    table = "io.containerd.cri.v1.images" if major >= 2 else "io.containerd.grpc.v1.cri"
    assert "registry" not in plain["plugins"][table]
    assert mirrored["plugins"][table]["registry"] == {"config_path": "/etc/containerd/certs.d"}
