"""The cluster spec: one validated object built from a YAML file and command-line flags.

Validation happens before anything is created; every problem is one sentence naming the field and
the fix (SpecError).
"""

from __future__ import annotations

import ipaddress
import os
import re
import reprlib
import urllib.parse
from collections.abc import Hashable
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
# Cluster and node names: lowercase letters and digits, single dashes between them (machines are
# <name>-<node>, so a name ending in a dash made `lab--cp1`); at most 31 and 63 characters.
NAME_RE = re.compile(r"[a-z](?:-?[a-z0-9])*")
NAME_MAX, NODE_NAME_MAX = 31, 63
# The Kubernetes minors the toolkit installs: pkgs.k8s.io has one repository per minor, and the roles
# are written and tested for these (the offline bundle knows fewer: bundle.KNOWN_KUBERNETES). A release
# joins this list when it is out and tested; until then it is refused like one that does not exist.
KUBE_MINORS = ("1.30", "1.31", "1.32", "1.33", "1.34", "1.35", "1.36", "1.37")
KUBE_VERSION_RE = re.compile(r"(?P<minor>1\.(?:0|[1-9][0-9]*))(?:\.(?:0|[1-9][0-9]*))?")
CALICO_VERSION_RE = re.compile(r"3\.(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))?")
# Control planes (etcd members) and swarm managers (Raft voters): an odd count that keeps a quorum.
LEAD_COUNTS = (1, 3, 5)
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
    "storage": True,
    "metrics": True,
    "ingress": False,
    "mirrors": {},
    "time_scale": 1,
}
KNOWN_KEYS = set(DEFAULTS)
VERSION_KEYS = set(DEFAULTS["versions"])
# A cluster spec is a few dozen lines; a bigger --config is the wrong file (or /dev/zero).
MAX_SPEC_BYTES = 1024 * 1024

# User values quoted in messages: one line (repr escapes newlines) and short, whatever was given.
_SHOWN = reprlib.Repr()
_SHOWN.maxstring = 200  # room for a path
_SHOWN.maxother = 60
_SHOWN.maxlevel = 2
_SHOWN.maxlist = _SHOWN.maxdict = _SHOWN.maxset = _SHOWN.maxfrozenset = _SHOWN.maxtuple = 3


def _shown(value: Any) -> str:
    return _SHOWN.repr(value)


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
    # Kubernetes add-ons: storage is a default StorageClass with dynamic local volumes
    # (roles/local_path_storage).
    storage: bool = True
    # metrics is metrics-server behind the resource metrics API (roles/metrics_server).
    metrics: bool = True
    # ingress is Traefik serving Ingress and the Gateway API on a NodePort of every node
    # (roles/traefik_ingress); off by default.
    ingress: bool = False
    # Where the nodes fetch from instead of the public sites (a company's mirrors): MIRROR_KEYS below.
    mirrors: dict[str, Any] = field(default_factory=dict)
    # How many times slower than an ordinary machine the nodes are (VMs under software emulation, a
    # loaded laptop): every wait and timeout of the roles, Ansible's connection timeout, kubeadm's own
    # timeouts and the control plane's leader-election durations are multiplied by it.
    time_scale: float = 1

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


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first: int, again: int) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key, self.first, self.again = key, first, again


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader, stricter: a key given twice in one mapping is an error (PyYAML keeps the
    last one), and a value its constructors cannot build (`2001-13-45`, `!!int three`) is a YAML
    error with its line rather than whatever Python exception the constructor hit."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base`: keys written beside it override the merged ones, as intended
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # the base class refuses it with its own message
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(key, seen[key], line)
            seen[key] = line
        return super().construct_mapping(node, deep)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, KeyError, IndexError, AttributeError, TypeError, OverflowError) as exc:
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {node.tag.rsplit(':', 1)[-1]} value", node.start_mark
            ) from exc


def load_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as stream:
            raw = stream.read(MAX_SPEC_BYTES + 1)
    except IsADirectoryError:
        raise SpecError(f"the cluster spec {path} is a directory; give --config the path of a YAML file") from None
    except OSError as exc:
        raise SpecError(f"cannot read the cluster spec {path}: {exc.strerror}; check the --config path") from exc
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(f"the cluster spec {path} is larger than 1 MiB, which no spec is; check the --config path")
    if b"\0" in raw:
        raise SpecError(f"the cluster spec {path} is a binary file, not YAML text; check the --config path")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if any(b < 0x20 and b not in b"\t\n\r" for b in raw):
            raise SpecError(
                f"the cluster spec {path} is a binary file, not YAML text; check the --config path"
            ) from exc
        raise SpecError(
            f"the cluster spec {path} is not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start}); "
            "save it as UTF-8, or check the --config path"
        ) from exc
    try:
        data = yaml.load(text, Loader=_SpecLoader)  # a SafeLoader: no Python objects
    except _DuplicateKey as exc:
        raise SpecError(
            f"the cluster spec {path} gives {_shown(exc.key)} twice (lines {exc.first} and {exc.again}); keep one"
        ) from exc
    except yaml.reader.ReaderError as exc:
        raise SpecError(
            f"the cluster spec {path} holds the character #x{exc.character:04x}, which YAML does not allow, "
            f"at offset {exc.position}; remove it, or check the --config path"
        ) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        if mark is None:
            raise SpecError(f"the cluster spec {path} is not valid YAML; fix its syntax") from exc
        raise SpecError(
            f"the cluster spec {path} is not valid YAML at line {mark.line + 1}; fix the syntax there"
        ) from exc
    except RecursionError:
        raise SpecError(
            f"the cluster spec {path} nests too deeply to be a cluster spec; check the --config path"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(f"the cluster spec {path} must be a YAML mapping of settings (name:, nodes:, ...)")
    return data


def build_spec(file_data: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None) -> ClusterSpec:
    """Merge defaults, the file and the flags (flags win), validate, and plan names and addresses."""
    raw: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULTS.items()}
    given: set[str] = set()
    for source in (file_data or {}, {k: v for k, v in (overrides or {}).items() if v is not None}):
        unknown = sorted((k for k in source if k not in KNOWN_KEYS), key=repr)
        if unknown:
            raise SpecError(
                f"unknown spec field {_shown(unknown[0])}; valid fields are: {', '.join(sorted(KNOWN_KEYS))}"
            )
        for key, value in source.items():
            given.add(key)
            if key == "versions":
                if not isinstance(value, dict):
                    raise SpecError("spec field 'versions' must be a mapping such as {kubernetes: '1.36'}")
                bad = sorted((k for k in value if k not in VERSION_KEYS), key=repr)
                if bad:
                    raise SpecError(
                        f"unknown version key {_shown(bad[0])}; valid keys are: {', '.join(sorted(VERSION_KEYS))}"
                    )
                raw["versions"].update({k: _version_text(k, v) for k, v in value.items()})
            else:
                raw[key] = value
    return _validate(raw, given)


def _version_text(key: str, value: Any) -> str:
    """A version as the text it was written as: a YAML number has already lost it (1.30 reads as the
    float 1.3), so it is refused before anything turns it into a string."""
    if value is None and key == "runtime":
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if key == "kubernetes":
            text = repr(value) if isinstance(value, float) else ""
            quoted = next((t for t in (text, text + "0") if t in KUBE_MINORS), KUBE_MINORS[-1])
        elif key == "calico":
            quoted = repr(value) if CALICO_VERSION_RE.fullmatch(repr(value)) else str(DEFAULTS["versions"]["calico"])
        else:
            quoted = str(value)
        raise SpecError(f'versions.{key} is the number {value!r} in the spec file; quote it: {key}: "{quoted}"')
    if not isinstance(value, str):
        example = {"kubernetes": KUBE_MINORS[-1], "calico": DEFAULTS["versions"]["calico"]}.get(key, "27.5.1")
        raise SpecError(f'versions.{key} must be a quoted version such as "{example}", not {_shown(value)}')
    return value


def _kube_version(text: str) -> str:
    """A minor the toolkit installs (KUBE_MINORS), or a patch of one."""
    if text == "":
        raise SpecError(
            f"versions.kubernetes is empty; drop --kube-version (or versions.kubernetes) for the default "
            f"{DEFAULTS['versions']['kubernetes']}, or give a release such as {KUBE_MINORS[-1]}"
        )
    match = KUBE_VERSION_RE.fullmatch(text)
    if match is None or match["minor"] not in KUBE_MINORS:
        raise SpecError(
            f"versions.kubernetes {_shown(text)} is not a Kubernetes release this toolkit installs; give a minor "
            f"from {KUBE_MINORS[0]} to {KUBE_MINORS[-1]} such as {KUBE_MINORS[-1]}, or a patch of one such as "
            f"{DEFAULTS['versions']['kubernetes']}"
        )
    return text


def _calico_version(text: str) -> str:
    if not CALICO_VERSION_RE.fullmatch(text):
        raise SpecError(
            f"versions.calico {_shown(text)} must be a Calico 3 release such as 3.31 or "
            f"{DEFAULTS['versions']['calico']}"
        )
    return text


def check_engine_fields(engine: str, given: set[str]) -> None:
    """Refuse fields that this run gave (its config file and flags) but the engine ignores."""
    ignored = (
        sorted(
            given
            & {"pod_cidr", "service_cidr", "control_planes", "api_vip", "storage", "metrics", "ingress", "mirrors"}
        )
        if engine == "swarm"
        else []
    )
    if "control_planes" in ignored:
        raise SpecError(
            "control_planes is a Kubernetes setting; a swarm's control plane is its managers: use --managers 3"
        )
    if "storage" in ignored:
        raise SpecError(
            "storage is a Kubernetes add-on (a default StorageClass) and does nothing with engine swarm; drop "
            "storage from the spec file and --storage/--no-storage, or use --engine kubernetes"
        )
    if "metrics" in ignored:
        raise SpecError(
            "metrics is a Kubernetes add-on (metrics-server) and does nothing with engine swarm; drop metrics "
            "from the spec file and --metrics/--no-metrics, or use --engine kubernetes"
        )
    if "ingress" in ignored:
        raise SpecError(
            "ingress is a Kubernetes add-on (Traefik) and does nothing with engine swarm; drop ingress from the "
            "spec file and --ingress, or use --engine kubernetes"
        )
    if "mirrors" in ignored:
        raise SpecError(
            "mirrors are where a Kubernetes cluster's packages, manifests and images come from and do nothing "
            "with engine swarm; drop mirrors from the spec file, or use --engine kubernetes"
        )
    if ignored:
        field = ignored[0]
        raise SpecError(
            f"{field} is a Kubernetes setting and does nothing with engine swarm (its overlay networks take "
            f"addresses from swarm_address_pool, Docker's {DEFAULT_SWARM_POOL} by default); drop "
            f"--{field.replace('_', '-')} or use --engine kubernetes"
        )
    if engine != "kubernetes":
        return
    if "swarm_address_pool" in given:
        raise SpecError(
            "swarm_address_pool is a Docker Swarm setting and does nothing with engine kubernetes (pods and "
            "services take pod_cidr and service_cidr); drop --swarm-address-pool or use --engine swarm"
        )
    if "managers" in given:
        raise SpecError(
            "managers is a Docker Swarm setting and does nothing with engine kubernetes, whose control plane is "
            "control_planes; drop --managers, or use --control-planes 3 (or --engine swarm)"
        )
    if "labels" in given:
        raise SpecError(
            "labels are Docker Swarm node labels and do nothing with engine kubernetes; drop labels from the "
            "spec file, or use --engine swarm"
        )


def _choice(raw: dict[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = raw[key]
    if not isinstance(value, str) or value not in choices:
        raise SpecError(f"{key} {_shown(value)} is not supported; use one of: {', '.join(choices)}")
    return value


def _whole(value: Any) -> int | None:
    """A whole number given as a number or as text (flags are text); None for anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def _int(raw: dict[str, Any], key: str, low: int, high: int) -> int:
    value = _whole(raw[key])
    if value is None:
        raise SpecError(f"{key} must be a whole number between {low} and {high}, not {_shown(raw[key])}")
    if not low <= value <= high:
        raise SpecError(f"{key} must be between {low} and {high}, not {value}")
    return value


TIME_SCALE_MAX = 20


def _time_scale(value: Any) -> float:
    """A number from 1 to TIME_SCALE_MAX (whole numbers stay ints, so the saved spec reads 4, not 4.0)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise SpecError(
            f"time_scale must be a number from 1 to {TIME_SCALE_MAX} (how many times slower than an ordinary "
            f"machine the nodes are, e.g. 4 for VMs under software emulation), not {_shown(value)}"
        )
    if not 1 <= value <= TIME_SCALE_MAX:
        raise SpecError(f"time_scale must be between 1 and {TIME_SCALE_MAX}, not {value}")
    return int(value) if float(value).is_integer() else float(value)


def _bool(raw: dict[str, Any], key: str) -> bool:
    value = raw[key]
    if not isinstance(value, bool):
        raise SpecError(f"{key} must be true or false, not {_shown(value)}; e.g. {key}: false (or --no-{key})")
    return value


def _lead_count(raw: dict[str, Any], key: str) -> int:
    """control_planes or managers: 1, 3 or 5 (LEAD_COUNTS)."""
    value = _whole(raw[key])
    flag = f"--{key.replace('_', '-')}"
    if value is None:
        raise SpecError(f"{key} must be 1, 3 or 5, not {_shown(raw[key])}; give e.g. {flag} 3")
    if value in (2, 4, 6) and key == "managers":
        raise SpecError(f"managers must be an odd number (1, 3, 5) to keep a Raft quorum, not {value}")
    if value in (2, 4, 6):
        raise SpecError(
            f"control_planes must be an odd number (1, 3, 5) to keep etcd's quorum, not {value}: "
            f"with {value} members etcd survives no more failures than with {value - 1}"
        )
    if value not in LEAD_COUNTS:
        raise SpecError(f"{key} must be 1, 3 or 5, not {value}; give {flag} {5 if value > 5 else 1}")
    return value


def _text(raw: dict[str, Any], key: str, example: str, empty_when_none: bool = True) -> str:
    value = raw[key]
    if value is None and empty_when_none:
        return ""
    if not isinstance(value, str):
        raise SpecError(f"{key} must be text such as {example}, not {_shown(value)}")
    return value


def _network(raw: dict[str, Any], key: str) -> ipaddress.IPv4Network:
    value = raw[key]
    if not isinstance(value, str):
        raise SpecError(f"{key} must be a network in CIDR form such as {DEFAULTS[key]}, not {_shown(value)}")
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError:
        raise SpecError(
            f"{key} {_shown(value)} is not a valid IPv4 network in CIDR form with its host bits clear, e.g. 10.244.0.0/16"
        ) from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise SpecError(f"{key} {_shown(value)} must be an IPv4 network")
    return net


def _host(network: ipaddress.IPv4Network, index: int) -> ipaddress.IPv4Address:
    """The network's index-th host address (0: the first after the network address), without listing
    them all (a /8 holds 16 million)."""
    return network.network_address + 1 + index


def _offline_dir(value: Any, runtime_source: str) -> str:
    """'' unless runtime_source is offline; then an existing directory on this machine (Ansible copies
    the packages from it), as an absolute path with ~ expanded."""
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise SpecError(f"offline_dir must be the path of a directory holding the packages, not {_shown(value)}")
    if runtime_source != "offline":
        if value:
            raise SpecError(
                f"offline_dir is only read with runtime_source offline (this spec has {runtime_source}); drop "
                "offline_dir, or set runtime_source: offline"
            )
        return ""
    if not value:
        raise SpecError("runtime_source offline needs offline_dir: a directory holding the packages")
    try:
        path = os.path.expanduser(value)
    except (RuntimeError, ValueError):
        path = value
    if not os.path.isabs(path):
        raise SpecError(
            f"offline_dir {_shown(value)} must be an absolute path (Ansible looks a relative one up beside its "
            "roles and playbooks, not here); give e.g. /srv/packages"
        )
    if not os.path.isdir(path):
        raise SpecError(
            f"offline_dir {_shown(value)} is not a directory on this machine; give the directory that holds "
            "the runtime's .deb or .rpm files"
        )
    return path


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


def _name(value: Any, what: str, longest: int) -> str:
    if not isinstance(value, str):
        raise SpecError(f"{what} must be text such as lab, not {_shown(value)}")
    if len(value) > longest or not NAME_RE.fullmatch(value):
        raise SpecError(
            f"{what} {_shown(value)} is invalid; use 1-{longest} lowercase letters, digits and single dashes, "
            "starting with a letter and not ending with a dash"
        )
    return value


def _validate(raw: dict[str, Any], given: set[str]) -> ClusterSpec:
    name = _name(raw["name"], "name", NAME_MAX)
    provider = _choice(raw, "provider", PROVIDERS)
    engine = _choice(raw, "engine", ENGINES)
    runtime = _choice(raw, "runtime", RUNTIMES)
    runtime_source = _choice(raw, "runtime_source", RUNTIME_SOURCES)
    if engine == "swarm" and runtime != "docker":
        raise SpecError("engine swarm needs runtime docker; set runtime: docker (or drop --runtime)")
    offline_dir = _offline_dir(raw["offline_dir"], runtime_source)
    package_proxy = _package_proxy(raw["package_proxy"])
    kube_source = _choice(raw, "kube_source", KUBE_SOURCES)
    box = _text(raw, "box", str(DEFAULTS["box"]), empty_when_none=False)
    image = _text(raw, "image", "provisioner/node-runtime")
    stack = _text(raw, "stack", "stack.yml")
    cpus = _int(raw, "cpus", 1, 64)
    memory = _int(raw, "memory", 512, 262144)
    # Only the engine's own count: the other one, given in this run, is check_engine_fields' to refuse.
    lead_key = "managers" if engine == "swarm" else "control_planes"
    leads = _lead_count(raw, lead_key)

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

    nodes = _plan_nodes(raw["nodes"], engine, leads, lead_key in given, network, raw.get("labels") or {})
    api_vip = _api_vip(raw.get("api_vip"), engine, nodes, network)
    versions = dict(raw["versions"])
    _kube_version(versions["kubernetes"])
    _calico_version(versions["calico"])
    return ClusterSpec(
        name=name,
        provider=provider,
        box=box,
        image=image,
        cpus=cpus,
        memory=memory,
        network=str(network),
        pod_cidr=str(pod),
        service_cidr=str(service),
        engine=engine,
        managers=sum(n.role == "manager" for n in nodes) if engine == "swarm" else 1,
        runtime=runtime,
        runtime_source=runtime_source,
        offline_dir=offline_dir,
        versions=versions,
        nodes=nodes,
        stack=stack,
        package_proxy=package_proxy,
        kube_source=kube_source,
        control_planes=sum(n.role == "control_plane" for n in nodes) if engine == "kubernetes" else 1,
        api_vip=api_vip,
        swarm_address_pool=str(pool),
        storage=_bool(raw, "storage"),
        metrics=_bool(raw, "metrics"),
        ingress=_bool(raw, "ingress"),
        mirrors=_mirrors(raw.get("mirrors")),
        time_scale=_time_scale(raw["time_scale"]),
    )


# mirrors: each key, and what it replaces.
MIRROR_KEYS = {
    "kubernetes_packages": "pkgs.k8s.io's https://pkgs.k8s.io/core:/stable: (same layout: v1.MINOR/deb/ below it)",
    "calico_manifests": "Calico's release manifests (same layout: vVERSION/manifests/calico-vxlan.yaml below it)",
    "gateway_api_manifests": "the Gateway API's release downloads (same layout: vVERSION/standard-install.yaml below it)",
    "registries": "image registries: a registry name (registry.k8s.io, quay.io, docker.io) to a mirror URL or a list",
    "registry_ca": "the path of a PEM file on this machine: the CA that signed the mirrors' certificates",
}
MIRROR_URL_RE = re.compile(r"https?://[A-Za-z0-9.\-]+(?::\d{1,5})?(?:/[^\s\"\\\\]*)?")
REGISTRY_NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::\d{1,5})?")


def _mirror_url(value: Any, what: str) -> str:
    if not isinstance(value, str) or not MIRROR_URL_RE.fullmatch(value):
        raise SpecError(
            f"{what} {_shown(value)} is not an http:// or https:// URL; give e.g. https://mirror.example.internal:5000"
        )
    return value.rstrip("/")


def _mirrors(value: Any) -> dict[str, Any]:
    """mirrors, checked and normalised: URLs without a trailing slash, each registry's mirrors a list,
    registry_ca an absolute path to a readable PEM certificate file."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(f"mirrors must be a mapping with keys {', '.join(MIRROR_KEYS)}, not {_shown(value)}")
    unknown = sorted(set(value) - set(MIRROR_KEYS))
    if unknown:
        known = "; ".join(f"{k}: {v}" for k, v in MIRROR_KEYS.items())
        raise SpecError(f"mirrors has no key {', '.join(map(str, unknown))}; the keys are {known}")
    out: dict[str, Any] = {}
    for key in ("kubernetes_packages", "calico_manifests", "gateway_api_manifests"):
        if value.get(key):
            out[key] = _mirror_url(value[key], f"mirrors.{key}")
    registries = value.get("registries") or {}
    if not isinstance(registries, dict):
        raise SpecError(f"mirrors.registries must map a registry name to mirror URLs, not {_shown(registries)}")
    checked: dict[str, list[str]] = {}
    for name, urls in registries.items():
        if not isinstance(name, str) or not REGISTRY_NAME_RE.fullmatch(name):
            raise SpecError(
                f"mirrors.registries has {_shown(name)}, which is not a registry name such as registry.k8s.io"
            )
        listed = [urls] if isinstance(urls, str) else urls
        if not isinstance(listed, list) or not listed:
            raise SpecError(f"mirrors.registries.{name} must be a mirror URL or a list of them, not {_shown(urls)}")
        checked[name] = [_mirror_url(u, f"mirrors.registries.{name}") for u in listed]
        for url in checked[name]:
            path = urllib.parse.urlsplit(url).path
            if path and not (path == "/v2" or path.startswith("/v2/")):
                raise SpecError(
                    f"mirrors.registries.{name} {_shown(url)} has a path that does not start with /v2: containerd uses "
                    "a mirror's path as given, so write the registry API's path (e.g. https://mirror:5000/v2/quay.io) "
                    "or none"
                )
    if checked:
        out["registries"] = checked
    ca = value.get("registry_ca")
    if ca:
        if not isinstance(ca, str) or not os.path.isabs(ca):
            raise SpecError(f"mirrors.registry_ca {_shown(ca)} must be the absolute path of a PEM file on this machine")
        try:
            text = Path(ca).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError(
                f"mirrors.registry_ca {_shown(ca)} cannot be read ({exc}); give a PEM CA certificate"
            ) from None
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise SpecError(f"mirrors.registry_ca {_shown(ca)} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
        if not checked:
            raise SpecError("mirrors.registry_ca is the CA of registry mirrors, and mirrors.registries names none")
        out["registry_ca"] = ca
    return out


def _api_vip(value: Any, engine: str, nodes: tuple[Node, ...], network: ipaddress.IPv4Network) -> str:
    """The API server's virtual IP: only with several control planes; by default the node network's
    address just below the first node (.9 of a /24), which no node takes."""
    if value is not None and not isinstance(value, str):
        raise SpecError(f"api_vip must be an IPv4 address such as 192.168.56.9 (or empty), not {_shown(value)}")
    several = engine == "kubernetes" and sum(n.role == "control_plane" for n in nodes) > 1
    if not several:
        if value:
            raise SpecError("api_vip is the address of several control planes; drop it, or set control_planes: 3")
        return ""
    if not value:
        return str(_host(network, FIRST_HOST_OFFSET - 2))
    try:
        vip = ipaddress.IPv4Address(value)
    except ValueError:
        raise SpecError(
            f"api_vip {_shown(value)} is not an IPv4 address; give a free address of the node network"
        ) from None
    if vip not in network or vip in (network.network_address, network.broadcast_address):
        raise SpecError(f"api_vip {vip} is not a host address of the node network {network}; pick one inside it")
    taken = [n.name for n in nodes if n.ip == str(vip)]
    if taken:
        raise SpecError(f"api_vip {vip} is node {taken[0]}'s address; pick a free address of {network}")
    return str(vip)


def _node_entries(nodes: list[Any], engine: str, leads_wanted: int, leads_given: bool) -> list[tuple[str, str]]:
    """An explicit node list: (name, role) per node, its leads (control planes or managers) 1, 3 or 5
    and agreeing with control_planes or managers when those were given too."""
    lead_role, lead_key = ("control_plane", "control_planes") if engine == "kubernetes" else ("manager", "managers")
    lead_word = "control plane" if engine == "kubernetes" else "manager"
    roles = KUBE_ROLES if engine == "kubernetes" else SWARM_ROLES
    if not nodes:
        raise SpecError("nodes is an empty list; give at least one node, e.g. nodes: 3")
    if len(nodes) > MAX_NODES:
        raise SpecError(f"nodes lists {len(nodes)} nodes; at most {MAX_NODES} are supported, so list fewer")
    entries: list[tuple[str, str]] = []
    for i, item in enumerate(nodes):
        if not isinstance(item, dict) or "name" not in item:
            raise SpecError(f"nodes[{i}] must be a mapping with name and role, e.g. {{name: cp1, role: {lead_role}}}")
        role = item.get("role", "worker")
        if not isinstance(role, str) or role not in roles:
            raise SpecError(
                f"nodes[{i}] role {_shown(role)} is not valid for engine {engine}; use one of: {', '.join(roles)}"
            )
        if not isinstance(item["name"], str):
            raise SpecError(f"nodes[{i}] name must be text such as cp1, not {_shown(item['name'])}")
        entries.append((item["name"], role))
    leads = [n for n, role in entries if role == lead_role]
    if not leads:
        raise SpecError(f"nodes has no {lead_role}; give the first node role {lead_role}")
    listed = f"{len(leads)} {lead_word}{'s' if len(leads) > 1 else ''} ({', '.join(leads)})"
    if leads_given and len(leads) != leads_wanted:
        raise SpecError(
            f"{lead_key} is {leads_wanted} but nodes lists {listed}; make them agree, or drop {lead_key} "
            "and let the node list decide"
        )
    if len(leads) not in LEAD_COUNTS:
        quorum = "etcd needs" if engine == "kubernetes" else "a swarm needs"
        raise SpecError(
            f"nodes lists {len(leads)} {lead_word}s; {quorum} 1, 3 or 5 to keep its quorum"
            if len(leads) % 2 == 0
            else f"nodes lists {len(leads)} {lead_word}s; give 1, 3 or 5"
        )
    return entries


def _plan_nodes(
    nodes: Any, engine: str, leads_wanted: int, leads_given: bool, network: ipaddress.IPv4Network, labels: Any
) -> tuple[Node, ...]:
    if not isinstance(labels, dict):
        raise SpecError("labels must map node names to {key: value} mappings")
    lead_role, lead_prefix = ("control_plane", "cp") if engine == "kubernetes" else ("manager", "manager")
    if isinstance(nodes, list):
        entries = _node_entries(nodes, engine, leads_wanted, leads_given)
    else:
        count = _whole(nodes)
        if count is None:
            raise SpecError(f"nodes must be a count such as 3 or a list of nodes, not {_shown(nodes)}")
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
        entries = [(f"{lead_prefix}{i + 1}", lead_role) for i in range(leads_wanted)]
        entries += [(f"worker{i + 1}", "worker") for i in range(count - leads_wanted)]
    # Control plane / managers first so that they take .10, .11 ...
    entries.sort(key=lambda e: 0 if e[1] == lead_role else 1)
    names = [n for n, _ in entries]
    for n in names:
        _name(n, "node name", NODE_NAME_MAX)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SpecError(f"node name '{dupes[0]}' is used twice; give every node its own name")
    unknown_labels = sorted((k for k in labels if k not in names), key=repr)
    if unknown_labels:
        raise SpecError(
            f"labels name node {_shown(unknown_labels[0])}, which is not in nodes; use one of: {', '.join(names)}"
        )
    room = network.num_addresses - 2 - (FIRST_HOST_OFFSET - 1)
    if len(entries) > room:
        raise SpecError(f"network {network} has room for {room} nodes from .{FIRST_HOST_OFFSET}; use a larger network")
    planned = []
    for i, (n, role) in enumerate(entries):
        planned.append(
            Node(name=n, role=role, ip=str(_host(network, FIRST_HOST_OFFSET - 1 + i)), labels=_labels(n, labels.get(n)))
        )
    return tuple(planned)


def _labels(node: str, value: Any) -> dict[str, str]:
    """One node's swarm labels: names to text (a number or a boolean is written as text)."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise SpecError(f"labels.{node} must map label names to values, e.g. {{disk: ssd}}, not {_shown(value)}")
    for key, text in value.items():
        if text is None or not isinstance(text, (str, int, float)):
            label = key if key.isprintable() and len(key) <= 60 else _shown(key)
            raise SpecError(f"labels.{node}.{label} must be a value such as ssd, not {_shown(text)}")
    return {k: str(v) for k, v in value.items()}


def load_spec_file_or_empty(path: Path | None) -> dict[str, Any]:
    return load_file(path) if path is not None else {}
