"""kubeadm's CA pin (sha256 of the DER SubjectPublicKeyInfo) on certificates generated here.

The toolkit parses the certificate's DER itself; the expected values come independently from the
`cryptography` package and, when installed, from the openssl pipeline the kube_join role runs.
"""

from __future__ import annotations

import datetime
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from provisioner.kube import KubeConfigError, cahash

KeyKind = str


def _certificate(kind: KeyKind, with_extensions: bool = True) -> x509.Certificate:
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    if kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif kind == "ecdsa":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if with_extensions:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    algorithm = None if kind == "ed25519" else hashes.SHA256()
    return builder.sign(key, algorithm)


def _independent_hash(certificate: x509.Certificate) -> str:
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


@pytest.mark.parametrize("kind", ["rsa", "ecdsa", "ed25519"])
@pytest.mark.parametrize("with_extensions", [True, False], ids=["ca-extensions", "no-extensions"])
def test_hash_matches_cryptography(kind: KeyKind, with_extensions: bool) -> None:
    certificate = _certificate(kind, with_extensions)
    pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
    assert cahash.ca_cert_hash(pem) == _independent_hash(certificate)
    assert cahash.ca_cert_hash(certificate.public_bytes(serialization.Encoding.DER)) == _independent_hash(certificate)


def test_first_certificate_of_a_bundle_counts() -> None:
    first, second = _certificate("rsa"), _certificate("ecdsa")
    bundle = "\n".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in (first, second))
    assert cahash.ca_cert_hash(bundle) == _independent_hash(first)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed on this machine")
@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_hash_matches_the_roles_openssl_pipeline(kind: KeyKind, tmp_path: Path) -> None:
    certificate = _certificate(kind)
    path = tmp_path / "ca.crt"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    # The same pipeline as roles/kube_join/tasks/0020-credentials.yml.
    result = subprocess.run(
        [
            "bash",
            "-c",
            f"set -o pipefail && openssl x509 -pubkey -noout -in {path} | openssl pkey -pubin -outform der"
            " | sha256sum | cut -d' ' -f1",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert cahash.ca_cert_hash(path.read_text()) == "sha256:" + result.stdout.strip()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not a certificate", "no PEM certificate found"),
        ("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n", "not valid base64"),
        ("-----BEGIN CERTIFICATE-----\nMAM=\n-----END CERTIFICATE-----\n", "truncated"),
    ],
)
def test_broken_input_is_refused(text: str, message: str) -> None:
    with pytest.raises(KubeConfigError, match=message):
        cahash.ca_cert_hash(text)
