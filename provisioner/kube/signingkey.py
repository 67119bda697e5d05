"""A package repository's signing key (kube_packages): which OpenPGP keys an armored key file holds,
and whether the key a repository serves now may replace the one a node already trusts.

The first install trusts the key the repository serves (or the fingerprint the operator pinned). From
then on a different key is a rotation or an attack, and apt would trust whatever the keyring holds:
it is refused until the operator names the new fingerprint, and nothing on the node changes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import Any

from provisioner.kube import KubeConfigError

_ARMOR = re.compile(
    r"-----BEGIN PGP PUBLIC KEY BLOCK-----\r?\n(?P<body>.*?)-----END PGP PUBLIC KEY BLOCK-----", re.DOTALL
)
_PUBLIC_KEY = 6
_HEX = re.compile(r"^[0-9A-F]{40}$|^[0-9A-F]{64}$")


def _packets(data: bytes) -> list[tuple[int, bytes]]:
    """(tag, body) of each OpenPGP packet (RFC 9580 section 4.2, old and new header formats)."""
    cut_short = KubeConfigError("the signing key is cut short (a packet runs past its end)")

    def number(start: int, size: int) -> int:
        if start + size > len(data):
            raise cut_short
        return int.from_bytes(data[start : start + size], "big")

    packets: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        head = data[pos]
        if not head & 0x80:
            raise KubeConfigError("the signing key is not OpenPGP data (a packet header lacks its high bit)")
        if head & 0x40:  # new format
            tag = head & 0x3F
            first = number(pos + 1, 1)
            if first < 192:
                length, pos = first, pos + 2
            elif first < 224:
                length, pos = ((first - 192) << 8) + number(pos + 2, 1) + 192, pos + 3
            elif first == 255:
                length, pos = number(pos + 2, 4), pos + 6
            else:
                raise KubeConfigError("the signing key uses partial-length packets, which a key file never has")
        else:
            tag = (head >> 2) & 0x0F
            size = {0: 1, 1: 2, 2: 4}.get(head & 0x03)
            if size is None:
                raise KubeConfigError("the signing key has a packet of indeterminate length")
            length, pos = number(pos + 1, size), pos + 1 + size
        if pos + length > len(data):
            raise cut_short
        packets.append((tag, data[pos : pos + length]))
        pos += length
    return packets


def _fingerprint(body: bytes) -> str:
    version = body[0] if body else 0
    if version == 4:
        if len(body) > 0xFFFF:
            raise KubeConfigError("the signing key has a version 4 key packet longer than such a packet can be")
        return hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body, usedforsecurity=False).hexdigest().upper()
    if version == 6:
        return hashlib.sha256(b"\x9b" + len(body).to_bytes(4, "big") + body).hexdigest().upper()
    raise KubeConfigError(f"the signing key is an OpenPGP version {version} key; versions 4 and 6 are understood")


def key_fingerprints(armored: object) -> list[str]:
    """The fingerprints (upper-case hex) of the primary keys in an ASCII-armored public key file, in order."""
    text = str(armored or "")
    blocks = list(_ARMOR.finditer(text))
    if not blocks:
        raise KubeConfigError("the signing key is not an ASCII-armored OpenPGP public key block")
    found: list[str] = []
    for block in blocks:
        lines = block.group("body").splitlines()
        blank = next((i for i, line in enumerate(lines) if not line.strip()), None)
        if blank is not None:  # armor headers end at the first blank line
            lines = lines[blank + 1 :]
        payload = "".join(line.strip() for line in lines if line.strip() and not line.startswith("="))
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise KubeConfigError(f"the signing key's armor is not base64 ({exc})") from None
        found += [_fingerprint(body) for tag, body in _packets(data) if tag == _PUBLIC_KEY]
    if not found:
        raise KubeConfigError("the signing key file holds no public key")
    return found


def _normal(fingerprint: object) -> str:
    return re.sub(r"[\s:]", "", str(fingerprint or "")).upper().removeprefix("0X")


def fingerprint_argument(value: object) -> str:
    """A key fingerprint as the operator wrote it (spaces, colons, lower case, 0x allowed), normalised."""
    wanted = _normal(value)
    if not _HEX.match(wanted):
        raise KubeConfigError(f"{str(value)!r} is not an OpenPGP key fingerprint (40 or 64 hex digits)")
    return wanted


def repo_key_plan(served: object, installed: object, accepted: object = "", url: object = "") -> dict[str, Any]:
    """Whether the key the repository serves (`served`, armored) may be written to the node's keyring.

    `installed` is the keyring's current content ("" when there is none); `accepted` a fingerprint the
    operator named (kube_packages_repo_key_fingerprint: pinned on the first install, the accepted one
    on a rotation). Returns {"fingerprints": served, "install": write the keyring, "error": why not,
    "" when fine}.
    """
    try:
        fingerprints = key_fingerprints(served)
    except KubeConfigError as exc:
        raise KubeConfigError(f"what the repository serves{' at ' + str(url) if url else ''}: {exc}") from None
    try:
        trusted = key_fingerprints(installed) if str(installed or "").strip() else []
    except KubeConfigError as exc:
        raise KubeConfigError(f"the node's keyring: {exc}; move it away to trust the repository's key again") from None
    try:
        wanted = fingerprint_argument(accepted) if _normal(accepted) else ""
    except KubeConfigError as exc:
        raise KubeConfigError(f"kube_packages_repo_key_fingerprint: {exc}") from None
    where = f" at {url}" if url else ""
    if wanted:
        # Only the named key may join what the node trusts: any other key in the file must be trusted already.
        if wanted in fingerprints and set(fingerprints) <= set(trusted) | {wanted}:
            return {"fingerprints": fingerprints, "install": True, "error": ""}
        return {
            "fingerprints": fingerprints,
            "install": False,
            "error": (
                f"the repository's signing key file{where} holds {', '.join(fingerprints)}, and "
                f"kube_packages_repo_key_fingerprint names {wanted}: only the named key may be added to what the node "
                "trusts; nothing was changed: check which keys the repository publishes and name the new one"
            ),
        }
    if not trusted:
        return {"fingerprints": fingerprints, "install": True, "error": ""}
    if set(fingerprints) <= set(trusted):
        return {"fingerprints": fingerprints, "install": True, "error": ""}
    new = [f for f in fingerprints if f not in trusted]
    return {
        "fingerprints": fingerprints,
        "install": False,
        "error": (
            "the package repository's signing key changed, and nothing was changed; if the repository rotated its "
            f"key, accept the new one: provision.py up --accept-repo-key {new[0]} (or "
            f"kube_packages_repo_key_fingerprint). Trusted {', '.join(trusted)}, served now {', '.join(fingerprints)}"
            f"{where}"
        ),
    }
