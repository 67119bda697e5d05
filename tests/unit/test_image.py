"""The docker provider's node images: recipe hashes, the runtime-baked variant, and which names are ours."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner import image
from provisioner.cli import _overrides, build_parser
from provisioner.preflight import resolve_spec
from provisioner.workspace import Workspace


def test_plain_and_runtime_images_have_their_own_repository_and_hash() -> None:
    plain = image.ImageRecipe()
    baked = image.ImageRecipe(with_runtime=True)
    assert plain.tag.startswith("provisioner/node:bookworm-")
    assert baked.tag.startswith("provisioner/node-runtime:bookworm-")
    assert plain.digest() != baked.digest()
    assert plain.all_packages == image.PACKAGES
    assert set(baked.all_packages) - set(image.PACKAGES) == set(image.RUNTIME_PACKAGES)


def test_the_mirror_does_not_change_the_tag() -> None:
    assert image.ImageRecipe(mirror="http://a.example/debian").tag == image.ImageRecipe().tag


def test_the_baked_runtime_is_what_the_role_installs_from_the_distribution() -> None:
    import yaml

    role = Path(__file__).resolve().parents[2] / "roles" / "container_runtime" / "vars" / "Debian.yml"
    distro = yaml.safe_load(role.read_text())["container_runtime_os_packages"]["distro"]
    for engine in ("docker", "containerd"):
        missing = set(distro[engine]) - set(image.RUNTIME_PACKAGES)
        assert not missing, f"the runtime image lacks {missing}: the runtime stage would still run apt"


@pytest.mark.parametrize(
    ("name", "ours"),
    [
        ("", False),
        ("provisioner/node", False),
        ("provisioner/node:bookworm-0123456789ab", False),
        ("provisioner/node-runtime", True),
        ("provisioner/node-runtime:bookworm-0123456789ab", True),
        ("debian:12", None),
        ("registry.example:5000/provisioner/node", None),
        ("provisioner/node-other", None),
    ],
)
def test_own_image_names(name: str, ours: bool | None) -> None:
    assert image.own_image(name) is ours


def test_image_flag_reaches_the_spec_and_is_kept_on_reruns(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    parse = build_parser().parse_args
    spec, inputs = resolve_spec(ws, _overrides(parse(["up", "--image", "provisioner/node-runtime"])), None)
    assert spec.image == "provisioner/node-runtime"
    ws.save_spec(spec, inputs)
    again, _ = resolve_spec(ws, _overrides(parse(["up"])), None)
    assert again.image == "provisioner/node-runtime"


def test_image_build_accepts_with_runtime() -> None:
    args = build_parser().parse_args(["image", "build", "--with-runtime"])
    assert args.with_runtime is True and args.force is False
