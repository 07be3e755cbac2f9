"""Command-line glue shared by the five DDM commands.

`run_main` plays the part of a `main` that handles errors while the click command contains
the logic: an expected `DDMError` becomes one line on stderr and its exit status, a click usage
error becomes exit status 2, and a traceback is printed only with `--debug`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click

from ddm import __version__
from ddm.config import Config, load_config
from ddm.env import Environment
from ddm.errors import (  # noqa: F401 - EXIT_STATUS_HELP is re-exported
    EXIT_STATUS_HELP,
    ConnectionLost,
    DDMError,
    ExitStatus,
)
from ddm.store import TaskStore, default_store_path

F = TypeVar("F", bound=Callable[..., Any])

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

DEBUG_HELP = "Print tracebacks and debug logs on errors."
VERBOSE_HELP = "More log output on stderr (repeatable)."
QUIET_HELP = "Only errors on stderr."


@dataclass
class CommandContext:
    """Per-invocation state that every subcommand receives through click's `ctx.obj`."""

    env: Environment
    config_path: Path | None = None
    debug: bool = False
    verbosity: int = 0
    _config: Config | None = field(default=None, repr=False)
    _store: TaskStore | None = field(default=None, repr=False)

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path, self.env.environ)
        return self._config

    @property
    def store(self) -> TaskStore:
        """Open the task database, after loading the configuration.

        Loading the configuration first means an invalid config file is reported (exit status
        2) before any task state is read, and before the database file is created.
        """
        if self._store is None:
            _ = self.config
            self._store = TaskStore(default_store_path(self.env.environ))
        return self._store

    def print_json(self, data: Any) -> None:
        """Write one JSON document to stdout."""
        self.env.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
        self.env.stdout.flush()

    def echo(self, text: str = "") -> None:
        """Write data to stdout."""
        self.env.stdout.write(text + "\n")
        self.env.stdout.flush()

    def info(self, text: str) -> None:
        """Write a progress or status line to stderr, unless -q was given."""
        if self.verbosity >= 0:
            self.env.stderr.write(text + "\n")
            self.env.stderr.flush()


def common_options(function: F) -> F:
    """Add --config, --debug, -v and -q to a command group."""
    options = [
        click.option(
            "--config",
            "config_path",
            type=click.Path(dir_okay=False, path_type=Path),
            # No envvar="DDM_CONFIG": click would read os.environ, but load_config reads
            # DDM_CONFIG from the command's Environment, as it does HOME and XDG_CONFIG_HOME.
            help="Configuration file (default: $XDG_CONFIG_HOME/ddm/config.yaml; env DDM_CONFIG).",
        ),
        click.option("--debug", is_flag=True, help=DEBUG_HELP),
        click.option("-v", "--verbose", count=True, help=VERBOSE_HELP),
        click.option("-q", "--quiet", is_flag=True, help=QUIET_HELP),
        click.version_option(__version__, "--version", message="%(prog)s %(version)s"),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def accept_logging_options_after(group: click.Group) -> None:
    """Let every subcommand of `group` also take --debug, -v/--verbose and -q/--quiet.

    Operators often type these options after the subcommand (`ddmctl migrate ... -v`). The
    group's callback has set up logging before click parses a subcommand's options, so these options
    update the CommandContext and set up logging again. A -v after the subcommand adds to
    one before it, and -q wins over -v, as it does in the group.
    """
    for command in group.commands.values():
        if isinstance(command, click.Group):
            accept_logging_options_after(command)
        names = {name for param in command.params for name in getattr(param, "opts", [])}
        if names & {"--debug", "-v", "--verbose", "-q", "--quiet"}:
            continue
        command.params.extend([
            click.Option(["--debug", "late_debug"], is_flag=True, expose_value=False,
                         callback=_set_late_logging_option,
                         help=DEBUG_HELP),
            click.Option(["-v", "--verbose", "late_verbose"], count=True, expose_value=False,
                         callback=_set_late_logging_option,
                         help=VERBOSE_HELP),
            click.Option(["-q", "--quiet", "late_quiet"], is_flag=True, expose_value=False,
                         callback=_set_late_logging_option,
                         help=QUIET_HELP),
        ])


def _set_late_logging_option(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    context = ctx.find_object(CommandContext)
    if not value or context is None:
        return
    if param.name == "late_debug":
        context.debug = True
    elif param.name == "late_quiet":
        context.verbosity = -1
    elif context.verbosity >= 0:
        context.verbosity += int(value)
    configure_logging(context.env, debug=context.debug, verbosity=context.verbosity)


def json_option(function: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")(function)


def make_context(
    ctx: click.Context, config_path: Path | None, debug: bool, verbose: int, quiet: bool
) -> CommandContext:
    """Build the CommandContext for a group and set up logging on stderr."""
    root = ctx.find_root()
    env = root.obj if isinstance(root.obj, Environment) else Environment()
    verbosity = -1 if quiet else verbose
    command_context = CommandContext(
        env=env, config_path=config_path, debug=debug, verbosity=verbosity
    )
    configure_logging(env, debug=debug, verbosity=verbosity)
    ctx.obj = command_context
    ctx.call_on_close(lambda: command_context._store and command_context._store.close())
    return command_context


def configure_logging(env: Environment, *, debug: bool, verbosity: int) -> None:
    """Send logs to stderr: warnings by default, info with -v, debug with -vv or --debug."""
    if debug or verbosity >= 2:
        level = logging.DEBUG
    elif verbosity == 1:
        level = logging.INFO
    elif verbosity < 0:
        level = logging.ERROR
    else:
        level = logging.WARNING

    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "ddm_handler", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(env.stderr)
    handler.ddm_handler = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(level)
    if not debug:
        handler.addFilter(_paramiko_as_debug)
    root.addHandler(handler)
    root.setLevel(level)

    # paramiko logs every packet at DEBUG; its warnings are all an operator needs.
    logging.getLogger("paramiko").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    logging.getLogger("docker").setLevel(logging.WARNING)


def _paramiko_as_debug(record: logging.LogRecord) -> bool:
    """Log paramiko's records at DEBUG level, so they show only with -vv or --debug.

    paramiko (5.1) logs a broken connection as ERROR records, one per line of a traceback.
    DDM reports the same failure in one error line (ConnectionLost or ConnectionFailed), so
    the traceback is shown only when the operator requests debug output.
    """
    if record.name == "paramiko" or record.name.startswith("paramiko."):
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger().isEnabledFor(logging.DEBUG)
    return True


def epilog(example: str) -> str:
    """Return a --help epilog with an example and the exit statuses."""
    return f"\b\nExample:\n  {example}\n\n{EXIT_STATUS_HELP}"


class AbortOnInterrupt:
    """Mixin for click commands: a KeyboardInterrupt ends the command as click's Abort.

    click's Command.main (8.1 to 8.4) catches a KeyboardInterrupt itself, writes an empty line
    to stderr and raises Abort, which run_main reports as "error: interrupted". An Abort
    raised here passes Command.main unchanged, so the error line comes without that empty line.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)  # type: ignore[misc]
        except KeyboardInterrupt as interrupt:
            raise click.exceptions.Abort() from interrupt


class InterruptibleCommand(AbortOnInterrupt, click.Command):
    """A click command that reports a KeyboardInterrupt with the error line alone."""


class InterruptibleGroup(AbortOnInterrupt, click.Group):
    """A click group that reports a KeyboardInterrupt with the error line alone."""


class DDMGroup(InterruptibleGroup):
    """A click group that turns an EOFError of its commands into a DDM error.

    click's Command.main reads an EOFError as the end of input at a prompt and raises Abort,
    which run_main reports as "interrupted" with exit status 130. click's own prompts catch
    their EOFError before it gets here, so an EOFError that reaches this group comes from
    elsewhere, usually a closed SSH connection (paramiko).
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EOFError as error:
            command_path = " ".join(filter(None, [ctx.command_path, ctx.invoked_subcommand]))
            raise eof_error(error, command_path) from error


def eof_error(error: EOFError, command_path: str) -> DDMError:
    """Return the one-line DDM error for an EOFError that ended `command_path`."""
    detail = f"EOFError: {error}" if str(error) else "EOFError"
    frames = traceback.extract_tb(error.__traceback__)
    if any("paramiko" in frame.filename for frame in frames):
        return ConnectionLost(
            f"an SSH connection closed unexpectedly during '{command_path}' ({detail})",
            hint="check that the hosts are up and accept SSH connections, then run the command "
            "again; 'ddmctl status' shows the state of a task",
        )
    return DDMError(f"input ended unexpectedly during '{command_path}' ({detail})",
                    hint="rerun with --debug for a traceback and report it")


def run_main(
    command: click.Command,
    args: Sequence[str] | None = None,
    env: Environment | None = None,
    prog_name: str | None = None,
) -> int:
    """Run a click command and turn every outcome into an exit status.

    Expected errors print one line on stderr; tracebacks appear only with --debug.
    """
    env = env or Environment()
    args = list(sys.argv[1:] if args is None else args)
    prog_name = prog_name or command.name or "ddm"
    debug = "--debug" in args

    try:
        # click writes --help, --version and prompts to sys.stdout and sys.stderr, so those
        # are pointed at the environment's streams for the duration of the command.
        with contextlib.redirect_stdout(env.stdout), contextlib.redirect_stderr(env.stderr):
            result = command.main(
                args=args, prog_name=prog_name, standalone_mode=False, obj=env
            )
    except DDMError as error:
        if debug:
            traceback.print_exc(file=env.stderr)
        _print_error(env, prog_name, str(error))
        return int(error.exit_status)
    except click.exceptions.Exit as exit_request:
        return int(exit_request.exit_code)
    except click.ClickException as error:
        message = usage_message(error)
        error_context = getattr(error, "ctx", None)
        command_path = error_context.command_path if error_context is not None else prog_name
        usage_hint = f"run '{command_path} --help' for usage"
        _print_error(env, prog_name, f"{message}; {usage_hint}")
        return int(ExitStatus.USAGE)
    except (KeyboardInterrupt, click.exceptions.Abort):
        _print_error(env, prog_name, "interrupted")
        return int(ExitStatus.INTERRUPTED)
    except BrokenPipeError:
        return int(ExitStatus.FAILED)
    except Exception as error:  # noqa: BLE001 - the last line of defence for a bug
        if debug:
            traceback.print_exc(file=env.stderr)
        else:
            _print_error(
                env, prog_name,
                f"internal error: {type(error).__name__}: {error}; rerun with --debug for a "
                "traceback and report it",
            )
        return int(ExitStatus.FAILED)

    if isinstance(result, int):
        return result
    return int(ExitStatus.OK)


def usage_message(error: click.ClickException) -> str:
    """Return the one-line message of a click usage error, without a trailing period.

    A group run without a subcommand raises NoArgsIsHelpError (click 8.2 and later), whose
    message is the whole help text. It is reported as a missing command instead.
    """
    no_args_error = getattr(click.exceptions, "NoArgsIsHelpError", None)
    if no_args_error is not None and isinstance(error, no_args_error):
        return "missing command"
    return error.format_message().rstrip(".")


def _print_error(env: Environment, prog_name: str, message: str) -> None:
    line = " ".join(message.split())
    # A message may carry undecodable bytes of an argument as surrogates; show them escaped.
    line = line.encode("utf-8", "backslashreplace").decode("utf-8")
    env.stderr.write(f"{prog_name}: error: {line}\n")
    env.stderr.flush()


def main_for(command: click.Command, prog_name: str) -> Callable[[], None]:
    """Return a console-script entry point for `command`."""

    def main() -> None:
        sys.exit(run_main(command, prog_name=prog_name))

    return main


def raise_on_sigterm() -> None:
    """Make SIGTERM (and Ctrl-Break on Windows) raise KeyboardInterrupt in the main thread.

    Tasks then roll back on them as on Ctrl-C. A platform without one of these signals skips it.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for name in ("SIGTERM", "SIGBREAK"):
        number = getattr(signal, name, None)
        if number is not None:
            signal.signal(number, handler)
