"""Container images assembled from built binaries, written as docker-archive tarballs (the format
`docker save` writes and `ctr images import` reads) without a Docker daemon.

An image is one or two layers: an optional Debian userland (for components that run iptables,
ipset or ip, such as kube-proxy and calico-node) built from Debian's packages with mmdebstrap and
cached by its recipe, and a layer of the component's own files. Archives are reproducible: fixed
modification times, sorted members, owner root, so two builds of the same inputs compare equal.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import platform
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from provisioner import proc
from provisioner.errors import ProvisionError

log = logging.getLogger(__name__)

# The fixed modification time of every file the toolkit writes into an image layer.
EPOCH = 0
# platform.machine() -> the architecture name images carry (Go's names).
GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Debian packages of the userland layer: what kube-proxy (iptables mode) and calico-node's felix
# exec (iptables/ip6tables with both backends, ipset, ip, conntrack), and the shell the toolkit's
# calico-node start script runs in.
USERLAND_PACKAGES = ("iptables", "ipset", "iproute2", "conntrack", "kmod", "procps", "ca-certificates", "netbase")

# Files every image gets, so that programs that look up users or write temporary files work.
BASE_FILES: dict[str, tuple[bytes, int]] = {
    "etc/passwd": (
        b"root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n",
        0o644,
    ),
    "etc/group": (b"root:x:0:\nnogroup:x:65534:\n", 0o644),
    "etc/nsswitch.conf": (b"hosts: files dns\n", 0o644),
}
BASE_DIRS = ("etc", "tmp", "var", "var/run", "run")


@dataclass(frozen=True)
class ImageSpec:
    name: str  # full reference, e.g. registry.k8s.io/kube-apiserver:v1.37.2
    files: Mapping[str, Path]  # absolute path in the image -> file on the host
    userland: bool = False
    scripts: Mapping[str, str] = field(default_factory=dict)  # absolute path -> text (mode 0755)
    entrypoint: Sequence[str] = ()
    cmd: Sequence[str] = ()
    env: Sequence[str] = ()
    user: str = ""  # the image's default user, e.g. "999" (empty: root)
    dirs: Mapping[str, int] = field(default_factory=dict)  # absolute path -> owner uid (and gid), mode 0755
    links: Mapping[str, str] = field(default_factory=dict)  # absolute path -> symlink target
    modes: Mapping[str, int] = field(default_factory=dict)  # absolute path of a file -> its mode (else 0755)
    # An image whose layers this one's own layer goes on top of (its userland included); its config
    # (entrypoint, environment, user) is not inherited. Only write_archives knows it.
    over: ImageSpec | None = None


def userland_recipe_digest(
    mirror: str, suite: str = "bookworm", packages: Sequence[str] = USERLAND_PACKAGES, hook: str = ""
) -> str:
    recipe: dict[str, object] = {"suite": suite, "packages": tuple(packages), "v": 2}
    if hook:
        recipe["hook"] = hook
    blob = json.dumps(recipe, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def ensure_userland(
    cache: Path,
    mirror: str,
    suite: str = "bookworm",
    packages: Sequence[str] = USERLAND_PACKAGES,
    name: str = "userland",
    hook: str = "",
) -> Path:
    """A userland layer tarball of Debian `packages` (built with mmdebstrap when missing; about 30 s for
    the components' userland). `hook`: shell run with the root as $root after the packages (users the
    images need, for example); it is run inside single quotes, so it holds none."""
    if "'" in hook:
        raise ProvisionError(f"the {name} layer's hook holds a single quote, which its shell quoting cannot carry")
    target = cache / f"{name}-{suite}-{userland_recipe_digest(mirror, suite, packages, hook)}.tar"
    if target.is_file():
        return target
    proc.require_tool("mmdebstrap")
    cache.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial.tar")
    customize = (
        'set -e; root="$1"; '
        # felix and kube-proxy pick their iptables backend themselves; keep Debian's default (nft).
        'rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* '
        '"$root"/usr/share/man/* "$root"/usr/share/locale/* "$root"/var/log/*' + (f"; {hook}" if hook else "")
    )
    cmd = [
        "mmdebstrap",
        "--variant=minbase",
        "--include=" + ",".join(packages),
        "--customize-hook=" + f"sh -c '{customize}' sh \"$1\"",
        suite,
        str(partial),
    ]
    if mirror:
        cmd.append(mirror)
    env = dict(os.environ, SOURCE_DATE_EPOCH="0")
    proc.run(cmd, env=env, timeout=900, what=f"mmdebstrap (image {name})")
    partial.rename(target)
    return target


def _add_member(
    tar: tarfile.TarFile, name: str, data: bytes | None, mode: int, kind: bytes = tarfile.REGTYPE, owner: int = 0
) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = EPOCH
    info.uid = info.gid = owner
    info.uname = info.gname = "root" if owner == 0 else ""
    info.mode = mode
    info.type = kind
    if data is not None and kind == tarfile.REGTYPE:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)


def base_links(userland: Path) -> dict[str, str]:
    """Top-level symlinks of the userland layer (Debian's merged /usr: bin -> usr/bin, sbin, lib ...)."""
    links: dict[str, str] = {}
    with tarfile.open(userland) as tar:
        for member in tar:
            name = member.name.removeprefix("./").rstrip("/")
            if member.issym() and "/" not in name:
                links[name] = member.linkname.removeprefix("/").rstrip("/")
    return links


def resolve_path(path: str, links: Mapping[str, str]) -> str:
    """`path` (relative) with a leading symlinked directory of the base layer replaced by its target,
    so that a file for /bin/x lands in usr/bin/x instead of a new bin/ directory hiding the link."""
    head, _, rest = path.partition("/")
    return f"{links[head]}/{rest}" if rest and head in links else path


def files_layer(spec: ImageSpec, out: Path, links: Mapping[str, str] | None = None) -> None:
    """The component's own layer: base files and directories, then its binaries and scripts. Over a
    userland layer, paths through its top-level symlinks are resolved (`links`)."""
    links = links or {}
    entries: dict[str, tuple[bytes | None, int]] = {}
    if not spec.userland:
        for d in BASE_DIRS:
            entries[d] = (None, 0o1777 if d == "tmp" else 0o755)
        entries.update(BASE_FILES)
    for dest, src in spec.files.items():
        entries[resolve_path(dest.lstrip("/"), links)] = (src.read_bytes(), spec.modes.get(dest, 0o755))
    for dest, text in spec.scripts.items():
        entries[resolve_path(dest.lstrip("/"), links)] = (text.encode(), 0o755)
    dirs: set[str] = set()
    for name in entries:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    symlinks = {resolve_path(p.lstrip("/"), links): target for p, target in spec.links.items()}
    for name in symlinks:
        parts = name.split("/")[:-1]
        dirs |= {"/".join(parts[:i]) for i in range(1, len(parts) + 1)}
    owners = {resolve_path(d.lstrip("/"), links): uid for d, uid in spec.dirs.items()}
    dirs |= set(owners)
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(dirs | set(entries) | set(symlinks)):
            data, mode = entries.get(name, (None, 0o755))
            if name in symlinks:
                info = tarfile.TarInfo(name)
                info.mtime, info.uname, info.gname = EPOCH, "root", "root"
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, symlinks[name], 0o777
                tar.addfile(info)
            elif name in entries and data is not None:
                _add_member(tar, name, data, mode)
            else:
                kind_mode = mode if name in entries else 0o755
                _add_member(tar, name, None, kind_mode, tarfile.DIRTYPE, owners.get(name, 0))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_archive(spec: ImageSpec, out: Path, userland: Path | None) -> None:
    """One docker-archive tarball holding `spec` under its full name."""
    write_archives([spec], out, userland)


def write_archives(specs: Sequence[ImageSpec], out: Path, userland: Path | None) -> None:
    """One docker-archive tarball holding every image of `specs` under its full name; a layer they share
    (the userland) is stored once."""
    for spec in specs:
        if spec.userland and userland is None:
            raise ProvisionError(f"image {spec.name} needs the userland layer, which was not built")
    links = base_links(userland) if userland is not None and any(s.userland for s in specs) else None
    with tempfile.TemporaryDirectory(prefix="provision-image-", dir=out.parent) as tmp:
        layer_files: dict[str, Path] = {}
        configs: dict[str, bytes] = {}
        manifest = []
        userland_id = _sha256(userland) if links is not None and userland is not None else ""
        if userland is not None and userland_id:
            layer_files[userland_id] = userland
        own_layers: dict[int, str] = {}

        def own_layer(spec: ImageSpec) -> str:
            """The diff id of the spec's own layer, written once per spec."""
            if id(spec) not in own_layers:
                path = Path(tmp) / f"layer-{len(own_layers)}.tar"
                files_layer(spec, path, links if spec.userland else None)
                own_layers[id(spec)] = digest = _sha256(path)
                layer_files.setdefault(digest, path)
            return own_layers[id(spec)]

        for spec in specs:
            chain = [spec]
            while chain[-1].over is not None:
                chain.append(chain[-1].over)
            if any(s.userland != spec.userland for s in chain):
                raise ProvisionError(f"image {spec.name} and the image it is made over differ in their userland")
            diff_ids = ([userland_id] if spec.userland else []) + [own_layer(s) for s in reversed(chain)]
            env = [f"PATH={BASE_PATH}", *spec.env]
            config = {
                "architecture": GO_ARCH.get(platform.machine(), platform.machine()),
                "os": "linux",
                "created": "1970-01-01T00:00:00Z",
                "config": {
                    "Env": env,
                    "Entrypoint": list(spec.entrypoint) or None,
                    "Cmd": list(spec.cmd) or None,
                    "WorkingDir": "/",
                    **({"User": spec.user} if spec.user else {}),
                },
                "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in diff_ids]},
                "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "provisioner bundle"} for _ in diff_ids],
            }
            config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
            config_id = hashlib.sha256(config_bytes).hexdigest()
            configs[config_id] = config_bytes
            manifest.append(
                {"Config": f"{config_id}.json", "RepoTags": [spec.name], "Layers": [f"{d}/layer.tar" for d in diff_ids]}
            )
        partial = out.with_suffix(".partial")
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            for d, layer in sorted(layer_files.items()):
                _add_member(tar, d, None, 0o755, tarfile.DIRTYPE)
                info = tarfile.TarInfo(f"{d}/layer.tar")
                info.size = layer.stat().st_size
                info.mtime = EPOCH
                info.mode = 0o644
                info.uname = info.gname = "root"
                with layer.open("rb") as fh:
                    tar.addfile(info, fh)
            for config_id, config_bytes in sorted(configs.items()):
                _add_member(tar, f"{config_id}.json", config_bytes, 0o644)
            _add_member(tar, "manifest.json", json.dumps(manifest, separators=(",", ":")).encode(), 0o644)
        partial.rename(out)


def archive_tags(path: Path) -> list[str]:
    """The RepoTags an image archive carries (read back for checks and `bundle list`)."""
    with tarfile.open(path) as tar:
        member = tar.extractfile("manifest.json")
        if member is None:
            return []
        data = json.loads(member.read())
    return [t for entry in data for t in entry.get("RepoTags") or []]
