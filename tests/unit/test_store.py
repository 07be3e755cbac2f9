"""Tests of ddm.store.TaskStore: tasks, ID prefixes, items, events, locks and two processes."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from multiprocessing.synchronize import Event
from pathlib import Path

import pytest

from ddm.errors import ConfigError, ExitStatus, TaskConflict, TaskNotFound
from ddm.store import TaskStore
from ddm.task import ItemState, Phase, Task, TaskItem, TaskSpec, TaskState, VolumeSpec

pytestmark = pytest.mark.usefixtures("no_network")

WRITER_EVENTS = 200


def make_task(
    task_id: str, volumes: tuple[str, ...] = ("pgdata",), created_at: float = 0.0
) -> Task:
    spec = TaskSpec(
        source_host="old",
        target_host="new",
        volumes=tuple(VolumeSpec(source=name, target=name) for name in volumes),
    )
    task = Task(id=task_id, spec=spec, created_at=created_at or time.time())
    task.items = [
        TaskItem(task_id=task_id, position=position, source=name, target=name)
        for position, name in enumerate(volumes)
    ]
    return task


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TaskStore]:
    task_store = TaskStore(tmp_path / "data" / "tasks.db")
    yield task_store
    task_store.close()


# Tasks


def test_create_and_get(store: TaskStore) -> None:
    store.create_task(make_task("0123456789ab", ("pgdata", "uploads")))

    task = store.get_task("0123456789ab")

    assert task.id == "0123456789ab"
    assert task.state is TaskState.QUEUED
    assert task.phase is Phase.PREPARE
    assert task.spec.source_host == "old"
    assert task.spec.target_host == "new"
    assert [volume.source for volume in task.spec.volumes] == ["pgdata", "uploads"]
    assert [item.source for item in task.items] == ["pgdata", "uploads"]
    assert [item.position for item in task.items] == [0, 1]
    assert all(item.state is ItemState.PENDING for item in task.items)


def test_database_file_private(tmp_path: Path) -> None:
    task_store = TaskStore(tmp_path / "new-dir" / "tasks.db")
    task_store.close()

    assert stat.S_IMODE((tmp_path / "new-dir" / "tasks.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "new-dir").stat().st_mode) == 0o700


def test_database_in_wal_mode(store: TaskStore) -> None:
    mode = sqlite3.connect(store.path).execute("PRAGMA journal_mode").fetchone()[0]

    assert mode == "wal"


def test_unopenable_path_is_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")

    with pytest.raises(ConfigError) as caught:
        TaskStore(tmp_path / "file" / "tasks.db")

    assert caught.value.exit_status == ExitStatus.USAGE
    assert "tasks.db" in str(caught.value)


def test_duplicate_id_rejected(store: TaskStore) -> None:
    store.create_task(make_task("0123456789ab"))

    with pytest.raises(sqlite3.IntegrityError):
        store.create_task(make_task("0123456789ab"))

    assert len(store.list_tasks()) == 1


def test_list_newest_first(store: TaskStore) -> None:
    store.create_task(make_task("aaaa00000001", created_at=1000.0))
    store.create_task(make_task("aaaa00000003", created_at=3000.0))
    store.create_task(make_task("aaaa00000002", created_at=2000.0))

    assert [task.id for task in store.list_tasks()] == [
        "aaaa00000003", "aaaa00000002", "aaaa00000001",
    ]
    assert [task.id for task in store.list_tasks(limit=2)] == ["aaaa00000003", "aaaa00000002"]


def test_list_by_state(store: TaskStore) -> None:
    store.create_task(make_task("aaaa00000001", ("v1",)))
    store.create_task(make_task("aaaa00000002", ("v2",)))
    store.update_task("aaaa00000002", state=TaskState.FAILED)

    failed = store.list_tasks(state=TaskState.FAILED)

    assert [task.id for task in failed] == ["aaaa00000002"]
    assert [item.source for item in failed[0].items] == ["v2"]
    assert store.list_tasks(state=TaskState.RUNNING) == []


def test_update_task_fields(store: TaskStore) -> None:
    store.create_task(make_task("0123456789ab"))
    error = {"error": "TransferFailed", "message": "stream broke", "exit_status": 1}

    store.update_task(
        "0123456789ab", state=TaskState.FAILED, phase=Phase.ROLLBACK, finished_at=5.0,
        error=error, control="cancel",
    )
    task = store.get_task("0123456789ab")

    assert task.state is TaskState.FAILED
    assert task.phase is Phase.ROLLBACK
    assert task.finished_at == 5.0
    assert task.error == error
    assert task.control == "cancel"


def test_update_unknown_column_rejected(store: TaskStore) -> None:
    store.create_task(make_task("0123456789ab"))

    with pytest.raises(ValueError, match="spec"):
        store.update_task("0123456789ab", spec="{}")


def test_extra_merges(store: TaskStore) -> None:
    store.create_task(make_task("0123456789ab"))

    store.set_extra("0123456789ab", created_volumes=["pgdata"])
    store.set_extra("0123456789ab", copy_seconds=1.5)

    assert store.get_extra("0123456789ab") == {"created_volumes": ["pgdata"], "copy_seconds": 1.5}
    assert store.get_extra("ffffffffffff") == {}


# ID prefixes


def test_unique_prefix_finds_task(store: TaskStore) -> None:
    store.create_task(make_task("3f2a9c000001"))
    store.create_task(make_task("77bb00000002"))

    assert store.get_task("3f2a").id == "3f2a9c000001"
    assert store.get_task("3f2a9c").id == "3f2a9c000001"
    assert store.get_task("77bb0000").id == "77bb00000002"


def test_ambiguous_prefix_rejected(store: TaskStore) -> None:
    store.create_task(make_task("3f2a9c000001"))
    store.create_task(make_task("3f2a9c000002"))

    with pytest.raises(TaskNotFound) as caught:
        store.get_task("3f2a9c")

    assert caught.value.exit_status == ExitStatus.USAGE
    assert "ambiguous" in str(caught.value)
    assert "'3f2a9c'" in str(caught.value)
    assert store.get_task("3f2a9c000002").id == "3f2a9c000002"


@pytest.mark.parametrize("prefix", ["3f2", "3", ""])
def test_short_prefix_not_found(store: TaskStore, prefix: str) -> None:
    store.create_task(make_task("3f2a9c000001"))

    with pytest.raises(TaskNotFound) as caught:
        store.get_task(prefix)

    assert caught.value.exit_status == ExitStatus.USAGE
    assert "not found" in str(caught.value)


@pytest.mark.parametrize("prefix", ["3f2a%", "3f2a_", "%%%%", "____", "3f2a9c0000011"])
def test_non_hex_prefix_not_found(store: TaskStore, prefix: str) -> None:
    # LIKE wildcards must not turn into a match of some task.
    store.create_task(make_task("3f2a9c000001"))

    with pytest.raises(TaskNotFound):
        store.get_task(prefix)


def test_missing_task_names_id(store: TaskStore) -> None:
    with pytest.raises(TaskNotFound) as caught:
        store.get_task("nosuchtask")

    assert "'nosuchtask'" in str(caught.value)
    assert "ddmctl list" in str(caught.value)


# Items and manifests


def test_update_item(store: TaskStore) -> None:
    store.create_task(make_task("0123456789ab", ("pgdata", "uploads")))

    store.update_item(
        "0123456789ab", 1, state=ItemState.COPIED, bytes_total=4096, bytes_done=4096,
        entries=12, stream_digest="ab" * 16, target_created=True,
    )
    first, second = store.get_items("0123456789ab")

    assert first.state is ItemState.PENDING
    assert first.bytes_done == 0
    assert second.state is ItemState.COPIED
    assert second.bytes_total == 4096
    assert second.bytes_done == 4096
    assert second.entries == 12
    assert second.stream_digest == "ab" * 16
    assert second.target_created is True


def test_update_item_name_rejected(store: TaskStore) -> None:
    store.create_task(make_task("0123456789ab"))

    with pytest.raises(ValueError, match="source"):
        store.update_item("0123456789ab", 0, source="other")


def test_manifest_blob_round_trip(store: TaskStore) -> None:
    store.create_task(make_task("0123456789ab", ("pgdata", "uploads")))
    blob = json.dumps({"entries": {"./a\udcff": 1}}).encode() + bytes(range(256))

    store.save_manifest("0123456789ab", 0, blob)

    assert store.load_manifest("0123456789ab", 0) == blob
    assert store.load_manifest("0123456789ab", 1) is None
    assert store.load_manifest("0123456789ab", 7) is None
    assert store.load_manifest("ffffffffffff", 0) is None


def test_large_manifest_blob(store: TaskStore) -> None:
    store.create_task(make_task("0123456789ab"))
    blob = os.urandom(4 * 1024 * 1024)

    store.save_manifest("0123456789ab", 0, blob)

    assert store.load_manifest("0123456789ab", 0) == blob


# Events


def test_events_in_order(store: TaskStore) -> None:
    store.create_task(make_task("0123456789ab"))
    store.create_task(make_task("ba9876543210"))

    store.add_event("0123456789ab", "info", "created", "task created")
    store.add_event("ba9876543210", "info", "created", "other task")
    store.add_event("0123456789ab", "warning", "slow", "copy is slow", {"bytes_per_second": 10})
    events = store.get_events("0123456789ab")

    assert [event["kind"] for event in events] == ["created", "slow"]
    assert [event["level"] for event in events] == ["info", "warning"]
    assert events[0]["data"] is None
    assert events[1]["data"] == {"bytes_per_second": 10}
    assert events[1]["message"] == "copy is slow"
    assert events[0]["id"] < events[1]["id"]


def test_events_after_id(store: TaskStore) -> None:
    store.create_task(make_task("0123456789ab"))
    for number in range(5):
        store.add_event("0123456789ab", "info", "step", f"step {number}")
    events = store.get_events("0123456789ab")

    later = store.get_events("0123456789ab", after_id=events[2]["id"])

    assert [event["message"] for event in later] == ["step 3", "step 4"]
    assert store.get_events("0123456789ab", after_id=events[-1]["id"]) == []


# Locks


def test_lock_conflict_names_holder(store: TaskStore) -> None:
    store.create_task(make_task("aaaa00000001"))
    store.create_task(make_task("bbbb00000002"))
    assert store.claim_task("aaaa00000001", os.getpid(), (TaskState.QUEUED,))
    store.acquire_locks("aaaa00000001", ["new/volume/pgdata", "old/volume/pgdata"])

    with pytest.raises(TaskConflict) as caught:
        store.acquire_locks("bbbb00000002", ["new/volume/pgdata"])

    assert caught.value.exit_status == ExitStatus.CONFLICT
    # 'ddmctl rollback' rejects a running task, so the hint must not offer it.
    assert str(caught.value) == (
        "new/volume/pgdata is held by task aaaa00000001, which is running; wait for it to end "
        "or cancel it ('ddmctl cancel aaaa00000001' stops it and rolls it back), then try again")


def test_lock_conflict_holder_rolling_back(store: TaskStore) -> None:
    store.create_task(make_task("aaaa00000001"))
    store.create_task(make_task("bbbb00000002"))
    assert store.claim_task("aaaa00000001", os.getpid(), (TaskState.QUEUED,))
    store.update_task("aaaa00000001", phase=Phase.ROLLBACK)
    store.acquire_locks("aaaa00000001", ["new/volume/pgdata"])

    with pytest.raises(TaskConflict) as caught:
        store.acquire_locks("bbbb00000002", ["new/volume/pgdata"])

    assert str(caught.value) == ("new/volume/pgdata is held by task aaaa00000001, which is "
                                 "rolling back; wait for its rollback to end, then try again")


def test_lock_conflict_holder_paused(store: TaskStore) -> None:
    store.create_task(make_task("aaaa00000001"))
    store.create_task(make_task("bbbb00000002"))
    assert store.claim_task("aaaa00000001", os.getpid(), (TaskState.QUEUED,))
    store.update_task("aaaa00000001", control="pause")
    store.acquire_locks("aaaa00000001", ["new/volume/pgdata"])

    with pytest.raises(TaskConflict) as caught:
        store.acquire_locks("bbbb00000002", ["new/volume/pgdata"])

    assert str(caught.value) == (
        "new/volume/pgdata is held by task aaaa00000001, which is paused; continue it with "
        "'ddmctl resume aaaa00000001' or cancel it with 'ddmctl cancel aaaa00000001', then try "
        "again once it has ended")


@pytest.mark.parametrize("state", [TaskState.INTERRUPTED, TaskState.RUNNING])
def test_lock_conflict_holder_interrupted(store: TaskStore, state: TaskState) -> None:
    """A killed runner's task keeps its locks; RUNNING with a dead process counts as interrupted."""
    store.create_task(make_task("aaaa00000001"))
    store.create_task(make_task("bbbb00000002"))
    store.update_task("aaaa00000001", state=state, runner_pid=dead_pid())
    store.acquire_locks("aaaa00000001", ["new/volume/pgdata"])

    with pytest.raises(TaskConflict) as caught:
        store.acquire_locks("bbbb00000002", ["new/volume/pgdata"])

    assert str(caught.value) == (
        "new/volume/pgdata is held by task aaaa00000001, which was interrupted; finish it with "
        "'ddmctl resume aaaa00000001' or undo it with 'ddmctl rollback aaaa00000001', then "
        "try again")


def test_lock_conflict_by_engine_id_in_words(store: TaskStore) -> None:
    from ddmsyncer.volumes import engine_lock_names

    store.create_task(make_task("aaaa00000001"))
    store.create_task(make_task("bbbb00000002"))
    assert store.claim_task("aaaa00000001", os.getpid(), (TaskState.QUEUED,))
    (resource,) = engine_lock_names(["new/volume/pgdata"], {"new": "ABCD:EFGH"})
    store.acquire_locks("aaaa00000001", [resource])

    with pytest.raises(TaskConflict) as caught:
        store.acquire_locks("bbbb00000002", [resource])

    assert resource == "engine ABCD:EFGH/volume/pgdata"
    assert str(caught.value).startswith(
        "volume 'pgdata' on Docker engine ABCD:EFGH (also reached under another host name) is "
        "held by task aaaa00000001, which is running; ")


def test_engine_lock_names_leave_out_unknown_engines() -> None:
    from ddmsyncer.volumes import engine_lock_names

    names = engine_lock_names(["old/volume/a", "new/volume/b", "other/volume/c"],
                              {"old": "ID1", "new": ""})

    assert names == ["engine ID1/volume/a"]


def dead_pid() -> int:
    """Return the ID of a process that has exited and was reaped."""
    process = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0,))
    process.start()
    process.join()
    return process.pid


def test_lock_acquire_returns_new_locks(store: TaskStore) -> None:
    store.create_task(make_task("aaaa00000001"))
    store.create_task(make_task("bbbb00000002"))
    store.acquire_locks("aaaa00000001", ["old/volume/a"])

    taken = store.acquire_locks("aaaa00000001", ["old/volume/a", "new/volume/a"])
    store.release_locks("aaaa00000001", taken)

    assert taken == ["new/volume/a"]
    store.acquire_locks("bbbb00000002", ["new/volume/a"])
    with pytest.raises(TaskConflict, match="aaaa00000001"):
        store.acquire_locks("bbbb00000002", ["old/volume/a"])


def test_lock_all_or_nothing(store: TaskStore) -> None:
    store.create_task(make_task("aaaa00000001"))
    store.create_task(make_task("bbbb00000002"))
    store.create_task(make_task("cccc00000003"))
    store.acquire_locks("aaaa00000001", ["old/volume/b"])

    with pytest.raises(TaskConflict):
        store.acquire_locks("bbbb00000002", ["old/volume/a", "old/volume/b", "old/volume/c"])

    # Nothing of the failed request may stay held: a third task gets a and c.
    store.acquire_locks("cccc00000003", ["old/volume/a", "old/volume/c"])


def test_lock_reacquire_same_task(store: TaskStore) -> None:
    store.create_task(make_task("aaaa00000001"))

    store.acquire_locks("aaaa00000001", ["old/volume/a"])
    store.acquire_locks("aaaa00000001", ["old/volume/a", "old/volume/b"])


def test_release_frees_locks(store: TaskStore) -> None:
    store.create_task(make_task("aaaa00000001"))
    store.create_task(make_task("bbbb00000002"))
    store.acquire_locks("aaaa00000001", ["old/volume/a", "new/volume/a"])

    store.release_locks("aaaa00000001")
    store.acquire_locks("bbbb00000002", ["old/volume/a", "new/volume/a"])

    with pytest.raises(TaskConflict, match="bbbb00000002"):
        store.acquire_locks("aaaa00000001", ["new/volume/a"])


def test_lock_seen_by_second_store(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    first = TaskStore(path)
    second = TaskStore(path)
    try:
        first.create_task(make_task("aaaa00000001"))
        second.create_task(make_task("bbbb00000002"))
        first.acquire_locks("aaaa00000001", ["old/volume/a"])

        with pytest.raises(TaskConflict, match="aaaa00000001"):
            second.acquire_locks("bbbb00000002", ["old/volume/a"])

        first.release_locks("aaaa00000001")
        second.acquire_locks("bbbb00000002", ["old/volume/a"])
    finally:
        first.close()
        second.close()


# Claiming


def test_claim_from_given_states(store: TaskStore) -> None:
    store.create_task(make_task("aaaa00000001"))

    claimed = store.claim_task("aaaa00000001", 4242, (TaskState.QUEUED,))
    task = store.get_task("aaaa00000001")

    assert claimed is True
    assert task.state is TaskState.RUNNING
    assert task.runner_pid == 4242
    assert task.started_at is not None


def test_claim_fails_from_other_state(store: TaskStore) -> None:
    store.create_task(make_task("aaaa00000001"))
    store.claim_task("aaaa00000001", 4242, (TaskState.QUEUED,))

    claimed_again = store.claim_task("aaaa00000001", 5353, (TaskState.QUEUED,))

    assert claimed_again is False
    assert store.get_task("aaaa00000001").runner_pid == 4242


@pytest.mark.parametrize(
    "state", [TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.ROLLED_BACK],
)
def test_claim_of_finished_task_fails(store: TaskStore, state: TaskState) -> None:
    store.create_task(make_task("aaaa00000001"))
    store.update_task("aaaa00000001", state=state)

    claimed = store.claim_task(
        "aaaa00000001", 4242, (TaskState.QUEUED, TaskState.INTERRUPTED)
    )

    assert claimed is False
    assert store.get_task("aaaa00000001").state is state


def test_claim_interrupted_keeps_start(store: TaskStore) -> None:
    store.create_task(make_task("aaaa00000001"))
    store.update_task("aaaa00000001", state=TaskState.INTERRUPTED, started_at=100.0)

    claimed = store.claim_task("aaaa00000001", 4242, (TaskState.INTERRUPTED,))

    assert claimed is True
    assert store.get_task("aaaa00000001").started_at == 100.0


def test_claim_unknown_task(store: TaskStore) -> None:
    assert store.claim_task("ffffffffffff", 4242, (TaskState.QUEUED,)) is False


# Two processes on one database file


def write_events(path: str, task_id: str, count: int, halfway: Event, resume: Event) -> None:
    """Child process: create a task and add `count` events, one transaction each.

    After half of the events it sets `halfway` and waits for `resume`, so the parent reads a
    state that is certainly mid-way.
    """
    store = TaskStore(Path(path))
    store.create_task(make_task(task_id))
    for number in range(count):
        if number == count // 2:
            halfway.set()
            resume.wait(timeout=20)
        store.add_event(task_id, "info", "progress", f"event {number}", {"number": number})
        store.update_item(task_id, 0, bytes_done=number + 1)
    store.update_task(task_id, state=TaskState.SUCCEEDED)
    store.close()


def claim_in_child(path: str, task_id: str, results: multiprocessing.Queue) -> None:
    """Child process: try to claim a queued task and report the result."""
    store = TaskStore(Path(path))
    results.put(store.claim_task(task_id, os.getpid(), (TaskState.QUEUED,)))
    store.close()


def test_reader_while_writer(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    reader = TaskStore(path)
    spawn = multiprocessing.get_context("spawn")
    halfway = spawn.Event()
    resume = spawn.Event()
    writer = spawn.Process(
        target=write_events, args=(str(path), "aaaa00000001", WRITER_EVENTS, halfway, resume)
    )
    writer.start()

    snapshots: list[tuple[int, int]] = []
    try:
        assert halfway.wait(timeout=30)
        middle = reader.get_events("aaaa00000001")
        middle_item = reader.get_items("aaaa00000001")[0]
        # The reader also writes while the writer's connection is open.
        reader.set_extra("aaaa00000001", reads=1)
        resume.set()

        deadline = time.monotonic() + 20
        while writer.is_alive() and time.monotonic() < deadline:
            events = reader.get_events("aaaa00000001")
            snapshots.append((len(events), events[-1]["id"]))
    finally:
        resume.set()
        writer.join(timeout=20)

    assert writer.exitcode == 0
    assert len(middle) == WRITER_EVENTS // 2
    assert middle_item.bytes_done == WRITER_EVENTS // 2
    counts = [count for count, _ in snapshots]
    assert counts == sorted(counts)
    last_ids = [last_id for _, last_id in snapshots]
    assert last_ids == sorted(last_ids)
    events = reader.get_events("aaaa00000001")
    assert [event["data"]["number"] for event in events] == list(range(WRITER_EVENTS))
    assert reader.get_task("aaaa00000001").state is TaskState.SUCCEEDED
    assert reader.get_items("aaaa00000001")[0].bytes_done == WRITER_EVENTS
    assert reader.get_extra("aaaa00000001") == {"reads": 1}
    reader.close()


def test_one_claim_wins_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    store = TaskStore(path)
    store.create_task(make_task("aaaa00000001"))
    spawn = multiprocessing.get_context("spawn")
    results = spawn.Queue()
    children = [
        spawn.Process(target=claim_in_child, args=(str(path), "aaaa00000001", results))
        for _ in range(4)
    ]

    for child in children:
        child.start()
    outcomes = [results.get(timeout=30) for _ in children]
    for child in children:
        child.join(timeout=30)

    assert sorted(outcomes) == [False, False, False, True]
    assert [child.exitcode for child in children] == [0, 0, 0, 0]
    task = store.get_task("aaaa00000001")
    assert task.state is TaskState.RUNNING
    assert task.runner_pid in [child.pid for child in children]
    store.close()
