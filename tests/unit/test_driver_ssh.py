"""Tests of ddmdriver.ssh that need no SSH server: resolution, key files, quoting."""

from __future__ import annotations

import io
import logging
import shlex
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ddm.config import Config, config_from_dict
from ddm.errors import AuthenticationFailed, ConfigError, ConnectionFailed
from ddmdriver import ssh
from ddmdriver.ssh import SSHTarget, quote_command, resolve_target, validate_argv


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / ".ssh").mkdir()
    return tmp_path


def make_config(home: Path, hosts: dict[str, Any], ssh_config: str = "", **top: Any) -> Config:
    (home / ".ssh" / "config").write_text(ssh_config)
    environ = {"HOME": str(home), "USER": "operator"}
    return config_from_dict({"hosts": hosts, **top}, None, environ)


def write_private_key(path: Path, *, password: bytes | None = None, mode: int = 0o600) -> Path:
    encryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    data = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, encryption
    )
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_resolve_url_only(home: Path) -> None:
    config = make_config(home, {"h1": "ssh://root@127.0.0.21:2222"})

    target = resolve_target(config.host("h1"), config)

    assert target.hostname == "127.0.0.21"
    assert target.port == 2222
    assert target.user == "root"
    assert target.known_hosts_name == "[127.0.0.21]:2222"
    assert target.known_hosts_files == (home / ".ssh/known_hosts", home / ".ssh/known_hosts2")
    assert target.identity_files == tuple(
        home / ".ssh" / name for name in ("id_rsa", "id_ecdsa", "id_ed25519")
    )
    assert target.identity_files_explicit is False
    assert target.jumps == ()


def test_resolve_ssh_config_fills_gaps(home: Path) -> None:
    ssh_config = (
        "Host h1\n  HostName 127.0.0.21\n  Port 2222\n  User admin\n"
        "  IdentityFile ~/.ssh/lab_key\n  UserKnownHostsFile ~/.ssh/lab_known\n"
        "  ConnectTimeout 3\n"
    )
    config = make_config(home, {"old": "ssh://h1"}, ssh_config)

    target = resolve_target(config.host("old"), config)

    assert target.name == "old"
    assert target.hostname == "127.0.0.21"
    assert target.port == 2222
    assert target.user == "admin"
    assert target.identity_files == (home / ".ssh/lab_key",)
    assert target.known_hosts_files == (home / ".ssh/lab_known",)
    assert target.connect_timeout == 3.0


def test_resolve_url_wins_over_ssh_config(home: Path) -> None:
    config = make_config(home, {"h1": "ssh://root@h1:2200"}, "Host h1\n  Port 2222\n  User admin\n")

    target = resolve_target(config.host("h1"), config)

    assert target.port == 2200
    assert target.user == "root"


def test_resolve_user_falls_back_to_environ(home: Path) -> None:
    config = make_config(home, {"h1": "ssh://h1"})

    assert resolve_target(config.host("h1"), config).user == "operator"


def test_resolve_without_any_user_rejected(home: Path) -> None:
    (home / ".ssh" / "config").write_text("")
    config = config_from_dict({"hosts": {"h1": "ssh://h1"}}, None, {"HOME": str(home)})

    with pytest.raises(ConfigError, match="no SSH user"):
        resolve_target(config.host("h1"), config)


def test_resolve_ddm_overrides_per_host_then_global(home: Path) -> None:
    ssh_config = "Host *\n  IdentityFile ~/.ssh/from_ssh_config\n"
    config = make_config(
        home,
        {
            "h1": {"url": "ssh://h1", "identity_file": "~/h1_key", "known_hosts": "~/h1_known"},
            "h2": "ssh://h2",
        },
        ssh_config,
        identity_file="~/global_key",
        known_hosts="~/global_known",
    )

    first = resolve_target(config.host("h1"), config)
    second = resolve_target(config.host("h2"), config)

    assert first.identity_files == (home / "h1_key",)
    assert first.known_hosts_files == (home / "h1_known",)
    assert first.identity_files_explicit is True
    assert second.identity_files == (home / "global_key",)
    assert second.known_hosts_files == (home / "global_known",)


def test_resolve_agent_only_from_environ(home: Path) -> None:
    (home / ".ssh" / "config").write_text("")
    environ = {"HOME": str(home), "USER": "u", "SSH_AUTH_SOCK": "/tmp/agent.sock"}
    with_agent = config_from_dict({"hosts": {"h1": "ssh://h1"}}, None, environ)
    without = make_config(home, {"h1": "ssh://h1"})
    explicit_key = config_from_dict(
        {"hosts": {"h1": {"url": "ssh://h1", "identity_file": "/k"}}}, None, environ
    )

    assert resolve_target(with_agent.host("h1"), with_agent).agent_socket == "/tmp/agent.sock"
    assert resolve_target(without.host("h1"), without).agent_socket is None
    assert resolve_target(explicit_key.host("h1"), explicit_key).agent_socket is None


def test_resolve_host_key_alias(home: Path) -> None:
    config = make_config(home, {"h1": "ssh://h1:2222"}, "Host h1\n  HostKeyAlias lab-h1\n")

    assert resolve_target(config.host("h1"), config).known_hosts_name == "lab-h1"


def test_resolve_proxyjump_chain(home: Path) -> None:
    ssh_config = (
        "Host h2\n  HostName 127.0.0.22\n  Port 2222\n  ProxyJump j1,admin@j2:2022\n"
        "Host j1\n  HostName 127.0.0.31\n  User jumper\n  ProxyJump j0\n"
        "Host j2\n  HostName 127.0.0.32\n  ProxyJump never-followed\n"
        "Host j0\n  HostName 127.0.0.30\n"
    )
    config = make_config(home, {"h2": "ssh://root@h2"}, ssh_config)

    target = resolve_target(config.host("h2"), config)

    first, second = target.jumps
    assert (first.hostname, first.port, first.user) == ("127.0.0.31", 22, "jumper")
    assert [hop.hostname for hop in first.jumps] == ["127.0.0.30"]
    assert (second.hostname, second.port, second.user) == ("127.0.0.32", 2022, "admin")
    assert second.jumps == ()


def test_resolve_proxyjump_none(home: Path) -> None:
    config = make_config(home, {"h1": "ssh://h1"}, "Host h1\n  ProxyJump none\nHost *\n  ProxyJump j\n")

    assert resolve_target(config.host("h1"), config).jumps == ()


def test_resolve_proxyjump_loop_rejected(home: Path) -> None:
    config = make_config(home, {"h1": "ssh://h1"}, "Host h1\n  ProxyJump h1\n")

    with pytest.raises(ConfigError, match="ProxyJump"):
        resolve_target(config.host("h1"), config)


@pytest.mark.parametrize("spec", ["user@", "h:99999", "h:abc", "[::1"])
def test_resolve_invalid_proxyjump_rejected(home: Path, spec: str) -> None:
    config = make_config(home, {"h1": "ssh://h1"}, f"Host h1\n  ProxyJump {spec}\n")

    with pytest.raises(ConfigError):
        resolve_target(config.host("h1"), config)


def test_parse_jump_spec_forms() -> None:
    assert ssh._parse_jump_spec("h", "x") == (None, "h", None)
    assert ssh._parse_jump_spec("u@h:2222", "x") == ("u", "h", 2222)
    assert ssh._parse_jump_spec("ssh://u@h:22", "x") == ("u", "h", 22)
    assert ssh._parse_jump_spec("[::1]:2222", "x") == (None, "::1", 2222)


def test_resolve_invalid_port_in_ssh_config(home: Path) -> None:
    config = make_config(home, {"h1": "ssh://h1"}, "Host h1\n  Port twenty\n")

    with pytest.raises(ConfigError, match="invalid Port"):
        resolve_target(config.host("h1"), config)


def test_resolve_hostname_with_shell_characters_rejected(home: Path) -> None:
    config = make_config(home, {"h1": "ssh://h1"}, "Host h1\n  HostName 'a;b'\n")

    with pytest.raises(ConfigError, match="invalid HostName"):
        resolve_target(config.host("h1"), config)


def test_resolve_non_ssh_host_rejected(home: Path) -> None:
    config = make_config(home, {"t": "tcp://127.0.0.1:2375"})

    with pytest.raises(ConfigError, match="not an ssh://"):
        resolve_target(config.host("t"), config)


def test_load_key_valid(tmp_path: Path) -> None:
    path = write_private_key(tmp_path / "id")

    key = ssh._load_key(path, required=True)

    assert key is not None
    assert key.get_name() == "ssh-ed25519"


def test_load_key_missing_required(tmp_path: Path) -> None:
    with pytest.raises(AuthenticationFailed, match=str(tmp_path / "nope")):
        ssh._load_key(tmp_path / "nope", required=True)


def test_load_key_missing_default_skipped(tmp_path: Path) -> None:
    assert ssh._load_key(tmp_path / "id_rsa", required=False) is None


def test_load_key_invalid_names_path(tmp_path: Path) -> None:
    path = tmp_path / "garbage"
    path.write_text("this is not a key\n")
    path.chmod(0o600)

    with pytest.raises(AuthenticationFailed) as raised:
        ssh._load_key(path, required=True)

    assert str(path) in str(raised.value)
    assert "this is not a key" not in str(raised.value)


def test_load_key_encrypted_explains_agent(tmp_path: Path) -> None:
    path = write_private_key(tmp_path / "locked", password=b"secret")

    with pytest.raises(AuthenticationFailed, match="encrypted") as raised:
        ssh._load_key(path, required=True)

    assert "ssh-add" in str(raised.value)
    assert "secret" not in str(raised.value)


def test_load_key_unreadable_directory(tmp_path: Path) -> None:
    with pytest.raises(AuthenticationFailed, match="cannot read SSH key file"):
        ssh._load_key(tmp_path, required=True)


def test_load_key_warns_on_open_mode(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_private_key(tmp_path / "open", mode=0o644)

    with caplog.at_level(logging.WARNING, logger="ddmdriver.ssh"):
        ssh._load_key(path, required=True)

    assert any("readable by group or others" in record.message for record in caplog.records)


def test_load_key_private_mode_no_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_private_key(tmp_path / "closed", mode=0o600)

    with caplog.at_level(logging.WARNING, logger="ddmdriver.ssh"):
        ssh._load_key(path, required=True)

    assert not caplog.records


def test_quote_command_round_trip() -> None:
    argv = ["df", "-P", "-k", "/var/lib/docker/volumes/a b/$(rm -rf x)/'q'"]

    command = quote_command(argv)

    assert shlex.split(command) == argv
    assert "$(" not in command.replace("'/var/lib/docker/volumes/a b/$(rm -rf x)/'", "")


@pytest.mark.parametrize(
    "argv",
    [[], ["rm;ls"], ["$(id)"], ["df", "a\nb"], ["df", "a\x00b"], ["df", 7], ["x y"]],
)
def test_validate_argv_rejects(argv: list[Any]) -> None:
    with pytest.raises(ValueError):
        validate_argv(argv)


def test_validate_argv_accepts_paths() -> None:
    validate_argv(["/usr/bin/tar", "-C", "/var/lib/docker/volumes/x/_data", "-cf", "-", "."])


def test_connect_refused_raises_connection_failed(home: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    target = _local_target(home, port)

    with pytest.raises(ConnectionFailed, match=f"127.0.0.1:{port}"):
        ssh.connect(target)


def test_connect_non_ssh_server_raises_connection_failed(home: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def answer_http() -> None:
        connection, _ = listener.accept()
        connection.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")
        connection.close()

    server = threading.Thread(target=answer_http, daemon=True)
    server.start()
    try:
        with pytest.raises(ConnectionFailed, match="SSH handshake"):
            ssh.connect(_local_target(home, port, timeout=3.0))
    finally:
        server.join(timeout=5)
        listener.close()


def _local_target(home: Path, port: int, timeout: float = 2.0) -> SSHTarget:
    key = write_private_key(home / "key")
    return SSHTarget(
        name="local-test",
        hostname="127.0.0.1",
        port=port,
        user="nobody",
        identity_files=(key,),
        identity_files_explicit=True,
        known_hosts_files=(home / "known_hosts",),
        connect_timeout=timeout,
    )


def test_key_file_text_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_private_key(tmp_path / "id", mode=0o640)
    secret = path.read_text()

    with caplog.at_level(logging.DEBUG):
        ssh._load_key(path, required=True)

    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert secret.splitlines()[1] not in logged
    assert io.StringIO(logged).read().count("BEGIN") == 0


def test_resolve_proxycommand_rejected(home: Path) -> None:
    config = make_config(home, {"h1": "ssh://h1"}, "Host h1\n  ProxyCommand nc %h %p\n")

    with pytest.raises(ConfigError, match="ProxyCommand"):
        resolve_target(config.host("h1"), config)


def test_resolve_proxycommand_none_allowed(home: Path) -> None:
    config = make_config(home, {"h1": "ssh://h1"}, "Host h1\n  ProxyCommand none\n")

    assert resolve_target(config.host("h1"), config).jumps == ()


def test_connect_closed_before_banner_names_cause(home: Path) -> None:
    # A port forward in front of a stopped sshd accepts the connection and closes it at once.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def accept_and_close() -> None:
        connection, _ = listener.accept()
        connection.close()

    server = threading.Thread(target=accept_and_close, daemon=True)
    server.start()
    try:
        with pytest.raises(ConnectionFailed) as raised:
            ssh.connect(_local_target(home, port, timeout=3.0))
    finally:
        server.join(timeout=5)
        listener.close()

    message = str(raised.value)
    assert "closed the connection before it sent an SSH banner" in message
    assert "check that sshd runs on that host" in message
    assert "belongs to an SSH server" not in message


def test_handshake_reason_of_non_ssh_server() -> None:
    error = ssh.paramiko.SSHException('Indecipherable protocol version "HTTP/1.0 400"')

    assert ssh.handshake_reason(error) == 'Indecipherable protocol version "HTTP/1.0 400"'
    assert ssh.handshake_hint(error) == "check that the port belongs to an SSH server"


class ClosedTransport:
    """A paramiko Transport whose connection is gone, as after sshd stopped."""

    def open_session(self, timeout: float | None = None) -> None:
        raise ssh.paramiko.SSHException("SSH session not active")

    def is_active(self) -> bool:
        return False


def test_open_session_on_closed_connection(home: Path) -> None:
    connection = ssh.SSHConnection(_local_target(home, 22), [ClosedTransport()])

    with pytest.raises(ConnectionFailed) as raised:
        connection.open_session()

    message = str(raised.value)
    assert "the SSH connection was closed" in message
    assert "MaxSessions" not in message
