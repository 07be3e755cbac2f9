"""Python API: what the DDM commands do, callable from scripts.

Example::

    from ddm import api

    config = api.load_config()
    store = api.open_store()
    task = api.create_task(store, config, source="old", target="new", volumes=["pgdata"])
    task = api.run_task(config, store, task.id, on_event=print)

The commands are thin layers over these functions; docs/python-api.md has a complete example.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ddm.callbacks import Callbacks, run_task_callbacks, task_summary
from ddm.config import Config, load_config
from ddm.direct_config import validate_route
from ddm.errors import TaskConflict, TaskNotStarted, UsageError
from ddm.events import EventCallback, ignore_event
from ddm.store import TaskStore, default_store_path
from ddm.task import (
    Mode,
    Task,
    TaskItem,
    TaskSpec,
    TaskState,
    VerifyMode,
    VolumeSpec,
    new_task_id,
    parse_volume_mapping,
    validate_docker_name,
)

log = logging.getLogger(__name__)

__all__ = [
    "load_config",
    "open_store",
    "build_spec",
    "plan_task",
    "create_task",
    "create_task_from_spec",
    "run_task",
    "pause_task",
    "resume_task",
    "cancel_task",
    "rollback_task",
    "verify_volumes",
    "check_hosts",
    "load_fleet_plan",
    "apply_fleet_plan",
    "task_summary",
    "build_callbacks",
    "create_full_task",
    "plan_full_task",
    "finalize_task",
    "task_log",
]


def open_store(environ: Mapping[str, str] | None = None) -> TaskStore:
    """Open the task database named by DDM_STATE_DB or the XDG data directory."""
    return TaskStore(default_store_path(dict(os.environ if environ is None else environ)))


def build_spec(
    config: Config,
    *,
    source: str,
    target: str,
    volumes: Iterable[str],
    verify: str | VerifyMode = VerifyMode.FULL,
    force: bool = False,
    options: dict[str, Any] | None = None,
    on_success: str | None = None,
    on_failure: str | None = None,
    notify: Iterable[str] = (),
) -> TaskSpec:
    """Validate the request and return a TaskSpec; nothing is stored or changed.

    `on_success`, `on_failure` and `notify` set the task's callbacks; when left out, the
    config's defaults (defaults.on_success, defaults.on_failure, defaults.notify) apply.
    `options["compress"]` is "none" (the default), "lz4", "zstd" or "auto"; an explicit
    codec with `options["data_path"] == "engine"` raises UsageError.
    """
    config.host(source)
    config.host(target)
    mappings = [parse_volume_mapping(value) for value in volumes]
    if not mappings:
        raise UsageError("no volume given", hint="pass --volume NAME (repeatable)")

    _reject_duplicates([source_name for source_name, _ in mappings], "source volume")
    _reject_duplicates([target_name for _, target_name in mappings], "target volume")
    if source == target:
        source_names = {source_name for source_name, _ in mappings}
        for source_name, target_name in mappings:
            if target_name == source_name:
                raise UsageError(
                    f"volume {source_name!r} would be copied onto itself on host {source!r}",
                    hint="give a new name with --volume SRC:DST to clone on one host",
                )
            if target_name in source_names:
                raise UsageError(
                    f"volume {target_name!r} is both a source and a target on host {source!r}",
                    hint="copy to new names first; DDM never overwrites a volume it reads",
                )

    try:
        verify_mode = VerifyMode(verify)
    except ValueError:
        raise UsageError(f"invalid verify mode {verify!r}", hint="use none, quick or full") from None

    validate_route(config, target, options or {})
    if force and (options or {}).get("incremental"):
        raise UsageError("--incremental and --force ask for opposite things",
                         hint="pass --incremental to update the target in place, or --force to "
                         "replace it")
    if (options or {}).get("incremental") and (options or {}).get("data_path") == "engine":
        raise UsageError("--incremental does not work with --data-path engine",
                         hint="incremental updates scan and write the volumes on their hosts; "
                         "leave out --data-path or pass --data-path host")
    callbacks = Callbacks.build(on_success=on_success, on_failure=on_failure, notify=notify,
                                defaults=config.defaults)
    options = _check_compress(dict(options or {}))
    return TaskSpec(
        source_host=source,
        target_host=target,
        mode=Mode.VOLUMES,
        volumes=tuple(VolumeSpec(source=s, target=t) for s, t in mappings),
        verify=verify_mode,
        force=force,
        options={**callbacks.to_options(), **options},
    )


def _check_compress(options: dict[str, Any]) -> dict[str, Any]:
    """Validate options["compress"] (none, lz4, zstd or auto) against options["data_path"]."""
    from ddmsyncer.compression import validate_compress

    if "compress" in options:
        options["compress"] = validate_compress(options["compress"], options.get("data_path", "auto"),
                                                options.get("route") or "relay")
    return options


def build_callbacks(config: Config, *, on_success: str | None = None,
                    on_failure: str | None = None, notify: Iterable[str] = ()) -> dict[str, Any]:
    """Validate callbacks over the config defaults; return them as task spec options."""
    return Callbacks.build(on_success=on_success, on_failure=on_failure, notify=notify,
                           defaults=config.defaults).to_options()


def _reject_duplicates(names: list[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise UsageError(f"{what} {name!r} given twice")
        seen.add(name)


def create_task(store: TaskStore, config: Config, *, reserve: bool = True, **request: Any) -> Task:
    """Store a new queued task (see build_spec for the arguments) and return it.

    With `reserve` (the default) the task is meant for this process's own run_task, and
    `ddmsyncer serve` does not start it while this process lives. Pass reserve=False to
    leave the task to `ddmsyncer serve`.
    """
    return create_task_from_spec(store, build_spec(config, **request), reserve=reserve)


def create_task_from_spec(store: TaskStore, spec: TaskSpec, *, reserve: bool = True) -> Task:
    """Store a new queued task of either mode from a spec of build_spec or build_full_spec."""
    task = Task(id=new_task_id(), spec=spec)
    task.items = [
        TaskItem(task_id=task.id, position=position, source=volume.source, target=volume.target)
        for position, volume in enumerate(spec.volumes)
    ]
    store.create_task(task, reserved_by=os.getpid() if reserve else None)
    store.add_event(task.id, "info", "created", "task created")
    return store.get_task(task.id)


def run_task(
    config: Config, store: TaskStore, task_id: str, on_event: EventCallback = ignore_event
) -> Task:
    """Run a queued or interrupted task to its end; raise the error of a failed task.

    When the run ends, the task's callbacks run (on_success or on_failure, and notify). Their
    outcome is recorded as task events and never changes the task's result.
    """
    from ddmsyncer.runner import create_runner

    runner = create_runner(config, store, task_id, on_event=on_event)
    started = time.time()
    try:
        return runner.run()
    finally:
        _run_callbacks_once(store, runner.task.id, started)


def _run_callbacks_once(store: TaskStore, task_id: str, started: float) -> None:
    """Run the callbacks of a task that this call finished (not of one it could not claim)."""
    task = store.get_task(task_id)
    ended = task.state.finished or task.state is TaskState.INTERRUPTED
    if not ended or task.finished_at is None or task.finished_at < started:
        return
    try:
        run_task_callbacks(store, task)
    except Exception:  # noqa: BLE001 - a callback never changes the task's result
        log.exception("task %s: running its callbacks failed", task_id)


def pause_task(store: TaskStore, task_id: str) -> Task:
    """Ask a running task to pause at its next safe point (between chunks or volumes)."""
    from ddmsyncer.runner import mark_stale_running

    task = mark_stale_running(store, store.get_task(task_id))
    if task.state is not TaskState.RUNNING:
        raise TaskConflict(
            f"task {task.id} is {task.state.value}; only a running task can be paused",
            hint=f"see 'ddmctl status {task.id}'",
        )
    if task.control == "cancel":
        raise TaskConflict(f"task {task.id} is being cancelled and cannot be paused")
    store.update_task(task.id, control="pause")
    store.add_event(task.id, "info", "pause_requested", "pause requested")
    return store.get_task(task.id)


def is_paused(task: Task) -> bool:
    """Return True when a running task was asked to pause and not resumed yet."""
    return task.state is TaskState.RUNNING and task.control == "pause"


def resume_task(
    config: Config, store: TaskStore, task_id: str, on_event: EventCallback = ignore_event
) -> Task:
    """Resume a task: a paused one continues in its runner, an interrupted one runs here.

    For an interrupted task, verified volumes are kept and the others are copied again; this
    call returns when the task ends. For a paused task it returns at once.
    """
    from ddmsyncer.runner import mark_stale_running

    task = mark_stale_running(store, store.get_task(task_id))
    if is_paused(task):
        store.update_task(task.id, control=None)
        store.add_event(task.id, "info", "resume_requested", "resume requested")
        return store.get_task(task.id)
    if task.state is not TaskState.INTERRUPTED:
        raise TaskNotStarted(
            f"task {task.id} is {task.state.value}; only an interrupted task can be resumed, or "
            "a paused one continued",
            hint=_resume_hint(task),
        )
    if task.control is not None:
        store.update_task(task.id, control=None)
    return run_task(config, store, task.id, on_event)


def rollback_task(
    config: Config,
    store: TaskStore,
    task_id: str,
    on_event: EventCallback = ignore_event,
    *,
    force: bool = False,
) -> Task:
    """Remove what a finished or interrupted task created on the target host.

    A succeeded volumes-mode task whose target volume was replaced or changed since is refused
    with TaskConflict unless `force` is true. So is a task whose volumes another task holds
    locked, running or interrupted, `force` or not. A failed, cancelled or rolled_back task
    was rolled back already, so it keeps its state and error.
    """
    from ddmsyncer.runner import create_runner
    from ddmsyncer.runner import rollback_task as rollback

    runner = create_runner(config, store, task_id, on_event=on_event)
    runner.force_rollback = force
    try:
        return rollback(runner)
    finally:
        runner._close()


def cancel_task(store: TaskStore, task_id: str) -> Task:
    """Ask a running task to stop and roll back; a queued task is cancelled at once."""
    from ddmsyncer.runner import mark_stale_running

    task = mark_stale_running(store, store.get_task(task_id))
    if task.state is TaskState.QUEUED:
        store.update_task(task.id, state=TaskState.CANCELLED, finished_at=time.time())
    elif task.state is TaskState.RUNNING:
        store.update_task(task.id, control="cancel")
        store.add_event(task.id, "info", "cancel_requested", "cancel requested")
    elif task.state is not TaskState.INTERRUPTED:
        raise TaskConflict(f"task {task.id} has already ended ({task.state.value}), so there is "
                           "nothing to cancel", hint=_ended_task_hint(task))
    return store.get_task(task.id)


def _resume_hint(task: Task) -> str:
    """Return what to do instead of resuming a task that is neither interrupted nor paused."""
    if task.state is TaskState.QUEUED:
        return f"run it with 'ddmsyncer run {task.id}', or leave it to 'ddmsyncer serve'"
    if task.state is TaskState.RUNNING:
        return f"it runs already; watch it with 'ddmctl status --watch {task.id}'"
    return "start a new task with 'ddmctl migrate' instead"


def _ended_task_hint(task: Task) -> str:
    """Return what an operator can still do with a task that has ended."""
    if task.state is TaskState.SUCCEEDED:
        return f"undo its changes with 'ddmctl rollback {task.id}'"
    return f"see what it left with 'ddmctl status {task.id}'"


def plan_task(config: Config, spec: TaskSpec, *, probe_bytes: int | None = None,
              store: TaskStore | None = None) -> dict[str, Any]:
    """Run the prepare checks without changing anything and return the plan document.

    The document (described in docs/json-schemas.md) lists every object, its size, data path
    and preserved aspects, every conflict, the ordered steps and a duration estimate from a
    link speed measured with `probe_bytes` of /dev/zero read and written over SSH. With
    `store`, volumes that the real run would update incrementally (option "incremental") or
    leave alone as already migrated are planned as such.
    """
    from ddmsyncer.plan import DEFAULT_PROBE_BYTES, build_plan

    return build_plan(config, spec, probe_bytes=DEFAULT_PROBE_BYTES if probe_bytes is None
                      else probe_bytes, store=store)


def verify_volumes(config: Config, source: str, target: str, volumes: Iterable[str], *,
                   deep: bool = False) -> list[dict[str, Any]]:
    """Compare volumes on two hosts (SRC[:DST] names); return one result per volume.

    Each result has `source`, `target`, `entries` and `differences` (path, aspect, source
    value, target value, as ddmverify --json prints them). Nothing is changed on either host.
    """
    from ddmdriver.engine import open_engine
    from ddmsyncer import volumes as volume_steps
    from ddmsyncer.compare import compare_volume

    mode = VerifyMode.FULL if deep else VerifyMode.QUICK
    spec = build_spec(config, source=source, target=target, volumes=volumes, verify=mode,
                      force=True)
    aspects = volume_steps.aspects_for(mode)
    session = f"verify-{new_task_id()}"
    with open_engine(config.host(source), config) as source_engine, \
            open_engine(config.host(target), config) as target_engine:
        return [compare_volume(source_engine, target_engine, volume.source, volume.target,
                               aspects, deep, session)
                for volume in spec.volumes]


def check_hosts(config: Config, names: Iterable[str]) -> list[Any]:
    """Check each host's reachability, engine and rights; return one HostCheck per host."""
    from ddmdriver.hostcheck import check_host

    return [check_host(config, config.host(name)) for name in names]


def load_fleet_plan(path: Path, config: Config) -> Any:
    """Read and validate a fleet plan file; raise UsageError (exit status 2) when invalid."""
    from ddm.fleet import load_fleet_plan as load

    return load(path, config)


def apply_fleet_plan(config: Config, store_path: Path, plan: Any, *, fail_fast: bool = False,
                     on_item: Any = None) -> list[Any]:
    """Run every item of a fleet plan within its concurrency limits; return the results."""
    from ddmsyncer.fleet import apply_plan

    return apply_plan(config, store_path, plan, fail_fast=fail_fast, on_item=on_item)


def default_config(path: Path | None = None) -> Config:
    """Load the configuration from `path`, DDM_CONFIG or the XDG default."""
    return load_config(path)


def build_full_spec(
    config: Config,
    *,
    source: str,
    target: str,
    containers: Iterable[str] = (),
    project: str | None = None,
    map_path: Iterable[str] = (),
    remove_source: bool = False,
    verify: str | VerifyMode = VerifyMode.FULL,
    options: dict[str, Any] | None = None,
) -> TaskSpec:
    """Validate a full-mode request and return its TaskSpec; nothing is stored or changed.

    The containers, project, path mappings and remove_source go into TaskSpec.options, so
    tasks stored before full mode existed still load.
    """
    config.host(source)
    config.host(target)
    names = list(containers)
    if bool(names) == bool(project):
        raise UsageError("full mode needs either --container NAME (repeatable) or --project NAME")
    for name in names:
        validate_docker_name(name, "container")
    _reject_duplicates(names, "container")
    if project is not None:
        validate_docker_name(project, "compose project")
    if source == target:
        raise UsageError(f"full mode moves containers between two hosts; both are {source!r}")

    mappings: dict[str, str] = {}
    for value in map_path:
        source_path, separator, target_path = value.partition("=")
        if not separator or not source_path.startswith("/") or not target_path.startswith("/"):
            raise UsageError(f"invalid --map-path {value!r}",
                             hint="use --map-path /source/dir=/target/dir with absolute paths")
        mappings[source_path.rstrip("/") or "/"] = target_path.rstrip("/") or "/"

    try:
        verify_mode = VerifyMode(verify)
    except ValueError:
        raise UsageError(f"invalid verify mode {verify!r}", hint="use none, quick or full") from None

    from ddmsyncer.compression import reject_full_mode_codec
    from ddmsyncer.datapath import reject_full_mode_data_path

    full_options = dict(options or {})
    reject_full_mode_codec(full_options.get("compress"))
    reject_full_mode_data_path(full_options.get("data_path"))
    full_options.update(containers=names, project=project, map_path=mappings,
                        remove_source=remove_source)
    return TaskSpec(source_host=source, target_host=target, mode=Mode.FULL, volumes=(),
                    verify=verify_mode, options=full_options)


def create_full_task(store: TaskStore, config: Config, *, reserve: bool = True,
                     **request: Any) -> Task:
    """Store a new queued full-mode task (see build_full_spec; `reserve` as in create_task)."""
    return create_task_from_spec(store, build_full_spec(config, **request), reserve=reserve)


def plan_full_task(config: Config, spec: TaskSpec, *, probe_bytes: int | None = None
                   ) -> dict[str, Any]:
    """Return the plan document of a full-mode task (the same document as plan_task)."""
    return plan_task(config, spec, probe_bytes=probe_bytes)


def finalize_task(config: Config, store: TaskStore, task_id: str) -> Task:
    """Remove the stopped source containers of a succeeded full-mode task."""
    from ddmsyncer.containers import finalize_task as finalize
    from ddmsyncer.runner import create_runner

    _require_full(store.get_task(task_id))
    finalize(create_runner(config, store, task_id))
    return store.get_task(task_id)


def task_log(config: Config, store: TaskStore, task_id: str, container: str) -> bytes:
    """Return a source container's log as archived on the target by a full-mode task."""
    from ddmsyncer.containers import read_task_log
    from ddmsyncer.runner import create_runner

    task = store.get_task(task_id)
    if task.spec.mode is not Mode.FULL:
        raise UsageError(f"task {task.id} is a {task.spec.mode.value}-mode task, so it archived "
                         "no container logs",
                         hint=f"--container applies to full-mode tasks only; 'ddmctl logs "
                         f"{task.id}' without it prints the task's event log")
    return read_task_log(create_runner(config, store, task_id), container)


def _require_full(task: Task) -> None:
    if task.spec.mode is not Mode.FULL:
        raise UsageError(f"task {task.id} is a {task.spec.mode.value}-mode task",
                         hint="finalize applies to full-mode tasks only")
