"""ddmsyncer: execute stored tasks, one (`run`) or every queued one (`serve`)."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from pathlib import Path

import click

from ddm import api
from ddm.errors import Cancelled, DDMError, ExitStatus
from ddm.processes import process_alive
from ddm.store import TaskStore
from ddm.task import Task, TaskState
from ddm.text import counted
from ddmctl.commands.migrate import run_and_report
from ddmctl.common import (
    EXIT_STATUS_HELP,
    CommandContext,
    InterruptibleGroup,
    accept_logging_options_after,
    common_options,
    epilog,
    json_option,
    main_for,
    make_context,
    raise_on_sigterm,
)
from ddmctl.complete import complete_task

log = logging.getLogger(__name__)


def _finite(value: float) -> float:
    if math.isnan(value):
        raise click.BadParameter("must be a number of seconds, not NaN")
    return value


@click.group(
    cls=InterruptibleGroup,
    epilog=f"\b\nExample:\n  ddmsyncer run 3f2a9c\n\n{EXIT_STATUS_HELP}",
    context_settings={"help_option_names": ["-h", "--help"]},
)
@common_options
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, debug: bool, verbose: int,
        quiet: bool) -> None:
    """Execute migration tasks: prepare, copy, migrate, verify, cleanup, rollback on failure."""
    make_context(ctx, config_path, debug, verbose, quiet)


@cli.command(epilog=epilog("ddmsyncer run 3f2a9c"))
@click.argument("task_id", metavar="TASK", shell_complete=complete_task)
@json_option
@click.pass_obj
def run(context: CommandContext, task_id: str, as_json: bool) -> int:
    """Run one stored task (queued or interrupted) to its end."""
    task = context.store.get_task(task_id)
    return run_and_report(context, task.id, as_json, resume=task.state is TaskState.INTERRUPTED)


@cli.command(epilog=epilog("ddmsyncer serve --concurrency 2"))
@click.option("--concurrency", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Number of tasks run at once.")
@click.option("--poll-interval", type=click.FloatRange(0.1, 3600), default=2.0,
              show_default=True, callback=lambda ctx, param, value: _finite(value),
              help="Seconds between looks for queued tasks.")
@click.option("--once", is_flag=True, help="Run the tasks queued now, then exit.")
@click.pass_obj
def serve(context: CommandContext, concurrency: int, poll_interval: float, once: bool) -> int:
    """Run queued tasks until stopped (Ctrl-C or SIGTERM); running tasks then roll back."""
    raise_on_sigterm()
    config = context.config
    store_path = context.store.path
    running: dict[str, threading.Thread] = {}
    failures = 0

    def work(task_id: str) -> None:
        nonlocal failures
        store = TaskStore(store_path)
        try:
            task = api.run_task(config, store, task_id)
            context.info(f"task {task_id} {task.state.value}")
        except Cancelled:
            # The operator asked for it with 'ddmctl cancel', so it does not count as a failure.
            context.info(f"task {task_id} cancelled")
        except DDMError as error:
            failures += 1
            log.error("task %s failed: %s", task_id, error)
        finally:
            store.close()

    context.info(f"serving queued tasks from {store_path} (concurrency {concurrency})")
    try:
        serve_loop(context, running, work, concurrency, poll_interval, once)
    except KeyboardInterrupt:
        context.info(f"stopping: cancelling {counted(len(running), 'running task')}")
        for task_id in running:
            api.cancel_task(context.store, task_id)
        for thread in running.values():
            thread.join()
        raise
    return int(ExitStatus.FAILED if failures else ExitStatus.OK)


def serve_loop(context: CommandContext, running: dict[str, threading.Thread], work,
               concurrency: int, poll_interval: float, once: bool) -> None:
    """Start queued tasks in threads until `once` finds nothing left to do."""
    while True:
        for task_id, thread in list(running.items()):
            if not thread.is_alive():
                del running[task_id]

        queued = [task for task in reversed(context.store.list_tasks(state=TaskState.QUEUED))
                  if task.id not in running and not reserved_elsewhere(task)]
        for task in queued[: max(0, concurrency - len(running))]:
            context.info(f"starting task {task.id}")
            thread = threading.Thread(target=work, args=(task.id,), name=f"task-{task.id}")
            running[task.id] = thread
            thread.start()

        if once and not queued and not running:
            return
        time.sleep(poll_interval)


def reserved_elsewhere(task: Task) -> bool:
    """Return True for a queued task that a live process created to run itself."""
    if task.runner_pid is None or task.runner_pid == os.getpid():
        return False
    return process_alive(task.runner_pid)


accept_logging_options_after(cli)

main = main_for(cli, "ddmsyncer")


if __name__ == "__main__":
    main()
