"""Conventions every DDM command keeps: examples in --help, --version, -q and -v, shell
completion, NO_COLOR, plain progress off a terminal and --json."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.shell_completion import BashComplete

from ddm import __version__
from ddm.api import create_task
from ddm.config import load_config
from ddm.env import Environment
from ddm.events import Warning
from ddm.store import TaskStore, default_store_path
from ddmctl.progress import JsonDisplay, NullDisplay, PlainDisplay, RichDisplay, choose_display
from tests.unit.cli_support import COMMAND_NAMES, invoke, load_command

REPOSITORY = Path(__file__).resolve().parents[2]

# Subcommands that print no data of their own, so a --json switch has nothing to format:
# `serve` runs until stopped and logs, and `completion` prints shell scripts.
WITHOUT_JSON = {"ddmsyncer serve", "ddmctl completion"}


def walk_commands() -> Iterator[tuple[list[str], click.Command]]:
    """Yield (path of names, command) for the five commands and every subcommand."""

    def walk(path: list[str], command: click.Command) -> Iterator[tuple[list[str], click.Command]]:
        yield path, command
        if isinstance(command, click.Group):
            for name, subcommand in sorted(command.commands.items()):
                yield from walk([*path, name], subcommand)

    for prog in COMMAND_NAMES:
        yield from walk([prog], load_command(prog))


ALL_COMMANDS = [" ".join(path) for path, _ in walk_commands()]


class TerminalBuffer(io.StringIO):
    """An in-memory stream that claims to be a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("name", ALL_COMMANDS)
def test_help_has_example(environ: dict[str, str], name: str) -> None:
    prog, *subcommands = name.split()

    outcome = invoke(prog, [*subcommands, "--help"], environ)

    assert outcome.status == 0, outcome
    assert "Example:" in outcome.stdout
    example = outcome.stdout.split("Example:", 1)[1].split("\n")[1].strip()
    assert example.startswith(prog), example


def test_walk_finds_every_subcommand() -> None:
    assert "ddmctl migrate" in ALL_COMMANDS
    assert "ddmctl completion" in ALL_COMMANDS
    assert "ddmsyncer serve" in ALL_COMMANDS
    assert "ddmdriver manifest" in ALL_COMMANDS
    assert "ddminit" in ALL_COMMANDS
    assert "ddmverify" in ALL_COMMANDS


@pytest.mark.parametrize("prog", COMMAND_NAMES)
def test_version_quiet_and_verbose_options(environ: dict[str, str], prog: str) -> None:
    options = {name for param in load_command(prog).params for name in param.opts}

    outcome = invoke(prog, ["--version"], environ)

    assert {"--version", "-q", "--quiet", "-v", "--verbose"} <= options
    assert outcome.stdout == f"{prog} {__version__}\n"


@pytest.mark.parametrize("name", ALL_COMMANDS)
def test_json_option_where_output_is_data(name: str) -> None:
    commands = dict((" ".join(path), command) for path, command in walk_commands())
    command = commands[name]
    if isinstance(command, click.Group) or name in WITHOUT_JSON:
        return

    options = {option for param in command.params for option in param.opts}

    assert "--json" in options


def test_quiet_hides_status_lines(home: Path, environ: dict[str, str]) -> None:
    arguments = ["--host", "old=tcp://127.0.0.1:2375", "--yes"]

    normal = invoke("ddminit", arguments, environ)
    quiet = invoke("ddminit", ["-q", *arguments], environ)

    assert normal.stderr.startswith("wrote ")
    assert quiet.status == 0
    assert quiet.stderr == ""
    assert quiet.stdout == normal.stdout


@pytest.mark.parametrize(("flags", "level"), [
    ([], logging.WARNING), (["-q"], logging.ERROR), (["-v"], logging.INFO),
    (["-vv"], logging.DEBUG),
])
def test_verbosity_sets_log_level(environ: dict[str, str], flags: list[str], level: int) -> None:
    outcome = invoke("ddmctl", [*flags, "list"], environ)

    assert outcome.status == 0, outcome
    assert logging.getLogger().level == level


def test_ddminit_json(home: Path, environ: dict[str, str]) -> None:
    outcome = invoke("ddminit", ["--host", "old=ssh://root@old.example:2222", "--yes", "--json"],
                     environ)

    document = json.loads(outcome.stdout)
    assert document["path"] == str(home / ".config" / "ddm" / "config.yaml")
    assert document["hosts"] == {"old": {"url": "ssh://root@old.example:2222"}}


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_for_all_commands(environ: dict[str, str], shell: str) -> None:
    outcome = invoke("ddmctl", ["completion", shell], environ)

    assert outcome.status == 0, outcome
    for prog in COMMAND_NAMES:
        assert f"_{prog.upper()}_COMPLETE" in outcome.stdout


def test_completion_one_command(environ: dict[str, str]) -> None:
    outcome = invoke("ddmctl", ["completion", "bash", "--command", "ddmverify"], environ)

    assert "_DDMVERIFY_COMPLETE=bash_complete" in outcome.stdout
    assert "_DDMCTL_COMPLETE" not in outcome.stdout


def test_completion_lists_subcommands(tmp_path: Path) -> None:
    environ = {**os.environ, "PYTHONPATH": str(REPOSITORY), "HOME": str(tmp_path),
               "_DDMCTL_COMPLETE": "bash_complete", "COMP_WORDS": "ddmctl ro", "COMP_CWORD": "1"}

    result = subprocess.run([sys.executable, "-m", "ddmctl.cli"], env=environ,
                            capture_output=True, text=True, check=False)

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["plain,rollback"]


def render_warning(environ: dict[str, str]) -> str:
    stream = TerminalBuffer()
    env = Environment(stdin=io.StringIO(), stdout=io.StringIO(), stderr=stream,
                      environ=environ, stderr_isatty=True)
    display = choose_display(env, as_json=False, quiet=False)
    assert isinstance(display, RichDisplay)
    display(Warning("t1", message="disk almost full"))
    return stream.getvalue()


def test_no_color_removes_colors() -> None:
    colored = render_warning({"TERM": "xterm-256color"})
    plain = render_warning({"TERM": "xterm-256color", "NO_COLOR": "1"})

    assert "\x1b[33m" in colored
    assert "disk almost full" in plain
    assert "\x1b[33m" not in plain


def test_display_follows_terminal_and_options() -> None:
    def display(*, isatty: bool, as_json: bool = False, quiet: bool = False) -> object:
        env = Environment(stdin=io.StringIO(), stdout=io.StringIO(), stderr=io.StringIO(),
                          environ={}, stderr_isatty=isatty)
        return choose_display(env, as_json=as_json, quiet=quiet)

    assert isinstance(display(isatty=False), PlainDisplay)
    assert isinstance(display(isatty=True), RichDisplay)
    assert isinstance(display(isatty=True, as_json=True), JsonDisplay)
    assert type(display(isatty=True, quiet=True)) is NullDisplay


def completions(prog: str, args: list[str], incomplete: str, environ: dict[str, str]) -> list[str]:
    """Return what Tab would offer after `PROG ARGS INCOMPLETE`, computed in-process."""
    env = Environment(stdin=io.StringIO(), stdout=io.StringIO(), stderr=io.StringIO(),
                      environ=environ)
    completion = BashComplete(load_command(prog), {"obj": env}, prog, f"_{prog.upper()}_COMPLETE")
    return [item.value for item in completion.get_completions(args, incomplete)]


def test_completion_of_host_names(home: Path, environ: dict[str, str]) -> None:
    invoke("ddminit", ["--host", "old=ssh://root@old.example", "--host",
                       "new=ssh://root@new.example", "--yes"], environ)

    assert completions("ddmctl", ["migrate", "--from"], "", environ) == ["local", "new", "old"]
    assert completions("ddmverify", ["--to"], "o", environ) == ["old"]
    assert completions("ddmdriver", ["ping"], "n", environ) == ["new"]


def test_completion_of_task_ids(home: Path, environ: dict[str, str]) -> None:
    assert completions("ddmctl", ["status"], "", environ) == []

    config = load_config(None, environ)
    store = TaskStore(default_store_path(environ))
    try:
        first = create_task(store, config, source="local", target="local",
                            volumes=("pgdata:pgdata-copy",), verify="full", force=False)
        second = create_task(store, config, source="local", target="local",
                             volumes=("cache:cache-copy",), verify="none", force=False)
    finally:
        store.close()

    offered = completions("ddmctl", ["rollback"], "", environ)
    assert sorted(offered) == sorted([first.id, second.id])
    assert completions("ddmsyncer", ["run"], first.id[:6], environ) == [first.id]


def test_completion_with_invalid_config(home: Path, environ: dict[str, str]) -> None:
    config_dir = home / ".config" / "ddm"
    config_dir.mkdir(parents=True)
    (config_dir / "config.yaml").write_text("hosts: [not, a, mapping]\n")

    assert completions("ddmctl", ["migrate", "--to"], "", environ) == []
