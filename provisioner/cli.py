"""Command line: parses arguments, maps them to the commands in provisioner.command, and turns a
ProvisionError into one clear message and its exit code (a traceback only with --debug)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from provisioner.command import (
    access,
    build,
    conformance,
    destroy,
    helm,
    kubectl,
    plan,
    provision,
    status,
    up,
    upgrade,
    verify,
)
from provisioner.errors import ProvisionError
from provisioner.spec import ENGINES, PROVIDERS, RUNTIME_SOURCES, RUNTIMES
from provisioner.workspace import Workspace, default_provision_dir


def _repo_key_fingerprint(value: str) -> str:
    from provisioner.kube import KubeConfigError
    from provisioner.kube.signingkey import fingerprint_argument

    try:
        return fingerprint_argument(value)
    except KubeConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _number(value: str) -> int | float | str:
    """A flag's number as the spec file would give it; anything else goes on as text, for the spec's own
    one-sentence refusal."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _spec_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster spec (flags override --config, which overrides the defaults)")
    g.add_argument("--config", type=Path, help="cluster spec YAML file")
    g.add_argument("--nodes", help="node count (control plane/managers first)")
    g.add_argument("--provider", choices=None, help=f"one of: {', '.join(PROVIDERS)} (default auto)")
    g.add_argument("--engine", help=f"one of: {', '.join(ENGINES)} (default kubernetes)")
    g.add_argument("--name", help="cluster name (default lab); prefixes machine names")
    g.add_argument("--network", help="node network (default 192.168.56.0/24; control plane at .10)")
    g.add_argument("--pod-cidr", dest="pod_cidr", help="pod network (default 10.244.0.0/16)")
    g.add_argument("--service-cidr", dest="service_cidr", help="service network (default 10.96.0.0/12)")
    g.add_argument(
        "--swarm-address-pool",
        dest="swarm_address_pool",
        metavar="CIDR",
        help="swarm only: the range overlay networks take /24s from (default Docker's 10.0.0.0/8)",
    )
    g.add_argument("--cpus", help="CPUs per node (VM providers)")
    g.add_argument("--memory", help="MiB per node (VM providers)")
    g.add_argument("--managers", help="swarm managers, an odd number (default 1)")
    g.add_argument(
        "--control-planes",
        dest="control_planes",
        help="Kubernetes control planes, 1, 3 or 5 (default 1); more than one: stacked etcd behind a virtual IP",
    )
    g.add_argument(
        "--api-vip", dest="api_vip", help="the API server's virtual IP with several control planes (default .9)"
    )
    g.add_argument("--box", help="Vagrant box for VM providers")
    g.add_argument(
        "--image",
        help="docker provider's node image (default: the toolkit's own; provisioner/node-runtime has the runtime baked in)",
    )
    g.add_argument("--runtime", help=f"one of: {', '.join(RUNTIMES)}")
    g.add_argument(
        "--runtime-source",
        dest="runtime_source",
        help=f"one of: {', '.join(RUNTIME_SOURCES)} (auto: distro packages on container nodes; on VMs Docker's repository when it answers, else distro; decided when the cluster is made)",
    )
    g.add_argument("--kube-version", dest="kube_version", help="Kubernetes minor or patch, e.g. 1.36 or 1.36.2")
    g.add_argument(
        "--storage",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Kubernetes: the storage add-on, a default StorageClass with local volumes (default on)",
    )
    g.add_argument(
        "--metrics",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Kubernetes: the metrics add-on, metrics-server for kubectl top and autoscaling (default on)",
    )
    g.add_argument(
        "--ingress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Kubernetes: the ingress add-on, Traefik serving Ingress and the Gateway API on NodePort 30080 of "
        "every node (default off)",
    )
    g.add_argument(
        "--time-scale",
        dest="time_scale",
        type=_number,
        help="how many times slower than an ordinary machine the nodes are (1 to 20, default 1; e.g. 4 for VMs "
        "under software emulation): every wait and timeout, and the control plane's leader election, scale with it",
    )
    g.add_argument(
        "--package-proxy",
        dest="package_proxy",
        metavar="URL",
        help='caching proxy for apt/dnf on the nodes, e.g. http://192.168.56.1:3142; "" removes it',
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="provision.py",
        allow_abbrev=False,
        description="Bring up a cluster: machines with Vagrant, nodes prepared with Ansible, "
        "Kubernetes (kubeadm + Calico) or Docker Swarm, checked with testinfra.",
    )
    p.add_argument("--dir", help="where the cluster's state lives (default .provision/ or $PROVISION_DIR)")
    p.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    p.add_argument("-v", "--verbose", action="store_true", help="stream full Ansible and Vagrant output")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="create machines and run every stage (resumes after a failure)")
    _spec_flags(up)
    up.add_argument("--no-verify", action="store_true", help="skip the testinfra checks at the end")
    up.add_argument(
        "--converge",
        action="store_true",
        help="re-apply every stage even when nothing changed since the last converge (by default such a "
        "rerun only verifies the nodes, and converges when verify finds drift)",
    )
    up.add_argument(
        "--shrink",
        action="store_true",
        help="when the spec has fewer workers than the cluster: drain them, take them out of the cluster and "
        "destroy their machines without asking",
    )
    up.add_argument(
        "--until",
        metavar="STAGE",
        help="stop after this stage (e.g. runtime: nodes prepared, nothing of the engine yet) and verify what ran",
    )
    up.add_argument("--stack", help="compose file to deploy with `docker stack deploy` after verify (swarm)")
    up.add_argument(
        "--accept-repo-key",
        metavar="FINGERPRINT",
        type=_repo_key_fingerprint,
        help="Kubernetes from pkgs.k8s.io or a mirror: trust the repository signing key with this fingerprint "
        "(after the repository rotated its key; without it a changed key is refused)",
    )

    pl = sub.add_parser("plan", help="print the resolved spec and network plan; create nothing")
    _spec_flags(pl)
    for q in (up, pl):
        q.add_argument(
            "--fast",
            action="store_true",
            help="with provider auto, take the fastest provider here (docker container nodes) before VMs",
        )

    sub.add_parser("status", help="machines, their state and IPs, finished stages")
    pr = sub.add_parser("provision", help="rerun stages on the existing machines")
    grp = pr.add_mutually_exclusive_group()
    grp.add_argument("--stage", help="run only this stage")
    grp.add_argument("--from", dest="from_stage", help="run this stage and the ones after it")

    sub.add_parser("verify", help="run the testinfra checks and print the per-node table")
    ssh = sub.add_parser("ssh", help="open a shell on a node")
    ssh.add_argument("node")
    ex = sub.add_parser("exec", help="run a command on many nodes at once: exec [--group G] -- CMD")
    ex.add_argument("--group", default="all", help="inventory group (default all)")
    ex.add_argument("--sudo", action="store_true", help="run with sudo")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")
    de = sub.add_parser("destroy", help="remove machines, generated inventory and state")
    de.add_argument("-f", "--force", action="store_true", help="do not ask")
    sub.add_parser("kubeconfig", help="print the kubeconfig path and the export line")
    sub.add_parser(
        "kubectl",
        help="kubectl of the cluster's release with its kubeconfig: kubectl ARGS... (from the bundle, else downloaded)",
        add_help=False,
    )
    sub.add_parser(
        "helm",
        help="helm against the cluster (its kubeconfig): helm ARGS... (from the bundle, else downloaded)",
        add_help=False,
    )
    sub.add_parser("reset", help="kubeadm reset on every node so the cluster can form again")
    ug = sub.add_parser(
        "upgrade",
        help="move the cluster to the next Kubernetes release (one minor, or a patch), one node at a time",
    )
    ug.add_argument(
        "--kube-version",
        required=True,
        help="the target release: the next minor (1.37) or a newer patch of the cluster's minor",
    )
    cf = sub.add_parser(
        "conformance",
        help="run Kubernetes' conformance suite against the cluster, offline (built and cached the first time)",
    )
    cf.add_argument("--focus", default="", help=r"regex of the tests to run (default: \[Conformance\])")
    cf.add_argument("--skip", default="", help="regex of the tests to leave out")
    cf.add_argument(
        "--parallel",
        type=int,
        default=4,
        help="test processes for the tests that may share the cluster; the [Serial] ones run alone after (default 4)",
    )
    img = sub.add_parser("image", help="node image of the docker provider")
    img_sub = img.add_subparsers(dest="image_command", required=True, metavar="ACTION")
    ib = img_sub.add_parser("build", help="build the node image from Debian packages")
    ib.add_argument("--force", action="store_true", help="rebuild even when the recipe is unchanged")
    ib.add_argument(
        "--with-runtime",
        action="store_true",
        help="bake Docker and containerd (Debian packages) in: provisioner/node-runtime",
    )
    ib.add_argument(
        "--kubernetes",
        action="store_true",
        help="the Kubernetes node image (provisioner/node-kube): the runtime image with the default bundle "
        "preloaded (the bundle must be built)",
    )
    bu = sub.add_parser("bundle", help="the offline Kubernetes + Calico bundle (binaries, images, manifests)")
    bu_sub = bu.add_subparsers(dest="bundle_command", required=True, metavar="ACTION")
    bub = bu_sub.add_parser(
        "build", help="make the bundle of one Kubernetes and one Calico release (prints its directory)"
    )
    bub.add_argument("--kubernetes", help="Kubernetes release, 1.37 or 1.37.2 (default: the toolkit's)")
    bub.add_argument("--calico", help="Calico release (default: the toolkit's)")
    bub.add_argument(
        "--ingress",
        action="store_true",
        help="with the ingress add-on (Traefik's image, the Gateway API's CRDs; built from source: about 7 more "
        "minutes cold); a cluster with ingress on asks for it itself, and a bundle that has it keeps it",
    )
    bub.add_argument(
        "--from",
        dest="source",
        default="auto",
        choices=["auto", "download", "source"],
        help="download (release sites), source (Go modules), auto (download where the sites answer, else source)",
    )
    bub.add_argument("--force", action="store_true", help="build again even when the bundle is present")
    bu_sub.add_parser("list", help="the bundles on this machine with versions, sizes and sources")
    bx = sub.add_parser("box", help="Vagrant box of the VM providers, built from Debian packages")
    bx_sub = bx.add_subparsers(dest="box_command", required=True, metavar="ACTION")
    bb = bx_sub.add_parser("build", help="build the box and add it to Vagrant (cached by a hash of its recipe)")
    bb.add_argument("--provider", default="libvirt", choices=["libvirt"], help="box provider (default libvirt)")
    bb.add_argument("--with-runtime", action="store_true", help="bake Docker and containerd (Debian packages) in")
    bb.add_argument("--force", action="store_true", help="rebuild even when the recipe is unchanged")
    return p


SPEC_KEYS = (
    "nodes",
    "provider",
    "engine",
    "name",
    "network",
    "pod_cidr",
    "service_cidr",
    "swarm_address_pool",
    "cpus",
    "memory",
    "managers",
    "control_planes",
    "api_vip",
    "box",
    "image",
    "runtime",
    "runtime_source",
    "package_proxy",
    "storage",
    "metrics",
    "ingress",
    "time_scale",
)


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    over: dict[str, object] = {k: getattr(args, k) for k in SPEC_KEYS if getattr(args, k, None) is not None}
    if getattr(args, "kube_version", None) is not None:  # "" is refused by the spec, not taken as the default
        over["versions"] = {"kubernetes": args.kube_version}
    if getattr(args, "stack", None):
        over["stack"] = str(Path(args.stack).expanduser().resolve())
    return over


# The commands that read or write one cluster's state directory (--dir).
CLUSTER_COMMANDS = (
    "up",
    "plan",
    "status",
    "provision",
    "verify",
    "ssh",
    "exec",
    "destroy",
    "kubeconfig",
    "kubectl",
    "upgrade",
    "helm",
    "reset",
    "conformance",
)


def workspace_of(raw: str | None) -> Workspace:
    """The state directory --dir names (default .provision/ or $PROVISION_DIR), refused where the
    toolkit's writes and `destroy`'s removals would land among files that are not a cluster's."""
    if raw is not None and not raw.strip():
        raise ProvisionError(
            "--dir is empty (an unset shell variable?); give the cluster's state directory, or drop --dir for "
            f"{default_provision_dir()}",
            exit_code=2,
        )
    ws = Workspace(Path(raw).expanduser().resolve() if raw is not None else default_provision_dir())
    ws.check_location()
    return ws


def _command_index(argv: list[str]) -> int | None:
    """Where the command is in `argv`: the first word that is neither a global option nor --dir's value."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--dir":
            i += 2
        elif word.startswith("-"):
            i += 1
        else:
            return i
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    # `kubectl ARGS...` and `helm ARGS...`: everything after the command is the tool's, options included
    # (the parser takes no abbreviated options, so _command_index knows every global option's shape).
    at = _command_index(argv)
    at = at if at is not None and argv[at] in ("kubectl", "helm") else None
    args = parser.parse_args(argv if at is None else argv[: at + 1])
    args.kubectl_args = [] if at is None else argv[at + 1 :]
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        ws = workspace_of(args.dir) if args.command in CLUSTER_COMMANDS else Workspace(default_provision_dir())
        if args.command in ("up", "destroy", "provision", "reset", "upgrade", "conformance"):
            with ws.lock(args.command):
                return dispatch(args, ws)
        return dispatch(args, ws)
    except ProvisionError as exc:
        if args.debug:
            logging.exception("failed")
        sys.stdout.flush()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume", file=sys.stderr)
        return 130


def dispatch(args: argparse.Namespace, ws: Workspace) -> int:
    cmd = args.command
    if cmd in ("up", "plan"):
        opts = up.UpOptions(
            overrides=_overrides(args),
            config=args.config,
            verbose=args.verbose,
            verify=not getattr(args, "no_verify", False),
            prefer_speed=args.fast,
            converge=getattr(args, "converge", False),
            shrink=getattr(args, "shrink", False),
            until=getattr(args, "until", None),
            accept_repo_key=getattr(args, "accept_repo_key", None) or "",
        )
        return up.up(ws, opts) if cmd == "up" else plan.plan(ws, opts)
    if cmd == "status":
        return status.status(ws)
    if cmd == "provision":
        return provision.provision(ws, args.stage, args.from_stage, args.verbose)
    if cmd == "verify":
        return verify.verify_cmd(ws)
    if cmd == "ssh":
        return access.ssh(ws, args.node)
    if cmd == "exec":
        command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        return access.exec_cmd(ws, args.group, command, args.sudo)
    if cmd == "destroy":
        return destroy.destroy(ws, args.force)
    if cmd == "kubeconfig":
        return access.kubeconfig(ws)
    if cmd == "kubectl":
        return kubectl.kubectl(ws, args.kubectl_args)
    if cmd == "helm":
        return helm.helm(ws, args.kubectl_args)
    if cmd == "reset":
        return provision.reset(ws, args.verbose)
    if cmd == "upgrade":
        return upgrade.upgrade(ws, args.kube_version, args.verbose)
    if cmd == "conformance":
        return conformance.conformance(ws, args.focus, args.skip, args.parallel, args.verbose)
    if cmd == "image":
        if args.kubernetes:
            return build.kube_image_build(args.force)
        return build.image_build(args.force, args.with_runtime)
    if cmd == "bundle":
        from provisioner import bundle
        from provisioner.bundle import make

        if args.bundle_command == "list":
            return make.list_cmd()
        versions = bundle.resolve_versions(args.kubernetes, args.calico)
        return make.build_cmd(versions, args.source, args.force, verbose=args.verbose, ingress=args.ingress)
    if cmd == "box":
        return build.box_build(args.provider, args.with_runtime, args.force)
    raise ProvisionError(f"unknown command {cmd}", exit_code=2)
