"""`provision.py image build` and `box build`: the docker provider's node image and the VM box."""

from __future__ import annotations

import sys
from typing import TextIO

from provisioner import box, bundle, image, kubeimage, providers
from provisioner.errors import ProvisionError
from provisioner.progress import Progress


def box_build(provider: str, with_runtime: bool, force: bool, out: TextIO = sys.stdout) -> int:
    """Build the VM box from Debian packages (libvirt provider) and add it to Vagrant."""
    if provider != "libvirt":
        raise ProvisionError(f"box build supports --provider libvirt only, not {provider}", exit_code=2)
    recipe = box.BoxRecipe(mirror=image.host_debian_mirror(), with_runtime=with_runtime)
    if box.box_present(recipe) and not force:
        out.write(f"{recipe.name} {recipe.version} is present (recipe unchanged); --force rebuilds it\n")
        return 0
    progress = Progress(out)
    progress.start(f"box {recipe.name} {recipe.version}")
    box.ensure_box(recipe, force=True)
    progress.stop("built and added to Vagrant")
    return 0


def image_build(force: bool, with_runtime: bool = False, out: TextIO = sys.stdout) -> int:
    providers.choose("docker")
    recipe = image.ImageRecipe(mirror=image.host_debian_mirror(), with_runtime=with_runtime)
    progress = Progress(out)
    if image.image_exists(recipe.tag) and not force:
        out.write(f"{recipe.tag} is present (recipe unchanged); --force rebuilds it\n")
        return 0
    progress.start(f"node image {recipe.tag}")
    image.ensure_image(recipe, force=True)
    progress.stop("built")
    return 0


def kube_image_build(force: bool, out: TextIO = sys.stdout) -> int:
    """The Kubernetes node image for the default bundle (what `up` uses on the docker provider)."""
    found = bundle.find(bundle.resolve_versions(None, None))
    if found is None:
        raise ProvisionError(
            "the Kubernetes node image is made from the bundle, which is not built; run `provision.py bundle build` first",
            exit_code=2,
        )
    image_build(False, with_runtime=True, out=out)
    base = image.ImageRecipe(mirror=image.host_debian_mirror(), with_runtime=True).tag
    tag = kubeimage.image_tag(base, found.path)
    if image.image_exists(tag) and not force:
        out.write(f"{tag} is present (runtime image, bundle and recipe unchanged); --force rebuilds it\n")
        return 0
    progress = Progress(out)
    progress.start(f"Kubernetes node image {tag} (the bundle preloaded)")
    kubeimage.build(base, found.path, tag, force=force)
    progress.stop("built")
    return 0
