"""The roles' kubeadm and Calico templates, rendered with the same filters the roles use.

Two renderers: jinja2 with the repository's filter plugin and Ansible's core filters (fast, many
specs), and one real `ansible-playbook` run on localhost that renders the same templates through
Ansible itself and must give the same documents. No machine, no network.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml
from ansible.errors import AnsibleError
from ansible.plugins.filter.core import FilterModule as CoreFilters

from provisioner.kube import kubeadm

REPO = Path(__file__).resolve().parents[2]
INIT_TEMPLATE = REPO / "roles" / "kube_control_plane" / "templates" / "kubeadm-config.yaml.j2"
JOIN_TEMPLATE = REPO / "roles" / "kube_join" / "templates" / "kubeadm-join.yaml.j2"
CALICO_TEMPLATE = REPO / "roles" / "calico" / "templates" / "calico.yaml.j2"
TOKEN = "abcdef.0123456789abcdef"
CA_HASH = "sha256:" + "ab" * 32
# What a failing filter raises inside a template: the plugin turns KubeConfigError into AnsibleFilterError.
RENDER_ERRORS = (jinja2.TemplateError, AnsibleError)


def _filters() -> dict[str, Callable[..., Any]]:
    spec = importlib.util.spec_from_file_location("kube_filters", REPO / "filter_plugins" / "kube.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    filters: dict[str, Callable[..., Any]] = dict(CoreFilters().filters())
    filters.update(module.FilterModule().filters())
    return filters


FILTERS = _filters()


def render(template: Path, variables: dict[str, Any]) -> list[dict[str, Any]]:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters.update(FILTERS)
    text = env.from_string(template.read_text()).render(**variables)
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


ROLE_DEFAULTS = yaml.safe_load((REPO / "roles" / "kube_control_plane" / "defaults" / "main.yml").read_text())
CONTAINER_KUBELET = ROLE_DEFAULTS["kube_control_plane_container_kubelet_config"]
CONTAINER_PROXY = ROLE_DEFAULTS["kube_control_plane_container_kube_proxy_config"]


def init_vars(**overrides: Any) -> dict[str, Any]:
    """The kube_control_plane variables after the role resolved them (defaults, then facts)."""
    values: dict[str, Any] = {
        "kube_control_plane_node_ip_resolved": "192.168.56.10",
        "kube_control_plane_kubernetes_version": "v1.36.2",
        "kube_control_plane_pods_subnet": "10.244.0.0/16",
        "kube_control_plane_service_subnet": "10.96.0.0/12",
        "kube_control_plane_endpoint": "",
        "kube_control_plane_bind_port": 6443,
        "kube_control_plane_cluster_name": "kubernetes",
        "kube_control_plane_dns_domain": "cluster.local",
        "kube_control_plane_cri_socket": "unix:///run/containerd/containerd.sock",
        "kube_control_plane_init_token_ttl": "15m",
        "kube_control_plane_ignore_preflight_errors": [],
        "kube_control_plane_cert_sans": [],
        "kube_control_plane_apiserver_extra_args": {},
        "kube_control_plane_controller_manager_extra_args": {},
        "kube_control_plane_scheduler_extra_args": {},
        "kube_control_plane_kubelet_extra_args": {},
        "kube_control_plane_kubelet_config": {},
        "kube_control_plane_kube_proxy_config": {},
        "kube_control_plane_schedulable": False,
        "kube_control_plane_cgroup_v1": {"kubelet_config": {}, "ignore_preflight_errors": [], "warning": ""},
        "kube_control_plane_in_container": False,
        "kube_control_plane_container_kubelet_config": CONTAINER_KUBELET,
        "kube_control_plane_container_kube_proxy_config": CONTAINER_PROXY,
        "kube_control_plane_pod_resolv_conf": "",
        "cluster_time_scale": 1,
    }
    values.update(overrides)
    return values


EXPECTED_DEFAULT_INIT: list[dict[str, Any]] = [
    {
        "apiVersion": "kubeadm.k8s.io/v1beta4",
        "kind": "InitConfiguration",
        "bootstrapTokens": [
            {
                "ttl": "15m",
                "description": "kubeadm init token (short-lived; kube_join creates its own)",
                "usages": ["signing", "authentication"],
                "groups": ["system:bootstrappers:kubeadm:default-node-token"],
            }
        ],
        "localAPIEndpoint": {"advertiseAddress": "192.168.56.10", "bindPort": 6443},
        "nodeRegistration": {
            "criSocket": "unix:///run/containerd/containerd.sock",
            "kubeletExtraArgs": [{"name": "node-ip", "value": "192.168.56.10"}],
        },
    },
    {
        "apiVersion": "kubeadm.k8s.io/v1beta4",
        "kind": "ClusterConfiguration",
        "clusterName": "kubernetes",
        "kubernetesVersion": "v1.36.2",
        "controlPlaneEndpoint": "192.168.56.10:6443",
        "networking": {"podSubnet": "10.244.0.0/16", "serviceSubnet": "10.96.0.0/12", "dnsDomain": "cluster.local"},
        "apiServer": {"certSANs": ["192.168.56.10"]},
    },
    {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "cgroupDriver": "systemd",
        "serverTLSBootstrap": True,
    },
]


def test_init_default_spec() -> None:
    assert render(INIT_TEMPLATE, init_vars()) == EXPECTED_DEFAULT_INIT


def test_init_custom_cidrs_and_endpoint() -> None:
    docs = render(
        INIT_TEMPLATE,
        init_vars(
            kube_control_plane_node_ip_resolved="10.20.0.5",
            kube_control_plane_pods_subnet="172.16.0.0/16",
            kube_control_plane_service_subnet="10.112.0.0/12",
            kube_control_plane_endpoint="k8s-api.example.test:6443",
            kube_control_plane_cert_sans=["k8s-api.example.test", "10.20.0.5"],
        ),
    )
    cluster = docs[1]
    assert cluster["networking"] == {
        "podSubnet": "172.16.0.0/16",
        "serviceSubnet": "10.112.0.0/12",
        "dnsDomain": "cluster.local",
    }
    assert cluster["controlPlaneEndpoint"] == "k8s-api.example.test:6443"
    assert cluster["apiServer"]["certSANs"] == ["10.20.0.5", "k8s-api.example.test"]
    assert docs[0]["localAPIEndpoint"]["advertiseAddress"] == "10.20.0.5"
    assert docs[0]["nodeRegistration"]["kubeletExtraArgs"] == [{"name": "node-ip", "value": "10.20.0.5"}]


def test_init_non_canonical_cidr_is_normalized() -> None:
    docs = render(INIT_TEMPLATE, init_vars(kube_control_plane_pods_subnet="10.244.3.0/16"))
    assert docs[1]["networking"]["podSubnet"] == "10.244.0.0/16"


@pytest.mark.parametrize(
    ("kube_version", "installed", "expected"),
    [
        pytest.param("1.36.2", "v1.36.2", "v1.36.2", id="patch-pinned"),
        pytest.param("1.36", "v1.36.4", "v1.36.4", id="minor-uses-installed-kubeadm"),
        pytest.param("v1.35.1", "", "v1.35.1", id="patch-without-kubeadm-yet"),
    ],
)
def test_kubernetes_version_resolution(kube_version: str, installed: str, expected: str) -> None:
    version = FILTERS["kube_resolve_version"](kube_version, installed)
    assert version == expected
    docs = render(INIT_TEMPLATE, init_vars(kube_control_plane_kubernetes_version=version))
    assert docs[1]["kubernetesVersion"] == expected


def test_kubernetes_version_mismatch_is_refused() -> None:
    with pytest.raises(Exception, match="rerun the kube_packages stage"):
        FILTERS["kube_resolve_version"]("1.36.2", "v1.36.1")


def test_init_ignored_preflight_errors_and_extra_args() -> None:
    docs = render(
        INIT_TEMPLATE,
        init_vars(
            kube_control_plane_ignore_preflight_errors=["NumCPU", "Mem"],
            kube_control_plane_apiserver_extra_args={"audit-log-maxage": 7, "anonymous-auth": False},
            kube_control_plane_kubelet_extra_args={"max-pods": 50, "node-ip": "1.2.3.4"},
            kube_control_plane_kubelet_config={"maxPods": 50, "cgroupDriver": "cgroupfs", "serverTLSBootstrap": False},
            kube_control_plane_schedulable=True,
        ),
    )
    registration = docs[0]["nodeRegistration"]
    assert registration["ignorePreflightErrors"] == ["NumCPU", "Mem"]
    assert registration["taints"] == []
    # node-ip always comes from the node IP, whatever the extra arguments say.
    assert registration["kubeletExtraArgs"] == [
        {"name": "node-ip", "value": "192.168.56.10"},
        {"name": "max-pods", "value": "50"},
    ]
    assert docs[1]["apiServer"]["extraArgs"] == [
        {"name": "anonymous-auth", "value": "false"},
        {"name": "audit-log-maxage", "value": "7"},
    ]
    assert docs[2] == {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "maxPods": 50,
        "cgroupDriver": "systemd",
        "serverTLSBootstrap": True,
    }


@pytest.mark.parametrize("errors", [["all"], ["NumCPU", "ALL"]])
def test_init_refuses_ignoring_all_preflight_errors(errors: list[str]) -> None:
    with pytest.raises(RENDER_ERRORS, match="one by one"):
        render(INIT_TEMPLATE, init_vars(kube_control_plane_ignore_preflight_errors=errors))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"kube_control_plane_pods_subnet": "10.96.0.0/16"}, "overlaps kube_service_addresses"),
        ({"kube_control_plane_node_ip_resolved": "10.244.0.9"}, "lies inside kube_pods_subnet"),
        ({"kube_control_plane_kubernetes_version": "1.36"}, "exact version"),
        ({"kube_control_plane_node_ip_resolved": "node1"}, "not an IPv4 address"),
    ],
)
def test_init_refuses_bad_input(override: dict[str, Any], message: str) -> None:
    with pytest.raises(RENDER_ERRORS, match=message):
        render(INIT_TEMPLATE, init_vars(**override))


def join_vars(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "kube_join_token": TOKEN,
        "kube_join_ca_cert_hash": CA_HASH,
        "kube_join_endpoint_resolved": "192.168.56.10:6443",
        "kube_join_node_ip_resolved": "192.168.56.11",
        "kube_join_cri_socket": "unix:///run/containerd/containerd.sock",
        "kube_join_ignore_preflight_errors": [],
        "kube_join_kubelet_extra_args": {},
        "kube_join_cgroup_v1": {"kubelet_config": {}, "ignore_preflight_errors": [], "warning": ""},
        "kube_join_as_control_plane": False,
        "kube_join_certificate_key": "",
        "kube_join_bind_port": 6443,
        "cluster_time_scale": 1,
    }
    values.update(overrides)
    return values


CERT_KEY = "0123456789abcdef" * 4


def test_control_plane_join_configuration() -> None:
    """A further control plane: the uploaded certificates under the run's key, its own API endpoint."""
    docs = render(
        JOIN_TEMPLATE,
        join_vars(
            kube_join_as_control_plane=True,
            kube_join_certificate_key=CERT_KEY,
            kube_join_endpoint_resolved="192.168.56.9:8443",
            kube_join_node_ip_resolved="192.168.56.12",
        ),
    )
    assert docs[0]["controlPlane"] == {
        "localAPIEndpoint": {"advertiseAddress": "192.168.56.12", "bindPort": 6443},
        "certificateKey": CERT_KEY,
    }
    assert docs[0]["discovery"]["bootstrapToken"]["apiServerEndpoint"] == "192.168.56.9:8443"


def test_control_plane_join_refuses_a_bad_key_without_echoing_it() -> None:
    with pytest.raises(RENDER_ERRORS, match="certificate key is missing or malformed") as info:
        render(JOIN_TEMPLATE, join_vars(kube_join_as_control_plane=True, kube_join_certificate_key="nothex" * 9))
    assert "nothex" not in str(info.value)


def test_join_configuration() -> None:
    assert render(JOIN_TEMPLATE, join_vars()) == [
        {
            "apiVersion": "kubeadm.k8s.io/v1beta4",
            "kind": "JoinConfiguration",
            "discovery": {
                "bootstrapToken": {
                    "token": TOKEN,
                    "apiServerEndpoint": "192.168.56.10:6443",
                    "caCertHashes": [CA_HASH],
                }
            },
            "nodeRegistration": {
                "criSocket": "unix:///run/containerd/containerd.sock",
                "kubeletExtraArgs": [{"name": "node-ip", "value": "192.168.56.11"}],
            },
        }
    ]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"kube_join_token": "not-a-token"}, "token is missing or malformed"),
        ({"kube_join_ca_cert_hash": "sha256:xyz"}, "CA certificate hash"),
        ({"kube_join_endpoint_resolved": "https://192.168.56.10:6443"}, "must be host:port"),
    ],
)
def test_join_refuses_bad_credentials_without_echoing_the_token(override: dict[str, Any], message: str) -> None:
    with pytest.raises(RENDER_ERRORS, match=message) as info:
        render(JOIN_TEMPLATE, join_vars(**override))
    assert TOKEN not in str(info.value)
    assert "not-a-token" not in str(info.value)


@pytest.mark.parametrize(
    ("server", "endpoint"),
    [
        ("https://192.168.56.10:6443", "192.168.56.10:6443"),
        ("https://k8s.example.test", "k8s.example.test:443"),
        ("https://k8s.example.test:8443/", "k8s.example.test:8443"),
    ],
)
def test_api_server_endpoint(server: str, endpoint: str) -> None:
    assert FILTERS["kube_api_server_endpoint"](server) == endpoint


CALICO_UPSTREAM = """
apiVersion: v1
kind: ConfigMap
metadata: {name: calico-config, namespace: kube-system}
data: {calico_backend: "bird", veth_mtu: "0"}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: calico-node, namespace: kube-system}
spec:
  template:
    spec:
      initContainers:
        - {name: install-cni, image: quay.io/calico/cni:v3.31.0}
      containers:
        - name: calico-node
          image: quay.io/calico/node:v3.31.0
          env:
            - {name: CALICO_IPV4POOL_VXLAN, value: CrossSubnet}
            - {name: IP, value: autodetect}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: calico-kube-controllers, namespace: kube-system}
spec:
  template:
    spec:
      containers:
        - {name: calico-kube-controllers, image: quay.io/calico/kube-controllers:v3.31.0}
"""


def calico_vars(manifest: str = CALICO_UPSTREAM, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "calico_version": "3.31.0",
        "calico_pods_subnet": "10.244.0.0/16",
        "calico_node_network_cidr": "192.168.56.0/24",
        "calico_encapsulation": "VXLANCrossSubnet",
        "calico_block_size": 26,
        "calico_nat_outgoing": True,
        "calico_mtu": 0,
        "calico_registry": "",
        "cluster_time_scale": 1,
        "calico_api_server": {"stdout": ""},
        "calico_services_endpoint": "auto",
        "calico_upstream_manifest": {"content": base64.b64encode(manifest.encode()).decode()},
    }
    values.update(overrides)
    return values


def _env(docs: list[dict[str, Any]]) -> dict[str, str]:
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    node = next(c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "calico-node")
    return {e["name"]: e["value"] for e in node["env"]}


def test_calico_manifest_gets_the_cluster_settings() -> None:
    docs = render(CALICO_TEMPLATE, calico_vars())
    assert [d["kind"] for d in docs] == ["ConfigMap", "DaemonSet", "Deployment"]
    assert docs[0]["data"] == {"calico_backend": "vxlan", "veth_mtu": "0"}
    assert _env(docs) == {
        "IP": "autodetect",
        "CALICO_IPV4POOL_CIDR": "10.244.0.0/16",
        "CALICO_IPV4POOL_BLOCK_SIZE": "26",
        "CALICO_IPV4POOL_IPIP": "Never",
        "CALICO_IPV4POOL_VXLAN": "CrossSubnet",
        "CALICO_IPV4POOL_NAT_OUTGOING": "true",
        "IP_AUTODETECTION_METHOD": "cidr=192.168.56.0/24",
    }
    # Images stay as the release names them (the bundle carries exactly these).
    assert docs[2]["spec"]["template"]["spec"]["containers"][0]["image"] == "quay.io/calico/kube-controllers:v3.31.0"


@pytest.mark.parametrize(
    ("encapsulation", "mode"), [("VXLAN", "Always"), ("None", "Never"), ("VXLANCrossSubnet", "CrossSubnet")]
)
def test_calico_encapsulations(encapsulation: str, mode: str) -> None:
    assert (
        _env(render(CALICO_TEMPLATE, calico_vars(calico_encapsulation=encapsulation)))["CALICO_IPV4POOL_VXLAN"] == mode
    )


def test_calico_options() -> None:
    docs = render(
        CALICO_TEMPLATE,
        calico_vars(
            calico_pods_subnet="172.20.0.0/16",
            calico_node_network_cidr="10.10.0.0/24",
            calico_mtu=1400,
            calico_registry="mirror.example.test:5000/",
            calico_nat_outgoing=False,
            calico_block_size=24,
        ),
    )
    env = _env(docs)
    assert env["CALICO_IPV4POOL_CIDR"] == "172.20.0.0/16"
    assert env["IP_AUTODETECTION_METHOD"] == "cidr=10.10.0.0/24"
    assert env["CALICO_IPV4POOL_NAT_OUTGOING"] == "false"
    assert env["CALICO_IPV4POOL_BLOCK_SIZE"] == "24"
    assert docs[0]["data"]["veth_mtu"] == "1400"
    pod = docs[1]["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["image"] == "mirror.example.test:5000/calico/cni:v3.31.0"
    assert pod["containers"][0]["image"] == "mirror.example.test:5000/calico/node:v3.31.0"


@pytest.mark.parametrize(
    ("server", "host", "port"),
    [("https://192.168.56.10:6443", "192.168.56.10", "6443"), ("https://192.168.56.9:8443/", "192.168.56.9", "8443")],
)
def test_calico_reaches_the_api_server_directly(server: str, host: str, port: str) -> None:
    docs = render(CALICO_TEMPLATE, calico_vars(calico_api_server={"stdout": server}))
    assert docs[0] == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "kubernetes-services-endpoint", "namespace": "kube-system"},
        "data": {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port},
    }
    # Without the address (check mode before init), no such ConfigMap: Calico's default stands.
    assert "kubernetes-services-endpoint" not in [d["metadata"]["name"] for d in render(CALICO_TEMPLATE, calico_vars())]
    with pytest.raises(RENDER_ERRORS, match="https://host"):
        render(CALICO_TEMPLATE, calico_vars(calico_api_server={"stdout": "ftp://192.168.56.10:6443"}))


def test_calico_services_endpoint_can_be_given_or_left_out() -> None:
    given = render(CALICO_TEMPLATE, calico_vars(calico_services_endpoint="10.0.0.5:7443", calico_api_server={}))
    assert given[0]["data"] == {"KUBERNETES_SERVICE_HOST": "10.0.0.5", "KUBERNETES_SERVICE_PORT": "7443"}
    off = render(CALICO_TEMPLATE, calico_vars(calico_services_endpoint="", calico_api_server={"stdout": "https://a:1"}))
    assert "kubernetes-services-endpoint" not in [d["metadata"]["name"] for d in off]
    with pytest.raises(RENDER_ERRORS, match="loopback"):
        render(CALICO_TEMPLATE, calico_vars(calico_api_server={"stdout": "https://127.0.0.1:6443"}))


CALICO_PROBES = CALICO_UPSTREAM.replace(
    "            - {name: IP, value: autodetect}\n",
    "            - {name: IP, value: autodetect}\n"
    "          livenessProbe: {exec: {command: [/bin/calico-node, -felix-live]}, periodSeconds: 10,"
    " initialDelaySeconds: 10, failureThreshold: 6, timeoutSeconds: 10}\n"
    "          readinessProbe: {exec: {command: [/bin/calico-node, -felix-ready]}, periodSeconds: 10,"
    " timeoutSeconds: 10}\n",
)


def _probes(docs: list[dict[str, Any]]) -> dict[str, Any]:
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    node = next(c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "calico-node")
    return {k: node[k] for k in ("livenessProbe", "readinessProbe", "startupProbe") if k in node}


def test_calico_probes_scale_with_time_scale_and_calico_node_gets_a_startup_probe() -> None:
    assert "readinessProbe" in CALICO_PROBES
    upstream = _probes(render(CALICO_TEMPLATE, calico_vars(CALICO_PROBES)))
    assert upstream["livenessProbe"] == {
        "exec": {"command": ["/bin/calico-node", "-felix-live"]},
        "periodSeconds": 10,
        "initialDelaySeconds": 10,
        "failureThreshold": 6,
        "timeoutSeconds": 10,
    }
    assert "failureThreshold" not in upstream["readinessProbe"]
    # calico-node's readiness question, asked every second until it passes (then the kubelet asks the
    # readiness probe at once), for at most 600 s (the calico role's wait).
    assert upstream["startupProbe"] == {
        "exec": {"command": ["/bin/calico-node", "-felix-ready"]},
        "periodSeconds": 1,
        "timeoutSeconds": 10,
        "failureThreshold": 600,
    }
    scaled = _probes(render(CALICO_TEMPLATE, calico_vars(CALICO_PROBES, cluster_time_scale=4)))
    assert scaled["livenessProbe"] == {
        "exec": {"command": ["/bin/calico-node", "-felix-live"]},
        "periodSeconds": 10,
        "initialDelaySeconds": 40,
        "failureThreshold": 24,
        "timeoutSeconds": 40,
    }
    # The startup probe asks less often on a slow machine, as many times: 600 x 4 s.
    assert scaled["startupProbe"] == {
        "exec": {"command": ["/bin/calico-node", "-felix-ready"]},
        "periodSeconds": 4,
        "timeoutSeconds": 40,
        "failureThreshold": 600,
    }
    # Fields the manifest leaves out are scaled from Kubernetes' defaults (failureThreshold 3).
    assert scaled["readinessProbe"] == {
        "exec": {"command": ["/bin/calico-node", "-felix-ready"]},
        "periodSeconds": 10,
        "timeoutSeconds": 40,
        "failureThreshold": 12,
    }
    with pytest.raises(RENDER_ERRORS, match="time_scale"):
        render(CALICO_TEMPLATE, calico_vars(CALICO_PROBES, cluster_time_scale=50))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"calico_encapsulation": "GRE"}, "is not one of"),
        ({"calico_encapsulation": "IPIP"}, "without BGP"),
        ({"calico_pods_subnet": "192.168.0.0/16"}, "overlaps node_network_cidr"),
        ({"calico_block_size": 12}, "calico_block_size"),
        ({"manifest": "kind: ConfigMap\nmetadata: {name: other}\n"}, "calico-vxlan.yaml"),
    ],
)
def test_calico_refuses_bad_input(override: dict[str, Any], message: str) -> None:
    with pytest.raises(RENDER_ERRORS, match=message):
        render(CALICO_TEMPLATE, calico_vars(**override))


def test_container_node_on_cgroup_v1_gets_kinds_settings_and_nothing_broader() -> None:
    v1 = {
        "kubelet_config": {"failCgroupV1": False},
        "ignore_preflight_errors": ["SystemVerification"],
        "warning": "w",
    }
    docs = render(
        INIT_TEMPLATE,
        init_vars(
            kube_control_plane_in_container=True,
            kube_control_plane_cgroup_v1=v1,
            kube_control_plane_ignore_preflight_errors=["NumCPU"],
        ),
    )
    assert docs[0]["nodeRegistration"]["ignorePreflightErrors"] == ["NumCPU", "SystemVerification"]
    kubelet = docs[2]
    assert kubelet["failCgroupV1"] is False
    assert kubelet["failSwapOn"] is False
    assert kubelet["evictionHard"] == {"nodefs.available": "0%", "nodefs.inodesFree": "0%", "imagefs.available": "0%"}
    assert docs[3] == {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "conntrack": {"maxPerCore": 0},
    }


def test_pod_resolv_conf_reaches_the_kubelet_configuration() -> None:
    docs = render(INIT_TEMPLATE, init_vars(kube_control_plane_pod_resolv_conf="/etc/kubernetes/pod-resolv.conf"))
    assert docs[2]["resolvConf"] == "/etc/kubernetes/pod-resolv.conf"
    assert "resolvConf" not in render(INIT_TEMPLATE, init_vars())[2]


def test_vm_on_cgroup_v2_gets_no_container_settings() -> None:
    docs = render(INIT_TEMPLATE, init_vars())
    assert len(docs) == 3 and "failCgroupV1" not in docs[2] and "failSwapOn" not in docs[2]
    assert "ignorePreflightErrors" not in docs[0]["nodeRegistration"]


def test_join_on_cgroup_v1_ignores_only_system_verification() -> None:
    v1 = {"kubelet_config": {"failCgroupV1": False}, "ignore_preflight_errors": ["SystemVerification"], "warning": "w"}
    docs = render(JOIN_TEMPLATE, join_vars(kube_join_cgroup_v1=v1))
    assert docs[0]["nodeRegistration"]["ignorePreflightErrors"] == ["SystemVerification"]


def test_templates_render_the_same_through_ansible(tmp_path: Path) -> None:
    """The real engine: ansible-playbook on localhost renders the three templates with the plugin."""
    playbook_bin = Path(sys.executable).with_name("ansible-playbook")
    if not playbook_bin.exists():
        found = shutil.which("ansible-playbook")
        if found is None:
            pytest.skip("ansible-playbook is not installed next to this Python interpreter")
        playbook_bin = Path(found)
    variables = {**init_vars(), **join_vars(), **calico_vars()}
    del variables["cluster_time_scale"]  # unset, as in an inventory without it: the templates default to 1
    jobs = {"init": INIT_TEMPLATE, "join": JOIN_TEMPLATE, "calico": CALICO_TEMPLATE}
    playbook = [
        {
            "name": "Render the Kubernetes templates",
            "hosts": "localhost",
            "gather_facts": False,
            "vars": {**variables, "ansible_python_interpreter": sys.executable},
            "tasks": [
                {
                    "name": f"Render {name}",
                    "ansible.builtin.template": {
                        "src": str(src),
                        "dest": str(tmp_path / f"{name}.yaml"),
                        "mode": "0600",
                    },
                }
                for name, src in jobs.items()
            ],
        }
    ]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(playbook))
    env = {
        **os.environ,
        "ANSIBLE_FILTER_PLUGINS": str(REPO / "filter_plugins"),
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"),
    }
    result = subprocess.run(
        [str(playbook_bin), "-i", "localhost,", "-c", "local", str(tmp_path / "play.yml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    renderers = {"init": init_vars(), "join": join_vars(), "calico": calico_vars()}
    for name, src in jobs.items():
        through_ansible = [d for d in yaml.safe_load_all((tmp_path / f"{name}.yaml").read_text()) if d is not None]
        assert through_ansible == render(src, renderers[name]), name
    # The documents are also valid JSON-serializable data (what kubectl/kubeadm parse).
    json.dumps(render(INIT_TEMPLATE, init_vars()))


@pytest.mark.parametrize(
    ("template", "variables"),
    [(INIT_TEMPLATE, init_vars), (JOIN_TEMPLATE, join_vars)],
    ids=["init", "join"],
)
def test_every_document_kubeadm_reads_has_a_kind(template: Path, variables: Callable[[], dict[str, Any]]) -> None:
    """kubeadm splits its --config file on '---' lines and refuses a document without apiVersion and
    kind, a comment-only header included (found by the first real `kubeadm init`)."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters.update(FILTERS)
    text = env.from_string(template.read_text()).render(**variables())
    chunks = [c for c in re.split(r"^---\s*$", text, flags=re.MULTILINE)]
    docs = [yaml.safe_load(c) for c in chunks if c.strip()]
    assert all(isinstance(d, dict) and d.get("apiVersion") and d.get("kind") for d in docs), text[:400]


def test_time_scale_multiplies_kubeadms_timeouts_and_the_leader_election() -> None:
    init, cluster, _ = render(
        INIT_TEMPLATE,
        init_vars(cluster_time_scale=4, kube_control_plane_scheduler_extra_args={"leader-elect-lease-duration": "30s"}),
    )
    assert init["timeouts"] == {
        "controlPlaneComponentHealthCheck": "960s",
        "kubeletHealthCheck": "960s",
        "kubernetesAPICall": "240s",
        "etcdAPICall": "480s",
        "tlsBootstrap": "1200s",
        "discovery": "1200s",
        "upgradeManifests": "1200s",
    }
    assert cluster["controllerManager"]["extraArgs"] == [
        {"name": "leader-elect-lease-duration", "value": "60s"},
        {"name": "leader-elect-renew-deadline", "value": "40s"},
        {"name": "leader-elect-retry-period", "value": "8s"},
    ]
    # What the operator set stays; the rest is scaled.
    assert cluster["scheduler"]["extraArgs"] == [
        {"name": "leader-elect-lease-duration", "value": "30s"},
        {"name": "leader-elect-renew-deadline", "value": "40s"},
        {"name": "leader-elect-retry-period", "value": "8s"},
    ]
    (join,) = render(JOIN_TEMPLATE, join_vars(cluster_time_scale=2.5))
    assert join["timeouts"]["discovery"] == "750s" and "upgradeManifests" not in join["timeouts"]


def test_time_scale_one_leaves_kubeadms_defaults_alone() -> None:
    init, cluster, _ = render(INIT_TEMPLATE, init_vars())
    assert "timeouts" not in init and "controllerManager" not in cluster and "scheduler" not in cluster
    (join,) = render(JOIN_TEMPLATE, join_vars())
    assert "timeouts" not in join


@pytest.mark.parametrize("bad", [0, 0.5, 21, "fast", True])
def test_time_scale_out_of_range_is_refused(bad: object) -> None:
    with pytest.raises(RENDER_ERRORS, match="time_scale"):
        render(INIT_TEMPLATE, init_vars(cluster_time_scale=bad))


def test_kubeadm_itself_accepts_the_scaled_documents(tmp_path: Path) -> None:
    """The bundle's kubeadm (`kubeadm config validate`) reads the scaled init and join documents."""
    from provisioner import bundle

    found = bundle.find(bundle.resolve_versions(None, None))
    if found is None:
        pytest.skip("the default bundle's kubeadm is not built here (scripts/test.sh builds the bundle before pytest)")
    kubeadm_bin = found.path / "bin" / "kubeadm"
    docs = {
        "init": render(INIT_TEMPLATE, init_vars(cluster_time_scale=4, kube_control_plane_kubernetes_version="v1.37.2")),
        "join": render(JOIN_TEMPLATE, join_vars(cluster_time_scale=4)),
    }
    for name, documents in docs.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(documents))
        proc = subprocess.run(
            [str(kubeadm_bin), "config", "validate", "--config", str(path)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, f"{name}: {proc.stdout}{proc.stderr}"


def test_time_scale_patches_the_static_pods_probes_through_kubeadms_patches_directory() -> None:
    init, _, _ = render(INIT_TEMPLATE, init_vars(cluster_time_scale=4))
    assert init["patches"] == {"directory": kubeadm.PATCHES_DIR}
    (control_plane,) = render(
        JOIN_TEMPLATE,
        join_vars(cluster_time_scale=4, kube_join_as_control_plane=True, kube_join_certificate_key=CERT_KEY),
    )
    assert control_plane["patches"] == {"directory": kubeadm.PATCHES_DIR}
    (worker,) = render(JOIN_TEMPLATE, join_vars(cluster_time_scale=4))
    assert "patches" not in worker  # a worker has no static pods
    patches = kubeadm.probe_patches(4)
    assert sorted(patches) == [f"{pod}+strategic.yaml" for pod in sorted(kubeadm.STATIC_PODS)]
    (apiserver,) = patches["kube-apiserver+strategic.yaml"]["spec"]["containers"]
    assert apiserver == {
        "name": "kube-apiserver",
        "livenessProbe": {"timeoutSeconds": 60, "failureThreshold": 32},
        "startupProbe": {"timeoutSeconds": 60, "failureThreshold": 96},
        "readinessProbe": {"timeoutSeconds": 60, "failureThreshold": 12},
    }
    assert kubeadm.probe_patches(1) == {} and kubeadm.probe_patches(2.5)["etcd+strategic.yaml"]["spec"]["containers"][
        0
    ]["livenessProbe"] == {"timeoutSeconds": 38, "failureThreshold": 20}
    init, _, _ = render(INIT_TEMPLATE, init_vars())
    assert "patches" not in init


def test_kubeadm_applies_the_probe_patches_to_every_static_pod(tmp_path: Path) -> None:
    """The bundle's kubeadm writes the static pod manifests (dry run) with the scaled probes."""
    from provisioner import bundle

    found = bundle.find(bundle.resolve_versions(None, None))
    if found is None:
        pytest.skip("the default bundle's kubeadm is not built here (scripts/test.sh builds the bundle before pytest)")
    patches = tmp_path / "patches"
    patches.mkdir()
    for name, patch in kubeadm.probe_patches(4).items():
        (patches / name).write_text(yaml.safe_dump(patch))
    init, cluster, kubelet = render(
        INIT_TEMPLATE, init_vars(cluster_time_scale=4, kube_control_plane_kubernetes_version="v1.37.2")
    )
    init["patches"] = {"directory": str(patches)}
    config = tmp_path / "init.yaml"
    config.write_text(yaml.safe_dump_all([init, cluster, kubelet]))
    out = tmp_path / "manifests"
    for phase in (["control-plane", "all"], ["etcd", "local"]):
        proc = subprocess.run(
            [str(found.path / "bin" / "kubeadm"), "init", "phase", *phase, "--config", str(config), "--dry-run"],
            capture_output=True, text=True, timeout=120, check=False,
            env={**os.environ, "KUBEADM_INIT_DRYRUN_DIR": str(out)},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
    for pod, probes in kubeadm.STATIC_PODS.items():
        (container,) = yaml.safe_load((out / f"{pod}.yaml").read_text())["spec"]["containers"]
        for probe, failures in probes.items():
            assert container[probe]["failureThreshold"] == failures * 4, (pod, probe, container[probe])
            assert container[probe]["timeoutSeconds"] == 60, (pod, probe, container[probe])
