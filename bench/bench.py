#!/usr/bin/env python3
"""Benchmark of `up` on the docker provider with the swarm engine; prints its figures.

    .venv/bin/python bench/bench.py                  # both node images: cold N=3, reruns, N=1/6
    .venv/bin/python bench/bench.py --image plain    # the default node image only
    .venv/bin/python bench/bench.py --quick          # cold N=3 and the reruns only

Each cold run starts from nothing but the node image (built first if missing, not timed) and is
destroyed afterwards. Two node images: `plain` (the default: the runtime stage installs Docker's
packages) and `runtime` (provisioner/node-runtime, the packages baked in: the stage only configures).
Targets (2-core machine): cold N=3 < 180 s, warm rerun < 30 s, N=6 < 1.6 x N=1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAME = "bench"
NETWORK = "192.168.158.0/24"


def busy_cpu_seconds() -> float:
    """CPU time the whole machine spent busy (every process: the controller, Docker, the nodes)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(f) for f in fields]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


CPU: dict[str, float] = {}


def provision(root: Path, *args: str) -> tuple[float, dict[str, object]]:
    cpu0 = busy_cpu_seconds()
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(REPO / "provision.py"), "--dir", str(root), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    elapsed = time.monotonic() - t0
    CPU["last"] = busy_cpu_seconds() - cpu0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-2000:])
        raise SystemExit(f"bench: provision.py {' '.join(args)} failed (exit {proc.returncode})")
    timings_file = root / "timings.json"
    timings: dict[str, object] = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    return elapsed, timings


IMAGES = {"plain": "provisioner/node", "runtime": "provisioner/node-runtime"}


def up_args(nodes: int, image: str) -> list[str]:
    return ["up", "--nodes", str(nodes), "--engine", "swarm", "--name", NAME, "--network", NETWORK, "--image", image]


def shares(timings: dict[str, object]) -> str:
    stages = timings.get("stages", {})
    total = float(str(timings.get("total_seconds") or 0)) or 1.0
    assert isinstance(stages, dict)
    return ", ".join(f"{k} {v:.0f}s ({100 * v / total:.0f}%)" for k, v in stages.items())


def cpu(key: str = "last") -> str:
    return f"cpu {CPU[key]:.0f} CPU-s"


def cold(nodes: int, image: str, keep: bool = False) -> tuple[float, dict[str, object], Path]:
    root = Path(tempfile.mkdtemp(prefix="provision-bench-")) / "ws"
    elapsed, timings = provision(root, *up_args(nodes, image))
    CPU["up"] = CPU["last"]
    if not keep:
        provision(root, "destroy", "-f")
    return elapsed, timings, root


def run_set(kind: str, quick: bool) -> None:
    image = IMAGES[kind]
    print(f"-- node image: {kind} ({image})")
    c3, t3, root = cold(3, image, keep=True)
    print(f"cold up N=3 (image present): {c3:6.1f}s  [{shares(t3)}]  {cpu()}")
    warm, tw = provision(root, "up")
    print(f"warm rerun N=3 (no change):  {warm:6.1f}s  [{shares(tw)}]  {cpu()}  (verifies; re-applies only on drift)")
    conv, tc = provision(root, "up", "--converge")
    print(f"forced converge N=3:         {conv:6.1f}s  [{shares(tc)}]  {cpu()}  (up --converge: every stage again)")
    provision(root, "destroy", "-f")
    print(f"rerun/cold ratio:            {warm / c3:6.2f}   (targets: cold < 180 s, rerun < 30 s)")
    if quick:
        return
    c1, t1, _ = cold(1, image)
    cpu1 = CPU["up"]
    print(f"cold up N=1:                 {c1:6.1f}s  [{shares(t1)}]  {cpu('up')}")
    c6, t6, _ = cold(6, image)
    cpu6 = CPU["up"]
    print(f"cold up N=6:                 {c6:6.1f}s  [{shares(t6)}]  {cpu('up')}")
    print(f"N=6/N=1 ratio:               {c6 / c1:6.2f}   (target < 1.6)")
    cores = os.cpu_count() or 1
    print(
        f"CPU work N=6/N=1:            {cpu6 / cpu1:6.2f}   ({(cpu6 - cpu1) / 5:.1f} CPU-s per added node; with every "
        f"core busy N=6 needs at least {cpu6 / cores:.0f}s of the {1.6 * c1:.0f}s the target allows)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="cold N=3 and the reruns only")
    parser.add_argument("--image", choices=["plain", "runtime", "both"], default="both", help="node image(s) to run")
    args = parser.parse_args()
    kinds = ["plain", "runtime"] if args.image == "both" else [args.image]
    for kind in kinds:
        build = ["image", "build"] + (["--with-runtime"] if kind == "runtime" else [])
        subprocess.run([sys.executable, str(REPO / "provision.py"), *build], check=True, cwd=REPO)
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    osname = platform.freedesktop_os_release().get("PRETTY_NAME", platform.system())
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {mem_gib:.0f} GiB, {osname}, python {platform.python_version()}"
    )
    for kind in kinds:
        run_set(kind, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
