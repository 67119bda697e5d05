"""kubeadm configuration (kubeadm.k8s.io/v1beta4): the documents of `kubeadm init --config` and of
`kubeadm join --config`, and the API server endpoint (keepalived's interface and peers, the endpoint
of a kubeconfig's server URL)."""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from provisioner.kube import KubeConfigError, ipv4_network
from provisioner.spec import TIME_SCALE_MAX

KUBEADM_API = "kubeadm.k8s.io/v1beta4"
KUBELET_API = "kubelet.config.k8s.io/v1beta1"
KUBE_PROXY_API = "kubeproxy.config.k8s.io/v1alpha1"
DEFAULT_CRI_SOCKET = "unix:///run/containerd/containerd.sock"
_TOKEN_RE = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")
_HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


def _args(values: object, name: str) -> list[dict[str, str]]:
    """v1beta4 extra arguments: a mapping (or a list of name/value) to a list of {name, value}."""
    if values is None or values == "":
        return []
    if isinstance(values, Mapping):
        return [{"name": str(k), "value": _scalar(v)} for k, v in sorted(values.items(), key=lambda kv: str(kv[0]))]
    if isinstance(values, Sequence) and not isinstance(values, str):
        out: list[dict[str, str]] = []
        for item in values:
            if not isinstance(item, Mapping) or "name" not in item or "value" not in item:
                raise KubeConfigError(f"{name} must be a mapping or a list of {{name, value}} items")
            out.append({"name": str(item["name"]), "value": _scalar(item["value"])})
        return out
    raise KubeConfigError(f"{name} must be a mapping or a list of {{name, value}} items")


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _preflight(errors: object, name: str) -> list[str]:
    if errors is None or errors == "":
        return []
    if isinstance(errors, str) or not isinstance(errors, Iterable):
        raise KubeConfigError(f"{name} must be a list of preflight check names")
    out = [str(e).strip() for e in errors if str(e).strip()]
    if any(e.lower() == "all" for e in out):
        raise KubeConfigError(
            f'{name} must list the preflight checks to ignore one by one; "all" would hide real problems'
        )
    return out


def _strings(values: object, name: str) -> list[str]:
    if values is None or values == "":
        return []
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise KubeConfigError(f"{name} must be a list")
    return [str(v) for v in values]


@dataclass(frozen=True)
class InitSpec:
    """What `kubeadm init` needs, from the kube_control_plane role's variables."""

    node_ip: str
    kubernetes_version: str
    pods_subnet: str
    service_subnet: str
    control_plane_endpoint: str = ""
    bind_port: int = 6443
    node_name: str = ""
    cri_socket: str = DEFAULT_CRI_SOCKET
    cluster_name: str = "kubernetes"
    dns_domain: str = "cluster.local"
    token_ttl: str = "15m"
    ignore_preflight_errors: tuple[str, ...] = ()
    cert_sans: tuple[str, ...] = ()
    apiserver_extra_args: tuple[tuple[str, str], ...] = ()
    controller_manager_extra_args: tuple[tuple[str, str], ...] = ()
    scheduler_extra_args: tuple[tuple[str, str], ...] = ()
    kubelet_extra_args: tuple[tuple[str, str], ...] = ()
    schedulable: bool = False
    kubelet_config: Mapping[str, Any] = field(default_factory=dict)
    kube_proxy_config: Mapping[str, Any] = field(default_factory=dict)
    time_scale: float = 1


# kubeadm's own timeouts (v1beta4 Timeouts, with kubeadm's defaults in seconds) and the leader-election
# durations of kube-controller-manager and kube-scheduler (their defaults): on a slow machine
# (time_scale above 1) each is multiplied by the scale. A control plane that cannot renew its lease in
# 10 s on an emulated CPU restarts its controllers again and again; kubeadm gives up on a control plane
# that takes more than 4 minutes to answer.
KUBEADM_TIMEOUTS = {
    "controlPlaneComponentHealthCheck": 240,
    "kubeletHealthCheck": 240,
    "kubernetesAPICall": 60,
    "etcdAPICall": 120,
    "tlsBootstrap": 300,
    "discovery": 300,
    "upgradeManifests": 300,
}
LEADER_ELECTION = {"leader-elect-lease-duration": 15, "leader-elect-renew-deadline": 10, "leader-elect-retry-period": 2}
# The probes kubeadm writes into the static pods (its defaults: every probe times out after 15 s;
# liveness gives up after 8 failures, startup after 24, the API server's readiness after 3). On a slow
# machine a busy API server misses its liveness probe and kubelet restarts it, and the controllers and
# calico-node with it; scaled, each timeout and failure count is multiplied by the scale, through
# kubeadm's patches directory (strategic merge patches on the static pods' manifests).
PATCHES_DIR = "/etc/kubernetes/provisioner-patches"
PROBES = {"livenessProbe": 8, "startupProbe": 24}
STATIC_PODS = {
    "etcd": PROBES,
    "kube-apiserver": PROBES | {"readinessProbe": 3},
    "kube-controller-manager": PROBES,
    "kube-scheduler": PROBES,
}
PROBE_TIMEOUT = 15


def time_scale(value: object) -> float:
    """The scale of the timeouts: a number from 1 to TIME_SCALE_MAX."""
    try:
        scale = float(str(value if value not in (None, "") else 1))
    except ValueError:
        raise KubeConfigError(f"time_scale {value!r} is not a number (1 = an ordinary machine)") from None
    if isinstance(value, bool) or not 1 <= scale <= TIME_SCALE_MAX:
        raise KubeConfigError(f"time_scale {value!r} must be a number from 1 to {TIME_SCALE_MAX}")
    return scale


def _seconds(value: float) -> str:
    return f"{round(value)}s"


def scaled_timeouts(scale: float, *, upgrade: bool = True) -> dict[str, str]:
    """kubeadm's Timeouts multiplied by `scale` ({} at 1: kubeadm's defaults stand)."""
    if scale == 1:
        return {}
    return {k: _seconds(v * scale) for k, v in KUBEADM_TIMEOUTS.items() if upgrade or k != "upgradeManifests"}


def probe_patches(scale: object) -> dict[str, dict[str, Any]]:
    """kubeadm patch files (name -> strategic merge patch) that scale the static pods' probes; {} at
    scale 1, where kubeadm's own probes stand."""
    factor = time_scale(scale)
    if factor == 1:
        return {}
    return {
        f"{pod}+strategic.yaml": {
            "spec": {
                "containers": [
                    {
                        "name": pod,
                        **{
                            probe: {
                                "timeoutSeconds": math.ceil(PROBE_TIMEOUT * factor),
                                "failureThreshold": math.ceil(failures * factor),
                            }
                            for probe, failures in probes.items()
                        },
                    }
                ]
            }
        }
        for pod, probes in STATIC_PODS.items()
    }


def _leader_election(scale: float, given: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """`given` extra args plus the scaled leader-election durations the operator did not set."""
    if scale == 1:
        return given
    names = {n for n, _ in given}
    return given + tuple((n, _seconds(v * scale)) for n, v in LEADER_ELECTION.items() if n not in names)


def _pairs(values: object, name: str) -> tuple[tuple[str, str], ...]:
    return tuple((a["name"], a["value"]) for a in _args(values, name))


def _as_args(pairs: tuple[tuple[str, str], ...]) -> list[dict[str, str]]:
    return [{"name": n, "value": v} for n, v in pairs]


def init_spec(values: Mapping[str, Any]) -> InitSpec:
    """Validate the role's variables (a mapping) into an InitSpec."""
    for key in ("node_ip", "kubernetes_version", "pods_subnet", "service_subnet"):
        if not str(values.get(key) or "").strip():
            raise KubeConfigError(f"the kubeadm init configuration needs {key}")
    node_ip = str(values["node_ip"]).strip()
    try:
        address = ipaddress.IPv4Address(node_ip)
    except ValueError:
        raise KubeConfigError(f'node_ip "{node_ip}" is not an IPv4 address') from None
    pods = ipv4_network(values["pods_subnet"], "kube_pods_subnet")
    services = ipv4_network(values["service_subnet"], "kube_service_addresses")
    if pods.overlaps(services):
        raise KubeConfigError(
            f"kube_pods_subnet {pods} overlaps kube_service_addresses {services}; pick disjoint ranges"
        )
    for net, label in ((pods, "kube_pods_subnet"), (services, "kube_service_addresses")):
        if address in net:
            raise KubeConfigError(
                f"node_ip {node_ip} lies inside {label} {net}; pick ranges apart from the node network"
            )
    version = str(values["kubernetes_version"]).strip()
    if not re.match(r"^v1\.\d+\.\d+$", version):
        raise KubeConfigError(f'kubernetesVersion "{version}" must be an exact version such as v1.36.2')
    bind_port = int(values.get("bind_port") or 6443)
    kubelet_config = values.get("kubelet_config") or {}
    if not isinstance(kubelet_config, Mapping):
        raise KubeConfigError("kube_control_plane_kubelet_config must be a mapping of KubeletConfiguration fields")
    kube_proxy_config = values.get("kube_proxy_config") or {}
    if not isinstance(kube_proxy_config, Mapping):
        raise KubeConfigError("kube_control_plane_kube_proxy_config must be a mapping of KubeProxyConfiguration fields")
    return InitSpec(
        kube_proxy_config=dict(kube_proxy_config),
        node_ip=node_ip,
        kubernetes_version=version,
        pods_subnet=str(pods),
        service_subnet=str(services),
        control_plane_endpoint=str(values.get("control_plane_endpoint") or "").strip(),
        bind_port=bind_port,
        node_name=str(values.get("node_name") or "").strip(),
        cri_socket=str(values.get("cri_socket") or DEFAULT_CRI_SOCKET),
        cluster_name=str(values.get("cluster_name") or "kubernetes"),
        dns_domain=str(values.get("dns_domain") or "cluster.local"),
        token_ttl=str(values.get("token_ttl") or "15m"),
        ignore_preflight_errors=tuple(_preflight(values.get("ignore_preflight_errors"), "ignore_preflight_errors")),
        cert_sans=tuple(_strings(values.get("cert_sans"), "cert_sans")),
        apiserver_extra_args=_pairs(values.get("apiserver_extra_args"), "apiserver_extra_args"),
        controller_manager_extra_args=_pairs(
            values.get("controller_manager_extra_args"), "controller_manager_extra_args"
        ),
        scheduler_extra_args=_pairs(values.get("scheduler_extra_args"), "scheduler_extra_args"),
        kubelet_extra_args=_pairs(values.get("kubelet_extra_args"), "kubelet_extra_args"),
        schedulable=bool(values.get("schedulable")),
        kubelet_config=dict(kubelet_config),
        time_scale=time_scale(values.get("time_scale")),
    )


def _node_registration(
    node_ip: str,
    node_name: str,
    cri_socket: str,
    ignore_preflight_errors: Sequence[str],
    kubelet_extra_args: tuple[tuple[str, str], ...],
) -> dict[str, Any]:
    extra = [("node-ip", node_ip)] + [(n, v) for n, v in kubelet_extra_args if n != "node-ip"]
    registration: dict[str, Any] = {"criSocket": cri_socket, "kubeletExtraArgs": _as_args(tuple(extra))}
    if node_name:
        registration["name"] = node_name
    if ignore_preflight_errors:
        registration["ignorePreflightErrors"] = list(ignore_preflight_errors)
    return registration


def kubeadm_init_documents(values: Mapping[str, Any] | InitSpec) -> list[dict[str, Any]]:
    """InitConfiguration, ClusterConfiguration and KubeletConfiguration for `kubeadm init --config`."""
    spec = values if isinstance(values, InitSpec) else init_spec(values)
    endpoint = spec.control_plane_endpoint or f"{spec.node_ip}:{spec.bind_port}"
    registration = _node_registration(
        spec.node_ip, spec.node_name, spec.cri_socket, spec.ignore_preflight_errors, spec.kubelet_extra_args
    )
    if spec.schedulable:
        registration["taints"] = []
    init: dict[str, Any] = {
        "apiVersion": KUBEADM_API,
        "kind": "InitConfiguration",
        # The init token lives spec.token_ttl only; workers join with a fresh token of their own.
        "bootstrapTokens": [
            {
                "ttl": spec.token_ttl,
                "description": "kubeadm init token (short-lived; kube_join creates its own)",
                "usages": ["signing", "authentication"],
                "groups": ["system:bootstrappers:kubeadm:default-node-token"],
            }
        ],
        "localAPIEndpoint": {"advertiseAddress": spec.node_ip, "bindPort": spec.bind_port},
        "nodeRegistration": registration,
    }
    if spec.time_scale != 1:
        init["timeouts"] = scaled_timeouts(spec.time_scale)
        init["patches"] = {"directory": PATCHES_DIR}  # probe_patches(), written there by the role
    api_server: dict[str, Any] = {}
    if spec.apiserver_extra_args:
        api_server["extraArgs"] = _as_args(spec.apiserver_extra_args)
    sans = list(dict.fromkeys([spec.node_ip, *spec.cert_sans]))
    api_server["certSANs"] = sans
    cluster: dict[str, Any] = {
        "apiVersion": KUBEADM_API,
        "kind": "ClusterConfiguration",
        "clusterName": spec.cluster_name,
        "kubernetesVersion": spec.kubernetes_version,
        "controlPlaneEndpoint": endpoint,
        "networking": {
            "podSubnet": spec.pods_subnet,
            "serviceSubnet": spec.service_subnet,
            "dnsDomain": spec.dns_domain,
        },
        "apiServer": api_server,
    }
    controller_manager_args = _leader_election(spec.time_scale, spec.controller_manager_extra_args)
    if controller_manager_args:
        cluster["controllerManager"] = {"extraArgs": _as_args(controller_manager_args)}
    scheduler_args = _leader_election(spec.time_scale, spec.scheduler_extra_args)
    if scheduler_args:
        cluster["scheduler"] = {"extraArgs": _as_args(scheduler_args)}
    kubelet: dict[str, Any] = {"apiVersion": KUBELET_API, "kind": "KubeletConfiguration"}
    kubelet.update({k: v for k, v in spec.kubelet_config.items() if k not in ("apiVersion", "kind")})
    kubelet["cgroupDriver"] = "systemd"
    # Each kubelet asks for a serving certificate from the cluster's CA (approved by the
    # kubelet_serving_cert role), so that metrics-server can verify it.
    kubelet["serverTLSBootstrap"] = True
    docs = [init, cluster, kubelet]
    if spec.kube_proxy_config:
        proxy: dict[str, Any] = {"apiVersion": KUBE_PROXY_API, "kind": "KubeProxyConfiguration"}
        proxy.update({k: v for k, v in spec.kube_proxy_config.items() if k not in ("apiVersion", "kind")})
        docs.append(proxy)
    return docs


_CERT_KEY_RE = re.compile(r"^[0-9a-f]{64}$")


def kubeadm_join_documents(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A JoinConfiguration: bootstrap-token discovery pinned to the CA hash, node-ip set; with
    `control_plane` (certificate_key, bind_port), a control-plane join that fetches the uploaded
    certificates and adds a stacked etcd member.

    Error messages never repeat the token.
    """
    token = str(values.get("token") or "").strip()
    if not _TOKEN_RE.match(token):
        raise KubeConfigError("the bootstrap token is missing or malformed (expected [a-z0-9]{6}.[a-z0-9]{16})")
    hashes = _strings(values.get("ca_cert_hashes"), "ca_cert_hashes")
    if not hashes or not all(_HASH_RE.match(h) for h in hashes):
        raise KubeConfigError("the CA certificate hash is missing or malformed (expected sha256:<64 hex digits>)")
    endpoint = str(values.get("api_server_endpoint") or "").strip()
    if not re.match(r"^[A-Za-z0-9.\-\[\]:]+:\d+$", endpoint):
        raise KubeConfigError(f'api_server_endpoint "{endpoint}" must be host:port, e.g. 192.168.56.10:6443')
    node_ip = str(values.get("node_ip") or "").strip()
    try:
        ipaddress.IPv4Address(node_ip)
    except ValueError:
        raise KubeConfigError(f'node_ip "{node_ip}" is not an IPv4 address') from None
    registration = _node_registration(
        node_ip,
        str(values.get("node_name") or "").strip(),
        str(values.get("cri_socket") or DEFAULT_CRI_SOCKET),
        _preflight(values.get("ignore_preflight_errors"), "ignore_preflight_errors"),
        _pairs(values.get("kubelet_extra_args"), "kubelet_extra_args"),
    )
    join: dict[str, Any] = {
        "apiVersion": KUBEADM_API,
        "kind": "JoinConfiguration",
        "discovery": {"bootstrapToken": {"token": token, "apiServerEndpoint": endpoint, "caCertHashes": hashes}},
        "nodeRegistration": registration,
    }
    scale = time_scale(values.get("time_scale"))
    if scale != 1:
        join["timeouts"] = scaled_timeouts(scale, upgrade=False)
    control_plane = values.get("control_plane")
    if control_plane:
        if not isinstance(control_plane, Mapping):
            raise KubeConfigError("control_plane must be a mapping with certificate_key (and bind_port)")
        key = str(control_plane.get("certificate_key") or "").strip()
        if not _CERT_KEY_RE.match(key):
            raise KubeConfigError("the certificate key is missing or malformed (expected 64 hex digits)")
        port = control_plane.get("bind_port", 6443)
        if isinstance(port, bool) or not str(port).isdigit() or not 0 < int(str(port)) < 65536:
            raise KubeConfigError(f'control_plane bind_port "{port}" is not a TCP port')
        join["controlPlane"] = {
            "localAPIEndpoint": {"advertiseAddress": node_ip, "bindPort": int(str(port))},
            "certificateKey": key,
        }
        if scale != 1:
            join["patches"] = {"directory": PATCHES_DIR}  # probe_patches(), written there by the role
    return [join]


def api_endpoint_plan(
    facts: Mapping[str, Any], vip: object, network_cidr: object, node_ip: str, peers: Sequence[str], port: object = 8443
) -> dict[str, Any]:
    """What keepalived and HAProxy need on one control plane: the interface holding its node address
    (where the virtual IP goes), the VIP's prefix, the other control planes' addresses (unicast VRRP
    peers). Whichever control plane holds the VIP, HAProxy there forwards to every API server that
    answers, so `kubeadm init` on the first one reaches itself through the endpoint."""
    network = ipv4_network(network_cidr, "node_network_cidr")
    try:
        address = ipaddress.IPv4Address(str(vip).strip())
    except ValueError:
        raise KubeConfigError(f'kube_api_vip "{vip}" is not an IPv4 address') from None
    if address not in network or address in (network.network_address, network.broadcast_address):
        raise KubeConfigError(f"kube_api_vip {address} is not a host address of the node network {network}")
    addresses = [node_ip, *peers]
    if str(address) in addresses:
        raise KubeConfigError(f"kube_api_vip {address} is a control plane's own address; pick a free one")
    if not str(port).isdigit() or not 0 < int(str(port)) < 65536 or int(str(port)) == 6443:
        raise KubeConfigError(f"kube_api_vip_port {port} must be a TCP port other than the API servers' 6443")
    return {
        "interface": interface_for_ip(facts, node_ip),
        "vip": str(address),
        "peers": [p for p in peers if p != node_ip],
        "port": int(str(port)),
    }


def interface_for_ip(facts: Mapping[str, Any], ip: object) -> str:
    """The name of the interface that holds `ip` as its primary or a secondary IPv4 address (from
    Ansible's facts); keepalived puts the API server's virtual IP on it."""
    wanted = str(ip).strip()
    for name in facts.get("interfaces") or []:
        entry = facts.get(str(name).replace("-", "_")) or {}
        addresses = [entry.get("ipv4") or {}, *(entry.get("ipv4_secondaries") or [])]
        if any(isinstance(a, Mapping) and a.get("address") == wanted for a in addresses):
            return str(name)
    raise KubeConfigError(f"no interface holds {wanted}; is the node on the node network?")


def api_server_endpoint(server_url: object) -> str:
    """host:port from a kubeconfig server URL (https://192.168.56.10:6443 -> 192.168.56.10:6443)."""
    text = str(server_url).strip()
    match = re.match(r"^https://([^/]+?)(?::(\d+))?/?$", text)
    if not match:
        raise KubeConfigError(f'the kubeconfig server "{text}" is not an https://host[:port] URL')
    return f"{match.group(1)}:{match.group(2) or '443'}"
