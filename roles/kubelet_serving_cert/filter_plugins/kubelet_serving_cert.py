"""Filters of the kubelet_serving_cert role.

kubelet_serving_csr_plan: which of the cluster's certificate signing requests for kubelet serving
certificates (signer kubernetes.io/kubelet-serving) the toolkit approves, for the nodes that still
lack a serving certificate. A request is approved only when it comes from that node's own identity
(user system:node:NAME in group system:nodes), asks for a serving certificate (digital signature,
server auth; key encipherment allowed), and names in its subject alternative names nothing but the
node's name and the addresses the cluster records for that node. Anything else stays pending and is
reported, so a node cannot obtain a certificate for another name or address through the toolkit.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from cryptography import x509

SIGNER = "kubernetes.io/kubelet-serving"
NODE_PREFIX = "system:node:"
ALLOWED_USAGES = {"digital signature", "server auth", "key encipherment"}


class PlanError(ValueError):
    """The cluster's answer could not be read (not JSON, not a list)."""


def _items(value: object, what: str) -> list[Mapping[str, Any]]:
    data = json.loads(value) if isinstance(value, (str, bytes)) else value
    if not isinstance(data, Mapping) or not isinstance(data.get("items"), list):
        raise PlanError(f"{what}: expected the JSON of a kubectl get ... -o json list")
    return [item for item in data["items"] if isinstance(item, Mapping)]


def _node_addresses(nodes: Iterable[Mapping[str, Any]]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for node in nodes:
        name = str(node.get("metadata", {}).get("name", ""))
        addresses = node.get("status", {}).get("addresses") or []
        found[name] = {name} | {str(a.get("address", "")) for a in addresses if isinstance(a, Mapping)}
    return found


def _subject_alt_names(request_b64: str) -> tuple[set[str], str]:
    """(the DNS names and IP addresses a PEM request asks for, or an error)."""
    try:
        csr = x509.load_pem_x509_csr(base64.b64decode(request_b64))
    except ValueError as exc:
        return set(), f"its request is not a PEM certificate request ({exc})"
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), ""
    names = {str(n) for n in san.get_values_for_type(x509.DNSName)}
    names |= {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    if san.get_values_for_type(x509.RFC822Name) or san.get_values_for_type(x509.UniformResourceIdentifier):
        return names, "it asks for e-mail or URI names"
    return names, ""


def _state(item: Mapping[str, Any]) -> str:
    types = {c.get("type") for c in (item.get("status", {}).get("conditions") or []) if isinstance(c, Mapping)}
    if "Denied" in types or "Failed" in types:
        return "denied"
    return "approved" if "Approved" in types else "pending"


def kubelet_serving_csr_plan(listing: object, lacking: Iterable[str]) -> dict[str, Any]:
    """{"approve": request names, "by_node": {node: its request names}, "waiting": nodes with no
    acceptable request yet, "refused": [why, ...]}.

    `listing` is `kubectl get certificatesigningrequests,nodes -o json`; `lacking` are the nodes
    without a serving certificate. A node with an approved request is not waiting (its kubelet is
    fetching the certificate).
    """
    wanted = sorted({str(n) for n in lacking})
    items = _items(listing, "kubectl get certificatesigningrequests,nodes")
    addresses = _node_addresses(i for i in items if i.get("kind") == "Node")
    csrs = [i for i in items if i.get("kind") == "CertificateSigningRequest"]
    approve: list[str] = []
    by_node: dict[str, list[str]] = {}
    refused: list[str] = []
    answered: set[str] = set()
    for item in sorted(csrs, key=lambda i: str(i.get("metadata", {}).get("name"))):
        spec = item.get("spec", {})
        name = str(item.get("metadata", {}).get("name", ""))
        user = str(spec.get("username", ""))
        if spec.get("signerName") != SIGNER or not user.startswith(NODE_PREFIX):
            continue
        node = user[len(NODE_PREFIX) :]
        if node not in wanted:
            continue
        state = _state(item)
        if state == "approved":
            answered.add(node)
            continue
        if state != "pending":
            continue
        problems: list[str] = []
        if "system:nodes" not in (spec.get("groups") or []):
            problems.append("its user is not in group system:nodes")
        usages = set(spec.get("usages") or [])
        if "server auth" not in usages or not usages <= ALLOWED_USAGES:
            problems.append(f"its usages are {sorted(usages)}, not a serving certificate's")
        sans, error = _subject_alt_names(str(spec.get("request", "")))
        if error:
            problems.append(error)
        if node not in addresses:
            problems.append(f"node {node} is not registered in the cluster")
        elif not sans <= addresses[node]:
            problems.append(
                f"it names {sorted(sans - addresses[node])}, which are not node {node}'s name or addresses "
                f"({sorted(addresses[node])})"
            )
        if problems:
            refused.append(f"{name} (from {user}): " + "; ".join(problems))
            continue
        approve.append(name)
        by_node.setdefault(node, []).append(name)
        answered.add(node)
    return {
        "approve": approve,
        "by_node": by_node,
        "waiting": [n for n in wanted if n not in answered],
        "refused": refused,
    }


class FilterModule:
    """kubelet_serving_* filters."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {"kubelet_serving_csr_plan": kubelet_serving_csr_plan}
