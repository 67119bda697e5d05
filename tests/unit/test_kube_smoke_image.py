"""kube_packages imports verify's smoke-test image from the controller's archive
(tasks/0042-smoke-image.yml), for clusters whose install source does not bring it (pkgs.k8s.io).

The role's own task file runs through ansible-playbook on localhost against a stand-in ctr (a script
on PATH that keeps containerd's image list in a JSON file and answers `--version`, `images ls -q
name==...` and `images import FILE`, reading the archive's RepoTags as ctr does), so the decision to
import, the command and changed_when are the real ones.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from provisioner.bundle import images as img
from tests.unit.test_playbooks_syntax import _ansible_playbook

REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "roles" / "kube_packages" / "tasks" / "0042-smoke-image.yml"
NAME = "provisioner.local/smoke-web:1.37.2"

FAKE_CTR = """#!{python}
import hashlib, json, os, sys, tarfile
state = os.environ["FAKE_CTR_STATE"]
args = sys.argv[1:]
with open(state + ".calls", "a") as log:
    log.write(json.dumps(args) + "\\n")
if args == ["--version"]:
    print("ctr github.com/containerd/containerd v1.7.24")
    sys.exit(0)
assert args[:2] == ["-n", "k8s.io"], args
images = json.load(open(state)) if os.path.exists(state) else {{}}
if args[2:5] == ["images", "ls", "-q"]:
    wanted = [f.removeprefix("name==") for f in args[5:]]
    assert all(f.startswith("name==") for f in args[5:]), args
    for name in sorted(images):
        if not wanted or name in wanted:
            print(name)
elif args[2:4] == ["images", "import"] and len(args) == 5:
    with tarfile.open(args[4]) as tar:
        tags = [t for entry in json.load(tar.extractfile("manifest.json")) for t in entry["RepoTags"]]
    digest = hashlib.sha256(open(args[4], "rb").read()).hexdigest()
    for tag in tags:
        images[tag] = digest
        print(f"unpacking {{tag}} (sha256:{{digest}})...done")
    json.dump(images, open(state, "w"))
else:
    sys.exit(f"unexpected ctr call: {{args}}")
"""


class Node:
    """localhost as a node: a stand-in ctr, the role's cache directory, the controller's archive."""

    def __init__(self, root: Path) -> None:
        if os.geteuid() != 0:
            pytest.skip("not root: the role's tasks give their files to root (owner: root)")
        self.root = root
        self.state = root / "images.json"
        self.cache = root / "node-cache"
        self.archive = root / "controller" / "smoke-web-1.37.2.tar"
        self.write_archive(b"smoke-web 1")
        bin_dir = root / "bin"
        bin_dir.mkdir()
        ctr = bin_dir / "ctr"
        ctr.write_text(FAKE_CTR.format(python=sys.executable))
        ctr.chmod(0o755)
        play = [
            {
                "hosts": "localhost",
                "gather_facts": False,
                # The role's task file with the role's defaults and vars, as the kube_packages play has them.
                "tasks": [{"ansible.builtin.include_role": {"name": "kube_packages", "tasks_from": TASKS.name}}],
            }
        ]
        (root / "play.yml").write_text(yaml.safe_dump(play))
        self.calls: list[list[str]] = []

    def write_archive(self, program: bytes) -> None:
        self.archive.parent.mkdir(parents=True, exist_ok=True)
        binary = self.root / "smoke-web"
        binary.write_bytes(program)
        img.write_archive(img.ImageSpec(name=NAME, files={"/smoke-web": binary}), self.archive, None)

    def run(self, *args: str, ok: bool = True) -> tuple[int, str]:
        calls = Path(f"{self.state}.calls")
        calls.write_text("")
        env = {
            **os.environ,
            "PATH": f"{self.root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "FAKE_CTR_STATE": str(self.state),
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
                json.dumps(
                    {
                        "kube_smoke_image": NAME,
                        "kube_smoke_image_archive": str(self.archive),
                        "kube_packages_offline_cache": str(self.cache),
                    }
                ),
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
        self.calls = [json.loads(line) for line in calls.read_text().splitlines()]
        if not ok:
            assert proc.returncode != 0, proc.stdout[-3000:]
            return -1, proc.stdout
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        match = re.search(r"localhost\s+:\s+ok=\d+\s+changed=(\d+)", proc.stdout)
        assert match, proc.stdout[-2000:]
        return int(match.group(1)), proc.stdout

    def imports(self) -> int:
        return sum(1 for call in self.calls if call[2:4] == ["images", "import"])

    def images(self) -> dict[str, str]:
        data: dict[str, str] = json.loads(self.state.read_text()) if self.state.exists() else {}
        return data


def test_imported_once_and_a_rerun_changes_nothing(tmp_path: Path) -> None:
    node = Node(tmp_path)
    changed, _ = node.run()
    assert changed == 3  # the cache directory, the archive copied, the import
    assert node.imports() == 1 and list(node.images()) == [NAME]
    assert (node.cache / "images" / "smoke-web.tar").read_bytes() == node.archive.read_bytes()
    changed, _ = node.run()
    assert changed == 0 and node.imports() == 0


def test_an_image_gone_from_containerd_is_imported_again(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.run()
    node.state.write_text("{}")  # e.g. removed with `ctr images rm` or crictl rmi --prune
    changed, _ = node.run()
    assert changed == 1 and node.imports() == 1 and list(node.images()) == [NAME]


def test_a_new_archive_is_copied_and_imported(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.run()
    first = node.images()[NAME]
    node.write_archive(b"smoke-web 2")  # the smoke-web program changed: same name, new content
    changed, _ = node.run()
    assert changed == 2 and node.imports() == 1
    assert node.images()[NAME] != first


def test_a_missing_archive_fails_naming_it(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.archive.unlink()
    _, out = node.run(ok=False)
    assert f"kube_packages_smoke_image_archive is {node.archive}" in out
    assert node.imports() == 0


def test_check_mode_imports_nothing(tmp_path: Path) -> None:
    node = Node(tmp_path)
    changed, _ = node.run("--check")
    assert changed >= 1  # the copy it would make
    assert node.imports() == 0 and node.images() == {}
    assert not (node.cache / "images" / "smoke-web.tar").exists()
