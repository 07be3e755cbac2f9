"""Engine.free_bytes on an ssh:// host: a failed df is logged with its cause, a closed one is not."""

from __future__ import annotations

import logging
from unittest import mock

import pytest

from ddm.config import HostConfig
from ddmdriver.engine import Engine
from ddmdriver.ssh import CommandResult

DF_OUTPUT = (b"Filesystem 1024-blocks Used Available Capacity Mounted on\n"
             b"/dev/sda1 1000 100 900 10% /var/lib/docker\n")


class FakeConnection:
    """An SSH connection whose one command returns a fixed result."""

    def __init__(self, result: CommandResult, *, active: bool = True) -> None:
        self.result = result
        self.is_active = active

    def exec_command(self, argv: list[str]) -> CommandResult:
        return self.result


def engine_with(result: CommandResult, *, active: bool = True) -> Engine:
    host = HostConfig(name="h2", url="ssh://root@h2", scheme="ssh", user="root", hostname="h2",
                      port=None, socket_path=None)
    return Engine(host, mock.Mock(), FakeConnection(result, active=active))  # type: ignore[arg-type]


def test_free_bytes_parses_df() -> None:
    engine = engine_with(CommandResult(0, DF_OUTPUT, b""))

    assert engine.free_bytes("/var/lib/docker/volumes") == 900 * 1024


def test_free_bytes_closed_connection_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    engine = engine_with(CommandResult(-1, b"", b""), active=False)

    with caplog.at_level(logging.DEBUG, logger="ddmdriver.engine"):
        free = engine.free_bytes("/var/lib/docker/volumes")

    assert free is None
    assert [record for record in caplog.records if record.levelno >= logging.WARNING] == []


def test_free_bytes_df_error_names_failure(caplog: pytest.LogCaptureFixture) -> None:
    engine = engine_with(CommandResult(1, b"", b"df: /nowhere: No such file or directory\n"))

    with caplog.at_level(logging.WARNING, logger="ddmdriver.engine"):
        free = engine.free_bytes("/nowhere")

    assert free is None
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "df -P -k /nowhere on h2 failed with exit status 1" in message
    assert "No such file or directory" in message


def test_free_bytes_silent_df_failure_says_so(caplog: pytest.LogCaptureFixture) -> None:
    engine = engine_with(CommandResult(-1, b"", b""), active=True)

    with caplog.at_level(logging.WARNING, logger="ddmdriver.engine"):
        free = engine.free_bytes("/var/lib/docker/volumes")

    assert free is None
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "ended without an exit status" in message
    assert message.endswith("no error output")
