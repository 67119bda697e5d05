"""Where a cluster lives on the host: the state directory and the files the toolkit keeps there."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioner.errors import ProvisionError
from provisioner.spec import ClusterSpec

log = logging.getLogger(__name__)


REPO_ROOT = Path(__file__).resolve().parent.parent


def default_provision_dir() -> Path:
    return Path(os.environ.get("PROVISION_DIR") or REPO_ROOT / ".provision").resolve()


@dataclass
class Workspace:
    """Everything a cluster keeps on the host, under one directory (default .provision/)."""

    root: Path

    @property
    def spec_file(self) -> Path:
        return self.root / "cluster.json"

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def inventory(self) -> Path:
        return self.root / "inventory" / "hosts.yml"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def timings(self) -> Path:
        return self.root / "timings.json"

    def load_saved(self) -> dict[str, Any] | None:
        if not self.spec_file.exists():
            return None
        try:
            data: dict[str, Any] = json.loads(self.spec_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ProvisionError(f"{self.spec_file} is unreadable ({exc}); run `destroy -f` and `up` again") from exc
        return data

    @contextlib.contextmanager
    def lock(self, command: str) -> Iterator[None]:
        """One changing command at a time per state directory: a second `up` while one runs would
        overwrite the other's state. The lock file lives outside the state directory (a refused first
        `up` leaves no directory behind), keyed by its path."""
        locks = Path(tempfile.gettempdir()) / "provisioner-locks"
        locks.mkdir(mode=0o700, exist_ok=True)
        path = locks / (hashlib.sha256(str(self.root).encode()).hexdigest()[:16] + ".lock")
        with open(path, "a+", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another command"
                raise ProvisionError(
                    f"{holder} is already working on the cluster in {self.root}; wait for it to finish "
                    f"(or stop it: a rerun resumes where it left off)",
                    exit_code=2,
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"`provision.py {command}` (pid {os.getpid()})")
            handle.flush()
            try:
                yield
            finally:
                handle.truncate(0)
                fcntl.flock(handle, fcntl.LOCK_UN)

    def cluster_id(self) -> str:
        """The identity made when this cluster was first created ("" before that, or for a cluster
        made before identities existed)."""
        saved = self.load_saved()
        return str(saved.get("cluster_id", "")) if saved else ""

    def saved_spec(self) -> ClusterSpec:
        data = self.load_saved()
        if data is None:
            raise ProvisionError(f"no cluster here ({self.spec_file} missing); create one with `provision.py up`")
        return ClusterSpec.from_dict(data["spec"])

    def save_spec(self, spec: ClusterSpec, inputs: dict[str, Any], vagrant_extra: dict[str, Any] | None = None) -> None:
        """`vagrant_extra`: settings only the Vagrantfile reads (e.g. libvirt_driver), kept beside the spec."""
        self.root.mkdir(parents=True, exist_ok=True)
        payload = spec.to_dict() | (vagrant_extra or {}) | {"spec": spec.to_dict(), "inputs": inputs}
        tmp = self.spec_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True), encoding="utf-8")
        tmp.replace(self.spec_file)
