"""The metrics add-on (issue: a usable cluster): the spec field and flag, the bundle's recipe and the
role naming the same image, the manifest the role renders (by Ansible itself), the stages, plan's line,
verify's reading of the metrics API, and which kubelet serving certificate requests the toolkit
approves (real requests, made with cryptography). No machine, no network."""

from __future__ import annotations

import base64
import importlib.util
import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner.bundle import source
from provisioner.cli import _overrides, build_parser
from provisioner.command.plan import addons_line
from provisioner.errors import SpecError
from provisioner.spec import build_spec, check_engine_fields
from tests.infra.test_addons import metrics_problems
from tests.unit.test_playbooks_syntax import render_role_template

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "metrics_server"
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
PLUGIN = REPO / "roles" / "kubelet_serving_cert" / "filter_plugins" / "kubelet_serving_cert.py"


def _plugin() -> Any:
    spec = importlib.util.spec_from_file_location("kubelet_serving_cert_filters", PLUGIN)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PLAN = _plugin().kubelet_serving_csr_plan
KEY = ec.generate_private_key(ec.SECP256R1())


def test_metrics_is_on_by_default_and_a_flag_turns_it_off() -> None:
    assert build_spec().metrics is True
    args = build_parser().parse_args(["up", "--no-metrics"])
    assert _overrides(args)["metrics"] is False
    assert build_spec(_overrides(args)).metrics is False


def test_metrics_is_refused_for_a_swarm() -> None:
    with pytest.raises(SpecError, match="metrics is a Kubernetes add-on"):
        check_engine_fields("swarm", {"metrics"})


def test_the_bundle_recipe_and_the_role_name_the_same_image() -> None:
    recipe = source.load_components()
    image = DEFAULTS["metrics_server_image"]
    assert image in recipe["addon_images"] and image in recipe["download_addon_images"]
    assert source._image_key(image) in recipe["images"]
    gomod = (REPO / "bundle" / "metrics" / "go.mod").read_text()
    pinned = re.search(r"sigs.k8s.io/metrics-server (v\S+)", gomod)
    assert pinned is not None and image.endswith(":" + pinned.group(1))
    build = recipe["builds"]["metrics"]
    assert build["packages"]["metrics-server"] == "sigs.k8s.io/metrics-server/cmd/metrics-server"
    assert recipe["images"]["metrics-server"]["files"] == {"/metrics-server": "metrics/metrics-server"}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    root = tmp_path_factory.mktemp("metrics")
    return render_role_template(root, ROLE, "metrics-server.yaml.j2", {"cp": {}})["cp"]


def test_metrics_server_verifies_the_kubelets_and_serves_the_metrics_api(rendered: list[dict[str, Any]]) -> None:
    (deployment,) = [d for d in rendered if d["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == DEFAULTS["metrics_server_image"]
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert not [a for a in container["args"] if "insecure" in a]
    assert f"--metric-resolution={DEFAULTS['metrics_server_resolution']}s" in container["args"]
    (api,) = [d for d in rendered if d["kind"] == "APIService"]
    assert api["metadata"]["name"] == "v1beta1.metrics.k8s.io"
    assert api["spec"]["service"] == {"name": "metrics-server", "namespace": "kube-system"}
    (reader,) = [d for d in rendered if d["metadata"]["name"] == "system:metrics-server" and d["kind"] == "ClusterRole"]
    assert {"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]} in reader["rules"]


def test_the_stages_carry_the_serving_certificates_and_the_add_on() -> None:
    join = yaml.safe_load((REPO / "playbooks" / "join.yml").read_text())
    names = [p["name"] for p in join]
    serving = names.index("Stage join | kubelet serving certificates")
    assert join[serving]["hosts"] == "k8s_cluster"
    assert [r["role"] for r in join[serving]["roles"]] == ["kubelet_serving_cert"]
    addons = yaml.safe_load((REPO / "playbooks" / "addons.yml").read_text())
    assert [r["role"] for r in addons[0]["roles"]] == ["metrics_server", "local_path_storage", "traefik_ingress"]


def test_plan_says_whether_the_cluster_gets_metrics() -> None:
    assert addons_line(build_spec(), False).startswith("metrics: metrics-server")
    off = addons_line(build_spec({"metrics": False}), True)
    assert off.splitlines()[0] == "metrics: off (--metrics turns it on); an add-on installed earlier stays"


def test_verify_names_the_nodes_without_figures() -> None:
    listing = {
        "items": [
            {"metadata": {"name": "cp1"}, "usage": {"cpu": "120m", "memory": "800Mi"}},
            {"metadata": {"name": "w1"}, "usage": {"cpu": "", "memory": "1Gi"}},
        ]
    }
    assert metrics_problems(listing, ["cp1"]) == []
    assert metrics_problems(listing, ["cp1", "w1", "w2"]) == [
        "no figures for node w2",
        "node w1's figures lack CPU or memory: {'cpu': '', 'memory': '1Gi'}",
    ]


# ---- which serving certificate requests are approved


def _request(dns: list[str], ips: list[str], email: bool = False) -> str:
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if email:
        names.append(x509.RFC822Name("x@example.invalid"))
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes")])
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    pem = builder.sign(KEY, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    return base64.b64encode(pem).decode()


def _csr(
    name: str,
    node: str,
    dns: list[str],
    ips: list[str],
    *,
    signer: str = "kubernetes.io/kubelet-serving",
    groups: tuple[str, ...] = ("system:nodes", "system:authenticated"),
    usages: tuple[str, ...] = ("digital signature", "server auth"),
    conditions: tuple[str, ...] = (),
    email: bool = False,
) -> dict[str, Any]:
    return {
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {
            "signerName": signer,
            "username": f"system:node:{node}",
            "groups": list(groups),
            "usages": list(usages),
            "request": _request(dns, ips, email),
        },
        "status": {"conditions": [{"type": c} for c in conditions]},
    }


def _node(name: str, ip: str) -> dict[str, Any]:
    return {
        "kind": "Node",
        "metadata": {"name": name},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]},
    }


NODES = [_node("cp1", "192.168.56.10"), _node("w1", "192.168.56.11")]


def _listing(*csrs: dict[str, Any]) -> str:
    return json.dumps({"kind": "List", "items": [*csrs, *NODES]})


def test_a_nodes_own_request_is_approved_and_others_wait() -> None:
    plan = PLAN(_listing(_csr("csr-a", "cp1", ["cp1"], ["192.168.56.10"])), ["cp1", "w1"])
    assert plan == {"approve": ["csr-a"], "by_node": {"cp1": ["csr-a"]}, "waiting": ["w1"], "refused": []}


def test_each_nodes_requests_are_named_under_that_node() -> None:
    listing = _listing(
        _csr("csr-b", "w1", ["w1"], ["192.168.56.11"]),
        _csr("csr-a", "cp1", ["cp1"], ["192.168.56.10"]),
        _csr("csr-c", "w1", ["w1"], []),
    )
    plan = PLAN(listing, ["cp1", "w1"])
    assert plan["by_node"] == {"cp1": ["csr-a"], "w1": ["csr-b", "csr-c"]}
    assert sorted(plan["approve"]) == ["csr-a", "csr-b", "csr-c"]


def test_an_approved_request_means_the_node_is_not_waiting() -> None:
    listing = _listing(_csr("csr-a", "w1", ["w1"], ["192.168.56.11"], conditions=("Approved",)))
    assert PLAN(listing, ["w1"]) == {"approve": [], "by_node": {}, "waiting": [], "refused": []}


def test_requests_for_other_signers_nodes_or_names_are_not_approved() -> None:
    listing = _listing(
        _csr("client", "w1", ["w1"], [], signer="kubernetes.io/kube-apiserver-client-kubelet"),
        _csr("other-node", "w9", ["w9"], []),
        _csr("foreign-ip", "w1", ["w1"], ["10.0.0.1"]),
        _csr("other-name", "w1", ["cp1"], ["192.168.56.11"]),
        _csr("not-a-node", "w1", ["w1"], [], groups=("system:authenticated",)),
        _csr("client-usage", "w1", ["w1"], [], usages=("digital signature", "client auth")),
        _csr("email", "w1", ["w1"], [], email=True),
        _csr("denied", "w1", ["w1"], [], conditions=("Denied",)),
    )
    plan = PLAN(listing, ["w1"])
    assert plan["approve"] == [] and plan["waiting"] == ["w1"]
    refused = {r.split(" ")[0] for r in plan["refused"]}
    assert refused == {"foreign-ip", "other-name", "not-a-node", "client-usage", "email"}
    assert any("10.0.0.1" in r and "not node w1's name or addresses" in r for r in plan["refused"])


@settings(max_examples=40, deadline=None)
@given(
    dns=st.lists(st.sampled_from(["w1", "cp1", "w1.example.invalid"]), max_size=3, unique=True),
    ips=st.lists(st.sampled_from(["192.168.56.11", "192.168.56.10", "10.0.0.1"]), max_size=3, unique=True),
)
def test_a_request_is_approved_exactly_when_it_names_only_its_nodes_name_and_addresses(
    dns: list[str], ips: list[str]
) -> None:
    plan = PLAN(_listing(_csr("r", "w1", dns, ips)), ["w1"])
    own = set(dns) <= {"w1", "192.168.56.11"} and set(ips) <= {"192.168.56.11"}
    assert (plan["approve"] == ["r"]) is own
    assert (plan["waiting"] == []) is own


def test_a_listing_that_is_not_kubectls_is_an_error() -> None:
    with pytest.raises(ValueError, match="expected the JSON"):
        PLAN("[]", ["w1"])
