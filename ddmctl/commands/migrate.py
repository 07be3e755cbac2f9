"""ddmctl migrate: create a task and run it in this process, with progress on stderr."""

from __future__ import annotations

import click

from ddm import api
from ddm.errors import DDMError, ExitStatus, UsageError
from ddm.task import Task, TaskState
from ddmctl.common import CommandContext, epilog, json_option, raise_on_sigterm
from ddmctl.commands.planning import show_plan, spec_from_options, task_options
from ddmctl.progress import choose_display, format_bytes


@click.command(epilog=epilog("ddmctl migrate --from old --to new --volume pgdata:pgdata-2"))
@task_options
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@click.pass_obj
def migrate(
    context: CommandContext,
    source: str,
    target: str,
    volumes: tuple[str, ...],
    verify: str | None,
    force: bool,
    dry_run: bool,
    yes: bool,
    as_json: bool,
    on_success: str | None,
    on_failure: str | None,
    notify: tuple[str, ...],
) -> int:
    """Move Docker volumes from one host to another and verify them.

    The source is only read. On failure or Ctrl-C, what the task created on the target is
    removed. The task is stored, so 'ddmctl status TASK' works from another terminal.
    """
    config = context.config
    spec = spec_from_options(context, {
        "source": source, "target": target, "volumes": volumes, "verify": verify,
        "force": force, "on_success": on_success, "on_failure": on_failure, "notify": notify,
    })

    if dry_run:
        return show_plan(context, api.plan_task(config, spec), as_json)

    confirm(context, spec_summary(spec), yes=yes, force=force)
    task = api.create_task(
        context.store, config, source=source, target=target, volumes=volumes,
        verify=spec.verify, force=force, options=spec.options,
    )
    context.info(f"task {task.id} created")
    return run_and_report(context, task.id, as_json, resume=False)


def spec_summary(spec) -> str:
    names = ", ".join(
        volume.source if volume.source == volume.target else f"{volume.source} -> {volume.target}"
        for volume in spec.volumes
    )
    return f"migrate volumes {names} from {spec.source_host} to {spec.target_host}"


def confirm(context: CommandContext, summary: str, *, yes: bool, force: bool) -> None:
    """Ask on a terminal; off a terminal, --force needs --yes because it replaces data."""
    if yes:
        return
    if not context.env.stdin_isatty:
        if force:
            raise UsageError("--force replaces target volumes and needs --yes off a terminal")
        return
    if not click.confirm(f"{summary}?", default=False, err=True):
        raise click.exceptions.Abort()


def run_and_report(context: CommandContext, task_id: str, as_json: bool, *, resume: bool) -> int:
    """Run a stored task with a progress display; print the result on stdout."""
    raise_on_sigterm()
    display = choose_display(context.env, as_json=as_json, quiet=context.verbosity < 0)
    runner = api.resume_task if resume else api.run_task
    error: DDMError | None = None
    with display:
        try:
            runner(context.config, context.store, task_id, on_event=display)
        except DDMError as caught:
            error = caught

    task = context.store.get_task(task_id)
    print_task_result(context, task, as_json)
    if error is not None:
        raise error
    return int(ExitStatus.OK)


def print_task_result(context: CommandContext, task: Task, as_json: bool) -> None:
    if as_json:
        context.print_json(task.to_dict())
        return

    for item in task.items:
        context.echo(f"{item.source}\t{item.target}\t{item.state.value}\t"
                     f"{format_bytes(item.bytes_done)}")
    duration = f"{task.duration:.1f} s" if task.duration is not None else "-"
    context.info(f"task {task.id} {task.state.value} in {duration}")
    if task.state is not TaskState.SUCCEEDED and task.error:
        context.info(f"task {task.id}: {task.error.get('message')}")
