"""pkgs.k8s.io repositories, package pins, the cgroup check and offline plans (no network)."""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from provisioner.kube import KubeConfigError, packages


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
    repo = packages.pkgs_repository(version, family)
    assert repo["url"] == url
    assert repo["key_url"] == key_url


def test_repository_mirror_base() -> None:
    repo = packages.pkgs_repository("1.36.2", "deb", "https://mirror.example.test/k8s/")
    assert repo["url"] == "https://mirror.example.test/k8s/v1.36/deb/"


@pytest.mark.parametrize("version", ["1.36", "1.36.2"])
def test_apt_deb822_source(version: str) -> None:
    text = packages.apt_sources(version, "/etc/apt/keyrings/kubernetes-apt-keyring.asc")
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
        packages.apt_sources("1.36", "keyring.asc")


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
    assert packages.package_pins(version, family) == expected


@pytest.mark.parametrize("family", ["deb", "rpm"])
@pytest.mark.parametrize("version", ["1.36", "1.36.2", "1.38.0"])
def test_cri_tools_is_never_pinned_to_the_kubernetes_version(version: str, family: str) -> None:
    """A per-minor repository need not carry the cri-tools of its minor: cri-tools goes in by name (and is held)."""
    assert packages.package_pins(version, family, ["kubeadm", "cri-tools"])[1] == "cri-tools"


DPKG_QUERY = """hi |kubelet|1.36.2-1.1
hi |kubeadm|1.36.2-1.1
ii |kubectl|1.36.2-1.1
rc |cri-tools|1.36.0-1.1
"""
RPM_QUERY = """kubelet|1.36.2-150500.1.1
kubeadm|1.36.2-150500.1.1
package kubectl is not installed
"""


def test_installed_packages_from_dpkg_query() -> None:
    """Held (hi) and installed (ii) packages count; a removed one (rc: config files left) does not."""
    assert packages.installed_packages(DPKG_QUERY, "deb") == {
        "kubelet": "1.36.2-1.1",
        "kubeadm": "1.36.2-1.1",
        "kubectl": "1.36.2-1.1",
    }
    assert packages.installed_packages("", "deb") == {}


def test_installed_packages_from_rpm_query() -> None:
    assert packages.installed_packages(RPM_QUERY, "rpm") == {
        "kubelet": "1.36.2-150500.1.1",
        "kubeadm": "1.36.2-150500.1.1",
    }


@pytest.mark.parametrize(("family", "output"), [("deb", "kubeadm 1.36.2-1.1"), ("rpm", "error: rpmdb open failed")])
def test_installed_packages_refuses_what_it_cannot_read(family: str, output: str) -> None:
    with pytest.raises(KubeConfigError, match="cannot read"):
        packages.installed_packages(output, family)


def _apt_would_upgrade(pin: str, installed: str, candidate: str) -> bool:
    """What Ansible's apt module does with `name=VERSION` for an installed package: it installs the
    repository's best match again whenever that differs from the installed version and matches the
    pin's (fnmatch) pattern (modules/apt.py, package_status and install)."""
    pattern = pin.split("=", 1)[1]
    return candidate != installed and fnmatch.fnmatch(candidate, pattern)


@pytest.mark.parametrize("version", ["1.36", "1.36.2"])
@pytest.mark.parametrize("candidate", ["1.36.3-1.1", "1.36.2-1.2"], ids=["newer-patch", "newer-build"])
def test_a_later_converge_keeps_the_installed_packages(version: str, candidate: str) -> None:
    """Once installed, kubelet/kubeadm/kubectl are pinned to exactly what the node has, so a newer
    patch (or build) published in the repository is not installed over the held packages."""
    installed = packages.installed_packages(DPKG_QUERY, "deb")
    pins = packages.package_pins(version, "deb", ["kubelet", "kubeadm", "kubectl", "cri-tools"], installed)
    assert pins == ["kubelet=1.36.2-1.1", "kubeadm=1.36.2-1.1", "kubectl=1.36.2-1.1", "cri-tools"]
    assert not any(_apt_would_upgrade(pin, "1.36.2-1.1", candidate) for pin in pins[:3])


def test_first_install_of_a_minor_takes_the_newest_patch() -> None:
    pins = packages.package_pins("1.36", "deb", ["kubelet", "kubeadm"], {})
    assert pins == ["kubelet=1.36.*", "kubeadm=1.36.*"]
    assert _apt_would_upgrade(pins[0], "", "1.36.3-1.1")


def test_a_package_added_later_follows_the_installed_patch() -> None:
    """kubectl missing while kubeadm and kubelet are at 1.36.2: kubectl comes at 1.36.2 too, not the newest."""
    installed = {"kubelet": "1.36.2-1.1", "kubeadm": "1.36.2-1.1"}
    assert packages.package_pins("1.36", "deb", ["kubelet", "kubeadm", "kubectl"], installed) == [
        "kubelet=1.36.2-1.1",
        "kubeadm=1.36.2-1.1",
        "kubectl=1.36.2-*",
    ]
    assert packages.package_pins("1.36", "rpm", ["kubeadm", "kubectl"], {"kubeadm": "1.36.2-150500.1.1"}) == [
        "kubeadm-1.36.2-150500.1.1",
        "kubectl-1.36.2",
    ]


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        pytest.param("1.37", ["kubelet=1.37.*", "kubeadm=1.37.*"], id="another-minor"),
        pytest.param("1.36.3", ["kubelet=1.36.3-*", "kubeadm=1.36.3-*"], id="another-patch"),
    ],
)
def test_asking_for_another_version_moves_the_pins(version: str, expected: list[str]) -> None:
    installed = {"kubelet": "1.36.2-1.1", "kubeadm": "1.36.2-1.1"}
    assert packages.package_pins(version, "deb", ["kubelet", "kubeadm"], installed) == expected


def test_installed_rpm_and_epoch_versions_are_pinned_exactly() -> None:
    installed = packages.installed_packages(RPM_QUERY, "rpm")
    assert packages.package_pins("1.36", "rpm", ["kubelet", "kubeadm", "kubectl", "cri-tools"], installed) == [
        "kubelet-1.36.2-150500.1.1",
        "kubeadm-1.36.2-150500.1.1",
        "kubectl-1.36.2",
        "cri-tools",
    ]
    assert packages.package_pins("1.36", "deb", ["kubeadm"], {"kubeadm": "1:1.36.2-1.1"}) == ["kubeadm=1:1.36.2-1.1"]


REPO = Path(__file__).resolve().parents[2]
QUERY_PLAY = """
- hosts: localhost
  connection: local
  gather_facts: false
  vars:
    kube_packages_names: {names}
  tasks:
    - {task}
    - ansible.builtin.copy:
        content: "{{{{ kube_packages_installed_query.stdout | kube_installed_packages('deb') | to_json }}}}"
        dest: {out}
        mode: "0644"
"""


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="no dpkg-query: this host is not of the Debian family")
def test_the_roles_dpkg_query_reads_this_host(tmp_path: Path) -> None:
    """The role's own query task (its argv, its failed_when for unknown packages), run on this Debian
    host and parsed by the filter, agrees with dpkg."""
    tasks = yaml.safe_load((REPO / "roles" / "kube_packages" / "tasks" / "0020-upstream-Debian.yml").read_text())
    task = next(t for t in tasks if t["name"] == "Upstream | Read the installed versions of the Kubernetes packages")
    out = tmp_path / "installed.json"
    play = tmp_path / "play.yml"
    names = ["dpkg", "bash", "no-such-package-of-the-test"]
    play.write_text(QUERY_PLAY.format(names=json.dumps(names), task=json.dumps(task), out=out))
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            "localhost,",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            str(play),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    expected = {
        name: subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", name], capture_output=True, text=True, check=True
        ).stdout
        for name in names[:2]
    }
    assert json.loads(out.read_text()) == expected


def test_pins_leave_other_packages_to_the_repository() -> None:
    assert packages.package_pins("1.36.2", "deb", ["kubeadm", "kubernetes-cni"]) == [
        "kubeadm=1.36.2-*",
        "kubernetes-cni",
    ]


@pytest.mark.parametrize("version", ["1.36.x", "2.0", "latest", "", "1"])
def test_bad_versions_are_refused(version: str) -> None:
    with pytest.raises(KubeConfigError, match="is not a Kubernetes version"):
        packages.parse_kube_version(version)


def test_unknown_family_is_refused() -> None:
    with pytest.raises(KubeConfigError, match='"apk" is not supported'):
        packages.pkgs_repository("1.36", "apk")


def test_version_info() -> None:
    assert packages.kube_version_info("1.36.2") == {"series": "1.36", "full": "1.36.2", "minor": 36, "patch": 2}
    assert packages.kube_version_info("1.36") == {"series": "1.36", "full": "", "minor": 36, "patch": -1}


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
    message = packages.cgroup_error(version, v2, allow)
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
    settings = packages.cgroup_v1_settings(version, v2)
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
    assert packages.installed_version_matches(wanted, installed) is ok


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
    plan = packages.offline_plan(files, "deb")
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
    assert packages.offline_plan(files, "rpm")["mode"] == "rpm"


def test_offline_plan_binaries() -> None:
    assert packages.offline_plan(["kubectl", "kubeadm", "kubelet", "crictl", "notes.txt"], "deb") == {
        "mode": "binaries",
        "files": ["crictl", "kubeadm", "kubectl", "kubelet"],
    }


def test_offline_plan_missing_package_is_named() -> None:
    with pytest.raises(KubeConfigError, match="none for kubectl"):
        packages.offline_plan(["kubeadm_1.36.2_amd64.deb", "kubelet_1.36.2_amd64.deb"], "deb")


def test_offline_plan_empty_directory() -> None:
    with pytest.raises(KubeConfigError, match=r"found: nothing"):
        packages.offline_plan([], "deb")
