"""ddmctl migrate: create a task and run it in this process, with progress on stderr."""

from __future__ import annotations

import dataclasses

import click

from ddm import api
from ddm.errors import DDMError, Declined, ExitStatus, TaskNotStarted, UsageError
from ddm.task import ItemState, Mode, Task, TaskState
from ddm.direct_config import validate_route
from ddmctl.common import CommandContext, epilog, json_option, raise_on_sigterm
from ddmctl.commands.planning import route_option, show_plan, spec_from_options, with_callback_options
from ddmctl.complete import complete_host
from ddmctl.progress import choose_display, format_bytes
from ddmsyncer.compression import reject_full_mode_codec, validate_compress
from ddmsyncer.datapath import reject_full_mode_data_path


@click.command(epilog=epilog("ddmctl migrate --from old --to new --volume pgdata:pgdata-2"))
@click.option("--from", "source", required=True, metavar="HOST", help="Source host name.",
              shell_complete=complete_host)
@click.option("--to", "target", required=True, metavar="HOST", help="Target host name.",
              shell_complete=complete_host)
@click.option(
    "--volume", "volumes", multiple=True, metavar="SRC[:DST]",
    help="Volume to move; SRC:DST renames it on the target (repeatable, volumes mode).",
)
@click.option("--mode", type=click.Choice(["volumes", "full"]), default="volumes",
              show_default=True, help="Move volumes only, or whole containers (full).")
@click.option("--container", "containers", multiple=True, metavar="NAME",
              help="Container to move in full mode (repeatable).")
@click.option("--project", metavar="NAME",
              help="Compose project to move in full mode: every container, volume and "
              "network labelled com.docker.compose.project=NAME.")
@click.option("--map-path", "map_paths", multiple=True, metavar="SRC=DST",
              help="Copy the bind-mounted host directory SRC to DST on the target (full mode, "
              "repeatable).")
@click.option("--warm", is_flag=True,
              help="Full mode: copy the volumes of running containers before stopping them, "
              "then copy only what changed (needs python3 and GNU tar on both hosts).")
@click.option("--remove-source", is_flag=True,
              help="Remove the stopped source containers after a verified full-mode migration.")
@click.option(
    "--verify", type=click.Choice(["none", "quick", "full"]), default=None,
    help="Check after the copy: quick compares metadata and sizes, full also hashes content "
    "(default: defaults.verify in the config, else full).",
)
@click.option("--force", is_flag=True,
              help="Replace a target volume that already exists (its old content is lost).")
@click.option(
    "--incremental", is_flag=True,
    help="When a target volume contains the copy an earlier DDM task made of the same source "
    "volume, send only new and changed files and delete removed ones (needs python3 and GNU "
    "tar on both hosts).",
)
@click.option("--parallel", type=click.IntRange(1, 16), default=1, show_default=True,
              help="Number of volumes copied at once, each over its own SSH connections.")
@click.option("--data-path", type=click.Choice(["auto", "engine", "host"]), default="auto",
              show_default=True,
              help="How data travels: host runs GNU tar on both hosts over SSH (needs root or "
              "sudo; keeps nanosecond mtimes, xattrs, ACLs, sparse files), engine uses the "
              "Engine API archive, auto picks host where possible. Full mode always uses the "
              "Engine API and rejects host.")
@click.option("--compress", type=click.Choice(["none", "lz4", "zstd", "auto"]), default="none",
              show_default=True,
              help="Compress the host data path's stream: zstd or lz4 on both hosts, auto turns it on "
              "only when a sample compression and the measured link rate predict a faster "
              "copy, none sends the tar stream as it is.")
@click.option("--stop-writers", is_flag=True,
              help="Stop running containers that use a source volume for its copy, then start "
              "them again.")
@click.option("--pause", is_flag=True,
              help="Pause running containers that use a source volume for its copy, then "
              "unpause them.")
@click.option("--live", is_flag=True,
              help="Copy volumes while their containers run and fail on files that changed; "
              "with --stop-writers or --pause, copy such volumes again with the writers stopped.")
@with_callback_options
@route_option()
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@click.pass_obj
def migrate(
    context: CommandContext,
    source: str,
    target: str,
    volumes: tuple[str, ...],
    mode: str,
    containers: tuple[str, ...],
    project: str | None,
    map_paths: tuple[str, ...],
    remove_source: bool,
    warm: bool,
    verify: str | None,
    force: bool,
    incremental: bool,
    parallel: int,
    data_path: str,
    compress: str,
    stop_writers: bool,
    pause: bool,
    live: bool,
    route: str,
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
    if mode == "full":
        if route != "relay":
            raise UsageError("--route direct is for volumes mode", hint="leave out --route in full mode")
        reject_full_mode_codec(compress)
        reject_full_mode_data_path(data_path)
        if volumes or force:
            raise UsageError("--volume and --force belong to volumes mode",
                             hint="full mode moves the volumes of the given containers")
        volumes_only = [name for name, given in (
            ("--incremental", incremental), ("--parallel", parallel != 1),
            ("--stop-writers", stop_writers), ("--pause", pause), ("--live", live)) if given]
        if volumes_only:
            raise UsageError(f"{', '.join(volumes_only)} {'is' if len(volumes_only) == 1 else 'are'} "
                             "for volumes mode",
                             hint="full mode stops the source containers itself for the "
                             "cutover; leave these out, or add --warm to keep the downtime short")
        callbacks = api.build_callbacks(config, on_success=on_success, on_failure=on_failure,
                                        notify=notify)
        return migrate_full(context, source=source, target=target, containers=containers,
                            project=project, map_path=map_paths, remove_source=remove_source,
                            verify=verify or config.defaults.verify, dry_run=dry_run, yes=yes,
                            as_json=as_json, options={**callbacks, "warm": warm})
    if containers or project or map_paths or remove_source or warm:
        raise UsageError("--container, --project, --map-path, --remove-source and --warm need "
                         "--mode full")
    if not volumes:
        raise click.UsageError("Missing option '--volume' (or --mode full with --container "
                               "NAME or --project NAME).")
    spec = spec_from_options(context, {
        "source": source, "target": target, "volumes": volumes, "verify": verify,
        "force": force, "on_success": on_success, "on_failure": on_failure, "notify": notify,
        "route": route,
    })
    spec = dataclasses.replace(spec, options={
        **spec.options,
        "incremental": incremental,
        "parallel": parallel,
        **migrate_options(data_path=data_path, stop_writers=stop_writers, pause=pause, live=live),
        "compress": validate_compress(compress, data_path, route),
    })
    validate_route(config, spec.target_host, spec.options)

    if dry_run:
        return show_plan(context, api.plan_task(config, spec, store=context.store), as_json)

    confirm(context, spec_summary(spec), yes=yes, force=force)
    task = api.create_task(
        context.store, config, source=source, target=target, volumes=volumes,
        verify=spec.verify, force=force, options=spec.options,
    )
    context.info(f"task {task.id} created")
    return run_and_report(context, task.id, as_json, resume=False)


def migrate_options(*, data_path: str, stop_writers: bool, pause: bool, live: bool) -> dict:
    """Return the task options of the data path and live-data flags, checked."""
    from ddmsyncer.datapath import validate_choice
    from ddmsyncer.writers import WriterPolicy

    options = {"data_path": validate_choice(data_path), "stop_writers": stop_writers,
               "pause": pause, "live": live}
    WriterPolicy.from_options(options)
    return options


def migrate_full(context: CommandContext, *, dry_run: bool, yes: bool, as_json: bool,
                 **request: object) -> int:
    """Create and run a full-mode task, or print its plan with --dry-run."""
    spec = api.build_full_spec(context.config, **request)
    if dry_run:
        return show_plan(context, api.plan_task(context.config, spec, store=context.store),
                         as_json)

    selection = (f"project {spec.options['project']}" if spec.options.get("project")
                 else "containers " + ", ".join(spec.options["containers"]))
    summary = (f"migrate {selection} from {spec.source_host} to {spec.target_host}; the source "
               "containers are stopped")
    confirm(context, summary, yes=yes, force=bool(spec.options.get("remove_source")))
    task = api.create_full_task(context.store, context.config, **request)
    context.info(f"task {task.id} created")
    return run_and_report(context, task.id, as_json, resume=False)


def spec_summary(spec) -> str:
    names = ", ".join(
        volume.source if volume.source == volume.target else f"{volume.source} -> {volume.target}"
        for volume in spec.volumes
    )
    return f"migrate volumes {names} from {spec.source_host} to {spec.target_host}"


def confirm(context: CommandContext, summary: str, *, yes: bool, force: bool) -> None:
    """Ask on a terminal; off a terminal, --force (or --remove-source) needs --yes."""
    if yes:
        return
    if not context.env.stdin_isatty:
        if force:
            raise UsageError("--force or --remove-source removes data and needs --yes off a "
                             "terminal")
        return
    if not click.confirm(f"{summary}?", default=False, err=True):
        raise Declined("no task was created because the confirmation was declined",
                       hint="run the command again and answer yes, or pass --yes")


def run_and_report(context: CommandContext, task_id: str, as_json: bool, *, resume: bool) -> int:
    """Run a stored task with a progress display; print the result on stdout."""
    raise_on_sigterm()
    display = choose_display(context.env, as_json=as_json, quiet=context.verbosity < 0)
    runner = api.resume_task if resume else api.run_task
    error: DDMError | None = None
    interrupt: KeyboardInterrupt | None = None
    with display:
        try:
            runner(context.config, context.store, task_id, on_event=display)
        except DDMError as caught:
            error = caught
        except KeyboardInterrupt as received:
            interrupt = received

    task = context.store.get_task(task_id)
    if interrupt is not None:
        # The runner has rolled back by now, so report the task and the state it ended in.
        # The line is written once the display has ended, so it does not break into a bar.
        rollback_error = (task.error or {}).get("rollback_error")
        if task.state is TaskState.INTERRUPTED and rollback_error:
            # Its rollback failed, so the target may still hold what the task created.
            context.info(f"task {task.id} stopped by an interrupt, and its rollback failed: "
                         f"{rollback_error.get('message')}; the target may still hold what the "
                         f"task created: run 'ddmctl rollback {task.id}' once that is fixed")
        else:
            context.info(f"task {task.id} stopped by an interrupt and is now "
                         f"{task.state.value}; see 'ddmctl status {task.id}'")
        raise interrupt
    if isinstance(error, TaskNotStarted):
        # The task's state forbade running it here (another process runs it, its rollback is
        # unfinished, or it has ended), so this command has no result of its own to print.
        raise error
    print_task_result(context, task, as_json)
    if error is not None:
        raise error
    return int(ExitStatus.OK)


def print_task_result(context: CommandContext, task: Task, as_json: bool) -> None:
    """Print the task's JSON document, or a tab-separated line per volume the task started.

    A full-mode task has no volume items; it prints a line per transfer instead (see
    full_mode_result_lines()).

    A volume still pending was never started, because prepare failed or another failure
    stopped the task first, so the text form has no line for it. The JSON document lists
    every volume.
    """
    if as_json:
        context.print_json(task.to_dict())
        return

    for item in task.items:
        if item.state is ItemState.PENDING:
            continue
        context.echo(f"{item.source}\t{item.target}\t{item.state.value}\t"
                     f"{format_bytes(item.bytes_done)}")
    if task.spec.mode is Mode.FULL:
        for line in full_mode_result_lines(context.store.get_extra(task.id)):
            context.echo(line)
    duration = f"{task.duration:.1f} s" if task.duration is not None else "-"
    context.info(f"task {task.id} {task.state.value} in {duration}")


def full_mode_result_lines(extra: dict[str, Any]) -> list[str]:
    """Return a tab-separated line per image, volume and bind mount a full-mode task transferred.

    Each line contains the kind, the source name, the target name, the state (sending or sent)
    and the bytes read from the source. `extra` is the task's stored state (status --json's
    `full`).
    """
    lines = []
    for transfer in extra.get("transfers") or []:
        target = transfer.get("target") or transfer.get("name")
        lines.append(f"{transfer.get('kind')}\t{transfer.get('name')}\t{target}\t"
                     f"{transfer.get('state')}\t{format_bytes(int(transfer.get('bytes_done') or 0))}")
    return lines
