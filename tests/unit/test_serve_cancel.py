"""`ddmsyncer serve` reports a task that the operator cancelled as cancelled, not as failed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ddm import api
from ddm.errors import Cancelled, MigrationFailed
from ddm.store import TaskStore, default_store_path
from ddm.task import Task, TaskSpec, TaskState
from tests.unit.cli_support import invoke


def queue_task(environ: dict[str, str]) -> str:
    store = TaskStore(default_store_path(environ))
    task = Task(id="5" * 12, spec=TaskSpec(source_host="a", target_host="b"))
    store.create_task(task)
    store.close()
    return task.id


@pytest.mark.parametrize("raised, status, line", [
    (Cancelled("task 555555555555 was cancelled"), 0, "task 555555555555 cancelled"),
    (MigrationFailed("copy failed"), 1, "task 555555555555 failed: copy failed"),
])
def test_serve_reports_cancel_apart_from_failure(
    home: Path, configured: dict[str, str], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, raised: Exception, status: int, line: str,
) -> None:
    task_id = queue_task(configured)

    def run_task(config: object, store: TaskStore, task_id: str, *_: object) -> Task:
        # The runner stores the task's end state before it raises, so --once ends.
        ended = TaskState.CANCELLED if isinstance(raised, Cancelled) else TaskState.FAILED
        store.update_task(task_id, state=ended, finished_at=time.time())
        raise raised

    monkeypatch.setattr(api, "run_task", run_task)
    outcome = invoke("ddmsyncer", ["serve", "--once", "--poll-interval", "0.1"], configured)

    assert outcome.status == status
    assert outcome.stdout == ""
    reported = outcome.stderr.splitlines() + [record.getMessage() for record in caplog.records]
    assert line in reported
    failures = [record for record in caplog.records if record.levelname == "ERROR"]
    assert bool(failures) == (status == 1)
    assert task_id in outcome.stderr
