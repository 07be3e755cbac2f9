"""The live view of `ddmctl status TASK --watch`: refreshed from the task store.

The view reads the store, not the runner's events, so it works for a task run by `ddmsyncer
serve` or in another terminal. The runner stores each volume's byte count about once a second,
so rates are computed from the change between two reads and the ETA from the remaining bytes.
A full-mode task keeps its image, volume and bind-mount transfers and the moment its first
source container stopped in the task's extra state (ddmsyncer/containers.py), so the view
also shows a bar per image and volume and, during the cutover, the downtime so far.
On a terminal it draws a table with a bar per object (rich, on stderr). Elsewhere it writes a
plain line whenever the phase, an object's state or its percentage changes, and the downtime
in steps of PLAIN_DOWNTIME_STEP_SECONDS.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from ddm.store import TaskStore
from ddm.task import Mode, Task, TaskState
from ddmctl.progress import format_bytes, format_duration

WATCH_INTERVAL_SECONDS = 0.5
PLAIN_PERCENT_STEP = 10
PLAIN_DOWNTIME_STEP_SECONDS = 10

MeterKey = int | str


@dataclass
class RateMeter:
    """Bytes per second of each volume or transfer, from the byte counts of successive reads.

    Volumes-mode items are keyed by position, full-mode transfers by "transfer-POSITION".
    """

    samples: dict[MeterKey, tuple[float, int]] = field(default_factory=dict)
    rates: dict[MeterKey, float] = field(default_factory=dict)

    def update(self, task: Task, now: float,
               transfers: Sequence[dict[str, Any]] = ()) -> None:
        for item in task.items:
            self.observe(item.position, item.bytes_done, now)
        for transfer in transfers:
            self.observe(transfer_key(transfer), int(transfer.get("bytes_done") or 0), now)

    def observe(self, key: MeterKey, bytes_done: int, now: float) -> None:
        previous = self.samples.get(key)
        if previous is not None and bytes_done != previous[1] and now > previous[0]:
            self.rates[key] = (bytes_done - previous[1]) / (now - previous[0])
            self.samples[key] = (now, bytes_done)
        elif previous is None:
            self.samples[key] = (now, bytes_done)

    def rate(self, key: MeterKey) -> float | None:
        return self.rates.get(key)


def transfer_key(transfer: dict[str, Any]) -> str:
    return f"transfer-{transfer['position']}"


@dataclass
class FullProgress:
    """Stored cutover state of a full-mode task: its transfers and the downtime."""

    transfers: list[dict[str, Any]] = field(default_factory=list)
    stopped_at: float | None = None  # Unix time of the first source container stop
    downtime_seconds: float | None = None  # recorded once the target containers passed

    def downtime_so_far(self, task: Task, now: float) -> float | None:
        """Return the recorded downtime, or while the task runs the time since the stop."""
        if self.downtime_seconds is not None:
            return self.downtime_seconds
        if self.stopped_at is None or task.state is not TaskState.RUNNING:
            return None
        return max(0.0, now - self.stopped_at)


def read_full_progress(store: TaskStore, task: Task) -> FullProgress:
    """Read a full-mode task's transfers and downtime from its extra state and events.

    The stop time comes from the extra state `source_stopped_at`, else from the first
    "stopped" event, which the runner records after each source container stop.
    """
    if task.spec.mode is not Mode.FULL:
        return FullProgress()
    extra = store.get_extra(task.id)
    stopped_at = extra.get("source_stopped_at")
    if stopped_at is None and task.phase.value in ("migrate", "verify"):
        stopped = [event for event in store.get_events(task.id) if event["kind"] == "stopped"]
        stopped_at = stopped[0]["at"] if stopped else None
    return FullProgress(transfers=list(extra.get("transfers") or []), stopped_at=stopped_at,
                        downtime_seconds=extra.get("downtime_seconds"))


def downtime_text(task: Task, progress: FullProgress, now: float, *,
                  step_seconds: float = 0) -> str | None:
    """Return the downtime line of a cutover, or None before the first source stop.

    While the cutover runs, the time since the stop is rounded down to `step_seconds`.
    """
    if progress.downtime_seconds is not None:
        return f"downtime {format_duration(progress.downtime_seconds)}"
    seconds = progress.downtime_so_far(task, now)
    if seconds is None or progress.stopped_at is None:
        return None
    if step_seconds:
        seconds -= seconds % step_seconds
    stopped = time.strftime("%H:%M:%S", time.gmtime(progress.stopped_at))
    return (f"downtime so far {format_duration(seconds)} (source containers stopped at "
            f"{stopped} UTC)")


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


def sleep_between_reads(seconds: float) -> None:
    """Wait between two reads of the store; tests replace it to step a task's state."""
    time.sleep(seconds)


def watch_task(store: TaskStore, task_id: str, stream: IO[str], *, terminal: bool,
               no_color: bool, interval: float = WATCH_INTERVAL_SECONDS,
               sleep: Callable[[float], None] | None = None, width: int | None = None) -> Task:
    """Show the task until it has finished (or was interrupted); return its last state.

    `sleep` waits between two reads of the store (default sleep_between_reads). `width` sets
    the terminal's columns; None lets rich ask the terminal.
    """
    from ddmsyncer.runner import mark_stale_running

    wait = sleep or sleep_between_reads
    meter = RateMeter()
    if store.get_task(task_id).state is TaskState.QUEUED:
        # Written before the view starts, so that a terminal's live display keeps it.
        stream.write(f"task {task_id} is queued: it starts when 'ddmsyncer serve' takes it or "
                     f"'ddmsyncer run {task_id}' runs it\n")
        stream.flush()
    view = _RichView(stream, no_color, width) if terminal else _PlainView(stream)
    with view:
        while True:
            task = mark_stale_running(store, store.get_task(task_id))
            progress = read_full_progress(store, task)
            meter.update(task, time.monotonic(), progress.transfers)
            view.show(task, meter, progress)
            if task.state.finished or task.state is TaskState.INTERRUPTED:
                return task
            wait(interval)


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

    def show(self, task: Task, meter: RateMeter, progress: FullProgress | None = None) -> None:
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
        if progress is not None:
            self._show_full(task, progress)

    def _show_full(self, task: Task, progress: FullProgress) -> None:
        for transfer in progress.transfers:
            done = int(transfer.get("bytes_done") or 0)
            percent = _percent(done, transfer.get("bytes_total"))
            step = "" if percent is None else f" {percent - percent % PLAIN_PERCENT_STEP}%"
            self._write_if_changed(
                transfer_key(transfer),
                f"{transfer['kind']} {transfer_label(transfer, ' -> ')}: {transfer['state']}"
                f"{step}, {format_bytes(done)} of {format_bytes(transfer.get('bytes_total'))}",
            )
        text = downtime_text(task, progress, time.time(),
                             step_seconds=PLAIN_DOWNTIME_STEP_SECONDS)
        if text:
            self._write_if_changed("downtime", text)


class _RichView:
    """A table with phase, per-object bars, rates, ETA and downtime, redrawn on stderr.

    The command already decided that stderr is a terminal (Environment.stderr_isatty), so the
    console is forced into terminal mode instead of testing the stream again.
    """

    def __init__(self, stream: IO[str], no_color: bool, width: int | None = None) -> None:
        # Imported here, because rich took about 50 ms to import (python -X importtime on the
        # lab machine), and other commands never need it.
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=stream, no_color=no_color, stderr=True, force_terminal=True,
                               width=width)
        self.live = Live(console=self.console, auto_refresh=False, transient=False)

    def __enter__(self) -> _RichView:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.stop()

    def show(self, task: Task, meter: RateMeter, progress: FullProgress | None = None) -> None:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        header = Table.grid(padding=(0, 2))
        header.add_row("task", task.id, "state", task_label(task), "phase", task.phase.value)
        downtime = downtime_text(task, progress, time.time()) if progress else None
        table = Table(box=None, padding=(0, 1))
        first_column = "volume" if task.spec.mode is not Mode.FULL else "object"
        for column in (first_column, "state", "progress", "done", "rate", "ETA"):
            table.add_column(column, no_wrap=column != "progress")
        for item in task.items:
            rate = meter.rate(item.position) if item.state.value == "copying" else None
            table.add_row(f"{item.source} → {item.target}", item.state.value,
                          *_progress_cells(item.bytes_done, item.bytes_total, rate))
        for transfer in progress.transfers if progress else []:
            rate = meter.rate(transfer_key(transfer)) if transfer["state"] == "sending" else None
            table.add_row(f"{transfer['kind']} {transfer_label(transfer, ' → ')}",
                          transfer["state"],
                          *_progress_cells(int(transfer.get("bytes_done") or 0),
                                           transfer.get("bytes_total"), rate))
        parts: list[Any] = [header]
        if downtime:
            parts.append(Text(downtime, style="bold"))
        self.live.update(Group(*parts, table), refresh=True)


def transfer_label(transfer: dict[str, Any], arrow: str) -> str:
    """Return a transfer's name, with its target when the target has another name."""
    target = transfer.get("target") or transfer["name"]
    return transfer["name"] if target == transfer["name"] else f"{transfer['name']}{arrow}{target}"


def _progress_cells(done: int, total: int | None, rate: float | None) -> list[Any]:
    """Return the bar, "done / total", rate and ETA cells of one row."""
    from rich.progress_bar import ProgressBar

    # A volume's total is the engine's size of its file data, which the tar stream's headers
    # and padding exceed, so the total shown is never below the bytes sent.
    total = None if total is None else max(total, done)
    remaining = None if total is None else total - done
    eta = eta_seconds(remaining, rate)
    return [
        ProgressBar(total=float(total) if total else None, completed=float(done), width=30),
        f"{format_bytes(done)} / {format_bytes(total)}",
        f"{format_bytes(int(rate))}/s" if rate else "-",
        format_duration(eta) if eta is not None else "-",
    ]


def _percent(done: int, total: int | None) -> int | None:
    if not total:
        return None
    return min(100, int(done * 100 / total))
