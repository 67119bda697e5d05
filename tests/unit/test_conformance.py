"""The conformance command's own parts: the junit summary by SIG, ginkgo's progress, the phases, the
suite's module, the test images' specs, the multi-image archive, and the refusals before anything runs."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner import cli
from provisioner.bundle import images as img
from provisioner.command import conformance as command
from provisioner.conformance import report, suite, testimages
from provisioner.errors import ProvisionError

JUNIT = """<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="5" disabled="0" errors="0" failures="1" time="60">
  <testsuite name="Kubernetes e2e suite" package="/" tests="5" failures="1" errors="0" skipped="1" time="60">
    <testcase name="[SynchronizedBeforeSuite]" classname="Kubernetes e2e suite" status="passed" time="2"/>
    <testcase name="[It] [sig-network] Services should serve a basic endpoint from pods [Conformance]"
      classname="Kubernetes e2e suite" status="passed" time="10"/>
    <testcase name="[It] [sig-network] DNS should provide DNS for the cluster [Conformance]"
      classname="Kubernetes e2e suite" status="failed" time="30">
      <failure message="timed out" type="failed">timed out</failure>
    </testcase>
    <testcase name="[It] [sig-node] Pods should be submitted and removed [Conformance]"
      classname="Kubernetes e2e suite" status="skipped" time="0"><skipped message="skipped - no second node"/>
    </testcase>
    <testcase name="[It] [sig-storage] CSI mock volume should work" classname="Kubernetes e2e suite"
      status="skipped" time="0"><skipped message="skipped"/></testcase>
    <testcase name="[ReportAfterSuite] [sig-testing] Log Check" classname="Kubernetes e2e suite"
      status="passed" time="0"/>
    <testcase name="[It] [sig-node] Pods should get a host IP [Conformance]"
      classname="Kubernetes e2e suite" status="passed" time="5"/>
  </testsuite>
</testsuites>
"""


def test_junit_is_counted_by_sig_and_names_the_failures(tmp_path: Path) -> None:
    path = tmp_path / "junit_01.xml"
    path.write_text(JUNIT, encoding="utf-8")
    summary = report.read_junit([path])
    assert (summary.passed, summary.failed, summary.skipped) == (2, 1, 1)
    assert summary.by_sig["sig-network"] == report.SigCounts(passed=1, failed=1, skipped=0)
    assert summary.by_sig["sig-node"] == report.SigCounts(passed=1, failed=0, skipped=1)
    assert set(summary.by_sig) == {"sig-network", "sig-node"}  # not the left-out spec, not the report node
    assert summary.failures == ["[sig-network] DNS should provide DNS for the cluster [Conformance]"]
    lines = report.table(summary).splitlines()
    assert lines[-1].split() == ["total", "2", "1", "1"]


def test_a_failed_suite_node_counts_as_a_failure(tmp_path: Path) -> None:
    path = tmp_path / "junit_01.xml"
    path.write_text(
        JUNIT.replace(
            '<testcase name="[SynchronizedBeforeSuite]" classname="Kubernetes e2e suite" status="passed" time="2"/>',
            '<testcase name="[SynchronizedBeforeSuite]" status="failed"><failure message="x">x</failure></testcase>',
        ),
        encoding="utf-8",
    )
    summary = report.read_junit([path])
    assert summary.failed == 2 and summary.by_sig["(suite)"].failed == 1


def test_tally_follows_ginkgo_verbose_output() -> None:
    tally = report.Tally()
    lines = [
        "Will run 3 of 3206 specs",
        "------------------------------",
        "• [12.345 seconds]",
        "[sig-network] Services should serve a basic endpoint from pods [Conformance]",
        "• [FAILED] [30.001 seconds]",
        "S [SKIPPED] [0.000 seconds]",
        "• Failure in Spec Setup",  # not a finished spec: no duration or state after the bullet
    ]
    finished = [tally.feed(line) for line in lines]
    assert finished == [False, False, True, False, True, True, False]
    assert (tally.total, tally.done, tally.failed) == (3, 3, 1)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="•S"), max_size=80))
def test_tally_ignores_lines_that_are_not_a_finished_spec(line: str) -> None:
    tally = report.Tally(total=5)
    assert tally.feed(line) is False or report.WILL_RUN.search(line)
    assert tally.done == 0


def test_phases_run_serial_tests_alone_after_the_parallel_ones() -> None:
    assert command.phases(1) == [command.Phase("all", "", 1)]
    assert command.phases(4) == [command.Phase("parallel", "!Serial", 4), command.Phase("serial", "Serial", 1)]
    flags = command.ginkgo_filters(command.phases(4)[0], r"\[Conformance\]", "sig-storage")
    assert flags == [r"--focus=\[Conformance\]", "--skip=sig-storage", "--label-filter=!Serial"]


def test_the_suite_module_pins_the_default_release_and_names_its_programs() -> None:
    assert suite.pinned_release() == "1.37.2"
    imports = suite.tool_imports()
    for package in ("k8s.io/kubernetes/test/e2e", "github.com/onsi/ginkgo/v2/ginkgo"):
        assert package in imports
    build = suite._build()
    assert set(build.packages) == set(suite.PROGRAMS)
    assert all(p in imports for p in build.packages.values())


def test_a_cluster_of_another_release_is_refused_before_any_build(tmp_path: Path) -> None:
    with pytest.raises(ProvisionError, match=r"built for 1\.37\.2 only"):
        suite.ensure_suite("1.36.3", tmp_path / "log", lambda _: None)


def test_test_image_specs_cover_the_conformance_images(tmp_path: Path) -> None:
    listed = [
        "registry.k8s.io/e2e-test-images/agnhost:2.55",
        "registry.k8s.io/e2e-test-images/agnhost:2.66.1",
        "registry.k8s.io/e2e-test-images/busybox:1.37.0-2",
        "registry.k8s.io/e2e-test-images/nginx:1.27.0-2",
        "registry.k8s.io/e2e-test-images/nautilus:1.8",
        "registry.k8s.io/e2e-test-images/nonroot:1.5",
        "registry.k8s.io/pause:3.10.2",
        "registry.k8s.io/e2e-test-images/volume/nfs:1.6.0",
    ]
    module = tmp_path / "module"
    (module / "test" / "images" / "agnhost" / "porter").mkdir(parents=True)
    (module / "test" / "images" / "nautilus" / "html").mkdir(parents=True)
    (module / "test" / "images" / "nautilus" / "html" / "data.json").write_text("{}", encoding="utf-8")
    busybox = tmp_path / "busybox"
    busybox.write_text("#!/bin/sh\necho 'sh cat env wget busybox'\n", encoding="utf-8")
    busybox.chmod(0o755)
    shell = tmp_path / "bash-static"
    made = {
        s.name: s for s in testimages.specs(listed, suite.Suite(tmp_path, "1.37.2"), module, tmp_path, busybox, shell)
    }
    assert sorted(made) == sorted(set(listed) - {"registry.k8s.io/pause:3.10.2", listed[-1]})
    prev, cur = made[listed[0]], made[listed[1]]
    assert prev.env != cur.env and prev.files == cur.files  # two images, the same layers
    # busybox's applets, but bash as sh (it passes on environment variables such as data-1)
    assert made[listed[2]].links == {"/bin/cat": "busybox", "/bin/env": "busybox", "/bin/wget": "busybox"}
    assert made[listed[2]].files == {"/bin/busybox": busybox, "/bin/sh": shell}
    nautilus = made[listed[4]]
    assert set(nautilus.files) == {"/data.json"} and nautilus.cmd == ("test-webserver",)
    assert nautilus.over is not None and "/agnhost" in nautilus.over.files
    assert made[listed[5]].user == "1234"


def test_one_archive_holds_several_images_and_stores_a_shared_layer_once(tmp_path: Path) -> None:
    userland = tmp_path / "userland.tar"
    with tarfile.open(userland, "w") as tar:
        info = tarfile.TarInfo("etc/os-release")
        data = b"ID=debian\n"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    program = tmp_path / "prog"
    program.write_bytes(b"\x7fELF")
    specs = [
        img.ImageSpec(name="example.test/a:1", files={"/prog": program}, userland=True, env=("T=1",)),
        img.ImageSpec(name="example.test/a:2", files={"/prog": program}, userland=True, env=("T=2",)),
        img.ImageSpec(name="example.test/b:1", files={"/prog": program}, links={"/bin/x": "prog"}),
    ]
    specs.append(img.ImageSpec(name="example.test/c:1", files={"/extra": program}, userland=True, over=specs[0]))
    out = tmp_path / "all.tar"
    img.write_archives(specs, out, userland)
    assert sorted(img.archive_tags(out)) == [
        "example.test/a:1",
        "example.test/a:2",
        "example.test/b:1",
        "example.test/c:1",
    ]
    with tarfile.open(out) as tar:
        names = tar.getnames()
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
    layers = [n for n in names if n.endswith("/layer.tar")]
    # the userland once, the a images' layer once, b's own, c's own
    assert len(layers) == len(set(layers)) == 4
    assert manifest[0]["Layers"][0] == manifest[1]["Layers"][0]
    assert manifest[3]["Layers"][:2] == manifest[0]["Layers"] and len(manifest[3]["Layers"]) == 3
    assert manifest[0]["Config"] != manifest[1]["Config"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["conformance", "--focus", "[Conformance"], "--focus '[Conformance' is not a regular expression"),
        (["conformance", "--parallel", "0"], "--parallel 0: give 1 or more test processes"),
    ],
)
def test_bad_options_are_refused_in_one_sentence(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--dir", str(tmp_path / "c"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_a_report_cut_short_is_named_instead_of_summed(tmp_path: Path) -> None:
    path = tmp_path / "junit_01.xml"
    path.write_text(JUNIT[: len(JUNIT) // 2], encoding="utf-8")
    with pytest.raises(ProvisionError, match="cannot be read") as caught:
        report.read_junit([path])
    assert "e2e.log" in caught.value.message
