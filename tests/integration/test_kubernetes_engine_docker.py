"""The README's main job, `up --nodes 3` with the default engine, on docker-provider nodes here.

Container nodes share this host's kernel; where it runs cgroup v1, kubelet 1.35+ cannot run, so
`up` prepares the nodes and the runtime, says that the Kubernetes stages were not run and why, and
verifies what it did. Where the host runs cgroup v2 the same command goes on to the Kubernetes
stages, which need the Kubernetes package repository: that is tests/integration/test_kubernetes_e2e.py.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator

import pytest

from tests.integration.conftest import Cluster, make_cluster

pytestmark = pytest.mark.integration

NAME = "it-kube"
NETWORK = "192.168.156.0/24"


def _cgroup_v1() -> bool:
    fs = subprocess.run(["stat", "-fc", "%T", "/sys/fs/cgroup"], capture_output=True, text=True, check=False)
    return fs.stdout.strip() != "cgroup2fs"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not _cgroup_v1():
        pytest.skip("this host runs cgroup v2: the Kubernetes stages would run and need pkgs.k8s.io (see the e2e test)")
    yield from make_cluster(tmp_path_factory, NAME, NETWORK)


def test_up_prepares_nodes_and_says_why_kubernetes_did_not_run(cluster: Cluster) -> None:
    proc = cluster.run("up", "--nodes", "3", "--provider", "docker", "--name", NAME, "--network", NETWORK)
    out = proc.stdout
    assert "==> stage prepare" in out and "==> stage runtime" in out
    for stage in ("kube_packages", "control_plane", "cni", "join"):
        assert re.search(rf"==> {stage}: not run: .*cgroup v1", out), out
    assert "NOTE: the Kubernetes stages did not run" in out
    assert "all checks passed" in out
    assert re.search(r"cp1\s+control_plane\s+192\.168\.156\.10", out)
    inv = cluster.inventory.read_text()
    assert "kube_control_plane:" in inv and "container_runtime_source: distro" in inv


def test_rerun_reports_no_change_and_status_records_the_skip(cluster: Cluster) -> None:
    cluster.run("up")
    changed = cluster.timings()["changed"]
    assert changed == {"prepare": 0, "runtime": 0}
    status = cluster.run("status").stdout
    assert re.search(r"kube_packages\s+skipped.*cgroup v1", status)
    assert re.search(r"runtime\s+done", status)


def test_rerun_one_stage_and_destroy(cluster: Cluster) -> None:
    proc = cluster.run("provision", "--stage", "prepare")
    assert "stage prepare (node preparation): ok, changed=0" in proc.stdout
    cluster.run("destroy", "-f")
    assert cluster.containers() == []
    assert not cluster.docker_network_exists()
