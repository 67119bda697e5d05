"""The kube_packages role's check of a repository's signing key (provisioner/kube/signingkey.py).

Keys are made by gpg here (scripts/setup.sh installs it) and each fingerprint the module computes is
compared with gpg's own. No machine, no network."""

from __future__ import annotations

import base64
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner.kube import KubeConfigError
from provisioner.kube.signingkey import key_fingerprints, repo_key_plan


class Keys:
    def __init__(self, home: Path) -> None:
        self.home = home

    def gpg(self, *args: str) -> str:
        return subprocess.run(
            ["gpg", "--homedir", str(self.home), "--batch", "--pinentry-mode", "loopback", "--passphrase", "", *args],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    def make(self, uid: str, algo: str = "ed25519", subkey: bool = False) -> tuple[str, str]:
        """(gpg's fingerprint of a new key, its armored export)."""
        self.gpg("--quick-generate-key", uid, algo, "sign", "never")
        fpr = next(line.split(":")[9] for line in self.gpg("--with-colons", "--list-keys", uid).splitlines()
                   if line.startswith("fpr:"))  # fmt: skip
        if subkey:
            self.gpg("--quick-add-key", fpr, "cv25519", "encr", "never")
        return fpr, self.gpg("--armor", "--export", fpr)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    if shutil.which("gpg") is None:
        pytest.skip("gpg is missing (scripts/setup.sh installs Debian's gnupg)")
    home = tmp_path_factory.mktemp("gnupg")
    home.chmod(0o700)
    yield Keys(home)
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False, capture_output=True)


def test_fingerprints_match_gpg_for_ed25519_and_rsa_keys_and_ignore_subkeys(keys: Keys) -> None:
    ed, ed_armored = keys.make("ed <ed@provisioner.invalid>", subkey=True)
    rsa, rsa_armored = keys.make("rsa <rsa@provisioner.invalid>", "rsa2048")
    assert key_fingerprints(ed_armored) == [ed]
    assert key_fingerprints(rsa_armored) == [rsa]
    # two blocks in one file (a repository publishing both keys during a rotation)
    assert key_fingerprints(ed_armored + "\n" + rsa_armored) == [ed, rsa]
    # one block holding both keys (gpg --export of two keys)
    both = keys.gpg("--armor", "--export", ed, rsa)
    assert sorted(key_fingerprints(both)) == sorted([ed, rsa])


def test_first_install_trusts_the_served_key_and_a_rotation_is_refused_until_accepted(keys: Keys) -> None:
    old, old_key = keys.make("old <old@provisioner.invalid>")
    new, new_key = keys.make("new <new@provisioner.invalid>")
    assert repo_key_plan(old_key, "") == {"fingerprints": [old], "install": True, "error": ""}
    assert repo_key_plan(old_key, old_key)["install"] is True
    refused = repo_key_plan(new_key, old_key, "", "http://mirror.invalid/v1.37/deb/Release.key")
    assert refused["install"] is False
    assert old in refused["error"] and new in refused["error"] and "nothing was changed" in refused["error"]
    assert f"--accept-repo-key {new}" in refused["error"] and "mirror.invalid" in refused["error"]
    assert "nothing was changed" in refused["error"]
    # accepted by fingerprint, written with spaces and lower case as gpg prints it
    spaced = " ".join(new[i : i + 4] for i in range(0, len(new), 4)).lower()
    assert repo_key_plan(new_key, old_key, spaced)["install"] is True
    # a pinned fingerprint is required on the first install too
    pinned = repo_key_plan(new_key, "", old)
    assert pinned["install"] is False and old in pinned["error"] and new in pinned["error"]


def test_a_named_key_lets_in_only_itself_and_the_refusal_names_the_new_key(keys: Keys) -> None:
    old, old_key = keys.make("o <o@provisioner.invalid>")
    new, _ = keys.make("n <n@provisioner.invalid>")
    other, other_key = keys.make("x <x@provisioner.invalid>")
    both = keys.gpg("--armor", "--export", old, new)
    # a rotation that serves old and new together: the refusal names the new one, which then suffices
    refused = repo_key_plan(both, old_key)
    assert refused["install"] is False and f"--accept-repo-key {new} " in refused["error"]
    assert repo_key_plan(both, old_key, new)["install"] is True
    # a file with a key nobody named is refused even when the named key is in it
    smuggled = keys.gpg("--armor", "--export", new, other)
    assert repo_key_plan(smuggled, old_key, new)["install"] is False
    assert repo_key_plan(smuggled, "", new)["install"] is False
    assert repo_key_plan(other_key, "", other)["install"] is True


def test_a_damaged_keyring_or_answer_is_named(keys: Keys) -> None:
    _, key = keys.make("d <d@provisioner.invalid>")
    with pytest.raises(KubeConfigError, match="the node's keyring"):
        repo_key_plan(key, "garbage")
    with pytest.raises(KubeConfigError, match=r"what the repository serves at http://m\.invalid/Release\.key"):
        repo_key_plan("<html>", key, "", "http://m.invalid/Release.key")


def test_a_fingerprint_that_is_not_one_is_refused(keys: Keys) -> None:
    _, key = keys.make("third <third@provisioner.invalid>")
    with pytest.raises(KubeConfigError, match="not an OpenPGP key fingerprint"):
        repo_key_plan(key, "", "ABCD")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "check-mode placeholder",
        "<html>404 Not Found</html>",
        "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n!!!!\n-----END PGP PUBLIC KEY BLOCK-----\n",
    ],
)
def test_what_is_not_an_armored_key_is_named(text: str) -> None:
    with pytest.raises(KubeConfigError, match="signing key"):
        key_fingerprints(text)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_armored_bytes_give_fingerprints_or_a_clear_error(data: bytes) -> None:
    armored = (
        "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n"
        + base64.b64encode(data).decode()
        + "\n-----END PGP PUBLIC KEY BLOCK-----\n"
    )
    try:
        found = key_fingerprints(armored)
    except KubeConfigError as exc:
        assert "signing key" in str(exc)
    else:
        assert found and all(len(f) in (40, 64) for f in found)


def test_up_accept_repo_key_reaches_only_the_kube_packages_stage(tmp_path: Path) -> None:
    from provisioner.cli import _overrides, build_parser
    from provisioner.command.up import UpOptions, _stage_vars
    from provisioner.preflight import resolve_spec
    from provisioner.workspace import Workspace

    fpr = "5f2a 9c11 0b3d 44e8 a1c2 7d6e 90ab cdef 1234 5678"
    args = build_parser().parse_args(["--dir", str(tmp_path), "up", "--accept-repo-key", fpr])
    assert args.accept_repo_key == "5F2A9C110B3D44E8A1C27D6E90ABCDEF12345678"
    opts = UpOptions(accept_repo_key=args.accept_repo_key)
    spec, _ = resolve_spec(Workspace(tmp_path / "ws"), _overrides(args), None)
    assert _stage_vars("kube_packages", ["kube_packages"], False, spec, [], opts) == {
        "kube_packages_repo_key_fingerprint": args.accept_repo_key
    }
    assert _stage_vars("control_plane", ["control_plane"], False, spec, [], opts) is None
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--dir", str(tmp_path), "up", "--accept-repo-key", "not-hex"])
    assert exc.value.code == 2


def test_the_refusal_keeps_the_accept_command_within_what_up_shows_of_a_task_message(keys: Keys) -> None:
    # provision.py shows the first 400 characters of a failed task's message (ansible.py); the host
    # name goes in front of the role's text.
    old, old_key = keys.make("long old <old@provisioner.invalid>")
    new, new_key = keys.make("long new <new@provisioner.invalid>")
    url = "https://packages.mirror.example.internal:8443/kubernetes/core:/stable:/v1.37/deb/Release.key"
    error = "worker12: " + repo_key_plan(new_key, old_key, "", url)["error"]
    assert f"provision.py up --accept-repo-key {new} " in error[:400]
    assert f"Trusted {old}, served now {new} at {url}" in error


def test_an_upgrade_reads_the_target_minor_only_with_a_key_the_node_trusts_already(keys: Keys) -> None:
    from provisioner.kube.upgrade import repo_key_error

    url, keyring = "http://192.0.2.1/v1.37/deb/Release.key", "/etc/apt/keyrings/k.asc"
    fpr, armored = keys.make("up1 <up1@provisioner.invalid>")
    other, other_armored = keys.make("up2 <up2@provisioner.invalid>")
    assert repo_key_error(armored, armored, url, keyring) == ""
    # the node trusts more than the repository serves (a rotation's two keys): still fine
    assert repo_key_error(armored, armored + "\n" + other_armored, url, keyring) == ""
    said = repo_key_error(other_armored, armored, url, keyring)
    assert other in said and fpr in said and keyring in said and "nothing was changed" in said
    assert "no key" in repo_key_error(armored, "", url, keyring)
