"""`provision.py kubectl ARGS...`: a kubectl of the cluster's Kubernetes release, run on this host with
the cluster's kubeconfig (the arguments are kubectl's own).

The kubectl comes from the bundle of the cluster's versions when this machine has one; else from an
earlier download; else it is downloaded from the Kubernetes release site (or the mirror that
$PROVISION_BUNDLE_MIRRORS names) and checked against the sha256 published beside it, once, into
/var/cache/provisioner/kubectl/<version>/.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import TextIO

from provisioner import bundle
from provisioner.errors import ProvisionError
from provisioner.hosttools import cached_tool
from provisioner.workspace import Workspace


def kubectl(ws: Workspace, args: list[str], out: TextIO | None = None) -> int:
    """Run kubectl ARGS against the cluster; its exit code. What this command says goes to `out`
    (stderr), so that kubectl's own output stays alone on stdout."""
    out = out or sys.stderr
    config = cluster_kubeconfig(ws, "kubectl")
    spec = ws.saved_spec()
    binary = kubectl_binary(spec.versions["kubernetes"], spec.versions["calico"], out)
    return passthrough([str(binary), "--kubeconfig", str(config), *args])


def cluster_kubeconfig(ws: Workspace, tool: str) -> Path:
    """The cluster's kubeconfig on this host, for `tool`; refused for a swarm or before the control plane."""
    config = ws.root / "kubeconfig"
    spec = ws.saved_spec()
    if spec.engine != "kubernetes":
        raise ProvisionError(f"the cluster in {ws.root} runs {spec.engine}, not Kubernetes: there is no {tool} for it")
    if not config.exists():
        raise ProvisionError(
            f"no kubeconfig at {config} yet; the control_plane stage of `provision.py up` fetches it", exit_code=1
        )
    return config


def passthrough(argv: list[str], env: dict[str, str] | None = None) -> int:
    """Run a tool in the foreground; its exit code. Ctrl-C is the tool's (ending `get -w` or `logs -f`):
    this process waits for it and passes its code on."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        child = subprocess.Popen(argv, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        code = child.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    return 128 - code if code < 0 else code


def _copy(fetched: Path, part: Path) -> None:
    shutil.copyfile(fetched, part)


def kubectl_binary(kubernetes: str, calico: str, out: TextIO) -> Path:
    """The kubectl for Kubernetes `kubernetes` (a minor or a patch release): from the bundle, an earlier
    download, or a checked download now."""
    versions = bundle.resolve_versions(kubernetes, calico)
    found = bundle.find(versions)
    return cached_tool(
        "kubectl",
        versions.kubernetes,
        found.path / "bin" / "kubectl" if found is not None else None,
        lambda mirrors: mirrors.kube_url(versions, "kubectl"),
        out,
        _copy,
        f"build the bundle (`provision.py bundle build --kubernetes {versions.kubernetes}`)",
    )
