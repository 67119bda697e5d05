"""The packages' sources: decided once when a cluster is made (with the reason said), then kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from provisioner import providers, sources
from provisioner.errors import ProvisionError
from provisioner.preflight import checked_spec
from provisioner.spec import ClusterSpec, build_spec
from provisioner.workspace import Workspace


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Stand-ins for the two network probes: `answers` says which URLs answer; `asked` lists the calls."""
    state: dict[str, Any] = {"answers": set(), "asked": []}

    def unreachable(url: str, timeout: float = 5.0) -> str:
        state["asked"].append(url)
        return "" if any(url.startswith(a) for a in state["answers"]) else "no route to host"

    monkeypatch.setattr(sources, "unreachable", unreachable)
    return state


def vm(**extra: Any) -> ClusterSpec:
    return build_spec({"provider": "libvirt", **extra})


def test_new_vm_cluster_takes_the_repositories_that_answer(probes: dict[str, Any]) -> None:
    probes["answers"] = {sources.DOCKER_REPO, providers.PKGS_K8S_IO}
    spec, notes = sources.decide(vm(), None)
    assert (spec.runtime_source, spec.kube_source) == ("upstream", "upstream")
    assert notes == [
        f"container runtime packages: upstream, since Docker's repository {sources.DOCKER_REPO} answers; kept for this "
        "cluster's life",
        "Kubernetes packages: upstream, since pkgs.k8s.io answers; kept for this cluster's life",
    ]


def test_new_vm_cluster_falls_back_where_nothing_answers_and_says_why(probes: dict[str, Any]) -> None:
    spec, notes = sources.decide(vm(), None)
    assert (spec.runtime_source, spec.kube_source) == ("distro", "bundle")
    assert "does not answer here (no route to host): the distribution's packages" in notes[0]
    assert "pkgs.k8s.io does not answer here (no route to host)" in notes[1]


def test_container_nodes_ask_no_network(probes: dict[str, Any]) -> None:
    spec, notes = sources.decide(build_spec({"provider": "docker"}), None)
    assert (spec.runtime_source, spec.kube_source) == ("distro", "bundle")
    assert probes["asked"] == []
    assert len(notes) == 2


def test_a_live_cluster_keeps_its_sources_when_the_network_changes_and_asks_nothing(probes: dict[str, Any]) -> None:
    made, _ = sources.decide(vm(), None)  # nothing answered: distro and the bundle
    probes["answers"] = {sources.DOCKER_REPO, providers.PKGS_K8S_IO}
    probes["asked"].clear()
    again, notes = sources.decide(vm(), made)
    assert (again.runtime_source, again.kube_source) == ("distro", "bundle")
    assert notes == [] and probes["asked"] == []


INSTALLED = {"prepare", "runtime", "kube_packages"}


def test_naming_the_other_source_for_a_live_cluster_is_refused(probes: dict[str, Any]) -> None:
    made, _ = sources.decide(vm(), None)
    with pytest.raises(ProvisionError, match=r"installs its Kubernetes from bundle .* kube_source upstream") as exc:
        sources.decide(vm(kube_source="upstream"), made, INSTALLED)
    assert exc.value.exit_code == 2
    with pytest.raises(ProvisionError, match=r"container runtime from distro .* runtime_source upstream"):
        sources.decide(vm(runtime_source="upstream"), made, INSTALLED)
    same, _ = sources.decide(vm(kube_source="bundle", runtime_source="distro"), made, INSTALLED)
    assert (same.runtime_source, same.kube_source) == ("distro", "bundle")


def test_before_its_stage_ran_another_source_may_be_named(probes: dict[str, Any]) -> None:
    """`up --until runtime` made the nodes; Kubernetes was never installed, so its source is still open,
    while the runtime's is not."""
    made, _ = sources.decide(vm(), None)
    spec, notes = sources.decide(vm(kube_source="upstream"), made, {"prepare", "runtime"})
    assert (spec.runtime_source, spec.kube_source) == ("distro", "upstream") and notes == []
    with pytest.raises(ProvisionError, match="runtime_source upstream"):
        sources.decide(vm(runtime_source="upstream"), made, {"prepare", "runtime"})


def test_a_cluster_saved_with_auto_keeps_the_old_runtime_rule(probes: dict[str, Any]) -> None:
    """Made before the choice was recorded: Docker's repository on VMs, as that version chose."""
    old = vm()
    assert old.runtime_source == "auto"
    probes["answers"] = {providers.PKGS_K8S_IO}
    spec, notes = sources.decide(vm(), old)
    assert spec.runtime_source == "upstream" and sources.DOCKER_REPO not in probes["asked"]
    assert spec.kube_source == "upstream" and notes == ["Kubernetes packages: upstream, since pkgs.k8s.io answers; kept for "
                                                        "this cluster's life"]  # fmt: skip


def test_swarm_decides_only_the_runtime(probes: dict[str, Any]) -> None:
    spec, notes = sources.decide(vm(engine="swarm"), None)
    assert spec.runtime_source == "distro" and spec.kube_source == "auto" and len(notes) == 1


def test_explicit_sources_of_a_new_cluster_are_taken_without_asking(probes: dict[str, Any]) -> None:
    spec, notes = sources.decide(vm(runtime_source="upstream", kube_source="bundle"), None)
    assert (spec.runtime_source, spec.kube_source) == ("upstream", "bundle")
    assert notes == [] and probes["asked"] == []


def test_checked_spec_records_the_decision_in_the_spec_the_cluster_saves(
    probes: dict[str, Any], tmp_path: Path
) -> None:
    ws = Workspace(tmp_path / "ws")
    checked = checked_spec(ws, {"provider": "docker", "engine": "swarm", "network": "192.168.231.0/24"}, None, False)
    assert checked.spec.runtime_source == "distro"
    assert any(n.startswith("container runtime packages: distro") for n in checked.sources)
    assert not any("packages:" in n for n in checked.notes)
