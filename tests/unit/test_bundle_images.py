"""Image archives assembled from binaries (provisioner.bundle.images): layout, names, reproducibility."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from provisioner.bundle import images


def _userland(path: Path) -> Path:
    """A tiny stand-in for the Debian userland layer: merged /usr with bin -> usr/bin."""
    with tarfile.open(path, "w") as tar:
        for name in ("./usr", "./usr/bin"):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        link = tarfile.TarInfo("./bin")
        link.type = tarfile.SYMTYPE
        link.linkname = "usr/bin"
        tar.addfile(link)
        data = b"#!/bin/sh\n"
        sh = tarfile.TarInfo("./usr/bin/bash")
        sh.size = len(data)
        tar.addfile(sh, io.BytesIO(data))
    return path


def _layers(archive: Path) -> list[list[str]]:
    with tarfile.open(archive) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        out = []
        for layer in manifest[0]["Layers"]:
            with tarfile.open(fileobj=io.BytesIO(tar.extractfile(layer).read())) as inner:  # type: ignore[union-attr]
                out.append([m.name for m in inner.getmembers()])
        return out


def test_file_under_a_symlinked_directory_does_not_hide_the_link(tmp_path: Path) -> None:
    """/bin/calico-node over Debian's bin -> usr/bin must land in usr/bin: a bin/ directory in the
    upper layer would hide /bin/bash (found when calico-node's start script could not exec)."""
    binary = tmp_path / "calico-node"
    binary.write_bytes(b"\x7fELF")
    spec = images.ImageSpec(
        name="quay.io/calico/node:v3.31.0",
        files={"/bin/calico-node": binary},
        userland=True,
        scripts={"/usr/local/bin/start": "#!/bin/bash\n"},
        entrypoint=("/usr/local/bin/start",),
    )
    out = tmp_path / "node.tar"
    images.write_archive(spec, out, _userland(tmp_path / "userland.tar"))
    base, own = _layers(out)
    assert "./bin" in base
    assert "usr/bin/calico-node" in own and "bin" not in own and "bin/calico-node" not in own
    assert images.archive_tags(out) == ["quay.io/calico/node:v3.31.0"]


def test_static_image_has_base_files_and_entrypoint(tmp_path: Path) -> None:
    binary = tmp_path / "pause"
    binary.write_bytes(b"\x7fELF")
    spec = images.ImageSpec(name="registry.k8s.io/pause:3.10.2", files={"/pause": binary}, entrypoint=("/pause",))
    out = tmp_path / "pause.tar"
    images.write_archive(spec, out, None)
    (own,) = _layers(out)
    assert {"pause", "etc/passwd", "tmp"} <= set(own)
    with tarfile.open(out) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        config = json.loads(tar.extractfile(manifest[0]["Config"]).read())  # type: ignore[union-attr]
    assert config["config"]["Entrypoint"] == ["/pause"]
    assert config["rootfs"]["diff_ids"][0].startswith("sha256:")


def test_two_builds_of_the_same_inputs_are_identical(tmp_path: Path) -> None:
    binary = tmp_path / "etcd"
    binary.write_bytes(b"\x7fELF etcd")
    spec = images.ImageSpec(name="registry.k8s.io/etcd:3.7.0-0", files={"/usr/local/bin/etcd": binary})
    first, second = tmp_path / "a.tar", tmp_path / "b.tar"
    images.write_archive(spec, first, None)
    images.write_archive(spec, second, None)
    assert first.read_bytes() == second.read_bytes()


def test_owned_directory_and_user(tmp_path: Path) -> None:
    binary = tmp_path / "kube-controllers"
    binary.write_bytes(b"\x7fELF")
    spec = images.ImageSpec(
        name="quay.io/calico/kube-controllers:v3.31.0",
        files={"/usr/bin/kube-controllers": binary},
        user="999",
        dirs={"/status": 999},
    )
    out = tmp_path / "kc.tar"
    images.write_archive(spec, out, None)
    with tarfile.open(out) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        config = json.loads(tar.extractfile(manifest[0]["Config"]).read())  # type: ignore[union-attr]
        layer = tar.extractfile(manifest[0]["Layers"][0]).read()  # type: ignore[union-attr]
    assert config["config"]["User"] == "999"
    with tarfile.open(fileobj=io.BytesIO(layer)) as inner:
        status = inner.getmember("status")
    assert status.isdir() and status.uid == 999
