"""The rules of `provision.py upgrade` (roles/kube_upgrade): which release steps are allowed, and what
in a running cluster stops an upgrade before anything changes.

Kubernetes' version skew policy lets a cluster move one minor at a time (1.36.x -> 1.37.y), or to a
newer patch of its minor; never back, never two minors at once. kubelets may lag the control plane,
so a node half-way through an earlier, interrupted upgrade (already at the target) is fine.
"""

from __future__ import annotations

import re
from typing import Any

from provisioner.kube import KubeConfigError

_VERSION_RE = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")


def parse_release(text: object) -> tuple[int, int, int]:
    m = _VERSION_RE.fullmatch(str(text).strip())
    if not m:
        raise KubeConfigError(f"{text!r} is not a Kubernetes release (major.minor.patch, e.g. 1.37.2)")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def upgrade_step(current: object, target: object) -> str:
    """'none' (the cluster is at the target), 'patch' or 'minor'; anything else is refused with the
    step that is allowed."""
    cur, want = parse_release(current), parse_release(target)
    name_cur, name_want = ".".join(map(str, cur)), ".".join(map(str, want))
    if want == cur:
        return "none"
    if want < cur:
        raise KubeConfigError(
            f"the cluster runs Kubernetes {name_cur}, newer than {name_want}: kubeadm does not downgrade; "
            f"restore the etcd snapshot taken before the upgrade to go back (README, Upgrade)"
        )
    if want[0] != cur[0] or want[1] > cur[1] + 1:
        raise KubeConfigError(
            f"the cluster runs Kubernetes {name_cur}; an upgrade moves one minor at a time, so the next step is "
            f"{cur[0]}.{cur[1] + 1} (then {name_want} from there)"
        )
    return "patch" if want[1] == cur[1] else "minor"


def upgrade_blockers(nodes: Any, target: object) -> list[str]:
    """What in `kubectl get nodes -o json` stops an upgrade to `target`: a node that is not Ready, or a
    kubelet the target cannot follow from (newer than the target, or more than one minor behind it).
    One sentence each, naming the node; [] when the upgrade may start."""
    want = parse_release(target)
    problems: list[str] = []
    for item in (nodes or {}).get("items") or []:
        name = str(item.get("metadata", {}).get("name", "?"))
        status = item.get("status") or {}
        ready = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
        if not ready or ready[0].get("status") != "True":
            reason = ready[0].get("reason", "no Ready condition") if ready else "no Ready condition"
            problems.append(
                f"node {name} is not Ready ({reason}); bring it back (or remove it with `up`) before upgrading"
            )
        kubelet = str((status.get("nodeInfo") or {}).get("kubeletVersion", ""))
        try:
            have = parse_release(kubelet)
        except KubeConfigError:
            problems.append(f"node {name} reports kubelet version {kubelet!r}, which is not a release")
            continue
        if have > want:
            problems.append(f"node {name} runs kubelet {kubelet}, newer than the target v{'.'.join(map(str, want))}")
        elif have[:2] < (want[0], want[1] - 1):
            problems.append(
                f"node {name} runs kubelet {kubelet}, more than one minor behind the target; upgrade it one minor "
                "at a time first"
            )
    return problems


def static_pod_release(manifest: object) -> str:
    """The release of a static pod manifest's image tag (`...kube-apiserver:v1.37.2` -> '1.37.2'), ''
    when the manifest names none."""
    m = re.search(r"image:\s*\S+:v?(\d+\.\d+\.\d+)\s*$", str(manifest), re.M)
    return m.group(1) if m else ""


def node_name_for_ip(nodes: Any, ip: object) -> str:
    """The name of the Node whose InternalIP is `ip` in `kubectl get nodes -o json`."""
    for item in (nodes or {}).get("items") or []:
        addresses = (item.get("status") or {}).get("addresses") or []
        if any(a.get("type") == "InternalIP" and a.get("address") == str(ip) for a in addresses):
            return str(item["metadata"]["name"])
    raise KubeConfigError(f"no node of the cluster has the address {ip}; is this host in the cluster?")


def nodes_behind(nodes: Any, target: object) -> list[str]:
    """One sentence for each node of `kubectl get nodes -o json` whose kubelet is not at `target`."""
    want = "v" + ".".join(map(str, parse_release(target)))
    return [
        f"node {item['metadata']['name']} runs kubelet {item['status']['nodeInfo']['kubeletVersion']}"
        for item in (nodes or {}).get("items") or []
        if item.get("status", {}).get("nodeInfo", {}).get("kubeletVersion") != want
    ]


def marked_nodes(nodes: Any, annotation: str, names: list[str] | None = None) -> list[str]:
    """The nodes (of `names`; all when empty) that carry `annotation`: those the upgrade cordoned."""
    return [
        str(item["metadata"]["name"])
        for item in (nodes or {}).get("items") or []
        if annotation in (item["metadata"].get("annotations") or {})
        and (not names or item["metadata"]["name"] in names)
    ]


# From here: an upgrade from pkgs.k8s.io (kube_upgrade_source upstream), where the target's packages
# come from the repository of its minor and the images through the nodes' registries.

UPSTREAM_PACKAGES = ("kubelet", "kubeadm", "kubectl")


def repo_release_missing(index: object, target: object, names: Any = UPSTREAM_PACKAGES) -> list[str]:
    """The packages of `names` that a repository's Packages index (the text of a flat repository's
    Packages file) has at no version of the release `target` (`1.37.2` is any `1.37.2-<build>`)."""
    release = ".".join(map(str, parse_release(target)))
    found: dict[str, set[str]] = {}
    for stanza in re.split(r"\n\s*\n", str(index or "")):
        fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*?)\s*$", stanza, re.M))
        if "Package" in fields and "Version" in fields:
            found.setdefault(fields["Package"], set()).add(fields["Version"])
    return [str(name) for name in names if not any(v.startswith(release + "-") for v in found.get(str(name), set()))]


def newest_build(madison: object, target: object) -> str:
    """The newest package version of the release `target` in `apt-cache madison NAME` output (lines
    `NAME | VERSION | SOURCE`), '' when there is none: `1.37.2-1.1` rather than `1.37.2-1.0`."""
    release = ".".join(map(str, parse_release(target)))
    versions = []
    for line in str(madison or "").splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) >= 3 and parts[1].startswith(release + "-"):
            versions.append(parts[1])

    def order(version: str) -> list[tuple[int, int | str]]:
        # Debian revisions of one release compare piece by piece: numbers as numbers.
        return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-+~]", version.split("-", 1)[1])]

    return max(versions, key=order, default="")


def repo_key_error(served: object, trusted: object, url: object, keyring: object) -> str:
    """'' when the key a repository serves (`served`, armored) is one this node trusts already (its
    keyring's content `trusted`); else one sentence: the upgrade never writes a key itself."""
    from provisioner.kube.signingkey import key_fingerprints

    fingerprints = key_fingerprints(served)
    have = key_fingerprints(trusted) if str(trusted or "").strip() else []
    if set(fingerprints) <= set(have):
        return ""
    return (
        f"the repository at {url} is signed with {', '.join(fingerprints)}, which this node does not trust "
        f"({keyring} holds {', '.join(have) or 'no key'}); nothing was changed. If that key is the repository's own, "
        f"add it to {keyring} and run the upgrade again"
    )


def worker_images(images: Any) -> list[str]:
    """Of the images `kubeadm config images list` names, those a node that is not a control plane
    runs (kube-proxy, CoreDNS, pause): not the static pods of the control plane."""
    control = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd")
    return [
        str(i)
        for i in images or []
        if str(i).strip() and str(i).rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0] not in control
    ]
