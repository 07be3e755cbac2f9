"""A resume takes the interrupted task's locks before it undoes or repeats anything."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ddm.config import config_from_dict
from ddm.errors import TaskNotStarted
from ddm.store import TaskStore
from ddm.task import Mode, Task, TaskItem, TaskSpec, TaskState, VolumeSpec
from ddmsyncer.containers import FullTaskRunner
from ddmsyncer.runner import TaskRunner

CONFIG = {"version": 1, "hosts": {"old": "ssh://root@127.0.0.21", "new": "ssh://root@127.0.0.22"}}


def volumes_task(task_id: str) -> Task:
    spec = TaskSpec(source_host="old", target_host="new", volumes=(VolumeSpec("pg", "pg"),))
    return Task(id=task_id, spec=spec,
                items=[TaskItem(task_id=task_id, position=0, source="pg", target="pg")])


def full_task(task_id: str) -> Task:
    return Task(id=task_id, spec=TaskSpec(source_host="old", target_host="new", mode=Mode.FULL,
                                          options={"containers": ["web"]}))


def hold(store: TaskStore, resource: str) -> str:
    """Make a running task of this process hold `resource`; return its ID."""
    holder = volumes_task("b" * 12)
    store.create_task(holder, reserved_by=os.getpid())
    store.update_task(holder.id, state=TaskState.RUNNING)
    store.acquire_locks(holder.id, [resource])
    return holder.id


@pytest.mark.parametrize("runner_class, make_task, plan, resource", [
    (TaskRunner, volumes_task, None, "new/volume/pg"),
    (FullTaskRunner, full_task, {"volumes": [{"name": "data"}], "containers": [{"name": "web"}]},
     "new/volume/data"),
])
def test_resume_blocked_by_lock(
    tmp_path: Path, runner_class: type, make_task, plan: dict | None, resource: str,
) -> None:
    store = TaskStore(tmp_path / "tasks.db")
    interrupted = make_task("a" * 12)
    store.create_task(interrupted)
    store.update_task(interrupted.id, state=TaskState.INTERRUPTED)
    if plan is not None:
        store.set_extra(interrupted.id, plan=plan, created={"containers": ["web"]})
    holder = hold(store, resource)
    events_before = store.get_events(interrupted.id)

    runner = runner_class(config_from_dict(CONFIG, None, {"HOME": str(tmp_path)}), store, interrupted.id,
                          engine_factory=lambda *_: pytest.fail("a host was connected"))
    with pytest.raises(TaskNotStarted, match=f"{resource} is held by task {holder}"):
        runner.run()

    task = store.get_task(interrupted.id)
    assert task.state is TaskState.INTERRUPTED
    assert task.runner_pid is None
    assert store.get_events(interrupted.id) == events_before
    assert store.get_extra(interrupted.id).get("created") == ({"containers": ["web"]} if plan else None)


@pytest.mark.parametrize("as_json", [False, True])
def test_locked_rollback_prints_nothing(
    home: Path, configured: dict[str, str], as_json: bool,
) -> None:
    """An earlier rollback left the task interrupted in its rollback phase; this one never starts."""
    from ddm.store import default_store_path
    from ddm.task import Phase
    from tests.unit.cli_support import invoke

    store = TaskStore(default_store_path(configured))
    interrupted = Task(id="a" * 12, spec=TaskSpec(source_host="a", target_host="b",
                                                  volumes=(VolumeSpec("pg", "pg"),)),
                       items=[TaskItem(task_id="a" * 12, position=0, source="pg", target="pg")])
    store.create_task(interrupted)
    store.update_task(interrupted.id, state=TaskState.INTERRUPTED, phase=Phase.ROLLBACK)
    holder = hold(store, "b/volume/pg")
    store.close()

    outcome = invoke("ddmctl", ["rollback", interrupted.id, *(["--json"] if as_json else [])],
                     configured)

    assert outcome.status == 6
    assert outcome.stdout == ""
    assert outcome.stderr.splitlines()[-1].startswith(
        f"ddmctl: error: b/volume/pg is held by task {holder}, which is running")
