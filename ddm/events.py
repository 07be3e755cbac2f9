"""Typed events that a running task emits: phases, progress, warnings and the result.

The syncer sends every event to one callback. The commands turn them into progress bars or JSON
lines, the Python API hands them to the caller, and the task store keeps the ones worth a log
line (progress is sampled, not stored).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


# Attribute of a log record that repeats a Warning event. A display that shows Warning events
# drops such records, so each warning reaches the operator once.
WARNING_EVENT_MARK = "ddm_warning_event"


@dataclass(frozen=True)
class Event:
    """Base of all events; `at` is a Unix time in seconds."""

    task_id: str
    at: float = field(default_factory=time.time, kw_only=True)

    @property
    def kind(self) -> str:
        return type(self).__name__

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.kind, **asdict(self)}


@dataclass(frozen=True)
class PhaseStarted(Event):
    phase: str


@dataclass(frozen=True)
class PhaseFinished(Event):
    phase: str
    seconds: float


@dataclass(frozen=True)
class ItemStarted(Event):
    """A transfer started; `bytes_total` is an estimate or None when unknown.

    `object_kind` is "volume", or in full mode also "image" or "bind_mount".
    """

    position: int
    source: str
    target: str
    bytes_total: int | None
    object_kind: str = "volume"


@dataclass(frozen=True)
class Progress(Event):
    """Bytes of one volume's archive relayed so far."""

    position: int
    bytes_done: int
    bytes_total: int | None


@dataclass(frozen=True)
class ItemFinished(Event):
    position: int
    state: str
    bytes_done: int


@dataclass(frozen=True)
class Warning(Event):  # noqa: A001 - the event's name in the API
    message: str


@dataclass(frozen=True)
class Paused(Event):
    """The runner stopped relaying at a safe point because `ddmctl pause` asked it to."""

    phase: str


@dataclass(frozen=True)
class Resumed(Event):
    """The runner continues after a pause; `seconds` is how long it was paused."""

    phase: str
    seconds: float


@dataclass(frozen=True)
class TaskFinished(Event):
    state: str
    error: dict[str, Any] | None = None


EventCallback = Callable[[Event], None]


def ignore_event(event: Event) -> None:
    """Event callback that drops every event."""
