"""Copy several volumes of a task at once (`--parallel N`).

Each worker thread copies one volume at a time over its own SSH connections to both hosts
and its own task database connection (see TaskRunner.worker), so the relays do not share a
channel window or a lock. Workers take volumes in task order; after the first failure no
further volume starts, the copies in flight finish or fail, and the first error is raised
so the runner rolls the task back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any

from ddm.task import TaskItem

log = logging.getLogger(__name__)


def copy_items(runner: Any, items: Sequence[TaskItem], checks: dict[int, Any], workers: int) -> None:
    """Copy `items` with `workers` threads; raise the first error after all workers stopped."""
    failed = threading.Event()

    def copy_one(item: TaskItem) -> None:
        if failed.is_set():
            return
        try:
            with runner.worker():
                runner.check_control(force=True)
                runner._copy_item(item, checks[item.position])
        except BaseException:
            failed.set()
            raise

    log.info("copying %d volumes with %d workers", len(items), workers)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ddm-copy") as executor:
        futures: list[Future[None]] = [executor.submit(copy_one, item) for item in items]
        wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            future.cancel()
    for future in futures:
        if not future.cancelled() and future.exception() is not None:
            raise future.exception()  # type: ignore[misc]
