"""`provision.py upgrade`: the release steps it allows, what in a running cluster stops it before
anything changes, and how the command refuses what it cannot do (the integration lane,
tests/integration/test_kubernetes_ha.py, runs a real one)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioner import kubesource
from provisioner.command import up, upgrade
from provisioner.errors import ProvisionError
from provisioner.kube import KubeConfigError
from provisioner.kube import upgrade as rules
from provisioner.spec import build_spec
from provisioner.state import State
from provisioner.workspace import Workspace

releases = st.tuples(st.integers(1, 1), st.integers(20, 45), st.integers(0, 20))


def _name(v: tuple[int, int, int]) -> str:
    return ".".join(map(str, v))


@given(releases, releases)
def test_only_the_next_minor_or_a_newer_patch_is_allowed(cur: tuple[int, int, int], want: tuple[int, int, int]) -> None:
    allowed = want == cur or (want[:2] == cur[:2] and want > cur) or (want[1] == cur[1] + 1)
    if not allowed:
        with pytest.raises(KubeConfigError) as info:
            rules.upgrade_step(_name(cur), "v" + _name(want))
        message = info.value.message
        assert ("downgrade" in message) if want < cur else (f"next step is {cur[0]}.{cur[1] + 1}" in message)
        return
    step = rules.upgrade_step(_name(cur), "v" + _name(want))
    assert step == ("none" if want == cur else "patch" if want[1] == cur[1] else "minor")


def test_a_malformed_release_is_refused() -> None:
    with pytest.raises(KubeConfigError, match="not a Kubernetes release"):
        rules.upgrade_step("1.37", "1.37.2")


def _node(name: str, ip: str, kubelet: str, ready: str = "True", annotations: dict[str, str] | None = None) -> Any:
    return {
        "metadata": {"name": name, "annotations": annotations or {}},
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": ready, "reason": "KubeletNotReady" if ready != "True" else ""}],
            "nodeInfo": {"kubeletVersion": kubelet},
        },
    }


def test_a_node_not_ready_or_outside_the_skew_blocks_the_upgrade_naming_it() -> None:
    nodes = {
        "items": [
            _node("cp1", "10.0.0.10", "v1.36.3"),
            _node("w1", "10.0.0.11", "v1.37.2"),  # moved by an interrupted run: fine
            _node("w2", "10.0.0.12", "v1.36.3", ready="False"),
            _node("w3", "10.0.0.13", "v1.35.4"),
            _node("w4", "10.0.0.14", "v1.38.0"),
        ]
    }
    problems = rules.upgrade_blockers(nodes, "1.37.2")
    assert len(problems) == 3
    assert problems[0].startswith("node w2 is not Ready (KubeletNotReady)")
    assert "node w3 runs kubelet v1.35.4, more than one minor behind" in problems[1]
    assert "node w4 runs kubelet v1.38.0, newer than the target v1.37.2" in problems[2]
    assert rules.upgrade_blockers({"items": nodes["items"][:2]}, "1.37.2") == []
    assert rules.nodes_behind(nodes, "1.37.2") == [
        "node cp1 runs kubelet v1.36.3",
        "node w2 runs kubelet v1.36.3",
        "node w3 runs kubelet v1.35.4",
        "node w4 runs kubelet v1.38.0",
    ]


def test_nodes_are_found_by_address_and_only_the_ones_the_role_cordoned_are_uncordoned() -> None:
    mark = "provisioner.local/upgrade-drained"
    nodes = {
        "items": [
            _node("cp1", "10.0.0.10", "v1.37.2"),
            _node("w1", "10.0.0.11", "v1.37.2", annotations={mark: "v1.37.2"}),
            _node("w2", "10.0.0.12", "v1.36.3", annotations={"other": "x"}),
        ]
    }
    assert rules.node_name_for_ip(nodes, "10.0.0.12") == "w2"
    with pytest.raises(KubeConfigError, match=r"no node of the cluster has the address 10\.0\.0\.99"):
        rules.node_name_for_ip(nodes, "10.0.0.99")
    assert rules.marked_nodes(nodes, mark) == ["w1"]
    assert rules.marked_nodes(nodes, mark, ["w2"]) == []
    assert rules.marked_nodes(nodes, mark, ["w1"]) == ["w1"]


def test_the_static_pods_release_is_read_from_the_manifest_image() -> None:
    manifest = (
        "spec:\n  containers:\n  - command:\n    - kube-apiserver\n    image: registry.k8s.io/kube-apiserver:v1.36.3\n"
    )
    assert rules.static_pod_release(manifest) == "1.36.3"
    assert rules.static_pod_release("spec: {}") == ""


def _workspace(tmp_path: Path, spec: dict[str, Any], joined: bool = True) -> Workspace:
    ws = Workspace(tmp_path / "ws")
    ws.save_spec(build_spec({"nodes": 3, "provider": "docker", **spec}), {})
    ws.inventory.parent.mkdir(parents=True, exist_ok=True)
    ws.inventory.write_text("all: {}\n", encoding="utf-8")
    state = State.load(ws.state_file)
    if joined:
        state.mark("join", "done", 1.0)
    state.save()
    return ws


@pytest.mark.parametrize(
    ("spec", "joined", "target", "message"),
    [
        ({"engine": "swarm"}, True, "1.37", "upgrade is for the kubernetes engine"),
        ({"versions": {"kubernetes": "1.36.3"}}, False, "1.37", "this cluster has not formed yet"),
        ({"versions": {"kubernetes": "1.37.2"}}, True, "1.36", "kubeadm does not downgrade"),
        ({"versions": {"kubernetes": "1.37.2"}}, True, "1.35", "the bundle knows Kubernetes 1.36.3, 1.37.2, not 1.35"),
        # From pkgs.k8s.io the release is named in full, and the skew rules hold the same.
        (
            {"versions": {"kubernetes": "1.36.3"}, "kube_source": "upstream"},
            True,
            "1.37",
            r"upgrades from pkgs\.k8s\.io, so name the release in full",
        ),
        (
            {"versions": {"kubernetes": "1.36.3"}, "kube_source": "upstream"},
            True,
            "1.38.0",
            r"the next step is 1\.37",
        ),
    ],
)
def test_the_command_refuses_before_anything_changes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    spec: dict[str, Any],
    joined: bool,
    target: str,
    message: str,
) -> None:
    monkeypatch.setattr(kubesource, "host_cgroup_version", lambda: 2)
    ws = _workspace(tmp_path, spec, joined)
    before = sorted(p.name for p in ws.root.iterdir())
    with pytest.raises(ProvisionError, match=message) as info:
        upgrade.upgrade(ws, target, out=io.StringIO())
    assert info.value.exit_code in (1, 2)
    assert sorted(p.name for p in ws.root.iterdir()) == before  # nothing made, nothing built


def test_up_refuses_a_cluster_whose_upgrade_stopped_part_way(tmp_path: Path) -> None:
    state = State.load(tmp_path / "state.json")
    up.unfinished_upgrade(state)  # none: nothing to refuse
    state.mark("upgrade", "failed", 3.0, message="to 1.37.2: stage upgrade failed on w1")
    with pytest.raises(ProvisionError, match=r"`provision.py upgrade --kube-version 1\.37\.2` \(it resumes"):
        up.unfinished_upgrade(state)


PACKAGES_INDEX = """\
Package: kubeadm
Version: 1.37.2-1.1
Architecture: amd64

Package: kubelet
Version: 1.37.2-1.1

Package: kubelet
Version: 1.37.3-1.1

Package: kubectl
Version: 1.37.20-1.1
"""


def test_the_repository_index_must_carry_each_package_at_the_target_release() -> None:
    assert rules.repo_release_missing(PACKAGES_INDEX, "1.37.2") == ["kubectl"]  # 1.37.20 is another release
    assert rules.repo_release_missing(PACKAGES_INDEX, "1.37.3") == ["kubeadm", "kubectl"]
    assert rules.repo_release_missing("", "1.37.2") == ["kubelet", "kubeadm", "kubectl"]
    assert rules.repo_release_missing(PACKAGES_INDEX, "1.37.2", ["kubeadm", "kubelet"]) == []


def test_the_newest_build_of_the_target_release_is_taken_from_apt_cache_madison() -> None:
    madison = """\
   kubeadm | 1.37.20-1.1 | http://192.168.156.1:4000/core:/stable:/v1.37/deb  Packages
   kubeadm | 1.37.2-1.10 | http://192.168.156.1:4000/core:/stable:/v1.37/deb  Packages
   kubeadm | 1.37.2-1.9 | http://192.168.156.1:4000/core:/stable:/v1.37/deb  Packages
   kubeadm | 1.36.3-1.1 | http://192.168.156.1:4000/core:/stable:/v1.36/deb  Packages
"""
    assert rules.newest_build(madison, "1.37.2") == "1.37.2-1.10"
    assert rules.newest_build(madison, "1.36.3") == "1.36.3-1.1"
    assert rules.newest_build(madison, "1.37.5") == ""


def test_workers_pull_only_what_is_not_a_control_plane_static_pod() -> None:
    listed = [
        "registry.k8s.io/kube-apiserver:v1.37.2",
        "registry.k8s.io/kube-controller-manager:v1.37.2",
        "registry.k8s.io/kube-scheduler:v1.37.2",
        "registry.k8s.io/kube-proxy:v1.37.2",
        "registry.k8s.io/coredns/coredns:v1.13.1",
        "registry.k8s.io/pause:3.10.2",
        "registry.k8s.io/etcd:3.6.5-0",
    ]
    assert rules.worker_images(listed) == listed[3:6]
    assert rules.worker_images([]) == []


def test_a_run_refused_by_its_checks_is_told_apart_from_one_that_stopped_part_way(tmp_path: Path) -> None:
    events = tmp_path / "upgrade.events.jsonl"
    check = json.dumps({"event": "play", "name": "Upgrade | checks, before anything changes"})
    images = json.dumps({"event": "play", "name": "Upgrade | the target release's images on every node"})
    result = json.dumps({"event": "result", "host": "cp1", "status": "failed"})
    events.write_text("\n".join([check, result]) + "\n")
    assert upgrade.only_checks_ran(events)
    events.write_text("\n".join([check, images, result, "not json"]) + "\n")
    assert not upgrade.only_checks_ran(events)
    events.write_text("")
    assert not upgrade.only_checks_ran(events)  # nothing known: taken as part-way
    assert not upgrade.only_checks_ran(tmp_path / "missing.jsonl")
