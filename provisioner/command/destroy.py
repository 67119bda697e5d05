"""`provision.py destroy`: the machines, generated inventory and state of one cluster."""

from __future__ import annotations

import shutil
import sys
from typing import TextIO

from provisioner import machines
from provisioner.errors import ProvisionError
from provisioner.progress import Progress
from provisioner.spec import ClusterSpec
from provisioner.vagrant import Vagrant
from provisioner.workspace import MARKER, RECOGNISED_BY, DamagedState, Workspace, listing


def destroy(ws: Workspace, force: bool, out: TextIO = sys.stdout, inp: TextIO = sys.stdin) -> int:
    """Remove the cluster's machines and what the toolkit wrote in its state directory, and nothing
    else: a directory that is not a cluster's is refused, files the toolkit did not write stay, and
    what could not be removed is named (exit 1)."""
    root = ws.root
    if not root.exists():
        out.write(f"nothing to destroy: no cluster under {root}\n")
        return 0
    if not root.is_dir():
        raise ProvisionError(f"--dir {root} is a file, not a cluster's state directory; nothing was removed", 2)
    if not ws.is_workspace():
        found = ws.foreign_entries()
        holds = f"it holds {listing(found)}" if found else "it is empty"
        raise ProvisionError(
            f"{root} is not a cluster's state directory (no {MARKER}, nor a cluster.json or state.json of this "
            f"toolkit's; {holds}); "
            f"nothing was removed: give the --dir of a cluster made by `up`",
            exit_code=2,
        )
    damaged = ""
    try:
        saved = ws.load_saved()
    except DamagedState as exc:
        saved, damaged = None, exc.why
    spec = ClusterSpec.from_dict(saved["spec"]) if saved else None
    if not force:
        if not inp.isatty():
            raise ProvisionError("destroy needs confirmation; run it in a terminal or pass -f", exit_code=2)
        name = spec.name if spec else root.name
        out.write(f"Destroy cluster '{name}' and all its machines? [y/N] ")
        out.flush()
        if inp.readline().strip().lower() not in ("y", "yes"):
            out.write("aborted\n")
            return 1
    progress = Progress(out)
    if spec is not None:
        machines_of = machines.for_name(spec.provider)
        machines_of.before_destroy()
        if (root / "vagrant").exists():
            progress.start(f"destroy {len(spec.nodes)} machines")
            Vagrant(root, spec.provider).destroy(ws.logs / "destroy.log")
            progress.stop("done")
        machines_of.clean_up(spec, str(saved.get("cluster_id", "")) if saved else "", out)
    else:
        # No readable spec: the machines are found by the state directory their identity names.
        if damaged:
            out.write(f"the cluster's state is damaged ({damaged}): removing the machines made from {root}\n")
        gone: list[str] = []
        problems: list[str] = []
        for name in ("docker", "libvirt", "virtualbox"):
            removed, problem = machines.for_name(name).clean_up_by_dir(root)
            gone += removed
            problems += [problem] if problem else []
        out.write(f"removed machines: {', '.join(gone)}\n" if gone else f"no machines made from {root} were found\n")
        if problems:
            # vagrant/ keeps the only record of those machines: nothing of the state is removed.
            raise ProvisionError(
                f"{'; '.join(problems)}; the state in {root} is kept so that `destroy -f` can try again",
                exit_code=1,
            )
    return _remove_own_files(ws, out)


def _remove_own_files(ws: Workspace, out: TextIO) -> int:
    """The toolkit's own files in the state directory, then the directory itself when nothing else is
    in it. Says what stayed and why; 1 when something of the toolkit's could not be removed."""
    failed: list[str] = []
    entries = ws.own_entries()
    # What makes the directory recognisable as a cluster's goes last, and only when the rest went: a
    # destroy that failed half-way is then still a destroy of a cluster's state directory next time.
    last = [p for p in entries if p.name in RECOGNISED_BY]
    for path in [p for p in entries if p.name not in RECOGNISED_BY]:
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError as exc:
            failed.append(f"{path.name} ({exc.strerror or exc})")
    if not failed:
        for path in sorted(last, key=lambda p: p.name == MARKER):
            try:
                path.unlink()
            except OSError as exc:
                failed.append(f"{path.name} ({exc.strerror or exc})")
                break
    kept = ws.foreign_entries()
    if not failed and not kept:
        try:
            ws.root.rmdir()
        except OSError as exc:
            failed.append(f"the directory itself ({exc.strerror or exc})")
    if kept:
        out.write(f"kept in {ws.root}, not made by the toolkit: {listing(kept, most=8)}\n")
    if failed:
        raise ProvisionError(
            f"could not remove {len(failed)} of the toolkit's entries in {ws.root}: {listing(failed)}; "
            f"fix that (permissions, a read-only mount) and run `destroy -f` again",
            exit_code=1,
        )
    out.write(f"removed the machines, inventory and state of {ws.root}\n")
    return 0
