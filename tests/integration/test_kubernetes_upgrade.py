"""`provision.py upgrade` for real: a three-node cluster made at Kubernetes 1.36 from its bundle, a
workload behind a NodePort that a client on this host requests through every node's address twice a
second for the whole upgrade, then `upgrade --kube-version 1.37.2`: every node at the target, verify
green, the etcd snapshot restorable with etcdutl, a rerun that changes nothing, no failed request
through a node that was not being drained at that moment, and `up` afterwards keeping the new release.

Traffic goes only to the nodes this test creates.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from provisioner import bundle
from tests.integration.conftest import Cluster, assert_verified, make_cluster

pytestmark = pytest.mark.integration

NAME = "it-upg"
NETWORK = "192.168.167.0/24"
IPS = {"cp1": "192.168.167.10", "worker1": "192.168.167.11", "worker2": "192.168.167.12"}
FROM, TO = "1.36.3", "1.37.2"
NODE_PORT = 30667
NS = "it-upgrade"
# Requests through a node count as excused while that node is cordoned (drained for its turn), and for
# this long around it: the cordon is polled once a second.
MARGIN = 3.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    kept = tmp_path_factory.mktemp("upgrade-logs")
    for made in make_cluster(tmp_path_factory, NAME, NETWORK):
        try:
            yield made
        finally:
            # destroy removes the state directory with its logs: keep the upgrade's for a failure's reader.
            for log in (made.root / "logs").glob("upgrade*"):
                shutil.copy2(log, kept / log.name)


def kubectl(cluster: Cluster, *args: str, stdin: str | None = None, check: bool = True) -> str:
    """The target release's kubectl on this host (it serves both releases) with the cluster's kubeconfig."""
    tool = bundle.find(bundle.resolve_versions(TO, None))
    assert tool is not None, f"the bundle of {TO} is missing"
    proc = subprocess.run(
        [str(tool.path / "bin" / "kubectl"), "--kubeconfig", str(cluster.root / "kubeconfig"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert not check or proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr[-1000:]}"
    return proc.stdout


def workload(image: str) -> str:
    """Three replicas of the smoke web server behind a NodePort, at most one unavailable at a time; a
    replica stays up a few seconds after it is told to stop, while every node's kube-proxy drops it."""
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
                "ports": [{"port": 80, "targetPort": 8080, "nodePort": NODE_PORT}],
            },
        },
    ]
    return "\n---\n".join(json.dumps(d) for d in docs)


@dataclass
class Watch:
    """A client requesting the NodePort through every node twice a second, and the nodes' cordons,
    polled once a second, both with their times."""

    cluster: Cluster
    results: list[tuple[float, str, bool, str]] = field(default_factory=list)
    cordoned: list[tuple[float, frozenset[str]]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def _client(self, node: str, ip: str) -> None:
        while not self.stop.is_set():
            t = time.time()
            try:
                with urllib.request.urlopen(f"http://{ip}:{NODE_PORT}/", timeout=2) as resp:
                    # The body names the replica that answered: a failure's reader sees who served around it.
                    ok, why = resp.status == 200, resp.read(200).decode(errors="replace").strip()
            except OSError as exc:
                ok, why = False, str(exc)
            self.results.append((t, node, ok, why))
            self.stop.wait(max(0.0, 0.5 - (time.time() - t)))

    def _cordons(self) -> None:
        while not self.stop.is_set():
            t = time.time()
            out = kubectl(self.cluster, "get", "nodes", "-o", "json", check=False)
            try:
                items = json.loads(out)["items"]
            except (ValueError, KeyError):
                items = None  # the API server restarting: no reading this second
            if items is not None:
                self.cordoned.append(
                    (t, frozenset(n["metadata"]["name"] for n in items if n["spec"].get("unschedulable")))
                )
            self.stop.wait(1.0)

    def start(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self._client, args=item, daemon=True) for item in IPS.items()]
        threads.append(threading.Thread(target=self._cordons, daemon=True))
        for th in threads:
            th.start()
        return threads

    def excused(self, t: float, node: str) -> bool:
        return any(node in nodes for when, nodes in self.cordoned if abs(when - t) <= MARGIN)

    def drained_ever(self) -> set[str]:
        return set().union(*(nodes for _, nodes in self.cordoned))

    def around(self, t: float, node: str, seconds: float = 3.0) -> list[str]:
        """What the client saw through a node a few seconds either side of a moment, for a failure's reader."""
        return [
            f"{clock(w)} {'ok' if ok else 'FAILED'} {why}"
            for w, n, ok, why in self.results
            if n == node and abs(w - t) <= seconds
        ]


def clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(t)) + f".{int(t * 10) % 10}"


def events(cluster: Cluster, namespace: str) -> list[str]:
    """A namespace's events, oldest first, one line each with its time (UTC)."""
    items = json.loads(kubectl(cluster, "-n", namespace, "get", "events", "-o", "json", check=False) or "{}").get(
        "items", []
    )
    lines = []
    for e in items:
        when = e.get("lastTimestamp") or e.get("eventTime") or e.get("firstTimestamp") or ""
        obj = e.get("involvedObject", {})
        lines.append(f"{when} {obj.get('kind')}/{obj.get('name')} {e.get('reason')}: {e.get('message', '')[:160]}")
    return sorted(lines)


def node_versions(cluster: Cluster) -> dict[str, str]:
    nodes = json.loads(kubectl(cluster, "get", "nodes", "-o", "json"))["items"]
    return {n["metadata"]["name"]: n["status"]["nodeInfo"]["kubeletVersion"] for n in nodes}


def test_up_at_the_previous_minor_with_a_workload_behind_a_node_port(cluster: Cluster) -> None:
    proc = cluster.run(
        "up", "--nodes", "3", "--provider", "docker", "--name", NAME, "--network", NETWORK,
        "--kube-version", "1.36", "--no-metrics", timeout=3000,
    )  # fmt: skip
    assert_verified(proc.stdout)
    assert node_versions(cluster) == {n: f"v{FROM}" for n in IPS}
    kubectl(cluster, "apply", "-f", "-", stdin=workload(f"provisioner.local/smoke-web:{FROM}"))
    kubectl(cluster, "-n", NS, "rollout", "status", "deployment/web", "--timeout", "180s")


def test_upgrade_moves_every_node_to_the_next_minor_with_the_workload_answering(cluster: Cluster) -> None:
    watch = Watch(cluster)
    threads = watch.start()
    time.sleep(5)
    try:
        proc = cluster.run("upgrade", "--kube-version", TO, timeout=3000)
    finally:
        time.sleep(5)
        watch.stop.set()
        for th in threads:
            th.join(timeout=10)
    out = proc.stdout
    took = re.search(r"upgrade: \d+ s, .*", out)
    print(took.group(0) if took else "upgrade: no summary line")
    assert f"Kubernetes {FROM} -> {TO} (a minor step)" in out, out[-4000:]
    assert_verified(out)
    # The client's counts, printed per node: requests, failures, failures while the node was drained.
    counts: dict[str, tuple[int, int, int]] = {}
    for node in IPS:
        mine = [r for r in watch.results if r[1] == node]
        failures = [r for r in mine if not r[2]]
        excused = [r for r in failures if watch.excused(r[0], node)]
        counts[node] = (len(mine), len(failures), len(excused))
        print(f"client through {node}: {len(mine)} requests, {len(failures)} failed, {len(excused)} while drained")
    for node, (total, n_failed, n_excused) in counts.items():
        assert total > 100, counts
        unexcused = [r for r in watch.results if r[1] == node and not r[2] and not watch.excused(r[0], node)]
        if n_failed != n_excused:
            # What a reader needs to find the cause: each failure with its time and reason, what the client
            # saw around it, the workload's events, the cordons and the upgrade's own output.
            seen = "\n".join(f"{clock(r[0])} {r[3]}\n  " + "\n  ".join(watch.around(r[0], node)) for r in unexcused[:5])
            cordons = "\n".join(f"{clock(t)} {sorted(n)}" for t, n in watch.cordoned if n)
            print(f"unexcused failures through {node}:\n{seen}")
            print("events in the workload's namespace:\n" + "\n".join(events(cluster, NS)))
            print("events in kube-system:\n" + "\n".join(events(cluster, "kube-system")[-80:]))
            print(f"cordons:\n{cordons}")
            print("the upgrade's output:\n" + out[-6000:])
        assert n_failed == n_excused, f"{node}: {[(clock(r[0]), r[3]) for r in unexcused[:5]]} ({counts})"
    # Every node had its turn, drained, and none stays cordoned.
    assert watch.drained_ever() == set(IPS), watch.drained_ever()
    assert watch.cordoned[-1][1] == frozenset(), watch.cordoned[-1]
    # Every kubelet and every control-plane static pod at the target; the API server reports it.
    assert node_versions(cluster) == {n: f"v{TO}" for n in IPS}
    images = kubectl(
        cluster, "-n", "kube-system", "get", "pods", "-l", "tier=control-plane",
        "-o", "jsonpath={range .items[*]}{.spec.containers[0].image}{'\\n'}{end}",
    ).split()  # fmt: skip
    assert len(images) == 4 and all(i.endswith(f":v{TO}") for i in images if "etcd" not in i), images
    server = json.loads(kubectl(cluster, "version", "-o", "json"))["serverVersion"]["gitVersion"]
    assert server == f"v{TO}"
    # The spec records the new release.
    saved = json.loads((cluster.root / "cluster.json").read_text())
    assert saved["spec"]["versions"]["kubernetes"] == TO


def test_the_snapshot_from_before_the_upgrade_restores_with_etcdutl(cluster: Cluster, tmp_path: Path) -> None:
    snapshot = cluster.root / "etcd-snapshots" / f"etcd-before-v{TO}.db"
    assert snapshot.stat().st_size > 100_000, snapshot
    tool = bundle.find(bundle.resolve_versions(TO, None))
    assert tool is not None
    restored = tmp_path / "restored"
    proc = subprocess.run(
        [str(tool.path / "bin" / "etcdutl"), "snapshot", "restore", str(snapshot), "--data-dir", str(restored)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (restored / "member" / "snap" / "db").stat().st_size > 100_000


def test_a_second_upgrade_to_the_same_release_changes_nothing(cluster: Cluster) -> None:
    out = cluster.run("upgrade", "--kube-version", TO, timeout=1500).stdout
    summary = re.search(r"upgrade: \d+ s, (.*)", out)
    assert summary, out[-3000:]
    changed = [int(c) for c in re.findall(r"changed=(\d+)", summary.group(1))]
    assert len(changed) == 3 and sum(changed) == 0, summary.group(1)
    assert_verified(out)


def test_up_after_the_upgrade_keeps_the_new_release(cluster: Cluster) -> None:
    proc = cluster.run("up", timeout=1500)
    assert_verified(proc.stdout)
    assert node_versions(cluster) == {n: f"v{TO}" for n in IPS}
    refused = cluster.run("up", "--kube-version", "1.36", check=False)
    assert refused.returncode == 2 and "kubeadm does not downgrade" in refused.stderr, refused.stderr


def test_destroy_leaves_nothing_behind(cluster: Cluster) -> None:
    cluster.run("destroy", "-f", timeout=600)
    assert cluster.containers() == []
    assert not cluster.docker_network_exists()
