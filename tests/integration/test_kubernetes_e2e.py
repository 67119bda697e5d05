"""End to end with the kubernetes engine: `provision.py up --nodes 3 --provider auto --engine kubernetes`.

kubeadm, kubelet and the Kubernetes and Calico images come from the internet, so this test runs
only where that is possible and asked for: KUBE_E2E=1 must be set (without it nothing leaves this
machine), and then one HTTPS HEAD request with a 5 s timeout to pkgs.k8s.io decides. Where the
probe fails the test skips with that reason.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.integration.conftest import Cluster, make_cluster

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

NAME = "it-kube"
NETWORK = "192.168.158.0/24"
PROBE_URL = "https://pkgs.k8s.io/"
UNREACHABLE = "pkgs.k8s.io unreachable from this machine: kubeadm, kubelet and images cannot be downloaded"
NOT_ASKED = (
    "needs pkgs.k8s.io and the Kubernetes/Calico image registries, which are unreachable on the test machines; "
    "set KUBE_E2E=1 where they are reachable to run it (it downloads kubeadm, kubelet and images)"
)


def pkgs_k8s_io_reachable(timeout: float = 5.0) -> bool:
    """One HEAD request to pkgs.k8s.io; any HTTP answer counts as reachable."""
    request = urllib.request.Request(PROBE_URL, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def skip_reason(env: dict[str, str] | None = None, probe: object = pkgs_k8s_io_reachable) -> str:
    """Empty when the test may run; else why not. The probe is only called with KUBE_E2E=1."""
    environ = os.environ if env is None else env
    if environ.get("KUBE_E2E") != "1":
        return NOT_ASKED
    if not callable(probe) or not probe():
        return UNREACHABLE
    return ""


def test_skip_reason_without_opt_in_sends_nothing() -> None:
    def forbidden() -> bool:
        raise AssertionError("the probe must not run without KUBE_E2E=1")

    assert skip_reason({}, forbidden) == NOT_ASKED


def test_skip_reason_when_unreachable() -> None:
    assert skip_reason({"KUBE_E2E": "1"}, lambda: False) == UNREACHABLE
    assert skip_reason({"KUBE_E2E": "1"}, lambda: True) == ""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    yield from make_cluster(tmp_path_factory, NAME, NETWORK)


def test_up_forms_a_kubernetes_cluster(cluster: Cluster) -> None:
    proc = cluster.run(
        "up",
        "--nodes",
        "3",
        "--provider",
        "auto",
        "--engine",
        "kubernetes",
        "--name",
        NAME,
        "--network",
        NETWORK,
        timeout=3600,
    )
    out = proc.stdout
    for stage in ("stage kube_packages", "stage control_plane", "stage cni", "stage join", "verify (testinfra)"):
        assert f"==> {stage}" in out, out
    assert "FAIL" not in out, out


def test_second_provision_changes_nothing(cluster: Cluster) -> None:
    proc = cluster.run("provision", timeout=3600)
    changed = [int(n) for n in re.findall(r"changed=(\d+)", proc.stdout)]
    assert changed and not any(changed), proc.stdout[-4000:]


def test_verify_passes(cluster: Cluster) -> None:
    proc = cluster.run("verify", timeout=1800)
    assert "FAIL" not in proc.stdout, proc.stdout


def test_reset_then_up_forms_the_cluster_again(cluster: Cluster) -> None:
    cluster.run("reset", timeout=1800)
    proc = cluster.run("up", timeout=3600)
    assert "FAIL" not in proc.stdout, proc.stdout
