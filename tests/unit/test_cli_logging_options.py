"""Logging options after the subcommand (ddmctl, ddmdriver, ddmsyncer), and paramiko's records."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from ddm.env import Environment
from ddmctl.common import configure_logging
from tests.unit.cli_support import invoke


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def memory_env() -> tuple[Environment, io.StringIO]:
    stderr = io.StringIO()
    env = Environment(stdin=io.StringIO(), stdout=io.StringIO(), stderr=stderr, environ={},
                      stdin_isatty=False, stdout_isatty=False, stderr_isatty=False)
    return env, stderr


@pytest.mark.parametrize(("args", "level"), [
    (["list"], logging.WARNING),
    (["list", "-v"], logging.INFO),
    (["list", "--verbose"], logging.INFO),
    (["list", "-vv"], logging.DEBUG),
    (["-v", "list", "-v"], logging.DEBUG),
    (["list", "--debug"], logging.DEBUG),
    (["list", "-q"], logging.ERROR),
    (["-v", "list", "-q"], logging.ERROR),
])
def test_logging_option_after_subcommand(environ: dict[str, str], args: list[str],
                                         level: int) -> None:
    outcome = invoke("ddmctl", args, environ)

    assert outcome.status == 0, outcome.stderr
    assert logging.getLogger().level == level


def test_nested_subcommand_takes_logging_options() -> None:
    from ddmctl.cli import cli

    check = cli.commands["hosts"].commands["check"]  # type: ignore[attr-defined]
    names = {name for param in check.params for name in getattr(param, "opts", [])}

    assert {"--debug", "-v", "--verbose", "-q", "--quiet"} <= names


def test_debug_after_subcommand_prints_traceback(environ: dict[str, str]) -> None:
    outcome = invoke("ddmctl", ["status", "nosuchtask", "--debug"], environ)

    assert outcome.status == 2
    assert "Traceback" in outcome.stderr


@pytest.mark.parametrize(("prog", "args", "level"), [
    ("ddmsyncer", ["serve", "--once", "--poll-interval", "0.1"], logging.WARNING),
    ("ddmsyncer", ["serve", "--once", "--poll-interval", "0.1", "-v"], logging.INFO),
    ("ddmsyncer", ["serve", "--once", "--poll-interval", "0.1", "--verbose"], logging.INFO),
    ("ddmsyncer", ["-v", "serve", "--once", "--poll-interval", "0.1", "-v"], logging.DEBUG),
    ("ddmsyncer", ["serve", "--once", "--poll-interval", "0.1", "--debug"], logging.DEBUG),
    ("ddmsyncer", ["-v", "serve", "--once", "--poll-interval", "0.1", "-q"], logging.ERROR),
    ("ddmdriver", ["ping", "a"], logging.WARNING),
    ("ddmdriver", ["ping", "a", "-vv"], logging.DEBUG),
    ("ddmdriver", ["ping", "a", "--debug"], logging.DEBUG),
    ("ddmdriver", ["ping", "a", "--quiet"], logging.ERROR),
])
def test_other_groups_take_logging_options(configured: dict[str, str], pinged: None,
                                           prog: str, args: list[str], level: int) -> None:
    outcome = invoke(prog, args, configured)

    assert outcome.status == 0, outcome.stderr
    assert logging.getLogger().level == level


@pytest.fixture
def pinged(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `ddmdriver ping` return a stand-in engine's version instead of connecting."""
    from ddmdriver import cli as driver_cli
    from ddmdriver.engine import EngineInfo

    class Engine:
        def __enter__(self) -> Engine:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def ping(self) -> EngineInfo:
            return EngineInfo(version="27.5.1", api_version="1.47", os="linux", arch="amd64",
                              rtt_seconds=0.002)

    monkeypatch.setattr(driver_cli, "open_engine", lambda host, config: Engine())


def test_quiet_after_serve_hides_status_lines(configured: dict[str, str]) -> None:
    args = ["serve", "--once", "--poll-interval", "0.1"]

    loud = invoke("ddmsyncer", args, configured)
    quiet = invoke("ddmsyncer", [*args, "-q"], configured)

    assert loud.status == 0
    assert loud.stderr.startswith("serving queued tasks from ")
    assert quiet.status == 0
    assert quiet.stderr == ""


@pytest.mark.parametrize(("prog", "args"), [
    ("ddmsyncer", ["run", "nosuchtask", "--debug"]),
    ("ddmdriver", ["ping", "nosuchhost", "--debug"]),
])
def test_debug_after_other_subcommands(configured: dict[str, str], prog: str,
                                       args: list[str]) -> None:
    outcome = invoke(prog, args, configured)

    assert outcome.status == 2
    assert "Traceback" in outcome.stderr


def test_paramiko_error_hidden_by_default() -> None:
    env, stderr = memory_env()
    configure_logging(env, debug=False, verbosity=0)

    logging.getLogger("paramiko.transport").error("Socket exception: Connection reset by peer")
    logging.getLogger("ddmsyncer.runner").warning("task abc: connecting once more")

    assert "paramiko" not in stderr.getvalue()
    assert "WARNING ddmsyncer.runner: task abc: connecting once more" in stderr.getvalue()


def test_paramiko_error_at_debug_with_vv() -> None:
    env, stderr = memory_env()
    configure_logging(env, debug=False, verbosity=2)

    logging.getLogger("paramiko.transport").error("Socket exception: Connection reset by peer")

    assert "DEBUG paramiko.transport: Socket exception" in stderr.getvalue()


def test_paramiko_error_kept_with_debug() -> None:
    env, stderr = memory_env()
    configure_logging(env, debug=True, verbosity=0)

    logging.getLogger("paramiko.transport").error("Socket exception: Connection reset by peer")

    assert "ERROR paramiko.transport: Socket exception" in stderr.getvalue()
