"""A stand-in for pkgs.k8s.io's apt repositories of Kubernetes minors, made on this machine.

It keeps pkgs.k8s.io's layout (`core:/stable:/v1.MINOR/deb/` per minor, each a flat repository: Packages, Release,
InRelease, Release.gpg and the armored Release.key beside the .deb files) and its package names,
versions (`1.37.2-1.1`) and dependencies, so that the kube_packages role runs its upstream path
against it with nothing but kube_packages_repo_base_url changed. The packages are built with Debian's
dpkg-deb from the offline bundle's binaries; every minor's repository is signed with one key made here
by gpg (as pkgs.k8s.io signs all its minors with one), in a GNUPGHOME of the stand-in's own. The unit
files in the packages are the project's own.

    repo = AptRepo(root, gpg_home)
    repo.add_release(bundle_dir, "1.37.2")      # into v1.37: kubelet, kubeadm, kubectl, cri-tools, kubernetes-cni
    repo.add_release(bundle_136, "1.36.3")      # into v1.36
    repo.publish()                              # each minor: Packages, Release, signatures, Release.key
    repo.rotate_key(); repo.publish()           # a new signing key, as a repository rotating its key
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path

# The packages a pkgs.k8s.io minor carries, what each holds of the bundle, and what each depends on
# (the upstream packages' Depends lines, from their published control files).
KUBELET_DEPENDS = (
    "iptables (>= 1.4.21), kubernetes-cni (>= 1.1.1), iproute2, socat, util-linux, mount, ebtables, ethtool, conntrack"
)
KUBEADM_DEPENDS = "kubelet (>= 1.19.0), kubectl (>= 1.19.0), cri-tools (>= 1.30.0)"

KUBELET_UNIT = """\
[Unit]
Description=kubelet: the Kubernetes node agent (stand-in package)
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
"""

# kubeadm's drop-in: the flags kubeadm writes (kubeadm-flags.env) and the files it makes.
KUBEADM_DROP_IN = """\
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
"""


def _run(*argv: str, env: dict[str, str] | None = None, stdin: str | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, input=stdin, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


@dataclass
class AptRepo:
    """The stand-in repository under `root` (served from `root`), signed with keys kept in `gpg_home`."""

    root: Path
    gpg_home: Path
    minor: str = "1.37"
    key_fingerprint: str = ""
    _keys: list[str] = field(default_factory=list)

    @property
    def base_path(self) -> str:
        """The part of kube_packages_repo_base_url after the server's address."""
        return "core:/stable:"

    @property
    def deb_dir(self) -> Path:
        """The repository of `minor`."""
        return self.deb_dir_of(self.minor)

    def deb_dir_of(self, minor: str) -> Path:
        return self.root / "core:" / "stable:" / f"v{minor}" / "deb"

    def _gpg(self, *args: str, stdin: str | None = None) -> str:
        self.gpg_home.mkdir(mode=0o700, parents=True, exist_ok=True)
        return _run("gpg", "--homedir", str(self.gpg_home), "--batch", "--pinentry-mode", "loopback",
                    "--passphrase", "", *args, stdin=stdin)  # fmt: skip

    def rotate_key(self) -> str:
        """Make a new signing key and sign with it from now on; its fingerprint."""
        uid = f"provisioner stand-in pkgs.k8s.io key {len(self._keys) + 1} <standin@provisioner.invalid>"
        self._gpg("--quick-generate-key", uid, "ed25519", "sign", "never")
        listing = self._gpg("--with-colons", "--list-keys", uid)
        fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
        self._keys.append(fingerprint)
        self.key_fingerprint = fingerprint
        return fingerprint

    def _deb(
        self, minor: str, name: str, version: str, depends: str, files: Mapping[str, tuple[Path | str, int]]
    ) -> None:
        """Build NAME_VERSION_amd64.deb into the repository: files maps a path on the node to (a file to
        copy, or the text to write; its mode)."""
        with tempfile.TemporaryDirectory(prefix=f"standin-{name}-") as tmp:
            tree = Path(tmp) / "tree"
            for dest, (source, mode) in files.items():
                target = tree / dest.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(source, Path):
                    shutil.copyfile(source, target)
                else:
                    target.write_text(source)
                target.chmod(mode)
            (tree / "DEBIAN").mkdir()
            size_kib = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file()) // 1024
            control = [
                f"Package: {name}",
                f"Version: {version}",
                "Architecture: amd64",
                "Maintainer: provisioner test suite <standin@provisioner.invalid>",
                f"Installed-Size: {size_kib}",
                *([f"Depends: {depends}"] if depends else []),
                "Section: admin",
                "Priority: optional",
                "Homepage: https://kubernetes.io",
                f"Description: {name} (stand-in built from the offline bundle)",
                " Built by the provisioner test suite for its pkgs.k8s.io stand-in.",
            ]
            (tree / "DEBIAN" / "control").write_text("\n".join(control) + "\n")
            deb_dir = self.deb_dir_of(minor)
            deb_dir.mkdir(parents=True, exist_ok=True)
            out = deb_dir / f"{name}_{version}_amd64.deb"
            # gzip at its fastest: the packages are read once, over a local network.
            _run("dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", str(tree), str(out))

    def add_release(self, bundle_dir: Path, kube_version: str, cri_tools: str = "", cni: str = "1.10.0") -> None:
        """kubelet, kubeadm, kubectl at KUBE_VERSION-1.1 into the repository of its minor (cri-tools, at
        MINOR.0 unless named, and kubernetes-cni at their own numbering), from the bundle's bin/."""
        binaries = bundle_dir / "bin"
        release = f"{kube_version}-1.1"
        minor = ".".join(kube_version.split(".")[:2])
        cri_tools = cri_tools or f"{minor}.0"
        deb_dir = self.deb_dir_of(minor)
        self._deb(minor, "kubelet", release, KUBELET_DEPENDS, {
            "/usr/bin/kubelet": (binaries / "kubelet", 0o755),
            "/usr/lib/systemd/system/kubelet.service": (KUBELET_UNIT, 0o644),
        })  # fmt: skip
        self._deb(minor, "kubeadm", release, KUBEADM_DEPENDS, {
            "/usr/bin/kubeadm": (binaries / "kubeadm", 0o755),
            "/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf": (KUBEADM_DROP_IN, 0o644),
        })  # fmt: skip
        self._deb(minor, "kubectl", release, "", {"/usr/bin/kubectl": (binaries / "kubectl", 0o755)})
        if not list(deb_dir.glob(f"cri-tools_{cri_tools}-1.1_*.deb")):
            self._deb(minor, "cri-tools", f"{cri_tools}-1.1", "", {"/usr/bin/crictl": (binaries / "crictl", 0o755)})
        if not list(deb_dir.glob(f"kubernetes-cni_{cni}-1.1_*.deb")):
            plugins = {f"/opt/cni/bin/{p.name}": (p, 0o755) for p in sorted((binaries / "cni").iterdir())}
            self._deb(minor, "kubernetes-cni", f"{cni}-1.1", "", plugins)

    def publish(self) -> None:
        """Write each minor's Packages, Release and its signatures, and Release.key (the current key),
        as pkgs.k8s.io's flat repositories have them."""
        if not self.key_fingerprint:
            self.rotate_key()
        for deb in sorted(self.root.glob("core:/stable:/v*/deb")):
            self._publish(deb)

    def _publish(self, deb: Path) -> None:
        # Filename: fields relative to the repository, as in a flat repository: run it there.
        packages = subprocess.run(
            ["dpkg-scanpackages", "--multiversion", "."], capture_output=True, text=True, cwd=deb, check=True
        ).stdout
        (deb / "Packages").write_text(packages)
        (deb / "Packages.gz").write_bytes(gzip.compress(packages.encode(), mtime=0))
        lines = [
            "Origin: provisioner stand-in",
            "Label: provisioner stand-in",
            "Architectures: amd64",
            f"Date: {formatdate(usegmt=True)}",
        ]
        for title, algorithm in (("MD5Sum", "md5"), ("SHA256", "sha256")):
            lines.append(f"{title}:")
            for name in ("Packages", "Packages.gz"):
                data = (deb / name).read_bytes()
                lines.append(f" {hashlib.new(algorithm, data).hexdigest()} {len(data)} {name}")
        (deb / "Release").write_text("\n".join(lines) + "\n")
        for name in ("InRelease", "Release.gpg"):
            (deb / name).unlink(missing_ok=True)
        key = ["--local-user", self.key_fingerprint]
        self._gpg(*key, "--clearsign", "--output", str(deb / "InRelease"), str(deb / "Release"))
        self._gpg(*key, "--armor", "--detach-sign", "--output", str(deb / "Release.gpg"), str(deb / "Release"))
        (deb / "Release.key").write_text(self._gpg("--armor", "--export", self.key_fingerprint))
