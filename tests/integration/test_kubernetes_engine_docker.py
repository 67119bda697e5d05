"""Nodes prepared for Kubernetes without forming a cluster, and the upstream install path.

`up --until runtime` prepares two container nodes and their runtime, says where it stopped, and
verifies what ran; a release the toolkit cannot install (1.38, not released) is refused before
anything is made. Those prepared nodes, with nothing of Kubernetes installed, then take the
Kubernetes playbooks in check mode with the upstream sources (pkgs.k8s.io, Calico's manifest URL)
pointed at loopback; then the kube_packages playbook for real against a stand-in for pkgs.k8s.io's
repositories of 1.36 and 1.37 (tests/standins/aptrepo.py) served from this host on the nodes' network: the
1.36 packages installed, pinned and held, and a newer patch in the repository does not move them. Then
containerd on the nodes pulls registry.k8s.io's and docker.io's images through registry mirrors: a
stand-in registry over TLS with the test's CA (tests/standins/registry.py). Then the nodes become a cluster with kube_source upstream through the
stand-ins (the spec's mirrors), verified and converged again with changed=0, and a rotated signing key
stops `up` until `up --accept-repo-key` accepts it. Last, `upgrade` moves that cluster from 1.36 to 1.37
with the packages of the stand-in's 1.37 repository and the images through the stand-in registry. The
real cluster from the bundle is
tests/integration/test_kubernetes_cluster.py.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner import bundle
from provisioner.bundle import source
from tests.integration.conftest import (
    REPO,
    Cluster,
    assert_verified,
    default_bundle,
    make_cluster,
    task_hosts,
    task_output,
    task_sections,
)
from tests.standins.aptrepo import AptRepo
from tests.standins.registry import Registry

pytestmark = pytest.mark.integration

NAME = "it-kube"
NETWORK = "192.168.156.0/24"

# Check mode of the Kubernetes stages: every URL the roles would fetch points at a tiny HTTP
# server on each node's own loopback, started (and stopped) by the test.
KUBE_ROLES = ("kube_packages", "kube_control_plane", "calico", "kube_join", "local_path_storage", "traefik_ingress")
KUBE_PLAYBOOKS = ("kube_packages", "control_plane", "cni", "join", "addons")
CHECK_PORT = 18680
CHECK_UNIT = "it-kube-check-http"
CHECK_DIR = "/run/it-kube-check-http"
CHECK_BASE = f"http://127.0.0.1:{CHECK_PORT}"
CHECK_VARS = {
    "kube_version": "1.34",  # kubelet only warns on cgroup v1 here; kube_packages asks for the opt-in
    "kube_packages_allow_cgroup_v1": True,
    "kube_packages_repo_base_url": CHECK_BASE,
    "calico_manifest_base_url": f"{CHECK_BASE}/calico",
    "traefik_ingress_gateway_api_base_url": f"{CHECK_BASE}/gateway-api",
    # the upstream path: no bundle
    "kube_bundle_dir": "",
    "kube_bundle_node_dir": "",
}
RECAP = re.compile(
    r"^(?P<host>\S+)\s+: ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)
URL = re.compile(r"\b(?:https?|ftps?|git|ssh|rsync|s3)://[^\s\"'\\,)]+", re.IGNORECASE)


# The host's address on the nodes' network (the Docker bridge's gateway): the stand-in listens there.
HOST_ON_NODE_NETWORK = "192.168.156.1"
KEYRING = "/etc/apt/keyrings/kubernetes-apt-keyring.asc"
# The cluster is made at FROM from the stand-in's 1.36 repository and upgraded to TO from its 1.37 one.
FROM, TO = "1.36.3", "1.37.2"


def held(release: str) -> set[str]:
    """What the stand-in's packages leave on a node at `release`: kubelet, kubeadm, kubectl and cri-tools
    installed and held (hi), kubernetes-cni installed as their dependency (ii). cri-tools is the one
    the node installed with FROM: an upgrade moves only kubelet, kubeadm and kubectl."""
    return {
        f"hi kubelet={release}-1.1", f"hi kubeadm={release}-1.1", f"hi kubectl={release}-1.1",
        "hi cri-tools=1.36.0-1.1", "ii kubernetes-cni=1.10.0-1.1",
    }  # fmt: skip


HELD = held(FROM)
GATEWAY_API = str(source.load_components()["gateway_api"]["version"])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from make_cluster(tmp_path_factory, NAME, NETWORK)


# The stand-in file server's request lines ("GET /path HTTP/1.1" 200 -), in order.
SERVED: list[str] = []


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """The requests are not the test's output: they are kept in SERVED."""
        SERVED.append(format % args)


def served_log() -> str:
    return "\n".join(SERVED)


def previous_bundle() -> bundle.Bundle:
    """The bundle of FROM (the HA lane, beside this one, uses it too: one build, under its lock)."""
    from provisioner.bundle import make

    return make.ensure(bundle.resolve_versions(FROM, None), "auto", force=False, out=sys.stdout)


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AptRepo]:
    """pkgs.k8s.io's v1.36 and v1.37 repositories, from the bundles' binaries (the suite builds the
    default bundle first)."""
    root = tmp_path_factory.mktemp("pkgs-standin")
    repo = AptRepo(root / "www", root / "gnupg", minor="1.36")
    try:
        repo.add_release(previous_bundle().path, FROM)
        repo.add_release(default_bundle().path, TO)
        repo.publish()
        yield repo
    finally:  # gpg's agent, started by the first signature
        subprocess.run(["gpgconf", "--homedir", str(repo.gpg_home), "--kill", "all"], capture_output=True, check=False)


@pytest.fixture(scope="module")
def served(standin: AptRepo) -> Iterator[str]:
    """The stand-in's files over HTTP from this host's address on the nodes' network (which exists once
    the first `up` made the nodes): the apt repository at BASE/core:/stable:, Calico's release manifest
    at BASE/calico/v3.31.0/manifests/calico-vxlan.yaml, the Gateway API's CRDs at
    BASE/gateway-api/VERSION/standard-install.yaml. Yields BASE."""
    calico = standin.root / "calico" / "v3.31.0" / "manifests"
    calico.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(default_bundle().path / "manifests" / "calico-3.31.0.yaml", calico / "calico-vxlan.yaml")
    gateway = standin.root / "gateway-api" / GATEWAY_API
    gateway.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(default_bundle().path / source.gateway_api_rel(), gateway / "standard-install.yaml")
    server = ThreadingHTTPServer((HOST_ON_NODE_NETWORK, 0), functools.partial(_Quiet, directory=str(standin.root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://{HOST_ON_NODE_NETWORK}:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, served: str) -> Iterator[Registry]:
    """The stand-in registry with every bundle image a cluster pulls, each under its registry's path
    (quay.io/calico/node:v3.31.0 as /v2/quay.io/calico/node), and pause also at the root (as a mirror
    of registry.k8s.io without a path would ask for it). Needs the nodes' network, as `served` does."""
    source = default_bundle().path
    with Registry.start(tmp_path_factory.mktemp("registry"), HOST_ON_NODE_NETWORK) as running:
        pushed: set[str] = set()
        # FROM's images for the cluster, then TO's for its upgrade (what both carry is pushed once)
        for found in (previous_bundle().path, source):
            for entry in bundle.load(found).images:
                if entry.image.startswith(("registry.k8s.io/", "quay.io/", "docker.io/")) and entry.image not in pushed:
                    running.push(found / entry.path, entry.image)
                    pushed.add(entry.image)
        running.push(source / "images" / "pause.tar", "pause:3.10.2")
        yield running


def test_a_release_the_toolkit_cannot_install_is_refused_before_anything(cluster: Cluster) -> None:
    proc = cluster.run("up", "--nodes", "2", "--provider", "docker", "--name", NAME, "--network", NETWORK,
                       "--kube-version", "1.38", check=False)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "1.38" in proc.stderr and "Traceback" not in proc.stderr
    assert not cluster.root.exists()


def test_up_until_runtime_prepares_the_nodes_and_stops(cluster: Cluster) -> None:
    # The plain node image: the runtime stage installs Docker's packages with apt, as on a fresh server,
    # so the nodes have what Ansible's apt module needs in check mode (python3-apt, package lists).
    proc = cluster.run(
        "up", "--nodes", "2", "--provider", "docker", "--name", NAME, "--network", NETWORK, "--until", "runtime",
        "--image", "provisioner/node", "--kube-version", FROM,
    )  # fmt: skip
    out = proc.stdout
    assert "==> stage prepare" in out and "==> stage runtime" in out
    assert "==> stage kube_packages" not in out and "kubeadm init" not in out
    assert "==> stopped after stage runtime (--until)" in out, out
    # verify ran the suites of the two stages that ran, every check of theirs on both nodes
    assert_verified(
        out, {"hosts_file_lists_the_nodes": ["cp1", "worker1"], "ctr_talks_to_the_socket": ["cp1", "worker1"]}
    )
    assert re.search(r"cp1\s+control_plane\s+192\.168\.156\.10", out)
    inv = cluster.inventory.read_text()
    assert "kube_control_plane:" in inv and "container_runtime_source: distro" in inv


def test_rerun_until_runtime_reports_no_change_and_status_shows_what_ran(cluster: Cluster) -> None:
    cluster.run("up", "--converge", "--until", "runtime")
    changed = cluster.timings()["changed"]
    assert changed == {"prepare": 0, "runtime": 0}
    status = cluster.run("status").stdout
    assert re.search(r"kube_packages\s+not run", status), status
    assert re.search(r"runtime\s+done", status)


def _url_defaults() -> set[str]:
    """The kube roles' variables whose defaults or vars hold a URL."""
    names: set[str] = set()
    for role in KUBE_ROLES:
        for sub in ("defaults", "vars"):
            for path in sorted((REPO / "roles" / role / sub).glob("*.yml")):
                for line in path.read_text().splitlines():
                    match = re.match(r"^(\w+):\s*(.*)$", line)
                    if match and "http" in match.group(2).lower():
                        names.add(match.group(1))
    return names


def _on_nodes(cluster: Cluster, script: str) -> subprocess.CompletedProcess[str]:
    """Run a shell script as root on every node (provision.py exec)."""
    assert "'" not in script
    return cluster.run("exec", "--sudo", "--", f"sh -c '{script}'", timeout=300, check=False)


def _playbook(
    cluster: Cluster, name: str, extra: dict[str, Any], *, check: bool
) -> tuple[subprocess.CompletedProcess[str], dict[str, dict[str, int]]]:
    """ansible-playbook of playbooks/NAME.yml on the cluster's inventory, as an operator runs it; its
    process and its recap (per host: ok, changed, unreachable, failed)."""
    env = dict(os.environ)
    env.update(
        {
            "PATH": str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_LOCAL_TEMP": str(cluster.root / "ansible-tmp"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(cluster.root / "cp"),
        }
    )
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            str(cluster.inventory),
            *(["--check", "--diff"] if check else []),
            "-v",
            "-e",
            json.dumps(extra),
            f"playbooks/{name}.yml",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=1200,
        check=False,
    )
    out = proc.stdout
    recap = {m["host"]: {k: int(m[k]) for k in ("ok", "changed", "unreachable", "failed")} for m in RECAP.finditer(out)}
    assert recap, f"{name}: no recap\n{out[-4000:]}\n{proc.stderr[-3000:]}"
    return proc, recap


def _passed(name: str, proc: subprocess.CompletedProcess[str], recap: dict[str, dict[str, int]]) -> None:
    out = proc.stdout
    assert proc.returncode == 0, f"{name}: rc {proc.returncode}\n{out[-8000:]}\n{proc.stderr[-3000:]}"
    for host, counts in recap.items():
        assert counts["failed"] == 0 and counts["unreachable"] == 0, f"{name}: {host} {counts}\n{out[-6000:]}"


def _check_playbook(cluster: Cluster, name: str) -> tuple[str, dict[str, dict[str, int]]]:
    proc, recap = _playbook(cluster, name, CHECK_VARS, check=True)
    _passed(name, proc, recap)
    return proc.stdout, recap


def test_kubernetes_stages_pass_check_mode_without_changing_the_nodes(cluster: Cluster, standin: AptRepo) -> None:
    # Every URL default of the kube roles is pointed at loopback below.
    assert _url_defaults() <= set(CHECK_VARS), _url_defaults()
    files = {
        # a real key: the role checks what the repository serves before it would write it
        "v1.34/deb/Release.key": (standin.deb_dir / "Release.key").read_text().strip(),
        "calico/v3.31.0/manifests/calico-vxlan.yaml": "# check-mode placeholder",
    }
    setup = " && ".join(
        [f"mkdir -p {CHECK_DIR}/v1.34/deb {CHECK_DIR}/calico/v3.31.0/manifests"]
        + [f'echo "{text}" > {CHECK_DIR}/{path}' for path, text in files.items()]
        + [
            f"systemd-run --unit {CHECK_UNIT} --quiet python3 -m http.server {CHECK_PORT} --bind 127.0.0.1"
            f" --directory {CHECK_DIR}",
            'for i in $(seq 100); do python3 -c "import urllib.request as u;'
            f' u.urlopen(\\"{CHECK_BASE}/v1.34/deb/Release.key\\", timeout=2)" 2>/dev/null && exit 0;'
            " sleep 0.2; done; exit 1",
        ]
    )
    started = _on_nodes(cluster, setup)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        outputs: dict[str, str] = {}
        recaps: dict[str, dict[str, dict[str, int]]] = {}
        for name in KUBE_PLAYBOOKS:
            outputs[name], recaps[name] = _check_playbook(cluster, name)
    finally:
        stopped = _on_nodes(cluster, f"systemctl stop {CHECK_UNIT} 2>/dev/null; rm -rf {CHECK_DIR}")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr

    nodes = {"cp1", "worker1"}
    # kube_packages: the key would be fetched (from loopback) and the repository added on every node.
    assert set(recaps["kube_packages"]) == nodes
    assert all(c["changed"] > 0 for c in recaps["kube_packages"].values()), recaps["kube_packages"]
    packages = task_sections(outputs["kube_packages"])
    assert f'"url": "{CHECK_BASE}/v1.34/deb/Release.key"' in task_output(
        packages, "Upstream | Fetch the repository signing key"
    )
    assert task_hosts(packages, "Upstream | Install the repository signing key") == nodes
    assert task_hosts(packages, "Upstream | Write the Kubernetes deb822 source") == nodes
    assert f"URIs: {CHECK_BASE}/v1.34/deb/" in task_output(packages, "Upstream | Write the Kubernetes deb822 source")
    assert "skipping: [cp1]" in task_output(packages, "Upstream | Install the pinned Kubernetes packages")
    # control_plane: the kubeadm configuration would be written and kubeadm init run on cp1.
    assert set(recaps["control_plane"]) == {"cp1"} and recaps["control_plane"]["cp1"]["changed"] > 0
    plane = task_sections(outputs["control_plane"])
    assert "check mode: kubeadm is not installed on cp1 yet" in outputs["control_plane"]
    config = task_output(plane, "Init | Write the kubeadm configuration")
    assert task_hosts(plane, "Init | Write the kubeadm configuration") == {"cp1"}
    assert "kubernetesVersion: v1.34.0" in config and "advertiseAddress: 192.168.156.10" in config
    assert "Command would have run if not in check mode" in task_output(plane, "Init | Run kubeadm init")
    assert task_hosts(plane, "Init | Run kubeadm init") == {"cp1"}
    # cni: the release's manifest would be downloaded (checked on loopback); nothing to compare yet.
    assert set(recaps["cni"]) == {"cp1"} and recaps["cni"]["cp1"]["changed"] > 0
    cni = task_sections(outputs["cni"])
    heads = task_output(cni, "Manifests | Check that the release's manifest can be downloaded")
    assert heads.count('"status": 200') == 1
    assert f"{CHECK_BASE}/calico/v3.31.0/manifests/calico-vxlan.yaml" in heads
    assert "check mode: the control plane is not initialized yet" in outputs["cni"]
    # join: the worker would join.
    assert set(recaps["join"]) == nodes
    assert "worker1 would join the cluster" in outputs["join"]
    # addons: the metrics and storage manifests would be written on cp1; nothing to compare or wait for yet.
    assert set(recaps["addons"]) == {"cp1"} and recaps["addons"]["cp1"]["changed"] > 0
    addons = task_sections(outputs["addons"])
    assert task_hosts(addons, "Metrics | Render the add-on's manifest") == {"cp1"}
    assert task_hosts(addons, "Storage | Render the add-on's manifest") == {"cp1"}
    assert (
        task_output(addons, "Manifest | Compare the manifest with the cluster (server-side)").count("skipping: [cp1]")
        == 2
    )
    # Nothing left the machine: every URL in the task output is on loopback.
    for name, out in outputs.items():
        task_lines = [line for line in out.splitlines() if not line.startswith(("[WARNING]", "[DEPRECATION"))]
        foreign = {
            u for u in URL.findall("\n".join(task_lines)) if not re.match(r"\w+://(127\.0\.0\.1|localhost)\b", u)
        }
        assert not foreign, f"{name}: non-loopback URLs in the output: {sorted(foreign)}"

    # Check mode changed nothing on the nodes nor on the controller.
    untouched = _on_nodes(
        cluster,
        "test ! -e /etc/apt/sources.list.d/kubernetes.sources && test ! -e /etc/apt/keyrings/kubernetes-apt-keyring.asc"
        " && test ! -e /etc/kubernetes/kubeadm-config.yaml && test ! -e /etc/kubernetes/calico"
        " && test ! -e /etc/kubernetes/addons"
        " && ! command -v kubeadm >/dev/null && ! systemctl is-active --quiet " + CHECK_UNIT,
    )
    assert untouched.returncode == 0, untouched.stdout + untouched.stderr
    assert not (cluster.root / "kubeconfig").exists()


def _node_lines(cluster: Cluster, script: str) -> dict[str, list[str]]:
    """The output lines of a script run as root on each node, by node (provision.py exec prefixes each
    line with its node's name)."""
    proc = _on_nodes(cluster, script)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        match = re.match(r"^\[(cp1|worker1)\s*\] (?!\(stderr\))(.*)$", line)
        if match:
            lines.setdefault(match.group(1), []).append(match.group(2).strip())
    return lines


# Holds /var/lib/dpkg/lock-frontend the way apt takes it (an fcntl lock) until killed; its command
# line carries the name pkill finds it by.
DPKG_LOCK_HOLDER = (
    "import fcntl, time; name = 'provisioner-test-dpkg-lock';"
    " f = open('/var/lib/dpkg/lock-frontend', 'w'); fcntl.lockf(f, fcntl.LOCK_EX); time.sleep(1800)"
)

DPKG_QUERY = 'dpkg-query -W -f="\\${db:Status-Abbrev}\\${Package}=\\${Version}\\n" ' + " ".join(
    ("kubelet", "kubeadm", "kubectl", "cri-tools", "kubernetes-cni")
)


def _packages(cluster: Cluster) -> dict[str, set[str]]:
    """Per node, the Kubernetes packages as `STATUS NAME=VERSION` (status hi: installed and held)."""
    found = {n: {re.sub(r"\s+", " ", line) for line in lines if "=" in line} for n, lines in
             _node_lines(cluster, DPKG_QUERY).items()}  # fmt: skip
    assert set(found) == {"cp1", "worker1"}, found
    return found


def test_the_pkgs_k8s_io_path_installs_pins_and_holds_from_a_stand_in_repository(
    cluster: Cluster, standin: AptRepo, served: str
) -> None:
    base = f"{served}/{standin.base_path}"
    upstream = {
        "kube_version": FROM,
        "kube_packages_allow_cgroup_v1": True,  # this host runs cgroup v1; kubelet 1.36 still starts there
        "kube_packages_repo_base_url": base,
        "kube_bundle_dir": "",
        "kube_bundle_node_dir": "",
    }
    # First install: the key the repository serves is trusted, the packages pinned and held.
    proc, recap = _playbook(cluster, "kube_packages", upstream, check=False)
    _passed("kube_packages", proc, recap)
    assert all(c["changed"] > 0 for c in recap.values()), recap
    assert _packages(cluster) == {"cp1": HELD, "worker1": HELD}
    versions = _node_lines(cluster, "kubelet --version; systemctl is-enabled kubelet; grep ^URIs: "
                           "/etc/apt/sources.list.d/kubernetes.sources")  # fmt: skip
    for node in ("cp1", "worker1"):
        assert versions[node] == [f"Kubernetes v{FROM}", "enabled", f"URIs: {base}/v1.36/deb/"], versions

    # A newer patch appears in the repository and the nodes' apt sees it: a second converge changes
    # nothing, and the held packages stay at the patch they were installed at.
    standin.add_release(previous_bundle().path, "1.36.4")
    standin.publish()
    policy = _node_lines(cluster, "apt-get update -qq && apt-cache policy kubelet | grep Candidate:")
    assert all(lines == ["Candidate: 1.36.4-1.1"] for lines in policy.values()), policy
    proc, recap = _playbook(cluster, "kube_packages", upstream, check=False)
    _passed("kube_packages", proc, recap)
    assert {h: c["changed"] for h, c in recap.items()} == {"cp1": 0, "worker1": 0}, proc.stdout[-4000:]
    assert _packages(cluster) == {"cp1": HELD, "worker1": HELD}


def test_containerd_pulls_through_registry_mirrors_with_their_ca(cluster: Cluster, registry: Registry) -> None:
    mirrors = {
        "container_runtime_registry_mirrors": {
            "registry.k8s.io": [registry.url],
            "docker.io": [f"{registry.url}/v2/docker.io"],
        },
        "container_runtime_registry_ca": registry.ca_pem,
    }
    proc, recap = _playbook(cluster, "runtime", mirrors, check=False)
    _passed("runtime", proc, recap)
    assert all(c["changed"] > 0 for c in recap.values()), recap
    again, recap = _playbook(cluster, "runtime", mirrors, check=False)
    _passed("runtime", again, recap)
    assert {h: c["changed"] for h, c in recap.items()} == {"cp1": 0, "worker1": 0}, again.stdout[-4000:]
    pulled = _node_lines(
        cluster,
        "crictl rmi registry.k8s.io/pause:3.10.2 docker.io/rancher/local-path-provisioner:v0.0.30 >/dev/null 2>&1;"
        " crictl pull registry.k8s.io/pause:3.10.2 >/dev/null"
        " && crictl pull docker.io/rancher/local-path-provisioner:v0.0.30 >/dev/null"
        ' && crictl images | awk "NR > 1 {print \\$1 \\":\\" \\$2}"',
    )
    for node in ("cp1", "worker1"):
        tags = set(pulled.get(node, []))
        assert {"registry.k8s.io/pause:3.10.2", "docker.io/rancher/local-path-provisioner:v0.0.30"} <= tags, pulled
    # The pulls came through the stand-in, from each node's address, each registry's way.
    log = registry.requests()
    for ip in ("192.168.156.10", "192.168.156.11"):
        for path in ("/v2/pause/manifests/", "/v2/docker.io/rancher/local-path-provisioner/manifests/"):
            request = rf'^{re.escape(ip)} .*"(?:HEAD|GET) {re.escape(path)}\S+ HTTP'
            assert re.search(request, log, re.M), f"no {path} request from {ip}:\n{log[-3000:]}"


@pytest.fixture(scope="module")
def upstream_config(
    tmp_path_factory: pytest.TempPathFactory, standin: AptRepo, served: str, registry: Registry
) -> Path:
    """A cluster configuration with kube_source upstream and the spec's mirrors pointing at the
    stand-ins: packages from the apt repository, Calico's manifest and the Gateway API's CRDs from the
    file server, every image through the registry; the ingress add-on on, the storage add-on off."""
    root = tmp_path_factory.mktemp("upstream-config")
    ca = root / "stand-in-ca.pem"
    ca.write_text(registry.ca_pem)
    mirrors = {
        "kubernetes_packages": f"{served}/{standin.base_path}",
        "calico_manifests": f"{served}/calico",
        "gateway_api_manifests": f"{served}/gateway-api",
        "registries": {name: f"{registry.url}/v2/{name}" for name in ("registry.k8s.io", "quay.io", "docker.io")},
        "registry_ca": str(ca),
    }
    config = root / "upstream.yml"
    config.write_text(
        yaml.safe_dump({"kube_source": "upstream", "storage": False, "ingress": True, "mirrors": mirrors})
    )
    return config


def test_a_cluster_forms_through_the_stand_ins_with_kube_source_upstream(
    cluster: Cluster, standin: AptRepo, served: str, registry: Registry, upstream_config: Path
) -> None:
    # The prepared nodes become a cluster with kube_source upstream through the stand-ins. The bundle
    # stays out: no bundle directory, no image import.
    config = upstream_config
    proc = cluster.run("up", "--config", str(config), timeout=2400)
    out = proc.stdout
    assert "kubernetes: packages from pkgs.k8s.io (the cluster's kube_source)" in out, out[-3000:]
    # The ingress add-on, fetched as a connected cluster fetches it, answers through both nodes.
    assert_verified(out, {"ingress_and_httproute_reach_the_smoke_server_from_the_host": ["(cluster)"]})
    settings = yaml.safe_load(cluster.inventory.read_text())["all"]["vars"]
    assert settings["traefik_ingress_gateway_api_base_url"] == f"{served}/gateway-api"
    assert "GET /gateway-api/" + GATEWAY_API + "/standard-install.yaml" in served_log(), served_log()[-2000:]
    assert "kube_bundle_dir" not in settings and "kube_images_offline_dir" not in settings, sorted(settings)
    assert settings["kube_packages_repo_base_url"] == f"{served}/{standin.base_path}"
    assert settings["container_runtime_registry_mirrors"]["quay.io"] == [f"{registry.url}/v2/quay.io"]
    # The packages came from the stand-in repository (its maintainer line, apt's record of the source).
    origin = _node_lines(
        cluster,
        "dpkg-query -W -f=\\${Maintainer}\\\\n kubelet kubeadm; apt-cache policy kubelet | grep -c 192.168.156.1",
    )
    for node in ("cp1", "worker1"):
        assert origin[node][:2] == ["provisioner test suite <standin@provisioner.invalid>"] * 2, origin
        assert int(origin[node][2]) >= 1, origin
    # Every image a node runs came through the registry: each node asked it for its own.
    log = registry.requests()
    # (pause came through the registry in the test above, by the mirror without a path.)
    wanted = {
        "192.168.156.10": ["registry.k8s.io/kube-apiserver", "registry.k8s.io/etcd", "registry.k8s.io/kube-proxy",
                           "quay.io/calico/node", "quay.io/calico/cni"],
        "192.168.156.11": ["registry.k8s.io/kube-proxy", "quay.io/calico/node", "quay.io/calico/cni"],
    }  # fmt: skip
    for ip, repositories in wanted.items():
        for repository in repositories:
            request = rf'^{re.escape(ip)} .*"(?:HEAD|GET) /v2/{re.escape(repository)}/manifests/\S+ HTTP'
            assert re.search(request, log, re.M), f"{ip} never asked the registry for {repository}"
    for repository in ("registry.k8s.io/coredns/coredns", "registry.k8s.io/metrics-server/metrics-server",
                       "quay.io/calico/kube-controllers", "docker.io/library/traefik"):  # fmt: skip
        assert re.search(rf'"(?:HEAD|GET) /v2/{re.escape(repository)}/manifests/', log), repository

    # A second converge with nothing to do changes nothing, in any stage; 1.36.4, in the repository since
    # the test above and apt's candidate on the nodes, is not installed by `up`.
    cluster.run("up", "--converge", "--config", str(config), timeout=1800)
    changed = cluster.timings()["changed"]
    assert isinstance(changed, dict) and changed and all(v == 0 for v in changed.values()), changed
    policy = _node_lines(cluster, "apt-cache policy kubelet | grep Candidate:")
    assert all(lines == ["Candidate: 1.36.4-1.1"] for lines in policy.values()), policy
    assert _packages(cluster) == {"cp1": HELD, "worker1": HELD}

    # The repository rotates its signing key: `up` stops in kube_packages, naming both keys, and the
    # nodes' keyring stays as it was...
    first_key = _node_lines(cluster, f"sha256sum {KEYRING}")
    old, new = standin.key_fingerprint, standin.rotate_key()
    standin.publish()
    refused = cluster.run("up", "--converge", "--config", str(config), timeout=1800, check=False)
    said = refused.stdout + refused.stderr
    assert refused.returncode != 0, said[-3000:]
    assert "signing key changed, and nothing was changed" in said, said[-3000:]
    assert f"provision.py up --accept-repo-key {new}" in said, said[-3000:]
    log = (cluster.root / "logs" / "kube_packages.log").read_text()
    assert f"Trusted {old}, served now {new}" in log, log[-3000:]
    assert _node_lines(cluster, f"sha256sum {KEYRING}") == first_key
    # ...until the user accepts the new key: `up` resumes there, apt reads the repository with it.
    accepted = cluster.run("up", "--config", str(config), "--accept-repo-key", new, timeout=1800)
    assert_verified(accepted.stdout)
    assert _node_lines(cluster, f"sha256sum {KEYRING}") != first_key
    signed = _node_lines(cluster, "apt-get update 2>&1 | grep -ci -e NO_PUBKEY -e not.signed -e EXPKEYSIG; true")
    assert all(lines == ["0"] for lines in signed.values()), signed


def test_upgrade_moves_the_held_packages_to_the_next_minor_from_its_repository(
    cluster: Cluster, standin: AptRepo, served: str, registry: Registry, upstream_config: Path
) -> None:
    # The 1.37 repository also has a newer patch than the target: the upgrade takes the release named.
    standin.add_release(default_bundle().path, "1.37.3")
    standin.publish()
    before = len(registry.requests().splitlines())
    # First an interrupted run: from the etcd snapshot on (after every node's images), another process
    # holds worker1's dpkg lock, so worker1's turn fails on its first package (after apt's 60 s wait),
    # with cp1 already at the target.
    events = cluster.root / "logs" / "upgrade.events.jsonl"
    locked = threading.Event()

    def hold_worker_dpkg_lock() -> None:
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline and not locked.is_set():
            text = events.read_text() if events.exists() else ""
            if '"name": "Upgrade | etcd snapshot on the first control plane"' in text:
                subprocess.run(
                    ["docker", "exec", "-d", f"{NAME}-worker1", "python3", "-c", DPKG_LOCK_HOLDER], check=True
                )
                locked.set()
                return
            time.sleep(0.5)

    holder = threading.Thread(target=hold_worker_dpkg_lock, daemon=True)
    holder.start()
    interrupted = cluster.run("upgrade", "--kube-version", TO, timeout=2400, check=False)
    locked.set()
    holder.join(timeout=10)
    released = subprocess.run(["docker", "exec", f"{NAME}-worker1", "pkill", "-f", "provisioner-test-dpkg-lock"],
                              capture_output=True, text=True, check=False)  # fmt: skip
    said = interrupted.stdout + interrupted.stderr
    assert interrupted.returncode != 0, said[-3000:]
    assert released.returncode == 0, (released.stdout, released.stderr, said[-3000:])
    assert "worker1" in said and f"provision.py upgrade --kube-version {TO}` resumes" in said, said[-3000:]
    assert _node_lines(cluster, "kubelet --version") == {
        "cp1": [f"Kubernetes v{TO}"],
        "worker1": [f"Kubernetes v{FROM}"],
    }
    # `up` refuses the cluster half-way, naming the command that resumes it.
    refused = cluster.run("up", "--converge", "--config", str(upstream_config), check=False)
    assert refused.returncode == 2 and f"upgrade --kube-version {TO}" in refused.stderr, refused.stderr[-2000:]
    # The same command again resumes at worker1: cp1's turn has nothing left to do.
    proc = cluster.run("upgrade", "--kube-version", TO, timeout=2400)
    out = proc.stdout
    turns = [json.loads(line) for line in events.read_text().splitlines()]
    play, cp1_changed = "", []
    for event in turns:
        play = event.get("name", play) if event.get("event") == "play" else play
        if event.get("event") == "result" and event.get("host") == "cp1" and play.startswith("Upgrade | the first"):
            cp1_changed += [event["task"]] if event.get("changed") else []
    assert cp1_changed == [], cp1_changed
    assert f"upgrade: Kubernetes {FROM} -> {TO} (a minor step)" in out, out[-3000:]
    assert "packages from pkgs.k8s.io" in out, out[-3000:]
    assert_verified(out)
    # Every node: kubelet, kubeadm and kubectl of the target from the stand-in, held; the apt source
    # on the target's minor; nothing left of the unpacked kubeadm.
    assert _packages(cluster) == {"cp1": held(TO), "worker1": held(TO)}
    base = f"{served}/{standin.base_path}"
    lines = _node_lines(
        cluster,
        "kubelet --version; grep ^URIs: /etc/apt/sources.list.d/kubernetes.sources;"
        " test -e /var/tmp/provisioner-upgrade && echo leftover || echo clean",
    )
    for node in ("cp1", "worker1"):
        assert lines[node] == [f"Kubernetes v{TO}", f"URIs: {base}/v1.37/deb/", "clean"], lines
    # The control plane's static pods run the target's images, pulled through the stand-in registry
    # before cp1's turn; kube-proxy's too, on the worker.
    static = _node_lines(cluster, "grep -h image: /etc/kubernetes/manifests/kube-*.yaml | sort -u")
    assert static["cp1"] and all(line.endswith(f":v{TO}") for line in static["cp1"]), static
    log = "\n".join(registry.requests().splitlines()[before:])
    for ip, repositories in {
        "192.168.156.10": ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy"],
        "192.168.156.11": ["kube-proxy"],
    }.items():
        for repository in repositories:
            # containerd names the upstream registry in a query (?ns=registry.k8s.io)
            request = rf'^{re.escape(ip)} .*"(?:HEAD|GET) /v2/registry\.k8s\.io/{repository}/manifests/v{re.escape(TO)}(?:\?\S*)? HTTP'
            assert re.search(request, log, re.M), f"{ip} never asked the registry for {repository}:v{TO}\n{log[-3000:]}"
    # The snapshot was taken in the etcd container (the nodes have no etcdctl) and restores.
    snapshot = cluster.root / "etcd-snapshots" / f"etcd-before-v{TO}.db"
    assert snapshot.stat().st_size > 100_000, snapshot
    check = subprocess.run(
        [str(default_bundle().path / "bin" / "etcdutl"), "snapshot", "status", str(snapshot), "-w", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert check.returncode == 0 and json.loads(check.stdout)["totalKey"] > 100, check.stdout + check.stderr
    assert yaml.safe_load((cluster.root / "cluster.json").read_text())["spec"]["versions"]["kubernetes"] == TO

    # Again: nothing left to do, nothing changed.
    again = cluster.run("upgrade", "--kube-version", TO, timeout=1500).stdout
    summary = re.search(r"upgrade: \d+ s, (.*)", again)
    assert summary, again[-3000:]
    changed = [int(c) for c in re.findall(r"changed=(\d+)", summary.group(1))]
    assert len(changed) == 2 and sum(changed) == 0, summary.group(1)
    # `up` afterwards converges with nothing to change and leaves the held packages where the upgrade
    # put them, with 1.37.3 apt's candidate.
    cluster.run("up", "--converge", "--no-verify", "--config", str(upstream_config), timeout=1800)
    changed_up = cluster.timings()["changed"]
    assert isinstance(changed_up, dict) and changed_up and all(v == 0 for v in changed_up.values()), changed_up
    policy = _node_lines(cluster, "apt-cache policy kubelet | grep Candidate:")
    assert all(lines == ["Candidate: 1.37.3-1.1"] for lines in policy.values()), policy
    assert _packages(cluster) == {"cp1": held(TO), "worker1": held(TO)}


def test_rerun_one_stage_and_destroy(cluster: Cluster) -> None:
    proc = cluster.run("provision", "--stage", "prepare")
    assert "stage prepare (node preparation): ok, changed=0" in proc.stdout
    cluster.run("destroy", "-f")
    assert cluster.containers() == []
    assert not cluster.docker_network_exists()
