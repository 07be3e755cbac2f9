"""Queued tasks that a live process reserved for itself are left alone by `ddmsyncer serve`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ddm.store import TaskStore
from ddm.task import Task, TaskItem, TaskSpec, TaskState, VolumeSpec
from ddmsyncer.cli import reserved_elsewhere


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[TaskStore]:
    task_store = TaskStore(tmp_path / "tasks.db")
    yield task_store
    task_store.close()


def stored_task(store: TaskStore, task_id: str, reserved_by: int | None) -> Task:
    spec = TaskSpec(source_host="h1", target_host="h2", volumes=(VolumeSpec("data", "data"),))
    task = Task(id=task_id, spec=spec)
    task.items = [TaskItem(task_id=task_id, position=0, source="data", target="data")]
    store.create_task(task, reserved_by=reserved_by)
    return store.get_task(task_id)


def exited_process_id() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_reservation_is_stored_with_queued_state(store: TaskStore) -> None:
    task = stored_task(store, "a" * 12, reserved_by=4242)

    assert task.state is TaskState.QUEUED
    assert task.runner_pid == 4242


def test_serve_skips_task_of_live_process(store: TaskStore) -> None:
    # The holder exits when its stdin closes, which needs no POSIX signal.
    holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                              stdin=subprocess.PIPE)
    try:
        task = stored_task(store, "b" * 12, reserved_by=holder.pid)

        assert reserved_elsewhere(task) is True
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait()


def test_serve_takes_task_of_exited_process(store: TaskStore) -> None:
    task = stored_task(store, "c" * 12, reserved_by=exited_process_id())

    assert reserved_elsewhere(task) is False


def test_serve_takes_unreserved_and_own_tasks(store: TaskStore) -> None:
    unreserved = stored_task(store, "d" * 12, reserved_by=None)
    own = stored_task(store, "e" * 12, reserved_by=os.getpid())

    assert reserved_elsewhere(unreserved) is False
    assert reserved_elsewhere(own) is False
