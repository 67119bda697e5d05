"""verify's report: the closing counts, which skips a cluster's kind explains (any other is a failure),
the table read back the way the integration tests read it, and the skip reasons of tests/infra."""

from __future__ import annotations

import ast
import io
from pathlib import Path
from typing import Any

import pytest

from provisioner import verify
from provisioner.command import verify as verify_cmd
from provisioner.errors import ProvisionError
from provisioner.spec import build_spec
from provisioner.state import State
from provisioner.verify import CheckResult, Counts, Report
from provisioner.workspace import Workspace

REPO = Path(__file__).resolve().parents[2]
NODES = ["cp1", "worker1", "worker2"]


def _report(*results: tuple[str, str, str, str]) -> Report:
    return Report([CheckResult(node, check, outcome, message) for node, check, outcome, message in results])


def _mixed() -> Report:
    return _report(
        ("cp1", "node_ready", "passed", ""),
        ("worker1", "node_ready", "passed", ""),
        ("worker1", "swap_off", "skipped", "container node: the host has swap on (1 area(s))"),
        ("cp1", "docker_info_answers", "skipped", "not configured: container_runtime=containerd, no docker"),
        ("worker1", "dns_resolves_from_a_pod_on_the_node", "skipped", "kube_smoke_image is not set"),
        ("(cluster)", "system_pods_running_and_ready", "passed", ""),
    )


def test_the_closing_line_counts_passed_skipped_and_failed() -> None:
    report = _report(
        ("cp1", "a", "passed", ""),
        ("worker1", "a", "failed", "assert 0 == 1"),
        ("cp1", "b", "skipped", "absent: NetworkManager is not installed"),
        ("worker1", "b", "passed", ""),
    )
    assert report.counts() == Counts(2, 1, 1)
    assert report.closing_line() == "verify: 2 passed, 1 skipped, 1 failed"


def test_all_checks_passed_only_when_nothing_skipped_or_failed() -> None:
    assert _report(("cp1", "a", "passed", "")).summary() == "all checks passed"
    skipped = _report(("cp1", "a", "passed", ""), ("cp1", "b", "skipped", "absent: no /etc/fstab on this node"))
    assert skipped.summary() == "1 passed, 1 skipped, 0 failed"
    assert "all checks passed" not in skipped.summary()
    failed = _report(("cp1", "a", "failed", "x"))
    assert failed.summary() == "0 passed, 0 skipped, 1 FAILED"


@pytest.mark.parametrize(
    ("reason", "container_nodes", "expected"),
    [
        ("container node: loading modules at boot belongs to the host", True, True),
        ("container node: loading modules at boot belongs to the host", False, False),  # a VM has its own kernel
        ("not configured: node_prep_firewall=off", False, True),
        ("absent: NetworkManager is not installed", False, True),
        ("absent: NetworkManager is not installed", True, True),
        ("kube_smoke_image is not set: the workload checks cannot run", True, False),  # no category
        ("the kernel has no ip_vs (container node sharing a host kernel)", True, False),  # not the prefix
        ("", True, False),
        ("not configured", True, False),  # a category with no colon and no reason
    ],
)
def test_a_skip_is_expected_only_in_a_category_the_cluster_kind_explains(
    reason: str, container_nodes: bool, expected: bool
) -> None:
    assert (verify.unexpected_skip(reason, container_nodes) == "") is expected


def test_an_unexpected_skip_is_a_failure_that_names_its_reason() -> None:
    report = _mixed()
    report.judge_skips(container_nodes=True)
    assert report.counts() == Counts(3, 2, 1)
    (bad,) = report.failed
    assert (bad.node, bad.check, bad.unexpected_skip) == ("worker1", "dns_resolves_from_a_pod_on_the_node", True)
    assert "outside the expected categories" in bad.message and "kube_smoke_image is not set" in bad.message
    assert "FAIL" in report.table(NODES)
    # The expected skips are still listed with their reasons under the table.
    assert report.skip_reasons() == [
        "  skip: container node: the host has swap on (1 area(s)): swap_off (worker1)",
        "  skip: not configured: container_runtime=containerd, no docker: docker_info_answers (cp1)",
    ]


def test_a_container_node_skip_on_machines_is_a_failure() -> None:
    report = _mixed()
    report.judge_skips(container_nodes=False)
    assert report.counts() == Counts(3, 1, 2)
    assert {r.check for r in report.failed} == {"swap_off", "dns_resolves_from_a_pod_on_the_node"}
    swap = next(r for r in report.failed if r.check == "swap_off")
    assert swap.message.startswith("skipped as on a container node, but this cluster's nodes are machines: ")


def test_parse_junit_takes_the_skip_reason_without_pytests_prefix(tmp_path: Path) -> None:
    path = tmp_path / "v.xml"
    path.write_text(
        '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">'
        '<testcase name="test_swap_off[ansible://cp1]"><skipped message="Skipped: container node: swap is the'
        " host's\">s</skipped></testcase></testsuite></testsuites>"
    )
    report = verify.parse_junit(path, ["cp1"])
    assert report.results[0].message == "container node: swap is the host's"
    report.judge_skips(container_nodes=True)
    assert report.counts() == Counts(0, 1, 0)


def _table_text(report: Report, nodes: list[str]) -> str:
    return "==> verify (testinfra): 3 passed (1.0s)\n" + report.table(nodes) + "\n  skip: a: b (c)\nverify: 3 passed\n"


def test_the_printed_table_reads_back_cell_by_cell() -> None:
    report = _report(
        ("cp1", "sysctl net.ipv4.ip_forward", "passed", ""),
        ("worker1", "sysctl net.ipv4.ip_forward", "failed", "x"),
        ("cp1", "pod_reaches_pods_on_every_other_node", "passed", ""),
        ("cp1", "pod_reaches_pods_on_every_other_node", "passed", ""),
        ("worker1", "pod_reaches_pods_on_every_other_node", "skipped", "absent: y"),
        ("(cluster)", "etcd_members_healthy_with_one_leader", "passed", ""),
    )
    (table,) = verify.parse_tables(_table_text(report, ["cp1", "worker1"]))
    assert table == {
        "sysctl net.ipv4.ip_forward": {"cp1": "ok", "worker1": "FAIL", "(cluster)": "-"},
        "pod_reaches_pods_on_every_other_node": {"cp1": "ok(2)", "worker1": "skip", "(cluster)": "-"},
        "etcd_members_healthy_with_one_leader": {"cp1": "-", "worker1": "-", "(cluster)": "ok"},
    }


def test_every_table_of_an_output_is_read_and_the_last_one_is_the_last_verify() -> None:
    first = _report(("cp1", "docker_answers", "failed", "down"))
    second = _report(("cp1", "docker_answers", "passed", ""))
    text = _table_text(first, ["cp1"]) + "==> stage runtime: ok\n" + _table_text(second, ["cp1"])
    assert [t["docker_answers"]["cp1"] for t in verify.parse_tables(text)] == ["FAIL", "ok"]
    assert verify.parse_tables("no table here\ncheck  cp1\n") == []


def test_table_problems_name_each_wanted_check_that_did_not_pass_on_a_node() -> None:
    table = {
        "dns_resolves_from_a_pod_on_the_node": {"cp1": "ok", "worker1": "skip", "(cluster)": "-"},
        "nodeport_answers_from_the_host": {"cp1": "ok(2)", "worker1": "ok", "(cluster)": "-"},
        "system_pods_running_and_ready": {"cp1": "-", "worker1": "-", "(cluster)": "ok"},
    }
    wanted = {
        "dns_resolves_from_a_pod_on_the_node": ["cp1", "worker1"],
        "nodeport_answers_from_the_host": ["cp1", "worker1"],
        "system_pods_running_and_ready": ["(cluster)"],
        "pod_reaches_pods_on_every_other_node": ["cp1"],
        "node_ready": ["worker9"],
    }
    assert verify.table_problems(table, wanted) == [
        "dns_resolves_from_a_pod_on_the_node on worker1: skip",
        "pod_reaches_pods_on_every_other_node: not in the table",
        "node_ready: not in the table",
    ]
    assert verify.table_problems(table, {"nodeport_answers_from_the_host": ["worker9"]}) == [
        "nodeport_answers_from_the_host: no column worker9"
    ]
    # A check's name somewhere in the output is not enough: only an ok cell counts.
    assert verify.table_problems(table, {"system_pods_running_and_ready": ["cp1"]}) == [
        "system_pods_running_and_ready on cp1: -"
    ]


def test_closing_counts_are_read_in_order() -> None:
    text = (
        "verify: 3 passed, 1 skipped, 2 failed\nerror: verify: 2 checks failed\nverify: 6 passed, 1 skipped, 0 failed\n"
    )
    assert verify.closing_counts(text) == [Counts(3, 1, 2), Counts(6, 1, 0)]


def _command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, provider: str, report: Report) -> tuple[str, Any]:
    seen: dict[str, Any] = {}

    def fake_run(
        inventory: Path, root: Path, finished: list[str], nodes: list[str], *, container_nodes: bool
    ) -> tuple[Report, Path]:
        seen["container_nodes"] = container_nodes
        report.judge_skips(container_nodes)
        return report, root / "logs" / "verify.log"

    monkeypatch.setattr(verify, "run_verify", fake_run)
    ws = Workspace(tmp_path)
    state = State.load(ws.state_file)
    state.mark("prepare", "done", 1.0)
    out = io.StringIO()
    spec = build_spec({"provider": provider, "nodes": 3})
    try:
        verify_cmd.run_verify(ws, spec, state, out)
        seen["error"] = None
    except ProvisionError as exc:
        seen["error"] = exc
    seen["state"] = State.load(ws.state_file).last_verify
    return out.getvalue(), seen


def test_verify_ends_with_the_counts_and_never_says_all_passed_over_a_skip(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    report = _report(
        ("cp1", "swap_off", "skipped", "container node: swap is the host's"),
        ("cp1", "node_ready", "passed", ""),
    )
    out, seen = _command(monkeypatch, tmp_path, "docker", report)
    assert seen["container_nodes"] is True and seen["error"] is None and seen["state"] == "passed"
    assert "all checks passed" not in out
    assert "==> verify (testinfra): 1 passed, 1 skipped, 0 failed" in out
    assert "  skip: container node: swap is the host's: swap_off (cp1)" in out
    assert out.rstrip().splitlines()[-1] == "verify: 1 passed, 1 skipped, 0 failed"


def test_verify_fails_on_machines_when_a_check_skipped_as_on_a_container_node(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    report = _report(
        ("cp1", "swap_off", "skipped", "container node: swap is the host's"),
        ("cp1", "node_ready", "passed", ""),
    )
    out, seen = _command(monkeypatch, tmp_path, "libvirt", report)
    assert seen["container_nodes"] is False and seen["state"] == "failed"
    error = seen["error"]
    assert isinstance(error, ProvisionError) and error.exit_code == 5
    assert "1 of them skipped for a reason this cluster does not explain" in error.message
    assert "  FAIL cp1: swap_off: skipped as on a container node" in out
    assert out.rstrip().splitlines()[-1] == "verify: 1 passed, 0 skipped, 1 failed"
    assert verify.parse_tables(out)[-1]["swap_off"]["cp1"] == "FAIL"


def _skip_calls(path: Path) -> list[tuple[int, ast.expr]]:
    calls = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("skip", "skipif", "importorskip", "xfail")
            and isinstance(node.func.value, ast.Name | ast.Attribute)
        ):
            calls.append((node.lineno, node.args[0] if node.args else ast.Constant("")))
    return calls


def _leading_text(arg: ast.expr) -> str:
    """The literal text a skip reason starts with (up to its first formatted value)."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        return str(arg.values[0].value)
    return ""


INFRA_SUITES = sorted((REPO / "tests" / "infra").glob("*.py"))


@pytest.mark.parametrize("path", INFRA_SUITES, ids=[p.name for p in INFRA_SUITES])
def test_every_skip_in_the_infra_suites_names_a_known_category(path: Path) -> None:
    """The rule verify applies, kept where it is written: each skip in tests/infra starts with a
    category of SKIP_CATEGORIES and a colon (pytest.skip only; no skipif or xfail)."""
    bad = []
    for line, arg in _skip_calls(path):
        text = _leading_text(arg)
        if not verify.skip_category(text):
            bad.append(f"{path.name}:{line}: {text!r}")
    assert not bad, "skip reasons outside " + ", ".join(verify.SKIP_CATEGORIES) + ": " + "; ".join(bad)


def test_the_infra_suites_skip_at_all() -> None:
    """The scan above sees the skips (a scan that found none would pass for the wrong reason)."""
    found = [_leading_text(arg) for path in INFRA_SUITES for _, arg in _skip_calls(path)]
    assert len(found) >= 10
    assert {verify.skip_category(t) for t in found} == set(verify.SKIP_CATEGORIES)
