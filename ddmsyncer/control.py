"""Pause and resume of a running task, driven by the `control` column of the task store.

`ddmctl pause TASK` sets control to "pause", `ddmctl resume TASK` clears it and `ddmctl cancel
TASK` sets "cancel". The runner polls the column at safe points: between volumes, and in the
relay's observer between two chunks of a volume's archive.

Why blocking between chunks is safe for the target: the observer runs in the thread that feeds
the PUT /containers/{id}/archive request body, before the chunk is handed on. While it blocks,
the target engine's tar extractor simply waits for more body bytes, and the source engine's
writer waits once the relay's bounded queue and the SSH window are full. An entry may be half
written on the target at that moment, but the target volume is one this task created and
nothing else uses it. On resume the stream continues byte for byte, so the entry is completed.
On cancel the whole target volume is removed by the rollback, so a half-written entry is never
kept. Neither engine times out an idle archive stream (dockerd 20.10 sets no read or write
timeout on API requests), and the SSH connection sends keepalives.
NOTE: pauses of a few seconds are tested on the lab; pauses of hours are not.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ddm.errors import Cancelled
from ddm.events import Paused, Resumed

log = logging.getLogger(__name__)

PAUSE_POLL_SECONDS = 0.5
PAUSE = "pause"
CANCEL = "cancel"


def wait_while_paused(runner: Any) -> None:
    """Block until the task's control is cleared (resume) or set to cancel (raise Cancelled)."""
    task_id = runner.task.id
    phase = runner.task.phase.value
    started = time.monotonic()
    runner.record("info", "paused", f"task paused in phase {phase}")
    runner.emit(Paused(task_id, phase=phase))

    while True:
        time.sleep(PAUSE_POLL_SECONDS)
        control = runner.store.get_task(task_id).control
        if control == CANCEL:
            raise Cancelled(f"task {task_id} was cancelled while paused",
                            hint="the target was rolled back")
        if control != PAUSE:
            break

    seconds = time.monotonic() - started
    runner.record("info", "resumed", f"task resumed after {seconds:.1f} s paused")
    runner.emit(Resumed(task_id, phase=phase, seconds=seconds))
