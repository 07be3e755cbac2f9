"""A warning is emitted once: not logged again by a display, not given again by a resumed run."""

from __future__ import annotations

import io
import logging

from ddm import api
from ddm.config import load_config
from ddm.events import WARNING_EVENT_MARK, Event, Warning
from ddm.store import TaskStore, default_store_path
from ddmctl.progress import PlainDisplay
from ddmsyncer.runner import TaskRunner


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


def test_runner_warns_once_per_task(configured: dict[str, str]) -> None:
    # A resumed run is a new TaskRunner on the same stored task.
    config = load_config(None, configured)
    store = TaskStore(default_store_path(configured))
    emitted: list[Event] = []
    try:
        task = api.create_task(store, config, source="a", target="b", volumes=["va"])
        first_run = TaskRunner(config, store, task.id, on_event=emitted.append)
        first_run.warn_once("volume 'va' loses its ACLs")
        first_run.warn_once("volume 'va' loses its ACLs")
        resumed_run = TaskRunner(config, store, task.id, on_event=emitted.append)
        resumed_run.warn_once("volume 'va' loses its ACLs")
        resumed_run.warn_once("volume 'vb' loses its ACLs")
        stored = [event["message"] for event in store.get_events(task.id)
                  if event["kind"] == "warning"]
    finally:
        store.close()

    assert stored == ["volume 'va' loses its ACLs", "volume 'vb' loses its ACLs"]
    assert [event.message for event in emitted if isinstance(event, Warning)] == stored
