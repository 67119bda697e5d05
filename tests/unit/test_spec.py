"""Cluster spec: merging, validation and the node/network plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from provisioner.errors import SpecError
from provisioner.spec import ClusterSpec, build_spec, check_engine_fields, load_file


def test_defaults_plan_classic_lab() -> None:
    spec = build_spec()
    assert [(n.name, n.role, n.ip) for n in spec.nodes] == [
        ("cp1", "control_plane", "192.168.56.10"),
        ("worker1", "worker", "192.168.56.11"),
        ("worker2", "worker", "192.168.56.12"),
    ]
    assert spec.pod_cidr == "10.244.0.0/16"
    assert spec.service_cidr == "10.96.0.0/12"
    assert spec.groups()["kube_control_plane"] == ["cp1"]
    assert spec.groups()["kube_node"] == ["worker1", "worker2"]


def test_flags_override_file() -> None:
    spec = build_spec({"nodes": 2, "engine": "swarm"}, {"nodes": 5, "managers": 3})
    assert [n.name for n in spec.nodes] == ["manager1", "manager2", "manager3", "worker1", "worker2"]
    assert spec.groups()["swarm_manager"] == ["manager1", "manager2", "manager3"]
    assert spec.nodes[-1].ip == "192.168.56.14"


def test_explicit_node_list_puts_control_plane_first() -> None:
    spec = build_spec({"nodes": [{"name": "w", "role": "worker"}, {"name": "boss", "role": "control_plane"}]})
    assert [(n.name, n.ip) for n in spec.nodes] == [("boss", "192.168.56.10"), ("w", "192.168.56.11")]


def test_roundtrip_through_dict() -> None:
    spec = build_spec({"labels": {"worker1": {"zone": "a"}}})
    again = ClusterSpec.from_dict(spec.to_dict())
    assert again == spec
    assert again.nodes[1].labels == {"zone": "a"}


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"nodes": 0}, "nodes must be at least 1"),
        ({"nodes": "three"}, "nodes must be a count"),
        ({"provider": "hyperv"}, "provider 'hyperv' is not supported"),
        ({"engine": "nomad"}, "engine 'nomad' is not supported"),
        ({"pod_cidr": "192.168.0.0/16"}, "network 192.168.56.0/24 overlaps pod_cidr 192.168.0.0/16"),
        ({"service_cidr": "10.244.0.0/12"}, "is not a valid IPv4 network"),
        ({"service_cidr": "10.240.0.0/12"}, "pod_cidr 10.244.0.0/16 overlaps service_cidr 10.240.0.0/12"),
        ({"network": "not-a-net"}, "network 'not-a-net' is not a valid IPv4 network"),
        ({"managers": 2, "engine": "swarm"}, "managers must be an odd number"),
        ({"engine": "swarm", "nodes": 1, "managers": 3}, "managers (3) cannot exceed nodes (1)"),
        ({"colour": "blue"}, "unknown spec field 'colour'"),
        ({"name": "Bad_Name"}, "name 'Bad_Name' is invalid"),
        ({"nodes": [{"name": "a", "role": "worker"}]}, "nodes has no control_plane"),
        ({"nodes": [{"name": "a", "role": "control_plane"}, {"name": "a", "role": "worker"}]}, "used twice"),
        ({"labels": {"ghost": {"a": "b"}}}, "labels name node 'ghost'"),
        ({"versions": {"kubernetes": "latest"}}, "versions.kubernetes 'latest'"),
        ({"engine": "swarm", "runtime": "containerd"}, "engine swarm needs runtime docker"),
        ({"nodes": 60}, "nodes must be at most 50"),
        ({"network": "192.168.56.0/29"}, "too small"),
    ],
)
def test_bad_specs_are_refused_with_one_sentence(data: dict[str, object], fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        build_spec(data)
    assert fragment in info.value.message
    assert "\n" not in info.value.message
    assert info.value.exit_code == 2


def test_load_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("nodes: [1, 2\n")
    with pytest.raises(SpecError, match="not valid YAML at line"):
        load_file(bad)
    listy = tmp_path / "list.yml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(SpecError, match="must be a YAML mapping"):
        load_file(listy)
    with pytest.raises(SpecError, match="cannot read the cluster spec"):
        load_file(tmp_path / "missing.yml")


def test_runtime_source_auto_depends_on_provider() -> None:
    assert build_spec({"provider": "docker"}).effective_runtime_source == "distro"
    assert build_spec({"provider": "libvirt"}).effective_runtime_source == "upstream"
    assert build_spec({"provider": "docker", "runtime_source": "upstream"}).effective_runtime_source == "upstream"


@pytest.mark.parametrize(
    ("url", "stored"),
    [
        ("", ""),
        (None, ""),
        ("http://192.168.56.1:3142", "http://192.168.56.1:3142"),
        ("http://192.168.56.1:3142/", "http://192.168.56.1:3142"),
        ("https://proxy.example.com", "https://proxy.example.com"),
        ("http://apt-cache:3142", "http://apt-cache:3142"),
        ("http://[fd00::1]:3142", "http://[fd00::1]:3142"),
    ],
)
def test_package_proxy_accepts_http_urls(url: str | None, stored: str) -> None:
    spec = build_spec({"package_proxy": url})
    assert spec.package_proxy == stored
    assert ClusterSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    "url",
    [
        "ftp://192.168.56.1:3142",
        "http://",
        "http://:3142",
        "http://proxy host:3142",
        " http://192.168.56.1:3142",
        "/var/cache/apt",
        "192.168.56.1:3142",
        "http://192.168.56.1:3142/acng",
        "http://user:secret@192.168.56.1:3142",
        "http://192.168.56.1:3142?x=1",
        "http://192.168.56.1:0",
        "http://192.168.56.1:70000",
        "http://192.168.56.300:3142",
        "http://[1.2.3.4]:3142",
        "http://192.168.56.1:3142\n",
        3142,
    ],
)
def test_package_proxy_refuses_anything_but_a_host_and_port(url: object) -> None:
    with pytest.raises(SpecError) as info:
        build_spec({"package_proxy": url})
    assert "package_proxy" in info.value.message
    assert "http://192.168.56.1:3142" in info.value.message  # the fix: an example of a valid value
    assert "\n" not in info.value.message
    assert info.value.exit_code == 2


def test_package_proxy_flag_overrides_the_file_and_empty_clears_it() -> None:
    file_data = {"package_proxy": "http://10.0.0.1:3142"}
    assert build_spec(file_data).package_proxy == "http://10.0.0.1:3142"
    assert build_spec(file_data, {"package_proxy": "http://10.0.0.2"}).package_proxy == "http://10.0.0.2"
    assert build_spec(file_data, {"package_proxy": ""}).package_proxy == ""


def test_saved_spec_without_package_proxy_still_loads() -> None:
    data = build_spec().to_dict()
    del data["package_proxy"]  # cluster.json written before the field existed
    assert ClusterSpec.from_dict(data).package_proxy == ""


def test_pod_cidr_with_swarm_is_refused_not_ignored() -> None:
    """--pod-cidr used to be accepted with --engine swarm and to do nothing (issue 14, item 5)."""
    from provisioner.spec import check_engine_fields

    with pytest.raises(SpecError, match="pod_cidr is a Kubernetes setting and does nothing with engine swarm"):
        check_engine_fields("swarm", {"engine", "pod_cidr"})
    with pytest.raises(SpecError, match="service_cidr"):
        check_engine_fields("swarm", {"service_cidr"})
    check_engine_fields("swarm", {"engine", "nodes"})
    check_engine_fields("kubernetes", {"pod_cidr"})


def test_pod_cidr_with_swarm_is_refused_by_plan_before_anything_is_made(tmp_path: Path) -> None:
    from provisioner.cli import main

    code = main(["--dir", str(tmp_path / "ws"), "plan", "--engine", "swarm", "--pod-cidr", "10.50.0.0/16"])
    assert code == 2 and not (tmp_path / "ws").exists()


# Several control planes (issue 15)


def test_three_control_planes_come_first_with_a_vip_below_them() -> None:
    spec = build_spec({"nodes": 4, "control_planes": 3})
    assert [(n.name, n.role, n.ip) for n in spec.nodes] == [
        ("cp1", "control_plane", "192.168.56.10"),
        ("cp2", "control_plane", "192.168.56.11"),
        ("cp3", "control_plane", "192.168.56.12"),
        ("worker1", "worker", "192.168.56.13"),
    ]
    assert (spec.control_planes, spec.api_vip) == (3, "192.168.56.9")
    assert build_spec({"nodes": 3}).api_vip == ""


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"nodes": 4, "control_planes": 2}, "control_planes must be an odd number"),
        ({"nodes": 2, "control_planes": 3}, r"control_planes \(3\) cannot exceed nodes \(2\)"),
        ({"nodes": 4, "control_planes": 3, "api_vip": "192.168.56.11"}, "is node cp2's address"),
        ({"nodes": 4, "control_planes": 3, "api_vip": "10.1.1.1"}, "not a host address of the node network"),
        ({"nodes": 3, "api_vip": "192.168.56.9"}, "drop it, or set control_planes: 3"),
        (
            {"nodes": [{"name": "a", "role": "control_plane"}, {"name": "b", "role": "control_plane"}]},
            "lists 2 control planes",
        ),
    ],
)
def test_control_plane_counts_and_vips_are_checked(data: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        build_spec(data)


def test_control_planes_with_swarm_points_to_managers() -> None:
    with pytest.raises(SpecError, match="use --managers 3"):
        check_engine_fields("swarm", {"control_planes"})


def test_swarm_address_pool_defaults_to_dockers_own_pool_and_takes_a_cidr() -> None:
    assert build_spec({"engine": "swarm"}).swarm_address_pool == "10.0.0.0/8"
    assert (
        build_spec({"engine": "swarm"}, {"swarm_address_pool": "172.30.0.0/16"}).swarm_address_pool == "172.30.0.0/16"
    )
    data = build_spec({"engine": "swarm"}).to_dict()
    del data["swarm_address_pool"]  # cluster.json written before the field existed
    assert ClusterSpec.from_dict(data).swarm_address_pool == "10.0.0.0/8"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"swarm_address_pool": "10.0.0.0/33"}, "swarm_address_pool '10.0.0.0/33' is not a valid IPv4 network"),
        ({"swarm_address_pool": "10.1.0.1/16"}, "is not a valid IPv4 network in CIDR form with its host bits clear"),
        ({"swarm_address_pool": "10.9.9.0/25"}, "smaller than the /24 overlay networks"),
        (
            {"network": "10.20.0.0/24"},
            "network 10.20.0.0/24 overlaps swarm_address_pool 10.0.0.0/8; choose non-overlapping ranges "
            "(defaults: network 192.168.56.0/24, swarm_address_pool 10.0.0.0/8)",
        ),
        (
            {"swarm_address_pool": "192.168.0.0/16"},
            "network 192.168.56.0/24 overlaps swarm_address_pool 192.168.0.0/16",
        ),
    ],
)
def test_swarm_address_pool_is_validated_for_swarm(data: dict[str, object], fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        build_spec({"engine": "swarm", **data})
    assert fragment in info.value.message


def test_each_engine_checks_only_its_own_ranges_against_the_node_network() -> None:
    # The pod and service CIDRs mean nothing to a swarm, and the overlay pool nothing to kubernetes.
    swarm = build_spec({"engine": "swarm", "network": "10.244.1.0/24", "swarm_address_pool": "172.30.0.0/16"})
    assert swarm.network == "10.244.1.0/24"
    assert build_spec({"network": "10.20.0.0/24"}).network == "10.20.0.0/24"


def test_swarm_address_pool_with_kubernetes_is_refused_not_ignored() -> None:
    from provisioner.spec import check_engine_fields

    with pytest.raises(SpecError, match="swarm_address_pool is a Docker Swarm setting and does nothing with engine"):
        check_engine_fields("kubernetes", {"swarm_address_pool"})
    check_engine_fields("swarm", {"engine", "swarm_address_pool"})
