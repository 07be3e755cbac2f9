"""Tests of ddm.config: loading, validating and saving the configuration file."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from ddm import config as config_module
from ddm.config import (
    DEFAULT_DOCKER_SOCKET,
    LOCAL_HOST,
    Config,
    comment_lines,
    config_dir,
    data_dir,
    default_config_path,
    load_config,
    parse_host_url,
    redact_password,
    save_config,
)
from ddm.errors import ConfigError, ExitStatus
from ddm.store import default_store_path

pytestmark = pytest.mark.usefixtures("no_network")

MIB = 1024 * 1024


def write_config(directory: Path, text: str | bytes, name: str = "config.yaml") -> Path:
    path = directory / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def load_text(home: Path, environ: dict[str, str], text: str | bytes) -> Config:
    return load_config(write_config(home, text), environ)


def rejection(home: Path, environ: dict[str, str], text: str | bytes) -> ConfigError:
    """Load `text` as a config file, expecting a ConfigError, and return the error."""
    with pytest.raises(ConfigError) as caught:
        load_text(home, environ, text)
    return caught.value


# Valid files


VALID_URLS = [
    # (url, scheme, user, hostname, port, socket_path)
    ("ssh://old.example", "ssh", None, "old.example", None, None),
    ("ssh://root@old.example", "ssh", "root", "old.example", None, None),
    ("ssh://deploy@old.example:2222", "ssh", "deploy", "old.example", 2222, None),
    ("ssh://root@192.0.2.10:22", "ssh", "root", "192.0.2.10", 22, None),
    ("ssh://root@[2001:db8::1]:22", "ssh", "root", "2001:db8::1", 22, None),
    ("ssh://backup_host", "ssh", None, "backup_host", None, None),
    ("ssh://h:65535", "ssh", None, "h", 65535, None),
    ("ssh://h:1", "ssh", None, "h", 1, None),
    ("unix:///var/run/docker.sock", "unix", None, None, None, "/var/run/docker.sock"),
    ("unix:///run/user/1000/docker.sock", "unix", None, None, None, "/run/user/1000/docker.sock"),
    ("tcp://docker.example:2376", "tcp", None, "docker.example", 2376, None),
    ("npipe:////./pipe/docker_engine", "npipe", None, None, None, "//./pipe/docker_engine"),
]


@pytest.mark.parametrize(("url", "scheme", "user", "hostname", "port", "socket_path"), VALID_URLS)
def test_host_url_forms(
    home: Path, environ: dict[str, str], url: str, scheme: str, user: str | None,
    hostname: str | None, port: int | None, socket_path: str | None,
) -> None:
    config = load_text(home, environ, f"version: 1\nhosts:\n  h1:\n    url: '{url}'\n")
    host = config.host("h1")

    assert host.name == "h1"
    assert host.url == url
    assert host.scheme == scheme
    assert host.user == user
    assert host.hostname == hostname
    assert host.port == port
    assert host.socket_path == socket_path
    assert host.docker_socket == DEFAULT_DOCKER_SOCKET


def test_full_config_fields(home: Path, environ: dict[str, str]) -> None:
    text = """\
version: 1
identity_file: ~/.ssh/id_ed25519
known_hosts: ~/.ssh/known_hosts
ssh_config: /etc/ddm/ssh_config
hosts:
  old:
    url: ssh://root@old.example:22
    docker_socket: /run/docker.sock
    identity_file: ~/.ssh/old_key
    known_hosts: ~/.ssh/known_hosts_old
  new: ssh://root@new.example
defaults:
  verify: quick
"""
    config = load_text(home, environ, text)

    assert config.path == home / "config.yaml"
    assert sorted(config.hosts) == ["local", "new", "old"]
    assert config.identity_file == home / ".ssh" / "id_ed25519"
    assert config.known_hosts == home / ".ssh" / "known_hosts"
    assert config.ssh_config == Path("/etc/ddm/ssh_config")
    assert config.defaults.verify == "quick"
    old = config.host("old")
    assert old.docker_socket == "/run/docker.sock"
    assert old.identity_file == home / ".ssh" / "old_key"
    assert old.known_hosts == home / ".ssh" / "known_hosts_old"
    new = config.host("new")
    assert new.url == "ssh://root@new.example"
    assert new.identity_file is None


def test_tilde_expands_against_environ_home(
    home: Path, environ: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", "/nonexistent-real-home")
    text = "identity_file: '~'\nknown_hosts: ~/kh\nssh_config: ~other/x\n"
    config = load_text(home, environ, text)

    assert config.identity_file == home
    assert config.known_hosts == home / "kh"
    assert config.ssh_config == Path("~other/x")


def test_empty_file_has_only_local(home: Path, environ: dict[str, str]) -> None:
    config = load_text(home, environ, "")

    assert list(config.hosts) == [LOCAL_HOST]
    assert config.defaults.verify == "full"
    assert config.identity_file is None


def test_local_defaults_to_docker_socket(home: Path, environ: dict[str, str]) -> None:
    local = load_config(None, environ).host(LOCAL_HOST)

    assert local.scheme == "unix"
    assert local.socket_path == DEFAULT_DOCKER_SOCKET
    assert local.url == f"unix://{DEFAULT_DOCKER_SOCKET}"


def test_local_honours_docker_host(home: Path, environ: dict[str, str]) -> None:
    environ["DOCKER_HOST"] = "ssh://docker@engine.example:2200"
    config = load_text(home, environ, "hosts:\n  h1: ssh://h1.example\n")
    local = config.host(LOCAL_HOST)

    assert local.scheme == "ssh"
    assert local.user == "docker"
    assert local.hostname == "engine.example"
    assert local.port == 2200
    assert sorted(config.hosts) == ["h1", "local"]


def test_invalid_docker_host_named(home: Path, environ: dict[str, str]) -> None:
    environ["DOCKER_HOST"] = "bogus://engine"

    with pytest.raises(ConfigError) as caught:
        load_config(None, environ)

    assert "DOCKER_HOST" in str(caught.value)
    assert "'bogus'" in str(caught.value)


def test_missing_default_file_gives_local_only(home: Path, environ: dict[str, str]) -> None:
    config = load_config(None, environ)

    assert config.path is None
    assert list(config.hosts) == [LOCAL_HOST]


def test_config_found_under_xdg_config_home(home: Path, environ: dict[str, str]) -> None:
    xdg = home / "xdg-config"
    (xdg / "ddm").mkdir(parents=True)
    write_config(xdg / "ddm", "hosts:\n  h1: ssh://h1.example\n")
    environ["XDG_CONFIG_HOME"] = str(xdg)

    config = load_config(None, environ)

    assert config.path == xdg / "ddm" / "config.yaml"
    assert "h1" in config.hosts


def test_config_found_under_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", "/nonexistent-real-xdg")
    (home / ".config" / "ddm").mkdir(parents=True)
    write_config(home / ".config" / "ddm", "hosts:\n  h2: ssh://h2.example\n")

    config = load_config(None, {"HOME": str(home)})

    assert config.path == home / ".config" / "ddm" / "config.yaml"
    assert "h2" in config.hosts


def test_ddm_config_overrides_xdg(home: Path, environ: dict[str, str]) -> None:
    (home / ".config" / "ddm").mkdir(parents=True)
    write_config(home / ".config" / "ddm", "hosts:\n  xdg: ssh://xdg.example\n")
    explicit = write_config(home, "hosts:\n  explicit: ssh://explicit.example\n", "other.yaml")
    environ["DDM_CONFIG"] = str(explicit)

    config = load_config(None, environ)

    assert config.path == explicit
    assert "explicit" in config.hosts
    assert "xdg" not in config.hosts


def test_explicit_missing_file_rejected(home: Path, environ: dict[str, str]) -> None:
    missing = home / "missing.yaml"

    with pytest.raises(ConfigError) as caught:
        load_config(missing, environ)

    assert caught.value.exit_status == ExitStatus.USAGE
    assert str(missing) in str(caught.value)


def test_ddm_config_missing_file_rejected(home: Path, environ: dict[str, str]) -> None:
    environ["DDM_CONFIG"] = str(home / "missing.yaml")

    with pytest.raises(ConfigError) as caught:
        load_config(None, environ)

    assert "missing.yaml" in str(caught.value)


def test_directory_paths_from_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/nonexistent-real-home")
    environ = {"HOME": "/h", "XDG_CONFIG_HOME": "/c", "XDG_DATA_HOME": "/d"}

    assert config_dir(environ) == Path("/c/ddm")
    assert data_dir(environ) == Path("/d/ddm")
    assert default_config_path(environ) == Path("/c/ddm/config.yaml")
    assert default_store_path(environ) == Path("/d/ddm/tasks.db")
    assert config_dir({"HOME": "/h"}) == Path("/h/.config/ddm")
    assert data_dir({"HOME": "/h"}) == Path("/h/.local/share/ddm")
    assert default_store_path({"HOME": "/h", "DDM_STATE_DB": "/s.db"}) == Path("/s.db")


def test_missing_home_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/nonexistent-real-home")

    with pytest.raises(ConfigError) as caught:
        load_config(None, {})

    assert caught.value.exit_status == ExitStatus.USAGE
    assert "HOME" in str(caught.value)


def test_unknown_host_lists_known(home: Path, environ: dict[str, str]) -> None:
    config = load_text(home, environ, "hosts:\n  old: ssh://old.example\n")

    with pytest.raises(ConfigError) as caught:
        config.host("nosuch")

    message = str(caught.value)
    assert "'nosuch'" in message
    assert "local, old" in message
    assert "ddminit --host nosuch=URL" in message


def test_unknown_huge_host_name_shortened(home: Path, environ: dict[str, str]) -> None:
    config = load_config(None, environ)

    with pytest.raises(ConfigError) as caught:
        config.host("x" * MIB)

    assert len(str(caught.value)) < 500
    assert "xxxx" in str(caught.value)


# Saving


def test_save_round_trip(home: Path, environ: dict[str, str]) -> None:
    text = """\
identity_file: ~/.ssh/id_ed25519
known_hosts: ~/.ssh/known_hosts
hosts:
  old:
    url: ssh://root@old.example:2222
    docker_socket: /run/docker.sock
    identity_file: /keys/old
  new: tcp://new.example:2376
  sock: unix:///run/user/1000/docker.sock
defaults:
  verify: none
"""
    original = load_text(home, environ, text)
    saved_path = home / "saved" / "config.yaml"

    save_config(original, saved_path)
    reloaded = load_config(saved_path, environ)

    assert reloaded.hosts == original.hosts
    assert reloaded.identity_file == original.identity_file
    assert reloaded.known_hosts == original.known_hosts
    assert reloaded.ssh_config == original.ssh_config
    assert reloaded.defaults == original.defaults
    assert reloaded.path == saved_path


def test_save_mode_0600(home: Path, environ: dict[str, str]) -> None:
    config = load_text(home, environ, "hosts:\n  h1: ssh://h1.example\n")
    path = home / "out.yaml"
    old_umask = os.umask(0)
    try:
        save_config(config, path)
    finally:
        os.umask(old_umask)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_save_replaces_file_atomically(home: Path, environ: dict[str, str]) -> None:
    config = load_text(home, environ, "hosts:\n  h1: ssh://h1.example\n")
    path = write_config(home, "old content\n", "out.yaml")
    os.chmod(path, 0o644)
    old_inode = path.stat().st_ino

    save_config(config, path)

    assert path.stat().st_ino != old_inode
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "h1" in load_config(path, environ).hosts
    assert sorted(entry.name for entry in home.iterdir()) == ["config.yaml", "out.yaml"]


def test_save_failure_keeps_old_file(
    home: Path, environ: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_text(home, environ, "hosts:\n  h1: ssh://h1.example\n")
    path = write_config(home, "version: 1\n", "out.yaml")

    def failing_replace(source: str, target: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(config_module.os, "replace", failing_replace)
    with pytest.raises(ConfigError) as caught:
        save_config(config, path)

    assert caught.value.exit_status == ExitStatus.USAGE
    assert "No space left on device" in str(caught.value)
    assert path.read_text() == "version: 1\n"
    assert sorted(entry.name for entry in home.iterdir()) == ["config.yaml", "out.yaml"]


def test_save_special_file_rejected(home: Path, environ: dict[str, str]) -> None:
    config = load_config(None, environ)
    fifo = home / "fifo.yaml"
    os.mkfifo(fifo)
    (home / "dir.yaml").mkdir()

    for target in (fifo, home / "dir.yaml"):
        with pytest.raises(ConfigError) as caught:
            save_config(config, target)
        assert "not a regular file" in str(caught.value)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert (home / "dir.yaml").is_dir()
    assert sorted(entry.name for entry in home.iterdir()) == ["dir.yaml", "fifo.yaml"]


COMMENTED_DOCUMENTS = [
    # (case id, YAML text, lines with a comment)
    ("none", "hosts:\n  a: tcp://h:1\n", []),
    ("empty", "", []),
    ("only-comment", "# nothing yet\n", [1]),
    ("trailing", "version: 1 # v\n", [1]),
    ("quoted-hash", "known_hosts: 'a #b'  # c\n", [1]),
    ("plain-hash", "known_hosts: a#b\n", []),
    ("flow-mapping", "hosts: {a: tcp://h:1, # first\n  b: tcp://h:2}\n", [1]),
    ("block-scalar", "x: |\n  # text\n# comment\n", [3]),
]


@pytest.mark.parametrize("text, expected", [case[1:] for case in COMMENTED_DOCUMENTS],
                         ids=[case[0] for case in COMMENTED_DOCUMENTS])
def test_comment_lines(text: str, expected: list[int]) -> None:
    assert comment_lines(text) == expected


def test_save_writes_through_symlink(home: Path, environ: dict[str, str]) -> None:
    config = load_text(home, environ, "hosts:\n  h1: ssh://h1.example\n")
    (home / "real").mkdir()
    real = write_config(home / "real", "version: 1\n", "real.yaml")
    os.chmod(real, 0o644)
    link = home / "link.yaml"
    link.symlink_to(Path("real") / "real.yaml")

    written = save_config(config, link)

    assert written == real
    assert os.readlink(link) == str(Path("real") / "real.yaml")
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
    assert "h1" in load_config(real, environ).hosts
    assert sorted(entry.name for entry in (home / "real").iterdir()) == ["real.yaml"]


def test_save_dangling_symlink_creates_target(home: Path, environ: dict[str, str]) -> None:
    config = load_text(home, environ, "hosts:\n  h1: ssh://h1.example\n")
    link = home / "link.yaml"
    link.symlink_to(home / "missing.yaml")

    written = save_config(config, link)

    assert written == home / "missing.yaml"
    assert link.is_symlink()
    assert "h1" in load_config(home / "missing.yaml", environ).hosts


def test_save_symlink_loop_rejected(home: Path, environ: dict[str, str]) -> None:
    config = load_config(None, environ)
    (home / "a.yaml").symlink_to(home / "b.yaml")
    (home / "b.yaml").symlink_to(home / "a.yaml")

    with pytest.raises(ConfigError) as caught:
        save_config(config, home / "a.yaml")

    assert "symbolic links form a loop" in str(caught.value)
    assert os.readlink(home / "a.yaml") == str(home / "b.yaml")
    assert os.readlink(home / "b.yaml") == str(home / "a.yaml")


def test_save_symlink_to_directory_rejected(home: Path, environ: dict[str, str]) -> None:
    config = load_config(None, environ)
    (home / "dir").mkdir()
    (home / "link.yaml").symlink_to(home / "dir")

    with pytest.raises(ConfigError) as caught:
        save_config(config, home / "link.yaml")

    assert "not a regular file" in str(caught.value)
    assert list((home / "dir").iterdir()) == []
    assert (home / "link.yaml").is_symlink()


def test_save_parent_is_file(home: Path, environ: dict[str, str]) -> None:
    config = load_config(None, environ)
    (home / "parent").write_text("a file\n")

    with pytest.raises(ConfigError) as caught:
        save_config(config, home / "parent" / "config.yaml")

    assert "cannot write config file" in str(caught.value)
    assert (home / "parent").read_text() == "a file\n"


def test_save_omits_local_host(home: Path, environ: dict[str, str]) -> None:
    config = load_text(home, environ, "hosts:\n  h1: ssh://h1.example\n")
    path = home / "out.yaml"

    save_config(config, path)

    assert "local" not in path.read_text()


# Rejections: each raises ConfigError (exit status 2) naming the offending value.


REJECTED_DOCUMENTS = [
    # (case id, YAML text, text the message must contain)
    ("unknown top key", "colour: blue\n", "'colour'"),
    ("unknown host key", "hosts:\n  h1:\n    url: ssh://h1\n    port: 22\n", "'port'"),
    ("unknown defaults key", "defaults:\n  retries: 3\n", "'retries'"),
    ("password key", "hosts:\n  h1:\n    url: ssh://h1\n    password: x\n", "'password'"),
    ("version string", "version: '1'\n", "'1'"),
    ("version bool", "version: true\n", "True"),
    ("version two", "version: 2\n", "version 2"),
    ("hosts list", "hosts:\n  - ssh://h1\n", "'hosts'"),
    ("hosts string", "hosts: h1\n", "'hosts'"),
    ("hosts empty list", "hosts: []\n", "'hosts'"),
    ("hosts zero", "hosts: 0\n", "'hosts'"),
    ("hosts false", "hosts: false\n", "'hosts'"),
    ("host int", "hosts:\n  h1: 5\n", "'h1'"),
    ("host list", "hosts:\n  h1: [ssh://h1]\n", "'h1'"),
    ("host null", "hosts:\n  h1:\n", "'h1'"),
    ("host without url", "hosts:\n  h1:\n    docker_socket: /run/docker.sock\n", "'url'"),
    ("url int", "hosts:\n  h1:\n    url: 22\n", "'h1'"),
    ("url empty", "hosts:\n  h1: ''\n", "'h1'"),
    ("defaults list", "defaults: [full]\n", "'defaults'"),
    ("verify unknown", "defaults:\n  verify: fast\n", "'fast'"),
    ("verify null", "defaults:\n  verify:\n", "None"),
    ("identity_file int", "identity_file: 5\n", "identity_file 5"),
    ("identity_file empty", "identity_file: ''\n", "identity_file ''"),
    ("identity_file nul", 'identity_file: "a\\0b"\n', "identity_file 'a\\x00b'"),
    ("known_hosts list", "known_hosts: [a, b]\n", "known_hosts ['a', 'b']"),
    ("ssh_config mapping", "ssh_config: {a: 1}\n", "ssh_config {'a': 1}"),
    ("host identity_file bool", "hosts:\n  h1:\n    url: ssh://h1\n    identity_file: true\n",
     "identity_file True"),
    # Host names: the keys under `hosts`.
    ("host name dash", "hosts:\n  -h1: ssh://h1\n", "'-h1'"),
    ("host name space", "hosts:\n  h 1: ssh://h1\n", "'h 1'"),
    ("host name slash", "hosts:\n  h1/x: ssh://h1\n", "'h1/x'"),
    ("host name newline", 'hosts:\n  "h1\\n": ssh://h1\n', "'h1\\n'"),
    ("host name empty", "hosts:\n  '': ssh://h1\n", "''"),
    ("host name int", "hosts:\n  1: ssh://h1\n", "host name 1"),
    ("host name null", "hosts:\n  ~: ssh://h1\n", "host name None"),
    ("host name unicode", "hosts:\n  hôte: ssh://h1\n", "'hôte'"),
    ("host name 64 chars", f"hosts:\n  {'h' * 64}: ssh://h1\n", "'hhhh"),
    # URLs.
    ("scheme http", "hosts:\n  h1: http://h1\n", "'http'"),
    ("scheme missing", "hosts:\n  h1: h1.example\n", "''"),
    ("ssh no host", "hosts:\n  h1: ssh://\n", "'ssh://'"),
    ("ssh only user", "hosts:\n  h1: ssh://root@\n", "'ssh://root@'"),
    ("ssh path", "hosts:\n  h1: ssh://h1/var\n", "'ssh://h1/var'"),
    ("ssh query", "hosts:\n  h1: ssh://h1?x=1\n", "'ssh://h1?x=1'"),
    ("ssh fragment", "hosts:\n  h1: ssh://h1#f\n", "'ssh://h1#f'"),
    ("ssh opaque", "hosts:\n  h1: ssh:h1\n", "'ssh:h1'"),
    ("url space", "hosts:\n  h1: 'ssh://h 1'\n", "'ssh://h 1'"),
    ("url tab", 'hosts:\n  h1: "ssh://h1\\t"\n', "'ssh://h1\\t'"),
    ("ipv6 unclosed", "hosts:\n  h1: 'ssh://[::1'\n", "'ssh://[::1'"),
    ("ipv6 invalid", "hosts:\n  h1: 'ssh://[zzz]:22'\n", "'ssh://[zzz]:22'"),
    ("hostname dash", "hosts:\n  h1: ssh://-oProxyCommand=x\n", "'-oproxycommand=x'"),
    ("hostname bang", "hosts:\n  h1: ssh://ex!ample\n", "'ex!ample'"),
    ("hostname percent", "hosts:\n  h1: ssh://h%00\n", "'h%00'"),
    ("hostname empty label", "hosts:\n  h1: ssh://a..b\n", "'a..b'"),
    ("hostname unicode", "hosts:\n  h1: ssh://hôte.example\n", "'hôte.example'"),
    ("hostname 254 chars", f"hosts:\n  h1: ssh://{'a.' * 126}ab\n", "'a.a.a."),
    ("user invalid", "hosts:\n  h1: ssh://r$t@h1\n", "'r$t'"),
    ("user empty", "hosts:\n  h1: ssh://@h1\n", "user name ''"),
    ("user 33 chars", f"hosts:\n  h1: ssh://{'u' * 33}@h1\n", "'uuuu"),
    ("tcp no port", "hosts:\n  h1: tcp://h1\n", "'tcp://h1'"),
    ("unix no path", "hosts:\n  h1: unix://\n", "'unix://'"),
    ("unix relative", "hosts:\n  h1: unix://docker.sock\n", "'unix://docker.sock'"),
    ("unix query", "hosts:\n  h1: unix:///run/docker.sock?x=1\n", "'unix:///run/docker.sock?x=1'"),
    # Ports.
    ("port 0", "hosts:\n  h1: ssh://h1:0\n", "'ssh://h1:0'"),
    ("port 65536", "hosts:\n  h1: ssh://h1:65536\n", "'ssh://h1:65536'"),
    ("port negative", "hosts:\n  h1: ssh://h1:-1\n", "'ssh://h1:-1'"),
    ("port word", "hosts:\n  h1: ssh://h1:ssh\n", "'ssh://h1:ssh'"),
    ("port huge", "hosts:\n  h1: ssh://h1:99999999999999999999\n",
     "'ssh://h1:99999999999999999999'"),
    ("tcp port 0", "hosts:\n  h1: tcp://h1:0\n", "'tcp://h1:0'"),
    # docker_socket.
    ("socket relative", "hosts:\n  h1:\n    url: ssh://h1\n    docker_socket: docker.sock\n",
     "'docker.sock'"),
    ("socket space", "hosts:\n  h1:\n    url: ssh://h1\n    docker_socket: /run/d s\n",
     "'/run/d s'"),
    ("socket semicolon", "hosts:\n  h1:\n    url: ssh://h1\n    docker_socket: /run/d;id\n",
     "'/run/d;id'"),
    ("socket root", "hosts:\n  h1:\n    url: ssh://h1\n    docker_socket: /\n", "'/'"),
    ("socket int", "hosts:\n  h1:\n    url: ssh://h1\n    docker_socket: 5\n", "docker_socket 5"),
    ("socket newline", 'hosts:\n  h1:\n    url: ssh://h1\n    docker_socket: "/run/d\\n"\n',
     "'/run/d\\n'"),
    # Parse errors and documents that are not a mapping.
    ("top level list", "- hosts\n", "not list"),
    ("top level string", "hosts\n", "not str"),
    ("top level int", "42\n", "not int"),
    ("unclosed bracket", "hosts: [\n", "line 2"),
    ("tab indent", "hosts:\n\th1: ssh://h1\n", "line 2"),
    ("unclosed quote", "version: '1\n", "invalid YAML"),
    ("undefined alias", "hosts: *nothing\n", "alias"),
    ("two documents", "version: 1\n---\nversion: 1\n", "single document"),
    ("python object tag", "version: !!python/object:os.system x\n", "python/object"),
    ("python apply tag", "version: !!python/object/apply:os.system ['true']\n",
     "python/object/apply"),
    ("python name tag", "version: !!python/name:os.system ''\n", "python/name"),
    ("unhashable key", "{[1]: 2}\n", "unhashable"),
    ("invalid date", "version: 2001-13-45\n", "cannot be converted"),
    ("int tag word", "version: !!int abc\n", "cannot be converted"),
    ("float tag word", "version: !!float abc\n", "cannot be converted"),
    ("timestamp tag word", "version: !!timestamp x\n", "cannot be converted"),
    ("int over digit limit", f"version: {'9' * 5000}\n", "cannot be converted"),
    ("control character", "version: 1\x07\n", "special characters"),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [pytest.param(text, expected, id=case) for case, text, expected in REJECTED_DOCUMENTS],
)
def test_rejected_document(home: Path, environ: dict[str, str], text: str, expected: str) -> None:
    error = rejection(home, environ, text)

    assert error.exit_status == ExitStatus.USAGE
    assert expected in str(error)
    assert "\n" not in str(error)


def test_password_rejected_not_echoed(home: Path, environ: dict[str, str]) -> None:
    error = rejection(home, environ, "hosts:\n  h1: ssh://root:hunter2@h1.example\n")

    assert error.exit_status == ExitStatus.USAGE
    assert "password" in str(error)
    assert "'h1'" in str(error)
    assert "hunter2" not in str(error)


@pytest.mark.parametrize(
    "url",
    [
        "ssh://root:hunter2@-bad",
        "ssh://root:hunter2@h1:0",
        "ssh://root:hunter2@h1:x",
        "ssh://root:hunter2@",
        "ssh://root:hunter2@h1/path",
        "ssh://root:hunter2@[zz",
        "ssh://root:hunter2@h 1",
        "ftp://root:hunter2@h1",
        "tcp://root:hunter2@h1",
        "ssh://root:hunt@er2@h1",
    ],
)
def test_password_never_echoed(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_host_url("h1", url)

    assert "hunter2" not in str(caught.value)
    assert "er2" not in str(caught.value)
    assert "'h1'" in str(caught.value)


def test_non_utf8_rejected(home: Path, environ: dict[str, str]) -> None:
    error = rejection(home, environ, b"version: 1\nhosts:\n  h\xf4te: ssh://h1\n")

    assert error.exit_status == ExitStatus.USAGE
    assert "not UTF-8 at byte 21" in str(error)
    assert str(home / "config.yaml") in str(error)


def test_directory_as_config_rejected(home: Path, environ: dict[str, str]) -> None:
    (home / "dir.yaml").mkdir()

    with pytest.raises(ConfigError) as caught:
        load_config(home / "dir.yaml", environ)

    assert "dir.yaml" in str(caught.value)


@pytest.mark.parametrize(
    ("opening", "closing", "depth"),
    [
        ("{a: ", "}", 100_000),
        # PyYAML scans nested '[' in quadratic time, so this depth is just past the limit.
        ("[", "]", 600),
    ],
)
def test_deep_nesting_rejected(
    home: Path, environ: dict[str, str], opening: str, closing: str, depth: int
) -> None:
    error = rejection(home, environ, "version: " + opening * depth + "1" + closing * depth + "\n")

    assert error.exit_status == ExitStatus.USAGE
    assert "nested too deeply" in str(error)


def alias_bomb(indent: str) -> str:
    """Return a YAML block list of 10 anchored levels, each 10 aliases of the level below.

    Expanded, the last level contains 10**10 strings ("billion laughs"). PyYAML builds shared
    references instead, so only code that walks the value (such as repr) would explode.
    """
    lols = ", ".join(["lol"] * 10)
    lines = [f"{indent}- &a0 [{lols}]"]
    for level in range(1, 10):
        aliases = ", ".join([f"*a{level - 1}"] * 10)
        lines.append(f"{indent}- &a{level} [{aliases}]")
    return "\n".join(lines) + "\n"


ALIAS_BOMBS = [
    # (case id, YAML with the bomb as a value, text the message must contain)
    ("version", "version:\n" + alias_bomb("  "), "unsupported config version [[...]"),
    ("identity_file", "identity_file:\n" + alias_bomb("  "), "invalid identity_file [[...]"),
    ("verify", "defaults:\n  verify:\n" + alias_bomb("    "), "invalid defaults.verify [[...]"),
    ("docker_socket",
     "hosts:\n  h1:\n    url: ssh://h1\n    docker_socket:\n" + alias_bomb("      "),
     "invalid docker_socket [[...]"),
    ("url", "hosts:\n  h1:\n    url:\n" + alias_bomb("      "), "invalid URL for host 'h1'"),
    ("hosts", "hosts:\n" + alias_bomb("  "), "invalid 'hosts'"),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [pytest.param(text, expected, id=case) for case, text, expected in ALIAS_BOMBS],
)
def test_alias_bomb_fast(home: Path, environ: dict[str, str], text: str, expected: str) -> None:
    started = time.monotonic()

    error = rejection(home, environ, text)

    assert time.monotonic() - started < 5
    assert expected in str(error)
    assert len(str(error)) < 500


HUGE_DOCUMENTS = [
    # (case id, YAML with a 1 MiB value, text the message must contain)
    ("host name", "hosts:\n  ? {big}\n  : ssh://h1\n", "invalid host name 'xxxx"),
    ("url", "hosts:\n  h1: ssh://{big}\n", "invalid URL for host 'h1'"),
    ("identity_file", "identity_file: /{big}\n", "invalid identity_file '/xxxx"),
    ("docker_socket", "hosts:\n  h1:\n    url: ssh://h1\n    docker_socket: /{big}\n",
     "invalid docker_socket '/xxxx"),
    ("unknown key", "? {big}\n: 1\n", "unknown key 'xxxx"),
    ("verify", "defaults:\n  verify: {big}\n", "invalid defaults.verify 'xxxx"),
]


@pytest.mark.parametrize(
    ("template", "expected"),
    [pytest.param(template, expected, id=case) for case, template, expected in HUGE_DOCUMENTS],
)
def test_huge_value_rejected_briefly(
    home: Path, environ: dict[str, str], template: str, expected: str
) -> None:
    error = rejection(home, environ, template.format(big="x" * MIB))

    assert error.exit_status == ExitStatus.USAGE
    assert expected in str(error)
    assert len(str(error)) < 1000


def test_parse_host_url_names_host() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_host_url("h1", "ftp://h1")

    assert "'h1'" in str(caught.value)
    assert "'ftp'" in str(caught.value)


def test_invalid_yaml_names_next_step(home: Path, environ: dict[str, str]) -> None:
    error = rejection(home, environ, "hosts: [\n")

    assert "invalid YAML" in str(error)
    assert error.hint == "fix the file there, or write a new one with 'ddminit'"


@pytest.mark.parametrize("url, secret", [
    ("ssh://root:pw@h1", "pw"),
    ("ssh://root:ab/cd@127.0.0.21", "ab/cd"),
    ("ssh://root:s?cret#x@127.0.0.21", "s?cret#x"),
    ("ssh://root:p@ss@127.0.0.21:22", "p@ss"),
    ("ssh://root:sec ret@127.0.0.21", "sec ret"),
    ("ssh://root:sec/ret@[2001:db8::1", "sec/ret"),
    ("tcp://root:sec/ret@127.0.0.21:2375", "sec/ret"),
])
def test_url_errors_never_show_the_password(url: str, secret: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_host_url("h1", url)

    shown = f"{raised.value} {getattr(raised.value, 'hint', '')}"
    assert secret not in shown


@pytest.mark.parametrize("url", ["ssh://root@h1:22", "ssh://[2001:db8::1]:22", "unix:///run/d.sock"])
def test_redact_password_keeps_urls_without_one(url: str) -> None:
    assert redact_password(url) == url


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_fifo_config_rejected(tmp_path: Path, environ: dict[str, str]) -> None:
    fifo = tmp_path / "ddm.yaml"
    os.mkfifo(fifo)

    with pytest.raises(ConfigError, match="is not a regular file"):
        load_config(fifo, environ)
