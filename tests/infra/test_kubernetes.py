"""Kubernetes stage checks (kube_packages, control_plane, cni, join), one row per node.

Run: pytest tests/infra/test_kubernetes.py --ansible-inventory=INV --connection=ansible
Cluster state is read with kubectl on the first control plane (as root, admin.conf); node-local
checks run on each node. Every wait is bounded, and every failure names the node and the check.
The workload the checks start (the toolkit's smoke web server on every node, a NodePort service)
lives in its own namespace, which is deleted at the end; the pods double as the clients of the DNS
and pod-network checks (`kubectl exec POD -- /smoke-web -lookup|-get`), as the image has no shell.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import os
import secrets
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
import testinfra
from testinfra.utils.ansible_runner import AnsibleRunner

from provisioner.kube import clusterstate, nodeip, packages

testinfra_hosts = ["ansible://k8s_cluster"]

KUBECTL = "kubectl --kubeconfig /etc/kubernetes/admin.conf"
# Each run's workload gets a namespace of its own (NAMESPACE-<random>, labelled LABEL): the previous
# run's is deleted without waiting for it, so a rerun never waits on its pods' teardown.
NAMESPACE = "provisioner-verify"
LABEL = ("provisioner.local/verify", "smoke")
# Every wait is bounded by ATTEMPTS x DELAY (150 s), polled every 2 s: a check that passes a moment
# later is seen a moment later.
ATTEMPTS = int(os.environ.get("KUBE_VERIFY_ATTEMPTS", "75"))
DELAY = float(os.environ.get("KUBE_VERIFY_DELAY", "2"))

T = TypeVar("T")


def retry(check: Callable[[], T], what: str, attempts: int = ATTEMPTS, delay: float = DELAY) -> T:
    """Call check until it stops raising AssertionError; re-raise the last one, naming `what`."""
    last: AssertionError | None = None
    for attempt in range(attempts):
        try:
            return check()
        except AssertionError as exc:
            last = exc
            if attempt + 1 < attempts:
                time.sleep(delay)
    raise AssertionError(f"{what}: still failing after {attempts} attempts ({attempts * delay:.0f} s): {last}")


@pytest.fixture(scope="module")
def inventory(request: pytest.FixtureRequest) -> str:
    path = request.config.option.ansible_inventory
    if not path:
        pytest.fail("run with --ansible-inventory=INVENTORY --connection=ansible")
    return str(path)


@pytest.fixture(scope="module")
def control_plane(inventory: str) -> Any:
    hosts = AnsibleRunner.get_runner(inventory).get_hosts("kube_control_plane")
    if not hosts:
        pytest.fail("the inventory has no kube_control_plane host")
    return testinfra.get_host(f"ansible://{hosts[0]}?ansible_inventory={inventory}")


def kubectl(control_plane: Any, args: str) -> str:
    # `sudo` in the command rather than control_plane.sudo(): that switch belongs to the host object,
    # which the pod-to-pod check's threads share.
    result = control_plane.run(f"sudo {KUBECTL} {args}")
    assert result.rc == 0, f"kubectl {args} failed (rc {result.rc}): {result.stderr.strip()[-500:]}"
    return str(result.stdout)


def kubectl_json(control_plane: Any, args: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(kubectl(control_plane, f"{args} -o json"))
    return data


_NODE_IPS: dict[str, str] = {}


def node_ip_of(host: Any) -> str:
    """The node IP the roles chose: node_ip, else the address inside node_network_cidr (cached per host)."""
    key = host.backend.get_pytest_id()
    if key not in _NODE_IPS:
        variables = host.ansible.get_variables()
        # The host's IPv4 addresses from `ip` over the host's connection (an Ansible setup run per host
        # cost two seconds each), in the shape of the facts select_node_ip reads.
        listed = host.run("ip -4 -o addr show")
        assert listed.rc == 0, f"{key}: `ip -4 -o addr show` failed: {listed.stderr.strip()[-300:]}"
        facts = {"all_ipv4_addresses": [line.split()[3].split("/")[0] for line in listed.stdout.splitlines()]}
        _NODE_IPS[key] = nodeip.select_node_ip(
            facts, str(variables.get("node_network_cidr", "192.168.56.0/24")), variables.get("node_ip", "")
        )
    return _NODE_IPS[key]


# The cluster's nodes and kube-system's pods, read once by the first check that needs them and again
# only by a check that found a problem in them (each read is a kubectl run on the control plane).
STATE = "get nodes,pods -n kube-system -o json"
_STATE: list[str] = []


def cluster_state(control_plane: Any, fresh: bool = False) -> str:
    if fresh or not _STATE:
        _STATE[:] = [kubectl(control_plane, STATE)]
    return _STATE[0]


def retry_state(control_plane: Any, check: Callable[[str], None], what: str) -> None:
    """retry(check) on the cluster state: the last one read first, a fresh read on every attempt after."""
    attempts = iter(range(ATTEMPTS))
    retry(lambda: check(cluster_state(control_plane, fresh=next(attempts) > 0)), what)


_NODE_NAMES: dict[str, str] = {}


def node_name_of(host: Any, control_plane: Any) -> str:
    """The Node whose InternalIP is the host's node IP (looked up once per run: the checks after the
    first one per host ask the same question)."""
    ip = node_ip_of(host)
    if ip not in _NODE_NAMES:
        names = [
            name for name, address in clusterstate.node_addresses(cluster_state(control_plane)).items() if address == ip
        ]
        assert names, f"{host.backend.get_pytest_id()}: no Node has InternalIP {ip}"
        _NODE_NAMES[ip] = names[0]
    return _NODE_NAMES[ip]


def test_kubelet_enabled_and_running(host: Any) -> None:
    service = host.service("kubelet")
    assert service.is_enabled, f"{host.backend.get_pytest_id()}: kubelet is not enabled"
    retry(lambda: _assert(service.is_running, "kubelet is not running"), f"{host.backend.get_pytest_id()} kubelet")


@pytest.mark.parametrize("package", ["kubeadm", "kubelet", "kubectl"])
def test_binaries_match_kube_version(host: Any, package: str) -> None:
    wanted = str(host.ansible.get_variables().get("kube_version", ""))
    flag = {"kubeadm": "version -o short", "kubelet": "--version", "kubectl": "version --client -o json"}[package]
    result = host.run(f"{package} {flag}")
    assert result.rc == 0, f"{host.backend.get_pytest_id()}: `{package} {flag}` failed: {result.stderr.strip()[-300:]}"
    out = result.stdout.strip()
    version = json.loads(out)["clientVersion"]["gitVersion"] if package == "kubectl" else out.split()[-1]
    if wanted:
        assert packages.installed_version_matches(wanted, version), (
            f"{host.backend.get_pytest_id()}: {package} is {version}, kube_version is {wanted}"
        )


def test_service_range_routed_on_the_node_network(host: Any) -> None:
    # Role kube_service_range: traffic for ClusterIP ports no Service has must not follow the default
    # route out of the cluster. The route for the range names the interface of the node's address.
    variables = host.ansible.get_variables()
    cidr = str(variables.get("kube_service_addresses", "10.96.0.0/12"))
    ip = node_ip_of(host)
    found = host.run(f"ip -o -4 addr show to {ip}/32")
    assert found.rc == 0 and found.stdout.split(), f"{host.backend.get_pytest_id()}: no interface holds {ip}"
    interface = found.stdout.split()[1]
    route = host.run(f"ip route show exact {cidr}")
    assert f" dev {interface} " in f" {route.stdout.strip()} ", (
        f"{host.backend.get_pytest_id()}: the route for the Service range {cidr} is {route.stdout.strip()!r}, "
        f"not on {interface} (the node network): `systemctl status kube-service-range` says why"
    )


def test_node_ready(host: Any, control_plane: Any) -> None:
    ip = node_ip_of(host)

    def ready(state: str) -> None:
        problems = clusterstate.node_problems(state, [ip])
        assert not problems, "; ".join(problems)

    retry_state(control_plane, ready, f"{host.backend.get_pytest_id()} node-ready")


def test_internal_ip_in_node_network_and_unique(host: Any, control_plane: Any) -> None:
    cidr = ipaddress.IPv4Network(str(host.ansible.get_variables().get("node_network_cidr", "192.168.56.0/24")))
    name = node_name_of(host, control_plane)
    addresses = clusterstate.node_addresses(cluster_state(control_plane))
    mine = addresses[name]
    assert ipaddress.IPv4Address(mine) in cidr, f"node {name}: InternalIP {mine} is outside node_network_cidr {cidr}"
    assert mine != nodeip.VAGRANT_NAT_ADDRESS, f"node {name}: InternalIP is the Vagrant NAT address"
    others = [n for n, a in addresses.items() if a == mine and n != name]
    assert not others, f"node {name}: InternalIP {mine} is shared with {', '.join(others)}"


def test_node_roles(host: Any, control_plane: Any) -> None:
    name = node_name_of(host, control_plane)
    (node,) = [
        i
        for i in json.loads(cluster_state(control_plane))["items"]
        if i["kind"] == "Node" and i["metadata"]["name"] == name
    ]
    labels = node["metadata"].get("labels", {})
    is_cp = "kube_control_plane" in host.ansible.get_variables().get("group_names", [])
    has_label = "node-role.kubernetes.io/control-plane" in labels
    assert has_label == is_cp, (
        f"node {name}: control-plane role label {'missing' if is_cp else 'present'} "
        f"(inventory group {'kube_control_plane' if is_cp else 'kube_node'})"
    )


def test_calico_node_ready(host: Any, control_plane: Any) -> None:
    name = node_name_of(host, control_plane)

    def ready(state: str) -> None:
        problems = [p for p in clusterstate.calico_node_problems(state) if p.startswith(f"node {name}:")]
        assert not problems, "; ".join(problems)

    retry_state(control_plane, ready, f"node {name} calico-node")


def test_system_pods_running_and_ready(control_plane: Any) -> None:
    def ready(state: str) -> None:
        problems = clusterstate.pod_problems(state)
        assert not problems, "; ".join(problems)

    retry_state(control_plane, ready, "cluster kube-system pods")


@pytest.fixture(scope="module")
def smoke_image(inventory: str) -> str:
    runner = AnsibleRunner.get_runner(inventory)
    variables = runner.get_variables(runner.get_hosts("kube_control_plane")[0])
    image = str(variables.get("kube_smoke_image") or "")
    if not image:
        # Every install mode brings the image (a bundle's images/, else kube_smoke_image_archive), so
        # the DNS, pod-network and NodePort checks run on every cluster: without it they fail.
        pytest.fail(
            "kube_smoke_image is not set in the inventory, so the DNS, pod-network and NodePort checks cannot run: "
            "provision.py sets it for every Kubernetes cluster; on your own servers set kube_smoke_image (and, "
            "without kube_bundle_dir, kube_smoke_image_archive: a bundle's images/smoke-web.tar)"
        )
    return image


@pytest.fixture(scope="module")
def workload(control_plane: Any, smoke_image: str) -> Iterator[dict[str, Any]]:
    """The toolkit's smoke web server on every node (a DaemonSet that tolerates the control plane)
    exposed as a NodePort, in a namespace of this run's; deleted with the namespace at the end."""
    # The earlier runs' namespaces (and the unlabelled one that runs before labels used), not waited for.
    kubectl(control_plane, f"delete namespace -l {'='.join(LABEL)} --wait=false")
    kubectl(control_plane, f"delete namespace {NAMESPACE} --ignore-not-found --wait=false")
    ns = f"{NAMESPACE}-{secrets.token_hex(3)}"
    manifest = clusterstate.smoke_manifest(ns, smoke_image, dict([LABEL]))
    try:
        with control_plane.sudo():
            result = control_plane.run(f"{KUBECTL} apply -f - <<'EOF'\n{manifest}\nEOF")
        assert result.rc == 0, f"applying the smoke workload failed: {result.stderr.strip()[-400:]}"
        kubectl(control_plane, f"-n {ns} rollout status daemonset/smoke --timeout={int(ATTEMPTS * DELAY)}s")
        items = kubectl_json(control_plane, f"-n {ns} get services,pods")["items"] + [
            kubectl_json(control_plane, "-n default get service kubernetes")
        ]
        (service,) = [i for i in items if i["kind"] == "Service" and i["metadata"]["namespace"] == ns]
        pods = [i for i in items if i["kind"] == "Pod"]
        yield {
            "ns": ns,
            "node_port": str(service["spec"]["ports"][0]["nodePort"]),
            "kubernetes_ip": items[-1]["spec"]["clusterIP"],
            "pods": {p["spec"]["nodeName"]: (p["metadata"]["name"], p["status"]["podIP"]) for p in pods},
        }
    finally:
        with control_plane.sudo():
            control_plane.run(f"{KUBECTL} delete namespace {ns} --ignore-not-found --wait=false")


def test_dns_resolves_from_a_pod_on_the_node(host: Any, control_plane: Any, workload: dict[str, Any]) -> None:
    name = node_name_of(host, control_plane)
    assert name in workload["pods"], f"node {name}: no smoke pod runs there ({', '.join(workload['pods'])})"
    pod = workload["pods"][name][0]

    def resolves() -> None:
        out = kubectl(control_plane, f"-n {workload['ns']} exec {pod} -- /smoke-web -lookup kubernetes.default")
        answers = sorted(line.strip() for line in out.splitlines() if line.strip())
        assert answers == [workload["kubernetes_ip"]], (
            f"kubernetes.default resolved to {answers or 'nothing'} from {pod}, not [{workload['kubernetes_ip']}]"
        )

    retry(resolves, f"node {name} dns-from-pod", attempts=max(3, ATTEMPTS // 5), delay=DELAY)


def test_pod_reaches_pods_on_every_other_node(host: Any, control_plane: Any, workload: dict[str, Any]) -> None:
    """From this node's smoke pod, a request to the smoke pod of every other node; the requests run side
    by side (each one is an SSH round trip and a `kubectl exec`), each with its own bounded retry."""
    name = node_name_of(host, control_plane)
    assert name in workload["pods"], f"node {name}: no smoke pod runs there"
    pod = workload["pods"][name][0]
    others = [(other, *found) for other, found in sorted(workload["pods"].items()) if other != name]

    def reaches(other: str, other_pod: str, other_ip: str) -> None:
        def once() -> None:
            out = kubectl(control_plane, f"-n {workload['ns']} exec {pod} -- /smoke-web -get http://{other_ip}:8080/")
            assert other_pod in out, f"{pod} -> {other_pod} ({other_ip}) answered {out.strip()[-200:]!r}"

        retry(once, f"pod network {name} -> {other}", attempts=max(3, ATTEMPTS // 5), delay=DELAY)

    # At most 8 at once: they share one SSH connection, and sshd allows 10 sessions on one (MaxSessions).
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(8, len(others)))) as pool:
        futures = [pool.submit(reaches, *other) for other in others]
    failures = [str(f.exception()) for f in futures if f.exception() is not None]
    assert not failures, "; ".join(failures)


def test_nodeport_answers_from_the_host(host: Any, workload: dict[str, Any]) -> None:
    """The NodePort, asked from the machine that runs verify (not from the node itself, where no
    firewall stands in the way)."""
    ip = node_ip_of(host)
    url = f"http://{ip}:{workload['node_port']}/"

    def answers() -> None:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                body = resp.read().decode(errors="replace")
                status = resp.status
        except OSError as exc:
            raise AssertionError(f"GET {url} from the host: {exc}") from exc
        assert status == 200 and body.startswith("smoke-web "), f"GET {url}: {status} {body[:100]!r}"

    retry(answers, f"{host.backend.get_pytest_id()} nodeport {url}")


# Several control planes: every API server, the shared endpoint, stacked etcd.

ETCD_PROBE = """
import json, ssl, sys, urllib.request
pki = "/etc/kubernetes/pki/"
ctx = ssl.create_default_context(cafile=pki + "etcd/ca.crt")
ctx.load_cert_chain(pki + "apiserver-etcd-client.crt", pki + "apiserver-etcd-client.key")
def post(ip, path):
    req = urllib.request.Request("https://%s:2379%s" % (ip, path), data=b"{}", method="POST")
    with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
        return json.load(resp)
statuses = {}
for ip in sys.argv[1:]:
    try:
        statuses[ip] = post(ip, "/v3/maintenance/status")
    except Exception as exc:
        statuses[ip] = {"error": str(exc)}
print(json.dumps({"statuses": statuses, "members": post(sys.argv[1], "/v3/cluster/member/list")}))
"""


def _https_status(url: str) -> tuple[int, str]:
    """GET over TLS without verifying the serving certificate (only liveness is asked)."""
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=5, context=ctx) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except OSError as exc:
        raise AssertionError(f"GET {url} from the host: {exc}") from exc


def _control_plane_hosts(inventory: str) -> list[Any]:
    runner = AnsibleRunner.get_runner(inventory)
    return [
        testinfra.get_host(f"ansible://{h}?ansible_inventory={inventory}")
        for h in runner.get_hosts("kube_control_plane")
    ]


def test_api_server_answers_on_each_control_plane(host: Any, inventory: str) -> None:
    if host.backend.get_hostname() not in AnsibleRunner.get_runner(inventory).get_hosts("kube_control_plane"):
        pytest.skip("not configured: a worker runs no API server of its own")
    url = f"https://{node_ip_of(host)}:6443/readyz"

    def answers() -> None:
        status, body = _https_status(url)
        assert status == 200 and body.strip() == "ok", f"GET {url}: {status} {body[:200]!r}"

    retry(answers, f"{host.backend.get_pytest_id()} API server {url}")


def test_api_endpoint_answers(control_plane: Any) -> None:
    vip = str(control_plane.ansible.get_variables().get("kube_api_vip") or "")
    if not vip:
        pytest.skip("not configured: one control plane (kube_api_vip empty), whose own address is the endpoint")
    port = int(control_plane.ansible.get_variables().get("kube_api_vip_port") or 8443)
    url = f"https://{vip}:{port}/readyz"

    def answers() -> None:
        status, body = _https_status(url)
        assert status == 200 and body.strip() == "ok", f"GET {url}: {status} {body[:200]!r}"

    retry(answers, f"API endpoint {url}")
    server = kubectl(control_plane, "config view --raw -o jsonpath={.clusters[0].cluster.server}").strip()
    assert server == f"https://{vip}:{port}", f"admin.conf points at {server}, not the endpoint {vip}:{port}"


def test_haproxy_listens_on_the_node_address_and_the_vip(host: Any, inventory: str) -> None:
    """HAProxy on every control plane, the ones without the VIP included (net.ipv4.ip_nonlocal_bind),
    bound to the node's own address and the VIP only, never to every interface."""
    if host.backend.get_hostname() not in AnsibleRunner.get_runner(inventory).get_hosts("kube_control_plane"):
        pytest.skip("not configured: a worker runs no HAProxy")
    variables = host.ansible.get_variables()
    vip = str(variables.get("kube_api_vip") or "")
    if not vip:
        pytest.skip("not configured: one control plane runs no HAProxy (kube_api_vip empty)")
    port = int(variables.get("kube_api_vip_port") or 8443)
    with host.sudo():
        assert host.sysctl("net.ipv4.ip_nonlocal_bind") == 1
        listening = host.check_output(f"ss -Hltn 'sport = :{port}'")
    addresses = sorted({line.split()[3] for line in listening.splitlines() if line.strip()})
    assert addresses == sorted({f"{node_ip_of(host)}:{port}", f"{vip}:{port}"}), listening


def test_etcd_members_healthy_with_one_leader(control_plane: Any, inventory: str) -> None:
    planes = _control_plane_hosts(inventory)
    ips = [node_ip_of(h) for h in planes]

    def healthy() -> None:
        with control_plane.sudo():
            result = control_plane.run(f"python3 - {' '.join(ips)} <<'EOF'\n{ETCD_PROBE}\nEOF")
        assert result.rc == 0, f"the etcd probe failed on the first control plane: {result.stderr.strip()[-500:]}"
        data = json.loads(result.stdout)
        problems = clusterstate.etcd_problems(data["statuses"], data["members"], len(ips))
        assert not problems, "; ".join(problems)

    retry(healthy, "etcd members")


def test_user_kubeconfig_on_control_plane(control_plane: Any) -> None:
    result = control_plane.run("kubectl get nodes -o name")
    assert result.rc == 0 and "node/" in result.stdout, (
        f"the inventory user's ~/.kube/config does not work on the control plane: {result.stderr.strip()[-300:]}"
    )


def _assert(condition: bool, message: str) -> None:
    assert condition, message
