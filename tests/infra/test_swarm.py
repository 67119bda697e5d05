"""testinfra checks of the swarm stage (role swarm).

Per node (a row per node in `provision.py verify`): Docker answers, the node is an active swarm
member advertising its node_ip, Ready and Active as the first manager sees it, in the planned role,
with the planned labels, and the smoke-test image is present.

Per manager (cluster view): every node of `docker node ls` is Ready and Active and the inventory's
hosts are all there, the managers are the planned ones, there is one leader and it is a planned
manager. On the first manager only: an overlay network can be created and removed, and a smoke
service (one replica per node, from the locally built image, no registry) runs on distinct nodes,
answers over the overlay network, then is removed.

Run: pytest tests/infra/test_swarm.py --ansible-inventory=INV --connection=ansible
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
import testinfra
from testinfra.host import Host
from testinfra.utils.ansible_runner import AnsibleRunner

testinfra_hosts = ["ansible://swarm_manager", "ansible://swarm_worker"]

MANAGERS = "swarm_manager"
WORKERS = "swarm_worker"
SMOKE_IMAGE = "provisioner/smoke:1"
SMOKE_PORT = 8080
VERIFY_LABEL = "provisioner.verify"
WAIT_SECONDS = 120.0

T = TypeVar("T")


# --- hosts ------------------------------------------------------------------------------------


def _host_kwargs(config: pytest.Config) -> dict[str, Any]:
    """The same connection options testinfra's own plugin uses (so its Host cache is shared)."""
    opt = config.option
    return {
        "connection": opt.connection,
        "ssh_config": opt.ssh_config,
        "ssh_identity_file": opt.ssh_identity_file,
        "sudo": opt.sudo,
        "sudo_user": opt.sudo_user,
        "ansible_inventory": opt.ansible_inventory,
        "force_ansible": opt.force_ansible,
    }


def _group_in_order(config: pytest.Config, group: str) -> list[str]:
    """Hosts of an inventory group in inventory order (the first manager is the one that initialized)."""
    inventory = AnsibleRunner.get_runner(config.option.ansible_inventory).inventory
    return list(inventory.get(group, {}).get("hosts", []))


def _hosts(config: pytest.Config, group: str) -> list[Host]:
    by_name = {h.backend.get_hostname(): h for h in testinfra.get_hosts([f"ansible://{group}"], **_host_kwargs(config))}
    return [by_name[name] for name in _group_in_order(config, group) if name in by_name]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`manager`: every manager (cluster-view checks); `bootstrap`: the first manager only."""
    for name, pick in (("manager", slice(None)), ("bootstrap", slice(0, 1))):
        if name in metafunc.fixturenames:
            hosts = _hosts(metafunc.config, MANAGERS)[pick]
            metafunc.parametrize(name, hosts, ids=[h.backend.get_pytest_id() for h in hosts], scope="module")


@pytest.fixture(scope="module")
def first_manager(request: pytest.FixtureRequest) -> Host:
    hosts = _hosts(request.config, MANAGERS)
    if not hosts:
        pytest.fail("the inventory's swarm_manager group is empty")
    return hosts[0]


@pytest.fixture(scope="module")
def all_hosts(request: pytest.FixtureRequest) -> list[Host]:
    return _hosts(request.config, MANAGERS) + _hosts(request.config, WORKERS)


def _docker_down(hosts: list[Host]) -> list[str]:
    """The hosts whose Docker daemon does not answer (or that cannot be reached at all)."""
    down = []
    for host in hosts:
        try:
            answers = sh(host, "docker info --format '{{.ServerVersion}}'").rc == 0
        except Exception:  # an unreachable node: testinfra raises instead of returning a result
            answers = False
        if not answers:
            down.append(host.backend.get_hostname())
    return down


@pytest.fixture(scope="module")
def settle(all_hosts: list[Host]) -> float:
    """How long the cluster-view checks wait for the swarm to settle (a node that has just joined or
    restarted): WAIT_SECONDS, or nothing when a node's Docker is down, as then it cannot settle and
    waiting only delays the report (test_docker_answers names the node)."""
    if _docker_down(all_hosts):
        return 0.0
    # Scaled like the roles' own waits on a slow machine (cluster_time_scale: the VM lane runs at 4
    # under qemu software emulation, where a replica once took longer than 120 s to start).
    scale = float(all_hosts[0].ansible.get_variables().get("cluster_time_scale") or 1)
    return WAIT_SECONDS * max(1.0, scale)


# --- helpers ----------------------------------------------------------------------------------


def sh(host: Host, command: str, *args: Any) -> Any:
    with host.sudo():
        return host.run(command, *args)


def out(host: Host, command: str, *args: Any) -> str:
    result = sh(host, command, *args)
    assert result.rc == 0, f"{host.backend.get_hostname()}: `{result.command}` failed: {result.stderr.strip()}"
    return str(result.stdout)


def wait_for(probe: Callable[[], T], ok: Callable[[T], bool], timeout: float = WAIT_SECONDS, every: float = 0.5) -> T:
    """Call probe until ok(value) or timeout; return the last value either way (the assert says why)."""
    deadline = time.monotonic() + timeout
    value = probe()
    while not ok(value) and time.monotonic() < deadline:
        time.sleep(every)
        value = probe()
    return value


def swarm_info(host: Host) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(out(host, "docker info --format '{{json .Swarm}}'"))
    return data


def node_id(host: Host) -> str:
    nid = str(swarm_info(host).get("NodeID") or "")
    assert nid, f"{host.backend.get_hostname()} is not in a swarm"
    return nid


def inspect_node(manager: Host, nid: str) -> dict[str, Any]:
    data: list[dict[str, Any]] = json.loads(out(manager, "docker node inspect %s", nid))
    return data[0]


def node_table(manager: Host) -> list[dict[str, Any]]:
    lines = out(manager, "docker node ls --format '{{json .}}'").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def planned_vars(host: Host) -> dict[str, Any]:
    data: dict[str, Any] = host.ansible.get_variables()
    return data


# --- per node ---------------------------------------------------------------------------------


def test_docker_answers(host: Host) -> None:
    result = sh(host, "docker info --format '{{.ServerVersion}}'")
    assert result.rc == 0 and result.stdout.strip(), f"docker info fails: {result.stderr.strip()}"


def test_swarm_member(host: Host) -> None:
    info = swarm_info(host)
    assert info.get("LocalNodeState") == "active", f"LocalNodeState is {info.get('LocalNodeState')!r}"
    expected = planned_vars(host).get("node_ip")
    if expected:
        assert info.get("NodeAddr") == expected, f"advertises {info.get('NodeAddr')}, node_ip is {expected}"


def test_node_ready_active(host: Host, first_manager: Host, settle: float) -> None:
    nid = node_id(host)
    node = wait_for(
        lambda: inspect_node(first_manager, nid),
        lambda n: n["Status"]["State"] == "ready" and n["Spec"]["Availability"] == "active",
        timeout=settle,
    )
    assert (node["Status"]["State"], node["Spec"]["Availability"]) == ("ready", "active")


def test_node_role_as_planned(host: Host, first_manager: Host) -> None:
    planned = "manager" if MANAGERS in planned_vars(host).get("group_names", []) else "worker"
    node = inspect_node(first_manager, node_id(host))
    assert node["Spec"]["Role"] == planned
    if planned == "manager":
        reachability = node.get("ManagerStatus", {}).get("Reachability")
        assert reachability == "reachable", f"manager reachability is {reachability!r}"


def test_node_labels_as_planned(host: Host, first_manager: Host) -> None:
    wanted = planned_vars(host).get("swarm_node_labels") or {}
    if not wanted:
        pytest.skip("not configured: no swarm_node_labels planned for this node")
    have = inspect_node(first_manager, node_id(host))["Spec"].get("Labels") or {}
    expected = {str(k): ("true" if v is True else "false" if v is False else str(v)) for k, v in wanted.items()}
    assert {k: have.get(k) for k in expected} == expected


def test_smoke_image_present(host: Host) -> None:
    result = sh(host, "docker image inspect --format '{{.Id}}' %s", SMOKE_IMAGE)
    assert result.rc == 0, f"{SMOKE_IMAGE} missing (the swarm role builds it): {result.stderr.strip()}"


# --- cluster view, on every manager -----------------------------------------------------------


def test_all_nodes_ready_active(manager: Host, all_hosts: list[Host], settle: float) -> None:
    planned = {node_id(h): h.backend.get_hostname() for h in all_hosts}

    def bad(rows: list[dict[str, Any]]) -> list[str]:
        problems = [
            f"{r['Hostname']} ({r['ID']}) {r['Status']}/{r['Availability']}"
            for r in rows
            if (r["Status"], r["Availability"]) != ("Ready", "Active")
        ]
        missing = sorted(set(planned) - {r["ID"] for r in rows})
        return problems + [f"{planned[m]} missing from docker node ls" for m in missing]

    rows = wait_for(lambda: node_table(manager), lambda r: not bad(r), timeout=settle)
    assert not bad(rows), "; ".join(bad(rows))


def test_managers_as_planned(manager: Host, request: pytest.FixtureRequest) -> None:
    planned = {node_id(h) for h in _hosts(request.config, MANAGERS)}
    actual = {r["ID"] for r in node_table(manager) if r["ManagerStatus"]}
    assert actual == planned, f"{len(actual)} managers in the swarm, {len(planned)} planned"


def test_leader_is_planned_manager(manager: Host, request: pytest.FixtureRequest, settle: float) -> None:
    planned = {node_id(h): h.backend.get_hostname() for h in _hosts(request.config, MANAGERS)}
    rows = wait_for(
        lambda: node_table(manager),
        lambda r: len([x for x in r if x["ManagerStatus"] == "Leader"]) == 1,
        timeout=settle,
    )
    leaders = [r["ID"] for r in rows if r["ManagerStatus"] == "Leader"]
    assert len(leaders) == 1, f"{len(leaders)} leaders"
    assert leaders[0] in planned, f"the leader {leaders[0]} is not a planned manager"


def test_other_managers_reachable(manager: Host, request: pytest.FixtureRequest, settle: float) -> None:
    """Every manager but the leader is Reachable: the Raft quorum survives the loss of any one of three."""
    planned = {node_id(h): h.backend.get_hostname() for h in _hosts(request.config, MANAGERS)}

    def unreachable(rows: list[dict[str, Any]]) -> list[str]:
        status = {r["ID"]: r["ManagerStatus"] for r in rows}
        return [
            f"{name}: {status.get(i) or 'not a manager'}"
            for i, name in planned.items()
            if status.get(i) not in ("Leader", "Reachable")
        ]

    rows = wait_for(lambda: node_table(manager), lambda r: not unreachable(r), timeout=settle)
    assert not unreachable(rows), "managers not reachable: " + "; ".join(unreachable(rows))


# --- overlay network and smoke service, on the first manager ----------------------------------


def _remove_leftovers(manager: Host) -> None:
    """Services and networks of an interrupted earlier verify run."""
    sh(manager, "docker service ls -q --filter label=%s | xargs -r docker service rm", VERIFY_LABEL)
    sh(manager, "docker network ls -q --filter label=%s | xargs -r docker network rm", VERIFY_LABEL)


def test_overlay_network_create_remove(bootstrap: Host) -> None:
    name = f"verify-net-{uuid.uuid4().hex[:8]}"
    out(bootstrap, "docker network create --driver overlay --label %s=network %s", VERIFY_LABEL, name)
    try:
        # The swarm's allocator fills in the driver shortly after the create returns (inspect shows an
        # empty Driver until then, seen right after a manager's rejoin): wait for it, bounded.
        net = wait_for(
            lambda: json.loads(out(bootstrap, "docker network inspect %s", name))[0],
            lambda net: bool(net.get("Driver")),
        )
        assert (net["Driver"], net["Scope"]) == ("overlay", "swarm")
    finally:
        removed = sh(bootstrap, "docker network rm %s", name)
    assert removed.rc == 0, removed.stderr.strip()
    assert sh(bootstrap, "docker network inspect %s", name).rc != 0, "the network is still there"


@pytest.fixture(scope="module")
def smoke(bootstrap: Host, all_hosts: list[Host]) -> Iterator[dict[str, Any]]:
    """A replicated service, one replica per node, on its own attachable overlay network."""
    _remove_leftovers(bootstrap)
    suffix = uuid.uuid4().hex[:8]
    svc = {"name": f"verify-smoke-{suffix}", "network": f"verify-smoke-net-{suffix}", "replicas": len(all_hosts)}
    out(
        bootstrap,
        "docker network create --driver overlay --attachable --label %s=smoke %s",
        VERIFY_LABEL,
        svc["network"],
    )
    out(
        bootstrap,
        "docker service create --detach --no-resolve-image --init --label %s=smoke --name %s --network %s "
        "--replicas %s --replicas-max-per-node 1 --stop-grace-period 1s %s httpd -f -p %s -h /www",
        VERIFY_LABEL,
        svc["name"],
        svc["network"],
        str(svc["replicas"]),
        SMOKE_IMAGE,
        str(SMOKE_PORT),
    )
    try:
        yield svc
    finally:
        sh(bootstrap, "docker service rm %s", svc["name"])
        wait_for(lambda: sh(bootstrap, "docker network rm %s", svc["network"]).rc, lambda rc: rc == 0, timeout=60)


def running_tasks(manager: Host, service: str) -> list[tuple[str, str]]:
    """(node, current state) of the tasks that should be running."""
    lines = out(
        manager,
        "docker service ps --no-trunc --filter desired-state=running --format '{{.Node}}|{{.CurrentState}}' %s",
        service,
    ).splitlines()
    return [(line.split("|")[0], line.split("|")[1]) for line in lines if "|" in line]


def test_smoke_replicas_on_distinct_nodes(bootstrap: Host, smoke: dict[str, Any], settle: float) -> None:
    def ok(tasks: list[tuple[str, str]]) -> bool:
        nodes = {n for n, state in tasks if state.startswith("Running")}
        return len(nodes) == int(smoke["replicas"])

    tasks = wait_for(lambda: running_tasks(bootstrap, smoke["name"]), ok, timeout=settle)
    running = sorted({n for n, state in tasks if state.startswith("Running")})
    assert len(running) == smoke["replicas"], (
        f"{len(running)} of {smoke['replicas']} replicas running on distinct nodes: {tasks}"
    )


def _http_from_network(manager: Host, network: str, addresses: list[str]) -> dict[str, str]:
    """GET / from a throwaway container on the overlay network, for each address ("smoke" is good).
    The addresses are asked side by side, each for at most 3 seconds, so that a replica the overlay
    does not reach yet costs one short wait per attempt, not one per address."""
    script = (
        'for ip in "$@"; do ( answer=$(printf "GET / HTTP/1.0\\r\\n\\r\\n" '
        f'| timeout 3 nc "$ip" {SMOKE_PORT} | tail -n 1); echo "$ip $answer" ) & done; wait'
    )
    args = " ".join(["%s"] * len(addresses))
    result = sh(
        manager,
        f"docker run --rm --network %s {SMOKE_IMAGE} sh -c %s probe {args}",
        network,
        script,
        *addresses,
    )
    answers: dict[str, str] = {}
    for line in result.stdout.splitlines():
        ip, _, answer = line.strip().partition(" ")
        if ip:
            answers[ip] = answer.strip()
    return answers


def test_smoke_overlay_data_path(bootstrap: Host, smoke: dict[str, Any], settle: float) -> None:
    """Every replica answers, by its task address, from a container on the first manager: the
    replicas on the other nodes are reached through the overlay (VXLAN) network."""

    def task_ips() -> list[str]:
        net = json.loads(out(bootstrap, "docker network inspect --verbose %s", smoke["network"]))[0]
        tasks = (net.get("Services") or {}).get(smoke["name"], {}).get("Tasks") or []
        return sorted(t["EndpointIP"] for t in tasks if t.get("EndpointIP"))

    ips = wait_for(task_ips, lambda x: len(x) == smoke["replicas"], timeout=settle)
    assert len(ips) == smoke["replicas"], f"{len(ips)} task addresses on the overlay network: {ips}"
    answers = wait_for(
        lambda: _http_from_network(bootstrap, smoke["network"], ips),
        lambda a: all(a.get(ip) == "smoke" for ip in ips),
        timeout=30,
    )
    silent = [ip for ip in ips if answers.get(ip) != "smoke"]
    assert not silent, f"no answer over the overlay network from {silent}"


def test_smoke_service_vip(bootstrap: Host, smoke: dict[str, Any], container_node_of: Callable[[Host], bool]) -> None:
    """The service's virtual IP balances over the replicas with IPVS, which the kernel must provide
    (a machine's own kernel loads it; a container node has the host's)."""
    if not bootstrap.file("/sys/module/ip_vs").exists and container_node_of(bootstrap):
        pytest.skip(
            "container node: the host kernel has no ip_vs, so service VIPs and the ingress routing mesh cannot "
            "work; use endpoint_mode dnsrr and host-mode ports"
        )
    svc = json.loads(out(bootstrap, "docker service inspect %s", smoke["name"]))[0]
    vips = [v["Addr"].split("/")[0] for v in svc["Endpoint"].get("VirtualIPs", [])]
    assert vips, "the service has no virtual IP"
    answers = wait_for(
        lambda: _http_from_network(bootstrap, smoke["network"], vips[:1]),
        lambda a: a.get(vips[0]) == "smoke",
        timeout=30,
    )
    assert answers.get(vips[0]) == "smoke", f"no answer from the service VIP {vips[0]}"


def test_smoke_service_removed(bootstrap: Host, smoke: dict[str, Any], settle: float) -> None:
    """The service goes and its replica on this node stops (the replicas run under an init, which
    passes the stop signal on; Docker's agent removes the stopped containers a few seconds later,
    which under qemu software emulation once took longer than a minute, so the wait scales)."""
    out(bootstrap, "docker service rm %s", smoke["name"])

    def left() -> str:
        if sh(bootstrap, "docker service inspect %s", smoke["name"]).rc == 0:
            return "the service is still listed"
        running = sh(bootstrap, "docker ps -q --filter label=com.docker.swarm.service.name=%s", smoke["name"])
        if running.rc != 0:
            return f"docker ps failed: {running.stderr.strip()}"
        if running.stdout.strip():
            return "its containers still run here: " + " ".join(running.stdout.split())
        return ""

    timeout = max(60.0, settle)
    remaining = wait_for(left, lambda what: not what, timeout=timeout)
    assert not remaining, f"the smoke service was removed {timeout:.0f} s ago and {remaining}"
