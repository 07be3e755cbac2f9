"""Security checks that need no lab: file modes, key warnings, option validation, quoting."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ddm.errors import AuthenticationFailed, UsageError
from ddmdriver import ssh
from ddmdriver.engine import validate_volume_name
from ddminit.hostkeys import parse_accept_option
from tests.unit.cli_support import error_line, home_environ, invoke

HOSTILE_NAMES = (
    "a'b",
    'a"b',
    "a b",
    "a$(touch x)",
    "a`touch x`",
    "a;touch x",
    "a|b",
    "a&&b",
    "../etc",
    "-rf",
)


def write_key(path: Path, mode: int, password: bytes | None = None) -> Path:
    key = ed25519.Ed25519PrivateKey.generate()
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.OpenSSH, encryption))
    path.chmod(mode)
    return path


def test_config_written_with_mode_0600(tmp_path: Path) -> None:
    config = tmp_path / "ddm.yaml"
    config.write_text("version: 1\n")
    config.chmod(0o644)
    old_umask = os.umask(0)
    try:
        outcome = invoke("ddminit", ["--config", str(config), "--host", "a=ssh://root@a.example",
                                     "--yes"], home_environ(tmp_path))
    finally:
        os.umask(old_umask)

    assert outcome.status == 0, outcome.stderr
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert "a.example" in config.read_text()


def test_new_config_file_mode_0600(tmp_path: Path) -> None:
    environ = home_environ(tmp_path)

    outcome = invoke("ddminit", ["--host", "a=ssh://root@a.example", "--yes"], environ)

    path = Path(outcome.stdout.strip())
    assert outcome.status == 0, outcome.stderr
    assert path == tmp_path / ".config" / "ddm" / "config.yaml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_ddminit_warns_on_readable_key(tmp_path: Path) -> None:
    key = write_key(tmp_path / "id_ed25519", 0o644)

    outcome = invoke("ddminit", ["--config", str(tmp_path / "c.yaml"), "--identity-file", str(key),
                                 "--yes"], home_environ(tmp_path))

    assert outcome.status == 0, outcome.stderr
    assert f"identity file {key} is readable by group or others" in outcome.stderr
    assert f"chmod 600 {key}" in outcome.stderr


def test_ddminit_quiet_about_private_key(tmp_path: Path) -> None:
    key = write_key(tmp_path / "id_ed25519", 0o600)

    outcome = invoke("ddminit", ["--config", str(tmp_path / "c.yaml"), "--identity-file", str(key),
                                 "--yes"], home_environ(tmp_path))

    assert outcome.status == 0, outcome.stderr
    assert "readable" not in outcome.stderr


def test_load_key_warns_on_readable_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key = write_key(tmp_path / "id_ed25519", 0o640)

    with caplog.at_level("WARNING", logger="ddmdriver.ssh"):
        assert ssh._load_key(key, required=True) is not None

    assert f"SSH key file {key} is readable by group or others (mode 640)" in caplog.text
    assert f"chmod 600 {key}" in caplog.text


def test_encrypted_key_read_with_passphrase(tmp_path: Path) -> None:
    key = write_key(tmp_path / "locked", 0o600, password=b"correct horse")

    loaded = ssh._load_key(key, required=True, passphrase="correct horse")

    assert loaded is not None
    assert loaded.get_name() == "ssh-ed25519"


def test_encrypted_key_wrong_passphrase(tmp_path: Path) -> None:
    key = write_key(tmp_path / "locked", 0o600, password=b"correct horse")

    with pytest.raises(AuthenticationFailed) as raised:
        ssh._load_key(key, required=True, passphrase="battery staple")

    message = str(raised.value)
    assert f"cannot decrypt SSH key file {key}" in message
    assert "DDM_SSH_PASSPHRASE" in message
    assert "battery staple" not in message
    assert "correct horse" not in message


def test_passphrase_from_environment_hidden(tmp_path: Path) -> None:
    config_path = tmp_path / "c.yaml"
    config_path.write_text("hosts:\n  a: ssh://root@a.example:2222\n")
    from ddm.config import load_config

    config = load_config(config_path, {"HOME": str(tmp_path), "DDM_SSH_PASSPHRASE": "s3cret words"})
    target = ssh.resolve_target(config.host("a"), config)

    assert target.key_passphrase == "s3cret words"
    assert "s3cret" not in repr(target)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_volume_name_rejected(tmp_path: Path, name: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("hosts:\n  a: ssh://root@a.example\n  b: ssh://root@b.example\n")

    outcome = invoke("ddmctl", ["--config", str(config), "migrate", "--from", "a", "--to", "b",
                                "--volume", name, "--yes"], home_environ(tmp_path))

    line = error_line(outcome, "ddmctl")
    assert "invalid" in line
    with pytest.raises(UsageError):
        validate_volume_name(name)


@pytest.mark.parametrize(
    "socket_path",
    ["/run/docker.sock; touch /tmp/x", "/run/$(id).sock", "/run/a b.sock", "/run/'q'.sock"],
)
def test_hostile_docker_socket_rejected(tmp_path: Path, socket_path: str) -> None:
    outcome = invoke("ddminit", ["--config", str(tmp_path / "c.yaml"), "--host",
                                 "a=ssh://root@a.example", "--docker-socket", socket_path, "--yes"],
                     home_environ(tmp_path))

    assert "docker_socket" in error_line(outcome, "ddminit")
    assert not (tmp_path / "c.yaml").exists()


@pytest.mark.parametrize("url", ["ssh://root@a;touch x", "ssh://ro'ot@a.example",
                                 "ssh://root@$(id).example", "ssh://root@a.example:22;id"])
def test_hostile_host_url_rejected(tmp_path: Path, url: str) -> None:
    outcome = invoke("ddminit", ["--config", str(tmp_path / "c.yaml"), "--host", f"a={url}",
                                 "--yes"], home_environ(tmp_path))

    error_line(outcome, "ddminit")
    assert not (tmp_path / "c.yaml").exists()


def test_quote_command_runs_exact_argv(tmp_path: Path) -> None:
    marker = tmp_path / "injected"
    hostile = [f"a'b; touch {marker}", f"$(touch {marker})", f"`touch {marker}`", "x y", '"q"']

    command = ssh.quote_command(["printf", "%s\\n", *hostile])
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True)

    assert result.stdout.splitlines() == hostile
    assert not marker.exists()
    assert shlex.split(command) == ["printf", "%s\\n", *hostile]


@pytest.mark.parametrize("argv", [["ls", "a\nb"], ["ls", "a\rb"], ["ls;id"], ["$(id)"], []])
def test_quote_command_rejects_unsafe_argv(argv: list[str]) -> None:
    with pytest.raises(ValueError):
        ssh.quote_command(argv)


@pytest.mark.parametrize(
    "value",
    ["h1", "h1=", "h1=MD5:aa", "h1=SHA256:short", "=SHA256:" + "A" * 43, "h1=SHA256:" + "A" * 42 + "!"],
)
def test_accept_host_key_option_validated(value: str) -> None:
    with pytest.raises(UsageError, match="invalid --accept-host-key"):
        parse_accept_option(value)


def test_accept_host_key_option_parsed() -> None:
    fingerprint = "SHA256:" + "Ab+/" * 10 + "xyz"

    assert parse_accept_option(f"h1={fingerprint}") == ("h1", fingerprint)


def test_accept_host_key_unknown_host(tmp_path: Path) -> None:
    outcome = invoke("ddminit", ["--config", str(tmp_path / "c.yaml"), "--accept-host-key",
                                 "nope=SHA256:" + "A" * 43, "--yes"], home_environ(tmp_path))

    assert "unknown host 'nope'" in error_line(outcome, "ddminit")
    assert not (tmp_path / "c.yaml").exists()
