"""The spec's mirrors (provisioner/spec.py _mirrors) and the role variables they become
(provisioner/inventory.py mirror_vars)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner.errors import SpecError
from provisioner.inventory import mirror_vars
from provisioner.spec import ClusterSpec, build_spec, check_engine_fields

CA = "-----BEGIN CERTIFICATE-----\nMIIBdGVzdA==\n-----END CERTIFICATE-----\n"


def test_mirrors_become_the_roles_variables_and_survive_the_state_file(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text(CA)
    spec = build_spec(
        {
            "mirrors": {
                "kubernetes_packages": "https://mirror.example.internal/core:/stable:/",
                "calico_manifests": "https://mirror.example.internal/calico",
                "gateway_api_manifests": "https://mirror.example.internal/gateway-api/",
                "registries": {
                    "registry.k8s.io": "https://mirror.example.internal:5000",
                    "docker.io": ["https://a.example.internal/v2/docker.io", "https://b.example.internal"],
                },
                "registry_ca": str(ca),
            }
        }
    )
    assert ClusterSpec.from_dict(spec.to_dict()) == spec
    assert mirror_vars(spec.mirrors) == {
        "kube_packages_repo_base_url": "https://mirror.example.internal/core:/stable:",
        "calico_manifest_base_url": "https://mirror.example.internal/calico",
        "traefik_ingress_gateway_api_base_url": "https://mirror.example.internal/gateway-api",
        "container_runtime_registry_mirrors": {
            "registry.k8s.io": ["https://mirror.example.internal:5000"],
            "docker.io": ["https://a.example.internal/v2/docker.io", "https://b.example.internal"],
        },
        "container_runtime_registry_ca": CA,
    }
    assert mirror_vars(build_spec().mirrors) == {}


@pytest.mark.parametrize(
    ("mirrors", "words"),
    [
        ({"packages": "https://m.invalid"}, "has no key packages"),
        ({"kubernetes_packages": "ftp://m.invalid"}, "not an http:// or https:// URL"),
        ({"kubernetes_packages": "m.invalid"}, "not an http:// or https:// URL"),
        ({"registries": {"registry.k8s.io/x": "https://m.invalid"}}, "not a registry name"),
        ({"registries": {"quay.io": []}}, "a mirror URL or a list"),
        ({"registries": ["https://m.invalid"]}, "must map a registry name"),
        ({"registries": {"quay.io": "https://m.invalid"}, "registry_ca": "ca.pem"}, "absolute path"),
        ({"registries": {"quay.io": "https://m.invalid"}, "registry_ca": "/nonexistent/ca.pem"}, "cannot be read"),
        ({"registry_ca": "/etc/hostname"}, "holds no PEM certificate"),
        ("https://m.invalid", "must be a mapping"),
    ],
)
def test_malformed_mirrors_are_refused_with_one_sentence(mirrors: Any, words: str) -> None:
    with pytest.raises(SpecError, match=words) as caught:
        build_spec({"mirrors": mirrors})
    assert "\n" not in str(caught.value)


def test_mirrors_are_refused_with_swarm() -> None:
    with pytest.raises(SpecError, match="do nothing with engine swarm"):
        check_engine_fields("swarm", {"engine", "mirrors"})
    check_engine_fields("kubernetes", {"engine", "mirrors"})


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40))
def test_any_text_as_a_mirror_url_is_accepted_as_a_url_or_refused_clearly(text: str) -> None:
    try:
        spec = build_spec({"mirrors": {"calico_manifests": text}})
    except SpecError as exc:
        assert "calico_manifests" in str(exc)
    else:
        url = spec.mirrors.get("calico_manifests", "")
        assert not text or (url.startswith(("http://", "https://")) and not url.endswith("/") and " " not in url)


def test_kube_source_auto_asks_the_package_mirror_when_there_is_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from provisioner import kubesource, providers

    asked: list[str] = []

    def unreachable(url: str = providers.PKGS_K8S_IO, timeout: float = 5.0) -> str:
        asked.append(url)
        return "" if "mirror" in url else "no route"

    monkeypatch.setattr(providers, "pkgs_k8s_io_unreachable", unreachable)
    mirrored = build_spec(
        {"provider": "libvirt", "mirrors": {"kubernetes_packages": "https://mirror.example.internal/k8s"}}
    )
    assert kubesource.kube_source_choice(mirrored) == (
        "upstream",
        "the package mirror https://mirror.example.internal/k8s answers",
    )
    assert kubesource.kube_source_choice(build_spec({"provider": "libvirt"})) == (
        "bundle",
        "pkgs.k8s.io does not answer here (no route)",
    )
    assert asked == ["https://mirror.example.internal/k8s/", providers.PKGS_K8S_IO]


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://m.invalid:5000", True),
        ("https://m.invalid:5000/", True),
        ("https://m.invalid:5000/v2/quay.io", True),
        ("https://m.invalid/k8s", False),
        ('https://m.invalid/v2/a"b', False),
    ],
)
def test_a_registry_mirror_path_is_the_registry_apis_or_none(url: str, ok: bool) -> None:
    mirrors = {"registries": {"quay.io": url}}
    if ok:
        assert build_spec({"mirrors": mirrors}).mirrors["registries"]["quay.io"] == [url.rstrip("/")]
    else:
        with pytest.raises(SpecError, match=r"quay\.io"):
            build_spec({"mirrors": mirrors})
