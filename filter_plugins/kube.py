"""Ansible filters for the Kubernetes stages: thin wrappers over the provisioner.kube package.

The logic lives in provisioner/kube/ (pure, typed, unit-tested: packages, nodeip, cahash, kubeadm,
calico and clusterstate); this plugin only makes it callable from the roles and turns its errors
(KubeConfigError) into AnsibleFilterError. Enable it with `filter_plugins = ./filter_plugins` in
ansible.cfg.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

_REPO_ROOT = str(Path(__file__).resolve().parents[1])
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from ansible.errors import AnsibleFilterError  # noqa: E402

from provisioner.kube import (  # noqa: E402
    KubeConfigError,
    cahash,
    calico,
    clusterstate,
    kubeadm,
    nodeip,
    packages,
    signingkey,
    upgrade,
)


def _wrap(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except KubeConfigError as exc:
            raise AnsibleFilterError(str(exc)) from None

    return call


class FilterModule:
    """kube_* and calico_* filters."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        table: dict[str, Callable[..., Any]] = {
            "kube_version_info": packages.kube_version_info,
            "kube_pkgs_repository": packages.pkgs_repository,
            "kube_apt_sources": packages.apt_sources,
            "kube_package_pins": packages.package_pins,
            "kube_installed_packages": packages.installed_packages,
            "kube_repo_key_plan": signingkey.repo_key_plan,
            "kube_cgroup_error": packages.cgroup_error,
            "kube_cgroup_v1_settings": packages.cgroup_v1_settings,
            "kube_offline_plan": packages.offline_plan,
            "kube_installed_version_matches": packages.installed_version_matches,
            "kube_resolve_version": packages.resolve_kubernetes_version,
            "kube_node_ip": nodeip.select_node_ip,
            "kube_controller_kubeconfig": packages.controller_kubeconfig,
            "kube_ca_cert_hash": cahash.ca_cert_hash,
            "kube_init_documents": kubeadm.kubeadm_init_documents,
            "kube_join_documents": kubeadm.kubeadm_join_documents,
            "kube_probe_patches": kubeadm.probe_patches,
            "kube_api_server_endpoint": kubeadm.api_server_endpoint,
            "kube_resource_drift": calico.resource_drift,
            "kube_node_problems": clusterstate.node_problems,
            "kube_control_plane_taint_targets": clusterstate.control_plane_taint_targets,
            "kube_interface_names": clusterstate.interface_names,
            "kube_interface_for_ip": kubeadm.interface_for_ip,
            "kube_api_endpoint_plan": kubeadm.api_endpoint_plan,
            "kube_upgrade_step": upgrade.upgrade_step,
            "kube_upgrade_blockers": upgrade.upgrade_blockers,
            "kube_static_pod_release": upgrade.static_pod_release,
            "kube_node_name_for_ip": upgrade.node_name_for_ip,
            "kube_upgrade_behind": upgrade.nodes_behind,
            "kube_upgrade_marked": upgrade.marked_nodes,
            "kube_repo_release_missing": upgrade.repo_release_missing,
            "kube_newest_build": upgrade.newest_build,
            "kube_repo_key_error": upgrade.repo_key_error,
            "kube_worker_images": upgrade.worker_images,
            "calico_manifest_url": calico.calico_manifest_url,
            "calico_manifest_documents": calico.calico_manifest_documents,
            "calico_node_problems": clusterstate.calico_node_problems,
        }
        return {name: _wrap(function) for name, function in table.items()}
