"""CA certificate hash (kubeadm's --discovery-token-ca-cert-hash), read from the certificate's DER
without a crypto library."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

from provisioner.kube import KubeConfigError


def _der_element(data: bytes, offset: int) -> tuple[int, int, int]:
    """Read one DER TLV at offset: (tag, offset of the content, offset just past the element)."""
    if offset + 2 > len(data):
        raise KubeConfigError("the CA certificate is truncated (DER element header past the end)")
    tag = data[offset]
    length = data[offset + 1]
    pos = offset + 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise KubeConfigError("the CA certificate has an invalid DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    end = pos + length
    if end > len(data):
        raise KubeConfigError("the CA certificate is truncated (DER element past the end)")
    return tag, pos, end


def certificate_der(certificate: str | bytes) -> bytes:
    """The DER bytes of the first certificate in PEM text (or DER input returned as is)."""
    if isinstance(certificate, bytes) and certificate[:1] == b"\x30":
        return certificate
    text = certificate.decode("ascii", "replace") if isinstance(certificate, bytes) else str(certificate)
    match = re.search(r"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", text, re.S)
    if not match:
        raise KubeConfigError("no PEM certificate found (expected -----BEGIN CERTIFICATE-----)")
    try:
        return base64.b64decode("".join(match.group(1).split()), validate=True)
    except binascii.Error:
        raise KubeConfigError("the PEM certificate is not valid base64") from None


def subject_public_key_info(certificate: str | bytes) -> bytes:
    """The DER-encoded SubjectPublicKeyInfo of an X.509 certificate (RFC 5280 section 4.1)."""
    der = certificate_der(certificate)
    tag, cert_body, _ = _der_element(der, 0)
    if tag != 0x30:
        raise KubeConfigError("the CA certificate is not a DER SEQUENCE")
    tag, pos, _ = _der_element(der, cert_body)  # tbsCertificate
    if tag != 0x30:
        raise KubeConfigError("the CA certificate has no tbsCertificate SEQUENCE")
    # version [0] EXPLICIT (optional), serialNumber, signature, issuer, validity, subject, SPKI
    tag, _, end = _der_element(der, pos)
    if tag == 0xA0:
        pos = end
    for _field in ("serialNumber", "signature", "issuer", "validity", "subject"):
        _, _, pos = _der_element(der, pos)
    tag, _, end = _der_element(der, pos)
    if tag != 0x30:
        raise KubeConfigError("the CA certificate's subjectPublicKeyInfo is not a SEQUENCE")
    return der[pos:end]


def ca_cert_hash(certificate: str | bytes) -> str:
    """kubeadm's CA pin: "sha256:" + hex SHA-256 of the certificate's DER SubjectPublicKeyInfo."""
    return "sha256:" + hashlib.sha256(subject_public_key_info(certificate)).hexdigest()
