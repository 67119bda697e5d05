"""pkgs.k8s.io repositories, package pins, the cgroup check and offline plans (no network)."""

from __future__ import annotations

import pytest

from provisioner import kubeconf
from provisioner.kubeconf import KubeConfigError


@pytest.mark.parametrize(
    ("version", "family", "url", "key_url"),
    [
        pytest.param(
            "1.36",
            "deb",
            "https://pkgs.k8s.io/core:/stable:/v1.36/deb/",
            "https://pkgs.k8s.io/core:/stable:/v1.36/deb/Release.key",
            id="deb-minor",
        ),
        pytest.param(
            "1.36.2",
            "deb",
            "https://pkgs.k8s.io/core:/stable:/v1.36/deb/",
            "https://pkgs.k8s.io/core:/stable:/v1.36/deb/Release.key",
            id="deb-patch",
        ),
        pytest.param(
            "1.36",
            "rpm",
            "https://pkgs.k8s.io/core:/stable:/v1.36/rpm/",
            "https://pkgs.k8s.io/core:/stable:/v1.36/rpm/repodata/repomd.xml.key",
            id="rpm-minor",
        ),
        pytest.param(
            "v1.35.4",
            "rpm",
            "https://pkgs.k8s.io/core:/stable:/v1.35/rpm/",
            "https://pkgs.k8s.io/core:/stable:/v1.35/rpm/repodata/repomd.xml.key",
            id="rpm-patch-with-v",
        ),
    ],
)
def test_repository_urls(version: str, family: str, url: str, key_url: str) -> None:
    repo = kubeconf.pkgs_repository(version, family)
    assert repo["url"] == url
    assert repo["key_url"] == key_url


def test_repository_mirror_base() -> None:
    repo = kubeconf.pkgs_repository("1.36.2", "deb", "https://mirror.example.test/k8s/")
    assert repo["url"] == "https://mirror.example.test/k8s/v1.36/deb/"


@pytest.mark.parametrize("version", ["1.36", "1.36.2"])
def test_apt_deb822_source(version: str) -> None:
    text = kubeconf.apt_sources(version, "/etc/apt/keyrings/kubernetes-apt-keyring.asc")
    fields = dict(line.split(": ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert fields == {
        "Types": "deb",
        "URIs": "https://pkgs.k8s.io/core:/stable:/v1.36/deb/",
        "Suites": "/",
        "Signed-By": "/etc/apt/keyrings/kubernetes-apt-keyring.asc",
    }
    assert "Components" not in text  # a flat repository has none


def test_apt_source_needs_an_absolute_keyring() -> None:
    with pytest.raises(KubeConfigError, match="must be absolute"):
        kubeconf.apt_sources("1.36", "keyring.asc")


@pytest.mark.parametrize(
    ("version", "family", "expected"),
    [
        ("1.36.2", "deb", ["kubelet=1.36.2-*", "kubeadm=1.36.2-*", "kubectl=1.36.2-*", "cri-tools"]),
        ("1.36", "deb", ["kubelet=1.36.*", "kubeadm=1.36.*", "kubectl=1.36.*", "cri-tools"]),
        ("1.36.2", "rpm", ["kubelet-1.36.2", "kubeadm-1.36.2", "kubectl-1.36.2", "cri-tools"]),
        ("1.36", "rpm", ["kubelet-1.36.*", "kubeadm-1.36.*", "kubectl-1.36.*", "cri-tools"]),
    ],
)
def test_package_pins(version: str, family: str, expected: list[str]) -> None:
    assert kubeconf.package_pins(version, family) == expected


@pytest.mark.parametrize("family", ["deb", "rpm"])
@pytest.mark.parametrize("version", ["1.36", "1.36.2", "1.38.0"])
def test_cri_tools_is_never_pinned_to_the_kubernetes_version(version: str, family: str) -> None:
    """A per-minor repository need not carry the cri-tools of its minor: cri-tools goes in by name (and is held)."""
    assert kubeconf.package_pins(version, family, ["kubeadm", "cri-tools"])[1] == "cri-tools"


def test_pins_leave_other_packages_to_the_repository() -> None:
    assert kubeconf.package_pins("1.36.2", "deb", ["kubeadm", "kubernetes-cni"]) == [
        "kubeadm=1.36.2-*",
        "kubernetes-cni",
    ]


@pytest.mark.parametrize("version", ["1.36.x", "2.0", "latest", "", "1"])
def test_bad_versions_are_refused(version: str) -> None:
    with pytest.raises(KubeConfigError, match="is not a Kubernetes version"):
        kubeconf.parse_kube_version(version)


def test_unknown_family_is_refused() -> None:
    with pytest.raises(KubeConfigError, match='"apk" is not supported'):
        kubeconf.pkgs_repository("1.36", "apk")


def test_version_info() -> None:
    assert kubeconf.kube_version_info("1.36.2") == {"series": "1.36", "full": "1.36.2", "minor": 36, "patch": 2}
    assert kubeconf.kube_version_info("1.36") == {"series": "1.36", "full": "", "minor": 36, "patch": -1}


@pytest.mark.parametrize(
    ("version", "v2", "allow", "fails", "fragment"),
    [
        pytest.param("1.36", True, False, False, "", id="v2-ok"),
        pytest.param("1.36", False, False, False, "", id="v1-136-runs-with-failcgroupv1-false"),
        pytest.param("1.37.2", False, False, False, "", id="v1-137-last-with-the-switch"),
        pytest.param("1.38", False, True, True, "refuses to run on cgroup v1", id="v1-138-refused-allow-does-not-help"),
        pytest.param("1.34", False, False, True, "kube_packages_allow_cgroup_v1", id="v1-134-needs-allow"),
        pytest.param("1.34.3", False, True, False, "", id="v1-134-allowed"),
    ],
)
def test_cgroup_check(version: str, v2: bool, allow: bool, fails: bool, fragment: str) -> None:
    message = kubeconf.cgroup_error(version, v2, allow)
    assert bool(message) == fails
    assert fragment in message
    if fails:
        assert "systemd.unified_cgroup_hierarchy=1" in message


@pytest.mark.parametrize(
    ("version", "v2", "expected"),
    [
        ("1.37.2", False, {"failCgroupV1": False}),
        ("1.35", False, {"failCgroupV1": False}),
        ("1.37.2", True, {}),
        ("1.34", False, {}),
        ("1.38", False, {}),
    ],
)
def test_cgroup_v1_settings_only_where_the_switch_exists(version: str, v2: bool, expected: dict[str, object]) -> None:
    settings = kubeconf.cgroup_v1_settings(version, v2)
    assert settings["kubelet_config"] == expected
    assert settings["ignore_preflight_errors"] == (["SystemVerification"] if expected else [])
    assert bool(settings["warning"]) == bool(expected)
    if expected:
        assert "deprecated" in settings["warning"] and "1.38" in settings["warning"]


@pytest.mark.parametrize(
    ("installed", "wanted", "ok"),
    [
        ("v1.36.2", "1.36.2", True),
        ("v1.36.2", "1.36", True),
        ("v1.36.3", "1.36.2", False),
        ("v1.35.9", "1.36", False),
        ("", "1.36", False),
        ("kubeadm: command not found", "1.36", False),
    ],
)
def test_installed_version_matches(installed: str, wanted: str, ok: bool) -> None:
    assert kubeconf.installed_version_matches(wanted, installed) is ok


def test_offline_plan_debs_in_dependency_order() -> None:
    files = [
        "/srv/k8s/kubeadm_1.36.2-1.1_amd64.deb",
        "/srv/k8s/kubectl_1.36.2-1.1_amd64.deb",
        "/srv/k8s/kubelet_1.36.2-1.1_amd64.deb",
        "/srv/k8s/cri-tools_1.36.0-1.1_amd64.deb",
        "/srv/k8s/kubernetes-cni_1.7.1-1.1_amd64.deb",
        "/srv/k8s/kubeadm-1.36.2-150500.1.1.x86_64.rpm",
        "/srv/k8s/README",
    ]
    plan = kubeconf.offline_plan(files, "deb")
    assert plan == {
        "mode": "deb",
        "files": [
            "cri-tools_1.36.0-1.1_amd64.deb",
            "kubernetes-cni_1.7.1-1.1_amd64.deb",
            "kubelet_1.36.2-1.1_amd64.deb",
            "kubectl_1.36.2-1.1_amd64.deb",
            "kubeadm_1.36.2-1.1_amd64.deb",
        ],
    }


def test_offline_plan_rpms() -> None:
    files = ["kubeadm-1.36.2-150500.1.1.x86_64.rpm", "kubelet-1.36.2-150500.1.1.x86_64.rpm", "kubectl-1.36.2.rpm"]
    assert kubeconf.offline_plan(files, "rpm")["mode"] == "rpm"


def test_offline_plan_binaries() -> None:
    assert kubeconf.offline_plan(["kubectl", "kubeadm", "kubelet", "crictl", "notes.txt"], "deb") == {
        "mode": "binaries",
        "files": ["crictl", "kubeadm", "kubectl", "kubelet"],
    }


def test_offline_plan_missing_package_is_named() -> None:
    with pytest.raises(KubeConfigError, match="none for kubectl"):
        kubeconf.offline_plan(["kubeadm_1.36.2_amd64.deb", "kubelet_1.36.2_amd64.deb"], "deb")


def test_offline_plan_empty_directory() -> None:
    with pytest.raises(KubeConfigError, match=r"found: nothing"):
        kubeconf.offline_plan([], "deb")
