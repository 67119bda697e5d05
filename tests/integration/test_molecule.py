"""Each role's Molecule scenario, run as a user would (`molecule test` in the role folder):
create, converge, idempotence (a second converge with changed=0), verify, destroy."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.integration.conftest import REPO, ensure_docker

pytestmark = pytest.mark.integration

SCENARIOS = {"node_prep": "192.168.160.0/24", "container_runtime": "192.168.161.0/24"}


@pytest.mark.parametrize("role", sorted(SCENARIOS))
def test_molecule_scenario(role: str) -> None:
    reason = ensure_docker()
    if reason:
        pytest.skip(reason)
    build = subprocess.run(
        [sys.executable, str(REPO / "provision.py"), "image", "build"], capture_output=True, text=True, check=False
    )
    assert build.returncode == 0, build.stdout + build.stderr
    bindir = os.path.dirname(sys.executable)
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""), MOLECULE_NODE_SUBNET=SCENARIOS[role])
    env.pop("MOLECULE_NODE_IMAGE", None)
    proc = subprocess.run(
        [os.path.join(bindir, "molecule"), "test"],
        cwd=REPO / "roles" / role,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert "idempotence" in output
    assert "failed=0" in output
