"""Unit tests of the node_prep role's filter plugin (no machines, no network)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

PLUGIN = Path(__file__).resolve().parents[2] / "roles" / "node_prep" / "filter_plugins" / "node_prep.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("node_prep_filters", PLUGIN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FILTERS = _load()


@pytest.mark.parametrize(
    ("addresses", "cidr", "expected"),
    [
        pytest.param(["10.0.2.15", "192.168.56.11"], "192.168.56.0/24", "192.168.56.11", id="skips-vagrant-nat"),
        pytest.param(["192.168.56.12", "192.168.56.11"], "192.168.56.0/24", "192.168.56.12", id="first-match"),
        pytest.param(["10.0.2.15"], "192.168.56.0/24", "", id="none-inside"),
        pytest.param([], "192.168.56.0/24", "", id="empty"),
        pytest.param(None, "192.168.56.0/24", "", id="none"),
        pytest.param(
            ["garbage", "", "172.17.0.1", "192.168.70.13"], "192.168.70.0/24", "192.168.70.13", id="ignores-garbage"
        ),
        pytest.param(["192.168.70.13/24"], "192.168.70.0/24", "192.168.70.13", id="with-prefix"),
        pytest.param(["192.168.70.13"], "192.168.70.5/24", "192.168.70.13", id="non-strict-cidr"),
        pytest.param(["fd00::5", "192.168.70.13"], "fd00::/64", "fd00::5", id="ipv6"),
    ],
)
def test_address_in(addresses: list[str] | None, cidr: str, expected: str) -> None:
    assert FILTERS.node_prep_address_in(addresses, cidr) == expected


def test_bad_cidr_raises() -> None:
    with pytest.raises(ValueError):
        FILTERS.node_prep_address_in(["192.168.56.1"], "not-a-cidr")


def test_filter_module_exports() -> None:
    assert set(FILTERS.FilterModule().filters()) == {"node_prep_address_in"}
