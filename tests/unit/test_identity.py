"""Cluster identity: which machines are a cluster's own, and what another cluster holds (issue 14.1, 14.2)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from provisioner import identity, libvirt, machines, preflight, providers
from provisioner.command import plan as plan_cmd
from provisioner.command import up as up_cmd
from provisioner.command.up import UpOptions
from provisioner.errors import ProvisionError
from provisioner.spec import build_spec
from provisioner.workspace import Workspace


def _conflict(machines: list[identity.Machine], cluster_id: str = "new", vagrant_ids: set[str] | None = None) -> str:
    return identity.conflict(
        machines,
        name="lab",
        network="192.168.56.0/24",
        node_names=["lab-cp1", "lab-worker1"],
        cluster_id=cluster_id,
        vagrant_ids=vagrant_ids or set(),
    )


def test_a_second_cluster_with_the_same_name_is_refused_naming_the_other() -> None:
    other = identity.Machine("c1", "lab-cp1", "lab", "old", "/root/.provision", ("192.168.56.0/24",))
    msg = _conflict([other])
    assert "cluster name 'lab' is taken by another cluster" in msg
    assert "/root/.provision" in msg and "--name" in msg


def test_a_second_cluster_on_a_used_network_is_refused() -> None:
    other = identity.Machine("c1", "web-cp1", "web", "old", "/srv/web", ("192.168.56.0/24",))
    msg = _conflict([other])
    assert msg.startswith("the node network 192.168.56.0/24 is used by cluster 'web'")
    assert "--network" in msg


def test_a_foreign_container_with_a_node_name_is_refused() -> None:
    msg = _conflict([identity.Machine("c9", "lab-worker1")])
    assert "machine name lab-worker1 is taken (machines outside this toolkit: lab-worker1)" in msg


def test_own_machines_by_id_or_by_vagrant_record_are_clear() -> None:
    labelled = identity.Machine("c1", "lab-cp1", "lab", "mine", "", ("192.168.56.0/24",))
    legacy = identity.Machine("0123456789ab", "lab-worker1", "lab", "", "", ("192.168.56.0/24",))
    assert _conflict([labelled, legacy], cluster_id="mine", vagrant_ids={"0123456789ab" + "cd" * 26}) == ""


def test_a_legacy_container_of_another_state_dir_is_not_ours() -> None:
    legacy = identity.Machine("0123456789ab", "lab-worker1", "lab")
    assert "is taken by another cluster" in _conflict([legacy], cluster_id="mine", vagrant_ids={"ffff"})


def test_vagrant_machine_ids_are_read_from_the_state_dir(tmp_path: Path) -> None:
    for node, ident in (("cp1", "abc\n"), ("worker1", "")):
        path = tmp_path / "vagrant" / "machines" / node / "docker" / "id"
        path.parent.mkdir(parents=True)
        path.write_text(ident)
    assert identity.vagrant_machine_ids(tmp_path, "docker") == {"abc"}
    assert identity.vagrant_machine_ids(tmp_path / "none", "docker") == set()


def test_docker_inspect_is_parsed_into_machines_with_their_subnets() -> None:
    containers = [
        {
            "Id": "c1",
            "Name": "/lab-cp1",
            "Config": {"Labels": {identity.LABEL_NAME: "lab", identity.LABEL_ID: "x1", identity.LABEL_DIR: "/d"}},
        },
        {"Id": "c2", "Name": "/other", "Config": {"Labels": None}},
    ]
    networks = [
        {"IPAM": {"Config": [{"Subnet": "192.168.56.0/24"}]}, "Containers": {"c1": {"Name": "lab-cp1"}}},
        {"IPAM": {"Config": None}, "Containers": {"c2": {}}},
    ]
    parsed = providers.parse_docker_machines(containers, networks)
    assert parsed == [
        identity.Machine("c1", "lab-cp1", "lab", "x1", "/d", ("192.168.56.0/24",)),
        identity.Machine("c2", "other"),
    ]


def test_a_stopped_container_keeps_its_network() -> None:
    """`docker network inspect` lists running containers only; a stopped cluster still holds its network."""
    containers = [
        {
            "Id": "c1",
            "Name": "/lab-cp1",
            "Config": {"Labels": {identity.LABEL_NAME: "lab"}},
            "NetworkSettings": {"Networks": {"vagrant_network_192.168.56.0/24": {"NetworkID": "n1"}}},
        }
    ]
    networks = [{"Id": "n1", "IPAM": {"Config": [{"Subnet": "192.168.56.0/24"}]}, "Containers": {}}]
    assert providers.parse_docker_machines(containers, networks)[0].subnets == ("192.168.56.0/24",)


def test_plan_says_what_up_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`plan` reported the network as clear while `up` failed later on a docker name clash."""
    other = identity.Machine("c1", "lab-cp1", "lab", "old", "/root/.provision", ("192.168.56.0/24",))
    monkeypatch.setattr("provisioner.providers.shutil.which", lambda _: "/usr/bin/docker")
    monkeypatch.setattr(providers, "docker_machines", lambda: [other])
    monkeypatch.setattr(preflight, "check_networks", lambda spec: [])
    ws = Workspace(tmp_path / "second")
    opts = UpOptions(overrides={"provider": "docker", "nodes": "1"})
    with pytest.raises(ProvisionError) as info:
        plan_cmd.plan(ws, opts, io.StringIO())
    assert info.value.exit_code == 2
    assert "cluster name 'lab' is taken" in info.value.message
    assert not ws.root.exists()


def test_up_refuses_before_anything_is_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = identity.Machine("c1", "web-cp1", "web", "old", "/srv/web", ("192.168.56.0/24",))
    monkeypatch.setattr("provisioner.providers.shutil.which", lambda _: "/usr/bin/docker")
    monkeypatch.setattr(providers, "docker_machines", lambda: [other])
    monkeypatch.setattr(preflight, "check_networks", lambda spec: [])
    monkeypatch.setattr("provisioner.providers.choose", lambda *a, **k: providers.Choice("docker", "test"))
    ws = Workspace(tmp_path / "second")
    opts = UpOptions(overrides={"provider": "docker", "nodes": "1", "engine": "swarm"})
    with pytest.raises(ProvisionError) as info:
        up_cmd.up(ws, opts, io.StringIO())
    assert "node network 192.168.56.0/24 is used by cluster 'web'" in info.value.message
    assert not ws.root.exists()


def test_new_ids_differ() -> None:
    assert identity.new_id() != identity.new_id()
    assert len(identity.new_id()) == 12


# ------------------------------------------------------------------ libvirt domains (identity in the description)

DOMIFLIST = """ Interface   Type      Source        Model    MAC
-----------------------------------------------------------------
 vnet0       network   lab-mgmt      virtio   52:54:00:aa:bb:01
 vnet1       network   lab0          virtio   52:54:00:aa:bb:02
 vnet2       bridge    br0           virtio   52:54:00:aa:bb:03
"""


def test_domain_description_and_interfaces_are_parsed() -> None:
    desc = "org.provisioner.cluster=lab\norg.provisioner.cluster-id=ab12\norg.provisioner.dir=/srv/a b\n"
    assert libvirt.parse_description(desc) == {
        identity.LABEL_NAME: "lab",
        identity.LABEL_ID: "ab12",
        identity.LABEL_DIR: "/srv/a b",
    }
    assert libvirt.parse_description("Source: /root/Vagrantfile") == {}
    assert libvirt.parse_domiflist(DOMIFLIST) == ["lab-mgmt", "lab0"]


@pytest.mark.parametrize(
    ("xml", "subnet"),
    [
        ("<network><name>n</name><ip address='192.168.56.1' netmask='255.255.255.0'/></network>", "192.168.56.0/24"),
        ("<network><ip family='ipv4' address='10.254.56.1' prefix='24'><dhcp/></ip></network>", "10.254.56.0/24"),
        ("<network><ip family='ipv6' address='fd00::1' prefix='64'/></network>", ""),
        ("<network><name>isolated</name></network>", ""),
        ("not xml", ""),
    ],
)
def test_network_subnets_are_read_from_the_network_xml(xml: str, subnet: str) -> None:
    assert libvirt.parse_network_subnet(xml) == subnet


def _libvirt_clear(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, found: list[tuple[str, str, dict[str, str], list[str]]]
) -> None:
    """Libvirt.check_clear over domains given as (name, uuid, their `virsh desc` identity, subnets)."""
    monkeypatch.setattr("shutil.which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(libvirt, "answers", lambda: True)
    monkeypatch.setattr(libvirt, "domains", lambda: [_domain(*d) for d in found])
    spec = build_spec(overrides={"name": "lab", "nodes": 2, "network": "192.168.56.0/24", "provider": "libvirt"})
    machines.Libvirt().check_clear(spec, tmp_path, "mine")


def _domain(name: str, uuid: str, desc: dict[str, str], subnets: list[str]) -> identity.Machine:
    """A domain as libvirt.domains() reports it, from its description's key=value lines."""
    text = "\n".join(f"{k}={v}" for k, v in desc.items())
    ident = libvirt.parse_description(text)
    return identity.Machine(
        uuid,
        name,
        ident.get(identity.LABEL_NAME, ""),
        ident.get(identity.LABEL_ID, ""),
        ident.get(identity.LABEL_DIR, ""),
        tuple(subnets),
    )


def test_libvirt_domain_of_another_cluster_on_the_node_network_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    other = {identity.LABEL_NAME: "web", identity.LABEL_ID: "theirs", identity.LABEL_DIR: "/srv/web"}
    with pytest.raises(ProvisionError) as err:
        _libvirt_clear(monkeypatch, tmp_path, [("web-cp1", "u1", other, ["192.168.56.0/24", "10.254.56.0/24"])])
    assert "the node network 192.168.56.0/24 is used by cluster 'web' of /srv/web" in err.value.message
    assert err.value.exit_code == 2


def test_libvirt_foreign_domain_on_the_node_network_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ProvisionError) as err:
        _libvirt_clear(monkeypatch, tmp_path, [("build-vm", "u2", {}, ["192.168.56.0/24"])])
    assert "machines outside this toolkit: build-vm" in err.value.message


def test_libvirt_own_domains_and_other_networks_are_clear(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    mine = {identity.LABEL_NAME: "lab", identity.LABEL_ID: "mine"}
    other = {identity.LABEL_NAME: "web", identity.LABEL_ID: "theirs"}
    _libvirt_clear(
        monkeypatch,
        tmp_path,
        [("lab-cp1", "u1", mine, ["192.168.56.0/24"]), ("web-cp1", "u3", other, ["192.168.57.0/24"])],
    )


def test_an_overlapping_node_network_is_refused_too() -> None:
    other = identity.Machine("c1", "web-cp1", "web", "old", "/srv/web", ("192.168.56.0/24",))
    msg = identity.conflict(
        [other], name="lab", network="192.168.56.0/25", node_names=["lab-cp1"], cluster_id="new", vagrant_ids=set()
    )
    assert msg.startswith("the node network 192.168.56.0/25 is used by cluster 'web'"), msg
    assert _conflict([identity.Machine("c2", "web-cp1", "web", "old", "", ("192.168.57.0/24", "bogus"))]) == ""


def test_libvirt_clean_up_spares_domains_of_another_cluster_with_the_same_name() -> None:
    found = [
        _domain("lab-cp1", "u1", {identity.LABEL_ID: "theirs"}, []),
        _domain("lab-worker1", "u2", {identity.LABEL_ID: "mine"}, []),
        _domain("lab-worker2", "u3", {}, []),
        _domain("web-cp1", "u4", {identity.LABEL_ID: "theirs"}, []),
    ]
    names = ["lab-cp1", "lab-worker1", "lab-worker2"]
    assert libvirt.foreign_domains(found, names, "mine") == ["lab-cp1"]
    assert libvirt.foreign_domains(found, names, "") == ["lab-cp1", "lab-worker1"]
