"""Vagrant, wrapped: one module that runs it and parses what it prints.

Parsers are pure functions fed with saved output in the unit tests. `vagrant status` goes through
python-vagrant (its machine-readable parser); everything that can fail loudly goes through
provisioner.proc so that no failure is swallowed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import vagrant as python_vagrant
import yaml

from provisioner import REPO_ROOT, proc
from provisioner.errors import ProvisionError

log = logging.getLogger(__name__)

# Providers that Vagrant can bring up several machines of at once.
PARALLEL_PROVIDERS = {"docker", "libvirt"}


def machine_readable_error(output: object) -> str:
    """The message of the last `error-exit` line of Vagrant's --machine-readable output ("" if none).
    Its fields are timestamp,target,type,data...; commas in the message come as %!(VAGRANT_COMMA) and
    line breaks as a literal backslash-n."""
    text = output.decode(errors="replace") if isinstance(output, bytes) else str(output or "")
    found = ""
    for line in text.splitlines():
        fields = line.split(",", 4)
        if len(fields) == 5 and fields[2] == "error-exit":
            found = fields[4]
    return " ".join(found.replace("%!(VAGRANT_COMMA)", ",").replace("\\n", " ").split())


@dataclass(frozen=True)
class SshInfo:
    host: str
    hostname: str
    port: int
    user: str
    identity_file: str


@dataclass(frozen=True)
class MachineStatus:
    name: str
    state: str  # running, stopped, not_created, ...
    provider: str


def parse_ssh_config(text: str) -> dict[str, SshInfo]:
    """Parse `vagrant ssh-config` output (one `Host` block per machine)."""
    blocks: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        value = value.strip().strip('"')
        if key == "Host":
            current = {}
            blocks[value] = current
        elif current is not None:
            current.setdefault(key, value)
    result = {}
    for host, opts in blocks.items():
        try:
            result[host] = SshInfo(
                host=host,
                hostname=opts["HostName"],
                port=int(opts.get("Port", "22")),
                user=opts.get("User", "vagrant"),
                identity_file=opts.get("IdentityFile", ""),
            )
        except KeyError as exc:
            raise ProvisionError(f"vagrant ssh-config gave no {exc.args[0]} for {host}; run `vagrant status`") from exc
    return result


UP_LINE = re.compile(r"^==> (?P<node>[\w.-]+): (?P<msg>.*)$")


def machines_without_address(text: str) -> list[str]:
    """The machines whose last progress line in a Vagrant log is the wait for an address (ADDRESS_WAIT)."""
    last: dict[str, str] = {}
    for line in text.splitlines():
        parsed = parse_progress_line(line)
        if parsed:
            last[parsed[0]] = parsed[1]
    return sorted(node for node, msg in last.items() if msg.startswith(ADDRESS_WAIT))


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            f.seek(offset)
            return f.read()
    except OSError:
        return ""


def parse_progress_line(line: str) -> tuple[str, str] | None:
    """`==> cp1: Creating the container...` -> ("cp1", "Creating the container...")."""
    match = UP_LINE.match(line.strip())
    if not match:
        return None
    return match.group("node"), match.group("msg")


# Vagrant's message when another Vagrant process holds a machine's lock, and how often to wait for it.
LOCKED_MARK = "because it is locked"
# The docker provider creating several machines at once: before each one it lists every container and
# inspects each, and a container that another machine is still creating (Docker copies the image's
# /var into the node's /var volume then) is listed but not yet inspectable. Another `vagrant up` goes
# on with the machines still missing (seen on about one cold three-node `up` in three here).
RACE_MARK = "Error: No such object:"
RACE_RETRIES = 3
LOCK_RETRIES = 6
# vagrant-libvirt's last word for a machine that never got an address from the management network's
# DHCP: seen once in CI on a loaded two-core host under qemu software emulation (the other VM, booted
# beside it, went on). vagrant-libvirt gives up on it; `up` powers that machine off (it has no address,
# so nothing has run on it) and starts it once more.
ADDRESS_WAIT = "Waiting for domain to get an IP address"
LOCK_WAIT = 5.0


class Vagrant:
    def __init__(self, provision_dir: Path, provider: str) -> None:
        self.provision_dir = provision_dir
        self.provider = provider

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "VAGRANT_CWD": str(REPO_ROOT),
                "VAGRANT_DOTFILE_PATH": str(self.provision_dir / "vagrant"),
                "PROVISION_DIR": str(self.provision_dir),
                "VAGRANT_DEFAULT_PROVIDER": self.provider,
                "VAGRANT_NO_COLOR": "1",
                "VAGRANT_CHECKPOINT_DISABLE": "1",
                "VAGRANT_BOX_UPDATE_CHECK_DISABLE": "1",
            }
        )
        return env

    def _stream(self, cmd: list[str], log_file: Path, on_line: Callable[[str], None] | None = None) -> int:
        """Run a Vagrant command; retry while Vagrant says a machine is locked by another Vagrant
        process (another cluster's run on the same host can hold the provider's locks briefly), and
        retry `up` up to RACE_RETRIES times after the docker provider's race (RACE_MARK)."""
        for attempt in range(1, LOCK_RETRIES + 1):
            start = log_file.stat().st_size if log_file.exists() else 0
            rc = proc.stream(cmd, env=self.env, cwd=REPO_ROOT, log_file=log_file, on_line=on_line)
            if rc == 0 or attempt == LOCK_RETRIES:
                return rc
            text = _read_from(log_file, start)
            if LOCKED_MARK not in text and not (RACE_MARK in text and cmd[1] == "up" and attempt < RACE_RETRIES):
                return rc
            log.info("vagrant: a machine is locked or was mid-creation; retrying (%d/%d)", attempt, LOCK_RETRIES)
            time.sleep(LOCK_WAIT * attempt)
        return rc

    def up(self, nodes: list[str], log_file: Path, on_line: Callable[[str], None] | None = None) -> None:
        cmd = ["vagrant", "up", "--provider", self.provider]
        cmd.append("--parallel" if self.provider in PARALLEL_PROVIDERS else "--no-parallel")
        cmd += nodes
        start = log_file.stat().st_size if log_file.exists() else 0
        rc = self._stream(cmd, log_file, on_line)
        stuck = machines_without_address(_read_from(log_file, start)) if rc != 0 and self.provider == "libvirt" else []
        if stuck:
            log.warning(
                "%s got no address from the management network; powering %s off and starting %s once more",
                ", ".join(stuck), "it" if len(stuck) == 1 else "them", "it" if len(stuck) == 1 else "them",
            )  # fmt: skip
            self._stream(["vagrant", "halt", "-f", *stuck], log_file)
            rc = self._stream(cmd, log_file, on_line)
        if rc != 0:
            raise ProvisionError(
                f"vagrant up failed (exit {rc}): {last_error(log_file)}; fix that and run `up` again",
                log_path=str(log_file),
            )

    def destroy(self, log_file: Path, nodes: list[str] | None = None) -> None:
        rc = self._stream(["vagrant", "destroy", "-f", *(nodes or [])], log_file)
        if rc != 0:
            raise ProvisionError(f"vagrant destroy failed (exit {rc}): {last_error(log_file)}", log_path=str(log_file))

    def status(self, attempts: int = 3, pause: float = 2.0) -> list[MachineStatus]:
        """The machines Vagrant knows and their states. Only reads, so a failed `vagrant status` (seen
        once in CI beside another lane, with nothing said) is asked again, up to `attempts` times;
        the last failure is reported with Vagrant's own error."""
        proc.require_tool("vagrant")
        client = python_vagrant.Vagrant(root=str(REPO_ROOT), env=self.env, quiet_stderr=False)  # type: ignore[no-untyped-call]  # python-vagrant has no hints
        for attempt in range(1, attempts + 1):
            try:
                statuses = client.status()  # type: ignore[no-untyped-call]
                break
            except subprocess.CalledProcessError as exc:
                reason = machine_readable_error(exc.output)
                if attempt == attempts:
                    raise ProvisionError(
                        f"vagrant status failed (exit {exc.returncode}, {attempts} tries): "
                        f"{reason or 'it said nothing'}; run `vagrant status` to see why"
                    ) from exc
                log.warning("vagrant status failed (exit %s): %s; asking again", exc.returncode, reason or "no message")
                time.sleep(pause)
        return [MachineStatus(s.name, s.state or "unknown", s.provider or self.provider) for s in statuses]

    def ssh_config(self, nodes: list[str] | None = None) -> dict[str, SshInfo]:
        result = proc.run(
            ["vagrant", "ssh-config", *(nodes or [])], env=self.env, cwd=REPO_ROOT, what="vagrant ssh-config"
        )
        return parse_ssh_config(result.stdout)

    def running_docker_machines(self, nodes: list[str], inventory: Path) -> dict[str, SshInfo] | None:
        """On the docker provider, when every node's container (the id Vagrant recorded) is running and
        publishes SSH on the port the last inventory holds: that inventory's SSH settings, which is what
        `vagrant status` and `vagrant ssh-config` would say, read without Vagrant's start-up (about
        3 s each). None at the least doubt, so the caller asks Vagrant."""
        if self.provider != "docker" or not nodes or not inventory.is_file():
            return None
        ids = []
        for node in nodes:
            id_file = self.provision_dir / "vagrant" / "machines" / node / "docker" / "id"
            try:
                ids.append(id_file.read_text(encoding="utf-8").strip())
            except OSError:
                return None
        try:
            hosts = (yaml.safe_load(inventory.read_text(encoding="utf-8")) or {})["all"]["hosts"]
            known = {
                node: SshInfo(
                    host=node,
                    hostname=str(hosts[node]["ansible_host"]),
                    port=int(hosts[node]["ansible_port"]),
                    user=str(hosts[node]["ansible_user"]),
                    identity_file=str(hosts[node]["ansible_ssh_private_key_file"]),
                )
                for node in nodes
            }
        except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
            return None
        try:
            res = subprocess.run(
                [
                    "docker",
                    "inspect",
                    "-f",
                    '{{.State.Running}} {{json (index .NetworkSettings.Ports "22/tcp")}}',
                    *ids,
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        lines = res.stdout.splitlines()
        if res.returncode != 0 or len(lines) != len(nodes):
            return None
        for node, line in zip(nodes, lines, strict=True):
            running, _, ports = line.partition(" ")
            info = known[node]
            # e.g. [{"HostIp":"127.0.0.1","HostPort":"2200"}]: where the container's sshd is published.
            try:
                published = {(str(b.get("HostIp")), str(b.get("HostPort"))) for b in json.loads(ports) or []}
            except (ValueError, AttributeError, TypeError):
                return None
            if running != "true" or (info.hostname, str(info.port)) not in published:
                return None
        return known

    def ssh_exec_args(self, node: str) -> list[str]:
        return ["vagrant", "ssh", node]

    def exec_env(self) -> Mapping[str, str]:
        return self.env


def cluster_key(root: Path) -> Path:
    """The docker provider's per-cluster SSH key (its public half is bind-mounted as the vagrant
    user's authorized_keys, see the Vagrantfile)."""
    return root / "ssh" / "id_ed25519"


def ensure_cluster_key(root: Path, name: str, *, create: bool) -> Path | None:
    """The cluster key, made when missing if `create` (only before the cluster's first machine: a
    node created without it has Vagrant's own per-machine key, and the Vagrantfile falls back to key
    insertion when the file is absent). A lost public half is derived again from the private key,
    which the running nodes trust."""
    key = cluster_key(root)
    pub = key.with_suffix(".pub")
    if key.exists():
        if not pub.exists():
            derived = proc.run(["ssh-keygen", "-y", "-f", str(key)], what="ssh-keygen -y (cluster key)")
            pub.write_text(f"{derived.stdout.strip()} provisioner-{name}\n", encoding="utf-8")
            pub.chmod(0o644)
        return key
    if not create:
        return None
    key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pub.unlink(missing_ok=True)
    proc.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"provisioner-{name}", "-f", str(key)],
        what="ssh-keygen (cluster key)",
    )
    key.chmod(0o600)
    pub.chmod(0o644)
    return key


# A frame of a Ruby backtrace: "/usr/share/.../batch_action.rb:86:in `block in run'", perhaps after "from".
RUBY_FRAME = re.compile(r"^(from\s+)?/\S+\.rb:\d+:in\b")
UNEXPECTED = re.compile(r"on the\s+'([^']+)'\s+machine\.\s+Please report this as a bug:\s*\n([^\n]+)")
ERROR_HINTS = re.compile(r"(error|failed|refused|cannot|could not|not found|denied)", re.IGNORECASE)


def last_error(log_file: Path) -> str:
    """The most telling line near the end of a Vagrant log.

    An error Vagrant did not expect (a provider plugin's, say) comes as "An unexpected error occurred
    when executing the action on the 'X' machine. Please report this as a bug:", its message, then a
    Ruby backtrace often longer than the window looked at: the backtrace is left out and that message
    named with its machine.
    """
    try:
        text = log_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "no output"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not RUBY_FRAME.match(ln.strip())]
    unexpected = list(UNEXPECTED.finditer("\n".join(lines)))
    if unexpected:
        return f"{unexpected[-1].group(1)}: {unexpected[-1].group(2).strip()}"
    for line in reversed(lines[-40:]):
        if ERROR_HINTS.search(line):
            return line
    return lines[-1] if lines else "no output"
