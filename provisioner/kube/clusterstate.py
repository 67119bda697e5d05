"""Cluster state checks (JSON from kubectl), shared by the roles and the testinfra suite: node
readiness and addresses, the control-plane taint, calico-node and pod readiness, stacked etcd, and
verify's smoke workload."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from provisioner.kube import kubectl_json


def _items(value: object, kind: str) -> list[Mapping[str, Any]]:
    parsed = kubectl_json(value, kind)
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
    parsed = kubectl_json(state, "calico state")
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
    items = _items(kubectl_json(pods, "pod list"), "Pod")
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


def smoke_pod_template(image: str, labels: Mapping[str, str], probe_period: int) -> dict[str, Any]:
    """A pod of the smoke web server (port 8080, answering with its pod's name), on any node (control
    planes too), never pulled, ready once /healthz answers (asked every `probe_period` seconds)."""
    return {
        "metadata": {"labels": dict(labels)},
        "spec": {
            "tolerations": [{"operator": "Exists"}],
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "web",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "ports": [{"containerPort": 8080}],
                    "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": probe_period},
                }
            ],
        },
    }


def smoke_manifest(namespace: str, image: str, namespace_labels: Mapping[str, str] | None = None) -> str:
    """verify's workload: the smoke web server on every node (control planes too), never pulled, and a
    NodePort service in front of it, in `namespace` (with `namespace_labels`)."""
    import yaml

    labels = {"app": "smoke"}
    namespace_meta: dict[str, Any] = {"name": namespace}
    if namespace_labels:
        namespace_meta["labels"] = dict(namespace_labels)
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": namespace_meta},
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": "smoke", "namespace": namespace},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": smoke_pod_template(image, labels, probe_period=2),
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
