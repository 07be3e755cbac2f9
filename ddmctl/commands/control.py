"""ddmctl pause and ddmctl logs: control a running task and read a task's event log."""

from __future__ import annotations

import click

from ddm import api
from ddm.errors import ExitStatus, UsageError
from ddmctl.commands.tasks import format_time
from ddmctl.common import CommandContext, epilog, json_option
from ddmctl.complete import complete_task


@click.command(epilog=epilog("ddmctl pause 3f2a9c"))
@click.argument("task_id", metavar="TASK", shell_complete=complete_task)
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
@click.argument("task_id", metavar="TASK", shell_complete=complete_task)
@click.option("--container", metavar="NAME",
              help="Print this source container's log as a full-mode task archived it on the "
              "target host, instead of the event log.")
@json_option
@click.pass_obj
def logs(context: CommandContext, task_id: str, container: str | None, as_json: bool) -> int:
    """Print a task's event log: phases, volumes, warnings, errors and callbacks.

    With --container (full mode), print that container's log instead; each line is
    "TIMESTAMP stdout|stderr TEXT".
    """
    store = context.store
    if container is not None:
        if as_json:
            raise UsageError("--json prints the event log; leave it out with --container")
        data = api.task_log(context.config, store, task_id, container)
        context.env.stdout.flush()
        buffer = getattr(context.env.stdout, "buffer", None)
        if buffer is not None:
            buffer.write(data)
            buffer.flush()
        else:
            context.env.stdout.write(data.decode("utf-8", "replace"))
        return int(ExitStatus.OK)

    task = store.get_task(task_id)
    events = store.get_events(task.id)
    if as_json:
        context.print_json(events)
        return int(ExitStatus.OK)

    for event in events:
        context.echo(f"{format_time(event['at'])}  {event['level']:<7}  {event['kind']:<16}  "
                     f"{event['message']}")
    return int(ExitStatus.OK)
