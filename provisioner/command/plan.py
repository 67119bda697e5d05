"""`provision.py plan`: the resolved spec and network plan, after every check `up` makes first; nothing is made."""

from __future__ import annotations

import sys
from typing import TextIO

from provisioner import libvirt, preflight, stages
from provisioner.command.up import UpOptions
from provisioner.kubeimage import is_kube_image
from provisioner.kubesource import host_cgroup_version, kube_source_choice, kubernetes_blocker
from provisioner.spec import DEFAULT_SWARM_POOL, SWARM_POOL_MASK, ClusterSpec, group_of
from provisioner.state import State
from provisioner.workspace import Workspace


def plan(ws: Workspace, opts: UpOptions, out: TextIO = sys.stdout) -> int:
    checked = preflight.checked_spec(ws, opts.overrides, opts.config, opts.prefer_speed)
    spec, notes = checked.spec, checked.notes
    chosen = spec.provider
    provider = f"{chosen} (auto: {checked.provider_reason})" if checked.provider_reason else chosen
    if chosen == "libvirt":
        kind, why = libvirt.domain_type()
        provider += f"; domain type {kind}: {why}"
    out.write(f"cluster      {spec.name}\n")
    out.write(f"engine       {spec.engine}\n")
    out.write(f"provider     {provider}\n")
    out.write(f"resources    {spec.cpus} CPUs, {spec.memory} MiB per node\n")
    if spec.time_scale != 1:
        out.write(
            f"time scale   {spec.time_scale}: every wait, timeout and leader-election duration x {spec.time_scale}\n"
        )
    out.write(f"runtime      {spec.runtime} (source: {spec.runtime_source})\n")
    out.write(f"versions     kubernetes {spec.versions['kubernetes']}, calico {spec.versions['calico']}\n")
    out.write(f"node network {spec.network}\n")
    if spec.engine == "swarm":
        default = " (Docker's default)" if spec.swarm_address_pool == DEFAULT_SWARM_POOL else ""
        out.write(f"swarm pool   {spec.swarm_address_pool}{default}, /{SWARM_POOL_MASK} overlay networks\n")
    else:
        out.write(f"pod CIDR     {spec.pod_cidr}\nservice CIDR {spec.service_cidr}\n")
    if spec.api_vip:
        out.write(
            f"API endpoint {spec.api_vip}:8443 (virtual IP held by one of {spec.control_planes} control planes, "
            f"keepalived + HAProxy; reserved on the node network)\n"
        )
    out.write("checks       CIDRs pairwise disjoint and clear of the host's networks\n")
    for source in checked.sources:
        out.write(f"source       {source}\n")
    for note in notes:
        out.write(f"note         {note}\n")
    out.write("\n")
    out.write(f"{'node':<14}{'role':<15}{'group':<20}ip\n")
    for n in spec.nodes:
        out.write(f"{n.name:<14}{n.role:<15}{group_of(spec.engine, n.role):<20}{n.ip}\n")
    eng = [s.name for s in stages.stages_for(spec.engine)]
    saved = ws.load_saved()
    if saved is not None:
        keep = {n.name for n in spec.nodes}
        leaving = [n["name"] for n in saved["spec"]["nodes"] if n["name"] not in keep]
        if leaving:
            out.write(f"\nshrinking    {', '.join(leaving)} leave the cluster and their machines go (up --shrink)\n")
    out.write(f"\nstages       machines, {', '.join(eng)}, verify\n")
    if spec.engine == "kubernetes":
        from provisioner import kubenode

        blocker = kubernetes_blocker(spec.with_provider(chosen))
        source, why = kube_source_choice(spec.with_provider(chosen)) if not blocker else ("none", blocker)
        out.write(f"kubernetes   binaries and images: {source} ({why})\n")
        out.write(f"add-ons      {addons_line(spec, State.load(ws.state_file).done('addons'))}\n")
        named = str(checked.inputs.get("image") or "")
        if chosen == "docker" and not blocker and source == "bundle" and (not named or is_kube_image(named)):
            out.write(
                "node image   provisioner/node-kube: the runtime image with the bundle's binaries and images "
                "preloaded (built once per bundle when missing; `--image provisioner/node-runtime` imports them "
                "on every node instead)\n"
            )
        if chosen == "docker" and not blocker:
            v1 = host_cgroup_version() == 1
            out.write("container-node settings (the nodes are containers on this host's kernel):\n")
            out.write("\n".join(kubenode.plan_lines(v1)) + "\n")
    return 0


def addons_line(spec: ClusterSpec, installed: bool) -> str:
    """What the addons stage installs, or why not (`installed`: the cluster's addons stage ran)."""
    if spec.metrics:
        metrics = (
            "metrics: metrics-server (kubectl top, autoscaling; kubelet serving certificates from the cluster's CA)"
        )
    else:
        metrics = "metrics: off (--metrics turns it on)" + ("; an add-on installed earlier stays" if installed else "")
    if spec.storage:
        storage = (
            "storage: a default StorageClass local-path (local-path-provisioner; volumes in "
            "/opt/local-path-provisioner on the node that runs the claim's first pod)"
        )
    else:
        left = "; an add-on installed earlier stays, with its volumes" if installed else ""
        storage = f"storage: off (--storage turns it on){left}"
    if spec.ingress:
        ingress = (
            "ingress: Traefik (Ingress class and GatewayClass traefik, Gateway traefik/traefik) on NodePort 30080 "
            "of every node"
        )
    else:
        ingress = "ingress: off (--ingress turns it on)" + ("; an add-on installed earlier stays" if installed else "")
    return f"{metrics}\n             {storage}\n             {ingress}"
