"""Tests of naming the task that copied a volume when a re-run in between sent nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from ddm.errors import TargetExists
from ddm.store import TaskStore
from ddm.task import ItemState, Task, TaskItem, TaskSpec, TaskState, VolumeSpec
from ddmsyncer import incremental, plan, rerun
from ddmsyncer.copyorigin import copying_task

pytestmark = pytest.mark.usefixtures("no_network")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TaskStore]:
    task_store = TaskStore(tmp_path / "tasks.db")
    yield task_store
    task_store.close()


def add_succeeded(store: TaskStore, task_id: str, volumes: tuple[str, ...],
                  created_at: float) -> Task:
    spec = TaskSpec(source_host="h1", target_host="h2",
                    volumes=tuple(VolumeSpec(source=name, target=name) for name in volumes))
    task = Task(id=task_id, spec=spec, created_at=created_at)
    task.items = [TaskItem(task_id=task_id, position=position, source=name, target=name)
                  for position, name in enumerate(volumes)]
    store.create_task(task)
    store.update_task(task_id, state=TaskState.SUCCEEDED)
    for position in range(len(volumes)):
        store.update_item(task_id, position, state=ItemState.VERIFIED)
    return task


@pytest.fixture
def rerun_chain(store: TaskStore) -> TaskItem:
    """Task aaaa copied pgdata; the re-run bbbb found it unchanged and sent nothing."""
    add_succeeded(store, "aaaa00000001", ("pgdata",), 1.0)
    add_succeeded(store, "bbbb00000002", ("logs", "pgdata"), 2.0)
    store.set_extra("bbbb00000002", **{rerun.EXTRA_KEY: {"1": "aaaa00000001"}})
    return TaskItem(task_id="cccc00000003", position=0, source="pgdata", target="pgdata")


def test_copying_task_follows_rerun(store: TaskStore, rerun_chain: TaskItem) -> None:
    newest = incremental.earlier_copy(store, "", "h1", "h2", rerun_chain)

    assert newest == "bbbb00000002"
    assert copying_task(store, newest, rerun_chain) == "aaaa00000001"
    assert copying_task(store, "aaaa00000001", rerun_chain) == "aaaa00000001"


def test_copying_task_ignores_other_volume_record(store: TaskStore) -> None:
    add_succeeded(store, "aaaa00000001", ("pgdata",), 1.0)
    add_succeeded(store, "bbbb00000002", ("logs", "pgdata"), 2.0)
    store.set_extra("bbbb00000002", **{rerun.EXTRA_KEY: {"0": "aaaa00000001"}})
    item = TaskItem(task_id="x", position=0, source="pgdata", target="pgdata")

    assert copying_task(store, "bbbb00000002", item) == "bbbb00000002"


class _Engine:
    ssh = object()

    def __init__(self, name: str) -> None:
        self.host = SimpleNamespace(name=name)

    def volume_inspect(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(name=name, mountpoint=f"/volumes/{name}", driver="local")


def test_rerun_refusal_names_copying_task(store: TaskStore, rerun_chain: TaskItem,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(incremental, "scan_both", lambda *args, **kwargs: ({}, {}, 0))
    monkeypatch.setattr(incremental, "_differences",
                        lambda source, target: iter([(b"a.txt", "content")]))
    spec = TaskSpec(source_host="h1", target_host="h2",
                    volumes=(VolumeSpec(source="pgdata", target="pgdata"),))

    with pytest.raises(TargetExists) as raised:
        rerun.plan_volume(_Engine("h1"), _Engine("h2"), rerun_chain, spec, store)

    assert "copy made by task aaaa00000001" in str(raised.value)


def test_incremental_plan_names_copying_task(store: TaskStore, rerun_chain: TaskItem,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rerun, "plan_volume", lambda *args: None)
    monkeypatch.setattr(incremental, "plan_dry_run",
                        lambda *args: {"action": "incremental", "earlier_task": "bbbb00000002"})
    spec = TaskSpec(source_host="h1", target_host="h2",
                    volumes=(VolumeSpec(source="pgdata", target="pgdata"),),
                    options={"incremental": True})

    entry = plan._plan_volume(_Engine("h1"), _Engine("h2"), rerun_chain, spec, [], store)

    assert entry["earlier_task"] == "aaaa00000001"


@pytest.mark.parametrize("route", ["relay", "direct"])
def test_rerun_refusal_hint_fits_route(store: TaskStore, rerun_chain: TaskItem,
                                       monkeypatch: pytest.MonkeyPatch, route: str) -> None:
    # --route direct cannot be combined with --incremental, so the hint must not offer it alone.
    monkeypatch.setattr(incremental, "scan_both", lambda *args, **kwargs: ({}, {}, 0))
    monkeypatch.setattr(incremental, "_differences",
                        lambda source, target: iter([(b"a.txt", "content")]))
    spec = TaskSpec(source_host="h1", target_host="h2",
                    volumes=(VolumeSpec(source="pgdata", target="pgdata"),),
                    options={"route": route})

    with pytest.raises(TargetExists) as raised:
        rerun.plan_volume(_Engine("h1"), _Engine("h2"), rerun_chain, spec, store)

    message = str(raised.value)
    assert "--force" in message
    if route == "direct":
        assert "leave out --route direct and pass --incremental" in message
    else:
        assert "pass --incremental to send the changes" in message
