"""The Kubernetes node image (provisioner/kubeimage.py): its tag follows the runtime image, the bundle's
manifest and the recipe; the docker provider uses it only where the spec leaves the image to the toolkit."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from provisioner import image, kubeimage, machines
from provisioner.errors import ProvisionError
from provisioner.progress import Progress
from provisioner.spec import build_spec

BASE = "provisioner/node-runtime:bookworm-0123456789ab"


def make_bundle(root: Path, name: str = "k8s-1.37.2-calico-3.31.0", sums: dict[str, str] | None = None) -> Path:
    bundle = root / name
    (bundle / "images").mkdir(parents=True)
    files = [{"path": f"images/{n}", "sha256": s, "size": 1, "image": True} for n, s in (sums or {}).items()]
    files.append({"path": "bin/kubeadm", "sha256": "f" * 64, "size": 1})
    (bundle / "manifest.json").write_text(json.dumps({"name": name, "files": files}))
    return bundle


def test_the_tag_names_the_bundle_and_changes_with_its_manifest_and_the_base(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, sums={"pause.tar": "a" * 64})
    tag = kubeimage.image_tag(BASE, bundle)
    assert tag.startswith("provisioner/node-kube:k8s-1.37.2-calico-3.31.0-")
    assert kubeimage.image_tag(BASE, bundle) == tag  # stable
    assert kubeimage.image_tag(BASE.replace("0123", "9999"), bundle) != tag
    data = json.loads((bundle / "manifest.json").read_text())
    data["files"][0]["sha256"] = "b" * 64  # a rebuilt image tarball
    (bundle / "manifest.json").write_text(json.dumps(data))
    assert kubeimage.image_tag(BASE, bundle) != tag


def test_manifest_sums_are_the_image_tarballs_only(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, sums={"pause.tar": "a" * 64, "node.tar": "c" * 64})
    assert kubeimage.manifest_sums(bundle) == {"pause.tar": "a" * 64, "node.tar": "c" * 64}


def test_a_bundle_without_a_manifest_is_refused_with_the_way_out(tmp_path: Path) -> None:
    with pytest.raises(ProvisionError, match="bundle build --force"):
        kubeimage.manifest_sums(tmp_path)


@pytest.mark.parametrize(
    ("name", "kube", "own"),
    [
        ("provisioner/node-kube:k8s-1.37.2-calico-3.31.0-abc", True, True),
        ("provisioner/node-kube", True, True),
        ("provisioner/node-runtime:bookworm-x", False, True),
        ("provisioner/node", False, False),
        ("registry.example:5000/provisioner/node-kube:x", False, None),
        ("debian:12", False, None),
    ],
)
def test_which_images_are_the_kubernetes_node_image(name: str, kube: bool, own: bool | None) -> None:
    assert kubeimage.is_kube_image(name) is kube
    assert image.own_image(name) is own


def preload(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, inputs: dict[str, Any], **spec: Any) -> str:
    """The image Docker.preload picks (no image is built: the tag is taken as present)."""
    monkeypatch.setattr(image, "image_exists", lambda tag: True)
    built: list[str] = []

    def ensure(base: str, bundle: Path) -> tuple[str, bool]:
        built.append(base)
        return "x", True

    monkeypatch.setattr(kubeimage, "ensure_kube_image", ensure)
    bundle = make_bundle(tmp_path)
    s = build_spec({"image": BASE, **spec})
    out = machines.Docker().preload(s, inputs, bundle, Progress(io.StringIO()), {})
    assert not built
    return out.image


def test_kubernetes_nodes_start_from_the_kubernetes_node_image_by_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert preload(monkeypatch, tmp_path, {}).startswith("provisioner/node-kube:k8s-1.37.2-calico-3.31.0-")


def test_a_named_image_and_the_swarm_engine_keep_their_image(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert preload(monkeypatch, tmp_path, {"image": "provisioner/node-runtime"}) == BASE
    assert preload(monkeypatch, tmp_path / "s", {}, engine="swarm") == BASE
