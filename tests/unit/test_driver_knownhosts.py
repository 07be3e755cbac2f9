"""Tests of ddmdriver.knownhosts: host key checks against OpenSSH known_hosts files."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import os
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ddm.errors import HostKeyError
from ddmdriver.knownhosts import KnownHosts, fingerprint, known_hosts_name


def new_ed25519_key() -> paramiko.PKey:
    private = ed25519.Ed25519PrivateKey.generate()
    text = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    return paramiko.Ed25519Key(file_obj=io.StringIO(text))


def new_ecdsa_key() -> paramiko.PKey:
    return paramiko.ECDSAKey.generate()


def line(names: str, key: paramiko.PKey, marker: str = "") -> str:
    prefix = f"{marker} " if marker else ""
    return f"{prefix}{names} {key.get_name()} {key.get_base64()} comment\n"


def hashed(name: str, salt: bytes | None = None) -> str:
    salt = salt or os.urandom(20)
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def write(tmp_path: Path, text: str, name: str = "known_hosts") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_known_hosts_name_forms() -> None:
    assert known_hosts_name("h1.example", 22) == "h1.example"
    assert known_hosts_name("127.0.0.21", 2222) == "[127.0.0.21]:2222"


def test_fingerprint_matches_openssh_form() -> None:
    key = new_ed25519_key()
    expected = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")

    assert fingerprint(key) == f"SHA256:{expected}"
    assert "=" not in fingerprint(key)


def test_verify_plain_entry_accepted(tmp_path: Path) -> None:
    key = new_ed25519_key()
    path = write(tmp_path, line("h1.example,10.0.0.1", key))

    KnownHosts.load([path]).verify("h1.example", key, host="h1.example", port=22)
    KnownHosts.load([path]).verify("10.0.0.1", key, host="10.0.0.1", port=22)


def test_verify_bracketed_port_entry(tmp_path: Path) -> None:
    key = new_ed25519_key()
    path = write(tmp_path, line("[127.0.0.21]:2222", key))
    known = KnownHosts.load([path])

    known.verify("[127.0.0.21]:2222", key, host="127.0.0.21", port=2222)
    with pytest.raises(HostKeyError, match="unknown SSH host key"):
        known.verify("127.0.0.21", key, host="127.0.0.21", port=22)


def test_verify_hashed_entry(tmp_path: Path) -> None:
    key = new_ed25519_key()
    path = write(tmp_path, line(hashed("[127.0.0.21]:2222"), key))
    known = KnownHosts.load([path])

    known.verify("[127.0.0.21]:2222", key, host="127.0.0.21", port=2222)
    with pytest.raises(HostKeyError, match="unknown"):
        known.verify("[127.0.0.22]:2222", key, host="127.0.0.22", port=2222)


def test_verify_unknown_key_message(tmp_path: Path) -> None:
    key = new_ed25519_key()
    path = write(tmp_path, "")

    with pytest.raises(HostKeyError) as raised:
        KnownHosts.load([path]).verify("[127.0.0.21]:2222", key, host="127.0.0.21", port=2222)

    message = str(raised.value)
    assert "unknown SSH host key" in message
    assert "127.0.0.21" in message
    assert "2222" in message
    assert "ssh-ed25519" in message
    assert fingerprint(key) in message
    assert "ddminit --accept-host-key NAME=SHA256:" in message
    assert "ssh-keyscan -p 2222 127.0.0.21 >>" in message
    assert "\n" not in message


def test_verify_changed_key_message(tmp_path: Path) -> None:
    recorded = new_ed25519_key()
    presented = new_ed25519_key()
    path = write(tmp_path, "# header\n" + line("[127.0.0.21]:2222", recorded))

    with pytest.raises(HostKeyError) as raised:
        KnownHosts.load([path]).verify("[127.0.0.21]:2222", presented, host="127.0.0.21", port=2222)

    message = str(raised.value)
    assert "has changed" in message
    assert fingerprint(presented) in message
    assert fingerprint(recorded) in message
    assert f"{path}:2" in message


def test_verify_changed_key_of_other_type(tmp_path: Path) -> None:
    path = write(tmp_path, line("h1", new_ecdsa_key()))

    with pytest.raises(HostKeyError, match="has changed"):
        KnownHosts.load([path]).verify("h1", new_ed25519_key(), host="h1", port=22)


def test_verify_revoked_key_rejected(tmp_path: Path) -> None:
    key = new_ed25519_key()
    path = write(tmp_path, line("h1", key) + line("*", key, marker="@revoked"))

    with pytest.raises(HostKeyError, match="revoked"):
        KnownHosts.load([path]).verify("h1", key, host="h1", port=22)


def test_verify_cert_authority_line_not_a_host_key(tmp_path: Path) -> None:
    key = new_ed25519_key()
    path = write(tmp_path, line("*", key, marker="@cert-authority"))

    with pytest.raises(HostKeyError, match="unknown"):
        KnownHosts.load([path]).verify("h1", key, host="h1", port=22)


def test_verify_wildcard_and_negation(tmp_path: Path) -> None:
    key = new_ed25519_key()
    path = write(tmp_path, line("*.lab,!evil.lab", key))
    known = KnownHosts.load([path])

    known.verify("h1.lab", key, host="h1.lab", port=22)
    with pytest.raises(HostKeyError, match="unknown"):
        known.verify("evil.lab", key, host="evil.lab", port=22)


def test_load_several_files_and_missing(tmp_path: Path) -> None:
    first = new_ed25519_key()
    second = new_ed25519_key()
    path_a = write(tmp_path, line("h1", first), name="a")
    path_b = write(tmp_path, line("h2", second), name="b")

    known = KnownHosts.load([tmp_path / "missing", path_a, path_b])

    known.verify("h1", first, host="h1", port=22)
    known.verify("h2", second, host="h2", port=22)


def test_load_skips_malformed_lines(tmp_path: Path) -> None:
    key = new_ed25519_key()
    text = (
        "onlyonefield\n"
        "h1 ssh-ed25519 !!!notbase64!!!\n"
        "h1 sk-ssh-ed25519@openssh.com AAAAAAAA\n"
        "@bogus h1 ssh-ed25519 AAAA\n" + line("h1", key)
    )
    known = KnownHosts.load([write(tmp_path, text)])

    assert len(known.entries) == 1
    known.verify("h1", key, host="h1", port=22)


def test_host_key_algorithms_from_entries(tmp_path: Path) -> None:
    rsa = paramiko.RSAKey.generate(1024)
    text = line("h1", new_ed25519_key()) + line("h1", rsa) + line("h2", new_ecdsa_key())
    known = KnownHosts.load([write(tmp_path, text)])

    assert known.host_key_algorithms("h1") == ["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"]
    assert known.host_key_algorithms("h2") == ["ecdsa-sha2-nistp256"]
    assert known.host_key_algorithms("h3") == []


def test_load_unreadable_file_raises(tmp_path: Path) -> None:
    directory = tmp_path / "a-directory"
    directory.mkdir()

    with pytest.raises(HostKeyError, match="cannot read known_hosts"):
        KnownHosts.load([directory])
