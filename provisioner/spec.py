"""The cluster spec: one validated object built from a YAML file and command-line flags.

Validation happens before anything is created; every problem is one sentence naming the field and
the fix (SpecError).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from provisioner.errors import SpecError

PROVIDERS = ("auto", "virtualbox", "libvirt", "docker")
ENGINES = ("kubernetes", "swarm")
RUNTIMES = ("docker", "containerd")
RUNTIME_SOURCES = ("auto", "upstream", "distro", "offline")
# Where kubeadm, kubelet, kubectl and the images come from: upstream (pkgs.k8s.io and the registries),
# bundle (the offline bundle, built when missing), auto (bundle on container nodes, upstream on VMs
# where pkgs.k8s.io answers).
KUBE_SOURCES = ("auto", "upstream", "bundle")
KUBE_ROLES = ("control_plane", "worker")
SWARM_ROLES = ("manager", "worker")
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
NODE_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
FIRST_HOST_OFFSET = 10  # the control plane sits at .10 as in the classic lab
MAX_NODES = 50
# A package proxy: http(s)://, a host name, an IPv4 address or a bracketed IPv6 address, an optional
# port and an optional trailing slash; nothing else (no path, no credentials, no query).
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
PROXY_RE = re.compile(
    rf"(?P<scheme>https?)://(?P<host>\[[0-9A-Fa-f:.]+\]|{_LABEL}(?:\.{_LABEL})*)(?::(?P<port>[0-9]{{1,5}}))?/?"
)
# Docker's own pool for a swarm's overlay networks (docker swarm init without --default-addr-pool).
DEFAULT_SWARM_POOL = "10.0.0.0/8"
# The swarm role carves /24 overlay networks out of the pool (swarm_default_addr_pool_mask_length).
SWARM_POOL_MASK = 24

DEFAULTS: dict[str, Any] = {
    "name": "lab",
    "nodes": 3,
    "provider": "auto",
    "box": "debian/bookworm64",
    "image": "",
    "cpus": 2,
    "memory": 2048,
    "network": "192.168.56.0/24",
    "pod_cidr": "10.244.0.0/16",
    "service_cidr": "10.96.0.0/12",
    "swarm_address_pool": DEFAULT_SWARM_POOL,
    "engine": "kubernetes",
    "managers": 1,
    "control_planes": 1,
    "api_vip": "",
    "runtime": "docker",
    "runtime_source": "auto",
    "offline_dir": "",
    "versions": {"kubernetes": "1.37.2", "calico": "3.31.0", "runtime": ""},
    "labels": {},
    "stack": "",
    "package_proxy": "",
    "kube_source": "auto",
}
KNOWN_KEYS = set(DEFAULTS)
VERSION_KEYS = set(DEFAULTS["versions"])


@dataclass(frozen=True)
class Node:
    name: str
    role: str  # control_plane | worker (kubernetes), manager | worker (swarm)
    ip: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    provider: str
    box: str
    image: str
    cpus: int
    memory: int
    network: str
    pod_cidr: str
    service_cidr: str
    engine: str
    managers: int
    runtime: str
    runtime_source: str
    offline_dir: str
    versions: dict[str, str]
    nodes: tuple[Node, ...]
    stack: str = ""
    package_proxy: str = ""  # "" = none; else http(s)://HOST[:PORT] for apt/dnf on the nodes
    kube_source: str = "auto"  # auto | upstream | bundle
    # Kubernetes control planes (1, 3 or 5); with more than one, the API server's stable address on the
    # node network (a virtual IP that keepalived moves, HAProxy on every control plane behind it).
    control_planes: int = 1
    api_vip: str = ""
    swarm_address_pool: str = DEFAULT_SWARM_POOL  # the swarm's overlay networks; unused by kubernetes

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["nodes"] = [{"name": n.name, "role": n.role, "ip": n.ip, "labels": n.labels} for n in self.nodes]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClusterSpec:
        nodes = tuple(
            Node(name=n["name"], role=n["role"], ip=n["ip"], labels=dict(n.get("labels", {}))) for n in data["nodes"]
        )
        fields = {k: v for k, v in data.items() if k != "nodes"}
        return cls(nodes=nodes, **fields)

    def with_nodes(self, names: list[str]) -> ClusterSpec:
        """The same cluster with only the named nodes (their addresses and roles unchanged)."""
        data = self.to_dict()
        data["nodes"] = [n for n in data["nodes"] if n["name"] in names]
        return ClusterSpec.from_dict(data)

    def with_provider(self, provider: str) -> ClusterSpec:
        data = self.to_dict()
        data["provider"] = provider
        return ClusterSpec.from_dict(data)

    @property
    def effective_runtime_source(self) -> str:
        """`auto` means Docker's own repository on VMs, the distribution's packages in container nodes."""
        if self.runtime_source != "auto":
            return self.runtime_source
        return "distro" if self.provider == "docker" else "upstream"

    def groups(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {
            "kube_control_plane": [],
            "kube_node": [],
            "swarm_manager": [],
            "swarm_worker": [],
        }
        for node in self.nodes:
            groups[group_of(self.engine, node.role)].append(node.name)
        return groups


def group_of(engine: str, role: str) -> str:
    if engine == "kubernetes":
        return "kube_control_plane" if role == "control_plane" else "kube_node"
    return "swarm_manager" if role == "manager" else "swarm_worker"


def load_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read the cluster spec {path}: {exc.strerror}; check the --config path") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SpecError(f"the cluster spec {path} is not valid YAML{where}; fix the syntax there") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(f"the cluster spec {path} must be a YAML mapping of settings (name:, nodes:, ...)")
    return data


def build_spec(file_data: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None) -> ClusterSpec:
    """Merge defaults, the file and the flags (flags win), validate, and plan names and addresses."""
    raw: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULTS.items()}
    for source in (file_data or {}, {k: v for k, v in (overrides or {}).items() if v is not None}):
        unknown = sorted(set(source) - KNOWN_KEYS)
        if unknown:
            raise SpecError(f"unknown spec field '{unknown[0]}'; valid fields are: {', '.join(sorted(KNOWN_KEYS))}")
        for key, value in source.items():
            if key == "versions":
                if not isinstance(value, dict):
                    raise SpecError("spec field 'versions' must be a mapping such as {kubernetes: '1.36'}")
                bad = sorted(set(value) - VERSION_KEYS)
                if bad:
                    raise SpecError(
                        f"unknown version key '{bad[0]}'; valid keys are: {', '.join(sorted(VERSION_KEYS))}"
                    )
                raw["versions"].update({k: str(v) for k, v in value.items()})
            else:
                raw[key] = value
    return _validate(raw)


def check_engine_fields(engine: str, given: set[str]) -> None:
    """Refuse fields that this run gave (its config file and flags) but the engine ignores."""
    ignored = sorted(given & {"pod_cidr", "service_cidr", "control_planes", "api_vip"}) if engine == "swarm" else []
    if "control_planes" in ignored:
        raise SpecError(
            "control_planes is a Kubernetes setting; a swarm's control plane is its managers: use --managers 3"
        )
    if ignored:
        field = ignored[0]
        raise SpecError(
            f"{field} is a Kubernetes setting and does nothing with engine swarm (its overlay networks take "
            f"addresses from swarm_address_pool, Docker's {DEFAULT_SWARM_POOL} by default); drop "
            f"--{field.replace('_', '-')} or use --engine kubernetes"
        )
    if engine == "kubernetes" and "swarm_address_pool" in given:
        raise SpecError(
            "swarm_address_pool is a Docker Swarm setting and does nothing with engine kubernetes (pods and "
            "services take pod_cidr and service_cidr); drop --swarm-address-pool or use --engine swarm"
        )


def _choice(raw: dict[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = raw[key]
    if value not in choices:
        raise SpecError(f"{key} '{value}' is not supported; use one of: {', '.join(choices)}")
    return str(value)


def _int(raw: dict[str, Any], key: str, low: int, high: int) -> int:
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value))
        except ValueError:
            raise SpecError(f"{key} must be a whole number between {low} and {high}, not '{raw[key]}'") from None
    if not low <= value <= high:
        raise SpecError(f"{key} must be between {low} and {high}, not {value}")
    return value


def _network(raw: dict[str, Any], key: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(str(raw[key]), strict=True)
    except ValueError:
        raise SpecError(
            f"{key} '{raw[key]}' is not a valid IPv4 network in CIDR form with its host bits clear, e.g. 10.244.0.0/16"
        ) from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise SpecError(f"{key} '{raw[key]}' must be an IPv4 network")
    return net


def _package_proxy(value: Any) -> str:
    """'' (none) or an http(s) URL made of a host and an optional port, without a trailing slash."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SpecError(f'package_proxy must be a URL such as http://192.168.56.1:3142 (or "" for none), not {value!r}')
    if value == "":
        return ""
    match = PROXY_RE.fullmatch(value)
    valid = match is not None
    if match and (match["host"].startswith("[") or re.fullmatch(r"[0-9.]+", match["host"])):
        host = match["host"]
        try:  # brackets hold an IPv6 address; digits and dots must be a real IPv4 address
            ipaddress.IPv6Address(host[1:-1]) if host.startswith("[") else ipaddress.IPv4Address(host)
        except ValueError:
            valid = False
    if match and match["port"] is not None and not 1 <= int(match["port"]) <= 65535:
        valid = False
    if not valid:
        raise SpecError(
            f"package_proxy {value!r} is not an http:// or https:// URL made of a host and an optional port; "
            'use e.g. http://192.168.56.1:3142 (no path, no credentials), or "" for none'
        )
    return value.rstrip("/")


def _validate(raw: dict[str, Any]) -> ClusterSpec:
    name = str(raw["name"])
    if not NAME_RE.match(name):
        raise SpecError(
            f"name '{name}' is invalid; use 1-31 lowercase letters, digits and dashes, starting with a letter"
        )
    provider = _choice(raw, "provider", PROVIDERS)
    engine = _choice(raw, "engine", ENGINES)
    runtime = _choice(raw, "runtime", RUNTIMES)
    runtime_source = _choice(raw, "runtime_source", RUNTIME_SOURCES)
    if engine == "swarm" and runtime != "docker":
        raise SpecError("engine swarm needs runtime docker; set runtime: docker (or drop --runtime)")
    if runtime_source == "offline" and not raw["offline_dir"]:
        raise SpecError("runtime_source offline needs offline_dir: a directory holding the packages")
    package_proxy = _package_proxy(raw["package_proxy"])
    kube_source = _choice(raw, "kube_source", KUBE_SOURCES)
    cpus = _int(raw, "cpus", 1, 64)
    memory = _int(raw, "memory", 512, 262144)
    managers = _int(raw, "managers", 1, 7)
    if managers % 2 == 0:
        raise SpecError(f"managers must be an odd number (1, 3, 5) to keep a Raft quorum, not {managers}")
    control_planes = _int(raw, "control_planes", 1, 7)
    if control_planes % 2 == 0:
        raise SpecError(
            f"control_planes must be an odd number (1, 3, 5) to keep etcd's quorum, not {control_planes}: "
            f"with {control_planes} members etcd survives no more failures than with {control_planes - 1}"
        )

    network = _network(raw, "network")
    pod = _network(raw, "pod_cidr")
    service = _network(raw, "service_cidr")
    pool = _network(raw, "swarm_address_pool")
    if pool.prefixlen > SWARM_POOL_MASK:
        raise SpecError(
            f"swarm_address_pool {pool} is smaller than the /{SWARM_POOL_MASK} overlay networks the swarm "
            f"carves from it; use a /{SWARM_POOL_MASK} or larger range such as 10.10.0.0/16"
        )
    # The ranges the engine uses must be disjoint; the other engine's ranges are never used.
    if engine == "kubernetes":
        named = {"network": network, "pod_cidr": pod, "service_cidr": service}
    else:
        named = {"network": network, "swarm_address_pool": pool}
    keys = list(named)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            if named[a].overlaps(named[b]):
                defaults = ", ".join(f"{k} {DEFAULTS[k]}" for k in keys)
                raise SpecError(
                    f"{a} {named[a]} overlaps {b} {named[b]}; choose non-overlapping ranges (defaults: {defaults})"
                )
    if network.prefixlen > 28:
        raise SpecError(f"network {network} is too small; use a /24 such as 192.168.56.0/24")

    leads = managers if engine == "swarm" else control_planes
    nodes = _plan_nodes(raw["nodes"], engine, leads, network, raw.get("labels") or {})
    cps = sum(n.role == "control_plane" for n in nodes)
    if engine == "kubernetes" and cps % 2 == 0:
        raise SpecError(f"nodes lists {cps} control planes; etcd needs an odd number (1, 3, 5) to keep its quorum")
    api_vip = _api_vip(raw.get("api_vip"), engine, nodes, network)
    versions = {k: str(v) for k, v in raw["versions"].items()}
    if not re.match(r"^1\.\d+(\.\d+)?$", versions["kubernetes"]):
        raise SpecError(
            f"versions.kubernetes '{versions['kubernetes']}' must be a minor such as 1.36 or a patch such as 1.36.2"
        )
    return ClusterSpec(
        name=name,
        provider=provider,
        box=str(raw["box"]),
        image=str(raw["image"] or ""),
        cpus=cpus,
        memory=memory,
        network=str(network),
        pod_cidr=str(pod),
        service_cidr=str(service),
        engine=engine,
        managers=managers,
        runtime=runtime,
        runtime_source=runtime_source,
        offline_dir=str(raw["offline_dir"] or ""),
        versions=versions,
        nodes=nodes,
        stack=str(raw["stack"] or ""),
        package_proxy=package_proxy,
        kube_source=kube_source,
        control_planes=len([n for n in nodes if n.role == "control_plane"]) if engine == "kubernetes" else 1,
        api_vip=api_vip,
        swarm_address_pool=str(pool),
    )


def _api_vip(value: Any, engine: str, nodes: tuple[Node, ...], network: ipaddress.IPv4Network) -> str:
    """The API server's virtual IP: only with several control planes; by default the node network's
    address just below the first node (.9 of a /24), which no node takes."""
    several = engine == "kubernetes" and sum(n.role == "control_plane" for n in nodes) > 1
    if not several:
        if value:
            raise SpecError("api_vip is the address of several control planes; drop it, or set control_planes: 3")
        return ""
    if not value:
        return str(list(network.hosts())[FIRST_HOST_OFFSET - 2])
    try:
        vip = ipaddress.IPv4Address(str(value))
    except ValueError:
        raise SpecError(f"api_vip '{value}' is not an IPv4 address; give a free address of the node network") from None
    if vip not in network or vip in (network.network_address, network.broadcast_address):
        raise SpecError(f"api_vip {vip} is not a host address of the node network {network}; pick one inside it")
    taken = [n.name for n in nodes if n.ip == str(vip)]
    if taken:
        raise SpecError(f"api_vip {vip} is node {taken[0]}'s address; pick a free address of {network}")
    return str(vip)


def _plan_nodes(
    nodes: Any, engine: str, leads_wanted: int, network: ipaddress.IPv4Network, labels: Any
) -> tuple[Node, ...]:
    if not isinstance(labels, dict):
        raise SpecError("labels must map node names to {key: value} mappings")
    entries: list[tuple[str, str]] = []
    lead_role, lead_prefix = ("control_plane", "cp") if engine == "kubernetes" else ("manager", "manager")
    roles = KUBE_ROLES if engine == "kubernetes" else SWARM_ROLES
    if isinstance(nodes, list):
        if not nodes:
            raise SpecError("nodes is an empty list; give at least one node, e.g. nodes: 3")
        for i, item in enumerate(nodes):
            if not isinstance(item, dict) or "name" not in item:
                raise SpecError(
                    f"nodes[{i}] must be a mapping with name and role, e.g. {{name: cp1, role: {lead_role}}}"
                )
            role = str(item.get("role", "worker"))
            if role not in roles:
                raise SpecError(
                    f"nodes[{i}] role '{role}' is not valid for engine {engine}; use one of: {', '.join(roles)}"
                )
            entries.append((str(item["name"]), role))
        if not any(role == lead_role for _, role in entries):
            raise SpecError(f"nodes has no {lead_role}; give the first node role {lead_role}")
    else:
        count = nodes
        if isinstance(count, bool) or not isinstance(count, int):
            try:
                count = int(str(count))
            except ValueError:
                raise SpecError(f"nodes must be a count such as 3 or a list of nodes, not '{nodes}'") from None
        if count < 1:
            raise SpecError(
                f"nodes must be at least 1 (got {count}); e.g. --nodes 3 for a control plane and two workers"
            )
        if count > MAX_NODES:
            raise SpecError(f"nodes must be at most {MAX_NODES} (got {count})")
        if leads_wanted > count:
            what = "managers" if engine == "swarm" else "control_planes"
            raise SpecError(
                f"{what} ({leads_wanted}) cannot exceed nodes ({count}); lower --{what.replace('_', '-')} or add nodes"
            )
        leads = leads_wanted
        entries = [(f"{lead_prefix}{i + 1}", lead_role) for i in range(leads)]
        entries += [(f"worker{i + 1}", "worker") for i in range(count - leads)]
    # Control plane / managers first so that they take .10, .11 ...
    entries.sort(key=lambda e: 0 if e[1] == lead_role else 1)
    names = [n for n, _ in entries]
    for n in names:
        if not NODE_NAME_RE.match(n):
            raise SpecError(f"node name '{n}' is invalid; use lowercase letters, digits and dashes")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SpecError(f"node name '{dupes[0]}' is used twice; give every node its own name")
    unknown_labels = sorted(set(labels) - set(names))
    if unknown_labels:
        raise SpecError(
            f"labels name node '{unknown_labels[0]}', which is not in nodes; use one of: {', '.join(names)}"
        )
    hosts = list(network.hosts())
    if FIRST_HOST_OFFSET - 1 + len(entries) > len(hosts):
        raise SpecError(
            f"network {network} has room for {len(hosts) - FIRST_HOST_OFFSET + 1} nodes from .{FIRST_HOST_OFFSET}; use a larger network"
        )
    planned = []
    for i, (n, role) in enumerate(entries):
        node_labels = labels.get(n) or {}
        if not isinstance(node_labels, dict):
            raise SpecError(f"labels.{n} must be a mapping of label names to values")
        planned.append(
            Node(
                name=n,
                role=role,
                ip=str(hosts[FIRST_HOST_OFFSET - 1 + i]),
                labels={str(k): str(v) for k, v in node_labels.items()},
            )
        )
    return tuple(planned)


def load_spec_file_or_empty(path: Path | None) -> dict[str, Any]:
    return load_file(path) if path is not None else {}
