"""Where a cluster's packages come from, decided once, when the cluster is created, and kept.

Two choices are `auto` by default: the container runtime's packages (`runtime_source`: Docker's
repository, `upstream`, or the distribution's, `distro`) and Kubernetes' (`kube_source`: pkgs.k8s.io
or a package mirror, `upstream`, or the offline bundle, `bundle`). `auto` asks whether the repository
answers from this host (VM nodes reach what the host reaches, through its NAT) and falls back to what
needs no network, saying which it took and why, once, before anything is made. The spec saved with the
cluster holds the answer, so a later `up` neither asks again nor moves the cluster from one source to
the other when the network changes; naming the other source explicitly is refused (the nodes' packages
would be swapped under a running cluster).
"""

from __future__ import annotations

import dataclasses
import urllib.error
import urllib.request

from provisioner.errors import ProvisionError
from provisioner.spec import ClusterSpec

# Docker's package repository, as the container_runtime role reads it (container_runtime_docker_repo_base).
DOCKER_REPO = "https://download.docker.com/linux/"


def unreachable(url: str, timeout: float = 5.0) -> str:
    """ "" when URL answers from this host (an HTTP error page counts as an answer), else why not."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return ""
    except urllib.error.HTTPError:
        return ""
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))


def _runtime_choice(spec: ClusterSpec) -> tuple[str, str]:
    """(upstream | distro, why) for a new cluster whose runtime_source is auto."""
    if spec.provider == "docker":
        return "distro", "container nodes run the distribution's docker.io and containerd, baked into the node image"
    why = unreachable(DOCKER_REPO)
    if why:
        return "distro", f"Docker's repository {DOCKER_REPO} does not answer here ({why}): the distribution's packages"
    return "upstream", f"Docker's repository {DOCKER_REPO} answers"


def _kube_choice(spec: ClusterSpec) -> tuple[str, str]:
    from provisioner.kubesource import kube_source_choice

    return kube_source_choice(spec)


def decide(spec: ClusterSpec, old: ClusterSpec | None, ran: set[str] | None = None) -> tuple[ClusterSpec, list[str]]:
    """The spec with runtime_source and (Kubernetes) kube_source concrete, and what to say about it.

    `old` is the saved spec of the live cluster (None for a new one), `ran` the stages that have run on
    it (done or failed). Its concrete choices are kept where this spec says auto, and refused where
    this spec names the other source once the stage that installs from it (runtime, kube_packages) has
    run; before that nothing was installed from it, and the named source is taken. A cluster saved
    before the choice was recorded (`auto` in its saved spec) keeps what that version chose the same
    way: the runtime by the old rule (distro in container nodes, Docker's repository on VMs), Kubernetes
    by asking once more; the answer is recorded from then on."""
    notes: list[str] = []
    changes: dict[str, str] = {}
    fields = [("runtime_source", "container runtime", "runtime", _runtime_choice)]
    if spec.engine == "kubernetes":
        fields.append(("kube_source", "Kubernetes", "kube_packages", _kube_choice))
    for attr, what, stage, choose in fields:
        wanted = getattr(spec, attr)
        kept = getattr(old, attr) if old is not None else "auto"
        if old is not None and kept == "auto" and attr == "runtime_source":
            kept = old.effective_runtime_source
        if kept != "auto" and (wanted == "auto" or stage in (ran or set())):
            if wanted not in ("auto", kept):
                raise ProvisionError(
                    f"this cluster installs its {what} from {kept} (decided when it was made), the spec now says "
                    f"{attr} {wanted}; a live cluster does not swap its packages' source under its nodes: go back to "
                    f"{kept} (or auto), or `destroy -f` and `up` with {wanted}",
                    exit_code=2,
                )
            changes[attr] = kept
            continue
        if wanted != "auto":
            continue
        choice, why = choose(spec)
        changes[attr] = choice
        notes.append(f"{what} packages: {choice}, since {why}; kept for this cluster's life")
    decided = dataclasses.replace(
        spec,
        runtime_source=changes.get("runtime_source", spec.runtime_source),
        kube_source=changes.get("kube_source", spec.kube_source),
    )
    return decided, notes
