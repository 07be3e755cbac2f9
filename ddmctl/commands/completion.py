"""ddmctl completion: print shell completion scripts for the five DDM commands.

The scripts use click's completion protocol: at each Tab the shell runs the command with the
environment variable `_PROG_COMPLETE` set (for example `_DDMCTL_COMPLETE=bash_complete`), and
click prints the candidates instead of running the command. ddminit and ddmverify have no
subcommands, so this one command prints the scripts of all five.
"""

from __future__ import annotations

import importlib

import click
from click.shell_completion import get_completion_class

from ddm.errors import ExitStatus
from ddmctl.common import CommandContext, epilog

SHELLS = ("bash", "zsh", "fish")
COMMAND_NAMES = ("ddmctl", "ddminit", "ddmverify", "ddmsyncer", "ddmdriver")


def complete_variable(prog_name: str) -> str:
    """Return the name of the environment variable that requests completions from `prog_name`."""
    return f"_{prog_name.replace('-', '_').upper()}_COMPLETE"


def completion_script(shell: str, prog_name: str) -> str:
    """Return the completion script of one DDM command for `shell`."""
    module = importlib.import_module(f"{prog_name}.cli")
    completion_class = get_completion_class(shell)
    if completion_class is None:
        raise click.BadParameter(f"unsupported shell {shell!r}", param_hint="SHELL")
    completion = completion_class(module.cli, {}, prog_name, complete_variable(prog_name))
    return completion.source()


@click.command(epilog=epilog("ddmctl completion zsh --command ddmctl > ~/.zfunc/_ddmctl"))
@click.argument("shell", type=click.Choice(SHELLS))
@click.option("--command", "commands", multiple=True, type=click.Choice(COMMAND_NAMES),
              help="Only this command's script (repeatable; default: all five).")
@click.pass_obj
def completion(context: CommandContext, shell: str, commands: tuple[str, ...]) -> int:
    """Print shell completion scripts for the five DDM commands.

    The scripts cover ddmctl, ddminit, ddmverify, ddmsyncer and ddmdriver. Load them in the
    current shell with 'eval "$(ddmctl completion bash)"' (or zsh), or with
    'ddmctl completion fish | source'. docs/shell-completion.md shows how to install them for
    good.
    """
    for prog_name in commands or COMMAND_NAMES:
        context.echo(completion_script(shell, prog_name).rstrip("\n"))
    return int(ExitStatus.OK)
