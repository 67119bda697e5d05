"""The images the [Conformance] tests run, made here under exactly the names the suite asks for.

Which names: `e2e.test --list-images` (the release's test/utils/image/manifest.go). Each image this
module knows how to make is one docker-archive tarball; the rest are reported as not made, so a test
that needs one fails for a reason the summary names. pause and etcd are the bundle's own images,
already on every node under the same names.

How (upstream's images are Alpine or Debian with a few packages; these are Debian bookworm):
- agnhost (both tags the suite names): a userland of Debian packages for the tools its subcommands
  and the tests exec (sh, bash, curl, dig, nc, ip, socat, iperf), agnhost from bundle/conformance,
  the porter's certificate and key, /uploads, the user and group the tests expect (1000 and 50000);
  the previous tag differs only by an environment variable, so the two are different images;
- busybox: Debian's static busybox with a link for each of its applets, and Debian's static bash as
  /bin/sh: busybox's ash (as dash) drops environment variables whose names are not shell names
  (`data-1`) from what it passes on, and the tests that read a Secret or ConfigMap into such
  variables run `sh -c env`; bash passes them on, as upstream's busybox sh does;
- nginx (both tags): the userland's nginx in the foreground;
- glibc-dns-testing: the userland (dig);
- nautilus and kitten: agnhost's test-webserver over the module's html files;
- nonroot: the userland, user 1234;
- nonewprivs: the module's nnp program, setuid root.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from provisioner import proc
from provisioner.bundle import cache_root, image_mirror
from provisioner.bundle import images as img
from provisioner.conformance.suite import Suite
from provisioner.errors import ProvisionError

Progress = Callable[[str], None]

# Debian packages of the test images' userland: what agnhost's subcommands and the tests exec.
TESTLAND_PACKAGES = (
    "bash",
    "bash-static",
    "busybox-static",
    "ca-certificates",
    "curl",
    "dnsutils",
    "iperf",
    "iproute2",
    "iputils-ping",
    "netbase",
    "netcat-openbsd",
    "nginx",
    "procps",
    "socat",
)
# The user and group agnhost's image defines (the tests read them back by name and number).
TESTLAND_HOOK = (
    'echo "user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh" >> "$root/etc/passwd"; '
    'echo "user-defined-in-image:x:1000:" >> "$root/etc/group"; '
    'echo "group-defined-in-image:x:50000:user-defined-in-image" >> "$root/etc/group"; '
    'mkdir -p "$root/home/user-defined-in-image" "$root/var/log/nginx" "$root/uploads"; '
    'chown 1000:1000 "$root/home/user-defined-in-image"'
)
# Bumped when the way the images are made changes, so cached archives are made again.
RECIPE = 2
# The bundle's images, already imported on every node (kube_packages).
FROM_BUNDLE = ("pause", "etcd")
# The repositories the [Conformance] tests run images of (test/e2e at 1.37.2: the image ids those tests
# and the framework they call name). The suite lists many more, for tests outside conformance; the
# agnhost of gcr.io/k8s-authenticated-test and invalid.registry.k8s.io are meant to fail to pull.
CONFORMANCE_REPOSITORIES = frozenset(
    {
        "e2e-test-images/agnhost",
        "e2e-test-images/busybox",
        "e2e-test-images/glibc-dns-testing",
        "e2e-test-images/kitten",
        "e2e-test-images/nautilus",
        "e2e-test-images/nginx",
        "e2e-test-images/nonewprivs",
        "e2e-test-images/nonroot",
        "e2e-test-images/sample-apiserver",
        "etcd",
        "pause",
    }
)


@dataclass(frozen=True)
class TestImages:
    dir: Path  # the archive's directory (test-images.tar)
    made: list[str]  # the image names the archive holds
    not_made: list[str]  # names of CONFORMANCE_REPOSITORIES that neither the archive nor the bundle holds


def repository(name: str) -> str:
    """registry.k8s.io/e2e-test-images/agnhost:2.66.1 -> e2e-test-images/agnhost"""
    path = name.split("/", 1)[1] if "/" in name else name
    return path.rsplit(":", 1)[0]


def listed_images(suite: Suite) -> list[str]:
    """The images the suite names (`e2e.test --list-images`), one per line."""
    out = proc.run([str(suite.e2e_test), "--list-images"], timeout=120, what="e2e.test --list-images").stdout
    return sorted({line.strip() for line in out.splitlines() if line.strip() and " " not in line.strip()})


def module_files(suite: Suite) -> Path:
    """The k8s.io/kubernetes module's directory in Go's module cache (test/images' files)."""
    from provisioner.bundle import source as src

    res = proc.run(
        ["go", "list", "-m", "-json", f"k8s.io/kubernetes@v{suite.kubernetes}"],
        env=src.go_env(),
        cwd=src.BUNDLE_SRC / "conformance",
        timeout=300,
        what="go list -m k8s.io/kubernetes",
    )
    found = Path(json.loads(res.stdout).get("Dir") or "")
    if not (found / "test" / "images").is_dir():
        raise ProvisionError(f"k8s.io/kubernetes@v{suite.kubernetes} has no test/images in Go's module cache ({found})")
    return found


def busybox_applets(binary: Path) -> list[str]:
    """The applets of a static busybox (`busybox --list`)."""
    out = proc.run([str(binary), "--list"], timeout=30, what="busybox --list").stdout
    return [a for a in out.split() if a and "/" not in a]


def extract_member(layer: Path, member: str, dest: Path) -> Path:
    """One regular file of a layer tarball, written to `dest` (mode kept)."""
    with tarfile.open(layer) as tar:
        for m in tar:
            if m.name.removeprefix("./") == member and m.isfile():
                data = tar.extractfile(m)
                if data is not None:
                    dest.write_bytes(data.read())
                    dest.chmod(m.mode)
                    return dest
    raise ProvisionError(f"{layer} holds no {member}; the test images' userland is incomplete")


def specs(listed: list[str], suite: Suite, module: Path, nnp: Path, busybox: Path, shell: Path) -> list[img.ImageSpec]:
    """The ImageSpecs of the listed images this module makes."""
    porter = module / "test" / "images" / "agnhost" / "porter"
    agnhost = img.ImageSpec(
        name="",
        files={
            "/agnhost": suite.agnhost,
            "/localhost.crt": porter / "localhost.crt",
            "/localhost.key": porter / "localhost.key",
        },
        userland=True,
        links={"/agnhost-2": "agnhost"},
        entrypoint=("/agnhost",),
        cmd=("pause",),
    )
    applets = busybox_applets(busybox)
    made: list[img.ImageSpec] = []
    agnhost_tags = sorted((n for n in listed if repository(n) == "e2e-test-images/agnhost"), key=_tag_order)
    for name in agnhost_tags:
        # Tags differ in an environment variable only: a different image ID, the same layers.
        made.append(replace(agnhost, name=name, env=(f"PROVISIONER_AGNHOST_TAG={name.rsplit(':', 1)[1]}",)))
    for name in listed:
        repo = repository(name)
        if repo == "e2e-test-images/busybox":
            made.append(
                img.ImageSpec(
                    name=name,
                    files={"/bin/busybox": busybox, "/bin/sh": shell},
                    links={f"/bin/{a}": "busybox" for a in applets if a not in ("busybox", "sh")},
                    cmd=("sh",),
                )
            )
        elif repo == "e2e-test-images/nginx":
            made.append(img.ImageSpec(name=name, files={}, userland=True, cmd=("nginx", "-g", "daemon off;")))
        elif repo == "e2e-test-images/glibc-dns-testing":
            made.append(img.ImageSpec(name=name, files={}, userland=True, cmd=("bash",)))
        elif repo in ("e2e-test-images/nautilus", "e2e-test-images/kitten"):
            # agnhost's layers with the html files in a layer of their own on top.
            html = module / "test" / "images" / repo.rsplit("/", 1)[1] / "html"
            files = {f"/{p.name}": p for p in sorted(html.iterdir()) if p.is_file()}
            made.append(replace(agnhost, name=name, files=files, links={}, cmd=("test-webserver",), over=agnhost))
        elif repo == "e2e-test-images/nonroot":
            made.append(img.ImageSpec(name=name, files={}, userland=True, user="1234", cmd=("bash",)))
        elif repo == "e2e-test-images/nonewprivs":
            made.append(
                img.ImageSpec(
                    name=name,
                    files={"/usr/local/bin/nnp": nnp},
                    userland=True,
                    modes={"/usr/local/bin/nnp": 0o4755},
                    cmd=("nnp",),
                )
            )
    return made


def _tag_order(name: str) -> tuple[int, ...]:
    tag = name.rsplit(":", 1)[1]
    return tuple(int(p) if p.isdigit() else 0 for p in tag.replace("-", ".").split("."))


def ensure_images(suite: Suite, on_progress: Progress) -> TestImages:
    """The test images, one docker-archive tarball (the userland layer stored once) under
    /var/cache/provisioner/conformance/images-<key>/, made when missing."""
    listed = listed_images(suite)
    module = module_files(suite)
    cache = cache_root() / "conformance"
    on_progress("images: the test userland (Debian packages, mmdebstrap)")
    testland = img.ensure_userland(
        cache, image_mirror(), packages=TESTLAND_PACKAGES, name="testland", hook=TESTLAND_HOOK
    )
    key = hashlib.sha256(
        json.dumps([RECIPE, suite.dir.name, testland.name, listed], sort_keys=True).encode()
    ).hexdigest()[:12]
    out = cache / f"images-{key}"
    archive = out / "test-images.tar"
    # .complete lists the names the archive holds: a cached archive is not made again, nor its specs.
    if not (out / ".complete").is_file() or not archive.is_file():
        with tempfile.TemporaryDirectory(prefix="provision-testimages-", dir=cache) as tmp:
            busybox = extract_member(testland, "usr/bin/busybox", Path(tmp) / "busybox")
            shell = extract_member(testland, "usr/bin/bash-static", Path(tmp) / "bash-static")
            wanted = specs(listed, suite, module, suite.dir / "nnp", busybox, shell)
            partial = out.with_name(out.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            on_progress(f"images: {len(wanted)} images in one archive")
            img.write_archives(wanted, partial / archive.name, testland)
            (partial / ".complete").write_text("\n".join(s.name for s in wanted) + "\n", encoding="utf-8")
            shutil.rmtree(out, ignore_errors=True)
            partial.rename(out)
        for stale in cache.glob("images-*"):  # made by an older recipe or suite: never read again
            if stale.is_dir() and stale != out and not stale.name.endswith(".partial"):
                shutil.rmtree(stale, ignore_errors=True)
    made = sorted((out / ".complete").read_text(encoding="utf-8").split())
    bundled = {n for n in listed if repository(n).rsplit("/", 1)[-1] in FROM_BUNDLE}
    not_made = [n for n in listed if repository(n) in CONFORMANCE_REPOSITORIES and n not in made and n not in bundled]
    return TestImages(out, made, not_made)
