"""The checks that run before anything is made: the spec resolved from defaults, saved inputs, file and
flags; its networks against the host; the stack file; changes a live cluster cannot take."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioner import hostnet
from provisioner.errors import ProvisionError
from provisioner.spec import DEFAULT_SWARM_POOL, ClusterSpec, build_spec
from provisioner.state import State
from provisioner.workspace import Workspace


@dataclass(frozen=True)
class Checked:
    """A spec that passed every check made before anything is created, its provider decided."""

    spec: ClusterSpec
    inputs: dict[str, Any]
    notes: list[str]  # to print: warnings that do not refuse
    provider_reason: str  # why provider auto chose what it did ("" when the provider was given or kept)
    sources: list[str] = dataclasses.field(default_factory=list)  # the package sources decided now, and why


def checked_spec(ws: Workspace, overrides: dict[str, Any], config: Path | None, prefer_speed: bool) -> Checked:
    """Every check `up` makes before it builds or creates anything, in one place so that `plan` makes
    the same ones: the state directory, the spec, its networks against the host, the stack file,
    changes the live cluster cannot take, the provider, the releases the bundle knows, and the names
    and networks other clusters hold."""
    from provisioner import machines, providers, sources
    from provisioner.kubesource import check_bundle_versions

    ws.check_writable()
    spec, inputs = resolve_spec(ws, overrides, config)
    notes = check_networks(spec)
    check_stack(spec)
    saved = ws.load_saved()
    reason = ""
    if saved is not None:
        old = ClusterSpec.from_dict(saved["spec"])
        refuse_incompatible_change(old, spec)
        if old.engine == "kubernetes" and spec.versions["kubernetes"] != old.versions["kubernetes"]:
            # The same release named another way (1.37 for 1.37.2): the cluster keeps the one it runs,
            # rather than the newest patch of that minor the bundle may know by now.
            spec = dataclasses.replace(spec, versions={**spec.versions, "kubernetes": old.versions["kubernetes"]})
        if spec.provider == "auto":
            spec = spec.with_provider(old.provider)
    if spec.provider == "auto":
        choice = providers.choose("auto", prefer_speed)
        spec, reason = spec.with_provider(choice.provider), choice.reason
    else:
        providers.choose(spec.provider)
    ran = {name for name, rec in State.load(ws.state_file).stages.items() if rec.status in ("done", "failed")}
    spec, decided = sources.decide(spec, ClusterSpec.from_dict(saved["spec"]) if saved is not None else None, ran)
    check_bundle_versions(spec)
    machines.for_name(spec.provider).check_clear(spec, ws.root, ws.cluster_id())
    return Checked(spec, inputs, notes, reason, decided)


def resolve_spec(ws: Workspace, overrides: dict[str, Any], config: Path | None) -> tuple[ClusterSpec, dict[str, Any]]:
    """Defaults < the saved inputs of an existing cluster < the spec file < the flags."""
    from provisioner.spec import check_engine_fields, load_file

    saved = ws.load_saved()
    inputs: dict[str, Any] = dict(saved.get("inputs", {})) if saved else {}
    given: dict[str, Any] = load_file(config) if config is not None else {}
    given.update({k: v for k, v in overrides.items() if v is not None})
    inputs.update(given)
    if saved is not None and isinstance(inputs.get("versions", {}), dict):
        # A live cluster keeps the releases it runs (the saved spec holds them resolved, e.g. 1.37.2)
        # where this run names none: the toolkit's default moving on is no reason to change them.
        live = {k: v for k, v in saved["spec"].get("versions", {}).items() if isinstance(v, str)}
        now = given.get("versions")
        inputs["versions"] = {**live, **(now if isinstance(now, dict) else {})}
    spec = build_spec(inputs)
    # Only what this run gave: a stored value the user cannot drop with a flag is not refused again.
    check_engine_fields(spec.engine, set(given))
    return spec, inputs


def check_networks(spec: ClusterSpec) -> list[str]:
    """Refuse the spec's ranges that overlap the host's networks: the node network, and the ranges of
    the engine (pod and service CIDRs for kubernetes, the overlay address pool for swarm). Returns
    notes to print: Docker's default swarm pool overlapping a host network is only warned about."""
    host = hostnet.host_networks()
    named = {"network": spec.network}
    if spec.engine == "kubernetes":
        named |= {"pod_cidr": spec.pod_cidr, "service_cidr": spec.service_cidr}
    hostnet.check_against_host(named, host, own_node_network=spec.network)
    if spec.engine != "swarm":
        return []
    chosen = spec.swarm_address_pool != DEFAULT_SWARM_POOL
    note = hostnet.check_swarm_pool(spec.swarm_address_pool, chosen, spec.network, host)
    return [note] if note else []


def check_stack(spec: ClusterSpec) -> Path | None:
    """The compose file of `--stack`, checked before anything is created."""
    if not spec.stack:
        return None
    if spec.engine != "swarm":
        raise ProvisionError("--stack deploys a compose file on a swarm; use it with --engine swarm", exit_code=2)
    stack = Path(spec.stack).expanduser().resolve()
    if not stack.is_file():
        raise ProvisionError(f"stack file {spec.stack} does not exist; give the path of a compose file", exit_code=2)
    return stack


def refuse_incompatible_change(old: ClusterSpec, new: ClusterSpec) -> None:
    if (old.control_planes, old.api_vip) != (new.control_planes, new.api_vip):
        raise ProvisionError(
            f"this cluster was made with {old.control_planes} control plane(s)"
            + (f" behind {old.api_vip}" if old.api_vip else "")
            + f", the spec now says {new.control_planes}"
            + (f" behind {new.api_vip}" if new.api_vip else "")
            + "; the control planes and their endpoint are fixed when the cluster is made (kubeadm's "
            "controlPlaneEndpoint, the certificates, the node addresses): `destroy -f` and `up` with the new count",
            exit_code=2,
        )
    # The swarm reads its address pool once, at `docker swarm init`.
    for attr in ("name", "engine", "network", *(("swarm_address_pool",) if old.engine == "swarm" else ())):
        if getattr(old, attr) != getattr(new, attr):
            raise ProvisionError(
                f"this cluster exists with {attr} {getattr(old, attr)}, the spec now says {getattr(new, attr)}; "
                f"run `destroy -f` first, or use another --dir for a second cluster",
                exit_code=2,
            )
    if new.provider not in ("auto", old.provider):
        raise ProvisionError(
            f"this cluster exists on provider {old.provider}, not {new.provider}; run `destroy -f` first",
            exit_code=2,
        )
    # Fixed when the cluster forms: kubeadm's networking and Calico's IP pool take the ranges once; the
    # roles cannot move a running cluster to another release (that is a `kubeadm upgrade`, node by
    # node); the kubelets talk to the runtime they were set up with.
    fixed = {"runtime": "the kubelets and the swarm are set up on it"}
    if old.engine == "kubernetes":
        fixed |= {
            "pod_cidr": "kubeadm's podSubnet and Calico's IP pool take it when the cluster forms",
            "service_cidr": "kubeadm's serviceSubnet and the API server's certificate take it when the cluster forms",
        }
    for attr, why in fixed.items():
        if getattr(old, attr) != getattr(new, attr):
            raise ProvisionError(
                f"this cluster runs with {attr} {getattr(old, attr)}, the spec now says {getattr(new, attr)}; "
                f"{why}, so a live cluster cannot change it: go back to {getattr(old, attr)}, or `destroy -f` "
                f"and `up` with the new value",
                exit_code=2,
            )
    if old.engine == "kubernetes" and not same_release(old.versions["kubernetes"], new.versions["kubernetes"]):
        raise ProvisionError(
            f"this cluster runs Kubernetes {old.versions['kubernetes']}, the spec now says "
            f"{new.versions['kubernetes']}; `up` does not move a running cluster to another release: "
            + (
                f"`provision.py upgrade --kube-version {new.versions['kubernetes']}` does, one node at a time (or go "
                f"back to --kube-version {old.versions['kubernetes']})"
                if _release_key(new.versions["kubernetes"]) > _release_key(old.versions["kubernetes"])
                else f"kubeadm does not downgrade either; keep --kube-version {old.versions['kubernetes']}, or "
                f"`destroy -f` and `up` to start again on {new.versions['kubernetes']}"
            ),
            exit_code=2,
        )


def _release_key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split(".") if x.isdigit())


def same_release(current: str, wanted: str) -> bool:
    """`wanted` names the release the cluster runs: equal, or the minor of its patch (1.37 for 1.37.2;
    the saved spec holds the exact patch where the bundle resolved it, the minor where upstream did)."""
    cur, want = current.split("."), wanted.split(".")
    return cur[: len(want)] == want or want[: len(cur)] == cur
