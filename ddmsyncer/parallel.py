"""Copy and verify several volumes of a task at once (`--parallel N`).

A task with N workers keeps a pool of N worker slots for its whole run. A slot contains its
own engines (SSH connections to both hosts) and its own task database connection, so the
workers share no channel window, connection lock or database connection. A worker thread
borrows a free slot for each volume and gives it back afterwards, so the copy and verify
phases reuse the slots' connections instead of logging in again for every volume.

Each slot's SSH channels and relays use a 1/N share of the single-copy buffer sizes
(ddmdriver.buffers), which keeps the controller's memory near one copy's.

Workers take volumes in task order. After the first failure no further volume starts, the
volumes in flight finish or fail, and the first error is raised so the runner rolls the whole
task back.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from ddm.store import TaskStore
from ddm.task import TaskItem
from ddmdriver import buffers

log = logging.getLogger(__name__)


@dataclass
class WorkerSlot:
    """The engines and task database connection that one worker thread uses at a time."""

    store: TaskStore
    engines: dict[str, Any] = field(default_factory=dict)
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stack.close()
        self.engines.clear()
        self.store.close()


class WorkerPool:
    """At most `workers` slots, made when first needed and closed with the task."""

    def __init__(self, runner: Any, workers: int) -> None:
        self.runner = runner
        self.workers = workers
        self.sizes = buffers.shared_by(workers)
        self._free: queue.SimpleQueue[WorkerSlot] = queue.SimpleQueue()
        self._slots: list[WorkerSlot] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def borrow(self) -> Iterator[None]:
        """Bind a free slot to the calling thread, with the slot's share of the buffer sizes."""
        slot = self._take()
        try:
            with buffers.use(self.sizes), self.runner.worker(slot):
                yield
        finally:
            self._free.put(slot)

    def _take(self) -> WorkerSlot:
        with self._lock:
            if self._free.empty() and len(self._slots) < self.workers:
                slot = WorkerSlot(store=TaskStore(self.runner.store_path))
                self._slots.append(slot)
                return slot
        return self._free.get()

    def close(self) -> None:
        """Close every slot's SSH connections and database connection."""
        with self._lock:
            slots, self._slots = self._slots, []
        for slot in slots:
            slot.close()


def worker_count(runner: Any, items: Sequence[TaskItem]) -> int:
    """Return how many workers the task's `--parallel` gives `items`: 1 means one after another."""
    return max(1, min(int(runner.task.spec.options.get("parallel") or 1), len(items)))


def pool(runner: Any) -> WorkerPool:
    """Return the runner's worker pool, made on first use with the task's `--parallel` workers."""
    existing = getattr(runner, "_worker_pool", None)
    if existing is None:
        existing = WorkerPool(runner, int(runner.task.spec.options.get("parallel") or 1))
        runner._worker_pool = existing
    return existing


def close_pool(runner: Any) -> None:
    """Close the runner's worker pool, if it made one."""
    existing = getattr(runner, "_worker_pool", None)
    if existing is not None:
        existing.close()
        runner._worker_pool = None


def run_items(runner: Any, items: Sequence[TaskItem], action: Callable[[TaskItem], None],
              step: str) -> None:
    """Run `action` on every item with the pool's workers; raise the first error once all stopped.

    `step` names the work in the log ("copying", "verifying").
    """
    workers = min(pool(runner).workers, len(items))
    failed = threading.Event()

    def run_one(item: TaskItem) -> None:
        if failed.is_set():
            return
        try:
            with pool(runner).borrow():
                runner.check_control(force=True)
                action(item)
        except BaseException:
            failed.set()
            raise

    log.info("%s %d volumes with %d workers", step, len(items), workers)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ddm-worker") as executor:
        futures: list[Future[None]] = [executor.submit(run_one, item) for item in items]
        wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            future.cancel()
    for future in futures:
        if not future.cancelled() and future.exception() is not None:
            raise future.exception()  # type: ignore[misc]
