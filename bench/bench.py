#!/usr/bin/env python3
"""Benchmark of `up` on the docker provider; prints its figures.

    .venv/bin/python bench/bench.py                  # swarm, both node images: cold N=3, reruns, N=1/6
    .venv/bin/python bench/bench.py --image plain    # the default node image only
    .venv/bin/python bench/bench.py --quick          # cold N=3 and the reruns only
    .venv/bin/python bench/bench.py --engine kubernetes [--quick] [--compare]
                                                     # kubeadm + Calico from the bundle: cold N=3, the
                                                     # rerun, growth 3 -> 5, N=1/5 (bundle and node
                                                     # images built first, not timed); --compare: the
                                                     # previous approach (image import on every node)
                                                     # beside it in the same run

    .venv/bin/python bench/bench.py --engine kubernetes --addons
                                                     # what the add-ons (storage, metrics; ingress) add: cold
                                                     # N=3 with them and without, alternating, twice

    .venv/bin/python bench/bench.py --engine kubernetes --strategy
                                                     # the Ansible strategy: Mitogen's (the default)
                                                     # against Ansible's linear, alternating, twice

    .venv/bin/python bench/bench.py --engine kubernetes --upgrade
                                                     # `upgrade` 1.36 -> 1.37 of a three-node cluster:
                                                     # the cold up at 1.36, the upgrade in all and each
                                                     # node's turn (from the run's events), the rerun

    .venv/bin/python bench/bench.py --bundle warm|cold
                                                     # the bundle's source build, per component

Kubernetes targets (2-core machine): cold three-node cluster, Ready with Calico and verified, in 90 s;
a rerun with nothing changed in 15 s; growing 3 -> 5 in 60 s.

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
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
NAME = "bench"
NETWORK = "192.168.158.0/24"


def busy_cpu_seconds() -> float:
    """CPU time the whole machine spent busy (every process: the controller, Docker, the nodes)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(f) for f in fields]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def node_cpu_seconds() -> float | None:
    """CPU time the cluster's node containers have used so far (their cgroups; None where unreadable)."""
    ids = subprocess.run(
        ["docker", "ps", "-q", "--no-trunc", "--filter", f"label=org.provisioner.cluster={NAME}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    total = 0.0
    for cid in ids:
        v1 = Path(f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage")
        v2 = Path(f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat")
        if v1.exists():
            total += int(v1.read_text()) / 1e9
        elif v2.exists():
            usage = [ln.split()[1] for ln in v2.read_text().splitlines() if ln.startswith("usage_usec ")]
            total += int(usage[0]) / 1e6
        else:
            return None
    return total


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Run(NamedTuple):
    seconds: float
    timings: dict[str, object]
    cpu: float  # busy CPU-seconds of the whole machine during the run
    controller: float  # of which provision.py and the processes it waited for (Ansible, Vagrant, docker CLI)
    nodes: float | None  # of which the node containers (None: their cgroups were not readable)


def provision(root: Path, *args: str, env: dict[str, str] | None = None) -> Run:
    cpu0 = busy_cpu_seconds()
    ctl0 = children_cpu_seconds()
    nodes0 = node_cpu_seconds()
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(REPO / "provision.py"), "--dir", str(root), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        check=False,
    )
    elapsed = time.monotonic() - t0
    cpu = busy_cpu_seconds() - cpu0
    controller = children_cpu_seconds() - ctl0
    nodes1 = node_cpu_seconds()
    nodes = nodes1 - nodes0 if nodes0 is not None and nodes1 is not None else None
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-2000:])
        # The run's logs outlive the destroy that follows a failure.
        kept = ""
        if (root / "logs").is_dir():
            kept_dir = Path(tempfile.mkdtemp(prefix="provision-bench-failed-logs-"))
            shutil.copytree(root / "logs", kept_dir / "logs")
            kept = f"; its logs: {kept_dir / 'logs'}"
        raise SystemExit(f"bench: provision.py {' '.join(args)} failed (exit {proc.returncode}){kept}")
    timings_file = root / "timings.json"
    timings: dict[str, object] = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    return Run(elapsed, timings, cpu, controller, nodes)


IMAGES = {"plain": "provisioner/node", "runtime": "provisioner/node-runtime"}


ENGINE = {"name": "swarm"}


def up_args(nodes: int, image: str) -> list[str]:
    args = ["up", "--nodes", str(nodes), "--engine", ENGINE["name"], "--name", NAME, "--network", NETWORK]
    return args + (["--image", image] if image else [])


def shares(timings: dict[str, object]) -> str:
    stages = timings.get("stages", {})
    total = float(str(timings.get("total_seconds") or 0)) or 1.0
    assert isinstance(stages, dict)
    return ", ".join(f"{k} {v:.0f}s ({100 * v / total:.0f}%)" for k, v in stages.items())


def line(label: str, run: Run, note: str = "") -> str:
    split = f" (controller {run.controller:.0f}" + (f", nodes {run.nodes:.0f})" if run.nodes is not None else ")")
    return f"{label:<28} {run.seconds:6.1f}s  [{shares(run.timings)}]  cpu {run.cpu:.0f} CPU-s{split}{note}"


def cold(
    nodes: int, image: str, keep: bool = False, extra: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> tuple[Run, Path]:
    root = Path(tempfile.mkdtemp(prefix="provision-bench-")) / "ws"
    run = provision(root, *up_args(nodes, image), *extra, env=env)
    if not keep:
        provision(root, "destroy", "-f")
    return run, root


# The Kubernetes engine's two ways to start a node on the docker provider, compared in one run:
# "preloaded" (the default since 2026-12-05: the Kubernetes node image, the bundle's binaries and
# images already in it) and "import" (the previous default: the runtime image, kube_packages copies
# the binaries and imports the image tarballs on every node).
KUBE_APPROACHES = {"preloaded": "", "import": "provisioner/node-runtime"}
KUBE_TARGETS = {"cold N=3": 90.0, "rerun": 15.0, "growth 3->5": 60.0}


def kube_life(approach: str, quick: bool) -> dict[str, Run]:
    """Cold N=3, a rerun with nothing changed, growth 3 -> 5; then (unless quick) cold N=1 and N=5."""
    image = KUBE_APPROACHES[approach]
    runs: dict[str, Run] = {}
    runs["cold N=3"], root = cold(3, image, keep=True)
    print(line(f"{approach}: cold up N=3:", runs["cold N=3"]), flush=True)
    runs["rerun"] = provision(root, "up")
    print(line(f"{approach}: rerun (no change):", runs["rerun"], "  (verifies; re-applies only on drift)"), flush=True)
    runs["growth 3->5"] = provision(root, "up", "--nodes", "5")
    print(line(f"{approach}: growth 3 -> 5:", runs["growth 3->5"]), flush=True)
    provision(root, "destroy", "-f")
    if not quick:
        for n in (1, 5):
            runs[f"cold N={n}"], _ = cold(n, image)
            print(line(f"{approach}: cold up N={n}:", runs[f"cold N={n}"]), flush=True)
    return runs


def run_kubernetes(quick: bool, compare: bool) -> None:
    """The Kubernetes engine with its defaults (kubeadm + Calico from the bundle); with `compare`, the
    previous approach (the image import on every node) in the same run, one after the other."""
    approaches = ["preloaded", "import"] if compare else ["preloaded"]
    print(f"-- engine: kubernetes (kubeadm + Calico from the bundle): {', '.join(approaches)}")
    results = {a: kube_life(a, quick) for a in approaches}
    new = results["preloaded"]
    for what, target in KUBE_TARGETS.items():
        verdict = "met" if new[what].seconds <= target else "missed"
        ratio = f", {results['import'][what].seconds / new[what].seconds:.2f}x faster than import" if compare else ""
        print(f"target {what} <= {target:.0f} s: {verdict} ({new[what].seconds:.1f} s{ratio})")
    if not quick:
        print(f"CPU per added node (preloaded): {(new['cold N=5'].cpu - new['cold N=1'].cpu) / 4:6.1f} CPU-s")


# What the add-ons cost a cold `up`: the defaults (storage and metrics on), the defaults with ingress,
# and all off, alternated so that the machine's drift falls on each alike.
ADDON_WAYS = {
    "with add-ons": (),
    "with ingress too": ("--ingress",),
    "without": ("--no-storage", "--no-metrics"),
}


def run_addons(rounds: int = 2) -> None:
    print("-- engine: kubernetes, cold up N=3 with the add-ons (storage, metrics), with ingress too, and without")
    runs: dict[str, list[Run]] = {way: [] for way in ADDON_WAYS}
    for i in range(rounds):
        for way, extra in ADDON_WAYS.items():
            run, _ = cold(3, "", extra=extra)
            runs[way].append(run)
            print(line(f"{way} #{i + 1}:", run), flush=True)

    def mean(way: str, pick: Callable[[Run], float]) -> float:
        return sum(pick(r) for r in runs[way]) / len(runs[way])

    def stage(name: str) -> Callable[[Run], float]:
        def seconds(run: Run) -> float:
            stages = run.timings.get("stages")
            return float(stages.get(name, 0.0)) if isinstance(stages, dict) else 0.0

        return seconds

    for on, off, what in (
        ("with add-ons", "without", "the default add-ons (storage, metrics)"),
        ("with ingress too", "with add-ons", "ingress, beside them,"),
    ):
        added = mean(on, lambda r: r.seconds) - mean(off, lambda r: r.seconds)
        print(
            f"{what} add {added:+.1f} s to a cold up N=3 (mean of {rounds}: {mean(on, lambda r: r.seconds):.1f} s "
            f"against {mean(off, lambda r: r.seconds):.1f} s), "
            f"{mean(on, lambda r: r.cpu) - mean(off, lambda r: r.cpu):+.0f} CPU-s; stage addons "
            f"{mean(on, stage('addons')):.1f} s against {mean(off, stage('addons')):.1f} s, "
            f"join {mean(on, stage('join')):.1f} s against {mean(off, stage('join')):.1f} s, "
            f"verify {mean(on, stage('verify')):.1f} s against {mean(off, stage('verify')):.1f} s"
        )


# The Ansible strategy the stages run with (provisioner/ansible.py): Mitogen's linear (the default)
# against Ansible's own linear, alternated so that the machine's drift falls on both alike.
STRATEGY_WAYS = {
    "mitogen": {"PROVISION_ANSIBLE_STRATEGY": "mitogen"},
    "linear": {"PROVISION_ANSIBLE_STRATEGY": "linear"},
}


def run_strategies(rounds: int = 2) -> None:
    print("-- engine: kubernetes, Mitogen's strategy against Ansible's linear: cold N=3, then up --converge")
    runs: dict[str, dict[str, list[Run]]] = {way: {"cold N=3": [], "converge": []} for way in STRATEGY_WAYS}
    for i in range(rounds):
        for way, env in STRATEGY_WAYS.items():
            run, root = cold(3, "", keep=True, env=env)
            runs[way]["cold N=3"].append(run)
            print(line(f"{way} #{i + 1}: cold up N=3:", run), flush=True)
            again = provision(root, "up", "--converge", env=env)
            runs[way]["converge"].append(again)
            print(line(f"{way} #{i + 1}: up --converge:", again, "  (every stage again, nothing to do)"), flush=True)
            provision(root, "destroy", "-f")

    def mean(way: str, what: str, pick: Callable[[Run], float]) -> float:
        return sum(pick(r) for r in runs[way][what]) / rounds

    def ansible_seconds(run: Run) -> float:
        stages = run.timings.get("stages")
        if not isinstance(stages, dict):
            return 0.0
        return sum(float(v) for k, v in stages.items() if k not in ("machines", "verify"))

    for what in ("cold N=3", "converge"):
        m, lin = (mean(w, what, lambda r: r.seconds) for w in ("mitogen", "linear"))
        am, al = (mean(w, what, ansible_seconds) for w in ("mitogen", "linear"))
        cm, cl = (mean(w, what, lambda r: r.cpu) for w in ("mitogen", "linear"))
        print(
            f"{what}: mitogen {m:.1f} s against linear {lin:.1f} s ({lin / m:.2f}x); the Ansible stages "
            f"{am:.1f} s against {al:.1f} s ({al / am:.2f}x); {cm:.0f} against {cl:.0f} CPU-s (mean of {rounds})"
        )


UPGRADE_FROM, UPGRADE_TO = "1.36", "1.37.2"
UPGRADE_PLAYS = ("Upgrade | the first control plane", "Upgrade | the other control planes", "Upgrade | the workers")


def node_turns(events: Path) -> dict[str, float]:
    """Each node's turn in an upgrade, from the events of the run (callback_plugins/provision_events):
    from the start of its first task in the node plays to the end of its last."""
    spans: dict[str, tuple[float, float]] = {}
    play = ""
    for raw in events.read_text(encoding="utf-8").splitlines():
        event = json.loads(raw)
        if event.get("event") == "play":
            play = str(event.get("name", ""))
        elif event.get("event") == "result" and play.startswith(UPGRADE_PLAYS):
            end = float(event["t"])
            start = end - float(event.get("duration") or 0.0)
            first, last = spans.get(event["host"], (start, end))
            spans[event["host"]] = (min(first, start), max(last, end))
    return {host: last - first for host, (first, last) in spans.items()}


def run_upgrade() -> None:
    """A three-node cluster made at the previous minor, then `upgrade` to the default release: the
    upgrade in all, each node's turn, and a second `upgrade` with nothing left to do."""
    print(f"-- engine: kubernetes, upgrade {UPGRADE_FROM} -> {UPGRADE_TO} of a three-node cluster")
    made, root = cold(3, "", keep=True, extra=("--kube-version", UPGRADE_FROM))
    print(line(f"cold up N=3 at {UPGRADE_FROM}:", made), flush=True)
    try:
        upgrade = provision(root, "upgrade", "--kube-version", UPGRADE_TO)
        turns = node_turns(root / "logs" / "upgrade.events.jsonl")
        print(
            f"{'upgrade (verify included):':<28} {upgrade.seconds:6.1f}s  cpu {upgrade.cpu:.0f} CPU-s; each node's turn: "
            + ", ".join(f"{host} {sec:.0f}s" for host, sec in turns.items()),
            flush=True,
        )
        again = provision(root, "upgrade", "--kube-version", UPGRADE_TO)
        print(f"{'upgrade again (nothing left):':<28} {again.seconds:6.1f}s  cpu {again.cpu:.0f} CPU-s", flush=True)
    finally:
        provision(root, "destroy", "-f")


def run_bundle(cold_caches: bool) -> None:
    """`bundle build --force` into a scratch bundle directory: warm (this machine's Go caches and binary
    cache) or cold (a fresh cache directory: every module downloaded and every package compiled)."""
    scratch = Path(tempfile.mkdtemp(prefix="provision-bench-bundle-"))
    env = dict(os.environ, PROVISION_BUNDLE_DIR=str(scratch / "bundles"))
    if cold_caches:
        env["PROVISION_CACHE_DIR"] = str(scratch / "cache")
    t0 = time.monotonic()
    subprocess.run(
        [sys.executable, str(REPO / "provision.py"), "bundle", "build", "--from", "source", "--force"],
        check=True,
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    wall = time.monotonic() - t0
    (man,) = (scratch / "bundles").glob("*/manifest.json")
    data = json.loads(man.read_text())
    print(f"-- bundle {data['name']} from source, {'cold (empty Go caches)' if cold_caches else 'warm'}: {wall:.0f}s")
    for comp, secs in data["timings"].items():
        print(f"   {comp:<12} {secs:7.1f}s")
    sizes: dict[str, int] = {}
    for f in data["files"]:
        key = "images" if f["path"].startswith("images/") else f["path"].split("/")[0]
        sizes[key] = sizes.get(key, 0) + int(f["size"])
    print("   size: " + ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in sorted(sizes.items())))
    subprocess.run(["rm", "-rf", str(scratch)], check=False)


def run_set(kind: str, quick: bool) -> None:
    image = IMAGES[kind]
    print(f"-- node image: {kind} ({image})")
    c3, root = cold(3, image, keep=True)
    print(line("cold up N=3 (image present):", c3))
    warm = provision(root, "up")
    print(line("warm rerun N=3 (no change):", warm, "  (verifies; re-applies only on drift)"))
    print(line("forced converge N=3:", provision(root, "up", "--converge"), "  (up --converge: every stage again)"))
    provision(root, "destroy", "-f")
    print(f"rerun/cold ratio:            {warm.seconds / c3.seconds:6.2f}   (targets: cold < 180 s, rerun < 30 s)")
    if quick:
        return
    c1, _ = cold(1, image)
    print(line("cold up N=1:", c1))
    c6, _ = cold(6, image)
    print(line("cold up N=6:", c6))
    print(f"N=6/N=1 ratio:               {c6.seconds / c1.seconds:6.2f}   (target < 1.6)")
    cores = os.cpu_count() or 1
    print(
        f"CPU work N=6/N=1:            {c6.cpu / c1.cpu:6.2f}   ({(c6.cpu - c1.cpu) / 5:.1f} CPU-s per added node; with "
        f"every core busy N=6 needs at least {c6.cpu / cores:.0f}s of the {1.6 * c1.seconds:.0f}s the target allows)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="cold N=3 and the reruns only")
    parser.add_argument("--image", choices=["plain", "runtime", "both"], default="both", help="node image(s) to run")
    parser.add_argument("--engine", choices=["swarm", "kubernetes"], default="swarm", help="engine to run")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="kubernetes: the previous approach (image import on every node) beside the default, in one run",
    )
    parser.add_argument(
        "--addons",
        action="store_true",
        help="kubernetes: cold N=3 with the add-ons and without, alternating, and what they add",
    )
    parser.add_argument(
        "--strategy",
        action="store_true",
        help="kubernetes: Mitogen's strategy against Ansible's linear, alternating: cold N=3 and up --converge",
    )
    parser.add_argument(
        "--upgrade",
        action="store_true",
        help=f"kubernetes: up N=3 at {UPGRADE_FROM}, then `upgrade` to {UPGRADE_TO}: in all and per node",
    )
    parser.add_argument("--rounds", type=int, default=2, help="--strategy, --addons: rounds of every way (default 2)")
    parser.add_argument(
        "--bundle",
        choices=["warm", "cold"],
        help="time `bundle build --from source` per component instead (cold: empty Go caches, about 35 min here)",
    )
    args = parser.parse_args()
    if args.bundle:
        run_bundle(args.bundle == "cold")
        return 0
    ENGINE["name"] = args.engine
    kinds = ["plain", "runtime"] if args.image == "both" else [args.image]
    if args.engine == "kubernetes":
        kinds = ["runtime"]
        subprocess.run([sys.executable, str(REPO / "provision.py"), "bundle", "build"], check=True, cwd=REPO)
    for kind in kinds:
        build = ["image", "build"] + (["--with-runtime"] if kind == "runtime" else [])
        subprocess.run([sys.executable, str(REPO / "provision.py"), *build], check=True, cwd=REPO)
    if args.engine == "kubernetes":
        subprocess.run(
            [sys.executable, str(REPO / "provision.py"), "image", "build", "--kubernetes"], check=True, cwd=REPO
        )
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    osname = platform.freedesktop_os_release().get("PRETTY_NAME", platform.system())
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {mem_gib:.0f} GiB, {osname}, python {platform.python_version()}"
    )
    if args.engine == "kubernetes" and args.addons:
        run_addons(args.rounds)
        return 0
    if args.engine == "kubernetes" and args.upgrade:
        run_upgrade()
        return 0
    if args.engine == "kubernetes" and args.strategy:
        run_strategies(args.rounds)
        return 0
    if args.engine == "kubernetes":
        run_kubernetes(args.quick, args.compare)
        return 0
    for kind in kinds:
        run_set(kind, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
