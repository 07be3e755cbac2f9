"""ddmctl's logging options after the subcommand, and paramiko's records on stderr."""

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
