"""Ansible callback that writes one JSON line per event to $PROVISION_EVENTS.

provision.py reads that stream to draw live progress and the timing report; it never parses
Ansible's human-readable output. Without PROVISION_EVENTS set the plugin does nothing, so a plain
`ansible-playbook` run is unaffected.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: provision_events
type: notification
short_description: JSON-lines event stream for provision.py
description:
  - Writes task start, per-host results and the final stats to the file named by PROVISION_EVENTS.
requirements:
  - PROVISION_EVENTS environment variable
"""


class CallbackModule(CallbackBase):  # type: ignore[misc]
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "notification"
    CALLBACK_NAME = "provision_events"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        path = os.environ.get("PROVISION_EVENTS")
        self._out = open(path, "a", encoding="utf-8", buffering=1) if path else None  # noqa: SIM115
        self._task_started: dict[str, float] = {}
        self._task_name = ""

    def _emit(self, event: str, **data: Any) -> None:
        if self._out is None:
            return
        data.update(event=event, t=round(time.time(), 3))
        self._out.write(json.dumps(data, default=str) + "\n")

    def v2_playbook_on_play_start(self, play: Any) -> None:
        self._emit("play", name=play.get_name())

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        self._task_name = task.get_name()
        self._emit("task", name=self._task_name)

    def v2_playbook_on_handler_task_start(self, task: Any) -> None:
        self._task_name = task.get_name()
        self._emit("task", name=self._task_name, handler=True)

    def v2_runner_on_start(self, host: Any, task: Any) -> None:
        self._task_started[host.get_name()] = time.time()

    def _result(self, status: str, result: Any, **extra: Any) -> None:
        host = result._host.get_name()
        started = self._task_started.pop(host, None)
        res = result._result or {}
        msg = ""
        if status in ("failed", "unreachable"):
            msg = str(res.get("msg") or res.get("stderr") or res.get("reason") or "")[:2000]
        elif status == "skipped":
            msg = str(res.get("skip_reason") or res.get("skipped_reason") or "")[:300]
        self._emit(
            "result",
            host=host,
            task=result._task.get_name(),
            action=result._task.action,
            items=len(res["results"]) if isinstance(res.get("results"), list) else None,
            status=status,
            changed=bool(res.get("changed", False)),
            duration=round(time.time() - started, 3) if started else None,
            msg=msg,
            **extra,
        )

    def v2_runner_on_ok(self, result: Any) -> None:
        self._result("ok", result)

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._result("ignored" if ignore_errors else "failed", result)

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._result("skipped", result)

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._result("unreachable", result)

    def v2_playbook_on_stats(self, stats: Any) -> None:
        hosts = {}
        for host in sorted(stats.processed.keys()):
            s = stats.summarize(host)
            hosts[host] = {
                k: s.get(k, 0) for k in ("ok", "changed", "failures", "unreachable", "skipped", "rescued", "ignored")
            }
        self._emit("stats", hosts=hosts)
        if self._out is not None:
            self._out.flush()
