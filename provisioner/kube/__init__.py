"""Pure functions behind the Kubernetes stages (kube_packages, kube_control_plane, calico, kube_join, kube_reset).

The roles call these through the Ansible filter plugin filter_plugins/kube.py, and the unit tests call
them directly, so what the tests check is what the roles run. Nothing here touches the network, a
file or a process: every function maps data to data and raises KubeConfigError with one sentence
that names the problem and the fix.

One module per concern:

- provisioner.kube.packages: Kubernetes versions, the pkgs.k8s.io repositories, package pins, offline
  installs, the cgroup checks and the controller's kubeconfig path (kube_packages);
- provisioner.kube.nodeip: the node's address on the cluster network;
- provisioner.kube.cahash: the CA certificate hash (kubeadm's --discovery-token-ca-cert-hash);
- provisioner.kube.kubeadm: kubeadm's init and join documents (kubeadm.k8s.io/v1beta4) and the API
  server endpoint (keepalived and HAProxy);
- provisioner.kube.calico: Calico's VXLAN manifest and the drift of applied resources;
- provisioner.kube.clusterstate: cluster state checks on kubectl's JSON, shared by the roles and the
  testinfra suite.

This module holds what they share: KubeConfigError and the parsing of a CIDR and of kubectl's JSON.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from typing import Any

from provisioner.errors import ProvisionError


class KubeConfigError(ProvisionError):
    """Invalid input for a Kubernetes stage; the message names the variable and the fix."""


def ipv4_network(cidr: object, name: str) -> ipaddress.IPv4Network:
    """The IPv4 network of a CIDR variable (host bits allowed); name is the variable the message names."""
    try:
        return ipaddress.IPv4Network(str(cidr).strip(), strict=False)
    except ValueError as exc:
        raise KubeConfigError(f'{name} "{cidr}" is not an IPv4 network in CIDR form ({exc})') from None


def kubectl_json(value: object, what: str) -> Mapping[str, Any]:
    """kubectl's JSON output (or its parsed form) as an object; what names it in the message."""
    if isinstance(value, Mapping):
        return value
    try:
        parsed = json.loads(str(value))
    except ValueError:
        raise KubeConfigError(f"{what}: kubectl did not return JSON") from None
    if not isinstance(parsed, Mapping):
        raise KubeConfigError(f"{what}: kubectl returned JSON that is not an object")
    return parsed
