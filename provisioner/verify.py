"""`provision.py verify`: the testinfra suites under tests/infra against the generated inventory,
summarised as one table row per node."""

from __future__ import annotations

import logging
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from provisioner.ansible import ansible_env
from provisioner.errors import ProvisionError
from provisioner.inventory import NODE_SSH_COMMON_ARGS

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
INFRA = REPO_ROOT / "tests" / "infra"
# Stage -> testinfra module that checks it.
SUITES = {
    "prepare": "test_prepare.py",
    "runtime": "test_runtime.py",
    "join": "test_kubernetes.py",
    "swarm": "test_swarm.py",
}


@dataclass
class CheckResult:
    node: str
    check: str
    outcome: str  # passed | failed | skipped
    message: str = ""


@dataclass
class Report:
    results: list[CheckResult] = field(default_factory=list)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if r.outcome == "failed"]

    def table(self, nodes: list[str]) -> str:
        checks: list[str] = []
        for r in self.results:
            if r.check not in checks:
                checks.append(r.check)
        cells: dict[tuple[str, str], list[str]] = {}
        for r in self.results:
            cells.setdefault((r.node, r.check), []).append(r.outcome)
        if any(r.node == "(cluster)" for r in self.results):
            nodes = [*nodes, "(cluster)"]
        width = max([len(n) for n in nodes] + [4])
        first = max([len(c) for c in checks] + [5])
        lines = []
        for check in checks:
            row = [f"{check:<{first}}"]
            for node in nodes:
                outcomes = cells.get((node, check))
                row.append(f"{_cell(outcomes):<{width}}")
            lines.append("  ".join(row))
        header = "  ".join([f"{'check':<{first}}"] + [f"{n:<{width}}" for n in nodes])
        return "\n".join([header, "-" * len(header), *lines])

    def skip_reasons(self) -> list[str]:
        """Why checks were skipped, one line per reason with the checks and nodes it covers (the table
        only says `skip`)."""
        by_reason: dict[str, dict[str, list[str]]] = {}
        for r in self.results:
            if r.outcome != "skipped":
                continue
            reason = r.message.removeprefix("Skipped: ").strip() or "no reason given"
            by_reason.setdefault(reason, {}).setdefault(r.check, []).append(r.node)
        lines = []
        for reason, checks in by_reason.items():
            where = "; ".join(f"{check} ({', '.join(nodes)})" for check, nodes in checks.items())
            lines.append(f"  skip: {reason}: {where}")
        return lines


def _cell(outcomes: list[str] | None) -> str:
    if not outcomes:
        return "-"
    if "failed" in outcomes:
        return "FAIL"
    if all(o == "skipped" for o in outcomes):
        return "skip"
    n = outcomes.count("passed")
    return f"ok({n})" if n > 1 else "ok"


def split_testcase(name: str, nodes: list[str]) -> tuple[str, str]:
    """`test_sysctl[ansible://cp1-net.ipv4.ip_forward]` -> ("cp1", "sysctl net.ipv4.ip_forward")."""
    func, _, params = name.partition("[")
    params = params.rstrip("]")
    base = func.removeprefix("test_")
    if params.startswith("ansible://"):
        rest = params.removeprefix("ansible://")
        for node in sorted(nodes, key=len, reverse=True):
            if rest == node or rest.startswith(node + "-"):
                extra = rest[len(node) + 1 :]
                return node, f"{base} {extra}".strip()
    return "", f"{base} {params}".strip()


def parse_junit(path: Path, nodes: list[str]) -> Report:
    report = Report()
    root = ET.parse(path).getroot()
    for case in root.iter("testcase"):
        node, check = split_testcase(case.get("name", ""), nodes)
        outcome, message = "passed", ""
        for tag in ("failure", "error"):
            el = case.find(tag)
            if el is not None:
                text = (el.get("message") or el.text or "").strip()
                outcome, message = "failed", (text.splitlines() or [""])[0]
        el = case.find("skipped")
        if el is not None:
            outcome, message = "skipped", el.get("message") or ""
        report.results.append(CheckResult(node or "(cluster)", check, outcome, message))
    return report


def testinfra_env(provision_dir: Path) -> dict[str, str]:
    """The environment of a testinfra run. testinfra's SSH backend opens a new connection for every
    command unless it is given a ControlPath (ansible.cfg turns ControlMaster on but leaves the path
    to Ansible), so every check would pay a key exchange: give it one shared connection per node.

    The path goes in ANSIBLE_SSH_EXTRA_ARGS: testinfra, unlike Ansible, lets ANSIBLE_SSH_COMMON_ARGS
    replace the inventory's ansible_ssh_common_args, which turn host key checking off for the nodes.
    When that variable is set anyway, the nodes' options are added to it."""
    env = ansible_env(provision_dir)
    common = env.get("ANSIBLE_SSH_COMMON_ARGS")
    if common is not None and NODE_SSH_COMMON_ARGS not in common:
        env["ANSIBLE_SSH_COMMON_ARGS"] = f"{common} {NODE_SSH_COMMON_ARGS}".strip()
    extra = env.get("ANSIBLE_SSH_EXTRA_ARGS", "")
    if "controlpath" not in f"{common or ''} {extra}".lower():
        # A short directory: a socket path has at most 107 bytes.
        cp_dir = Path.home() / ".ansible" / "cp"
        cp_dir.mkdir(parents=True, exist_ok=True)
        env["ANSIBLE_SSH_EXTRA_ARGS"] = f"{extra} -o ControlPath={cp_dir}/ti-%C".strip()
    return env


def run_verify(
    inventory: Path, provision_dir: Path, finished_stages: list[str], nodes: list[str]
) -> tuple[Report, Path]:
    """Run the suites of the finished stages side by side (one pytest each: the nodes are mostly
    waiting on SSH round trips), then merge their reports in stage order."""
    modules = [INFRA / SUITES[s] for s in finished_stages if s in SUITES and (INFRA / SUITES[s]).exists()]
    if not modules:
        raise ProvisionError("nothing to verify yet: no finished stage has a testinfra suite; run `up` first")
    logf = provision_dir / "logs" / "verify.log"
    logf.parent.mkdir(parents=True, exist_ok=True)
    env = testinfra_env(provision_dir)
    runs: list[tuple[Path, Path, Path, subprocess.Popen[bytes]]] = []
    for module in modules:
        junit = provision_dir / f"verify-{module.stem}.xml"
        junit.unlink(missing_ok=True)
        part_log = logf.with_name(f"verify-{module.stem}.log")
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "-rs",
            "--durations=5",  # the slowest checks, in the log
            "--color=no",
            f"--ansible-inventory={inventory}",
            "--connection=ansible",
            f"--junitxml={junit}",
            str(module),
        ]
        with part_log.open("w", encoding="utf-8") as out:
            out.write("$ " + " ".join(cmd) + "\n")
            out.flush()
            child = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        runs.append((module, junit, part_log, child))
    codes = [child.wait() for *_, child in runs]
    report = Report()
    with logf.open("w", encoding="utf-8") as out:
        for (module, junit, part_log, _), rc in zip(runs, codes, strict=True):
            out.write(part_log.read_text(encoding="utf-8", errors="replace") + f"(exit {rc})\n\n")
            part_log.unlink(missing_ok=True)
            if not junit.exists():
                raise ProvisionError(
                    f"the testinfra run of {module.name} produced no report (exit {rc})", log_path=str(logf)
                )
            part = parse_junit(junit, nodes)
            junit.unlink()
            if rc not in (0, 1) and not part.results:
                raise ProvisionError(
                    f"the testinfra run of {module.name} failed to start (exit {rc})", log_path=str(logf)
                )
            report.results.extend(part.results)
    return report, logf
