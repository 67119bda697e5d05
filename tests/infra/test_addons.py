"""Add-on checks (stage addons): each add-on used for real, once per cluster, from the first control plane.

Run: pytest tests/infra/test_addons.py --ansible-inventory=INV --connection=ansible
Storage: a PersistentVolumeClaim that names no StorageClass (so the default one serves it) is bound
by a first pod that writes a token into it; that pod is deleted, and a new pod reads the token back
from the same claim. Its namespace is deleted at the end (the volume's directory with it).
Helm: `provision.py helm`'s client, run on this host with the cluster's kubeconfig, installs (or
upgrades) the project's own chart (charts/provisioner-smoke) from its directory, waits for its
Deployment, and the release reads back as deployed.
Ingress (when the spec turns it on): in a namespace of the run's own, one smoke web server behind a
Service, an Ingress and an HTTPRoute with host names of their own; from this host, a request to each
node's address at the add-on's NodePort, once with each host name, reaches the smoke server.
Metrics: the resource metrics API (what `kubectl top` reads) has CPU and memory figures for every
node of the cluster, and for the pods of kube-system.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from testinfra.utils.ansible_runner import AnsibleRunner

from provisioner.kube import clusterstate
from tests.infra.test_kubernetes import (  # noqa: F401  (fixtures)
    ATTEMPTS,
    DELAY,
    KUBECTL,
    control_plane,
    inventory,
    kubectl,
    kubectl_json,
    retry,
)

# Each run gets a namespace of its own (NAMESPACE-<random>), labelled LABEL: the last run's is deleted
# without waiting for it, so a rerun never waits on the previous claim's teardown.
NAMESPACE = "provisioner-verify-storage"
LABEL = "provisioner.local/verify=storage"
CLAIM = "proof"
# Pod phases are polled four times as often as the other checks poll, within the same bound.
FAST_ATTEMPTS, FAST_DELAY = ATTEMPTS * 4, DELAY / 4


def control_plane_vars(path: str) -> dict[str, Any]:
    """The first control plane's variables in the inventory at `path` (the add-on roles' settings)."""
    runner = AnsibleRunner.get_runner(path)
    variables: dict[str, Any] = runner.get_variables(runner.get_hosts("kube_control_plane")[0])
    return variables


def storage_pod(ns: str, name: str, image: str, args: list[str]) -> dict[str, Any]:
    """A pod of the smoke image that runs once with the claim at /data (the image has no shell: the
    smoke program writes and reads the file itself)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "tolerations": [{"operator": "Exists"}],
            "containers": [
                {
                    "name": "check",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": ["/smoke-web", *args],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }
            ],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": CLAIM}}],
        },
    }


def storage_manifest(ns: str, image: str, token: str) -> str:
    """The namespace, a 16 MiB claim without a StorageClass name, and the pod that writes `token`."""
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": dict([LABEL.split("=")])}},
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": CLAIM, "namespace": ns},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "16Mi"}}},
        },
        storage_pod(ns, "writer", image, ["-write", "/data/proof", "-text", token]),
    ]
    return yaml.safe_dump_all(docs, sort_keys=False)


# A new namespace's default ServiceAccount comes from kube-controller-manager a moment later (longer
# while a new one takes the lead, as after an upgrade): a pod applied before it is refused. The apply
# (idempotent) is tried again then, and only then.
NO_SERVICE_ACCOUNT = 'serviceaccount "default" not found'


def apply(cp: Any, manifest: str, what: str = "the storage check") -> None:
    def once() -> Any:
        with cp.sudo():
            result = cp.run(f"{KUBECTL} apply -f - <<'EOF'\n{manifest}\nEOF")
        assert NO_SERVICE_ACCOUNT not in result.stderr, result.stderr.strip()[-400:]
        return result

    result = retry(once, "the check namespace's default ServiceAccount", attempts=FAST_ATTEMPTS, delay=FAST_DELAY)
    assert result.rc == 0, f"applying {what} failed: {result.stderr.strip()[-400:]}"


def wait_succeeded(cp: Any, ns: str, pod: str) -> dict[str, Any]:
    def done() -> dict[str, Any]:
        data = kubectl_json(cp, f"-n {ns} get pod {pod}")
        phase = data.get("status", {}).get("phase", "")
        if phase == "Failed":
            logs = kubectl(cp, f"-n {ns} logs {pod} --tail 5")
            raise RuntimeError(f"pod {pod} failed: {logs.strip()[-300:]}")
        assert phase == "Succeeded", f"pod {pod} is {phase or 'not started'}"
        return data

    return retry(done, f"storage pod {pod}", attempts=FAST_ATTEMPTS, delay=FAST_DELAY)


@pytest.fixture(scope="module")
def storage(inventory: str, control_plane: Any) -> Iterator[dict[str, Any]]:  # noqa: F811
    variables = control_plane_vars(inventory)
    if not variables.get("local_path_storage_enabled", True):
        pytest.skip("not configured: the spec's storage add-on is off (storage: false)")
    image = str(variables.get("kube_smoke_image") or "")
    if not image:
        pytest.fail("kube_smoke_image is not set in the inventory: the storage check runs the smoke image")
    kubectl(control_plane, f"delete namespace -l {LABEL} --wait=false")
    token = secrets.token_hex(8)
    ns = f"{NAMESPACE}-{token[:6]}"
    try:
        yield {"image": image, "token": token, "ns": ns}
    finally:
        with control_plane.sudo():
            control_plane.run(f"{KUBECTL} delete namespace {ns} --ignore-not-found --wait=false")


def test_storage_default_class_keeps_data_for_a_new_pod(control_plane: Any, storage: dict[str, Any]) -> None:  # noqa: F811
    classes = kubectl_json(control_plane, "get storageclass")["items"]
    defaults = [
        c["metadata"]["name"]
        for c in classes
        if c["metadata"].get("annotations", {}).get("storageclass.kubernetes.io/is-default-class") == "true"
    ]
    assert len(defaults) == 1, f"the cluster has {len(defaults)} default StorageClasses ({defaults}), not one"
    (default,) = [c for c in classes if c["metadata"]["name"] == defaults[0]]
    assert default["provisioner"] == "rancher.io/local-path", (
        f"the default StorageClass {defaults[0]} is served by {default['provisioner']}, not the storage add-on"
    )

    ns = storage["ns"]
    apply(control_plane, storage_manifest(ns, storage["image"], storage["token"]))
    writer = wait_succeeded(control_plane, ns, "writer")
    claim = kubectl_json(control_plane, f"-n {ns} get pvc {CLAIM}")
    assert claim["status"].get("phase") == "Bound", f"claim {CLAIM} is {claim['status'].get('phase')}"
    assert claim["spec"].get("storageClassName") == defaults[0], (
        f"claim {CLAIM} got class {claim['spec'].get('storageClassName')!r}, not the default {defaults[0]!r}"
    )
    volume = kubectl_json(control_plane, f"get pv {claim['spec']['volumeName']}")
    terms = volume["spec"].get("nodeAffinity", {}).get("required", {}).get("nodeSelectorTerms", [])
    nodes = [v for t in terms for e in t.get("matchExpressions", []) for v in e.get("values", [])]
    assert nodes == [writer["spec"]["nodeName"]], (
        f"volume {volume['metadata']['name']} is bound to {nodes}, not to the writer's node {writer['spec']['nodeName']}"
    )

    # The first pod is gone; a new one reads the claim back.
    kubectl(control_plane, f"-n {ns} delete pod writer --wait=true --timeout={int(ATTEMPTS * DELAY)}s")
    apply(control_plane, yaml.safe_dump(storage_pod(ns, "reader", storage["image"], ["-read", "/data/proof"])))
    wait_succeeded(control_plane, ns, "reader")
    read = kubectl(control_plane, f"-n {ns} logs reader").strip()
    assert read == storage["token"], f"the new pod read {read!r} from claim {CLAIM}, not the token {storage['token']!r}"


def metrics_problems(node_metrics: dict[str, Any], nodes: list[str]) -> list[str]:
    """What the metrics API's NodeMetricsList lacks: a node without figures, or figures without CPU or
    memory."""
    found = {str(i.get("metadata", {}).get("name")): i.get("usage", {}) for i in node_metrics.get("items", [])}
    problems = [f"no figures for node {n}" for n in nodes if n not in found]
    for name in nodes:
        usage = found.get(name)
        if usage is not None and not (usage.get("cpu") and usage.get("memory")):
            problems.append(f"node {name}'s figures lack CPU or memory: {usage}")
    return problems


def test_metrics_every_node_has_figures(inventory: str, control_plane: Any) -> None:  # noqa: F811
    variables = control_plane_vars(inventory)
    if not variables.get("metrics_server_enabled", True):
        pytest.skip("not configured: the spec's metrics add-on is off (metrics: false)")
    nodes = [n["metadata"]["name"] for n in kubectl_json(control_plane, "get nodes")["items"]]

    def raw(path: str) -> dict[str, Any]:
        with control_plane.sudo():
            result = control_plane.run(f"{KUBECTL} get --raw {path}")
        assert result.rc == 0, f"the metrics API does not answer {path}: {result.stderr.strip()[-300:]}"
        answer: dict[str, Any] = json.loads(result.stdout)
        return answer

    def figures() -> None:
        # Both reads inside one retry: with several control planes each request may reach another API
        # server, and one that has just started again calls the metrics APIService unavailable until its
        # own aggregator has checked it, while the others already serve it.
        problems = metrics_problems(raw("/apis/metrics.k8s.io/v1beta1/nodes"), nodes)
        assert not problems, "; ".join(problems)
        pods = raw("/apis/metrics.k8s.io/v1beta1/namespaces/kube-system/pods")
        assert pods.get("items"), "the metrics API has no figures for the pods of kube-system"

    retry(figures, "the metrics API's node and pod figures", attempts=FAST_ATTEMPTS, delay=FAST_DELAY)


CHART = Path(__file__).resolve().parents[2] / "charts" / "provisioner-smoke"
HELM_NAMESPACE = "provisioner-verify-helm"
RELEASE = "provisioner-smoke"


def test_helm_installs_the_projects_chart_from_its_directory(inventory: str) -> None:  # noqa: F811
    from provisioner.command.helm import helm_binary

    variables = control_plane_vars(inventory)
    kubeconfig = str(variables.get("kube_kubeconfig_dest") or "")
    if not Path(kubeconfig).is_file():
        pytest.fail(f"the cluster's kubeconfig {kubeconfig!r} is not on this host: the control_plane stage writes it")
    helm = str(helm_binary(str(variables["kube_version"]), str(variables["calico_version"]), sys.stderr))
    env = {**os.environ, "KUBECONFIG": kubeconfig}

    def run(*args: str) -> str:
        done = subprocess.run([helm, *args], env=env, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, f"helm {' '.join(args)} failed: {done.stderr.strip()[-500:]}"
        return done.stdout

    wait = f"{int(ATTEMPTS * DELAY)}s"
    run(
        "upgrade",
        "--install",
        RELEASE,
        str(CHART),
        "--namespace",
        HELM_NAMESPACE,
        "--create-namespace",
        "--set",
        f"image={variables['kube_smoke_image']}",
        "--wait",
        "--timeout",
        wait,
    )
    status = json.loads(run("status", RELEASE, "--namespace", HELM_NAMESPACE, "-o", "json"))
    assert status["info"]["status"] == "deployed", f"release {RELEASE} is {status['info']['status']}"
    # helm 4's status names no chart; the listing does (name-version).
    listed = json.loads(run("list", "--namespace", HELM_NAMESPACE, "-o", "json"))
    assert [r["chart"] for r in listed if r["name"] == RELEASE] == ["provisioner-smoke-0.1.0"], listed


INGRESS_NAMESPACE = "provisioner-verify-ingress"
INGRESS_LABEL = "provisioner.local/verify=ingress"


def ingress_manifest(ns: str, image: str, hosts: dict[str, str], gateway: tuple[str, str], ingress_class: str) -> str:
    """The namespace, the smoke web server (one replica) and its Service, an Ingress for
    hosts["ingress"] and an HTTPRoute on `gateway` (namespace, name) for hosts["gateway"]."""
    labels = {"app": "smoke"}
    backend = {"name": "smoke", "port": {"number": 80}}
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": ns, "labels": dict([INGRESS_LABEL.split("=")])},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "smoke", "namespace": ns},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": clusterstate.smoke_pod_template(image, labels, probe_period=1),
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "smoke", "namespace": ns},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {"name": "smoke", "namespace": ns},
            "spec": {
                "ingressClassName": ingress_class,
                "rules": [
                    {
                        "host": hosts["ingress"],
                        "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": backend}}]},
                    }
                ],
            },
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "smoke", "namespace": ns},
            "spec": {
                "parentRefs": [{"name": gateway[1], "namespace": gateway[0]}],
                "hostnames": [hosts["gateway"]],
                "rules": [{"backendRefs": [{"name": "smoke", "port": 80}]}],
            },
        },
    ]
    return yaml.safe_dump_all(docs, sort_keys=False)


def http_get(url: str, host: str) -> tuple[int, str]:
    """GET url with the Host header `host`, straight to the address (no proxy from the environment)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, headers={"Host": host})
    try:
        with opener.open(request, timeout=5) as resp:
            return int(resp.status), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")
    except OSError as exc:
        return 0, str(exc)


@pytest.fixture(scope="module")
def ingress(inventory: str, control_plane: Any) -> Iterator[dict[str, Any]]:  # noqa: F811
    variables = control_plane_vars(inventory)
    if not variables.get("traefik_ingress_enabled", False):
        pytest.skip("not configured: the spec's ingress add-on is off (ingress: false; --ingress turns it on)")
    image = str(variables.get("kube_smoke_image") or "")
    if not image:
        pytest.fail("kube_smoke_image is not set in the inventory: the ingress check runs the smoke image")
    kubectl(control_plane, f"delete namespace -l {INGRESS_LABEL} --wait=false")
    token = secrets.token_hex(3)
    ns = f"{INGRESS_NAMESPACE}-{token}"
    gateway = (
        str(variables.get("traefik_ingress_namespace") or "traefik"),
        str(variables.get("traefik_ingress_gateway") or "traefik"),
    )
    hosts = {"ingress": f"ingress-{token}.verify.test", "gateway": f"gateway-{token}.verify.test"}
    ingress_class = str(variables.get("traefik_ingress_class") or "traefik")
    try:
        apply(control_plane, ingress_manifest(ns, image, hosts, gateway, ingress_class), "the ingress check")
        kubectl(control_plane, f"-n {ns} rollout status deployment/smoke --timeout={int(ATTEMPTS * DELAY)}s")
        yield {
            "ns": ns,
            "hosts": hosts,
            "node_port": int(variables.get("traefik_ingress_http_node_port") or 30080),
        }
    finally:
        with control_plane.sudo():
            control_plane.run(f"{KUBECTL} delete namespace {ns} --ignore-not-found --wait=false")


def test_ingress_and_httproute_reach_the_smoke_server_from_the_host(
    control_plane: Any,  # noqa: F811
    ingress: dict[str, Any],
) -> None:
    """Through the add-on's NodePort on every node's address, from the machine that runs verify: the
    Ingress's host name and the HTTPRoute's each reach the smoke web server, and a host name that
    neither names gets Traefik's 404."""
    addresses = clusterstate.node_addresses(json.loads(kubectl(control_plane, "get nodes -o json")))
    assert addresses and all(addresses.values()), f"nodes without an InternalIP: {addresses}"
    port = ingress["node_port"]

    def answers() -> None:
        wrong = []
        for node, ip in sorted(addresses.items()):
            url = f"http://{ip}:{port}/"
            for kind, host in sorted(ingress["hosts"].items()):
                status, body = http_get(url, host)
                if status != 200 or not body.startswith("smoke-web "):
                    wrong.append(f"{kind} {host} via {node} ({url}): {status} {body[:80]!r}")
            status, body = http_get(url, f"nobody-{ingress['ns']}.verify.test")
            if status != 404:
                wrong.append(f"an unrouted host name via {node} ({url}): {status} {body[:80]!r}, not 404")
        assert not wrong, "; ".join(wrong)

    retry(answers, "the ingress add-on's routes", attempts=FAST_ATTEMPTS, delay=FAST_DELAY)
    routes = kubectl_json(control_plane, f"-n {ingress['ns']} get httproute smoke")
    parents = routes.get("status", {}).get("parents") or []
    accepted = [
        c
        for p in parents
        for c in p.get("conditions") or []
        if c.get("type") == "Accepted" and c.get("status") == "True"
    ]
    assert accepted, f"the HTTPRoute's status names no Gateway that accepted it: {parents}"
