"""Pure functions behind the Kubernetes stages (kube_packages, kube_control_plane, calico, kube_join, kube_reset).

The roles call these through the Ansible filter plugin filter_plugins/kube.py, and the unit tests call
them directly, so what the tests check is what the roles run. Nothing here touches the network, a
file or a process: every function maps data to data and raises KubeConfigError with one sentence
that names the problem and the fix.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from provisioner.errors import ProvisionError

PackageFamily = Literal["deb", "rpm"]

PKGS_K8S_IO = "https://pkgs.k8s.io/core:/stable:"
CALICO_MANIFEST_BASE = "https://raw.githubusercontent.com/projectcalico/calico"
# The address VirtualBox/libvirt NAT gives every Vagrant VM: identical on all nodes, never a node IP.
VAGRANT_NAT_ADDRESS = "10.0.2.15"
KUBEADM_API = "kubeadm.k8s.io/v1beta4"
KUBELET_API = "kubelet.config.k8s.io/v1beta1"
KUBE_PROXY_API = "kubeproxy.config.k8s.io/v1alpha1"
DEFAULT_CRI_SOCKET = "unix:///run/containerd/containerd.sock"
# Packages pinned to the exact Kubernetes version. cri-tools is not among them: it has its own
# numbering, and a per-minor pkgs.k8s.io repository need not carry the cri-tools of that minor (kubeadm
# no longer depends on it), so it is installed as the repository has it, and held.
KUBE_CORE_PACKAGES = ("kubelet", "kubeadm", "kubectl")
# Install order for offline .deb files: dependencies first (kubeadm needs kubelet, kubectl, cri-tools).
_OFFLINE_ORDER = ("cri-tools", "kubernetes-cni", "kubelet", "kubectl", "kubeadm")
_OFFLINE_BINARIES = ("kubeadm", "kubelet", "kubectl")
_TOKEN_RE = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")
_HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_VERSION_RE = re.compile(r"^v?1\.(?P<minor>\d+)(?:\.(?P<patch>\d+))?$")
_INSTALLED_RE = re.compile(r"^v?1\.(?P<minor>\d+)\.(?P<patch>\d+)(?P<extra>[-+.\w]*)$")


class KubeConfigError(ProvisionError):
    """Invalid input for a Kubernetes stage; the message names the variable and the fix."""


# --------------------------------------------------------------------------------------------
# Versions and packages (kube_packages)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KubeVersion:
    """A Kubernetes version as the toolkit accepts it: 1.MINOR or 1.MINOR.PATCH."""

    minor: int
    patch: int | None = None

    @property
    def series(self) -> str:
        """'1.36': the pkgs.k8s.io repository the packages come from."""
        return f"1.{self.minor}"

    @property
    def full(self) -> str | None:
        """'1.36.2' when a patch is pinned, else None."""
        return None if self.patch is None else f"1.{self.minor}.{self.patch}"


def parse_kube_version(value: object) -> KubeVersion:
    """Parse kube_version ("1.36", "1.36.2", with or without a leading v)."""
    text = str(value).strip()
    match = _VERSION_RE.match(text)
    if not match:
        raise KubeConfigError(
            f'kube_version "{text}" is not a Kubernetes version; use a minor such as "1.36" '
            'or a minor.patch such as "1.36.2"'
        )
    patch = match.group("patch")
    return KubeVersion(minor=int(match.group("minor")), patch=None if patch is None else int(patch))


def kube_version_info(value: object) -> dict[str, Any]:
    """The parsed version as plain data for Ansible: series, full (or empty), minor, patch (or -1)."""
    version = parse_kube_version(value)
    return {
        "series": version.series,
        "full": version.full or "",
        "minor": version.minor,
        "patch": -1 if version.patch is None else version.patch,
    }


def pkgs_repository(kube_version: object, family: str, base_url: str = PKGS_K8S_IO) -> dict[str, str]:
    """The pkgs.k8s.io repository of one minor: its URL and the URL of its signing key."""
    version = parse_kube_version(kube_version)
    fam = _family(family)
    url = f"{base_url.rstrip('/')}/v{version.series}/{fam}/"
    key = "Release.key" if fam == "deb" else "repodata/repomd.xml.key"
    return {"url": url, "key_url": url + key, "series": version.series}


def apt_sources(kube_version: object, keyring: str, base_url: str = PKGS_K8S_IO) -> str:
    """A deb822 .sources file for the flat pkgs.k8s.io repository of kube_version's minor."""
    if not keyring.startswith("/"):
        raise KubeConfigError(f'the apt keyring path "{keyring}" must be absolute')
    repo = pkgs_repository(kube_version, "deb", base_url)
    return (
        f"# Kubernetes v{repo['series']} packages (pkgs.k8s.io). Managed by Ansible (role kube_packages).\n"
        "Types: deb\n"
        f"URIs: {repo['url']}\n"
        "Suites: /\n"
        f"Signed-By: {keyring}\n"
    )


def installed_packages(query_output: object, family: str) -> dict[str, str]:
    """Installed package -> its exact version, from the package database query of kube_packages.

    deb: `dpkg-query -W -f='${db:Status-Abbrev}|${Package}|${Version}\\n' NAME...` (only packages
    whose status is installed count: `ii`, or `hi` once held; removed ones keep a `rc` line);
    rpm: `rpm -q --qf '%{NAME}|%{VERSION}-%{RELEASE}\\n' NAME...` (`package NAME is not installed`
    lines are skipped). Any other line is refused, so a changed query cannot pass unnoticed.
    """
    fam = _family(family)
    found: dict[str, str] = {}
    for raw in str(query_output or "").splitlines():
        line = raw.strip()
        if not line:
            continue
        if fam == "rpm" and re.match(r"^package \S+ is not installed$", line):
            continue
        fields = raw.split("|") if fam == "deb" else line.split("|")
        if fam == "deb" and len(fields) == 3 and len(fields[0].rstrip()) >= 2 and fields[1] and fields[2]:
            if fields[0][1] == "i":
                found[fields[1].strip()] = fields[2].strip()
            continue
        if fam == "rpm" and len(fields) == 2 and all(fields):
            found[fields[0]] = fields[1]
            continue
        raise KubeConfigError(f'the installed-package query printed "{line}", which kube_packages cannot read')
    return found


def _package_version_matches(version: KubeVersion, package_version: str) -> int | None:
    """The patch of a package version (`1.36.2-1.1`, `1:1.36.2-1.1`, `1.36.2-150500.1.1`) when it
    satisfies version (same minor, and same patch when one is pinned), else None."""
    match = re.match(r"^(?:\d+:)?1\.(\d+)\.(\d+)(?:[-~+].*)?$", package_version.strip())
    if not match or int(match.group(1)) != version.minor:
        return None
    patch = int(match.group(2))
    return patch if version.patch is None or patch == version.patch else None


def package_pins(
    kube_version: object,
    family: str,
    packages: Sequence[str] = (*KUBE_CORE_PACKAGES, "cri-tools"),
    installed: Mapping[str, str] | None = None,
) -> list[str]:
    """Package specs that pin kube_version: apt `kubeadm=1.36.2-*`, dnf `kubeadm-1.36.2`.

    installed (installed_packages) maps what the node has to its exact version. A kubelet, kubeadm
    or kubectl that is installed at a version satisfying kube_version is pinned to exactly that
    version (`kubeadm=1.36.2-1.1`, `kubeadm-1.36.2-150500.1.1`): a wildcard such as `1.36.*` or
    `1.36.2-*` would let apt upgrade the held package whenever the repository publishes a newer
    patch or build, on any later converge. One that is not installed yet follows the patch of the
    others already installed (`kubectl=1.36.2-*`), or kube_version: a minor-only version then pins
    the minor (`kubeadm=1.36.*`, resolved to the newest patch at first install and kept from then
    on). An installed version that does not satisfy kube_version (another minor or patch asked for)
    is upgraded to the pin. Only kubelet, kubeadm and kubectl are pinned; any other package
    (cri-tools, kubernetes-cni: their own numbering) is left to the repository of the minor, by name.
    """
    version = parse_kube_version(kube_version)
    fam = _family(family)
    sep = "=" if fam == "deb" else "-"
    kept = {
        name: str(found).strip()
        for name, found in (installed or {}).items()
        if name in KUBE_CORE_PACKAGES and _package_version_matches(version, str(found)) is not None
    }
    patches = [_package_version_matches(version, found) for found in kept.values()]
    patch = version.patch if version.patch is not None else max((p for p in patches if p is not None), default=None)
    pins: list[str] = []
    for name in packages:
        if name in kept:
            pins.append(f"{name}{sep}{kept[name]}")
        elif name in KUBE_CORE_PACKAGES and patch is not None:
            pins.append(f"{name}{sep}{version.series}.{patch}" + ("-*" if fam == "deb" else ""))
        elif name in KUBE_CORE_PACKAGES:
            pins.append(f"{name}{sep}{version.series}.*")
        else:
            pins.append(str(name))
    return pins


# Where the admin kubeconfig is kept on the Ansible controller unless kube_kubeconfig_dest says
# otherwise: relative to the directory of the playbooks (playbooks/../.provision/kubeconfig).
# kube_control_plane writes it and kube_reset removes it, both through controller_kubeconfig.
CONTROLLER_KUBECONFIG = "../.provision/kubeconfig"


def controller_kubeconfig(kubeconfig_dest: object, playbook_dir: object) -> str:
    """The controller's kubeconfig path: kube_kubeconfig_dest when set, else the default next to the
    playbooks. The one definition both kube_control_plane and kube_reset resolve their defaults with."""
    dest = "" if kubeconfig_dest is None else str(kubeconfig_dest).strip()
    if dest:
        return dest
    base = str(playbook_dir or "").strip()
    if not base:
        raise KubeConfigError("kube_kubeconfig_dest is empty and playbook_dir is unknown; set kube_kubeconfig_dest")
    return f"{base.rstrip('/')}/{CONTROLLER_KUBECONFIG}"


# The last Kubernetes minor whose kubelet still starts on cgroup v1 (with failCgroupV1: false).
LAST_CGROUP_V1_MINOR = 37
CGROUP_V2_FIX = (
    "boot the host with the unified cgroup v2 hierarchy (kernel argument "
    "systemd.unified_cgroup_hierarchy=1, the default on Debian 11+, Ubuntu 21.10+ and EL 9)"
)


def cgroup_v1_settings(kube_version: object, cgroup_v2: bool) -> dict[str, Any]:
    """What a cgroup v1 node needs for kubelet kube_version, and nothing broader: for 1.35 to 1.37
    KubeletConfiguration failCgroupV1: false and kubeadm's SystemVerification preflight ignored (it
    errors on cgroup v1 from 1.35), with the deprecation warning to print. Empty on cgroup v2 and
    before 1.35 (kubelet only warns there)."""
    version = parse_kube_version(kube_version)
    if cgroup_v2 or version.minor < 35 or version.minor > LAST_CGROUP_V1_MINOR:
        return {"kubelet_config": {}, "ignore_preflight_errors": [], "warning": ""}
    return {
        "kubelet_config": {"failCgroupV1": False},
        "ignore_preflight_errors": ["SystemVerification"],
        "warning": (
            f"this node uses cgroup v1: kubelet {version.series} runs there only with failCgroupV1: false "
            f"(deprecated; kubelet 1.{LAST_CGROUP_V1_MINOR + 1} drops the switch) and kubeadm's SystemVerification "
            f"preflight check ignored; {CGROUP_V2_FIX} before upgrading past 1.{LAST_CGROUP_V1_MINOR}"
        ),
    }


def cgroup_error(kube_version: object, cgroup_v2: bool, allow_cgroup_v1: bool = False) -> str:
    """Why this host cannot run kubelet kube_version ("" when it can).

    kubelet 1.35 to 1.37 refuse cgroup v1 unless failCgroupV1 is false, which the toolkit sets there
    (cgroup_v1_settings); 1.38 and newer have no such switch. Older kubelets still run on cgroup v1
    but it is deprecated, so the toolkit asks for an explicit kube_packages_allow_cgroup_v1.
    """
    if cgroup_v2:
        return ""
    version = parse_kube_version(kube_version)
    fix = CGROUP_V2_FIX
    if version.minor > LAST_CGROUP_V1_MINOR:
        return (
            f"this host uses cgroup v1 and kubelet {version.series} refuses to run on cgroup v1 (1.{LAST_CGROUP_V1_MINOR} "
            f"was the last release with failCgroupV1); {fix}, or pin kube_version 1.{LAST_CGROUP_V1_MINOR}"
        )
    if version.minor >= 35 or allow_cgroup_v1:
        return ""
    return (
        f"this host uses cgroup v1, which kubelet {version.series} only supports as deprecated; {fix}, "
        "or set kube_packages_allow_cgroup_v1: true to accept it"
    )


def offline_plan(files: Iterable[str], family: str) -> dict[str, Any]:
    """How to install from kube_packages_offline_dir: which files, in which order, and how.

    Package files of the host's family win (.deb on Debian/Ubuntu, .rpm on EL); otherwise the
    directory must hold the kubeadm, kubelet and kubectl binaries (crictl optional).
    """
    names = sorted({str(f).rsplit("/", 1)[-1] for f in files})
    fam = _family(family)
    packages = [n for n in names if n.endswith(f".{fam}")]
    if packages:
        missing = [
            p for p in KUBE_CORE_PACKAGES if not any(n.startswith(f"{p}_") or n.startswith(f"{p}-") for n in packages)
        ]
        if missing:
            raise KubeConfigError(
                f"kube_packages_offline_dir has .{fam} files but none for {', '.join(missing)}; "
                f"add the {', '.join(missing)} packages of the pinned version"
            )
        return {"mode": fam, "files": sorted(packages, key=_offline_rank)}
    binaries = [n for n in names if n in (*_OFFLINE_BINARIES, "crictl")]
    if all(b in binaries for b in _OFFLINE_BINARIES):
        return {"mode": "binaries", "files": binaries}
    seen = ", ".join(names) if names else "nothing"
    raise KubeConfigError(
        f"kube_packages_offline_dir holds no usable Kubernetes packages (found: {seen}); put the "
        f".{fam} packages of kubeadm, kubelet, kubectl and cri-tools there, or the kubeadm, kubelet and "
        "kubectl binaries"
    )


def _offline_rank(name: str) -> tuple[int, str]:
    for rank, prefix in enumerate(_OFFLINE_ORDER):
        if name.startswith(f"{prefix}_") or name.startswith(f"{prefix}-"):
            return (rank + 1, name)
    return (0, name)


def installed_version_matches(kube_version: object, installed: object) -> bool:
    """True when the installed kubeadm/kubelet version (`v1.36.2`) satisfies kube_version."""
    wanted = parse_kube_version(kube_version)
    match = _INSTALLED_RE.match(str(installed).strip())
    if not match or int(match.group("minor")) != wanted.minor:
        return False
    return wanted.patch is None or int(match.group("patch")) == wanted.patch


def resolve_kubernetes_version(kube_version: object, installed: object) -> str:
    """kubeadm's kubernetesVersion: the pinned patch, or for a minor-only pin the installed kubeadm's."""
    wanted = parse_kube_version(kube_version)
    text = str(installed).strip()
    if text and not installed_version_matches(kube_version, text):
        raise KubeConfigError(
            f'kubeadm on this node is "{text}" but kube_version is "{kube_version}"; rerun the '
            "kube_packages stage so the pinned packages are installed"
        )
    if wanted.full:
        return f"v{wanted.full}"
    match = _INSTALLED_RE.match(text)
    if not match:
        raise KubeConfigError(
            f'kube_version "{kube_version}" pins only the minor and the installed kubeadm version '
            f'"{text}" cannot be read; install kubeadm (stage kube_packages) or pin a patch version'
        )
    return f"v1.{match.group('minor')}.{match.group('patch')}"


def _family(family: str) -> PackageFamily:
    if family == "deb":
        return "deb"
    if family == "rpm":
        return "rpm"
    raise KubeConfigError(f'package family "{family}" is not supported; use "deb" or "rpm"')


# --------------------------------------------------------------------------------------------
# Node IP
# --------------------------------------------------------------------------------------------


def host_ipv4_addresses(facts: Mapping[str, Any]) -> list[str]:
    """Every IPv4 address in a host's Ansible facts: primaries (by interface name), secondaries, the rest."""
    primaries: list[str] = []
    secondaries: list[str] = []
    for name in sorted(str(i) for i in facts.get("interfaces") or []):
        iface = facts.get(name.replace("-", "_").replace(".", "_")) or facts.get(name)
        if not isinstance(iface, Mapping):
            continue
        ipv4 = iface.get("ipv4")
        if isinstance(ipv4, Mapping) and ipv4.get("address"):
            primaries.append(str(ipv4["address"]))
        for extra in iface.get("ipv4_secondaries") or []:
            if isinstance(extra, Mapping) and extra.get("address"):
                secondaries.append(str(extra["address"]))
    rest = [str(a) for a in facts.get("all_ipv4_addresses") or []]
    ordered: list[str] = []
    for address in (*primaries, *secondaries, *rest):
        if address not in ordered:
            ordered.append(address)
    return ordered


def select_node_ip(facts: Mapping[str, Any], network_cidr: str, node_ip: object = "") -> str:
    """The node's address on the cluster network.

    An explicit node_ip wins (it must lie inside node_network_cidr and, when facts list addresses,
    be one of them). Otherwise the first address inside node_network_cidr, never the Vagrant NAT
    address 10.0.2.15 that every VM shares.
    """
    network = _network(network_cidr, "node_network_cidr")
    addresses = host_ipv4_addresses(facts)
    explicit = str(node_ip or "").strip()
    if explicit:
        try:
            address = ipaddress.IPv4Address(explicit)
        except ValueError:
            raise KubeConfigError(f'node_ip "{explicit}" is not an IPv4 address; fix the inventory') from None
        if address not in network:
            raise KubeConfigError(
                f"node_ip {explicit} is outside node_network_cidr {network}; set node_ip to the "
                "node's address on the cluster network"
            )
        if addresses and explicit not in addresses:
            raise KubeConfigError(
                f"node_ip {explicit} is not configured on this host (its addresses: "
                f"{', '.join(addresses)}); fix node_ip in the inventory"
            )
        return explicit
    candidates = [a for a in addresses if a != VAGRANT_NAT_ADDRESS and ipaddress.IPv4Address(a) in network]
    if not candidates:
        seen = ", ".join(addresses) if addresses else "none (were facts gathered?)"
        raise KubeConfigError(
            f"no address of this host lies inside node_network_cidr {network} (addresses: {seen}); "
            "set node_ip for the host or fix node_network_cidr"
        )
    return candidates[0]


def _network(cidr: object, name: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(str(cidr).strip(), strict=False)
    except ValueError as exc:
        raise KubeConfigError(f'{name} "{cidr}" is not an IPv4 network in CIDR form ({exc})') from None


# --------------------------------------------------------------------------------------------
# CA certificate hash (kubeadm's --discovery-token-ca-cert-hash)
# --------------------------------------------------------------------------------------------


def _der_element(data: bytes, offset: int) -> tuple[int, int, int]:
    """Read one DER TLV at offset: (tag, offset of the content, offset just past the element)."""
    if offset + 2 > len(data):
        raise KubeConfigError("the CA certificate is truncated (DER element header past the end)")
    tag = data[offset]
    length = data[offset + 1]
    pos = offset + 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise KubeConfigError("the CA certificate has an invalid DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    end = pos + length
    if end > len(data):
        raise KubeConfigError("the CA certificate is truncated (DER element past the end)")
    return tag, pos, end


def certificate_der(certificate: str | bytes) -> bytes:
    """The DER bytes of the first certificate in PEM text (or DER input returned as is)."""
    if isinstance(certificate, bytes) and certificate[:1] == b"\x30":
        return certificate
    text = certificate.decode("ascii", "replace") if isinstance(certificate, bytes) else str(certificate)
    match = re.search(r"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", text, re.S)
    if not match:
        raise KubeConfigError("no PEM certificate found (expected -----BEGIN CERTIFICATE-----)")
    try:
        return base64.b64decode("".join(match.group(1).split()), validate=True)
    except binascii.Error:
        raise KubeConfigError("the PEM certificate is not valid base64") from None


def subject_public_key_info(certificate: str | bytes) -> bytes:
    """The DER-encoded SubjectPublicKeyInfo of an X.509 certificate (RFC 5280 section 4.1)."""
    der = certificate_der(certificate)
    tag, cert_body, _ = _der_element(der, 0)
    if tag != 0x30:
        raise KubeConfigError("the CA certificate is not a DER SEQUENCE")
    tag, pos, _ = _der_element(der, cert_body)  # tbsCertificate
    if tag != 0x30:
        raise KubeConfigError("the CA certificate has no tbsCertificate SEQUENCE")
    # version [0] EXPLICIT (optional), serialNumber, signature, issuer, validity, subject, SPKI
    tag, _, end = _der_element(der, pos)
    if tag == 0xA0:
        pos = end
    for _field in ("serialNumber", "signature", "issuer", "validity", "subject"):
        _, _, pos = _der_element(der, pos)
    tag, _, end = _der_element(der, pos)
    if tag != 0x30:
        raise KubeConfigError("the CA certificate's subjectPublicKeyInfo is not a SEQUENCE")
    return der[pos:end]


def ca_cert_hash(certificate: str | bytes) -> str:
    """kubeadm's CA pin: "sha256:" + hex SHA-256 of the certificate's DER SubjectPublicKeyInfo."""
    return "sha256:" + hashlib.sha256(subject_public_key_info(certificate)).hexdigest()


# --------------------------------------------------------------------------------------------
# kubeadm configuration (kubeadm.k8s.io/v1beta4)
# --------------------------------------------------------------------------------------------


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
    pods = _network(values["pods_subnet"], "kube_pods_subnet")
    services = _network(values["service_subnet"], "kube_service_addresses")
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
    if spec.controller_manager_extra_args:
        cluster["controllerManager"] = {"extraArgs": _as_args(spec.controller_manager_extra_args)}
    if spec.scheduler_extra_args:
        cluster["scheduler"] = {"extraArgs": _as_args(spec.scheduler_extra_args)}
    kubelet: dict[str, Any] = {"apiVersion": KUBELET_API, "kind": "KubeletConfiguration"}
    kubelet.update({k: v for k, v in spec.kubelet_config.items() if k not in ("apiVersion", "kind")})
    kubelet["cgroupDriver"] = "systemd"
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
    return [join]


def api_endpoint_plan(
    facts: Mapping[str, Any], vip: object, network_cidr: object, node_ip: str, peers: Sequence[str], port: object = 8443
) -> dict[str, Any]:
    """What keepalived and HAProxy need on one control plane: the interface holding its node address
    (where the virtual IP goes), the VIP's prefix, the other control planes' addresses (unicast VRRP
    peers). Whichever control plane holds the VIP, HAProxy there forwards to every API server that
    answers, so `kubeadm init` on the first one reaches itself through the endpoint."""
    network = _network(network_cidr, "node_network_cidr")
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


# --------------------------------------------------------------------------------------------
# Calico (manifest install, VXLAN; see the calico role's README for why not the operator)
# --------------------------------------------------------------------------------------------

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
    (never Vagrant's NAT or a Docker bridge), the MTU, and an optional registry mirror."""
    import yaml

    pods = _network(values.get("pods_subnet"), "kube_pods_subnet")
    nodes = _network(values.get("node_network_cidr"), "node_network_cidr")
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
    if not all(found.values()):
        raise KubeConfigError(
            "the Calico manifest has no calico-config ConfigMap or calico-node DaemonSet; "
            "give the release's calico-vxlan.yaml (calico_manifest_file or calico_manifest_base_url)"
        )
    return docs


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
    parsed = _json(live, "live resources")
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


# --------------------------------------------------------------------------------------------
# Cluster state checks (JSON from kubectl), shared by the roles and the testinfra suite
# --------------------------------------------------------------------------------------------


def _json(value: object, what: str) -> Mapping[str, Any]:
    if isinstance(value, Mapping):
        return value
    try:
        parsed = json.loads(str(value))
    except ValueError:
        raise KubeConfigError(f"{what}: kubectl did not return JSON") from None
    if not isinstance(parsed, Mapping):
        raise KubeConfigError(f"{what}: kubectl returned JSON that is not an object")
    return parsed


def _items(value: object, kind: str) -> list[Mapping[str, Any]]:
    parsed = _json(value, kind)
    items = parsed.get("items") or []
    return [i for i in items if isinstance(i, Mapping) and i.get("kind", kind) == kind]


def _condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == kind:
            return cond
    return {}


def node_addresses(nodes: object) -> dict[str, str]:
    """Node name -> InternalIP from `kubectl get nodes -o json` (nodes without one map to "")."""
    out: dict[str, str] = {}
    for node in _items(nodes, "Node"):
        name = str((node.get("metadata") or {}).get("name"))
        internal = [
            str(a.get("address"))
            for a in (node.get("status") or {}).get("addresses") or []
            if isinstance(a, Mapping) and a.get("type") == "InternalIP"
        ]
        out[name] = internal[0] if internal else ""
    return out


def node_problems(nodes: object, expected_ips: Iterable[str] = ()) -> list[str]:
    """Why nodes are not Ready, from `kubectl get nodes -o json`.

    With expected_ips only the nodes with those InternalIPs are judged (each must be registered);
    without, every registered node is.
    """
    expected = [str(ip) for ip in expected_ips]
    by_name = node_addresses(nodes)
    problems = [f"no node registered with InternalIP {ip}" for ip in expected if ip not in by_name.values()]
    items = _items(nodes, "Node")
    if not items and not expected:
        problems.append("no nodes registered")
    for node in items:
        name = str((node.get("metadata") or {}).get("name"))
        address = by_name.get(name) or ""
        if expected and address not in expected:
            continue
        ready = _condition(node, "Ready")
        if ready.get("status") != "True":
            reason = ready.get("reason") or "no Ready condition yet"
            message = ready.get("message") or ""
            problems.append(f"node {name} ({address or 'no InternalIP'}) not Ready: {reason} {message}".strip())
    return problems


CONTROL_PLANE_LABEL = "node-role.kubernetes.io/control-plane"
# The taint kubeadm gives a control plane (kube_control_plane_schedulable: false), key:effect.
CONTROL_PLANE_TAINT = f"{CONTROL_PLANE_LABEL}:NoSchedule"


def control_plane_taint_targets(nodes: object, schedulable: bool = False) -> list[dict[str, str]]:
    """Control plane nodes that must get their NoSchedule taint back, from `kubectl get nodes -o json`,
    each as {node, taint} (the arguments of `kubectl taint nodes NODE TAINT`).

    A cluster formed with one node registers the control plane untainted (kube_control_plane_schedulable
    defaults to "no workers"). Once workers exist (registered nodes without the control-plane role
    label), every control plane without the taint is named, unless the control plane was made
    schedulable on purpose (schedulable true). Empty: nothing to do.
    """
    if schedulable:
        return []
    items = _items(nodes, "Node")
    control_planes = [n for n in items if CONTROL_PLANE_LABEL in ((n.get("metadata") or {}).get("labels") or {})]
    if len(control_planes) == len(items):
        return []
    key, effect = CONTROL_PLANE_TAINT.split(":")
    return [
        {"node": str((n.get("metadata") or {}).get("name")), "taint": CONTROL_PLANE_TAINT}
        for n in control_planes
        if not any(
            isinstance(t, Mapping) and t.get("key") == key and t.get("effect") == effect
            for t in (n.get("spec") or {}).get("taints") or []
        )
    ]


def calico_node_problems(state: object) -> list[str]:
    """Nodes without a Ready calico-node pod, from `kubectl get nodes,pods -n kube-system -o json`."""
    parsed = _json(state, "calico state")
    nodes = _items(parsed, "Node")
    pods = [
        p
        for p in _items(parsed, "Pod")
        if ((p.get("metadata") or {}).get("labels") or {}).get("k8s-app") == "calico-node"
    ]
    if not nodes:
        return ["no nodes registered"]
    problems: list[str] = []
    for node in nodes:
        name = str((node.get("metadata") or {}).get("name"))
        mine = [p for p in pods if (p.get("spec") or {}).get("nodeName") == name]
        if not mine:
            problems.append(f"node {name}: no calico-node pod yet")
            continue
        if not any(_condition(p, "Ready").get("status") == "True" for p in mine):
            pod = mine[0]
            phase = (pod.get("status") or {}).get("phase") or "Unknown"
            problems.append(
                f"node {name}: calico-node pod {(pod.get('metadata') or {}).get('name')} not ready ({phase})"
            )
    return problems


def interface_names(ip_link_output: object) -> list[str]:
    """Interface names from `ip -o link show` (the part before '@' of 'N: name@peer: <...>')."""
    names: list[str] = []
    for line in str(ip_link_output).splitlines():
        match = re.match(r"^\d+:\s+([^:@\s]+)", line)
        if match:
            names.append(match.group(1))
    return names


def pod_problems(pods: object) -> list[str]:
    """Pods that are not Running and Ready (finished pods of jobs aside), from `kubectl get pods -o json`."""
    problems: list[str] = []
    items = _items(_json(pods, "pod list"), "Pod")
    if not items:
        return ["no pods"]
    for pod in items:
        meta = pod.get("metadata") or {}
        status = pod.get("status") or {}
        phase = status.get("phase") or "Unknown"
        if phase == "Succeeded":
            continue
        if phase != "Running" or _condition(pod, "Ready").get("status") != "True":
            waiting = [
                (c.get("state") or {}).get("waiting", {}).get("reason", "")
                for c in status.get("containerStatuses") or []
            ]
            reason = ", ".join(w for w in waiting if w) or phase
            problems.append(
                f"pod {meta.get('name')} on {(pod.get('spec') or {}).get('nodeName') or '?'} not ready ({reason})"
            )
    return problems


def smoke_manifest(namespace: str, image: str) -> str:
    """verify's workload: the smoke web server on every node (control planes too), never pulled, and a
    NodePort service in front of it."""
    import yaml

    labels = {"app": "smoke"}
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": "smoke", "namespace": namespace},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "tolerations": [{"operator": "Exists"}],
                        "terminationGracePeriodSeconds": 1,
                        "containers": [
                            {
                                "name": "web",
                                "image": image,
                                "imagePullPolicy": "Never",
                                "ports": [{"containerPort": 8080}],
                                "env": [
                                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
                                ],
                                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 2},
                            }
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "smoke", "namespace": namespace},
            "spec": {"type": "NodePort", "selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    ]
    return "---\n".join(yaml.safe_dump(d, sort_keys=False) for d in docs)


def etcd_problems(statuses: Mapping[str, Any], members: Mapping[str, Any], expected: int) -> list[str]:
    """What is wrong with a stacked etcd, from each member's /v3/maintenance/status (by address; an
    "error" entry where it did not answer) and /v3/cluster/member/list: every expected member
    present and answering, all agreeing on one leader that is a member. [] when healthy."""
    problems = []
    listed = members.get("members") or []
    ids = {str(m.get("ID", "")) for m in listed}
    if len(listed) != expected:
        names = ", ".join(sorted(str(m.get("name") or m.get("ID")) for m in listed))
        problems.append(f"etcd has {len(listed)} members ({names}), expected {expected}")
    leaders = set()
    for address, status in sorted(statuses.items()):
        if "error" in status:
            problems.append(f"etcd on {address} does not answer: {status['error']}")
            continue
        if status.get("errors"):
            problems.append(f"etcd on {address} reports errors: {'; '.join(map(str, status['errors']))}")
        leaders.add(str(status.get("leader", "")))
    if len(leaders) > 1:
        problems.append(f"the members disagree on the leader ({', '.join(sorted(leaders))})")
    elif leaders and (leaders == {""} or leaders == {"0"} or not leaders <= ids):
        problems.append(f"the leader {next(iter(leaders)) or '(none)'} is not a member")
    return problems
