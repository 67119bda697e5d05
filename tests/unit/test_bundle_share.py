"""How the nodes see the Kubernetes bundle: container nodes through a read-only bind mount, libvirt
VMs through a virtiofs share mounted read-only (the Vagrantfile), VirtualBox VMs not at all (the files go
over SSH). Where they see it, the inventory tells the kube_packages role where it is on the node."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner import machines
from provisioner.inventory import BUNDLES_NODE_DIR, cluster_vars
from provisioner.spec import build_spec


@pytest.mark.parametrize(("provider", "shared"), [("docker", True), ("libvirt", True), ("virtualbox", False)])
def test_the_node_dir_is_set_where_the_provider_shares_the_bundle(tmp_path: Path, provider: str, shared: bool) -> None:
    bundle = tmp_path / "bundles" / "k8s-1.37.2-calico-3.31.0"
    bundle.mkdir(parents=True)
    spec = build_spec({"provider": provider, "engine": "kubernetes"})
    found = cluster_vars(spec, tmp_path, bundle)
    assert found["kube_bundle_dir"] == str(bundle)
    if shared:
        assert found["kube_bundle_node_dir"] == f"{BUNDLES_NODE_DIR}/{bundle.name}"
        assert machines.for_name(provider).mount_bundle(bundle) == {"bundle_root": str(bundle.parent)}
    else:
        assert "kube_bundle_node_dir" not in found
        assert machines.for_name(provider).mount_bundle(bundle) == {}


def test_without_a_bundle_nothing_is_shared(tmp_path: Path) -> None:
    spec = build_spec({"provider": "libvirt", "engine": "kubernetes"})
    assert "kube_bundle_node_dir" not in cluster_vars(spec, tmp_path, None)
    assert machines.for_name("libvirt").mount_bundle(None) == {}
