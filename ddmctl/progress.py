"""Progress displays for running tasks, all on stderr.

- RichDisplay: bars per volume, and in full mode per image and bind mount (bytes, rate, ETA),
  when stderr is a terminal.
- PlainDisplay: one line per phase, volume and warning, and a progress line at most every
  PLAIN_PROGRESS_SECONDS per volume, when stderr is not a terminal.
- JsonDisplay: one JSON object per event, for --json.
- NullDisplay: nothing, for -q and for tests.
"""

from __future__ import annotations

import json
import logging
import time
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.progress import TaskID

from ddm.env import Environment
from ddm.text import format_bytes
from ddm.events import (
    Event,
    ItemFinished,
    ItemStarted,
    PhaseStarted,
    Progress,
    WARNING_EVENT_MARK,
    TaskFinished,
    Warning,
)

PLAIN_PROGRESS_SECONDS = 5.0
RUNNER_LOGGER = "ddmsyncer.runner"  # the logger of TaskRunner.warn()


class NullDisplay:
    """Display that shows nothing."""

    def __enter__(self) -> NullDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __call__(self, event: Event) -> None:
        return None


class WarningLogFilter(logging.Filter):
    """Drops the log records that repeat Warning events, which a display already shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, WARNING_EVENT_MARK, False)


class WarningDisplay(NullDisplay):
    """Display that shows Warning events, so the runner's log copies of them are left out."""

    _filter = WarningLogFilter()

    def __enter__(self) -> WarningDisplay:
        logging.getLogger(RUNNER_LOGGER).addFilter(self._filter)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger(RUNNER_LOGGER).removeFilter(self._filter)


class JsonDisplay(WarningDisplay):
    """Writes every event as one JSON line on stderr."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def __call__(self, event: Event) -> None:
        self.stream.write(json.dumps(event.to_dict(), default=str) + "\n")
        self.stream.flush()


class PlainDisplay(WarningDisplay):
    """Writes readable progress lines on stderr, for logs and pipes."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.names: dict[int, str] = {}
        self.last_line: dict[int, float] = {}

    def write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def __call__(self, event: Event) -> None:
        if isinstance(event, PhaseStarted):
            self.write(f"phase {event.phase}")
        elif isinstance(event, ItemStarted):
            self.names[event.position] = f"{event.object_kind} {item_label(event, ' -> ')}"
            size = format_bytes(event.bytes_total) if event.bytes_total is not None else "unknown size"
            self.write(f"copying {self.names[event.position]} ({size})")
        elif isinstance(event, Progress):
            now = time.monotonic()
            if now - self.last_line.get(event.position, 0.0) >= PLAIN_PROGRESS_SECONDS:
                self.last_line[event.position] = now
                self.write(f"  {self.names.get(event.position, event.position)}: "
                           f"{format_bytes(event.bytes_done)}")
        elif isinstance(event, ItemFinished):
            self.write(f"copied {self.names.get(event.position, event.position)}: "
                       f"{format_bytes(event.bytes_done)}")
        elif isinstance(event, Warning):
            self.write(f"warning: {event.message}")
        elif isinstance(event, TaskFinished):
            self.write(f"task {event.task_id} {event.state}")


class RichDisplay(WarningDisplay):
    """Shows a progress bar per volume on a terminal (stderr)."""

    def __init__(self, stream: IO[str], no_color: bool) -> None:
        # Imported here, because rich took about 50 ms to import (python -X importtime on the
        # lab machine), and --json and pipes never need it.
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress as RichProgress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.console = Console(file=stream, no_color=no_color, stderr=True)
        self.progress = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.bars: dict[int, TaskID] = {}

    def __enter__(self) -> RichDisplay:
        # The bars start with the first item, because stopping a rich Progress that drew
        # nothing writes an empty line: rich 13.7 does on a terminal, rich 15 on a console
        # that is not interactive. A task stopped in prepare draws no bar.
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bars:
            self.progress.stop()
        super().__exit__(*exc)

    def __call__(self, event: Event) -> None:
        if isinstance(event, PhaseStarted):
            self.console.print(f"[bold]phase[/bold] {event.phase}")
        elif isinstance(event, ItemStarted):
            label = item_label(event, " → ")
            if event.object_kind != "volume":
                label = f"{event.object_kind} {label}"
            if not self.bars:
                self.progress.start()
            self.bars[event.position] = self.progress.add_task(label, total=event.bytes_total)
        elif isinstance(event, Progress) and event.position in self.bars:
            self.progress.update(self.bars[event.position], completed=event.bytes_done)
        elif isinstance(event, ItemFinished) and event.position in self.bars:
            self.progress.update(self.bars[event.position], completed=event.bytes_done,
                                 total=event.bytes_done)
        elif isinstance(event, Warning):
            self.console.print(f"[yellow]warning:[/yellow] {event.message}")


def item_label(event: ItemStarted, arrow: str) -> str:
    """Return "SRC{arrow}DST", or one name when source and target have the same name."""
    if event.object_kind != "volume" and event.source == event.target:
        return event.source
    return f"{event.source}{arrow}{event.target}"


def choose_display(env: Environment, *, as_json: bool, quiet: bool) -> Any:
    """Pick the display for a command's stderr."""
    if quiet:
        return NullDisplay()
    if as_json:
        return JsonDisplay(env.stderr)
    if env.stderr_isatty:
        return RichDisplay(env.stderr, env.no_color)
    return PlainDisplay(env.stderr)


def format_duration(seconds: float) -> str:
    """Format seconds as '0.4 s', '12 s', '3 min 5 s' or '2 h 10 min'."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"
