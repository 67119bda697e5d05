"""`provision.py verify`: the testinfra suites under tests/infra against the generated inventory,
summarised as a table (one row per check, one column per node) and a closing line
`verify: N passed, N skipped, N failed`.

A check may skip only for a reason that the cluster's kind explains (SKIP_CATEGORIES): its reason
starts with one of the categories and a colon. Any other skip counts as a failure, named with its
reason, so a check that silently stops running turns verify red instead of green.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from provisioner import REPO_ROOT
from provisioner.ansible import ansible_env
from provisioner.errors import ProvisionError
from provisioner.inventory import NODE_SSH_COMMON_ARGS

log = logging.getLogger(__name__)

INFRA = REPO_ROOT / "tests" / "infra"
# Stage -> testinfra module that checks it.
SUITES = {
    "prepare": "test_prepare.py",
    "runtime": "test_runtime.py",
    "join": "test_kubernetes.py",
    "addons": "test_addons.py",
    "swarm": "test_swarm.py",
}


# Why a check may skip: the first words of its reason, before a colon
# ("container node: the clock is the host kernel's"). tests/infra skip only with these
# (tests/unit/test_verify.py reads every pytest.skip there); verify counts any other skip as a failure.
SKIP_CONTAINER_NODE = "container node"
SKIP_NOT_CONFIGURED = "not configured"
SKIP_ABSENT = "absent"
SKIP_CATEGORIES: dict[str, str] = {
    SKIP_CONTAINER_NODE: (
        "the node is a container that shares the host's kernel (swap, kernel modules, the clock, SELinux, "
        "ip_vs): only the host can change that; expected on container nodes (the docker provider) only"
    ),
    SKIP_NOT_CONFIGURED: (
        "the cluster's settings do not ask for what the check checks (no Docker with container_runtime "
        "containerd, node_prep_firewall off, one control plane and no virtual IP, a worker's API server)"
    ),
    SKIP_ABSENT: (
        "an optional component that the roles leave alone is not on the node (NetworkManager, a firewall, "
        "/etc/fstab, crictl before the Kubernetes packages)"
    ),
}
# Categories that only some kinds of cluster explain.
CONTAINER_ONLY = frozenset({SKIP_CONTAINER_NODE})


def skip_category(reason: str) -> str:
    """The category a skip's reason names ("" when it names none)."""
    head, colon, _ = reason.partition(":")
    return head.strip() if colon and head.strip() in SKIP_CATEGORIES else ""


def unexpected_skip(reason: str, container_nodes: bool) -> str:
    """Why a skip with this reason is a failure on this kind of cluster ("" when the kind explains it)."""
    category = skip_category(reason)
    if not category:
        return f"skipped for a reason outside the expected categories ({', '.join(SKIP_CATEGORIES)})"
    if category in CONTAINER_ONLY and not container_nodes:
        return "skipped as on a container node, but this cluster's nodes are machines"
    return ""


@dataclass
class CheckResult:
    node: str
    check: str
    outcome: str  # passed | failed | skipped
    message: str = ""
    unexpected_skip: bool = False  # a skip the cluster's kind does not explain, counted as failed


@dataclass(frozen=True)
class Counts:
    passed: int
    skipped: int
    failed: int

    def closing_line(self) -> str:
        return f"verify: {self.passed} passed, {self.skipped} skipped, {self.failed} failed"


CLOSING_LINE = re.compile(r"^verify: (\d+) passed, (\d+) skipped, (\d+) failed$", re.MULTILINE)


@dataclass
class Report:
    results: list[CheckResult] = field(default_factory=list)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if r.outcome == "failed"]

    @property
    def skipped(self) -> list[CheckResult]:
        return [r for r in self.results if r.outcome == "skipped"]

    @property
    def passed(self) -> list[CheckResult]:
        return [r for r in self.results if r.outcome == "passed"]

    def counts(self) -> Counts:
        return Counts(len(self.passed), len(self.skipped), len(self.failed))

    def closing_line(self) -> str:
        """`verify: N passed, N skipped, N failed` (a skip the cluster's kind does not explain is failed)."""
        return self.counts().closing_line()

    def summary(self) -> str:
        """The end of verify's progress line: "all checks passed" only when nothing skipped or failed."""
        c = self.counts()
        if not c.skipped and not c.failed:
            return "all checks passed"
        return f"{c.passed} passed, {c.skipped} skipped, " + (f"{c.failed} FAILED" if c.failed else "0 failed")

    def judge_skips(self, container_nodes: bool) -> None:
        """Turn every skip that the cluster's kind does not explain into a failure that names its reason."""
        for r in self.results:
            if r.outcome != "skipped":
                continue
            why = unexpected_skip(r.message, container_nodes)
            if why:
                r.outcome, r.unexpected_skip = "failed", True
                r.message = f"{why}: {r.message or 'no reason given'}"

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
            outcome, message = "skipped", (el.get("message") or "").removeprefix("Skipped: ").strip()
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
    inventory: Path, provision_dir: Path, finished_stages: list[str], nodes: list[str], *, container_nodes: bool
) -> tuple[Report, Path]:
    """Run the suites of the finished stages side by side (one pytest each: the nodes are mostly
    waiting on SSH round trips), then merge their reports in stage order. Skips that the cluster's kind
    (`container_nodes`: docker-provider nodes) does not explain are failures (Report.judge_skips)."""
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
    report.judge_skips(container_nodes)
    return report, logf


# Reading verify's output back (the integration tests do): the table and the closing line.


def closing_counts(text: str) -> list[Counts]:
    """Every closing line in `text` (one per verify run), in order."""
    return [Counts(int(p), int(s), int(f)) for p, s, f in CLOSING_LINE.findall(text)]


def parse_tables(text: str) -> list[dict[str, dict[str, str]]]:
    """Every table `Report.table` printed in `text`, in order, as check -> node -> cell ("ok", "ok(2)",
    "skip", "FAIL" or "-" where the check did not run on that node). Columns are found by the header's
    node names, so check names with spaces in them are read whole."""
    lines = text.splitlines()
    tables: list[dict[str, dict[str, str]]] = []
    for i, header in enumerate(lines[:-1]):
        rule = lines[i + 1]
        if not header.startswith("check ") or not rule or set(rule) != {"-"} or len(rule) != len(header):
            continue
        columns = [(m.group(), m.start()) for m in re.finditer(r"\S+", header)][1:]
        if not columns:
            continue
        table: dict[str, dict[str, str]] = {}
        for row in lines[i + 2 :]:
            if not row.strip() or row[0].isspace() or row.startswith("==>") or CLOSING_LINE.match(row):
                break
            check = row[: columns[0][1]].strip()
            cells = {}
            for n, (node, start) in enumerate(columns):
                end = columns[n + 1][1] if n + 1 < len(columns) else None
                cells[node] = row[start:end].strip() or "-"
            table[check] = cells
        tables.append(table)
    return tables


def table_problems(table: Mapping[str, Mapping[str, str]], wanted: Mapping[str, Iterable[str]]) -> list[str]:
    """What keeps `table` from showing each wanted check as passed on each of its nodes (a check ->
    nodes mapping; "(cluster)" for the cluster-wide checks): a missing row, or a cell that is not ok."""
    problems = []
    for check, nodes in wanted.items():
        row = table.get(check)
        if row is None:
            problems.append(f"{check}: not in the table")
            continue
        for node in nodes:
            cell = row.get(node)
            if cell is None:
                problems.append(f"{check}: no column {node}")
            elif not re.fullmatch(r"ok(\(\d+\))?", cell):
                problems.append(f"{check} on {node}: {cell}")
    return problems
