"""Run the items of a fleet plan as tasks, within the plan's concurrency limits.

Each item is one task that runs in its own thread with its own task store connection. An item
starts when fewer than `total` items run overall and fewer than `per_host` running items use
its source or target host. A failed item rolls back alone (as every task does) and the others
go on, unless fail_fast is set: then no new item starts and the running ones are cancelled,
which rolls them back too.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddm.config import Config
from ddm.errors import DDMError
from ddm.fleet import FleetItem, FleetPlan
from ddm.store import TaskStore
from ddm.task import Task, TaskItem, TaskState, new_task_id

log = logging.getLogger(__name__)

SKIPPED = "skipped"


@dataclass
class ItemResult:
    """The outcome of one fleet item: its task, final state, duration and error line."""

    name: str
    source_host: str
    target_host: str
    volumes: list[str]
    task_id: str | None = None
    state: str = SKIPPED
    seconds: float | None = None
    error: str | None = None
    started: float = field(default=0.0, repr=False)

    @property
    def succeeded(self) -> bool:
        return self.state == TaskState.SUCCEEDED.value

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source_host": self.source_host,
                "target_host": self.target_host, "volumes": self.volumes,
                "task_id": self.task_id, "state": self.state,
                "duration_seconds": self.seconds, "error": self.error}


ItemCallback = Callable[[str, ItemResult], None]


def apply_plan(config: Config, store_path: Path, plan: FleetPlan, *, fail_fast: bool = False,
               on_item: ItemCallback | None = None) -> list[ItemResult]:
    """Run every item; return one result per item, in the plan's order.

    `on_item(event, result)` is called with "started" and "finished" (from worker threads).
    """
    notify = on_item or (lambda event, result: None)
    results = {item.name: _new_result(item) for item in plan.items}
    pending = list(plan.items)
    running: dict[Future[None], FleetItem] = {}
    busy_hosts: Counter[str] = Counter()
    stop = threading.Event()

    with ThreadPoolExecutor(max_workers=plan.total, thread_name_prefix="ddm-fleet") as pool:
        try:
            while pending or running:
                if not stop.is_set():
                    for item in _startable(pending, running, busy_hosts, plan):
                        pending.remove(item)
                        busy_hosts.update(item.hosts)
                        result = results[item.name]
                        running[pool.submit(_run_item, config, store_path, item, result,
                                            notify, stop)] = item

                if stop.is_set():
                    pending.clear()  # their results stay "skipped"
                if not running:
                    continue
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for future in done:
                    item = running.pop(future)
                    busy_hosts.subtract(item.hosts)
                    if not results[item.name].succeeded and fail_fast and not stop.is_set():
                        stop.set()
                        log.warning("item %s failed; --fail-fast cancels the running items",
                                    item.name)
                        _cancel_running(store_path, running, results)
        except KeyboardInterrupt:
            stop.set()
            _cancel_running(store_path, running, results)
            raise
    return [results[item.name] for item in plan.items]


def _new_result(item: FleetItem) -> ItemResult:
    return ItemResult(
        name=item.name, source_host=item.spec.source_host, target_host=item.spec.target_host,
        volumes=[volume.source if volume.source == volume.target
                 else f"{volume.source}:{volume.target}" for volume in item.spec.volumes],
    )


def _startable(pending: list[FleetItem], running: dict[Future[None], FleetItem],
               busy_hosts: Counter[str], plan: FleetPlan) -> list[FleetItem]:
    """Return the pending items that may start now, in plan order."""
    chosen: list[FleetItem] = []
    planned = Counter(busy_hosts)
    for item in pending:
        if len(running) + len(chosen) >= plan.total:
            break
        if all(planned[host] < plan.per_host for host in item.hosts):
            chosen.append(item)
            planned.update(item.hosts)
    return chosen


def _run_item(config: Config, store_path: Path, item: FleetItem, result: ItemResult,
              notify: ItemCallback, stop: threading.Event) -> None:
    """Create the item's task and run it, unless the fleet is stopping.

    The task ID is published before `stop` is read. The main thread sets `stop` before it
    reads the task IDs to cancel, so either this thread finds `stop` set or the main thread
    cancels the task.
    """
    from ddm import api

    if stop.is_set():
        return
    store = TaskStore(store_path)
    result.started = time.monotonic()
    try:
        task = _create_task(store, item)
        result.task_id = task.id
        if stop.is_set():
            api.cancel_task(store, task.id)
            return
        result.state = TaskState.RUNNING.value
        notify("started", result)
        api.run_task(config, store, task.id)
    except DDMError as error:
        result.error = str(error)
        log.info("fleet item %s failed: %s", item.name, error)
    except Exception as error:  # noqa: BLE001 - one item's bug must not stop the others
        log.exception("fleet item %s failed", item.name)
        result.error = f"internal error: {type(error).__name__}: {error}"
    finally:
        if result.task_id is not None:
            result.state = store.get_task(result.task_id).state.value
        elif result.state == SKIPPED:
            result.state = TaskState.FAILED.value
        result.seconds = time.monotonic() - result.started
        store.close()
        notify("finished", result)


def _create_task(store: TaskStore, item: FleetItem) -> Task:
    task = Task(id=new_task_id(), spec=item.spec)
    task.items = [TaskItem(task_id=task.id, position=position, source=volume.source,
                           target=volume.target)
                  for position, volume in enumerate(item.spec.volumes)]
    store.create_task(task, reserved_by=os.getpid())
    store.add_event(task.id, "info", "created", f"task created for fleet item {item.name!r}")
    return store.get_task(task.id)


def _cancel_running(store_path: Path, running: dict[Future[None], FleetItem],
                    results: dict[str, ItemResult]) -> None:
    from ddm import api

    store = TaskStore(store_path)
    try:
        for item in running.values():
            task_id = results[item.name].task_id
            if task_id is None:
                continue
            try:
                api.cancel_task(store, task_id)
            except DDMError as error:
                log.warning("cancelling task %s of item %s failed: %s", task_id, item.name,
                            error)
    finally:
        store.close()
