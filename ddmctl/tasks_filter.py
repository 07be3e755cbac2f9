"""Filters of `ddmctl list`: by host and by creation time."""

from __future__ import annotations

import datetime
import re
import time

import click

from ddm.task import Task

# `ddmctl list` filters in Python, so it reads at most this many of the newest tasks.
MAX_SCANNED_TASKS = 100000
DURATION_PATTERN = re.compile(r"^(\d{1,9})([smhd])$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(value: str | None, now: float | None = None) -> float | None:
    """Parse --since: a duration back from now (30m, 12h, 7d) or a UTC date/time; Unix time."""
    if value is None:
        return None
    now = time.time() if now is None else now
    match = DURATION_PATTERN.fullmatch(value.strip())
    if match:
        return now - int(match.group(1)) * UNIT_SECONDS[match.group(2)]

    try:
        moment = datetime.datetime.fromisoformat(value.strip())
    except ValueError:
        raise click.BadParameter(
            f"invalid time {value!r}: use a duration such as 30m, 12h or 7d, or a UTC date or "
            "time such as 2026-12-04 or 2026-12-04T10:00"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def task_matches(task: Task, *, host: str | None, since: float | None) -> bool:
    """Return True when the task involves `host` (as source or target) and is new enough."""
    if host is not None and host not in (task.spec.source_host, task.spec.target_host):
        return False
    return since is None or task.created_at >= since
