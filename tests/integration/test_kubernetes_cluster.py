"""The README's main job for real: `up --nodes 3` (with the ingress add-on, `--ingress`) forms a kubeadm + Calico cluster on docker-provider
container nodes here, from the offline bundle (built first when it is missing), and the life cycle
around it: verify, a rerun that changes nothing, a node added, reset and re-formed, destroy.

The tests run in file order against one cluster; each step builds on the previous one. Traffic goes
only to the nodes this test creates (their loopback-forwarded SSH ports and their node-network
addresses).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner import bundle
from tests.integration.conftest import Cluster, assert_verified, default_bundle, make_cluster

pytestmark = pytest.mark.integration

NAME = "it-k8s"
NETWORK = "192.168.159.0/24"
IPS = {"cp1": "192.168.159.10", "worker1": "192.168.159.11", "worker2": "192.168.159.12"}
KUBE_STAGES = ("kube_packages", "control_plane", "cni", "join", "addons")
# What verify must show as passed (an ok cell in its table) on every node: the node itself, and the
# data plane through the smoke-test workload (DNS from a pod, pod to pod across nodes, the NodePort
# from the host); and the cluster-wide checks.
NODE_CHECKS = (
    "kubelet_enabled_and_running",
    "node_ready",
    "calico_node_ready",
    "dns_resolves_from_a_pod_on_the_node",
    "pod_reaches_pods_on_every_other_node",
    "nodeport_answers_from_the_host",
    "service_range_routed_on_the_node_network",
)
# The storage add-on, used: a claim without a class bound by the default one, written by a pod and
# read back by a new one. The ingress add-on (turned on with --ingress), used: an Ingress and an
# HTTPRoute, each by its host name, through every node's address from this host. The metrics add-on's
# figures for every node, and helm installing the project's chart.
CLUSTER_CHECKS = (
    "system_pods_running_and_ready",
    "user_kubeconfig_on_control_plane",
    "storage_default_class_keeps_data_for_a_new_pod",
    "ingress_and_httproute_reach_the_smoke_server_from_the_host",
    "metrics_every_node_has_figures",
    "helm_installs_the_projects_chart_from_its_directory",
)


def wanted_checks(nodes: list[str]) -> dict[str, list[str]]:
    return {check: nodes for check in NODE_CHECKS} | {check: ["(cluster)"] for check in CLUSTER_CHECKS}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from make_cluster(tmp_path_factory, NAME, NETWORK)


def kubectl(cluster: Cluster, *args: str) -> str:
    """The bundle's kubectl on this host with the fetched kubeconfig (what a user runs)."""
    proc = subprocess.run(
        [str(default_bundle().path / "bin" / "kubectl"), "--kubeconfig", str(cluster.root / "kubeconfig"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr[-1000:]}"
    return proc.stdout


def node_table(cluster: Cluster) -> dict[str, tuple[str, str]]:
    """name -> (Ready status, InternalIP) from the host."""
    nodes = json.loads(kubectl(cluster, "get", "nodes", "-o", "json"))["items"]
    table = {}
    for n in nodes:
        ready = next(c["status"] for c in n["status"]["conditions"] if c["type"] == "Ready")
        ip = next(a["address"] for a in n["status"]["addresses"] if a["type"] == "InternalIP")
        table[n["metadata"]["name"]] = (ready, ip)
    return table


def test_up_forms_a_verified_kubernetes_cluster(cluster: Cluster) -> None:
    proc = cluster.run(
        "up", "--nodes", "3", "--provider", "docker", "--name", NAME, "--network", NETWORK, "--ingress", timeout=3000
    )
    out = proc.stdout
    for stage in KUBE_STAGES:
        assert re.search(rf"==> stage {stage} \(.*\): ok", out), out[-6000:]
    assert "not run" not in out, out[-4000:]
    # verify: nothing failed, and the data-plane checks passed on every node (their cells, not their names).
    assert_verified(out, wanted_checks(list(IPS)))
    # The cgroup v1 deprecation is said once per run, not once per node or stage.
    assert out.count("cgroup v1") <= 2, out


def test_nodes_started_from_the_kubernetes_node_image_with_the_bundle_in_containerd(cluster: Cluster) -> None:
    """The nodes came from the Kubernetes node image (kubeimage.py): every bundle image was in each
    node's containerd before the kube_packages stage, which imported none of them again, and the
    images the nodes run were unpacked from that content when their containers were created."""
    images = {
        subprocess.run(
            ["docker", "inspect", "-f", "{{.Config.Image}}", f"{NAME}-{node}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for node in IPS
    }
    assert len(images) == 1 and next(iter(images)).startswith("provisioner/node-kube:"), images
    events = [json.loads(line) for line in (cluster.root / "logs" / "kube_packages.events.jsonl").open()]
    imports = [e for e in events if e.get("event") == "result" and "Import each tarball" in str(e.get("task", ""))]
    assert {e["host"] for e in imports} == set(IPS), imports
    assert all(e["status"] == "ok" and not e["changed"] for e in imports), imports
    for node in IPS:
        listed = subprocess.run(
            ["docker", "exec", f"{NAME}-{node}", "ctr", "-n", "k8s.io", "images", "ls", "-q"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        for wanted in ("registry.k8s.io/kube-proxy:", "registry.k8s.io/pause:", "quay.io/calico/node:"):
            assert any(ref.startswith(wanted) for ref in listed), (node, wanted, listed)


def test_kubeconfig_on_the_host_shows_three_ready_nodes_on_the_node_network(cluster: Cluster) -> None:
    path = cluster.root / "kubeconfig"
    assert path.stat().st_mode & 0o777 == 0o600
    assert node_table(cluster) == {name: ("True", ip) for name, ip in IPS.items()}
    # `provision.py kubectl`: the cluster's kubectl with its kubeconfig, kubectl's options passed through.
    names = cluster.run("kubectl", "get", "nodes", "-o", "name").stdout.split()
    assert sorted(names) == [f"node/{n}" for n in sorted(IPS)], names
    # The metrics add-on as a user meets it: `kubectl top nodes` prints a row of figures for every node
    # (verify's metrics check waited for the first figures).
    rows = [line.split() for line in cluster.run("kubectl", "top", "nodes", "--no-headers").stdout.splitlines()]
    assert sorted(row[0] for row in rows) == sorted(IPS), rows
    assert all(len(row) >= 5 and row[1].endswith("m") and row[3].endswith("Mi") for row in rows), rows


def test_a_claim_gets_a_directory_on_its_pods_node_and_loses_it_with_the_claim(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The storage add-on as a user meets it: a claim with no StorageClass named, a pod that writes
    into it; the volume is a directory on that pod's node; deleting the claim removes the directory
    (the helper pod's teardown, which verify's own check does not wait for)."""
    ns = "it-storage"
    manifest = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": "data", "namespace": ns},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "8Mi"}}},
            },
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "writer", "namespace": ns},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "w",
                            "image": smoke_image(),
                            "imagePullPolicy": "Never",
                            "command": ["/smoke-web", "-write", "/data/file", "-text", "kept"],
                            "volumeMounts": [{"name": "d", "mountPath": "/data"}],
                        }
                    ],
                    "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}],
                },
            },
        ],
    }
    path = tmp_path / "it-storage.json"  # not in the state directory: destroy keeps what it did not make
    path.write_text(json.dumps(manifest))
    kubectl(cluster, "apply", "-f", str(path))
    try:
        kubectl(cluster, "-n", ns, "wait", "pod/writer", "--for=jsonpath={.status.phase}=Succeeded", "--timeout=150s")
        pod = json.loads(kubectl(cluster, "-n", ns, "get", "pod", "writer", "-o", "json"))
        volume = json.loads(kubectl(cluster, "-n", ns, "get", "pvc", "data", "-o", "json"))["spec"]["volumeName"]
        node = pod["spec"]["nodeName"]
        found = subprocess.run(
            ["docker", "exec", f"{NAME}-{node}", "sh", "-c", "cat /opt/local-path-provisioner/*/file"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert found.stdout == "kept", (node, found.stdout, found.stderr)
    finally:
        kubectl(cluster, "delete", "namespace", ns, "--wait=true", "--timeout=150s")
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        left = subprocess.run(
            [
                "docker",
                "exec",
                f"{NAME}-{node}",
                "sh",
                "-c",
                f"ls -d /opt/local-path-provisioner/{volume}_* 2>/dev/null",
            ],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        if not left:
            break
        time.sleep(2)
    assert not left, f"the claim is gone but its directory stays on {node}: {left}"


def smoke_image() -> str:
    return bundle.smoke_image(default_bundle())


# Kubernetes' own conformance tests of sig-network, run by `provision.py conformance` against this
# cluster (the suite built from Go modules and the test images made the first time, cached under
# /var/cache/provisioner/conformance; in CI from that cache).
CONFORMANCE_FOCUS = r"\[sig-network\].*\[Conformance\]"
CONFORMANCE_TESTS = 47  # of the suite at 1.37.2: e2e.test's dry run with this focus


def test_conformance_sig_network_passes(cluster: Cluster) -> None:
    proc = cluster.run("conformance", "--focus", CONFORMANCE_FOCUS, "--parallel", "4", timeout=3000, check=False)
    out = proc.stdout
    assert proc.returncode == 0, out[-6000:] + proc.stderr[-2000:]
    summary = re.search(r"==> conformance: (\d+) passed, (\d+) failed, (\d+) skipped", out)
    assert summary, out[-3000:]
    assert summary.groups() == (str(CONFORMANCE_TESTS), "0", "0"), summary.group(0)
    assert re.search(rf"^sig-network\s+{CONFORMANCE_TESTS}\s+0\s+0$", out, re.M), out[-3000:]
    runs = sorted((cluster.root / "conformance").iterdir())
    assert (runs[-1] / "parallel" / "junit_01.xml").is_file() and (runs[-1] / "parallel" / "e2e.log").is_file()
    # The test images went to every node (role conformance_images).
    events = [json.loads(line) for line in (cluster.root / "logs" / "conformance-images.events.jsonl").open()]
    imports = [e for e in events if e.get("event") == "result" and "Import each archive" in str(e.get("task", ""))]
    assert {e["host"] for e in imports} == set(IPS), imports


def test_a_second_cluster_with_the_same_name_or_network_is_refused_and_its_destroy_spares_this_one(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Issue 14.1-2: a second state directory took the running cluster's name, failed on a docker name
    clash, and its `destroy` removed the first cluster's machines and network."""
    before = cluster.containers()
    second = Cluster(tmp_path / "second", NAME, "192.168.158.0/24")
    for cmd in ("plan", "up"):
        proc = second.run(
            cmd, "--nodes", "1", "--provider", "docker", "--name", NAME, "--network", "192.168.158.0/24", check=False
        )
        assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr
        assert f"the cluster name '{NAME}' is taken by another cluster" in proc.stderr, proc.stderr
        assert str(cluster.root) in proc.stderr, proc.stderr
    other_name = Cluster(tmp_path / "third", "it-k8s-b", NETWORK)
    proc = other_name.run(
        "up", "--nodes", "1", "--provider", "docker", "--name", "it-k8s-b", "--network", NETWORK, check=False
    )
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr
    assert f"the node network {NETWORK} is used by cluster '{NAME}'" in proc.stderr, proc.stderr
    assert not second.root.exists() and not other_name.root.exists(), "a refused up left a state directory"
    # A state directory that names this cluster but did not make it: its destroy removes nothing of ours.
    second.root.mkdir(parents=True)
    saved = json.loads((cluster.root / "cluster.json").read_text())
    (second.root / "cluster.json").write_text(json.dumps(saved | {"cluster_id": "0123456789ab"}))
    second.run("destroy", "-f", timeout=300)
    assert cluster.containers() == before
    assert cluster.docker_network_exists()


def test_rerun_converges_with_no_change_in_any_stage(cluster: Cluster) -> None:
    proc = cluster.run("up", "--converge", timeout=1800)
    changed = cluster.timings()["changed"]
    assert isinstance(changed, dict)
    assert set(KUBE_STAGES) <= set(changed), changed
    assert all(v == 0 for v in changed.values()), changed
    assert_verified(proc.stdout, wanted_checks(list(IPS)))


def test_adding_a_node_joins_only_that_worker(cluster: Cluster) -> None:
    proc = cluster.run("up", "--nodes", "4", timeout=1800)
    assert "created worker3" in proc.stdout, proc.stdout[-3000:]
    assert_verified(proc.stdout, wanted_checks([*IPS, "worker3"]))
    table = node_table(cluster)
    assert table["worker3"] == ("True", "192.168.159.13"), table
    # Only the new worker joined: no task changed anything on the other nodes. (The token is made on
    # the control plane by a run_once task that Ansible reports under the play's first host, as
    # "changed: [worker1 -> cp1]": that delegated change is the control plane's.)
    log = (cluster.root / "logs" / "join.log").read_text()
    assert re.search(r"^changed: \[worker3\]", log, re.M), log[-3000:]
    touched = set(re.findall(r"^changed: \[(cp1|worker1|worker2)\]", log, re.M))
    assert not touched, f"the join stage changed {sorted(touched)} as well as worker3"


def test_shrinking_drains_and_removes_only_the_dropped_worker(cluster: Cluster) -> None:
    """Issue 14.3: `up --nodes 3` after 4 left worker3 running and unseen."""
    refused = cluster.run("up", "--nodes", "3", check=False)
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr
    assert "4 -> 3 nodes: worker3 will be drained, deleted from Kubernetes and reset" in refused.stderr
    assert f"{NAME}-worker3" in cluster.containers()
    # --no-verify: the next step's `up` verifies the three-node cluster (CI's time).
    proc = cluster.run("up", "--nodes", "3", "--shrink", "--no-verify", timeout=1800)
    assert "removed worker3" in proc.stdout, proc.stdout[-3000:]
    assert set(node_table(cluster)) == {"cp1", "worker1", "worker2"}
    assert f"{NAME}-worker3" not in cluster.containers()
    log = (cluster.root / "logs" / "remove_nodes.log").read_text()
    assert re.search(r"^changed: \[cp1\] => \(item=worker3\)", log, re.M), log[-3000:]
    status = cluster.run("status")
    assert "worker3" not in status.stdout


def test_reset_then_up_with_a_worker_stopped_during_join_forms_the_cluster_again(cluster: Cluster) -> None:
    cluster.run("reset", timeout=900)
    assert not (cluster.root / "kubeconfig").exists()
    victim = f"{NAME}-worker2"
    events = cluster.root / "logs" / "join.events.jsonl"
    events.unlink(missing_ok=True)
    runner = cluster.popen("up")
    # Stop worker2 once Ansible is really at work on the join stage (its first task has started).
    deadline = time.monotonic() + 1200
    while time.monotonic() < deadline and not (events.exists() and '"event": "task"' in events.read_text()):
        if runner.poll() is not None:
            break
        time.sleep(0.2)
    assert runner.poll() is None, "up finished before the join stage started"
    subprocess.run(["docker", "stop", "-t", "2", victim], capture_output=True, check=True)
    out, err = runner.communicate(timeout=1200)
    assert runner.returncode != 0, out[-3000:]
    assert "worker2 (now stopped) stopped or vanished during the run" in err, err
    # up starts the node again and resumes at the join stage; the cluster forms with every node.
    proc = cluster.run("up", timeout=1800)
    assert "resuming at stage join" in proc.stdout or "every stage runs again" in proc.stdout, proc.stdout[-3000:]
    assert_verified(proc.stdout, wanted_checks(list(IPS)))
    assert all(ready == "True" for ready, _ in node_table(cluster).values())


def test_destroy_leaves_nothing(cluster: Cluster) -> None:
    volumes = set()
    for name in cluster.containers():
        out = subprocess.run(
            ["docker", "inspect", "-f", '{{range .Mounts}}{{if eq .Type "volume"}}{{.Name}} {{end}}{{end}}', name],
            capture_output=True,
            text=True,
            check=True,
        )
        volumes |= set(out.stdout.split())
    assert volumes, "the nodes have no /var volume"
    cluster.run("destroy", "-f", timeout=600)
    assert cluster.containers() == []
    assert not cluster.docker_network_exists()
    left = subprocess.run(["docker", "volume", "ls", "-q"], capture_output=True, text=True, check=True).stdout.split()
    assert not volumes & set(left), f"volumes left behind: {sorted(volumes & set(left))}"
    assert not cluster.root.exists()
