"""The CLI's error path: one clear sentence, a non-zero exit, nothing created."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from provisioner.cli import _overrides, build_parser
from provisioner.preflight import resolve_spec
from provisioner.workspace import Workspace

REPO = Path(__file__).resolve().parents[2]


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "provision.py"), "--dir", str(tmp_path / "ws"), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["up", "--nodes", "0"], "nodes must be at least 1"),
        (["up", "--provider", "hyperv"], "provider 'hyperv' is not supported"),
        (["up", "--pod-cidr", "10.96.0.0/16"], "pod_cidr 10.96.0.0/16 overlaps service_cidr 10.96.0.0/12"),
        (["up", "--network", "10.244.1.0/24"], "network 10.244.1.0/24 overlaps pod_cidr 10.244.0.0/16"),
        (["plan", "--engine", "swarm", "--managers", "2"], "managers must be an odd number"),
        (["up", "--package-proxy", "ftp://192.168.56.1:3142"], "package_proxy 'ftp://192.168.56.1:3142' is not"),
        (["plan", "--package-proxy", "http://192.168.56.1:3142/apt"], "no path, no credentials"),
        (
            ["up", "--engine", "swarm", "--accept-repo-key", "AB" * 20],
            "a swarm cluster installs no Kubernetes packages",
        ),
        (["up", "--provider", "docker", "--accept-repo-key", "AB" * 20], "installs Kubernetes from the offline bundle"),
    ],
)
def test_bad_input_exits_non_zero_with_one_sentence_and_creates_nothing(
    args: list[str], fragment: str, tmp_path: Path
) -> None:
    proc = _run(args, tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "ws").exists()


def test_commands_without_a_cluster(tmp_path: Path) -> None:
    proc = _run(["status"], tmp_path)
    assert proc.returncode == 1 and "no cluster here" in proc.stderr
    proc = _run(["destroy", "-f"], tmp_path)
    assert proc.returncode == 0 and "nothing to destroy" in proc.stdout


def test_plan_prints_the_network_plan(tmp_path: Path) -> None:
    proc = _run(["plan", "--nodes", "4", "--provider", "docker", "--network", "192.168.99.0/24"], tmp_path)
    if proc.returncode == 3:
        pytest.skip(f"docker daemon not available: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    assert "worker3       worker         kube_node           192.168.99.13" in proc.stdout
    assert not (tmp_path / "ws").exists()


@pytest.mark.parametrize("command", ["up", "plan"])
def test_package_proxy_flag_reaches_the_spec(command: str, tmp_path: Path) -> None:
    args = build_parser().parse_args(["--dir", str(tmp_path), command, "--package-proxy", "http://10.1.2.3:3142"])
    overrides = _overrides(args)
    assert overrides["package_proxy"] == "http://10.1.2.3:3142"
    spec, _ = resolve_spec(Workspace(tmp_path / "ws"), overrides, None)
    assert spec.package_proxy == "http://10.1.2.3:3142"


def test_package_proxy_is_kept_on_reruns_and_cleared_with_an_empty_flag(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    parse = build_parser().parse_args
    spec, inputs = resolve_spec(ws, _overrides(parse(["up", "--package-proxy", "http://10.1.2.3:3142"])), None)
    ws.save_spec(spec, inputs)
    again, _ = resolve_spec(ws, _overrides(parse(["up"])), None)  # a rerun without the flag keeps it
    assert again.package_proxy == "http://10.1.2.3:3142"
    cleared, _ = resolve_spec(ws, _overrides(parse(["up", "--package-proxy", ""])), None)
    assert cleared.package_proxy == ""


def test_a_malformed_key_fingerprint_is_refused_by_the_parser_and_creates_nothing(tmp_path: Path) -> None:
    proc = _run(["up", "--accept-repo-key", "not-a-key"], tmp_path)
    assert proc.returncode == 2
    assert "is not an OpenPGP key fingerprint (40 or 64 hex digits)" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "ws").exists()
