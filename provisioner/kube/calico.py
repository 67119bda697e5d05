"""Calico (manifest install, VXLAN; see the calico role's README for why not the operator): the
release's manifest URL, the manifest with the cluster's settings, and what live resources lack of
the desired ones."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from provisioner.kube import KubeConfigError, ipv4_network, kubectl_json
from provisioner.kube.kubeadm import api_server_endpoint, time_scale

CALICO_MANIFEST_BASE = "https://raw.githubusercontent.com/projectcalico/calico"

# calico_encapsulation -> the manifest's CALICO_IPV4POOL_VXLAN. The manifest install runs calico-node
# with the vxlan backend (no BGP daemon), so IPIP, which needs BGP routes, is not offered.
CALICO_VXLAN_MODES = {"VXLANCrossSubnet": "CrossSubnet", "VXLAN": "Always", "None": "Never"}


def calico_manifest_url(calico_version: object, base_url: str = "") -> str:
    """Where Calico publishes the VXLAN manifest of calico_version (base_url: a mirror of that layout)."""
    version = str(calico_version).strip().lstrip("v")
    if not re.match(r"^3\.\d+\.\d+$", version):
        raise KubeConfigError(f'calico_version "{calico_version}" must be an exact release such as 3.31.0')
    base = (base_url or CALICO_MANIFEST_BASE).rstrip("/")
    return f"{base}/v{version}/manifests/calico-vxlan.yaml"


def _set_env(container: dict[str, Any], values: Mapping[str, str]) -> None:
    env = [e for e in container.get("env") or [] if e.get("name") not in values]
    env += [{"name": k, "value": v} for k, v in values.items()]
    container["env"] = env


def calico_manifest_documents(manifest: object, values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Calico's VXLAN manifest with the cluster's settings: the pod CIDR as the default IP pool, its
    block size, encapsulation and outgoing NAT, node addresses autodetected inside the node network
    (never Vagrant's NAT or a Docker bridge), the MTU, an optional registry mirror, the probes of
    its containers scaled by time_scale (unchanged at 1), and, given the API server's address
    (`api_server`, the admin kubeconfig's server URL), the kubernetes-services-endpoint ConfigMap that
    points Calico's containers at it instead of at the kubernetes Service's cluster IP."""
    import yaml

    pods = ipv4_network(values.get("pods_subnet"), "kube_pods_subnet")
    nodes = ipv4_network(values.get("node_network_cidr"), "node_network_cidr")
    if pods.overlaps(nodes):
        raise KubeConfigError(f"kube_pods_subnet {pods} overlaps node_network_cidr {nodes}; pick disjoint ranges")
    encapsulation = str(values.get("encapsulation") or "VXLANCrossSubnet")
    if encapsulation not in CALICO_VXLAN_MODES:
        raise KubeConfigError(
            f'calico_encapsulation "{encapsulation}" is not one of {", ".join(CALICO_VXLAN_MODES)} '
            "(the manifest install runs without BGP, which IPIP needs)"
        )
    block_size = int(values.get("block_size") or 26)
    if not pods.prefixlen <= block_size <= 32 or block_size < 20:
        raise KubeConfigError(
            f"calico_block_size {block_size} must lie between 20 and 32 and not be larger than {pods}"
        )
    mtu = int(values.get("mtu") or 0)
    registry = str(values.get("registry") or "").strip().rstrip("/")
    scale = time_scale(values.get("time_scale"))
    docs = [d for d in yaml.safe_load_all(str(manifest)) if isinstance(d, dict)]
    found = {"configmap": False, "daemonset": False}
    for doc in docs:
        kind, name = doc.get("kind"), (doc.get("metadata") or {}).get("name")
        if kind == "ConfigMap" and name == "calico-config":
            found["configmap"] = True
            data = doc.setdefault("data", {})
            data["calico_backend"] = "vxlan"
            if mtu:
                data["veth_mtu"] = str(mtu)
        if kind == "DaemonSet" and name == "calico-node":
            found["daemonset"] = True
            for container in doc["spec"]["template"]["spec"]["containers"]:
                if container.get("name") == "calico-node":
                    _add_startup_probe(container)
                    _set_env(
                        container,
                        {
                            "CALICO_IPV4POOL_CIDR": str(pods),
                            "CALICO_IPV4POOL_BLOCK_SIZE": str(block_size),
                            "CALICO_IPV4POOL_IPIP": "Never",
                            "CALICO_IPV4POOL_VXLAN": CALICO_VXLAN_MODES[encapsulation],
                            "CALICO_IPV4POOL_NAT_OUTGOING": "true" if values.get("nat_outgoing", True) else "false",
                            "IP_AUTODETECTION_METHOD": f"cidr={nodes}",
                        },
                    )
        if registry:
            _rewrite_images(doc, registry)
        if scale != 1 and kind in ("DaemonSet", "Deployment"):
            _scale_probes(doc, scale)
    if not all(found.values()):
        raise KubeConfigError(
            "the Calico manifest has no calico-config ConfigMap or calico-node DaemonSet; "
            "give the release's calico-vxlan.yaml (calico_manifest_file or calico_manifest_base_url)"
        )
    server = str(values.get("api_server") or "").strip()
    if server:
        docs.insert(0, services_endpoint(server))  # before the pods that read it
    return docs


def services_endpoint(server: str) -> dict[str, Any]:
    """The ConfigMap that Calico's manifest reads (optional envFrom in calico-node's containers) for
    the API server's address (`server`: https://host[:port] or host:port). Without it Calico reaches
    the API through the kubernetes Service's cluster IP, which works on a node only once kube-proxy
    has written its rules there: on a new node install-cni often ran first, failed, and was restarted
    after a 10 s back-off. A loopback address is refused: every node would look for the API at home."""
    url = server if "://" in server else f"https://{server}"
    host, _, port = api_server_endpoint(url).rpartition(":")
    if host == "localhost" or host.startswith("127.") or host in ("[::1]", "::1"):
        raise KubeConfigError(
            f"the API server's address for Calico ({server}) is a loopback address that no other node reaches; "
            "set calico_services_endpoint to host:port of an address every node reaches, or to '' to keep "
            "the kubernetes Service"
        )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "kubernetes-services-endpoint", "namespace": "kube-system"},
        "data": {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port},
    }


# How long calico-node may take to become ready at its start before the kubelet restarts it (its
# startup probe's failures, one a second, times time_scale): as long as the calico role's wait
# (calico_wait_retries x calico_wait_delay), so the probe never ends a start the wait still allows.
STARTUP_SECONDS = 600


def _add_startup_probe(container: dict[str, Any]) -> None:
    """A startup probe asking calico-node's readiness question every second. Without one, the kubelet
    asks it once as the container starts (too early: felix is not up yet) and then only every
    readinessProbe.periodSeconds (10 s), so a new node waits up to 10 s longer for calico-node to be
    Ready; once the startup probe passes, the kubelet runs the readiness probe at once and the startup
    probe stops (it costs nothing after the start). Liveness checks begin after it, as with any
    startup probe."""
    ready = container.get("readinessProbe")
    if not isinstance(ready, dict) or "startupProbe" in container:
        return
    container["startupProbe"] = {
        **{k: v for k, v in ready.items() if k in ("exec", "httpGet", "tcpSocket", "grpc")},
        "periodSeconds": 1,
        "timeoutSeconds": int(ready.get("timeoutSeconds", PROBE_DEFAULTS["timeoutSeconds"])),
        "failureThreshold": STARTUP_SECONDS,
    }


# Kubernetes' defaults for a probe's fields that the manifest leaves out.
PROBE_DEFAULTS = {"timeoutSeconds": 1, "failureThreshold": 3, "initialDelaySeconds": 0}


def _scale_probes(doc: dict[str, Any], scale: float) -> None:
    """Multiply each liveness and readiness probe's timeout, failure count and initial delay by `scale`
    (how often it runs stays): on an emulated CPU calico-node answers its probes late, and at
    Calico's own values the kubelet kills it over and over while the node is busiest. The startup
    probe's timeout and period are multiplied instead (its failure count stays): on a slow machine it
    asks less often, for as many times as long."""
    for container in doc["spec"]["template"]["spec"].get("containers") or []:
        for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
            probe = container.get(kind)
            if isinstance(probe, dict):
                scaled = {"timeoutSeconds": 1, "periodSeconds": 10} if kind == "startupProbe" else PROBE_DEFAULTS
                for key, default in scaled.items():
                    value = int(probe.get(key, default))
                    if value:
                        probe[key] = math.ceil(value * scale)


def _rewrite_images(node: Any, registry: str) -> None:
    """Point every container image at `registry`, keeping the repository path and tag."""
    if isinstance(node, dict):
        for key in ("containers", "initContainers"):
            for c in node.get(key) or []:
                if isinstance(c, dict) and isinstance(c.get("image"), str):
                    path = c["image"].split("/", 1)[1] if "." in c["image"].split("/", 1)[0] else c["image"]
                    c["image"] = f"{registry}/{path}"
        for value in node.values():
            _rewrite_images(value, registry)
    elif isinstance(node, list):
        for value in node:
            _rewrite_images(value, registry)


def _subset_drift(desired: Any, live: Any, path: str) -> list[str]:
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return [f"{path}: missing"]
        out: list[str] = []
        for key, value in desired.items():
            out += _subset_drift(value, live.get(key), f"{path}.{key}")
        return out
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return [f"{path}: differs"]
        out = []
        for index, (want, have) in enumerate(zip(desired, live, strict=True)):
            out += _subset_drift(want, have, f"{path}[{index}]")
        return out
    return [] if desired == live else [f"{path}: {live!r} -> {desired!r}"]


def resource_drift(desired: Sequence[Mapping[str, Any]], live: object) -> list[str]:
    """What the live objects lack of the desired ones, compared as subsets.

    Operators fill defaults into their resources (the tigera operator does into Installation), so
    only the fields the toolkit sets are compared; an empty list means nothing to apply.
    `live` is `kubectl get ... -o json` output (a List) or its parsed form.
    """
    parsed = kubectl_json(live, "live resources")
    items = parsed.get("items", [parsed] if parsed.get("kind") not in (None, "List") else [])
    by_key = {
        (str(i.get("kind")), str((i.get("metadata") or {}).get("name"))): i for i in items if isinstance(i, Mapping)
    }
    drift: list[str] = []
    for doc in desired:
        key = (str(doc.get("kind")), str((doc.get("metadata") or {}).get("name")))
        live_doc = by_key.get(key)
        label = f"{key[0]}/{key[1]}"
        if live_doc is None:
            drift.append(f"{label}: absent")
            continue
        body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
        drift += [f"{label}{d}" for d in _subset_drift(body, live_doc, "")]
    return drift
