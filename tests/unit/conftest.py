"""Fixtures for the unit tests: temporary home directories and a guard against connections."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.unit.cli_support import home_environ


class NetworkAccessBlocked(RuntimeError):
    """A unit test tried to open a connection or resolve a name.

    It is a RuntimeError rather than an OSError, so driver code that catches OSError does not
    turn it into a ConnectionFailed. The command then fails with an internal error.
    """


def _blocked(*args: object, **kwargs: object) -> None:
    raise NetworkAccessBlocked(f"unit tests must not connect anywhere: {args!r}")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every socket connect and name lookup in this process raise NetworkAccessBlocked."""
    monkeypatch.setattr(socket.socket, "connect", _blocked)
    monkeypatch.setattr(socket.socket, "connect_ex", _blocked)
    monkeypatch.setattr(socket, "getaddrinfo", _blocked)
    monkeypatch.setattr(socket, "create_connection", _blocked)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Return an empty temporary home directory, also made the current directory."""
    directory = tmp_path / "home"
    directory.mkdir()
    monkeypatch.chdir(directory)
    return directory


@pytest.fixture
def environ(home: Path) -> dict[str, str]:
    """Return an environment with HOME and the XDG directories under the temporary home."""
    return home_environ(home)


# Host URLs of the config that `configured` writes. No unit test gets as far as connecting to
# them, and the no_network fixture fails any test that tries.
HOSTS_YAML = "hosts:\n  a: ssh://nobody@127.0.0.1:1\n  b: ssh://nobody@127.0.0.1:1\n"


@pytest.fixture
def configured(home: Path, environ: dict[str, str]) -> dict[str, str]:
    """Return an environment whose default config file names hosts a and b."""
    config_dir = home / ".config" / "ddm"
    config_dir.mkdir(parents=True)
    (config_dir / "config.yaml").write_text(HOSTS_YAML)
    return environ
