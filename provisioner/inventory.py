"""The generated inventory: machines from Vagrant's ssh-config, groups and variables from the spec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from provisioner import hostnet
from provisioner.errors import ProvisionError
from provisioner.kubesource import kubernetes_blocker
from provisioner.spec import DEFAULT_SWARM_POOL, ClusterSpec, group_of
from provisioner.vagrant import SshInfo

# Where the docker provider mounts the directory of bundles (read-only) in its container nodes (Vagrantfile).
BUNDLES_NODE_DIR = "/opt/provisioner/bundles"
# Providers whose nodes see the bundle directory there (machines.Provider.mount_bundle); VirtualBox
# nodes are sent the files over SSH.
BUNDLE_SHARED = frozenset({"docker", "libvirt"})
ALL_GROUPS = ("kube_control_plane", "kube_node", "swarm_manager", "swarm_worker")
# SSH host keys of the toolkit's own nodes are not checked: every node is made anew (and gets new
# host keys) on each recreate, at an address (a loopback port, a private IP) that the next cluster
# reuses. These go on each generated host, never in ansible.cfg, so that a hand-written inventory of
# real servers keeps Ansible's host key checking. testinfra (verify) reads ansible_ssh_common_args too.
NODE_SSH_COMMON_ARGS = "-o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no"
NODE_SSH_VARS: dict[str, Any] = {
    "ansible_ssh_common_args": NODE_SSH_COMMON_ARGS,
    "ansible_host_key_checking": False,
}


def bundle_smoke_image(path: Path) -> str:
    """The smoke-test image the bundle at `path` carries for verify ("" when none: a bundle made before
    every bundle carried it)."""
    from provisioner import bundle as bundle_mod

    try:
        return bundle_mod.smoke_image(bundle_mod.load(path))
    except ProvisionError:
        return ""


def smoke_vars(kube_version: str, bundle: Path | None) -> dict[str, Any]:
    """verify's smoke-test image for a Kubernetes cluster: its name (kube_smoke_image) always, and,
    when the bundle does not carry it (pkgs.k8s.io installs, or a bundle made before bundles carried
    it), the archive on this machine that the kube_packages role imports on every node
    (kube_smoke_image_archive, made by kubesource.ensure_kube_bundle before the machines)."""
    from provisioner.bundle import smoke

    carried = bundle_smoke_image(bundle) if bundle is not None else ""
    if carried:
        return {"kube_smoke_image": carried}
    return {
        "kube_smoke_image": smoke.image_name(kube_version),
        "kube_smoke_image_archive": str(smoke.archive_path(kube_version)),
    }


def mirror_vars(mirrors: dict[str, Any]) -> dict[str, Any]:
    """The roles' variables for the spec's mirrors (spec.MIRROR_KEYS): only those it names."""
    extra: dict[str, Any] = {}
    if mirrors.get("kubernetes_packages"):
        extra["kube_packages_repo_base_url"] = mirrors["kubernetes_packages"]
    if mirrors.get("calico_manifests"):
        extra["calico_manifest_base_url"] = mirrors["calico_manifests"]
    if mirrors.get("gateway_api_manifests"):
        extra["traefik_ingress_gateway_api_base_url"] = mirrors["gateway_api_manifests"]
    if mirrors.get("registries"):
        extra["container_runtime_registry_mirrors"] = dict(mirrors["registries"])
    if mirrors.get("registry_ca"):
        try:
            extra["container_runtime_registry_ca"] = Path(mirrors["registry_ca"]).read_text(encoding="utf-8")
        except OSError as exc:
            raise ProvisionError(
                f"mirrors.registry_ca {mirrors['registry_ca']} cannot be read ({exc}); put the CA file back or "
                "drop registry_ca from the spec"
            ) from None
    return extra


def cluster_vars(spec: ClusterSpec, provision_dir: Path, bundle: Path | None = None) -> dict[str, Any]:
    """Cluster-wide variables, the same keys as inventory/sample/group_vars/all.yml (plus the role
    variable node_prep_package_proxy, whose role default "" means no proxy). With a bundle, the
    Kubernetes roles install from it (kube_bundle_dir) instead of pkgs.k8s.io and the registries.
    Every Kubernetes cluster gets verify's smoke-test image (smoke_vars), unless the Kubernetes stages
    cannot run on its nodes at all (kubesource.kubernetes_blocker)."""
    extra: dict[str, Any] = {}
    if bundle is not None:
        extra = {"kube_bundle_dir": str(bundle)}
        if spec.provider in BUNDLE_SHARED:
            extra["kube_bundle_node_dir"] = f"{BUNDLES_NODE_DIR}/{bundle.name}"
    if spec.engine == "kubernetes" and not kubernetes_blocker(spec):
        extra |= smoke_vars(spec.versions["kubernetes"], bundle)
        extra["local_path_storage_enabled"] = spec.storage
        extra["metrics_server_enabled"] = spec.metrics
        extra["traefik_ingress_enabled"] = spec.ingress
        extra |= mirror_vars(spec.mirrors)
    if spec.engine == "swarm" and spec.swarm_address_pool != DEFAULT_SWARM_POOL:
        # [] (the role's default) leaves Docker's own pool, so an unchanged spec adds nothing here.
        extra["swarm_default_addr_pool"] = [spec.swarm_address_pool]
    if spec.provider == "docker" and spec.engine == "kubernetes":
        servers = hostnet.upstream_nameservers()
        if servers:
            extra["kube_pod_nameservers"] = servers
    if spec.time_scale != 1:
        # Ansible's SSH connection and become timeout (its default is 10 s), 30 s per unit: a key
        # exchange and sudo on an emulated CPU take seconds.
        extra["ansible_ssh_timeout"] = round(30 * spec.time_scale)
    return extra | {
        "cluster_name": spec.name,
        "cluster_time_scale": spec.time_scale,
        "cluster_engine": spec.engine,
        "cluster_provider": spec.provider,
        "node_network_cidr": spec.network,
        "kube_version": spec.versions["kubernetes"],
        "kube_pods_subnet": spec.pod_cidr,
        "kube_service_addresses": spec.service_cidr,
        "kube_api_vip": spec.api_vip,
        "calico_version": spec.versions["calico"],
        "container_runtime": spec.runtime,
        "container_runtime_source": spec.effective_runtime_source,
        "container_runtime_offline_dir": spec.offline_dir,
        "container_runtime_version": spec.versions.get("runtime", ""),
        "kube_kubeconfig_dest": str(provision_dir / "kubeconfig"),
        "node_prep_package_proxy": spec.package_proxy,
    }


def build_inventory(
    spec: ClusterSpec, ssh: dict[str, SshInfo], provision_dir: Path, bundle: Path | None = None
) -> dict[str, Any]:
    hosts: dict[str, dict[str, Any]] = {}
    children: dict[str, Any] = {g: {"hosts": {}} for g in ALL_GROUPS}
    for node in spec.nodes:
        info = ssh.get(node.name)
        if info is None:
            raise ProvisionError(
                f"node {node.name} has no SSH address from Vagrant (is it running?); run `up` again to recreate it"
            )
        host: dict[str, Any] = {
            "ansible_host": info.hostname,
            "ansible_port": info.port,
            "ansible_user": info.user,
            "ansible_ssh_private_key_file": info.identity_file,
            **NODE_SSH_VARS,
            "node_ip": node.ip,
        }
        if node.labels:
            host["swarm_node_labels"] = dict(node.labels)
        hosts[node.name] = host
        children[group_of(spec.engine, node.role)]["hosts"][node.name] = None
    children["k8s_cluster"] = {"children": {"kube_control_plane": None, "kube_node": None}}
    return {
        "all": {
            "vars": {"ansible_python_interpreter": "/usr/bin/python3", **cluster_vars(spec, provision_dir, bundle)},
            "hosts": hosts,
            "children": children,
        }
    }


def render_inventory(data: dict[str, Any]) -> str:
    header = "# Generated by provision.py from the cluster spec and `vagrant ssh-config`; do not edit.\n"
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def write_inventory(data: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_inventory(data), encoding="utf-8")
    return path


def load_inventory_hosts(path: Path) -> dict[str, dict[str, Any]]:
    """Hosts and their variables from a generated inventory (for exec and ssh)."""
    if not path.exists():
        raise ProvisionError(f"no inventory at {path}; run `provision.py up` first")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    hosts: dict[str, dict[str, Any]] = data.get("all", {}).get("hosts", {}) or {}
    return hosts


def group_members(path: Path, group: str) -> list[str]:
    """Hosts of `group` (or `all`) in a generated inventory, following child groups."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    root = data.get("all", {})
    if group == "all":
        return list(root.get("hosts") or {})
    children: dict[str, Any] = root.get("children", {}) or {}
    if group not in children:
        raise ProvisionError(f"group '{group}' is not in the inventory; groups are: all, {', '.join(children)}")
    return _members(children, group)


def _members(children: dict[str, Any], group: str) -> list[str]:
    entry = children.get(group) or {}
    members = list(entry.get("hosts") or {})
    for child in entry.get("children") or {}:
        members += [m for m in _members(children, child) if m not in members]
    return members
