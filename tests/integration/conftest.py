"""Helpers for the tests that bring real docker-provider nodes up.

Every cluster here lives in its own state directory, with its own name and node network, and is
destroyed at the end even when a test fails. Traffic goes only to these nodes (via loopback ports).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from provisioner import bundle
from provisioner.verify import closing_counts, parse_tables, table_problems

REPO = Path(__file__).resolve().parents[2]


def docker_ready() -> str:
    """Empty when a Docker daemon, Vagrant and mmdebstrap are usable; else the reason."""
    for tool in ("docker", "vagrant", "mmdebstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (run scripts/setup.sh)"
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        return "the Docker daemon does not answer (run scripts/setup.sh)"
    return ""


def default_bundle() -> bundle.Bundle:
    """The toolkit's default bundle (Kubernetes and Calico at their default versions), which
    scripts/test.sh builds before pytest; a test that finds it missing fails, naming that."""
    found = bundle.find(bundle.resolve_versions(None, None))
    assert found is not None, "the default bundle is missing: scripts/test.sh builds it before pytest"
    return found


@dataclass
class Cluster:
    root: Path
    name: str
    network: str

    def run(self, *args: str, timeout: float = 1500, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, str(REPO / "provision.py"), "--dir", str(self.root), *args],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"provision.py {' '.join(args)} exited {proc.returncode}\nSTDOUT:\n{proc.stdout[-6000:]}\n"
                f"STDERR:\n{proc.stderr[-3000:]}"
            )
        return proc

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(REPO / "provision.py"), "--dir", str(self.root), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )

    @property
    def inventory(self) -> Path:
        return self.root / "inventory" / "hosts.yml"

    def timings(self) -> dict[str, object]:
        data: dict[str, object] = json.loads((self.root / "timings.json").read_text())
        return data

    def containers(self) -> list[str]:
        out = subprocess.run(
            ["docker", "ps", "-a", "--filter", f"label=org.provisioner.cluster={self.name}", "--format", "{{.Names}}"],
            capture_output=True,
            text=True,
            check=True,
        )
        return sorted(out.stdout.split())

    def docker_network_exists(self) -> bool:
        out = subprocess.run(
            ["docker", "network", "ls", "--format", "{{.Name}}"], capture_output=True, text=True, check=True
        )
        return f"vagrant_network_{self.network}" in out.stdout.split()

    def force_cleanup(self) -> None:
        self.run("destroy", "-f", check=False, timeout=300)
        for c in self.containers():
            subprocess.run(["docker", "rm", "-f", c], capture_output=True, check=False)


@functools.cache
def ensure_docker() -> str:
    """Empty when nodes can be made here. What is missing is installed and started by the project's
    own scripts/setup.sh (idempotent; as root, or where sudo needs no password) rather than skipped;
    the reason comes back only when that is not possible or failed. Once per test session."""
    reason = docker_ready()
    if not reason:
        return ""
    if os.geteuid() != 0 and subprocess.run(["sudo", "-n", "true"], capture_output=True, check=False).returncode:
        return f"{reason}; not root and sudo asks for a password, so scripts/setup.sh cannot fix it here"
    try:
        setup = subprocess.run(
            ["bash", str(REPO / "scripts" / "setup.sh")],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"{reason}; scripts/setup.sh did not finish within 30 minutes"
    reason = docker_ready()
    if reason and setup.returncode != 0:
        last = (setup.stderr or setup.stdout).strip().splitlines()
        reason += f"; scripts/setup.sh failed: {last[-1] if last else f'exit {setup.returncode}'}"
    return reason


def make_cluster(tmp_path_factory: pytest.TempPathFactory, name: str, network: str) -> Iterator[Cluster]:
    reason = ensure_docker()
    if reason:
        pytest.skip(reason)
    cluster = Cluster(tmp_path_factory.mktemp(name) / "ws", name, network)
    cluster.force_cleanup()
    try:
        yield cluster
    finally:
        cluster.force_cleanup()


def assert_verified(out: str, wanted: Mapping[str, Iterable[str]] | None = None) -> None:
    """The last verify in `out` ended with `verify: N passed, N skipped, 0 failed` (a skip the
    cluster's kind does not explain counts as failed there), and its table shows each wanted check
    (check -> nodes, "(cluster)" for the cluster-wide ones) as ok on each of those nodes: run and
    passed, never skipped. Only the table's cells count, not a check's name somewhere in the output."""
    counts = closing_counts(out)
    assert counts, f"no closing line of verify in the output:\n{out[-4000:]}"
    assert counts[-1].failed == 0 and counts[-1].passed > 0, f"{counts[-1].closing_line()}\n{out[-6000:]}"
    tables = parse_tables(out)
    assert tables, f"no verify table in the output:\n{out[-4000:]}"
    problems = table_problems(tables[-1], wanted or {})
    assert not problems, "; ".join(problems) + f"\n{out[-6000:]}"


def task_sections(out: str) -> dict[str, str]:
    """The output of each task of one ansible-playbook run, by task name (without the role prefix)."""
    sections: dict[str, str] = {}
    for chunk in out.split("\nTASK [")[1:]:
        title, _, body = chunk.partition("]")
        sections[title.split(" : ", 1)[-1]] = sections.get(title.split(" : ", 1)[-1], "") + body
    return sections


def task_output(sections: dict[str, str], prefix: str) -> str:
    """The output of the tasks whose names start with prefix."""
    bodies = [body for name, body in sections.items() if name.startswith(prefix)]
    assert bodies, f"no task named {prefix!r}: {sorted(sections)}"
    return "".join(bodies)


def task_hosts(sections: dict[str, str], prefix: str, status: str = "changed") -> set[str]:
    """The hosts that the tasks whose names start with prefix reported with `status` (ok, changed, ...)."""
    return set(re.findall(rf"^{re.escape(status)}: \[(\w+)\]", task_output(sections, prefix), re.MULTILINE))
