"""The Kubernetes node image: the runtime image with a bundle's binaries and images already in it.

kind's way, for the docker provider: a node made from this image starts with what the kube_packages
role would otherwise copy and import on every node (a gigabyte of image tarballs read and unpacked
three times over for three nodes). The image is the role's result written ahead of time, in the places
the role looks: the binaries in /usr/local/bin, /opt/cni/bin and the role's cache; the images in
containerd's content store (k8s.io namespace) with the role's import markers beside them. So the
kube_packages stage still runs and checks every file and image, and finds nothing to do.

The images are imported without unpacking (containerd unpacks an image into its snapshotter the first
time a container of it is created): the snapshots of overlayfs cannot be carried in an image layer,
and a node unpacks only the images it runs. The image's /var becomes each node's /var volume when
the node is created (Docker copies it), so every node has its own content store.

Tagged by the runtime image, the bundle's manifest and this recipe, so a rebuilt bundle or a changed
recipe builds a new image and an unchanged one is reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from provisioner import REPO_ROOT, hostlock, proc
from provisioner.errors import ProvisionError

log = logging.getLogger(__name__)

IMAGE_REPO_KUBE = "provisioner/node-kube"
# containerd's content store in the image, outside /var (see PRELOAD).
CONTENT = "/opt/provisioner/containerd-content"
# The kube_packages task file whose import markers PRELOAD writes (its format is part of the recipe).
ROLE_IMAGES = REPO_ROOT / "roles" / "kube_packages" / "tasks" / "0040-images.yml"
# Where the bundle is mounted in the build container.
BUILD_BUNDLE = "/opt/provisioner/bundle"
# What kubeadm's preflight and the roles need on a node beyond the runtime image (the kube_packages
# role's kube_packages_binary_prerequisites, and openssl for kube_join's CA hash).
KUBE_PACKAGES = ("conntrack", "ethtool", "socat", "iptables", "openssl")
# The kube_packages role's cache on the node (its kube_packages_offline_cache default).
ROLE_CACHE = "/var/cache/kube-packages"

# Run as root in a container of the runtime image with the bundle at $BUNDLE; the image sums come
# on stdin as "<sha256> <tarball name>" lines (from the bundle's manifest).
PRELOAD = r"""
set -eu
bundle="$BUNDLE"
cache="$ROLE_CACHE"
sums="$(cat)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends $KUBE_PACKAGES >/dev/null
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
install -d -m 0755 "$cache" "$cache/images" /opt/cni/bin
# The binaries, where the kube_packages role installs them from a bundle mounted on the node (same
# content: its copies find them in place).
for f in "$bundle"/bin/*; do
  [ -f "$f" ] || continue
  install -m 0755 "$f" "/usr/local/bin/$(basename "$f")"
done
for f in "$bundle"/bin/cni/*; do
  [ -f "$f" ] || continue
  install -m 0755 "$f" "/opt/cni/bin/$(basename "$f")"
done
# The images: content only, into containerd's k8s.io namespace, by a containerd of our own (the
# node's starts at boot with the runtime role's configuration). The content store lives outside /var
# (each node's /var is a volume that Docker fills with a copy of the image's /var when the node is
# created): the blobs stay in the image's layer, shared by every node, and /var holds a link to them.
install -d -m 0711 /var/lib/containerd "$CONTENT"
ln -sfn "$CONTENT" /var/lib/containerd/io.containerd.content.v1.content
run=/run/provisioner-preload
install -d "$run"
printf 'version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n' > "$run/config.toml"
containerd --config "$run/config.toml" --address "$run/sock" --state "$run/state" \
  --root /var/lib/containerd >"$run/containerd.log" 2>&1 &
pid=$!
for _ in $(seq 300); do [ -S "$run/sock" ] && break; sleep 0.1; done
[ -S "$run/sock" ] || { cat "$run/containerd.log" >&2; exit 1; }
for t in "$bundle"/images/*.tar; do
  [ -f "$t" ] || continue
  name="$(basename "$t")"
  sum="$(printf '%s\n' "$sums" | awk -v n="$name" '$2 == n {print $1}')"
  [ -n "$sum" ] || sum="$(sha256sum "$t" | cut -d' ' -f1)"
  ctr --address "$run/sock" -n k8s.io images import --no-unpack "$t" >/dev/null
  echo "$sum" > "$cache/images/$name.imported"
  echo "imported $name"
done
kill -TERM "$pid"
wait "$pid" || true
rm -rf "$run"
"""


def manifest_sums(bundle: Path) -> dict[str, str]:
    """Tarball name -> sha256, for the bundle's images (from its manifest)."""
    try:
        data = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ProvisionError(
            f"the bundle {bundle} has no readable manifest.json ({exc}); rebuild it with `provision.py bundle build --force`"
        ) from exc
    return {
        Path(f["path"]).name: str(f["sha256"])
        for f in data.get("files", [])
        if str(f.get("path", "")).startswith("images/") and f.get("sha256")
    }


def image_tag(base: str, bundle: Path) -> str:
    """The node image's tag for a runtime image `base` and a bundle."""
    blob = json.dumps(
        {
            "base": base,
            # The runtime image's content (a rebuild under the same name makes a new one), the role's
            # cache and the task file whose markers the image writes.
            "base_id": _image_id(base),
            "role_cache": ROLE_CACHE,
            "role_images": hashlib.sha256(ROLE_IMAGES.read_bytes()).hexdigest() if ROLE_IMAGES.exists() else "",
            "manifest": hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest(),
            "packages": KUBE_PACKAGES,
            "preload": PRELOAD,
            "content": CONTENT,
        },
        sort_keys=True,
    )
    return f"{IMAGE_REPO_KUBE}:{bundle.name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def is_kube_image(name: str) -> bool:
    """Whether `name` is a node image of this module's (any tag)."""
    repo = name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name  # without the tag
    return repo == IMAGE_REPO_KUBE


def ensure_kube_image(base: str, bundle: Path) -> tuple[str, bool]:
    """The node image for `bundle` on top of the runtime image `base`, built when missing; returns
    its tag and whether it was built now. One build at a time on this host."""
    tag = image_tag(base, bundle)
    if _exists(tag):
        return tag, False
    build(base, bundle, tag)
    return tag, True


def build(base: str, bundle: Path, tag: str, *, force: bool = False) -> None:
    """Build `tag`: a container of `base` with the bundle mounted runs PRELOAD, and is committed. One
    build at a time on this host (a second one waits, then finds the image there)."""
    with hostlock.held("provisioner-kube-image"):
        if not force and _exists(tag):
            return
        _build(base, bundle, tag)


def _build(base: str, bundle: Path, tag: str) -> None:
    sums = manifest_sums(bundle)
    name = "provisioner-kube-image-" + tag.rsplit("-", 1)[-1]
    proc.run(["docker", "rm", "-f", name], check=False)
    log.info("building the Kubernetes node image %s from %s and %s", tag, base, bundle.name)
    try:
        proc.run(
            [
                "docker", "run", "-d", "--name", name,
                "-v", f"{bundle}:{BUILD_BUNDLE}:ro",
                "--label", "org.provisioner.build=kube-image",
                base, "sleep", "infinity",
            ],
            what="docker run (Kubernetes node image build)",
        )  # fmt: skip
        proc.run(
            [
                "docker", "exec", "-i",
                "-e", f"BUNDLE={BUILD_BUNDLE}", "-e", f"ROLE_CACHE={ROLE_CACHE}", "-e", f"CONTENT={CONTENT}",
                "-e", f"KUBE_PACKAGES={' '.join(KUBE_PACKAGES)}",
                name, "bash", "-c", PRELOAD,
            ],
            input_text="".join(f"{s} {n}\n" for n, s in sorted(sums.items())),
            timeout=1200,
            what="preloading the bundle into the Kubernetes node image",
        )  # fmt: skip
        proc.run(["docker", "stop", "-t", "5", name], what="docker stop (Kubernetes node image build)")
        proc.run(
            [
                "docker", "commit",
                "--change", 'CMD ["/usr/local/sbin/node-init"]',
                "--change", f"LABEL org.provisioner.kube-bundle={bundle.name}",
                "--change", "LABEL org.provisioner.build=",
                name, tag,
            ],
            timeout=900,
            what="docker commit (Kubernetes node image)",
        )  # fmt: skip
    finally:
        proc.run(["docker", "rm", "-f", name], check=False)
    log.info("Kubernetes node image %s built", tag)


def _image_id(name: str) -> str:
    """Docker's id of the image `name` ("" where it or docker is missing)."""
    if shutil.which("docker") is None:
        return ""
    return proc.run(["docker", "image", "inspect", "-f", "{{.Id}}", name], check=False).stdout.strip()


def _exists(tag: str) -> bool:
    return proc.run(["docker", "image", "inspect", tag], check=False).returncode == 0
