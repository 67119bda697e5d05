"""Lane times: at the end of a run, the wall time each test module took (its tests' setup, call and
teardown, module fixtures included), integration lanes one by one and the unit tests as one line, so
that CI's log shows where its minutes went."""

from __future__ import annotations

from collections import defaultdict

import pytest

_seconds: defaultdict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _seconds[report.nodeid.split("::", 1)[0]] += report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not any(m.startswith(("tests/unit/", "tests/integration/")) for m in _seconds):
        return  # a verify run of the testinfra suites: no lanes
    lanes: defaultdict[str, float] = defaultdict(float)
    for module, seconds in _seconds.items():
        lanes["tests/unit (all modules)" if module.startswith("tests/unit/") else module] += seconds
    terminalreporter.section("lane times")
    for lane, seconds in sorted(lanes.items(), key=lambda item: -item[1]):
        terminalreporter.write_line(f"{seconds / 60:6.1f} min  {lane}")
    terminalreporter.write_line(f"{sum(lanes.values()) / 60:6.1f} min  in all (pytest; setup and linters before it)")
