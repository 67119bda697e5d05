"""`provision.py helm ARGS...`: the helm client run on this host against the cluster (KUBECONFIG is the
cluster's; the arguments are helm's own), so that charts install without a helm of the user's own.

The helm comes from the bundle of the cluster's versions when this machine has a source bundle that
carries one (tools/helm, built from the Go module bundle/helm pins); else from an earlier download;
else the release tarball is downloaded from get.helm.sh (or the `helm_base` of the mirrors file that
$PROVISION_BUNDLE_MIRRORS names), checked against the sha256 published beside it, once, into
/var/cache/provisioner/helm/<version>/.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from provisioner import bundle
from provisioner.command.kubectl import cluster_kubeconfig, passthrough
from provisioner.errors import ProvisionError
from provisioner.hosttools import cached_tool
from provisioner.workspace import Workspace


def helm(ws: Workspace, args: list[str], out: TextIO | None = None) -> int:
    """Run helm ARGS against the cluster; its exit code. What this command says goes to `out` (stderr)."""
    out = out or sys.stderr
    config = cluster_kubeconfig(ws, "helm")
    spec = ws.saved_spec()
    binary = helm_binary(spec.versions["kubernetes"], spec.versions["calico"], out)
    return passthrough([str(binary), *args], env={**os.environ, "KUBECONFIG": str(config)})


def helm_binary(kubernetes: str, calico: str, out: TextIO) -> Path:
    """The helm client: the bundle's, an earlier download, or a checked download now."""
    from provisioner.bundle import download

    found = bundle.find(bundle.resolve_versions(kubernetes, calico))
    mirrors = download.Mirrors.from_env()
    url = mirrors.helm_url()

    def unpack(archive: Path, part: Path) -> None:
        with tempfile.TemporaryDirectory(dir=part.parent) as tmp:
            if "helm" not in download.extract_executables(archive, url, Path(tmp), ("helm",)):
                raise ProvisionError(f"{url} holds no helm executable; check the helm_base mirror", exit_code=1)
            shutil.move(str(Path(tmp) / "helm"), part)

    return cached_tool(
        "helm",
        mirrors.helm_version,
        found.path / "tools" / "helm" if found is not None else None,
        lambda _: url,
        out,
        unpack,
        "build the bundle (`provision.py bundle build`), which carries one",
    )
