"""The swarm's overlay address pool: the flag, the host-network check before anything is made, the
plan, the generated inventory, and a changed pool on an existing swarm. No machines."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from provisioner import hostnet, preflight
from provisioner.cli import _overrides, build_parser, main
from provisioner.command import plan as plan_cmd
from provisioner.command.up import UpOptions
from provisioner.errors import ProvisionError, SpecError
from provisioner.inventory import build_inventory
from provisioner.spec import build_spec
from provisioner.vagrant import SshInfo
from provisioner.workspace import Workspace

# This host: a docker bridge, a libvirt network of another cluster inside 10.0.0.0/8, and the
# pod network of a Kubernetes cluster somewhere else.
ROUTES = """[{"dst":"172.17.0.0/16","dev":"docker0","protocol":"kernel","scope":"link","flags":[]},
{"dst":"10.254.159.0/24","dev":"virbr1","protocol":"kernel","scope":"link","flags":[]},
{"dst":"10.244.0.0/16","dev":"tun0","flags":[]}]"""


@pytest.fixture
def host_with_ten_networks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostnet, "host_networks", lambda: hostnet.parse_ip_json(ROUTES, "[]"))


def _spec(args: list[str], tmp_path: Path) -> tuple[Workspace, UpOptions]:
    parsed = build_parser().parse_args(["--dir", str(tmp_path / "ws"), "plan", *args])
    return Workspace(tmp_path / "ws"), UpOptions(overrides=_overrides(parsed))


def test_flag_reaches_the_spec(tmp_path: Path) -> None:
    ws, opts = _spec(["--engine", "swarm", "--swarm-address-pool", "172.30.0.0/16"], tmp_path)
    spec, _ = preflight.resolve_spec(ws, opts.overrides, None)
    assert spec.swarm_address_pool == "172.30.0.0/16"


@pytest.mark.usefixtures("host_with_ten_networks")
def test_a_chosen_pool_overlapping_the_host_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    ws, opts = _spec(["--engine", "swarm", "--swarm-address-pool", "10.254.0.0/16"], tmp_path)
    spec, _ = preflight.resolve_spec(ws, opts.overrides, None)
    with pytest.raises(
        SpecError,
        match=r"10\.254\.0\.0/16 overlaps the host's network 10\.254\.159\.0/24 on virbr1; choose a pool clear of it",
    ):
        preflight.check_networks(spec)
    code = main(["--dir", str(tmp_path / "ws"), "up", "--engine", "swarm", "--swarm-address-pool", "10.254.0.0/16"])
    assert code == 2 and not (tmp_path / "ws").exists()


@pytest.mark.usefixtures("host_with_ten_networks")
def test_the_default_pool_overlapping_the_host_is_noted_and_pod_cidrs_are_not_checked_for_swarm(
    tmp_path: Path,
) -> None:
    ws, opts = _spec(["--engine", "swarm", "--provider", "docker"], tmp_path)
    spec, _ = preflight.resolve_spec(ws, opts.overrides, None)
    # The default pod CIDR 10.244.0.0/16 is this host's tun0 route: no matter for a swarm.
    notes = preflight.check_networks(spec)
    assert len(notes) == 1 and "10.254.159.0/24 on virbr1" in notes[0] and "--swarm-address-pool" in notes[0]
    out = io.StringIO()
    assert plan_cmd.plan(ws, opts, out) == 0
    text = out.getvalue()
    assert "swarm pool   10.0.0.0/8 (Docker's default), /24 overlay networks\n" in text
    assert "pod CIDR" not in text and "service CIDR" not in text
    assert f"note         {notes[0]}\n" in text
    assert not (tmp_path / "ws").exists()


@pytest.mark.usefixtures("host_with_ten_networks")
def test_kubernetes_still_checks_pod_and_service_cidrs_and_ignores_the_pool(tmp_path: Path) -> None:
    ws, opts = _spec(["--provider", "docker"], tmp_path)
    spec, _ = preflight.resolve_spec(ws, opts.overrides, None)
    with pytest.raises(SpecError, match=r"pod_cidr 10\.244\.0\.0/16 overlaps the host's network 10\.244\.0\.0/16"):
        preflight.check_networks(spec)
    code = main(["--dir", str(tmp_path / "ws"), "plan", "--swarm-address-pool", "172.30.0.0/16"])
    assert code == 2


def test_plan_of_a_chosen_pool_clear_of_the_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostnet, "host_networks", lambda: [])
    ws, opts = _spec(["--engine", "swarm", "--provider", "docker", "--swarm-address-pool", "172.30.0.0/16"], tmp_path)
    out = io.StringIO()
    assert plan_cmd.plan(ws, opts, out) == 0
    assert "swarm pool   172.30.0.0/16, /24 overlay networks\n" in out.getvalue()
    assert "note" not in out.getvalue()


def test_inventory_passes_a_chosen_pool_to_the_swarm_role_and_leaves_the_default_to_docker(tmp_path: Path) -> None:
    ssh = {n: SshInfo(n, "127.0.0.1", 2200 + i, "vagrant", "/k") for i, n in enumerate(["manager1", "worker1"])}
    chosen = build_spec({"engine": "swarm", "nodes": 2, "swarm_address_pool": "172.30.0.0/16"})
    assert build_inventory(chosen, ssh, tmp_path)["all"]["vars"]["swarm_default_addr_pool"] == ["172.30.0.0/16"]
    default = build_spec({"engine": "swarm", "nodes": 2})
    assert "swarm_default_addr_pool" not in build_inventory(default, ssh, tmp_path)["all"]["vars"]


def test_a_changed_pool_on_an_existing_swarm_is_refused() -> None:
    old = build_spec({"engine": "swarm"})
    new = build_spec({"engine": "swarm", "swarm_address_pool": "172.30.0.0/16"})
    with pytest.raises(ProvisionError, match=r"this cluster exists with swarm_address_pool 10\.0\.0\.0/8"):
        preflight.refuse_incompatible_change(old, new)
    preflight.refuse_incompatible_change(old, old)
