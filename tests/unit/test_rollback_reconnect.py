"""A rollback's reconnect after a lost connection is a retry: logged at INFO, not WARNING."""

from __future__ import annotations

import contextlib
import logging

import pytest

from ddm.api import create_task
from ddm.config import load_config
from ddm.errors import ConnectionFailed
from ddm.store import TaskStore, default_store_path
from ddmsyncer.runner import TaskRunner


def test_reconnect_logged_at_info(environ: dict[str, str],
                                  caplog: pytest.LogCaptureFixture) -> None:
    config = load_config(None, environ)
    store = TaskStore(default_store_path(environ))
    task = create_task(store, config, source="local", target="local", volumes=("va:vb",),
                       verify="full", force=False)
    runner = TaskRunner(config, store, task.id,
                        engine_factory=lambda host, config: contextlib.nullcontext("new engine"))
    runner._engines["local"] = "lost engine"
    calls: list[str] = []

    def action(engine: str) -> str:
        calls.append(engine)
        if engine == "lost engine":
            raise ConnectionFailed("cannot open an SSH channel to local: the SSH connection "
                                   "was closed", hint="check that the host is up")
        return engine

    with caplog.at_level(logging.INFO, logger="ddmsyncer.runner"):
        result = runner.on_host("local", action)
    events = store.get_events(task.id)
    runner._close()
    store.close()

    assert result == "new engine"
    assert calls == ["lost engine", "new engine"]
    assert [record.levelno for record in caplog.records] == [logging.INFO]
    assert "connecting once more" in caplog.records[0].getMessage()
    assert "check that the host is up" not in caplog.records[0].getMessage()
    assert [event["level"] for event in events if event["kind"] == "reconnect"] == ["info"]
