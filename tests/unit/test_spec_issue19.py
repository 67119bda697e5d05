"""Issue 19, items 5, 6 and 8: spec input that crashed or was accepted and silently wrong."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from provisioner import spec as spec_module
from provisioner.cli import main
from provisioner.errors import SpecError
from provisioner.preflight import resolve_spec
from provisioner.spec import ClusterSpec, build_spec, check_engine_fields, load_file
from provisioner.workspace import Workspace


def _refused(data: dict[Any, Any], overrides: dict[str, Any] | None = None) -> str:
    with pytest.raises(SpecError) as info:
        build_spec(data, overrides)
    message = info.value.message
    assert message and "\n" not in message and info.value.exit_code == 2
    return message


def _load(tmp_path: Path, content: bytes | str) -> dict[str, Any]:
    path = tmp_path / "cluster.yml"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return load_file(path)


def _load_refused(tmp_path: Path, content: bytes | str) -> str:
    with pytest.raises(SpecError) as info:
        _load(tmp_path, content)
    message = info.value.message
    assert message and "\n" not in message and info.value.exit_code == 2
    return message


# Item 5: a binary or non-UTF-8 --config file


def test_a_non_utf8_config_file_is_refused_naming_the_encoding(tmp_path: Path) -> None:
    message = _load_refused(tmp_path, "name: caf\u00e9\n".encode("latin-1"))
    assert "is not UTF-8 text (byte 0xe9 at offset 9)" in message and "save it as UTF-8" in message


def test_a_binary_config_file_is_refused_as_binary(tmp_path: Path) -> None:
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10"
    assert "is a binary file, not YAML text; check the --config path" in _load_refused(tmp_path, png)
    assert "is a binary file" in _load_refused(tmp_path, b"name: lab\x00\n")


def test_a_directory_as_config_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="is a directory; give --config the path of a YAML file"):
        load_file(tmp_path)


def test_a_config_file_larger_than_a_spec_can_be_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    message = _load_refused(tmp_path, b"# padding\n" * 110_000)
    assert "is larger than 1 MiB" in message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("name: lab\nnodes: !!int three\n", "line 2"),
        ("name: 2001-13-45\n", "line 1"),
        ("name: !!bool maybe\n", "line 1"),
        ('name: !!float ""\n', "line 1"),
        ("name: !!timestamp 1\n", "line 1"),
        ("nodes: " + "[" * 1000 + "\n", "nests too deeply"),
    ],
)
def test_yaml_values_the_parser_cannot_construct_are_refused(tmp_path: Path, text: str, fragment: str) -> None:
    message = _load_refused(tmp_path, text)
    assert fragment in message


def test_keys_of_mixed_types_are_refused_not_a_traceback(tmp_path: Path) -> None:
    message = _refused(_load(tmp_path, "1: a\n~: b\n"))
    assert message.startswith("unknown spec field")
    assert _refused({"versions": {1: "a", None: "b"}}).startswith("unknown version key")
    assert "labels name node" in _refused({"labels": {1: {"a": "b"}, None: {}}})


# Item 6: Kubernetes (and Calico) versions


def test_the_installable_minors_are_data_in_one_place() -> None:
    assert spec_module.KUBE_MINORS == ("1.30", "1.31", "1.32", "1.33", "1.34", "1.35", "1.36", "1.37")


@pytest.mark.parametrize("version", ["1.30", "1.36", "1.36.2", "1.37", "1.37.2", "1.30.0"])
def test_known_minors_and_their_patches_are_accepted(version: str) -> None:
    assert build_spec(None, {"versions": {"kubernetes": version}}).versions["kubernetes"] == version


@pytest.mark.parametrize("version", ["1.99", "1.38", "1.38.0", "1.29", "1.3", "2.30", "1.036", "1.37.02", "1.37\n"])
def test_releases_the_toolkit_cannot_install_are_refused_naming_the_range(version: str) -> None:
    message = _refused({}, {"versions": {"kubernetes": version}})
    assert message.startswith(f"versions.kubernetes {version!r} is not a Kubernetes release this toolkit installs")
    assert "1.30 to 1.37" in message


def test_an_empty_kube_version_is_refused_not_the_default() -> None:
    message = _refused({}, {"versions": {"kubernetes": ""}})
    assert message == (
        "versions.kubernetes is empty; drop --kube-version (or versions.kubernetes) for the default 1.37.2, "
        "or give a release such as 1.37"
    )


def test_a_kubernetes_version_written_as_a_number_is_refused_telling_to_quote_it(tmp_path: Path) -> None:
    data = _load(tmp_path, "versions:\n  kubernetes: 1.30\n")
    assert _refused(data) == 'versions.kubernetes is the number 1.3 in the spec file; quote it: kubernetes: "1.30"'
    assert 'quote it: kubernetes: "1.36"' in _refused({"versions": {"kubernetes": 1.36}})
    assert 'quote it: kubernetes: "1.37"' in _refused({"versions": {"kubernetes": 1}})
    assert "must be a quoted version" in _refused({"versions": {"kubernetes": True}})
    assert "must be a quoted version" in _refused({"versions": {"kubernetes": None}})


@pytest.mark.parametrize("version", ["3.31", "3.31.0", "3.0", "3.29.4"])
def test_calico_versions_of_the_3_line_are_accepted(version: str) -> None:
    assert build_spec({"versions": {"calico": version}}).versions["calico"] == version


@pytest.mark.parametrize("version", ["latest", "4.0", "3", "v3.31.0", "3.31.0.1", "", "3.031"])
def test_calico_versions_of_another_shape_are_refused(version: str) -> None:
    assert _refused({"versions": {"calico": version}}).startswith(f"versions.calico {version!r} must be")


def test_a_calico_version_written_as_a_number_is_refused_telling_to_quote_it() -> None:
    assert _refused({"versions": {"calico": 3.31}}) == (
        'versions.calico is the number 3.31 in the spec file; quote it: calico: "3.31"'
    )


def test_the_runtime_version_is_a_string_or_empty() -> None:
    assert build_spec({"versions": {"runtime": "5:27.1.1-1~debian.12~bookworm"}}).versions["runtime"] != ""
    assert build_spec({"versions": {"runtime": None}}).versions["runtime"] == ""
    assert "quote it" in _refused({"versions": {"runtime": 27.1}})
    assert "versions.runtime must be" in _refused({"versions": {"runtime": ["27"]}})


# Item 8: accepted and silently wrong


def _list(*roles: str) -> list[dict[str, str]]:
    return [{"name": f"n{i + 1}", "role": role} for i, role in enumerate(roles)]


def test_a_node_list_with_an_even_number_of_managers_is_refused() -> None:
    message = _refused({"engine": "swarm", "nodes": _list("manager", "manager", "worker")})
    assert message.startswith("nodes lists 2 managers; a swarm needs 1, 3 or 5")


def test_a_node_list_with_seven_control_planes_is_refused() -> None:
    assert "nodes lists 7 control planes; give 1, 3 or 5" in _refused({"nodes": _list(*["control_plane"] * 7)})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"control_planes": 3, "nodes": _list("control_plane", "worker", "worker")},
            "control_planes is 3 but nodes lists 1 control plane (n1)",
        ),
        (
            {"control_planes": 1, "nodes": _list("control_plane", "control_plane", "control_plane")},
            "control_planes is 1 but nodes lists 3 control planes (n1, n2, n3)",
        ),
        (
            {"engine": "swarm", "managers": 3, "nodes": _list("manager", "worker")},
            "managers is 3 but nodes lists 1 manager (n1)",
        ),
    ],
)
def test_a_count_that_disagrees_with_the_node_list_is_refused_naming_both(data: dict[str, Any], message: str) -> None:
    assert _refused(data).startswith(message)


def test_a_node_list_alone_sets_the_counts() -> None:
    spec = build_spec({"nodes": _list("control_plane", "control_plane", "control_plane", "worker")})
    assert spec.control_planes == 3
    swarm = build_spec({"engine": "swarm", "nodes": _list("manager", "manager", "manager", "worker")})
    assert swarm.managers == 3
    agreeing = build_spec({"control_planes": 3, "nodes": _list("control_plane", "control_plane", "control_plane")})
    assert agreeing.control_planes == 3


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"nodes": 8, "control_planes": 7}, "control_planes must be 1, 3 or 5, not 7"),
        ({"engine": "swarm", "nodes": 8, "managers": 7}, "managers must be 1, 3 or 5, not 7"),
    ],
)
def test_more_than_five_control_planes_or_managers_are_refused(data: dict[str, Any], message: str) -> None:
    assert _refused(data).startswith(message)


def test_control_planes_flag_of_seven_is_refused_by_plan(tmp_path: Path) -> None:
    code = main(["--dir", str(tmp_path / "ws"), "plan", "--nodes", "8", "--control-planes", "7"])
    assert code == 2 and not (tmp_path / "ws").exists()


@pytest.mark.parametrize("name", ["lab-", "la--b", "lab\n", "a" * 32])
def test_cluster_names_ending_in_or_doubling_a_dash_are_refused(name: str) -> None:
    assert _refused({"name": name}).startswith(f"name {name!r} is invalid")


@pytest.mark.parametrize("node", ["cp-", "c--p", "cp\n"])
def test_node_names_ending_in_or_doubling_a_dash_are_refused(node: str) -> None:
    message = _refused({"nodes": [{"name": node, "role": "control_plane"}]})
    assert message.startswith(f"node name {node!r} is invalid")


def test_names_with_single_dashes_inside_are_accepted() -> None:
    spec = build_spec({"name": "my-lab-2", "nodes": [{"name": "cp-1", "role": "control_plane"}]})
    assert (spec.name, spec.nodes[0].name) == ("my-lab-2", "cp-1")


def test_managers_and_labels_with_kubernetes_are_refused_not_ignored() -> None:
    with pytest.raises(SpecError, match="managers is a Docker Swarm setting and does nothing with engine kubernetes"):
        check_engine_fields("kubernetes", {"engine", "managers"})
    with pytest.raises(SpecError, match="labels are Docker Swarm node labels and do nothing with engine kubernetes"):
        check_engine_fields("kubernetes", {"labels"})
    check_engine_fields("swarm", {"engine", "managers", "labels"})
    check_engine_fields("kubernetes", {"control_planes", "nodes"})


def test_managers_with_kubernetes_is_refused_by_plan(tmp_path: Path) -> None:
    code = main(["--dir", str(tmp_path / "ws"), "plan", "--nodes", "3", "--managers", "3"])
    assert code == 2 and not (tmp_path / "ws").exists()


def test_stored_labels_of_a_kubernetes_cluster_are_not_refused_again(tmp_path: Path) -> None:
    """Refused only when this run gives them: a stored value the user cannot drop is left alone."""
    ws = Workspace(tmp_path)
    inputs = {"nodes": 2, "labels": {"worker1": {"disk": "ssd"}}, "managers": 3}
    ws.save_spec(build_spec(inputs), inputs)
    spec, _ = resolve_spec(ws, {"nodes": 3}, None)
    assert len(spec.nodes) == 3


def test_offline_dir_without_the_offline_source_is_refused(tmp_path: Path) -> None:
    message = _refused({"offline_dir": str(tmp_path)})
    assert message.startswith("offline_dir is only read with runtime_source offline (this spec has auto)")
    assert build_spec({"offline_dir": ""}).offline_dir == ""


def test_offline_dir_must_be_an_existing_directory(tmp_path: Path) -> None:
    offline = {"runtime_source": "offline"}
    assert build_spec({**offline, "offline_dir": str(tmp_path)}).offline_dir == str(tmp_path)
    missing = _refused({**offline, "offline_dir": str(tmp_path / "missing")})
    assert missing.startswith(f"offline_dir {str(tmp_path / 'missing')!r} is not a directory on this machine")
    (tmp_path / "file").write_text("")
    assert "is not a directory" in _refused({**offline, "offline_dir": str(tmp_path / "file")})
    assert "must be an absolute path" in _refused({**offline, "offline_dir": "pkgs"})
    assert "must be the path of a directory" in _refused({**offline, "offline_dir": ["/srv/pkgs"]})
    assert "runtime_source offline needs offline_dir" in _refused({**offline, "offline_dir": None})


def test_offline_dir_under_home_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "pkgs").mkdir()
    spec = build_spec({"runtime_source": "offline", "offline_dir": "~/pkgs"})
    assert spec.offline_dir == str(tmp_path / "pkgs")


def test_duplicate_keys_in_the_spec_file_are_refused_naming_key_and_lines(tmp_path: Path) -> None:
    message = _load_refused(tmp_path, "nodes: 3\nname: a\nnodes: 5\n")
    assert message.endswith("gives 'nodes' twice (lines 1 and 3); keep one")
    nested = _load_refused(tmp_path, "versions:\n  kubernetes: '1.36'\n  kubernetes: '1.37'\n")
    assert "gives 'kubernetes' twice (lines 2 and 3)" in nested


def test_merge_keys_overridden_in_the_spec_file_are_not_duplicates(tmp_path: Path) -> None:
    text = "engine: swarm\nlabels:\n  worker1: &l {disk: ssd, zone: a}\n  worker2:\n    <<: *l\n    disk: hdd\n"
    spec = build_spec(_load(tmp_path, text))
    assert [n.labels for n in spec.nodes[1:]] == [{"disk": "ssd", "zone": "a"}, {"disk": "hdd", "zone": "a"}]


# Crashes and silently wrong values found while fixing the above (and by the property test)


def test_a_wide_node_network_is_planned_without_listing_its_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    """A /8 node network listed 16 million addresses (seconds and gigabytes) to pick the first few."""

    def boom(self: ipaddress.IPv4Network) -> Any:
        raise AssertionError("the plan listed every address of the network")

    monkeypatch.setattr(ipaddress.IPv4Network, "hosts", boom)
    spec = build_spec({"network": "172.16.0.0/12", "nodes": 4, "control_planes": 3})
    assert [n.ip for n in spec.nodes] == ["172.16.0.10", "172.16.0.11", "172.16.0.12", "172.16.0.13"]
    assert spec.api_vip == "172.16.0.9"


def test_a_node_list_is_held_to_the_same_limit_as_a_count() -> None:
    nodes = _list("control_plane", *["worker"] * 50)
    assert _refused({"nodes": nodes, "network": "10.20.0.0/16"}).startswith("nodes lists 51 nodes")


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"box": ["debian/bookworm64"]}, "box must be"),
        ({"box": None}, "box must be"),
        ({"image": 5}, "image must be"),
        ({"stack": {"a": 1}}, "stack must be"),
        ({"name": None}, "name must be"),
        ({"network": 3232249856}, "network must be"),
        ({"nodes": [{"name": 1, "role": "control_plane"}]}, "nodes[0] name must be"),
        ({"nodes": [{"name": "cp", "role": ["control_plane"]}]}, "nodes[0] role"),
        ({"engine": "swarm", "labels": {"worker1": {"disk": None}}}, "labels.worker1.disk must be"),
        ({"engine": "swarm", "labels": {"worker1": {"disk": {"a": 1}}}}, "labels.worker1.disk must be"),
        ({"engine": "swarm", "labels": {"worker1": {1: "a"}}}, "labels.worker1 must map"),
        ({"api_vip": ["192.168.56.9"], "control_planes": 3}, "api_vip must be"),
    ],
)
def test_values_of_the_wrong_type_are_refused_not_turned_into_text(data: dict[str, Any], fragment: str) -> None:
    assert fragment in _refused(data)


def test_a_self_referencing_value_is_refused_in_one_short_line(tmp_path: Path) -> None:
    message = _refused(_load(tmp_path, "name: &a [*a]\n"))
    assert message.startswith("name must be") and len(message) < 200


def test_specs_from_valid_inputs_still_round_trip(tmp_path: Path) -> None:
    spec = build_spec({"engine": "swarm", "labels": {"worker1": {"disk": "ssd", "n": 1}}})
    assert ClusterSpec.from_dict(spec.to_dict()) == spec
    assert spec.nodes[1].labels == {"disk": "ssd", "n": "1"}
