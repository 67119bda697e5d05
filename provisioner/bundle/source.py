"""The `source` builder: the bundle built here from Go modules with the ordinary `go` client.

Each build in bundle/components.yaml is a Go module of the project's own under bundle/ (its go.mod and
go.sum pin the upstream modules). Binaries are built with upstream's release flags (static, -trimpath,
the version stamped in), kept in a cache keyed by everything that goes into them, so an interrupted or
repeated build only compiles what changed (Go's own build cache makes the rest fast). Images are then
assembled from those binaries (provisioner.bundle.images) under exactly the names the built kubeadm
(`kubeadm config images list`) and the Calico manifest ask for.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from provisioner import REPO_ROOT, proc
from provisioner.bundle import Bundle, Versions, add_file, cache_root, download
from provisioner.bundle import images as img
from provisioner.errors import ProvisionError, ToolMissing

log = logging.getLogger(__name__)

BUNDLE_SRC = REPO_ROOT / "bundle"
COMPONENTS = BUNDLE_SRC / "components.yaml"
MIN_GO = (1, 26)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Trim:
    """A module copied from Go's module cache into a build's work directory, where its build's
    go.mod replaces it (`into`): without the paths `drop`, with the files under bundle/<dir>/<overlay>
    over it (components.yaml, builds.<name>.trim)."""

    module: str
    version: str
    into: str
    drop: tuple[str, ...]
    overlay: str


@dataclass(frozen=True)
class GoBuild:
    name: str
    dir: Path
    version_module: str
    tags: tuple[str, ...]
    ldflags: tuple[str, ...]
    packages: dict[str, str]  # output name -> package path
    cgo: bool = False
    trim: tuple[Trim, ...] = ()
    optional: bool = False  # the ingress add-on's: built only into a bundle with ingress


def load_components(path: Path = COMPONENTS) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data


def kubernetes_releases(data: dict[str, Any]) -> dict[str, str]:
    """Release -> the module directory under bundle/ that pins it (components.yaml)."""
    return {str(k): str(v) for k, v in (data.get("kubernetes_releases") or {}).items()}


def go_builds(data: dict[str, Any], kubernetes: str = "") -> list[GoBuild]:
    """The Go builds of the bundle; the `kubernetes` build from the module directory of `kubernetes`
    (components.yaml kubernetes_releases) when one is named."""
    releases = kubernetes_releases(data)
    return [
        GoBuild(
            name=name,
            dir=BUNDLE_SRC / (releases[kubernetes] if name == "kubernetes" and kubernetes in releases else b["dir"]),
            version_module=b.get("version_module") or "",
            tags=tuple(b.get("tags") or ()),
            ldflags=tuple(b.get("ldflags") or ()),
            packages=dict(b["packages"]),
            optional=bool(b.get("optional")),
            trim=tuple(
                Trim(
                    module=str(t["module"]),
                    version=str(t["version"]),
                    into=str(t["into"]),
                    drop=tuple(str(d) for d in t.get("drop") or ()),
                    overlay=str(t.get("overlay") or ""),
                )
                for t in b.get("trim") or ()
            ),
        )
        for name, b in data["builds"].items()
    ]


def go_env() -> dict[str, str]:
    """Go with its module and build caches in the stable cache directory, static binaries."""
    go_cache = cache_root() / "go"
    env = dict(os.environ)
    env.update(
        GOMODCACHE=str(go_cache / "mod"),
        GOCACHE=str(go_cache / "build"),
        CGO_ENABLED="0",
        GOFLAGS="-buildvcs=false -mod=readonly",
        GOTOOLCHAIN="local",
    )
    return env


def required_go(src: Path = BUNDLE_SRC) -> tuple[int, ...]:
    """The newest `go` line of the bundle's go.mod files: the Go the builds need (GOTOOLCHAIN=local)."""
    wanted: tuple[int, ...] = MIN_GO
    for mod in sorted(src.glob("*/go.mod")):
        m = re.search(r"^go (\d+(?:\.\d+)*)\s*$", mod.read_text(encoding="utf-8"), re.M)
        if m:
            wanted = max(wanted, tuple(int(x) for x in m.group(1).split(".")))
    return wanted


def check_go() -> str:
    """The Go version string; ToolMissing when go is absent or older than the modules need."""
    need = ".".join(str(x) for x in required_go())
    if shutil.which("go") is None:
        raise ToolMissing(
            f"Go {need} or newer", "run scripts/setup.sh, which fetches the Go toolchain module when it is missing"
        )
    out = proc.run(["go", "env", "GOVERSION"], env=go_env(), what="go env").stdout.strip()
    m = re.match(r"go(\d+(?:\.\d+)*)", out)
    have = tuple(int(x) for x in m.group(1).split(".")) if m else ()
    if not have or have < required_go():
        raise ToolMissing(f"Go {need} or newer", f"this machine has {out or 'an unknown Go'}; run scripts/setup.sh")
    return out


def module_info(build: GoBuild, workdir: Path | None = None) -> tuple[str, str]:
    """(version, commit time) of the build's pinned upstream module, as the module proxy reports it."""
    if not build.version_module:
        return "", "1970-01-01T00:00:00Z"
    res = proc.run(
        ["go", "list", "-m", "-json", build.version_module],
        env=go_env(),
        cwd=workdir or build.dir,
        timeout=600,
        what=f"go list -m {build.version_module} (module proxy)",
    )
    info = json.loads(res.stdout)
    return str(info["Version"]), str(info.get("Time") or "1970-01-01T00:00:00Z")


def render(template: str, versions: Versions, module_version: str, module_time: str) -> str:
    major, minor = versions.kubernetes.split(".")[:2]
    return template.format(
        kubernetes=versions.kubernetes,
        kube_tag=versions.kube_tag,
        calico=versions.calico,
        module_version=module_version,
        module_time=module_time,
        major=major,
        minor=minor,
    )


def build_inputs_digest(build: GoBuild, ldflags: str) -> str:
    """Everything that goes into a build's binaries: its module files, own sources, flags, trimmed
    modules, Go version."""
    digest = hashlib.sha256()
    for path in sorted(p for p in build.dir.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(build.dir)).encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(json.dumps([build.tags, ldflags, sorted(build.packages.items())]).encode())
    digest.update(json.dumps([[t.module, t.version, t.into, t.drop, t.overlay] for t in build.trim]).encode())
    digest.update(
        subprocess.run(["go", "version"], capture_output=True, text=True, check=False, env=go_env()).stdout.encode()
    )
    return digest.hexdigest()[:16]


def _dropping(dropped: set[Path]) -> Callable[[str, list[str]], list[str]]:
    """copytree's ignore: the entries whose paths are in `dropped`."""
    return lambda d, names: [n for n in names if Path(d) / n in dropped]


def _remove_tree(path: Path) -> None:
    """Remove a work directory, the read-only directories copied from Go's module cache included."""
    if not path.exists():
        return
    for root, dirs, _ in os.walk(path):
        for name in dirs:
            (Path(root) / name).chmod(0o755)
    shutil.rmtree(path)


def prepare_workdir(build: GoBuild) -> Path:
    """The directory a build runs in: its module directory under bundle/, or, for a build with
    trimmed modules, a copy of it in the cache with each trimmed module beside it (made again every
    time, so a changed recipe never meets an old copy)."""
    if not build.trim:
        return build.dir
    work = cache_root() / "src" / build.name
    _remove_tree(work)
    shutil.copytree(build.dir, work)
    for t in build.trim:
        res = proc.run(
            ["go", "mod", "download", "-json", f"{t.module}@{t.version}"],
            env=go_env(),
            cwd=work,
            timeout=600,
            check=False,
            what=f"go mod download {t.module}@{t.version} (module proxy)",
        )
        info = json.loads(res.stdout or "{}")
        if res.returncode != 0 or not info.get("Dir"):
            raise ProvisionError(
                f"module {t.module}@{t.version}, which the {build.name} build trims, could not be had from the "
                f"module proxy ({info.get('Error') or res.stderr.strip()}); check GOPROXY and rerun"
            )
        src = Path(info["Dir"])
        dest = work / t.into
        shutil.copytree(src, dest, ignore=_dropping({src / d for d in t.drop}))
        for path in [dest, *dest.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)  # the module cache is read-only
        if t.overlay:
            shutil.copytree(build.dir / t.overlay, dest, dirs_exist_ok=True)
        shutil.rmtree(work / t.overlay, ignore_errors=True)
    return work


def release_ldflags(build: GoBuild, versions: Versions, module_version: str, module_time: str) -> str:
    """The link flags of a release build: no build id, stripped, the build's version stamps."""
    stamps = (render(f, versions, module_version, module_time) for f in build.ldflags)
    return " ".join(["-buildid=", "-s", "-w", *stamps])


def compile_progress(label: str, on_progress: Progress) -> Callable[[str], None]:
    """A line handler for `go build -v` output: each package it names is reported, with the count so
    far and the time since the handler was made."""
    started = time.monotonic()
    count = 0

    def seen(line: str) -> None:
        nonlocal count
        if line and not line.startswith(("#", "go: ")) and " " not in line:
            count += 1
            on_progress(f"{label}: compiling {line} ({count} packages, {time.monotonic() - started:.0f}s)")

    return seen


def build_binaries(
    build: GoBuild, versions: Versions, log_file: Path, on_progress: Progress, label: str
) -> tuple[Path, str]:
    """Build (or take from the binary cache) every package of one Go build. Returns the output
    directory and the upstream module version."""
    with _workdir_lock(build):
        return _build_binaries(build, prepare_workdir(build), versions, log_file, on_progress, label)


@contextlib.contextmanager
def _workdir_lock(build: GoBuild) -> Iterator[None]:
    """One build at a time in a build's work directory in the cache (two bundles built at once share it)."""
    if not build.trim:
        yield
        return
    (cache_root() / "src").mkdir(parents=True, exist_ok=True)
    with (cache_root() / "src" / f".{build.name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _build_binaries(
    build: GoBuild, workdir: Path, versions: Versions, log_file: Path, on_progress: Progress, label: str
) -> tuple[Path, str]:
    module_version, module_time = module_info(build, workdir)
    ldflags = release_ldflags(build, versions, module_version, module_time)
    key = build_inputs_digest(build, ldflags)
    out = cache_root() / "binaries" / f"{build.name}-{key}"
    if (out / ".complete").is_file() and all((out / n).is_file() for n in build.packages):
        on_progress(f"{label}: binaries cached ({out})")
        return out, module_version
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    cmd = ["go", "build", "-v", "-p", str(os.cpu_count() or 2), "-trimpath"]
    if build.tags:
        cmd += ["-tags", ",".join(build.tags)]
    cmd += ["-ldflags", ldflags, "-o", str(partial) + "/", *build.packages.values()]
    rc = proc.stream(cmd, env=go_env(), cwd=workdir, log_file=log_file, on_line=compile_progress(label, on_progress))
    if rc != 0:
        raise ProvisionError(
            f"go build of {build.name} failed (exit {rc}); the bundle was not changed and a rerun resumes from Go's build cache",
            log_path=str(log_file),
        )
    # go build -o DIR names each binary after its package's last element; rename to the wanted names.
    for name, pkg in build.packages.items():
        built = partial / pkg.rstrip("/").rsplit("/", 1)[-1]
        if pkg.rsplit("/", 1)[-1] in ("v3", "v2") and not built.exists():
            built = partial / pkg.rstrip("/").rsplit("/", 2)[-2]
        if built.exists() and built.name != name:
            built.rename(partial / name)
        if not (partial / name).is_file():
            raise ProvisionError(
                f"go build of {build.name} did not produce {name}; see the build log", log_path=str(log_file)
            )
    (partial / ".complete").write_text(module_version + "\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out, module_version


def check_version(binary: Path, args: list[str], want: str) -> str:
    out = proc.run([str(binary), *args], what=f"{binary.name} {' '.join(args)}").stdout.strip()
    if want not in out:
        raise ProvisionError(f"{binary.name} reports {out!r}, not {want}; the version stamping of the build is wrong")
    return out


def _image_key(name: str) -> str:
    """The key of an image in components.yaml: its repository's last path element (kube-apiserver,
    coredns, pause, node, cni ...)."""
    repo = name.rsplit("@", 1)[0]
    if ":" in repo.rsplit("/", 1)[-1]:
        repo = repo.rsplit(":", 1)[0]
    return repo.rsplit("/", 1)[-1]


def image_specs(
    data: dict[str, Any], names: list[str], outputs: dict[str, Path], versions: Versions
) -> list[img.ImageSpec]:
    """One ImageSpec per wanted image name, its files taken from the builds' outputs
    ("build/binary" in components.yaml)."""
    recipes: dict[str, Any] = data["images"]
    specs = []
    for name in names:
        key = _image_key(name)
        if key not in recipes:
            raise ProvisionError(
                f"the bundle has no recipe for image {name} (key {key!r} in bundle/components.yaml); "
                f"kubeadm or the Calico manifest asks for an image this toolkit does not build yet"
            )
        recipe = recipes[key]
        files = {}
        for dest, ref in (recipe.get("files") or {}).items():
            build_name, binary = ref.split("/", 1)
            files[dest] = outputs[build_name] / binary
        scripts = {
            dest: (BUNDLE_SRC / rel).read_text(encoding="utf-8") for dest, rel in (recipe.get("scripts") or {}).items()
        }
        specs.append(
            img.ImageSpec(
                name=name,
                files=files,
                userland=bool(recipe.get("userland")),
                scripts=scripts,
                entrypoint=tuple(recipe.get("entrypoint") or ()),
                cmd=tuple(recipe.get("cmd") or ()),
                env=tuple(render(e, versions, "", "") for e in recipe.get("env") or ()),
                user=str(recipe.get("user") or ""),
                dirs={str(d): int(uid) for d, uid in (recipe.get("dirs") or {}).items()},
            )
        )
    return specs


def optional_images(data: dict[str, Any]) -> set[str]:
    """The add-on images whose recipe takes a file from an optional build (the ingress add-on's)."""
    optional = {name for name, b in data["builds"].items() if b.get("optional")}
    recipes: dict[str, Any] = data["images"]
    return {
        str(name)
        for key in ("addon_images", "download_addon_images")
        for name in data.get(key) or []
        if any(
            str(ref).split("/", 1)[0] in optional
            for ref in (recipes.get(_image_key(str(name))) or {}).get("files", {}).values()
        )
    }


def addon_images(data: dict[str, Any] | None = None, kind: str = "source", ingress: bool = True) -> list[str]:
    """The add-ons' images a bundle carries: built (components.yaml `addon_images`) in a source
    bundle, saved from their registries (`download_addon_images`) in a download bundle; the ingress
    add-on's only with `ingress`."""
    data = load_components() if data is None else data
    key = "addon_images" if kind == "source" else "download_addon_images"
    skipped = set() if ingress else optional_images(data)
    return [str(name) for name in data.get(key) or [] if str(name) not in skipped]


def has_ingress(bundle: Bundle) -> bool:
    """Whether the bundle carries the ingress add-on (the Gateway API's CRDs, of any version, and
    Traefik's image)."""
    return any(f.component == "gateway-api-crds" for f in bundle.files)


def missing_addon_images(bundle: Bundle, ingress: bool = False) -> list[str]:
    """The add-on images (and, in a source bundle, the host tools such as helm and the binaries such
    as etcdctl) this toolkit's recipe puts in a bundle of `bundle`'s source that it lacks (it was made
    before they were added); the ingress add-on's parts where `ingress` asks for them or the bundle
    has some of them already."""
    ingress = ingress or has_ingress(bundle)
    have = {f.image for f in bundle.images}
    missing = [name for name in addon_images(kind=bundle.source, ingress=ingress) if name not in have]
    if ingress and gateway_api_rel() not in {f.path for f in bundle.files}:
        missing.append(gateway_api_rel())
    if bundle.source == "source":
        files = {f.path for f in bundle.files}
        data = load_components()
        wanted = [f"tools/{name}" for name in data.get("tools") or {}] + [f"bin/{name}" for name in data["bin"]]
        missing += [path for path in wanted if path not in files]
    return missing


def gateway_api_rel(data: dict[str, Any] | None = None) -> str:
    """Where a bundle keeps the Gateway API's standard CRDs (components.yaml gateway_api)."""
    gw = (load_components() if data is None else data)["gateway_api"]
    return f"manifests/gateway-api-{gw['version']}.yaml"


def gateway_api_crds(data: dict[str, Any], builds: list[GoBuild]) -> tuple[str, str]:
    """(the standard channel's CRDs as one YAML stream, where they came from), from the pinned
    gateway-api module, whose version must be the one the ingress build's go.mod requires."""
    gw = data["gateway_api"]
    build = next(b for b in builds if b.name == gw["build"])
    m = re.search(rf"^\s*{re.escape(gw['module'])} (v\S+)", (build.dir / "go.mod").read_text(encoding="utf-8"), re.M)
    if not m or m.group(1) != gw["version"]:
        raise ProvisionError(
            f"bundle/components.yaml pins {gw['module']} {gw['version']} for the Gateway API's CRDs, but "
            f"bundle/{build.dir.name}/go.mod requires {m.group(1) if m else 'no version of it'}; make them agree"
        )
    res = proc.run(
        ["go", "mod", "download", "-json", f"{gw['module']}@{gw['version']}"],
        env=go_env(),
        cwd=build.dir,
        timeout=600,
        what=f"go mod download {gw['module']}@{gw['version']} (module proxy)",
    )
    crd_dir = Path(json.loads(res.stdout)["Dir"]) / str(gw["path"])
    files = sorted(p for p in crd_dir.glob("*.yaml") if p.name != "kustomization.yaml")
    if not files:
        raise ProvisionError(f"module {gw['module']}@{gw['version']} has no CRDs under {gw['path']}")
    text = "".join(
        ("---\n" if not body.lstrip().startswith("---") else "") + body.rstrip("\n") + "\n"
        for body in (p.read_text(encoding="utf-8") for p in files)
    )
    return text, f"{gw['module']}@{gw['version']}/{gw['path']}"


def calico_manifest_source(outputs_versions: dict[str, str], data: dict[str, Any]) -> Path:
    """The Calico manifest inside the pinned Calico module (the module zip carries manifests/)."""
    cal = data["calico_manifest"]
    version = outputs_versions[cal["build"]]
    mod = Path(go_env()["GOMODCACHE"]) / f"{cal['module']}@{version}" / str(cal["path"])
    if not mod.is_file():
        raise ProvisionError(f"the Calico manifest {cal['path']} is not in module {cal['module']}@{version}")
    return mod


def build(
    versions: Versions,
    stage: Bundle,
    on_progress: Progress,
    log_file: Path,
    mirror: str = "",
    ingress: bool = False,
) -> Bundle:
    """Fill the staged bundle from Go modules (the ingress add-on's parts with `ingress`). The caller
    made `stage` with staging_dir() and moves it into place with finish()."""
    check_go()
    data = load_components()
    releases = kubernetes_releases(data)
    if versions.kubernetes not in releases or versions.calico != data.get("calico_version"):
        raise ProvisionError(
            f"bundle/ pins Kubernetes {', '.join(releases)} and Calico {data.get('calico_version')}; a source build "
            f"of {versions.kubernetes}/{versions.calico} needs a module directory with its go.mod under bundle/"
        )
    all_builds = go_builds(data, versions.kubernetes)
    builds = [b for b in all_builds if ingress or not b.optional]
    outputs: dict[str, Path] = {}
    module_versions: dict[str, str] = {}
    steps = len(builds) + 2
    for i, gb in enumerate(builds, 1):
        t0 = time.monotonic()
        label = f"[{i}/{steps}] {gb.name}"
        on_progress(f"{label}: building {', '.join(gb.packages)}")
        outputs[gb.name], module_versions[gb.name] = build_binaries(gb, versions, log_file, on_progress, label)
        stage.timings[gb.name] = time.monotonic() - t0
    kube = outputs["kubernetes"]
    check_version(kube / "kubeadm", ["version", "-o", "short"], versions.kube_tag)
    check_version(kube / "kubelet", ["--version"], versions.kube_tag)

    # bin/: what the nodes install.
    for dest, ref in data["bin"].items():
        build_name, binary = ref.split("/", 1)
        target = stage.path / "bin" / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(outputs[build_name] / binary, target)
        target.chmod(0o755)
        add_file(
            stage, f"bin/{dest}", binary, module_versions[build_name] or versions.kube_tag, f"go build {build_name}"
        )

    # tools/: what this host runs against the cluster (provision.py helm).
    for dest, ref in (data.get("tools") or {}).items():
        build_name, binary = ref.split("/", 1)
        target = stage.path / "tools" / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(outputs[build_name] / binary, target)
        target.chmod(0o755)
        add_file(stage, f"tools/{dest}", binary, module_versions[build_name], f"go build {build_name}")

    # manifests/: the Calico manifest of the pinned release, unchanged (the calico role sets the pod CIDR,
    # the encapsulation and the address autodetection when it applies it).
    src_manifest = calico_manifest_source(module_versions, data)
    rel_manifest = f"manifests/calico-{versions.calico}.yaml"
    shutil.copy2(src_manifest, stage.path / rel_manifest)
    add_file(
        stage,
        rel_manifest,
        "calico-manifest",
        f"v{versions.calico}",
        f"{data['calico_manifest']['module']}/{data['calico_manifest']['path']}",
    )

    # manifests/: the Gateway API's CRDs for the ingress add-on.
    if ingress:
        crds, origin = gateway_api_crds(data, all_builds)
        rel_crds = gateway_api_rel(data)
        (stage.path / rel_crds).write_text(crds, encoding="utf-8")
        add_file(stage, rel_crds, "gateway-api-crds", str(data["gateway_api"]["version"]), origin)

    # images/: the names kubeadm and the manifest ask for, plus the smoke-test image (made the same
    # way for every bundle source: provisioner.bundle.smoke).
    t0 = time.monotonic()
    label = f"[{steps - 1}/{steps}] images"
    manifest_text = (stage.path / rel_manifest).read_text(encoding="utf-8")
    names = download.kubeadm_images(kube / "kubeadm", versions) + download.manifest_images(manifest_text, rel_manifest)
    names += addon_images(data, ingress=ingress)
    specs = image_specs(data, names, outputs, versions)
    userland = None
    if any(s.userland for s in specs):
        on_progress(f"{label}: Debian userland layer (mmdebstrap, cached)")
        userland = img.ensure_userland(cache_root() / "rootfs", mirror)
    for spec in specs:
        fname = f"images/{_image_key(spec.name)}.tar"
        if (stage.path / fname).exists():
            fname = f"images/{spec.name.split('/')[-2]}-{_image_key(spec.name)}.tar"
        on_progress(f"{label}: {spec.name}")
        img.write_archive(spec, stage.path / fname, userland)
        add_file(
            stage,
            fname,
            _image_key(spec.name),
            spec.name.rsplit(":", 1)[-1],
            "assembled from the built binaries",
            image=spec.name,
        )
    from provisioner.bundle import smoke

    on_progress(f"{label}: {smoke.image_name(versions.kubernetes)}")
    smoke.add_to_bundle(stage, log_file, on_progress)
    stage.timings["images"] = time.monotonic() - t0
    return stage
