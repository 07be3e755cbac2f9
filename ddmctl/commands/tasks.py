"""ddmctl list, status, resume, cancel and rollback: act on stored tasks."""

from __future__ import annotations

import datetime
from typing import Any

import click

from ddm import api
from ddm.errors import DDMError, ExitStatus, TargetsChanged, TaskNotFound
from ddm.store import TaskStore
from ddm.task import ItemState, Mode, Phase, Task, TaskItem, TaskState
from ddmctl.commands.migrate import print_task_result, run_and_report
from ddmctl.common import CommandContext, epilog, json_option
from ddmctl.complete import complete_task
from ddmctl.progress import format_bytes
from ddmctl.rollback_report import later_writers, rollback_outcomes
from ddmctl.tasks_filter import MAX_SCANNED_TASKS, parse_since, task_matches
from ddmctl.watch import task_label, watch_task
from ddmsyncer.runner import mark_stale_running
from ddmsyncer.undo import (ROLLBACK_ERROR, ROLLBACK_FINISHED_AT, ROLLED_BACK_STATES,
                            UNDONE_STATES)


def format_time(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def task_line(task: Task) -> str:
    """Return the task's row of `ddmctl list`."""
    duration = f"{task.duration:.1f}s" if task.duration is not None else "-"
    return (f"{task.id}  {format_time(task.created_at)}  {task.spec.source_host}->"
            f"{task.spec.target_host}  {list_state(task):<11}  {task.phase.value:<8}  "
            f"{duration:>8}  {task_objects(task)}")


def list_state(task: Task) -> str:
    """Return the task's state for the list: 'paused' for a running task that was asked to pause."""
    if task.state is TaskState.RUNNING and task.control == "pause":
        return "paused"
    return task.state.value


def task_objects(task: Task) -> str:
    """Return the source volumes of a task, or for a full-mode task its project or containers."""
    if task.spec.mode is not Mode.FULL:
        return ",".join(item.source for item in task.items)
    project = task.spec.options.get("project")
    if project:
        return f"project {project}"
    return ",".join(task.spec.options.get("containers") or [])


@click.command("list", epilog=epilog("ddmctl list --state failed --host old --since 24h"))
@click.option("--state", type=click.Choice([state.value for state in TaskState]),
              help="Only tasks in this state.")
@click.option("--host", metavar="HOST", help="Only tasks with this source or target host.")
@click.option("--since", metavar="WHEN", callback=lambda ctx, param, value: parse_since(value),
              help="Only tasks created since WHEN: a duration back from now (90s, 30m, 12h, "
              "7d) or a UTC date or time (2026-12-04, 2026-12-04T10:00).")
@click.option("--limit", type=click.IntRange(1, 100000), default=50, show_default=True,
              help="Maximum number of tasks, newest first.")
@json_option
@click.pass_obj
def list_tasks(context: CommandContext, state: str | None, host: str | None,
               since: float | None, limit: int, as_json: bool) -> int:
    """List tasks, newest first: ID, created, hosts, state, phase, duration and volumes.

    A running task that was asked to pause shows the state paused. A full-mode task shows its
    project or its containers in place of volumes.
    """
    store = context.store
    found = store.list_tasks(state=TaskState(state) if state else None, limit=MAX_SCANNED_TASKS)
    tasks = [mark_stale_running(store, task) for task in found
             if task_matches(task, host=host, since=since)][:limit]
    if as_json:
        context.print_json([task_document(store, task) for task in tasks])
        return int(ExitStatus.OK)

    context.echo("ID            CREATED (UTC)        HOSTS    STATE        PHASE     DURATION  VOLUMES")
    for task in tasks:
        context.echo(task_line(task))
    return int(ExitStatus.OK)


@click.command(epilog=epilog("ddmctl status 3f2a9c --watch"))
@click.argument("task_id", metavar="TASK", shell_complete=complete_task)
@click.option("--events", "show_events", is_flag=True, help="Also print the task's event log.")
@click.option("--watch", is_flag=True,
              help="Follow the task until it ends: phase, per-volume bars (in full mode also "
              "per image and bind mount), rates, ETA and the downtime so far during a cutover "
              "on a terminal, a line per change elsewhere (on stderr).")
@json_option
@click.pass_obj
def status(context: CommandContext, task_id: str, show_events: bool, watch: bool,
           as_json: bool) -> int:
    """Show a task's state, phase and per-volume progress.

    With --watch, the exit status is the task's outcome: 0 when it succeeded, otherwise the
    exit status of its stored error (1 for a failed task without one, 130 for an interrupted
    or cancelled one). Without --watch it is 0 whatever the task's state.
    """
    store = context.store
    task = mark_stale_running(store, store.get_task(task_id))
    if watch:
        columns = context.env.environ.get("COLUMNS", "")
        task = watch_task(store, task.id, context.env.stderr,
                          terminal=bool(context.env.stderr_isatty) and not as_json,
                          no_color=context.env.no_color,
                          width=int(columns) if columns.isdigit() else None)
    events = store.get_events(task.id) if show_events else []
    if as_json:
        data = task_document(store, task)
        if show_events:
            data["events"] = events
        if task.spec.mode.value == "full":
            data["full"] = store.get_extra(task.id)
            data["downtime_seconds"] = data["full"].get("downtime_seconds")
            data["image_bytes_sent"] = data["full"].get("image_bytes_sent")
        data["already_migrated"] = store.get_extra(task.id).get("already_migrated")
        data["stopped_source_containers"] = stopped_source_containers(store, task)
        # Per volume position: what an incremental update sent, removed and hashed.
        data["incremental"] = store.get_extra(task.id).get("incremental") or {}
        if task.spec.mode.value != "full":
            data["compression"] = store.get_extra(task.id).get("compression", {})
        context.print_json(data)
        return watched_exit_status(task) if watch else int(ExitStatus.OK)

    context.echo(f"task      {task.id}")
    context.echo(f"hosts     {task.spec.source_host} -> {task.spec.target_host}")
    context.echo(f"state     {task_label(task)}")
    context.echo(f"phase     {task.phase.value}")
    context.echo(f"created   {format_time(task.created_at)} UTC")
    finished = "-" if task.finished_at is None else f"{format_time(task.finished_at)} UTC"
    context.echo(f"finished  {finished}")
    rollback_line = latest_rollback(store.get_extra(task.id))
    if rollback_line:
        context.echo(f"rollback  {rollback_line}")
    if task.error:
        context.echo(f"error     {task.error.get('message')}")
    compression = store.get_extra(task.id).get("compression", {})
    for item in task.items:
        context.echo(f"volume    {item.source} -> {item.target}  {item.state.value}  "
                     f"{volume_progress(item)}"
                     f"{compression_note(compression.get(str(item.position)))}")
    extra = store.get_extra(task.id) if task.spec.mode.value == "full" else {}
    for container in (extra.get("plan") or {}).get("containers") or []:
        context.echo(f"container {container['name']}  image {container['image']}")
    for transfer in extra.get("transfers") or []:
        # An image's layers that the target has are read but not sent (see "images").
        sent = ("" if transfer.get("bytes_sent") is None else
                f" read, {format_bytes(transfer['bytes_sent'])} sent to the target")
        context.echo(f"{transfer['kind']:<9} {transfer['name']}  {transfer['state']}  "
                     f"{format_bytes(transfer['bytes_done'])} / "
                     f"{format_bytes(transfer['bytes_total'])}{sent}")
    stopped = stopped_source_containers(store, task)
    if stopped:
        restart = ("" if task.state is TaskState.RUNNING else
                   f"; 'ddmctl resume {task.id}' or 'ddmctl rollback {task.id}' starts them again")
        context.echo(f"stopped   {', '.join(stopped)} on {task.spec.source_host}{restart}")
    if extra.get("finalized"):
        context.echo(f"finalized source containers removed from {task.spec.source_host}; the "
                     "task can no longer be rolled back")
    if extra.get("downtime_seconds") is not None:
        context.echo(f"downtime  {extra['downtime_seconds']:.2f} s")
    if extra.get("image_bytes_sent") is not None:
        context.echo(f"images    {format_bytes(extra['image_bytes_sent'])} sent")
    for event in events:
        context.echo(f"{format_time(event['at'])}  {event['level']:<7}  {event['message']}")
    return watched_exit_status(task) if watch else int(ExitStatus.OK)


def latest_rollback(extra: dict[str, Any]) -> str:
    """Return when the task's latest rollback ended, and its error if it failed, or "" if none ran.

    A rollback that failed stores its error as undo.ROLLBACK_ERROR, and one that finished
    clears it.
    """
    finished_at = extra.get(ROLLBACK_FINISHED_AT)
    if finished_at is None:
        return ""
    error = extra.get(ROLLBACK_ERROR)
    if not error:
        return f"{format_time(finished_at)} UTC"
    return f"{format_time(finished_at)} UTC, failed: {error.get('message')}"


def rollback_started(store: TaskStore, task_id: str, after_event_id: int) -> bool:
    """Return whether a rollback phase of the task began after the event `after_event_id`."""
    return any(event["kind"] == "phase" and event["message"] == "phase rollback started"
               for event in store.get_events(task_id, after_event_id))


# Phases of a full-mode task from which its running source containers are stopped.
CUTOVER_PHASES = (Phase.MIGRATE, Phase.VERIFY, Phase.CLEANUP, Phase.ROLLBACK)


def stopped_source_containers(store: TaskStore, task: Task) -> list[str]:
    """Return the source containers that the task stopped and has not started again.

    Volumes mode records the writers it stopped (--stop-writers, --pause) until it releases
    them. A full-mode task stops its running source containers for the cutover. They stay
    stopped when it succeeds, because they were moved, and start again when it is rolled
    back. So only an interrupted task in or after the cutover lists them.
    """
    extra = store.get_extra(task.id)
    if task.spec.mode.value != "full":
        recorded = extra.get("stopped_writers") or {}
        return [container_id[:12] for container_id in recorded.get("ids") or []]
    if task.state is TaskState.INTERRUPTED and task.phase in CUTOVER_PHASES:
        return list(extra.get("source_running") or [])
    return []


def task_document(store: TaskStore, task: Task) -> dict[str, Any]:
    """Return the task's JSON document for list and status, with its latest rollback's outcome."""
    data = task.to_dict()
    extra = store.get_extra(task.id)
    data["rollback_finished_at"] = extra.get(ROLLBACK_FINISHED_AT)
    data["rollback_error"] = extra.get(ROLLBACK_ERROR)
    return data


def watched_exit_status(task: Task) -> int:
    """Return the exit status of `ddmctl status --watch` for a task that stopped running."""
    if task.state is TaskState.SUCCEEDED:
        return int(ExitStatus.OK)
    stored = (task.error or {}).get("exit_status")
    if isinstance(stored, int) and stored != int(ExitStatus.OK):
        return stored
    if task.state in (TaskState.INTERRUPTED, TaskState.CANCELLED):
        return int(ExitStatus.INTERRUPTED)
    return int(ExitStatus.FAILED)


def volume_progress(item: TaskItem) -> str:
    """Return a volume's tar stream bytes, against an estimate while it copies.

    bytes_done counts the tar stream, which adds a 512-byte header to each entry and pads
    each file to 512 bytes. bytes_total is the engine's size of the volume's file data, so a
    volume of many small files sends more bytes than its total. While copying, the estimate
    of the stream is therefore at least the bytes sent so far.
    """
    done = format_bytes(item.bytes_done)
    if item.state is ItemState.COPYING and item.bytes_total is not None:
        estimate = max(item.bytes_total, item.bytes_done)
        return f"{done} / about {format_bytes(estimate)} of tar stream"
    data = "unknown" if item.bytes_total is None else format_bytes(item.bytes_total)
    return f"{done} of tar stream (volume data {data})"


def compression_note(record: dict | None) -> str:
    """Return ", zstd-3: 12.0 MiB on the wire" for a compressed volume, else ""."""
    if not record or not record.get("codec") or record.get("wire_bytes") is None:
        return ""
    return f", {record['codec']}-{record['level']}: {format_bytes(record['wire_bytes'])} on the wire"


@click.command(epilog=epilog("ddmctl resume 3f2a9c"))
@click.argument("task_id", metavar="TASK", shell_complete=complete_task)
@json_option
@click.pass_obj
def resume(context: CommandContext, task_id: str, as_json: bool) -> int:
    """Resume a paused task, or run an interrupted one again here.

    A paused task continues in the process that runs it, and this command returns at once.
    For an interrupted task, volumes that were not verified are copied again.
    """
    store = context.store
    task = mark_stale_running(store, store.get_task(task_id))
    if api.is_paused(task):
        task = api.resume_task(context.config, store, task.id)
        if as_json:
            context.print_json(task.to_dict())
        else:
            context.info(f"task {task.id}: resume requested; it continues where it paused")
        return int(ExitStatus.OK)
    return run_and_report(context, task.id, as_json, resume=True)


@click.command(epilog=epilog("ddmctl cancel 3f2a9c"))
@click.argument("task_id", metavar="TASK", shell_complete=complete_task)
@json_option
@click.pass_obj
def cancel(context: CommandContext, task_id: str, as_json: bool) -> int:
    """Stop a running task and roll it back (an interrupted task is rolled back here)."""
    task = api.cancel_task(context.store, task_id)
    if task.state is TaskState.INTERRUPTED:
        task = api.rollback_task(context.config, context.store, task.id)
    if as_json:
        context.print_json(task.to_dict())
    elif task.state is TaskState.RUNNING:
        context.info(f"task {task.id}: cancel requested; it rolls back at its next safe point")
    else:
        context.info(f"task {task.id} {task.state.value}")
    return int(ExitStatus.OK)


@click.command(epilog=epilog("ddmctl rollback 3f2a9c"))
@click.argument("task_id", metavar="TASK", shell_complete=complete_task)
@click.option("--force", is_flag=True,
              help="Remove target volumes even when they changed since the task finished.")
@json_option
@click.pass_obj
def rollback(context: CommandContext, task_id: str, force: bool, as_json: bool) -> int:
    """Remove what a task created on the target host. The source is never changed.

    A target volume that was replaced or changed after a succeeded task finished is kept, and
    the command exits 6, unless --force is given. The rollback then removes nothing, and it
    prints the per-volume lines (below) with each changed volume kept and why, each volume
    already gone absent and the others remaining. For a task that
    ran with --verify full (the default unless the config sets defaults.verify) and not with
    --route direct, the files' content and metadata are compared with the task's copy. For
    other tasks only metadata is compared: type, mode, owner, size, link target and mtime in
    whole seconds, so a file rewritten with the same size and mtime counts as unchanged. A
    succeeded task that updated a volume with --incremental is rejected with exit status 2,
    because its backup is removed. A target volume that another task holds locked (it runs,
    or was interrupted) stops the rollback with exit status 6 before it changes anything,
    --force or not.

    Prints a tab-separated line per volume: source, target and the outcome. The outcome is
    removed, absent (the volume no longer existed, for example removed by hand, by another
    task's rollback or by an earlier rollback of this task), restored (an incremental update
    undone from its backup), untouched (the task never started the volume), kept (the task did
    not create it, it changed since the task, an earlier rollback of the task restored it, or
    an earlier rollback undid it and later tasks wrote it since or a volume of its name exists
    again), remaining (the rollback stopped before removing it, or Docker rejected removing
    it, for example because a container uses it) or unknown (see below), each but removed
    followed by the reason. A removed volume has a reason only when the rollback removed just
    the task's staging copy, because the copy never reached the target volume. The reason of
    a rejected removal gives Docker's error and what to do. A kept volume is left as it is
    now. A rollback that stops part way prints these lines too, then the error; run it again
    to finish.

    A failed or cancelled task was rolled back when it stopped, and a rolled_back one on
    request. Rolling such a task back again keeps its state and error, and reports each
    volume that the earlier rollback removed as absent and each one it restored as kept. A
    volume that the earlier rollback removed is unknown instead when this rollback could not
    check whether a volume of its name exists on the target now. When such a rollback fails,
    the task still keeps its state and error, and 'ddmctl status' shows the rollback's error
    on its rollback line.
    """
    before = context.store.get_task(task_id)
    rolled_back_before = {item.position for item in before.items
                          if item.state in UNDONE_STATES}
    repeated = before.state in ROLLED_BACK_STATES
    earlier_events = context.store.get_events(before.id)
    last_event_id = earlier_events[-1]["id"] if earlier_events else 0
    try:
        task = api.rollback_task(context.config, context.store, before.id, force=force)
    except TaskNotFound:
        raise
    except TargetsChanged as error:
        # The changed-volume check stopped the rollback before it removed anything.
        print_rollback_outcomes(context, context.store.get_task(before.id), as_json,
                                rolled_back_before, repeated, changed=error.changed,
                                absent_at_check=error.absent)
        raise
    except DDMError:
        # A rollback that stopped part way still reports what it removed before the error
        # line. A rollback rejected before it started (a lock that another task holds, or a
        # failed check) changed nothing, also when an earlier rollback left the task
        # interrupted in the rollback phase, so it prints no lines.
        stopped = context.store.get_task(before.id)
        started = rollback_started(context.store, before.id, last_event_id)
        if started and repeated and stopped.state is before.state:
            print_rollback_outcomes(context, stopped, as_json, rolled_back_before, repeated,
                                    stopped=True)
            if not as_json:
                context.info(f"task {stopped.id} stays {stopped.state.value}")
        elif started and stopped.state is TaskState.INTERRUPTED and stopped.phase is Phase.ROLLBACK:
            print_rollback_outcomes(context, stopped, as_json, rolled_back_before, repeated)
        raise

    print_rollback_outcomes(context, task, as_json, rolled_back_before, repeated)
    if not as_json and repeated:
        context.info(f"task {task.id} stays {task.state.value}")
    elif not as_json:
        context.info(f"task {task.id} {task.state.value}")
    return int(ExitStatus.OK)


def print_rollback_outcomes(context: CommandContext, task: Task, as_json: bool,
                            rolled_back_before: set[int], repeated: bool,
                            changed: dict[int, str] | None = None,
                            absent_at_check: frozenset[int] = frozenset(),
                            stopped: bool = False) -> None:
    """Print a rollback's per-volume outcomes: a line each, or the task as JSON.

    `rolled_back_before` lists the items an earlier rollback of the task had undone, and
    `repeated` is whether that rollback had finished. `stopped` is whether this rollback
    raised an error (see rollback_outcomes).
    `changed` and `absent_at_check` are the volumes that the changed-volume check kept and
    found already gone (TargetsChanged.changed and TargetsChanged.absent).
    """
    later = later_writers(context.store, task) if rolled_back_before else {}
    outcomes = rollback_outcomes(task, context.store.get_events(task.id),
                                 rolled_back_before=rolled_back_before, later_tasks=later,
                                 changed=changed, absent_at_check=absent_at_check,
                                 repeated=repeated, stopped=stopped)
    if as_json:
        data = task_document(context.store, task)
        for volume in data["volumes"]:
            outcome, reason = outcomes[volume["position"]]
            volume["rollback"] = {"outcome": outcome, "reason": reason or None}
        context.print_json(data)
        return

    for item in task.items:
        outcome, reason = outcomes[item.position]
        line = f"{item.source}\t{item.target}\t{outcome}"
        context.echo(f"{line}\t{reason}" if reason else line)


COMMANDS = (list_tasks, status, resume, cancel, rollback)
