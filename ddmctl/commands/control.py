"""ddmctl pause and ddmctl logs: control a running task and read a task's event log."""

from __future__ import annotations

import click

from ddm import api
from ddm.errors import ExitStatus
from ddmctl.commands.tasks import format_time
from ddmctl.common import CommandContext, epilog, json_option


@click.command(epilog=epilog("ddmctl pause 3f2a9c"))
@click.argument("task_id", metavar="TASK")
@json_option
@click.pass_obj
def pause(context: CommandContext, task_id: str, as_json: bool) -> int:
    """Pause a running task at its next safe point; 'ddmctl resume TASK' continues it.

    The runner stops between two chunks of a volume's archive or between volumes, never in
    the middle of a chunk. A paused task keeps its SSH connections and locks.
    """
    task = api.pause_task(context.store, task_id)
    if as_json:
        context.print_json(task.to_dict())
    else:
        context.info(f"task {task.id}: pause requested; it stops at its next safe point")
    return int(ExitStatus.OK)


@click.command(epilog=epilog("ddmctl logs 3f2a9c --json"))
@click.argument("task_id", metavar="TASK")
@json_option
@click.pass_obj
def logs(context: CommandContext, task_id: str, as_json: bool) -> int:
    """Print a task's event log: phases, volumes, warnings, errors and callbacks."""
    store = context.store
    task = store.get_task(task_id)
    events = store.get_events(task.id)
    if as_json:
        context.print_json(events)
        return int(ExitStatus.OK)

    for event in events:
        context.echo(f"{format_time(event['at'])}  {event['level']:<7}  {event['kind']:<16}  "
                     f"{event['message']}")
    return int(ExitStatus.OK)
