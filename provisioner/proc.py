"""Running external commands: one place that turns failures into ProvisionError."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from provisioner.errors import ProvisionError, ToolMissing

log = logging.getLogger(__name__)

INSTALL_HINTS = {
    "vagrant": "install it with `apt-get install vagrant` (or run scripts/setup.sh)",
    "docker": "install it with `apt-get install docker.io` and start the daemon (scripts/setup.sh does both)",
    "mmdebstrap": "install it with `apt-get install mmdebstrap` (or run scripts/setup.sh)",
    "ansible-playbook": "install the Python requirements with scripts/setup.sh and run provision.py with .venv/bin/python",
    "ip": "install it with `apt-get install iproute2`",
}


def require_tool(name: str) -> str:
    """Return the path of `name` or raise ToolMissing with the install command."""
    path = shutil.which(name)
    if path is None:
        raise ToolMissing(name, INSTALL_HINTS.get(name, f"install {name}"))
    return path


def run(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    check: bool = True,
    input_text: str | None = None,
    timeout: float | None = None,
    what: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output; on failure raise ProvisionError with the tail of stderr."""
    require_tool(cmd[0])
    log.debug("run: %s", " ".join(cmd))
    try:
        proc = subprocess.run(
            list(cmd),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            capture_output=True,
            text=True,
            input=input_text,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ProvisionError(f"{what or cmd[0]} did not finish within {timeout:.0f} s") from exc
    if check and proc.returncode != 0:
        detail = _tail(proc.stderr or proc.stdout)
        raise ProvisionError(f"{what or ' '.join(cmd[:2])} failed (exit {proc.returncode}): {detail}")
    return proc


def stream(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    log_file: Path,
    on_line: Callable[[str], None] | None = None,
) -> int:
    """Run a long command, writing all output to `log_file` and passing each line to `on_line`."""
    require_tool(cmd[0])
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log.debug("stream: %s > %s", " ".join(cmd), log_file)
    with log_file.open("a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(
            list(cmd),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if on_line is not None:
                on_line(line.rstrip("\n"))
        return proc.wait()


def _tail(text: str, lines: int = 3) -> str:
    parts = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(parts[-lines:]) if parts else "no output"
