"""`provision.py exec`: one command on many nodes at once (Fabric's ThreadingGroup), output prefixed
per host, non-zero exit when any host failed."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any, TextIO

from fabric import Connection, ThreadingGroup
from fabric.exceptions import GroupException

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostResult:
    host: str
    exit_code: int
    stdout: str
    stderr: str
    error: str = ""


def connection_for(name: str, hostvars: dict[str, Any], timeout: int = 15) -> Connection:
    key = hostvars.get("ansible_ssh_private_key_file")
    return Connection(
        host=str(hostvars.get("ansible_host", name)),
        user=str(hostvars.get("ansible_user", "vagrant")),
        port=int(hostvars.get("ansible_port", 22)),
        connect_timeout=timeout,
        connect_kwargs={"key_filename": [key], "look_for_keys": False, "allow_agent": False} if key else {},
        config=None,
    )


def run_on_hosts(hosts: dict[str, dict[str, Any]], command: str, sudo: bool = False) -> list[HostResult]:
    conns = {name: connection_for(name, hv) for name, hv in hosts.items()}
    for conn in conns.values():
        # Host keys of fresh nodes are not known yet; nodes are created by this toolkit.
        conn.client.set_missing_host_key_policy(__import__("paramiko").AutoAddPolicy())
    by_conn = {id(c): n for n, c in conns.items()}
    group = ThreadingGroup.from_connections(list(conns.values()))
    runner = "sudo" if sudo else "run"
    try:
        results: Any = getattr(group, runner)(command, hide=True, warn=True, in_stream=False)
    except GroupException as exc:
        results = exc.result
    out: list[HostResult] = []
    for conn, res in results.items():
        name = by_conn.get(id(conn), conn.host)
        if isinstance(res, Exception):
            out.append(HostResult(name, 255, "", "", error=f"{type(res).__name__}: {res}"))
        else:
            out.append(HostResult(name, int(res.exited), res.stdout, res.stderr))
    for conn in conns.values():
        conn.close()
    return sorted(out, key=lambda r: list(hosts).index(r.host) if r.host in hosts else 0)


def print_results(results: list[HostResult], out: TextIO = sys.stdout) -> int:
    """Print each host's output with a `[host]` prefix; return 0 only when every host succeeded."""
    width = max((len(r.host) for r in results), default=4)
    failed = 0
    for r in results:
        prefix = f"[{r.host:<{width}}]"
        for line in r.stdout.splitlines():
            out.write(f"{prefix} {line}\n")
        for line in r.stderr.splitlines():
            out.write(f"{prefix} (stderr) {line}\n")
        if r.error:
            out.write(f"{prefix} connection failed: {r.error}\n")
        if r.exit_code != 0:
            failed += 1
            out.write(f"{prefix} exit {r.exit_code}\n")
    out.write(f"{len(results) - failed} of {len(results)} hosts succeeded\n")
    return 0 if failed == 0 else 1
