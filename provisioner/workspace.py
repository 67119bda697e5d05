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

from provisioner import REPO_ROOT
from provisioner.errors import ProvisionError
from provisioner.spec import ClusterSpec

log = logging.getLogger(__name__)


# The file that marks a directory as a cluster's state directory made by this toolkit.
MARKER = ".provisioner-workspace"
MARKER_TEXT = (
    "This directory holds a cluster's state, made by provision.py; `provision.py --dir DIR destroy` removes it.\n"
)
# Everything the toolkit writes in a state directory; `destroy` removes these and nothing else.
OWN_FILES = ("cluster.json", "cluster.tmp", "state.json", "timings.json", "kubeconfig", MARKER)
OWN_DIRS = ("inventory", "logs", "vagrant", "ssh", "ansible-tmp", "cp", "facts", "conformance")
OWN_GLOBS = (".state-*", "verify-*.xml")
# The entries that make a directory recognisable as a cluster's: `destroy` removes them last, and only
# when everything else of the toolkit's is gone, so that a destroy that failed half-way can run again.
RECOGNISED_BY = ("cluster.json", "state.json", MARKER)
SYSTEM_TREES = (Path("/proc"), Path("/sys"), Path("/dev"))


def default_provision_dir() -> Path:
    return Path(os.environ.get("PROVISION_DIR") or REPO_ROOT / ".provision").expanduser().resolve()


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
        """cluster.json as saved by `up` (None where there is none); DamagedState where it cannot be read
        as one, so that no command goes on from a half-read cluster."""
        if not self.spec_file.exists():
            return None
        try:
            data = json.loads(self.spec_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DamagedState(self, f"it cannot be read as JSON: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("spec"), dict):
            raise DamagedState(self, "it holds no cluster spec")
        try:
            ClusterSpec.from_dict(data["spec"])
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            raise DamagedState(self, f"its spec is incomplete ({type(exc).__name__}: {exc})") from exc
        return data

    def is_workspace(self) -> bool:
        """A directory this toolkit made for a cluster: its marker, or (state directories made before
        the marker) a cluster.json that reads as this toolkit's spec or a state.json in its format.
        Another tool's cluster.json or state.json does not make a directory ours."""
        if (self.root / MARKER).exists():
            return True
        try:
            if self.load_saved() is not None:
                return True
        except DamagedState:
            pass
        try:
            state = json.loads((self.root / "state.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return False
        return isinstance(state, dict) and isinstance(state.get("stages"), dict) and "version" in state

    def own_entries(self) -> list[Path]:
        """What the toolkit itself writes in the state directory (and so may remove), present now."""
        found = [self.root / name for name in (*OWN_FILES, *OWN_DIRS) if (self.root / name).exists()]
        for pattern in OWN_GLOBS:
            found += sorted(self.root.glob(pattern))
        return found

    def foreign_entries(self) -> list[str]:
        """The names in the state directory that the toolkit did not write there."""
        own = {p.name for p in self.own_entries()}
        try:
            return sorted(p.name for p in self.root.iterdir() if p.name not in own)
        except OSError:
            return []

    def check_location(self) -> None:
        """Refuse a state directory that would put the toolkit's writes (and `destroy`'s removals) among
        files that are not a cluster's: the file system's root, the home directory, this repository, or
        the kernel's own trees."""
        root = self.root
        home = Path.home().resolve()
        what = {
            Path("/"): "the file system's root",
            home: "your home directory",
            REPO_ROOT: "the toolkit's own repository",
        }
        if root in what:
            raise ProvisionError(
                f"--dir {root} is {what[root]}; a cluster's state needs a directory of its own (the toolkit "
                f"writes there and `destroy` removes what it wrote), e.g. --dir {REPO_ROOT / '.provision-lab'}",
                exit_code=2,
            )
        for tree in SYSTEM_TREES:
            if root == tree or tree in root.parents:
                raise ProvisionError(
                    f"--dir {root} is inside {tree}, the kernel's own file system; give a directory on a disk, "
                    f"e.g. --dir {REPO_ROOT / '.provision-lab'}",
                    exit_code=2,
                )

    def check_writable(self) -> None:
        """Before anything is built or made: the state directory can be written, and it is either new,
        empty, or a cluster's state directory already (never a directory of the user's own files)."""
        root = self.root
        if root.exists() and not root.is_dir():
            raise ProvisionError(
                f"--dir {root} is a file, not a directory; give a directory for the cluster's state", 2
            )
        base = root
        while not base.exists():
            base = base.parent
        if not base.is_dir():
            raise ProvisionError(f"--dir {root} cannot be made: {base} is a file; give a directory path", 2)
        if os.statvfs(base).f_flag & os.ST_RDONLY:
            raise ProvisionError(
                f"--dir {root} is on a read-only file system ({base}); give a writable directory", exit_code=2
            )
        if not os.access(base, os.W_OK | os.X_OK):
            raise ProvisionError(f"--dir {root} is not writable by this user ({base}); give a writable directory", 2)
        if root.exists() and not self.is_workspace():
            foreign = self.foreign_entries()
            if foreign:
                raise ProvisionError(
                    f"--dir {root} already holds files that are not a cluster's state ({listing(foreign)}); "
                    f"give a new or empty directory for the cluster",
                    exit_code=2,
                )

    @contextlib.contextmanager
    def lock(self, command: str) -> Iterator[None]:
        """One changing command at a time per state directory: a second `up` while one runs would
        overwrite the other's state. The lock file lives outside the state directory (a refused first
        `up` leaves no directory behind), keyed by its path, and is removed when the command ends."""
        locks = Path(tempfile.gettempdir()) / "provisioner-locks"
        try:
            locks.mkdir(mode=0o700, exist_ok=True)
            writable = os.access(locks, os.W_OK | os.X_OK)
        except OSError as exc:
            raise ProvisionError(
                f"cannot make the lock directory {locks} ({exc.strerror}); fix its permissions", 1
            ) from exc
        if not writable:
            raise ProvisionError(f"the lock directory {locks} is not writable by this user; fix its permissions", 1)
        path = locks / (hashlib.sha256(str(self.root).encode()).hexdigest()[:16] + ".lock")
        with open(path, "a+", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # The holder before us may have removed the file between our open and our lock: then
                # the lock is on a name nobody else sees; refuse as if it were held.
                if os.fstat(handle.fileno()).st_ino != os.stat(path).st_ino:
                    raise BlockingIOError
            except (BlockingIOError, FileNotFoundError):
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
                path.unlink(missing_ok=True)
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
        """`vagrant_extra`: settings only the Vagrantfile reads (e.g. libvirt_driver), kept beside the spec.
        The first save makes the directory and marks it as the toolkit's (MARKER)."""
        self.root.mkdir(parents=True, exist_ok=True)
        marker = self.root / MARKER
        if not marker.exists():
            marker.write_text(MARKER_TEXT, encoding="utf-8")
        payload = spec.to_dict() | (vagrant_extra or {}) | {"spec": spec.to_dict(), "inputs": inputs}
        tmp = self.spec_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True), encoding="utf-8")
        tmp.replace(self.spec_file)


class DamagedState(ProvisionError):
    """cluster.json exists but cannot be read as a cluster: the way out is `destroy -f` (the machines
    carry the state directory in their identity) and `up`."""

    def __init__(self, ws: Workspace, why: str) -> None:
        self.why = why
        super().__init__(
            f"the cluster's state {ws.spec_file} is damaged ({why}); `provision.py --dir {ws.root} destroy -f` "
            f"removes the machines made from this directory and the state, then `up` makes the cluster again",
            exit_code=6,
        )


def listing(names: list[str], most: int = 4) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")
