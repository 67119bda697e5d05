"""Property: every input, from random bytes to random mappings of the spec's keys and values, ends as a
valid spec or as the toolkit's one error type with a one-line message, never another exception.

Hypothesis draws the inputs (250 per property, a few seconds, so the unit suite stays quick). Its
example database is off: a failure prints the smallest input it found, which is the thing to turn
into a plain test beside the fix. (Hypothesis still keeps a cache in .hypothesis/, which carries
its own .gitignore.)
"""

from __future__ import annotations

import ipaddress
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisioner import spec as spec_module
from provisioner.errors import ProvisionError
from provisioner.spec import ClusterSpec, build_spec, check_engine_fields, load_file

PROPERTY = settings(max_examples=250, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# Any value YAML (or a saved cluster.json) can hold.
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12), st.sampled_from(["", "3", "1.37"])
)
anything = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=8,
)


def _cidr(address: ipaddress.IPv4Address, prefix: int, strict: bool) -> str:
    if strict:
        return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))
    return f"{address}/{prefix}"


cidrs = st.one_of(
    st.builds(_cidr, st.ip_addresses(v=4), st.integers(0, 32), st.booleans()),
    st.sampled_from(["192.168.56.0/24", "10.244.0.0/16", "10.96.0.0/12", "172.30.0.0/16", "10.0.0.0/8", "::/0"]),
)
counts = st.one_of(st.integers(-1, 8), st.integers(-1, 60).map(str))
versions = st.fixed_dictionaries(
    {},
    optional={
        "kubernetes": st.one_of(
            st.sampled_from(["1.30", "1.37", "1.37.2", "1.38", "1.99", "", "1.3", "v1.36"]),
            st.floats(1, 2),
            st.from_regex(r"1\.[0-9]{1,3}(\.[0-9]{1,2})?", fullmatch=True),
            anything,
        ),
        "calico": st.one_of(st.sampled_from(["3.31", "3.31.0", "4.0"]), st.floats(3, 4), anything),
        "runtime": st.one_of(st.sampled_from(["", "27.5.1"]), anything),
    },
)
node_names = st.one_of(st.sampled_from(["cp1", "worker1", "manager1", "n1", "n2", "cp-", "c--p", "Cp"]), anything)
node_lists = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {"name": node_names}, optional={"role": st.sampled_from(["control_plane", "manager", "worker", "boss"])}
        ),
        anything,
    ),
    max_size=7,
)
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "name": st.one_of(
        st.sampled_from(["lab", "my-lab", "lab-", "la--b", "Lab", "a" * 31, "a" * 32]),
        st.from_regex(r"[a-z][a-z0-9-]{0,33}", fullmatch=True),
    ),
    "nodes": st.one_of(counts, node_lists),
    "provider": st.sampled_from([*spec_module.PROVIDERS, "hyperv"]),
    "box": st.sampled_from(["debian/bookworm64", ""]),
    "image": st.sampled_from(["", "provisioner/node-runtime"]),
    "cpus": counts,
    "memory": st.sampled_from([512, 2048, "4096", 100]),
    "network": cidrs,
    "pod_cidr": cidrs,
    "service_cidr": cidrs,
    "swarm_address_pool": cidrs,
    "engine": st.sampled_from(spec_module.ENGINES),
    "managers": counts,
    "control_planes": counts,
    "api_vip": st.one_of(st.just(""), st.ip_addresses(v=4).map(str), st.sampled_from(["192.168.56.9", "10.0.0.1"])),
    "runtime": st.sampled_from(spec_module.RUNTIMES),
    "runtime_source": st.sampled_from(spec_module.RUNTIME_SOURCES),
    "offline_dir": st.sampled_from(["", tempfile.gettempdir(), "/nonexistent/pkgs", "pkgs", "~", "~nobody-here/x"]),
    "versions": versions,
    "labels": st.dictionaries(
        node_names.filter(lambda k: isinstance(k, str)),
        st.one_of(st.dictionaries(st.text(max_size=5), scalars, max_size=3), anything),
        max_size=3,
    ),
    "stack": st.sampled_from(["", "stack.yml"]),
    "package_proxy": st.sampled_from(["", "http://192.168.56.1:3142", "ftp://x", "http://[1.2.3.4]:1"]),
    "kube_source": st.sampled_from(spec_module.KUBE_SOURCES),
    "storage": st.sampled_from([True, False, "yes", 1, None]),
    "metrics": st.sampled_from([True, False, "no", 0, None]),
    "ingress": st.sampled_from([True, False, "yes", 1, None]),
    "mirrors": st.one_of(
        st.just({}),
        st.fixed_dictionaries(
            {},
            optional={
                "kubernetes_packages": st.sampled_from(["https://m.invalid/core:/stable:", "m.invalid", ""]),
                "calico_manifests": st.sampled_from(["http://m.invalid:8080/calico/", 7]),
                "gateway_api_manifests": st.sampled_from(["http://m.invalid/gateway-api", "ftp://m.invalid"]),
                "registries": st.dictionaries(
                    st.sampled_from(["registry.k8s.io", "quay.io", "bad/name", ""]),
                    st.one_of(st.just("https://m.invalid:5000"), st.lists(st.sampled_from(["https://a.invalid", "x"]))),
                    max_size=2,
                ),
                "registry_ca": st.sampled_from(["", "/nonexistent/ca.pem", "relative.pem"]),
                "other": st.just(1),
            },
        ),
        anything,
    ),
    "time_scale": st.one_of(
        st.sampled_from([1, 4, 2.5, 0, 21, "4", True, None, float("nan"), float("inf")]),
        st.floats(allow_nan=True, allow_infinity=True),
    ),
}
assert set(PLAUSIBLE) == spec_module.KNOWN_KEYS


def _mostly(plausible: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """The plausible values nine times in ten, so that most inputs get past the first field checked."""
    return st.integers(0, 9).flatmap(lambda i: other if i == 0 else plausible)


hashable = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8))
mappings = st.builds(
    lambda known, extra: {**extra, **known},
    st.fixed_dictionaries({}, optional={k: _mostly(v, anything) for k, v in PLAUSIBLE.items()}),
    _mostly(st.just({}), st.dictionaries(hashable, anything, max_size=2)),
)


def _check(file_data: dict[Any, Any], overrides: dict[str, Any] | None = None) -> None:
    try:
        spec = build_spec(file_data, overrides)
        check_engine_fields(spec.engine, {str(k) for k in [*file_data, *(overrides or {})]})
    except ProvisionError as exc:
        _one_line(exc)
        return
    _consistent(spec)


def _one_line(exc: ProvisionError) -> None:
    assert exc.exit_code == 2
    assert exc.message.strip(), "an empty message"
    assert exc.message.splitlines() == [exc.message], f"a message of several lines: {exc.message!r}"


def _consistent(spec: ClusterSpec) -> None:
    """What a valid spec promises: it round-trips, its nodes have their own names and addresses on
    the node network, and its versions and counts are ones the toolkit makes."""
    assert ClusterSpec.from_dict(spec.to_dict()) == spec
    names = [n.name for n in spec.nodes]
    ips = [n.ip for n in spec.nodes]
    assert len(set(names)) == len(names) and len(set(ips)) == len(ips)
    network = ipaddress.ip_network(spec.network)
    assert all(ipaddress.ip_address(ip) in network for ip in ips)
    lead = "control_plane" if spec.engine == "kubernetes" else "manager"
    assert sum(n.role == lead for n in spec.nodes) in (1, 3, 5)
    assert ".".join(spec.versions["kubernetes"].split(".")[:2]) in spec_module.KUBE_MINORS
    assert all(isinstance(v, str) for v in spec.versions.values())


@PROPERTY
@given(mappings)
def test_any_mapping_of_the_spec_keys_is_a_spec_or_one_spec_error(data: dict[Any, Any]) -> None:
    _check(data)


@PROPERTY
@given(mappings, st.fixed_dictionaries({}, optional={k: st.text(max_size=12) for k in sorted(PLAUSIBLE)}))
def test_file_data_and_flags_as_text_are_a_spec_or_one_spec_error(data: dict[Any, Any], flags: dict[str, Any]) -> None:
    if "versions" in flags:  # --kube-version is the only versions flag
        flags["versions"] = {"kubernetes": flags["versions"]}
    flags.pop("labels", None)  # no flag; a text value is a file's problem, covered above
    _check(data, flags)


# File contents: random bytes, YAML dumped from random mappings, and text made of YAML pieces that
# PyYAML's constructors trip over (tags, dates, anchors, merge keys, flow collections).
yaml_pieces = st.sampled_from(
    [
        "1.30", "!!int three", "!!float ''", "!!bool maybe", "!!timestamp 1", "2001-13-45", "2001-01-01",
        "&a [*a]", "*nope", "{a: 1, a: 2}", "[1, 2", "!!binary aGk=", "!!set {a}", "!!python/object:os.system",
        "<<: {x: 1}", "~", "yes", "0x1F", "1_000", "190:20:30", "'quoted'", "\"\\x00\"", ".nan", "-.inf", "|\n  text",
    ]
)  # fmt: skip
yaml_lines = st.lists(
    st.tuples(
        st.sampled_from([*sorted(spec_module.KNOWN_KEYS), "kubernetes", "  kubernetes", "- name", "?"]), yaml_pieces
    ),
    max_size=6,
).map(lambda lines: "".join(f"{k}: {v}\n" for k, v in lines))
file_contents = st.one_of(
    st.binary(max_size=300),
    mappings.map(lambda m: yaml.safe_dump(m).encode()).filter(lambda b: len(b) < 100_000),
    yaml_lines.map(str.encode),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("spec") / "cluster.yml"


@PROPERTY
@given(content=file_contents)
def test_any_config_file_is_a_spec_or_one_spec_error(spec_path: Path, content: bytes) -> None:
    spec_path.write_bytes(content)
    try:
        data = load_file(spec_path)
    except ProvisionError as exc:
        _one_line(exc)
        return
    assert isinstance(data, dict)
    _check(data)
