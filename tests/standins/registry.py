"""A stand-in for the image registries (registry.k8s.io, quay.io, docker.io), made on this machine.

The registry program of distribution v3, built from its Go module (tests/standins/registry/go.mod)
into /var/cache/provisioner/standins (once; seconds with Go's build cache warm, about 80 s cold),
served over TLS with a certificate from a CA the test makes, on an address of the test's choosing
(the host's address on the nodes' network). Images go in from the bundle's docker archives with
skopeo, under their repository paths (registry.k8s.io/pause:3.10.2 -> pause:3.10.2), so that nodes
reach it as a containerd mirror of each registry with nothing else changed.

    with Registry.start(workdir, "192.168.156.1") as registry:
        registry.push(bundle / "images/pause.tar", "pause:3.10.2")
        registry.url, registry.ca_pem, registry.requests()
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

MODULE = Path(__file__).resolve().parent / "registry"
PACKAGE = "github.com/distribution/distribution/v3/cmd/registry"
CACHE = Path(os.environ.get("PROVISION_CACHE_DIR", "/var/cache/provisioner"))


def binary() -> Path:
    """The registry program, built from the module when the cache lacks this go.sum's build."""
    digest = hashlib.sha256((MODULE / "go.mod").read_bytes() + (MODULE / "go.sum").read_bytes()).hexdigest()[:12]
    path = CACHE / "standins" / f"registry-{digest}"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "GOMODCACHE": str(CACHE / "go" / "mod"),
        "GOCACHE": str(CACHE / "go" / "build"),
        "CGO_ENABLED": "0",
        "GOFLAGS": "-mod=readonly",
    }
    partial = path.with_suffix(f".partial-{os.getpid()}")
    proc = subprocess.run(
        ["go", "build", "-trimpath", "-o", str(partial), PACKAGE],
        cwd=MODULE,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"building the stand-in registry failed: {proc.stderr[-3000:]}")
    partial.rename(path)
    return path


def _certificates(address: str) -> tuple[bytes, bytes, bytes]:
    """(CA certificate, server certificate, server key) in PEM, the server's for `address`."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "provisioner test suite registry CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # key_cert_sign, crl_sign
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return (
        ca.public_bytes(serialization.Encoding.PEM),
        server.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


def _free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class Registry:
    workdir: Path
    address: str
    port: int
    ca_pem: str

    @property
    def url(self) -> str:
        return f"https://{self.address}:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "registry.log"

    @classmethod
    @contextmanager
    def start(cls, workdir: Path, address: str) -> Iterator[Registry]:
        """The registry running on ADDRESS (a free port), its storage and log under workdir; stopped after."""
        program = binary()
        workdir.mkdir(parents=True, exist_ok=True)
        ca, cert, key = _certificates(address)
        certs = workdir / "certs"
        certs.mkdir(exist_ok=True)
        (certs / "ca.crt").write_bytes(ca)  # skopeo --dest-cert-dir reads *.crt as CAs
        (workdir / "server.crt").write_bytes(cert)
        (workdir / "server.key").write_bytes(key)
        (workdir / "server.key").chmod(0o600)
        # The port is free when asked for, but another process may take it before the registry binds
        # it: then the registry exits saying so, and another port is tried.
        for attempt in range(1, 4):
            port = _free_port(address)
            config = workdir / "config.yml"
            config.write_text(
                "version: 0.1\n"
                "log:\n  level: info\n  accesslog:\n    disabled: false\n"
                f"storage:\n  filesystem:\n    rootdirectory: {workdir / 'data'}\n  delete:\n    enabled: true\n"
                f"http:\n  addr: {address}:{port}\n  tls:\n"
                f"    certificate: {workdir / 'server.crt'}\n    key: {workdir / 'server.key'}\n"
            )
            registry = cls(workdir, address, port, ca.decode())
            with registry.log.open("w") as log:
                proc = subprocess.Popen([str(program), "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
            try:
                registry._wait(proc)
            except RuntimeError:
                _stop(proc)
                if attempt < 3 and "address already in use" in registry.log.read_text(errors="replace"):
                    continue
                raise
            break
        try:
            yield registry
        finally:
            _stop(proc)

    def _wait(self, proc: subprocess.Popen[bytes]) -> None:
        context = ssl.create_default_context(cadata=self.ca_pem)
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the stand-in registry exited ({proc.returncode}): {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/v2/", context=context, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the stand-in registry did not answer in 30 s: {self.log.read_text()[-2000:]}")
            time.sleep(0.2)

    def push(self, archive: Path, reference: str) -> None:
        """Copy a docker archive into the registry as REFERENCE (repository path:tag), checking its TLS."""
        proc = subprocess.run(
            ["skopeo", "copy", "--quiet", "--dest-cert-dir", str(self.workdir / "certs"),
             f"docker-archive:{archive}", f"docker://{self.address}:{self.port}/{reference}"],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"skopeo copy {archive.name} -> {reference}: {proc.stderr[-2000:]}")

    def requests(self) -> str:
        """The registry's log so far (its access log names each request's path)."""
        return self.log.read_text(errors="replace")
