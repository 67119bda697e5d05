"""The state file: which stages finished, how long they took, and whether the last run failed.

Written atomically after every change so that an interrupted run leaves a readable file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner.errors import ProvisionError

STATE_VERSION = 1


@dataclass
class StageRecord:
    status: str  # done | failed
    seconds: float
    finished_at: float
    changed: int = 0
    message: str = ""


@dataclass
class State:
    path: Path
    spec_digest: str = ""
    provider: str = ""
    stages: dict[str, StageRecord] = field(default_factory=dict)
    last_run: str = ""  # "" | running | failed | done
    # Digest of everything the last complete converge applied (see cluster.converge_fingerprint) and
    # the outcome of the last verify run: together they let a rerun with nothing new skip the stages.
    fingerprint: str = ""
    last_verify: str = ""  # "" | passed | failed

    @classmethod
    def load(cls, path: Path) -> State:
        if not path.exists():
            return cls(path=path)
        try:
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ProvisionError(
                f"state file {path} is unreadable ({exc}); remove it to start over (machines are kept)"
            ) from exc
        stages = {name: StageRecord(**rec) for name, rec in data.get("stages", {}).items()}
        return cls(
            path=path,
            spec_digest=data.get("spec_digest", ""),
            provider=data.get("provider", ""),
            stages=stages,
            last_run=data.get("last_run", ""),
            fingerprint=data.get("fingerprint", ""),
            last_verify=data.get("last_verify", ""),
        )

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "version": STATE_VERSION,
            "spec_digest": self.spec_digest,
            "provider": self.provider,
            "last_run": self.last_run,
            "fingerprint": self.fingerprint,
            "last_verify": self.last_verify,
            "stages": {name: rec.__dict__ for name, rec in self.stages.items()},
        }
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".state-")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=2, sort_keys=True)
        os.replace(tmp, self.path)

    def mark(self, stage: str, status: str, seconds: float, changed: int = 0, message: str = "") -> None:
        self.stages[stage] = StageRecord(status, round(seconds, 2), time.time(), changed, message)
        self.save()

    def done(self, stage: str) -> bool:
        rec = self.stages.get(stage)
        return rec is not None and rec.status == "done"

    def failed_stage(self) -> str | None:
        for name, rec in self.stages.items():
            if rec.status == "failed":
                return name
        return None

    def reset_stages(self) -> None:
        self.stages.clear()
        self.fingerprint = ""
        self.save()
