"""Running a stage playbook and following it through the provision_events callback."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner import REPO_ROOT, proc
from provisioner.errors import ProvisionError
from provisioner.progress import Progress

log = logging.getLogger(__name__)


@dataclass
class HostCounts:
    ok: int = 0
    changed: int = 0
    failed: int = 0
    skipped: int = 0
    unreachable: int = 0


@dataclass
class Failure:
    host: str
    task: str
    status: str
    msg: str


@dataclass
class StageRun:
    """What the event stream said about one ansible-playbook run."""

    hosts: dict[str, HostCounts] = field(default_factory=dict)
    current_task: str = ""
    task_started: float = 0.0
    failures: list[Failure] = field(default_factory=list)
    durations: list[tuple[float, str, str]] = field(default_factory=list)  # (seconds, host, task)
    stats: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped_notes: list[tuple[str, str, str]] = field(default_factory=list)

    def feed(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "task":
            self.current_task = str(event.get("name", ""))
            self.task_started = float(event.get("t", time.time()))
        elif kind == "result":
            host = str(event["host"])
            counts = self.hosts.setdefault(host, HostCounts())
            status = event.get("status")
            if status in ("ok", "ignored"):
                counts.ok += 1
                counts.changed += int(bool(event.get("changed")))
            elif status == "failed":
                counts.failed += 1
            elif status == "skipped":
                counts.skipped += 1
            elif status == "unreachable":
                counts.unreachable += 1
            if status in ("failed", "unreachable"):
                self.failures.append(Failure(host, str(event.get("task", "")), str(status), str(event.get("msg", ""))))
            if event.get("duration") is not None:
                self.durations.append((float(event["duration"]), host, str(event.get("task", ""))))
        elif kind == "stats":
            self.stats = {h: dict(v) for h, v in event.get("hosts", {}).items()}

    @property
    def changed(self) -> int:
        if self.stats:
            return sum(v.get("changed", 0) for v in self.stats.values())
        return sum(c.changed for c in self.hosts.values())

    def slowest(self, n: int = 5) -> list[tuple[float, str, str]]:
        return sorted(self.durations, reverse=True)[:n]

    def summary_line(self) -> str:
        parts = []
        for host in sorted(self.hosts):
            c = self.hosts[host]
            flag = " FAILED" if c.failed or c.unreachable else ""
            parts.append(f"{host} ok={c.ok} changed={c.changed} skipped={c.skipped}{flag}")
        task = f" | task: {self.current_task}" if self.current_task else ""
        return " | ".join(parts) + task


FACTS_DIR = "facts"


def forget_facts(provision_dir: Path) -> None:
    """Empty the fact cache, so that the next stage gathers facts afresh (once, for the whole run)."""
    shutil.rmtree(provision_dir / FACTS_DIR, ignore_errors=True)


# How Ansible runs each stage's tasks. "mitogen" (the default where the mitogen package is installed,
# as scripts/setup.sh does): Mitogen's linear strategy, which keeps one Python interpreter per node for
# the whole playbook instead of starting one per task over SSH; a converge with nothing to do takes
# about 40 % less time here (bench/bench.py --strategy). "linear": Ansible's own, the way a plain
# `ansible-playbook` runs the same playbooks. PROVISION_ANSIBLE_STRATEGY picks one.
STRATEGY_ENV = "PROVISION_ANSIBLE_STRATEGY"
STRATEGIES = ("mitogen", "linear")


def strategy_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The ANSIBLE_STRATEGY settings for the strategy `environ` asks for (mitogen by default)."""
    wanted = environ.get(STRATEGY_ENV, "").strip() or "mitogen"
    if wanted not in STRATEGIES:
        raise ProvisionError(f"{STRATEGY_ENV}={wanted!r} is not a strategy here; use one of: {', '.join(STRATEGIES)}")
    if wanted == "linear":
        return {"ANSIBLE_STRATEGY": "linear"}
    spec = importlib.util.find_spec("ansible_mitogen")
    if spec is None or not spec.submodule_search_locations:
        if STRATEGY_ENV in environ:
            raise ProvisionError(
                f"{STRATEGY_ENV}=mitogen but the mitogen package is not installed: run scripts/setup.sh, "
                f"or set {STRATEGY_ENV}=linear"
            )
        return {"ANSIBLE_STRATEGY": "linear"}
    plugins = Path(next(iter(spec.submodule_search_locations))) / "plugins" / "strategy"
    return {"ANSIBLE_STRATEGY_PLUGINS": str(plugins), "ANSIBLE_STRATEGY": "mitogen_linear"}


def ansible_env(provision_dir: Path, events: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.update(
        {
            "ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg"),
            "ANSIBLE_ROLES_PATH": str(REPO_ROOT / "roles"),
            "ANSIBLE_CALLBACK_PLUGINS": str(REPO_ROOT / "callback_plugins"),
            "ANSIBLE_FILTER_PLUGINS": str(REPO_ROOT / "filter_plugins"),
            "ANSIBLE_CALLBACKS_ENABLED": "provision_events,ansible.builtin.profile_tasks",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_LOCAL_TEMP": str(provision_dir / "ansible-tmp"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(provision_dir / "cp"),
            # Facts are gathered once per run of `up`/`provision` and shared by its stages (each stage
            # is its own ansible-playbook process; with gathering=smart a cached host is not gathered
            # again). forget_facts() empties the cache when a run starts.
            "ANSIBLE_CACHE_PLUGIN": "ansible.builtin.jsonfile",
            "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(provision_dir / FACTS_DIR),
            "ANSIBLE_CACHE_PLUGIN_TIMEOUT": "86400",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(strategy_env(os.environ))
    if events is not None:
        env["PROVISION_EVENTS"] = str(events)
    return env


def ansible_playbook_bin() -> str:
    candidate = Path(sys.executable).parent / "ansible-playbook"
    return str(candidate) if candidate.exists() else proc.require_tool("ansible-playbook")


def run_playbook(
    playbook: Path,
    inventory: Path,
    provision_dir: Path,
    log_file: Path,
    progress: Progress,
    title: str,
    extra_vars: dict[str, Any] | None = None,
    limit: str | None = None,
    tags: str | None = None,
    verbose: bool = False,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> StageRun:
    """Run one playbook; raise ProvisionError naming host, task and log on failure."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    events = log_file.with_suffix(".events.jsonl")
    events.unlink(missing_ok=True)
    events.touch()
    cmd = [ansible_playbook_bin(), "-i", str(inventory), str(playbook)]
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    if limit:
        cmd += ["--limit", limit]
    if tags:
        cmd += ["--tags", tags]
    run = StageRun()
    progress.start(title, run.summary_line)
    with log_file.open("w", encoding="utf-8") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        p = subprocess.Popen(
            cmd,
            env=ansible_env(provision_dir, events),
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE if verbose else out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        with events.open(encoding="utf-8") as stream:
            buf = ""
            while True:
                if verbose and p.stdout is not None:
                    line = p.stdout.readline()
                    if line:
                        out.write(line)
                        progress.note(line.rstrip())
                chunk = stream.read()
                if chunk:
                    buf += chunk
                    *lines, buf = buf.split("\n")
                    for ln in lines:
                        if ln.strip():
                            ev = json.loads(ln)
                            run.feed(ev)
                            if on_event is not None:
                                on_event(ev)
                if p.poll() is not None and not chunk:
                    if verbose and p.stdout is not None:
                        rest = p.stdout.read()
                        out.write(rest)
                    break
                if not verbose:
                    time.sleep(0.2)
    rc = p.returncode
    if rc != 0 or run.failures:
        progress.stop("FAILED")
        raise stage_error(title, rc, run, log_file)
    progress.stop(f"ok, changed={run.changed}")
    return run


def stage_error(title: str, rc: int, run: StageRun, log_file: Path) -> ProvisionError:
    if run.failures:
        f = run.failures[0]
        what = "unreachable" if f.status == "unreachable" else "failed"
        msg = " ".join(f.msg.split())[:400]
        more = f" (and {len(run.failures) - 1} more failures)" if len(run.failures) > 1 else ""
        return ProvisionError(
            f"{title}: host {f.host} {what} at task '{f.task}': {msg}{more}; fix it and run `up` again to resume here",
            exit_code=4,
            log_path=str(log_file),
            hosts=tuple(dict.fromkeys(x.host for x in run.failures)),
        )
    return ProvisionError(
        f"{title}: ansible-playbook exited {rc} before any task failed (syntax or inventory error)",
        exit_code=4,
        log_path=str(log_file),
    )
