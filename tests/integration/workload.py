"""A workload that must stay up through an upgrade, and the client that watches it: three replicas of
the smoke web server behind a NodePort, requested through every node's address twice a second, with
the nodes' cordons polled once a second, so that a failure through a node counts only when that node
was not being drained.

Used by the HA lane (tests/integration/test_kubernetes_ha.py). Traffic goes only to the addresses
passed in: the nodes the lane created.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

NS = "it-upgrade"
# Requests through a node count as excused while that node is cordoned (drained for its turn), and for
# this long around it: the cordon is polled once a second.
MARGIN = 3.0

# kubectl with the cluster's kubeconfig: the arguments in, its stdout out ("" when it failed).
Kubectl = Callable[..., str]


def workload(image: str, node_port: int) -> str:
    """Three replicas of the smoke web server behind a NodePort, at most one unavailable at a time; a
    replica stays up a few seconds after it is told to stop, while every node's kube-proxy drops it.
    They tolerate the control planes' taint, so that control planes carry replicas and their drains
    move them too."""
    labels = {"app": "upgrade-web"}
    docs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": labels},
                "strategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "terminationGracePeriodSeconds": 20,
                        "tolerations": [
                            {
                                "key": "node-role.kubernetes.io/control-plane",
                                "operator": "Exists",
                                "effect": "NoSchedule",
                            }
                        ],
                        "containers": [
                            {
                                "name": "web",
                                "image": image,
                                "imagePullPolicy": "Never",
                                "ports": [{"containerPort": 8080}],
                                "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
                                "lifecycle": {"preStop": {"sleep": {"seconds": 8}}},
                            }
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels}},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {
                "type": "NodePort",
                "selector": labels,
                "ports": [{"port": 80, "targetPort": 8080, "nodePort": node_port}],
            },
        },
    ]
    return "\n---\n".join(json.dumps(d) for d in docs)


def clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t)) + f".{int(t * 10) % 10}"


@dataclass
class Watch:
    """A client requesting the NodePort through every node twice a second, and the nodes' cordons,
    polled once a second, both with their times."""

    kubectl: Kubectl
    ips: Mapping[str, str]
    node_port: int
    results: list[tuple[float, str, bool, str]] = field(default_factory=list)
    cordoned: list[tuple[float, frozenset[str]]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def _request(self, ip: str) -> tuple[bool, str]:
        """One request through a node: whether it answered 200, and the body (it names the replica that
        answered, so a failure's reader sees who served around it) or why not."""
        try:
            with urllib.request.urlopen(f"http://{ip}:{self.node_port}/", timeout=2) as resp:
                return resp.status == 200, resp.read(200).decode(errors="replace").strip()
        except OSError as exc:
            return False, str(exc)

    def _client(self, node: str, ip: str) -> None:
        while not self.stop.is_set():
            t = time.time()
            ok, why = self._request(ip)
            self.results.append((t, node, ok, why))
            self.stop.wait(max(0.0, 0.5 - (time.time() - t)))

    def _cordons(self) -> None:
        while not self.stop.is_set():
            t = time.time()
            try:
                items = json.loads(self.kubectl("get", "nodes", "-o", "json", check=False))["items"]
            except (ValueError, KeyError, subprocess.TimeoutExpired):
                items = None  # the API server restarting: no reading this second
            if items is not None:
                self.cordoned.append(
                    (t, frozenset(n["metadata"]["name"] for n in items if n["spec"].get("unschedulable")))
                )
            self.stop.wait(1.0)

    def answering(self, timeout: float = 120.0) -> None:
        """Wait until the NodePort answers through every node three times in a row: a rollout is done
        when its replicas are ready, and each node's kube-proxy opens the port a moment later (a node
        still without it refuses the connection)."""
        deadline = time.monotonic() + timeout
        for node, ip in self.ips.items():
            streak = 0
            while streak < 3:
                ok, why = self._request(ip)
                streak = streak + 1 if ok else 0
                assert time.monotonic() < deadline, f"the NodePort does not answer through {node} ({ip}): {why}"
                time.sleep(0.5)

    def start(self) -> None:
        self.threads = [threading.Thread(target=self._client, args=item, daemon=True) for item in self.ips.items()]
        self.threads.append(threading.Thread(target=self._cordons, daemon=True))
        for th in self.threads:
            th.start()

    def finish(self) -> None:
        self.stop.set()
        for th in self.threads:
            th.join(timeout=10)

    def excused(self, t: float, node: str) -> bool:
        """The node was cordoned at t: in a reading within MARGIN of it, or in the readings on both sides
        of it (while an API server restarts, the readings can stop for longer than MARGIN)."""
        if any(node in nodes for when, nodes in self.cordoned if abs(when - t) <= MARGIN):
            return True
        before = [nodes for when, nodes in self.cordoned if when <= t]
        after = [nodes for when, nodes in self.cordoned if when > t]
        return bool(before and after and node in before[-1] and node in after[0])

    def drained_ever(self) -> set[str]:
        return set().union(*(nodes for _, nodes in self.cordoned))

    def around(self, t: float, node: str, seconds: float = 3.0) -> list[str]:
        """What the client saw through a node a few seconds either side of a moment, for a failure's reader."""
        return [
            f"{clock(w)} {'ok' if ok else 'FAILED'} {why}"
            for w, n, ok, why in self.results
            if n == node and abs(w - t) <= seconds
        ]

    def counts(self) -> dict[str, tuple[int, int, int]]:
        """Per node: requests, failures, failures while the node was drained."""
        out = {}
        for node in self.ips:
            mine = [r for r in self.results if r[1] == node]
            failures = [r for r in mine if not r[2]]
            out[node] = (len(mine), len(failures), len([r for r in failures if self.excused(r[0], node)]))
        return out

    def unexcused(self, node: str) -> list[tuple[float, str, bool, str]]:
        return [r for r in self.results if r[1] == node and not r[2] and not self.excused(r[0], node)]

    def report(self, node: str, events: str, upgrade_output: str) -> str:
        """What a reader needs to find the cause of unexcused failures through a node: each with its time
        and reason, what the client saw around it, the cordons, the events and the upgrade's output."""
        seen = "\n".join(
            f"{clock(r[0])} {r[3]}\n  " + "\n  ".join(self.around(r[0], node)) for r in self.unexcused(node)[:5]
        )
        cordons = "\n".join(f"{clock(t)} {sorted(n)}" for t, n in self.cordoned if n)
        return (
            f"unexcused failures through {node}:\n{seen}\ncordons:\n{cordons}\n{events}\n"
            f"the upgrade's output:\n{upgrade_output[-6000:]}"
        )


def events(kubectl: Kubectl, namespace: str) -> list[str]:
    """A namespace's events, oldest first, one line each with its time (UTC)."""
    items = json.loads(kubectl("-n", namespace, "get", "events", "-o", "json", check=False) or "{}").get("items", [])
    lines = []
    for e in items:
        when = e.get("lastTimestamp") or e.get("eventTime") or e.get("firstTimestamp") or ""
        obj = e.get("involvedObject", {})
        lines.append(f"{when} {obj.get('kind')}/{obj.get('name')} {e.get('reason')}: {e.get('message', '')[:160]}")
    return sorted(lines)
