"""A warning that a display shows as an event is not logged a second time."""

from __future__ import annotations

import io
import logging

from ddm.events import WARNING_EVENT_MARK, Warning
from ddmctl.progress import PlainDisplay


def test_display_shows_marked_warning_once() -> None:
    stderr = io.StringIO()
    handler = logging.StreamHandler(stderr)
    runner_log = logging.getLogger("ddmsyncer.runner")
    runner_log.addHandler(handler)
    try:
        with PlainDisplay(stderr) as display:
            runner_log.warning("task t1: disk almost full", extra={WARNING_EVENT_MARK: True})
            display(Warning("t1", message="disk almost full"))
            runner_log.warning("task t1: reconnecting")
        runner_log.warning("task t2: after the display", extra={WARNING_EVENT_MARK: True})
    finally:
        runner_log.removeHandler(handler)

    lines = stderr.getvalue().splitlines()
    assert lines.count("warning: disk almost full") == 1
    assert "task t1: disk almost full" not in lines
    assert "task t1: reconnecting" in lines
    assert "task t2: after the display" in lines
