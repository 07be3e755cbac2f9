"""The live view of `ddmctl status TASK --watch`: refreshed from the task store.

The view reads the store, not the runner's events, so it works for a task run by `ddmsyncer
serve` or in another terminal. The runner stores each volume's byte count about once a second,
so rates are computed from the change between two reads and the ETA from the remaining bytes.
On a terminal it draws a table with a bar per volume (rich, on stderr). Elsewhere it writes a
plain line whenever the phase, a volume's state or its percentage changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from ddm.store import TaskStore
from ddm.task import Task, TaskState
from ddmctl.progress import format_bytes

WATCH_INTERVAL_SECONDS = 0.5
PLAIN_PERCENT_STEP = 10


@dataclass
class RateMeter:
    """Bytes per second of each volume, from the byte counts of successive store reads."""

    samples: dict[int, tuple[float, int]] = field(default_factory=dict)
    rates: dict[int, float] = field(default_factory=dict)

    def update(self, task: Task, now: float) -> None:
        for item in task.items:
            previous = self.samples.get(item.position)
            if previous is not None and item.bytes_done != previous[1] and now > previous[0]:
                self.rates[item.position] = (item.bytes_done - previous[1]) / (now - previous[0])
                self.samples[item.position] = (now, item.bytes_done)
            elif previous is None:
                self.samples[item.position] = (now, item.bytes_done)

    def rate(self, position: int) -> float | None:
        return self.rates.get(position)


def task_label(task: Task) -> str:
    """Return the task's state, with 'paused' for a running task that was asked to pause."""
    if task.state is TaskState.RUNNING and task.control == "pause":
        return "running (paused)"
    return task.state.value


def eta_seconds(remaining: int | None, rate: float | None) -> float | None:
    """Return the seconds left at the current rate, or None when either is unknown."""
    if remaining is None or not rate or rate <= 0:
        return None
    return max(remaining, 0) / rate


def watch_task(store: TaskStore, task_id: str, stream: IO[str], *, terminal: bool,
               no_color: bool, interval: float = WATCH_INTERVAL_SECONDS,
               sleep: Callable[[float], None] = time.sleep) -> Task:
    """Show the task until it has finished (or was interrupted); return its last state."""
    from ddmsyncer.runner import mark_stale_running

    meter = RateMeter()
    view = _RichView(stream, no_color) if terminal else _PlainView(stream)
    with view:
        while True:
            task = mark_stale_running(store, store.get_task(task_id))
            meter.update(task, time.monotonic())
            view.show(task, meter)
            if task.state.finished or task.state is TaskState.INTERRUPTED:
                return task
            sleep(interval)


class _PlainView:
    """Writes a line when something visible changes, for logs and pipes."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.last: dict[str, str] = {}

    def __enter__(self) -> _PlainView:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def _write_if_changed(self, key: str, line: str) -> None:
        if self.last.get(key) != line:
            self.last[key] = line
            self.stream.write(line + "\n")
            self.stream.flush()

    def show(self, task: Task, meter: RateMeter) -> None:
        self._write_if_changed("task", f"task {task.id} {task_label(task)}, phase "
                                       f"{task.phase.value}")
        for item in task.items:
            percent = _percent(item.bytes_done, item.bytes_total)
            step = "" if percent is None else f" {percent - percent % PLAIN_PERCENT_STEP}%"
            self._write_if_changed(
                f"item{item.position}",
                f"volume {item.source} -> {item.target}: {item.state.value}{step}, "
                f"{format_bytes(item.bytes_done)}",
            )


class _RichView:
    """A table with phase, per-volume bars, rates and ETA, redrawn in place on stderr."""

    def __init__(self, stream: IO[str], no_color: bool) -> None:
        self.console = Console(file=stream, no_color=no_color, stderr=True)
        self.live = Live(console=self.console, auto_refresh=False, transient=False)

    def __enter__(self) -> _RichView:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.stop()

    def show(self, task: Task, meter: RateMeter) -> None:
        header = Table.grid(padding=(0, 2))
        header.add_row("task", task.id, "state", task_label(task), "phase", task.phase.value)
        table = Table(box=None, padding=(0, 1))
        for column in ("volume", "state", "progress", "done", "rate", "ETA"):
            table.add_column(column)
        for item in task.items:
            rate = meter.rate(item.position) if item.state.value == "copying" else None
            remaining = None if item.bytes_total is None else item.bytes_total - item.bytes_done
            eta = eta_seconds(remaining, rate)
            table.add_row(
                f"{item.source} → {item.target}",
                item.state.value,
                ProgressBar(total=float(item.bytes_total or 1) if item.bytes_total else None,
                            completed=float(item.bytes_done), width=30),
                f"{format_bytes(item.bytes_done)} / {format_bytes(item.bytes_total)}",
                f"{format_bytes(int(rate))}/s" if rate else "-",
                f"{eta:.0f} s" if eta is not None else "-",
            )
        self.live.update(Group(header, table), refresh=True)


def _percent(done: int, total: int | None) -> int | None:
    if not total:
        return None
    return min(100, int(done * 100 / total))
