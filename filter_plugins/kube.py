"""Ansible filters for the Kubernetes stages: thin wrappers over provisioner.kubeconf.

The logic lives in provisioner/kubeconf.py (pure, typed, unit-tested); this plugin only makes it
callable from the roles and turns its errors into AnsibleFilterError. Enable it with
`filter_plugins = ./filter_plugins` in ansible.cfg.
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

from provisioner import kubeconf  # noqa: E402


def _wrap(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except kubeconf.KubeConfigError as exc:
            raise AnsibleFilterError(str(exc)) from None

    return call


class FilterModule:
    """kube_* and calico_* filters."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        table: dict[str, Callable[..., Any]] = {
            "kube_version_info": kubeconf.kube_version_info,
            "kube_pkgs_repository": kubeconf.pkgs_repository,
            "kube_apt_sources": kubeconf.apt_sources,
            "kube_package_pins": kubeconf.package_pins,
            "kube_installed_packages": kubeconf.installed_packages,
            "kube_cgroup_error": kubeconf.cgroup_error,
            "kube_cgroup_v1_settings": kubeconf.cgroup_v1_settings,
            "kube_offline_plan": kubeconf.offline_plan,
            "kube_installed_version_matches": kubeconf.installed_version_matches,
            "kube_resolve_version": kubeconf.resolve_kubernetes_version,
            "kube_node_ip": kubeconf.select_node_ip,
            "kube_controller_kubeconfig": kubeconf.controller_kubeconfig,
            "kube_ca_cert_hash": kubeconf.ca_cert_hash,
            "kube_init_documents": kubeconf.kubeadm_init_documents,
            "kube_join_documents": kubeconf.kubeadm_join_documents,
            "kube_api_server_endpoint": kubeconf.api_server_endpoint,
            "kube_resource_drift": kubeconf.resource_drift,
            "kube_node_problems": kubeconf.node_problems,
            "kube_control_plane_taint_targets": kubeconf.control_plane_taint_targets,
            "kube_interface_names": kubeconf.interface_names,
            "kube_interface_for_ip": kubeconf.interface_for_ip,
            "kube_api_endpoint_plan": kubeconf.api_endpoint_plan,
            "calico_manifest_url": kubeconf.calico_manifest_url,
            "calico_manifest_documents": kubeconf.calico_manifest_documents,
            "calico_node_problems": kubeconf.calico_node_problems,
        }
        return {name: _wrap(function) for name, function in table.items()}
