"""kube_join puts the control-plane taint back once workers exist (tasks/0040-control-plane-taint.yml).

The role's own task file runs through ansible-playbook on localhost against a stand-in kubectl (a
script on PATH that keeps the nodes in a JSON file and answers `get nodes -o json` and
`taint nodes` as kubectl does), so the decision, the command and changed_when are the real ones.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.unit.test_playbooks_syntax import _ansible_playbook

REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "roles" / "kube_join" / "tasks" / "0040-control-plane-taint.yml"
TAINT = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}

FAKE_KUBECTL = """#!{python}
import json, os, sys
state = os.environ["FAKE_KUBE_STATE"]
args = sys.argv[1:]
with open(state + ".calls", "a") as log:
    log.write(json.dumps(args) + "\\n")
assert args[:2] == ["--kubeconfig", os.environ["FAKE_KUBE_ADMIN_CONF"]], args
nodes = json.load(open(state))
if args[2:] == ["get", "nodes", "-o", "json"]:
    print(json.dumps({{"apiVersion": "v1", "kind": "List", "items": nodes}}))
elif args[2:4] == ["taint", "nodes"]:
    name, spec = args[4], args[5]
    key, effect = spec.split(":")
    node = next(n for n in nodes if n["metadata"]["name"] == name)
    taints = node.setdefault("spec", {{}}).setdefault("taints", [])
    if any(t["key"] == key and t["effect"] == effect for t in taints):
        sys.stderr.write(f"error: node {{name}} already has {{key}} taint(s) with same effect(s) and --overwrite is false\\n")
        sys.exit(1)
    taints.append({{"key": key, "effect": effect}})
    json.dump(nodes, open(state, "w"))
    print(f"node/{{name}} tainted")
else:
    sys.exit(f"unexpected kubectl call: {{args}}")
"""


def _node(name: str, control_plane: bool, taints: list[dict[str, str]] | None = None) -> dict[str, Any]:
    labels = {"kubernetes.io/hostname": name}
    if control_plane:
        labels["node-role.kubernetes.io/control-plane"] = ""
    return {"kind": "Node", "metadata": {"name": name, "labels": labels}, "spec": {"taints": taints or []}}


class Cluster:
    def __init__(self, root: Path, nodes: list[dict[str, Any]]) -> None:
        self.root = root
        self.state = root / "nodes.json"
        self.state.write_text(json.dumps(nodes))
        self.admin_conf = root / "admin.conf"
        self.admin_conf.write_text("apiVersion: v1\nkind: Config\n")
        bin_dir = root / "bin"
        bin_dir.mkdir()
        kubectl = bin_dir / "kubectl"
        kubectl.write_text(FAKE_KUBECTL.format(python=sys.executable))
        kubectl.chmod(0o755)
        play = [
            {
                "hosts": "localhost",
                "gather_facts": False,
                "vars": {"kube_join_control_plane_host": "localhost"},
                # The role's task file with the role's defaults and vars, as the join play has them.
                "tasks": [{"ansible.builtin.include_role": {"name": "kube_join", "tasks_from": TASKS.name}}],
            }
        ]
        (root / "play.yml").write_text(yaml.safe_dump(play))

    def run(self, *args: str) -> tuple[int, str]:
        calls = Path(f"{self.state}.calls")
        calls.write_text("")
        env = {
            **os.environ,
            "PATH": f"{self.root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "FAKE_KUBE_STATE": str(self.state),
            "FAKE_KUBE_ADMIN_CONF": str(self.admin_conf),
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "ANSIBLE_LOCAL_TEMP": str(self.root / "tmp"),
        }
        proc = subprocess.run(
            [
                _ansible_playbook(),
                "-i",
                "localhost,",
                "-c",
                "local",
                "-e",
                f"ansible_python_interpreter={sys.executable}",
                "-e",
                f"kube_join_admin_conf={self.admin_conf}",
                *args,
                str(self.root / "play.yml"),
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=180,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        match = re.search(r"localhost\s+:\s+ok=\d+\s+changed=(\d+)", proc.stdout)
        assert match, proc.stdout[-2000:]
        self.calls = [json.loads(line) for line in calls.read_text().splitlines()]
        return int(match.group(1)), proc.stdout

    def taints(self, name: str) -> list[dict[str, str]]:
        nodes = json.loads(self.state.read_text())
        taints: list[dict[str, str]] = next(n for n in nodes if n["metadata"]["name"] == name)["spec"]["taints"]
        return taints

    def tainted(self) -> bool:
        return any(call[2:4] == ["taint", "nodes"] for call in self.calls)


ONE_NODE_CLUSTER_WITH_WORKERS = [_node("cp1", True), _node("worker1", False), _node("worker2", False)]


def test_workers_joined_a_one_node_cluster_the_taint_comes_back_once(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, ONE_NODE_CLUSTER_WITH_WORKERS)
    changed, _ = cluster.run()
    assert changed == 1
    assert cluster.taints("cp1") == [TAINT]
    assert cluster.taints("worker1") == []
    # Converged: the taint is there, nothing runs but the read.
    changed, _ = cluster.run()
    assert changed == 0 and not cluster.tainted()


def test_a_control_plane_made_schedulable_on_purpose_stays_untainted(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, ONE_NODE_CLUSTER_WITH_WORKERS)
    changed, _ = cluster.run("-e", "kube_control_plane_schedulable=true")
    assert changed == 0 and not cluster.tainted()
    assert cluster.taints("cp1") == []


def test_without_workers_the_control_plane_stays_untainted(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, [_node("cp1", True)])
    changed, _ = cluster.run()
    assert changed == 0 and not cluster.tainted()


def test_check_mode_says_what_it_would_taint_and_taints_nothing(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, ONE_NODE_CLUSTER_WITH_WORKERS)
    _, out = cluster.run("--check")
    assert "cp1 would get the node-role.kubernetes.io/control-plane:NoSchedule taint back" in out
    assert not cluster.tainted() and cluster.taints("cp1") == []


def test_no_control_plane_yet_nothing_is_read(tmp_path: Path) -> None:
    """Check mode on fresh nodes: no admin.conf on the control plane, kubectl is not called."""
    cluster = Cluster(tmp_path, ONE_NODE_CLUSTER_WITH_WORKERS)
    cluster.admin_conf.unlink()
    changed, _ = cluster.run("--check")
    assert changed == 0 and cluster.calls == []
