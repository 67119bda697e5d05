"""Live progress on a terminal, plain heartbeat lines elsewhere (CI logs)."""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

SPINNER = "|/-\\"


class Progress:
    """One status line per long step.

    On a terminal the line is redrawn in place with a spinner and elapsed time; otherwise a plain
    line is printed when the step starts, every `heartbeat` seconds while it runs, and when it ends.
    """

    def __init__(self, out: TextIO | None = None, heartbeat: float = 20.0, verbose: bool = False) -> None:
        self.out = out or sys.stdout
        self.tty = self.out.isatty() and not verbose
        self.heartbeat = heartbeat
        self._title = ""
        self._detail: Callable[[], str] = lambda: ""
        self._started = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self, title: str, detail: Callable[[], str] | None = None) -> None:
        self._title = title
        self._detail = detail or (lambda: "")
        self._started = time.monotonic()
        self._stop.clear()
        if not self.tty:
            self._print(f"==> {title}")
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def note(self, text: str) -> None:
        """A line that stays (a finished node, a warning) above the live line."""
        with self._lock:
            if self.tty:
                self.out.write("\r\033[K")
            self.out.write(f"    {text}\n")
            self.out.flush()

    def stop(self, result: str) -> float:
        elapsed = time.monotonic() - self._started
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            if self.tty:
                self.out.write("\r\033[K")
            self.out.write(f"==> {self._title}: {result} ({elapsed:.1f}s)\n")
            self.out.flush()
        return elapsed

    def _loop(self) -> None:
        spin = itertools.cycle(SPINNER)
        last_beat = time.monotonic()
        while not self._stop.wait(0.2 if self.tty else 1.0):
            elapsed = time.monotonic() - self._started
            detail = self._safe_detail()
            if self.tty:
                width = 160
                line = f"{next(spin)} {self._title} {elapsed:5.0f}s  {detail}"
                with self._lock:
                    self.out.write("\r\033[K" + line[:width])
                    self.out.flush()
            elif time.monotonic() - last_beat >= self.heartbeat:
                last_beat = time.monotonic()
                self._print(f"    ... {self._title} {elapsed:.0f}s {detail}")

    def _safe_detail(self) -> str:
        try:
            return self._detail()
        except Exception:  # the progress line must never break the run
            return ""

    def _print(self, text: str) -> None:
        with self._lock:
            self.out.write(text + "\n")
            self.out.flush()
