"""Where a Kubernetes cluster's binaries and images come from (the offline bundle or pkgs.k8s.io), and
whether the Kubernetes stages can run on these nodes at all."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from provisioner import providers
from provisioner.errors import ProvisionError
from provisioner.spec import ClusterSpec

if TYPE_CHECKING:
    from provisioner.bundle import Bundle, Versions


def host_cgroup_version() -> int:
    try:
        fs = subprocess.run(["stat", "-fc", "%T", "/sys/fs/cgroup"], capture_output=True, text=True, check=False)
    except OSError:
        return 0
    return 2 if fs.stdout.strip() == "cgroup2fs" else 1


def kubernetes_blocker(spec: ClusterSpec) -> str:
    """Why the Kubernetes stages cannot run on these nodes at all ("" when they can be tried)."""
    from provisioner.kube.packages import LAST_CGROUP_V1_MINOR

    if spec.engine != "kubernetes" or spec.provider != "docker":
        return ""
    minor = int(spec.versions["kubernetes"].split(".")[1])
    if minor > LAST_CGROUP_V1_MINOR and host_cgroup_version() == 1:
        return (
            f"container nodes share this host's kernel, which runs cgroup v1, and kubelet 1.{minor} has no "
            f"switch left to run there (1.{LAST_CGROUP_V1_MINOR} was the last); nodes are prepared with the container "
            f"runtime. Use --kube-version 1.{LAST_CGROUP_V1_MINOR}, a VM provider, or --engine swarm here"
        )
    return ""


def kube_source_choice(spec: ClusterSpec) -> tuple[str, str]:
    """(upstream | bundle, why) for the Kubernetes binaries and images of this cluster."""
    if spec.kube_source != "auto":
        return spec.kube_source, "the cluster's kube_source"
    if spec.provider == "docker":
        return "bundle", "container nodes install from the bundle (no registry needed)"
    mirror = spec.mirrors.get("kubernetes_packages", "")
    where = f"the package mirror {mirror}" if mirror else "pkgs.k8s.io"
    why = providers.pkgs_k8s_io_unreachable(mirror + "/") if mirror else providers.pkgs_k8s_io_unreachable()
    if why:
        return "bundle", f"{where} does not answer here ({why})"
    return "upstream", f"{where} answers"


def ensure_kube_bundle(spec: ClusterSpec, out: TextIO, verbose: bool) -> tuple[ClusterSpec, Path | None]:
    """The bundle this cluster installs from (built first when missing, with its progress), and the
    spec with the bundle's exact versions; (spec, None) when the cluster installs from upstream.

    Either way the nodes get verify's smoke-test image: a bundle carries it; for pkgs.k8s.io (or a
    bundle made before bundles carried it) its archive is made here, in the cache, and the inventory
    names it (provisioner.inventory.smoke_vars)."""
    from provisioner import bundle

    if spec.engine != "kubernetes" or kubernetes_blocker(spec):
        return spec, None
    source, why = kube_source_choice(spec)
    if source != "bundle":
        out.write(f"kubernetes: packages from pkgs.k8s.io ({why})\n")
        ensure_smoke_archive(spec.versions["kubernetes"], out)
        return spec, None
    versions = bundle.resolve_versions(spec.versions["kubernetes"], spec.versions["calico"])
    found = ensure_bundle(spec, versions, out, verbose)
    out.write(f"kubernetes: bundle {found.path} ({why})\n")
    if not bundle.smoke_image(found):
        ensure_smoke_archive(versions.kubernetes, out)
    data = spec.to_dict()
    data["versions"] = dict(spec.versions, kubernetes=versions.kubernetes, calico=versions.calico)
    return ClusterSpec.from_dict(data), found.path


def ensure_bundle(spec: ClusterSpec, versions: Versions, out: TextIO, verbose: bool) -> Bundle:
    """The finished bundle of `versions` for this cluster: built when missing, and completed with the
    add-ons' parts the spec turns on (the ingress add-on's only where ingress is on)."""
    from provisioner.bundle import make

    return make.ensure(
        versions,
        "auto",
        force=False,
        out=out,
        verbose=verbose,
        addons=spec.storage or spec.metrics or spec.ingress,
        ingress=spec.ingress,
    )


def ensure_smoke_archive(kube_version: str, out: TextIO) -> Path:
    """verify's smoke-test image as an archive in the cache, for nodes whose install source lacks it
    (built from bundle/images when missing or changed; seconds with Go's build cache warm)."""
    from provisioner.bundle import smoke

    path = smoke.ensure_archive(kube_version)
    out.write(f"kubernetes: verify's smoke-test image {smoke.image_name(kube_version)} from {path}\n")
    return path


def check_bundle_versions(spec: ClusterSpec) -> None:
    """A cluster that will install from the bundle asks for releases the bundle knows: refused here,
    before any image or machine is made, naming the spec's own flag."""
    from provisioner import bundle

    if spec.engine != "kubernetes" or kubernetes_blocker(spec):
        return
    if kube_source_choice(spec)[0] != "bundle":
        calico = spec.versions["calico"]
        if calico.count(".") < 2:
            # The bundle picks the patch of a minor it knows; upstream, the calico role fetches one
            # release's manifest by its full version.
            raise ProvisionError(
                f"versions.calico {calico} names a minor, and this cluster installs Calico from its release "
                f"manifest, which needs the patch release: give e.g. {calico}.0",
                exit_code=2,
            )
        # verify's workload image is built here from the project's own Go code (bundle/images) and
        # copied to the nodes: say now, not after the machines, that Go is missing.
        from provisioner.bundle import smoke, source

        if not smoke.archive_path(spec.versions["kubernetes"]).is_file():
            source.check_go()
        return
    try:
        bundle.resolve_versions(spec.versions["kubernetes"], spec.versions["calico"])
    except ProvisionError as exc:
        raise ProvisionError(
            f"{exc.message.split(';')[0]}; pass --kube-version {bundle.KNOWN_KUBERNETES[-1]} (or versions.calico "
            f"{bundle.KNOWN_CALICO[-1]} in the spec file), or kube_source: upstream where pkgs.k8s.io answers",
            exit_code=2,
        ) from exc
