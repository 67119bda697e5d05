"""What a conformance run's reports say: its junit file counted by SIG, and ginkgo's output followed
for progress.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from provisioner.errors import ProvisionError

SIG = re.compile(r"\[(sig-[a-z0-9-]+)\]")
# ginkgo's count of what a run will run: "Ran 462 of 3206 Specs", "Will run 47 of 3206 specs".
WILL_RUN = re.compile(r"(?:Will run|Ran) (\d+) of (\d+) [Ss]pecs")
# One finished spec in ginkgo's verbose output: "• [12.345 seconds]", "• [FAILED] [3.2 seconds]",
# "S [SKIPPED] [0.000 seconds]".
FINISHED = re.compile(r"^(?:\x1b\[[0-9;]*m)*(•|S)(?:\x1b\[[0-9;]*m)* ?(?:\x1b\[[0-9;]*m)*(\[[A-Z]+\])?")


@dataclass
class SigCounts:
    passed: int = 0
    failed: int = 0
    skipped: int = 0


@dataclass
class Summary:
    by_sig: dict[str, SigCounts] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> int:
        return sum(c.passed for c in self.by_sig.values())

    @property
    def failed(self) -> int:
        return sum(c.failed for c in self.by_sig.values())

    @property
    def skipped(self) -> int:
        return sum(c.skipped for c in self.by_sig.values())


def sig_of(name: str) -> str:
    found = SIG.search(name)
    return found.group(1) if found else "(no sig)"


def read_junit(paths: list[Path]) -> Summary:
    """Passed, failed and skipped by SIG over the junit files. Counted: the specs ([It] entries) the run
    selected, and a suite node (BeforeSuite, AfterSuite, a report node) that failed, under "(suite)".
    Not counted: the specs the focus left out, which ginkgo writes as skipped with no reason."""
    summary = Summary()
    for path in paths:
        try:
            root = ET.parse(path).getroot()
        except (ET.ParseError, OSError) as exc:
            raise ProvisionError(
                f"the junit report {path} cannot be read ({exc}): the run was cut short; its e2e.log beside it "
                "says how far it got"
            ) from None
        for case in root.iter("testcase"):
            name = case.get("name") or ""
            failed = case.find("failure") is not None or case.find("error") is not None
            skip = case.find("skipped")
            skipped = skip is not None
            if skip is not None and (skip.get("message") or "").strip() == "skipped":
                continue  # not selected
            spec = name.startswith("[It]")
            if not spec and not failed:
                continue
            counts = summary.by_sig.setdefault(sig_of(name) if spec else "(suite)", SigCounts())
            if failed:
                counts.failed += 1
                summary.failures.append(name.removeprefix("[It] ").strip())
            elif skipped:
                counts.skipped += 1
            else:
                counts.passed += 1
    return summary


def table(summary: Summary) -> str:
    """The summary as a text table, one row per SIG and a total."""
    rows = [f"{'SIG':<24} {'passed':>7} {'failed':>7} {'skipped':>8}"]
    for sig in sorted(summary.by_sig):
        c = summary.by_sig[sig]
        rows.append(f"{sig:<24} {c.passed:>7} {c.failed:>7} {c.skipped:>8}")
    rows.append(f"{'total':<24} {summary.passed:>7} {summary.failed:>7} {summary.skipped:>8}")
    return "\n".join(rows)


@dataclass
class Tally:
    """Specs finished so far in one run's ginkgo output."""

    total: int = 0
    done: int = 0
    failed: int = 0

    def feed(self, line: str) -> bool:
        """Count one line of output; whether it finished a spec."""
        will = WILL_RUN.search(line)
        if will and not self.total:
            self.total = int(will.group(1))
            return False
        found = FINISHED.match(line)
        if not found:
            return False
        # A bare "•" or "S" line is a finished spec only with its [duration] or [STATE] after it.
        rest = line[found.end() :]
        if not found.group(2) and not re.match(r"\s*\[\d", rest):
            return False
        self.done += 1
        if found.group(2) in ("[FAILED]", "[PANICKED]", "[TIMEDOUT]", "[INTERRUPTED]"):
            self.failed += 1
        return True
