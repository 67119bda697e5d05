"""The libvirt box recipe, its versioning and the pure helpers of the builder: no machines, no network."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from provisioner import box, libvirt
from provisioner.errors import ProvisionError

BOX_LIST = """\
1732230000,,ui,info,debian/bookworm64
1732230000,,box-name,debian/bookworm64
1732230000,,box-provider,virtualbox
1732230000,,box-version,12.20240905.1
1732230000,,ui,info,provisioner/bookworm-libvirt
1732230000,,box-name,provisioner/bookworm-libvirt
1732230000,,box-provider,libvirt
1732230000,,box-version,0.0.612764971
1732230000,,box-name,provisioner/bookworm-libvirt
1732230000,,box-provider,libvirt
1732230000,,box-version,0.0.17
"""


def test_parse_box_list_reads_name_provider_version_rows() -> None:
    boxes = box.parse_box_list(BOX_LIST)
    assert boxes == [
        box.InstalledBox("debian/bookworm64", "virtualbox", "12.20240905.1"),
        box.InstalledBox("provisioner/bookworm-libvirt", "libvirt", "0.0.612764971"),
        box.InstalledBox("provisioner/bookworm-libvirt", "libvirt", "0.0.17"),
    ]
    assert box.parse_box_list("There are no installed boxes!\n") == []


def test_recipe_hash_versions_the_box() -> None:
    plain = box.BoxRecipe()
    assert plain.name == box.BOX_NAME
    assert re.fullmatch(r"0\.0\.\d+", plain.version)
    assert plain.version == box.BoxRecipe(mirror="http://deb.debian.org/debian").version  # mirror is not content
    runtime = box.BoxRecipe(with_runtime=True)
    assert runtime.name == box.BOX_NAME_RUNTIME
    assert runtime.version != plain.version
    assert set(box.RUNTIME_PACKAGES) <= set(runtime.all_packages)
    assert not set(box.RUNTIME_PACKAGES) & set(plain.all_packages)
    changed = box.BoxRecipe(customize=box.CUSTOMIZE + "\n# changed\n")
    assert changed.version != plain.version


def test_box_version_is_a_vagrant_version_from_the_digest() -> None:
    assert box.box_version("00000010ffff") == "0.0.16"
    assert box.box_version("ffffffff0000") == f"0.0.{0xFFFFFFFF}"


def test_recipe_has_what_a_vagrant_libvirt_node_needs() -> None:
    pkgs = set(box.PACKAGES)
    for needed in ("linux-image-cloud-amd64", "systemd", "systemd-sysv", "openssh-server", "python3", "sudo"):
        assert needed in pkgs
    script = box.CUSTOMIZE
    assert "NOPASSWD:ALL" in script and "authorized_keys" in script
    assert 'rm -f "$root"/etc/ssh/ssh_host_*' in script  # fresh host keys at first boot
    assert "ssh-keygen -q -t ed25519" in script and "MODULES=list" in script
    assert "Name=eth0" in script and "DHCP=ipv4" in script
    assert "net.ifnames=0" in script and "root=UUID=$ROOT_UUID" in script
    assert "apt-daily.timer" in script
    assert "systemd-timesyncd" in pkgs and "FallbackNTP=" in script  # time sync without the public pool
    assert "LLMNR=no" in script


def test_metadata_and_vagrantfile_of_the_box() -> None:
    meta = box.box_metadata(20, "abc123")
    assert meta["provider"] == "libvirt" and meta["format"] == "qcow2" and meta["virtual_size"] == 20
    assert json.loads(json.dumps(meta)) == meta
    assert "config.vm.provider :libvirt do |libvirt|" in box.BOX_VAGRANTFILE


def test_catalog_points_at_the_local_box_file(tmp_path: Path) -> None:
    f = tmp_path / "x.box"
    cat = box.catalog("provisioner/bookworm-libvirt", "0.0.5", f, "ab" * 32, "d1")
    assert cat["name"] == "provisioner/bookworm-libvirt"
    versions = cat["versions"]
    assert isinstance(versions, list)
    prov = versions[0]["providers"][0]
    assert versions[0]["version"] == "0.0.5"
    assert prov["name"] == "libvirt" and prov["url"] == f.as_uri() and prov["checksum_type"] == "sha256"


def test_box_volume_prefix_matches_vagrant_libvirt_naming() -> None:
    assert (
        libvirt.box_volume_prefix("provisioner/bookworm-libvirt", "0.0.5")
        == "provisioner-VAGRANTSLASH-bookworm-libvirt_vagrant_box_image_0.0.5"
    )


@pytest.mark.skipif(shutil.which("sfdisk") is None, reason="sfdisk (package fdisk) is not installed")
def test_sfdisk_script_makes_one_bootable_partition_at_1mib(tmp_path: Path) -> None:
    disk = tmp_path / "d.raw"
    with disk.open("wb") as f:
        f.truncate(64 * 1024 * 1024)
    subprocess.run(["sfdisk", "--quiet", str(disk)], input=box.sfdisk_script(), text=True, check=True)
    dump = subprocess.run(["sfdisk", "--dump", str(disk)], capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in dump.splitlines() if ln.startswith(str(disk)))
    assert "start=        2048" in line and "type=83" in line and "bootable" in line
    assert box.PARTITION_OFFSET == 2048 * 512


def test_build_refuses_without_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ProvisionError, match="needs root"):
        box.build_box(box.BoxRecipe(), tmp_path)
