"""e2e.test, ginkgo, agnhost and nnp built from the Go module bundle/conformance pins.

e2e.test is `go test -c` of k8s.io/kubernetes/test/e2e with the flags of the bundle's Kubernetes build
(tags, -trimpath, the release stamped into both version packages), so most of its packages come from
Go's build cache after the bundle's build. The four programs are kept under
/var/cache/provisioner/conformance/suite-<key>/, the key a digest of everything that goes into them; an
interrupted build leaves a .partial directory that the next one replaces.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from provisioner import proc
from provisioner.bundle import Versions, cache_root
from provisioner.bundle import source as src
from provisioner.errors import ProvisionError

MODULE_DIR = src.BUNDLE_SRC / "conformance"
PROGRAMS = ("e2e.test", "ginkgo", "agnhost", "nnp")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Suite:
    dir: Path
    kubernetes: str  # the release the suite was built from, "1.37.2"

    @property
    def e2e_test(self) -> Path:
        return self.dir / "e2e.test"

    @property
    def ginkgo(self) -> Path:
        return self.dir / "ginkgo"

    @property
    def agnhost(self) -> Path:
        return self.dir / "agnhost"


def pinned_release(module_dir: Path = MODULE_DIR) -> str:
    """The Kubernetes release bundle/conformance/go.mod requires ("1.37.2")."""
    for line in (module_dir / "go.mod").read_text(encoding="utf-8").splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] in ("require", "k8s.io/kubernetes") and "k8s.io/kubernetes" in words:
            return words[-1].lstrip("v")
    raise ProvisionError(f"{module_dir / 'go.mod'} requires no k8s.io/kubernetes; the suite's module is damaged")


def tool_imports(module_dir: Path = MODULE_DIR) -> list[str]:
    """The packages tools.go names: e2e.test's (the e2e package and its test file's imports), ginkgo's
    CLI and agnhost."""
    text = (module_dir / "tools.go").read_text(encoding="utf-8")
    return re.findall(r'^\s*_ "([^"]+)"', text, re.M)


def _build() -> src.GoBuild:
    data = src.load_components()
    kube = next((b for b in src.go_builds(data) if b.name == "kubernetes"), None)
    if kube is None:
        raise ProvisionError("bundle/components.yaml has no kubernetes build, whose flags the suite is built with")
    return src.GoBuild(
        name="conformance",
        dir=MODULE_DIR,
        version_module="k8s.io/kubernetes",
        tags=kube.tags,
        ldflags=kube.ldflags,
        packages={
            "e2e.test": "k8s.io/kubernetes/test/e2e",
            "ginkgo": "github.com/onsi/ginkgo/v2/ginkgo",
            "agnhost": "k8s.io/kubernetes/test/images/agnhost",
            "nnp": "k8s.io/kubernetes/test/images/nonewprivs",
        },
    )


def ensure_suite(kubernetes: str, log_file: Path, on_progress: Progress) -> Suite:
    """The suite for release `kubernetes`, built now when it is not cached (about 7 minutes on two
    cores after the bundle's build, which leaves most packages in Go's cache)."""
    pinned = pinned_release()
    if kubernetes != pinned:
        raise ProvisionError(
            f"this cluster runs Kubernetes {kubernetes}, and the conformance suite here is built for {pinned} "
            f"only (bundle/conformance/go.mod); upgrade the cluster (`provision.py upgrade --kube-version {pinned}`)",
            exit_code=2,
        )
    src.check_go()
    build = _build()
    module_version, module_time = src.module_info(build)
    versions = Versions(kubernetes=pinned, calico="")
    ldflags = src.release_ldflags(build, versions, module_version, module_time)
    key = src.build_inputs_digest(build, ldflags)
    out = cache_root() / "conformance" / f"suite-{key}"
    suite = Suite(out, pinned)
    if (out / ".complete").is_file() and all((out / p).is_file() for p in PROGRAMS):
        on_progress(f"suite: cached ({out})")
        return suite
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    jobs = ["-p", str(os.cpu_count() or 2)]
    tags = ["-tags", ",".join(build.tags)] if build.tags else []
    # First every package the four programs need, compiled with `go build -v` (which names each package
    # as it goes: the progress; `go test -c` names none), then the four links, from Go's cache.
    commands = [
        ("packages", ["go", "build", "-v", *jobs, "-trimpath", *tags, *tool_imports()]),
        ("e2e.test", ["go", "test", "-c", *jobs, "-trimpath", *tags, "-ldflags", ldflags, "-o",
                      str(partial / "e2e.test"), build.packages["e2e.test"]]),
        ("ginkgo", ["go", "build", "-v", *jobs, "-trimpath", "-ldflags", "-buildid= -s -w", "-o",
                    str(partial / "ginkgo"), build.packages["ginkgo"]]),
        ("agnhost", ["go", "build", "-v", *jobs, "-trimpath", *tags, "-ldflags", ldflags, "-o",
                     str(partial / "agnhost"), build.packages["agnhost"]]),
        ("nnp", ["go", "build", "-v", *jobs, "-trimpath", "-ldflags", "-buildid= -s -w", "-o",
                 str(partial / "nnp"), build.packages["nnp"]]),
    ]  # fmt: skip
    for name, cmd in commands:
        seen = src.compile_progress(f"suite: {name}", on_progress)
        rc = proc.stream(cmd, env=src.go_env(), cwd=MODULE_DIR, log_file=log_file, on_line=seen)
        if rc != 0 or (name in PROGRAMS and not (partial / name).is_file()):
            raise ProvisionError(
                f"the build of the conformance suite's {name} failed (exit {rc}); a rerun resumes from Go's build cache",
                log_path=str(log_file),
            )
    (partial / ".complete").write_text(module_version + "\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return suite
