"""ddmctl finalize: finish a full-mode task by removing its stopped source containers."""

from __future__ import annotations

import click

from ddm import api
from ddm.errors import ExitStatus
from ddmctl.common import CommandContext, epilog, json_option
from ddmctl.complete import complete_task


@click.command(epilog=epilog("ddmctl finalize 3f2a9c"))
@click.argument("task_id", metavar="TASK", shell_complete=complete_task)
@json_option
@click.pass_obj
def finalize(context: CommandContext, task_id: str, as_json: bool) -> int:
    """Remove the stopped source containers of a succeeded full-mode task.

    Their volumes stay. After this the task can no longer be rolled back.
    """
    task = api.finalize_task(context.config, context.store, task_id)
    if as_json:
        context.print_json(task.to_dict())
    else:
        context.info(f"task {task.id} finalized: source containers removed")
    return int(ExitStatus.OK)


COMMANDS = (finalize,)
