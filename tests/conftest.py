"""The order lanes start in, and their times at the end of a run.

scripts/test.sh runs pytest with two xdist workers, one test module to a worker at a time
(`--dist loadfile`), so two lanes run at once on the two cores. The integration lanes go first,
longest first, so that the short unit modules fill the gaps at the end. A worker takes its next
module when two tests of its current one are left (xdist's loadfile), so the first two start
together: the HA lane (the longest: make, upgrade, fail over) beside the VM lane; the worker that
finishes first takes the next in this order.

At the end, each lane's wall time (from its first test's setup to its last test's teardown, module
fixtures included) and the worker it ran on, so that CI's log shows where its minutes went; then the
figures the lanes recorded (record_property("figure", ...)), passed or not.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import pytest

# Module path -> start rank; modules not named here (the unit tests) come after, in their own order.
LANE_ORDER = (
    "tests/integration/test_kubernetes_ha.py",
    "tests/integration/test_libvirt_vms.py",
    "tests/integration/test_kubernetes_cluster.py",
    "tests/integration/test_kubernetes_engine_docker.py",
    "tests/integration/test_swarm_cluster.py",
    "tests/integration/test_molecule.py",
)


def _rank(nodeid: str) -> int:
    module = nodeid.split("::", 1)[0]
    return LANE_ORDER.index(module) if module in LANE_ORDER else len(LANE_ORDER)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: _rank(item.nodeid))  # stable: each module's tests keep their order


@dataclass
class _Lane:
    start: float = float("inf")
    stop: float = 0.0
    busy: float = 0.0
    workers: set[str] = field(default_factory=set)


_lanes: defaultdict[str, _Lane] = defaultdict(_Lane)
# What the lanes measured and want in CI's log whether they passed or not (pytest shows a passed test's
# output nowhere): a test records ("figure", text) with record_property, which xdist carries to the
# controller on the report.
_figures: list[tuple[str, str]] = []


def _lane_of(nodeid: str) -> str:
    module = nodeid.split("::", 1)[0]
    return "tests/unit (all modules)" if module.startswith("tests/unit/") else module


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    lane = _lanes[_lane_of(report.nodeid)]
    lane.start = min(lane.start, report.start)
    lane.stop = max(lane.stop, report.stop)
    lane.busy += report.duration
    node = getattr(report, "node", None)  # set by xdist on the controller: the worker that ran it
    gateway = getattr(node, "gateway", None)
    lane.workers.add(str(getattr(gateway, "id", "main")))
    if report.when == "call":
        _figures.extend((report.nodeid, str(value)) for name, value in report.user_properties if name == "figure")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not any(name.startswith(("tests/unit", "tests/integration/")) for name in _lanes):
        return  # a verify run of the testinfra suites: no lanes
    terminalreporter.section("lane times")
    terminalreporter.write_line("minutes of test time per lane; lanes on different workers ran at the same time")
    for name, lane in sorted(_lanes.items(), key=lambda item: -item[1].busy):
        terminalreporter.write_line(f"{lane.busy / 60:6.1f} min  {name}  [{', '.join(sorted(lane.workers))}]")
    first = min(lane.start for lane in _lanes.values())
    last = max(lane.stop for lane in _lanes.values())
    total = sum(lane.busy for lane in _lanes.values())
    terminalreporter.write_line(f"{total / 60:6.1f} min  in all, lane by lane")
    terminalreporter.write_line(
        f"{(last - first) / 60:6.1f} min  wall clock, first test to last (setup and linters before it)"
    )
    if _figures:
        terminalreporter.section("figures the lanes measured")
        for nodeid, text in _figures:
            terminalreporter.write_line(f"{nodeid.rsplit('::', 1)[-1]}: {text}")
