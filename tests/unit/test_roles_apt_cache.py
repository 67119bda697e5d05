"""Static checks on the roles' apt tasks.

A fresh node image (and many cloud images) ships with empty apt lists in a directory whose mtime is
recent, so ``cache_valid_time`` takes the empty lists as fresh and the install then finds no package.
This broke the container_runtime Molecule scenario whenever the node image was less than an hour old.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


def _tasks(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, list):
        for item in node:
            yield from _tasks(item)
    elif isinstance(node, dict):
        yield node
        for key in ("block", "rescue", "always"):
            if key in node:
                yield from _tasks(node[key])


def _apt_tasks() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted((REPO / "roles").glob("*/*/*.yml")):
        if path.parent.name not in ("tasks", "handlers"):
            continue
        for task in _tasks(yaml.safe_load(path.read_text()) or []):
            args = task.get("ansible.builtin.apt")
            if isinstance(args, dict):
                found.append((f"{path.relative_to(REPO)}: {task.get('name')}", args))
    return found


def test_roles_have_apt_tasks() -> None:
    assert len(_apt_tasks()) >= 4


def test_no_apt_refresh_is_skipped_by_cache_valid_time() -> None:
    offenders = [where for where, args in _apt_tasks() if args.get("update_cache") and "cache_valid_time" in args]
    assert offenders == []


# Installs whose lists are refreshed by a handler flushed just before them (the repository was added),
# or, in an upgrade, by the images play before any node's turn (kube_upgrade images.yml, which runs on
# every node with something left, resumed runs included).
REFRESHED_BY_HANDLER = {
    "roles/kube_packages/tasks/0020-upstream-Debian.yml: Upstream | Install the pinned Kubernetes packages",
    "roles/kube_upgrade/tasks/packages.yml: Packages | Install the named packages at the target's version",
}


def test_apt_installs_refresh_their_lists() -> None:
    """An install on a node with empty lists must refresh them first, or it finds nothing."""
    offenders = [
        where
        for where, args in _apt_tasks()
        if args.get("name") and args.get("state", "present") == "present" and not args.get("update_cache")
    ]
    assert offenders == sorted(REFRESHED_BY_HANDLER)
