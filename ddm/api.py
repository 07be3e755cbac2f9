"""Python API: what the DDM commands do, callable from scripts.

Example::

    from ddm import api

    config = api.load_config()
    store = api.open_store()
    task = api.create_task(store, config, source="old", target="new", volumes=["pgdata"])
    task = api.run_task(config, store, task.id, on_event=print)

The commands are thin layers over these functions.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ddm.config import Config, load_config
from ddm.errors import TaskConflict, UsageError
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

__all__ = [
    "load_config",
    "open_store",
    "create_task",
    "run_task",
    "resume_task",
    "rollback_task",
    "cancel_task",
    "plan_task",
    "create_full_task",
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
) -> TaskSpec:
    """Validate the request and return a TaskSpec; nothing is stored or changed."""
    config.host(source)
    config.host(target)
    mappings = [parse_volume_mapping(value) for value in volumes]
    if not mappings:
        raise UsageError("no volume given", hint="pass --volume NAME (repeatable)")

    _reject_duplicates([source_name for source_name, _ in mappings], "source volume")
    _reject_duplicates([target_name for _, target_name in mappings], "target volume")
    if source == target:
        for source_name, target_name in mappings:
            if source_name == target_name:
                raise UsageError(
                    f"volume {source_name!r} would be copied onto itself on host {source!r}",
                    hint="give a new name with --volume SRC:DST to clone on one host",
                )

    try:
        verify_mode = VerifyMode(verify)
    except ValueError:
        raise UsageError(f"invalid verify mode {verify!r}", hint="use none, quick or full") from None

    return TaskSpec(
        source_host=source,
        target_host=target,
        mode=Mode.VOLUMES,
        volumes=tuple(VolumeSpec(source=s, target=t) for s, t in mappings),
        verify=verify_mode,
        force=force,
        options=dict(options or {}),
    )


def _reject_duplicates(names: list[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise UsageError(f"{what} {name!r} given twice")
        seen.add(name)


def create_task(store: TaskStore, config: Config, **request: Any) -> Task:
    """Store a new queued task (see build_spec for the arguments) and return it."""
    spec = build_spec(config, **request)
    task = Task(id=new_task_id(), spec=spec)
    task.items = [
        TaskItem(task_id=task.id, position=position, source=volume.source, target=volume.target)
        for position, volume in enumerate(spec.volumes)
    ]
    store.create_task(task)
    store.add_event(task.id, "info", "created", "task created")
    return store.get_task(task.id)


def run_task(
    config: Config, store: TaskStore, task_id: str, on_event: EventCallback = ignore_event
) -> Task:
    """Run a queued or interrupted task to its end; raise the error of a failed task."""
    from ddmsyncer.runner import create_runner

    return create_runner(config, store, task_id, on_event=on_event).run()


def resume_task(
    config: Config, store: TaskStore, task_id: str, on_event: EventCallback = ignore_event
) -> Task:
    """Resume an interrupted task: verified volumes are kept, the others are copied again."""
    from ddmsyncer.runner import mark_stale_running

    task = mark_stale_running(store, store.get_task(task_id))
    if task.state is not TaskState.INTERRUPTED:
        raise TaskConflict(
            f"task {task.id} is {task.state.value}; only an interrupted task can be resumed",
            hint="start a new task with 'ddmctl migrate' instead",
        )
    return run_task(config, store, task.id, on_event)


def rollback_task(
    config: Config, store: TaskStore, task_id: str, on_event: EventCallback = ignore_event
) -> Task:
    """Remove what a finished or interrupted task created on the target host."""
    from ddmsyncer.runner import create_runner
    from ddmsyncer.runner import rollback_task as rollback

    runner = create_runner(config, store, task_id, on_event=on_event)
    check_rollback_allowed = getattr(runner, "check_rollback_allowed", None)
    if check_rollback_allowed is not None:
        check_rollback_allowed()
    return rollback(runner)


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
        raise TaskConflict(
            f"task {task.id} is {task.state.value} and cannot be cancelled",
            hint=f"undo a finished task with 'ddmctl rollback {task.id}'",
        )
    return store.get_task(task.id)


def plan_task(config: Config, spec: TaskSpec) -> dict[str, Any]:
    """Run the prepare checks without changing anything and return the plan as a mapping."""
    from ddmsyncer.plan import build_plan

    return build_plan(config, spec)


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

    full_options = dict(options or {})
    full_options.update(containers=names, project=project, map_path=mappings,
                        remove_source=remove_source)
    return TaskSpec(source_host=source, target_host=target, mode=Mode.FULL, volumes=(),
                    verify=verify_mode, options=full_options)


def create_full_task(store: TaskStore, config: Config, **request: Any) -> Task:
    """Store a new queued full-mode task (see build_full_spec for the arguments)."""
    spec = build_full_spec(config, **request)
    task = Task(id=new_task_id(), spec=spec)
    store.create_task(task)
    store.add_event(task.id, "info", "created", "task created")
    return store.get_task(task.id)


def plan_full_task(config: Config, spec: TaskSpec) -> dict[str, Any]:
    """Return the plan of a full-mode task; nothing on either host changes."""
    from ddmdriver.engine import open_engine
    from ddmsyncer.fullplan import build_full_plan

    with open_engine(config.host(spec.source_host), config) as source, \
            open_engine(config.host(spec.target_host), config) as target:
        plan = build_full_plan(source, target, spec).to_dict()
    plan.update(mode=spec.mode.value, source_host=spec.source_host,
                target_host=spec.target_host, ok=not plan["conflicts"])
    return plan


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

    _require_full(store.get_task(task_id))
    return read_task_log(create_runner(config, store, task_id), container)


def _require_full(task: Task) -> None:
    if task.spec.mode is not Mode.FULL:
        raise UsageError(f"task {task.id} is a {task.spec.mode.value}-mode task",
                         hint="finalize and logs apply to full-mode tasks only")
