"""The stages of `up`, as data: each is one playbook, recorded in the state file when it finishes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from provisioner import REPO_ROOT

PLAYBOOKS = REPO_ROOT / "playbooks"


@dataclass(frozen=True)
class Stage:
    name: str
    playbook: str
    engines: tuple[str, ...]
    description: str
    kubernetes: bool = False  # needs kubelet (cgroup v2 on 1.35+) and the Kubernetes repositories
    # Where the stage runs when workers are added to a settled Kubernetes cluster (command/up.py):
    # "all" nodes, the "new" ones, the new ones and the control planes ("new+leads": the play needs
    # them), or "none" (cluster-wide work that new workers do not change).
    on_growth: str = "all"

    @property
    def path(self) -> Path:
        return PLAYBOOKS / self.playbook


STAGES: tuple[Stage, ...] = (
    Stage("prepare", "prepare.yml", ("kubernetes", "swarm"), "node preparation"),
    Stage("runtime", "runtime.yml", ("kubernetes", "swarm"), "container runtime", on_growth="new"),
    Stage("kube_packages", "kube_packages.yml", ("kubernetes",), "kubeadm, kubelet, kubectl", True, on_growth="new"),
    Stage("control_plane", "control_plane.yml", ("kubernetes",), "kubeadm init", True, on_growth="none"),
    Stage("cni", "cni.yml", ("kubernetes",), "Calico", True, on_growth="none"),
    Stage("join", "join.yml", ("kubernetes",), "kubeadm join", True, on_growth="new+leads"),
    Stage("addons", "addons.yml", ("kubernetes",), "add-ons (metrics, storage, ingress)", True, on_growth="none"),
    Stage("swarm", "swarm.yml", ("swarm",), "Docker Swarm"),
)


def stages_for(engine: str, available_only: bool = True) -> list[Stage]:
    """Stages of `engine` in order; with `available_only`, only those whose playbook exists."""
    return [s for s in STAGES if engine in s.engines and (not available_only or s.path.exists())]


def select(engine: str, only: str | None = None, start: str | None = None) -> list[Stage]:
    from provisioner.errors import ProvisionError

    stages = stages_for(engine)
    names = [s.name for s in stages]
    for wanted in (only, start):
        if wanted is not None and wanted not in names:
            raise ProvisionError(
                f"stage '{wanted}' does not exist for engine {engine}; stages are: {', '.join(names)}", exit_code=2
            )
    if only is not None:
        return [s for s in stages if s.name == only]
    if start is not None:
        return stages[names.index(start) :]
    return stages
