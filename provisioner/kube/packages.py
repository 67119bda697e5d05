"""Versions and packages (kube_packages): Kubernetes versions as the toolkit accepts them, the
pkgs.k8s.io repository of a minor, package pins, offline installs, what cgroup v1 means for a kubelet
version, and where the controller keeps the admin kubeconfig (kube_control_plane and kube_reset).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from provisioner.kube import KubeConfigError

PackageFamily = Literal["deb", "rpm"]

PKGS_K8S_IO = "https://pkgs.k8s.io/core:/stable:"
# Packages pinned to the exact Kubernetes version. cri-tools is not among them: it has its own
# numbering, and a per-minor pkgs.k8s.io repository need not carry the cri-tools of that minor (kubeadm
# no longer depends on it), so it is installed as the repository has it, and held.
KUBE_CORE_PACKAGES = ("kubelet", "kubeadm", "kubectl")
# Install order for offline .deb files: dependencies first (kubeadm needs kubelet, kubectl, cri-tools).
_OFFLINE_ORDER = ("cri-tools", "kubernetes-cni", "kubelet", "kubectl", "kubeadm")
_OFFLINE_BINARIES = ("kubeadm", "kubelet", "kubectl")
_VERSION_RE = re.compile(r"^v?1\.(?P<minor>\d+)(?:\.(?P<patch>\d+))?$")
_INSTALLED_RE = re.compile(r"^v?1\.(?P<minor>\d+)\.(?P<patch>\d+)(?P<extra>[-+.\w]*)$")


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
