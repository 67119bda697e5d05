"""Stage runtime (role container_runtime): a running, kubeadm-ready container runtime.

Checks run as root (the sockets are root's). The Docker check runs a real container from a tiny
image imported from the node's own files (no registry is needed), so the cgroup and storage
drivers are proven, not just configured.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

import pytest

from provisioner.nodefiles import image_members

testinfra_hosts = ["ansible://k8s_cluster", "ansible://swarm_manager", "ansible://swarm_worker"]

CONTAINERD_CONFIG = "/etc/containerd/config.toml"
SOCKET = "unix:///run/containerd/containerd.sock"
PROBE_IMAGE = "provisioner-runtime-probe:1"


@pytest.fixture
def engine(inventory_vars: dict[str, Any]) -> str:
    """container_runtime of this host: docker (Docker + containerd) or containerd."""
    return str(inventory_vars.get("container_runtime", "docker"))


@pytest.mark.parametrize("service", ["containerd", "docker"])
def test_service_active_and_enabled(host: Any, service: str, engine: str) -> None:
    if service == "docker" and engine != "docker":
        pytest.skip(f"not configured: container_runtime={engine}, no docker")
    unit = host.service(service)
    assert unit.is_running
    assert unit.is_enabled


def test_containerd_cri_plugin_enabled(host: Any) -> None:
    config = host.file(CONTAINERD_CONFIG).content_string
    assert not re.search(r'^\s*disabled_plugins\s*=\s*\[[^\]]*"?cri"?', config, re.MULTILINE)
    with host.sudo():
        plugins = host.check_output("ctr plugins ls")
    cri = [line.split() for line in plugins.splitlines() if line.split()[:2] == ["io.containerd.grpc.v1", "cri"]]
    assert cri and cri[0][-1] == "ok", plugins


def test_containerd_cgroup_driver(host: Any, container_node: bool) -> None:
    config = host.file(CONTAINERD_CONFIG).content_string
    if "SystemdCgroup = true" in config:
        return
    # The role falls back to cgroupfs only on a container node where systemd scopes do not work.
    assert container_node, "SystemdCgroup is not true on a real machine"
    with host.sudo():
        probe = host.run("systemd-run --scope --quiet --collect -- cat /proc/self/cgroup")
    assert probe.rc != 0 or ".scope" not in probe.stdout, "systemd scopes work here: SystemdCgroup should be true"


def test_containerd_config_layout_matches_version(host: Any) -> None:
    version = host.check_output("containerd --version")
    major = int(re.search(r"\s[vV]?(\d+)\.\d+", version).group(1))  # type: ignore[union-attr]
    config = host.file(CONTAINERD_CONFIG).content_string
    if major >= 2:
        assert re.search(r"^version = 3$", config, re.MULTILINE)
        assert "[plugins.'io.containerd.cri.v1.images'.pinned_images]" in config
    else:
        assert re.search(r"^version = 2$", config, re.MULTILINE)
        assert re.search(r'^\s*sandbox_image = "registry\.k8s\.io/pause:', config, re.MULTILINE)


def test_ctr_talks_to_the_socket(host: Any) -> None:
    with host.sudo():
        out = host.check_output("ctr --address /run/containerd/containerd.sock version")
    assert "Server:" in out


def test_crictl(host: Any) -> None:
    assert host.file("/etc/crictl.yaml").contains(f"runtime-endpoint: {SOCKET}")
    if not host.exists("crictl"):
        # crictl comes with the Kubernetes packages (cri-tools, or the bundle's bin/): a node that has
        # them must have it.
        assert not host.exists("kubeadm"), "kubeadm is installed but crictl is not"
        pytest.skip("absent: crictl, which comes with the Kubernetes packages (none on this node)")
    with host.sudo():
        host.check_output("crictl info")


def test_docker_info_answers(host: Any, engine: str) -> None:
    if engine != "docker":
        pytest.skip(f"not configured: container_runtime={engine}, no docker")
    with host.sudo():
        driver = host.check_output("docker info --format '{{.CgroupDriver}} {{.Driver}}'")
        fstype = host.check_output("stat -f -c %T /var/lib/docker")
    cgroup, storage = driver.split()
    assert cgroup in ("systemd", "cgroupfs")
    if fstype == "overlayfs":
        assert storage == "vfs"


def test_docker_runs_a_container(host: Any, engine: str) -> None:
    if engine != "docker":
        pytest.skip(f"not configured: container_runtime={engine}, no docker")
    # The image is made of the node's own files: its shell and cat by their real paths (dash on
    # Debian, bash on EL) and the shared objects ldd names for them there.
    shell = host.check_output("readlink -f /bin/sh")
    cat = host.check_output('readlink -f "$(command -v cat)"')
    ldd = host.run(f"ldd {shlex.quote(shell)} {shlex.quote(cat)}")
    assert ldd.rc == 0 or "not a dynamic executable" in ldd.stdout + ldd.stderr, ldd.stdout + ldd.stderr
    members = " ".join(shlex.quote(m) for m in image_members([shell, cat], ldd.stdout))
    with host.sudo():
        cgroup = host.check_output("docker info --format '{{.CgroupDriver}}'")
        tarball = host.check_output("mktemp /tmp/runtime-probe.XXXXXX")
        try:
            # tar's own exit status and message fail the test (check_output), not a broken image later.
            host.check_output(f"tar -C / -chf {tarball} {members}")
            cmd = shlex.quote(f'CMD ["{shell}"]')
            host.check_output(f"docker import -c {cmd} {tarball} {PROBE_IMAGE}")
        finally:
            host.run(f"rm -f {tarball}")
        try:
            # The host's cgroup namespace: on cgroup v2 a container's own namespace shows just "0::/".
            out = host.check_output(
                f"docker run --rm --cgroupns host {PROBE_IMAGE} {shlex.quote(cat)} /proc/self/cgroup"
            )
        finally:
            host.run(f"docker rmi -f {PROBE_IMAGE}")
    if cgroup == "systemd":
        assert re.search(r"docker-[0-9a-f]{64}\.scope", out), out


def test_docker_group_users(host: Any, engine: str, inventory_vars: dict[str, Any]) -> None:
    users = inventory_vars.get("container_runtime_docker_users", [])
    if engine != "docker" or not users:
        pytest.skip("not configured: no container_runtime_docker_users")
    for user in users:
        assert "docker" in host.user(user).groups
