"""`ddmctl status` shows tar stream bytes with their unit, and --json keeps the raw counts."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

from ddm.store import TaskStore, default_store_path
from ddm.task import ItemState, Mode, Phase, Task, TaskItem, TaskSpec, TaskState
from ddmctl.watch import watch_task
from tests.unit.cli_support import invoke

KIB = 1024
# 1000 files of 1000 bytes: 976.6 KiB of data, but 1000 * (512 + 1024) bytes of tar stream.
DATA_BYTES = 1000 * 1000
STREAM_BYTES = 1000 * (512 + 1024)


def store_task(environ: dict[str, str], *items: TaskItem, state: TaskState) -> str:
    store = TaskStore(default_store_path(environ))
    try:
        task = Task(id="c" * 12, spec=TaskSpec(source_host="old", target_host="new"))
        task.items = [TaskItem(task_id=task.id, position=position, source=item.source,
                               target=item.target, state=item.state,
                               bytes_total=item.bytes_total, bytes_done=item.bytes_done)
                      for position, item in enumerate(items)]
        store.create_task(task)
        store.update_task(task.id, state=state, finished_at=time.time())
        return task.id
    finally:
        store.close()


def item(source: str, state: ItemState, done: int, total: int | None) -> TaskItem:
    return TaskItem(task_id="", position=0, source=source, target=f"{source}-copy", state=state,
                    bytes_total=total, bytes_done=done)


def volume_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("volume ")]


def test_status_stream_larger_than_data(environ: dict[str, str]) -> None:
    task_id = store_task(environ, item("small", ItemState.VERIFIED, STREAM_BYTES, DATA_BYTES),
                         state=TaskState.SUCCEEDED)

    outcome = invoke("ddmctl", ["status", task_id], environ)

    assert outcome.status == 0, outcome.stderr
    assert volume_lines(outcome.stdout) == [
        "volume    small -> small-copy  verified  1.5 MiB of tar stream (volume data 976.6 KiB)"
    ]


def test_status_copying_never_above_estimate(environ: dict[str, str]) -> None:
    task_id = store_task(
        environ,
        item("ahead", ItemState.COPYING, 1200 * KIB, DATA_BYTES),
        item("behind", ItemState.COPYING, 512 * KIB, 1024 * KIB),
        item("unsized", ItemState.COPYING, 512 * KIB, None),
        state=TaskState.RUNNING,
    )

    outcome = invoke("ddmctl", ["status", task_id], environ)

    assert outcome.status == 0, outcome.stderr
    lines = volume_lines(outcome.stdout)
    assert lines[0].endswith("copying  1.2 MiB / about 1.2 MiB of tar stream")
    assert lines[1].endswith("copying  512.0 KiB / about 1.0 MiB of tar stream")
    assert lines[2].endswith("copying  512.0 KiB of tar stream (volume data unknown)")


def test_status_json_keeps_raw_counts(environ: dict[str, str]) -> None:
    task_id = store_task(environ, item("small", ItemState.VERIFIED, STREAM_BYTES, DATA_BYTES),
                         state=TaskState.SUCCEEDED)

    outcome = invoke("ddmctl", ["status", task_id, "--json"], environ)

    volume = json.loads(outcome.stdout)["volumes"][0]
    assert volume["bytes_done"] == STREAM_BYTES
    assert volume["bytes_total"] == DATA_BYTES


def test_watch_total_not_below_done(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "tasks.db")
    task = Task(id="d" * 12, spec=TaskSpec(source_host="old", target_host="new"))
    task.items = [TaskItem(task_id=task.id, position=0, source="a1", target="b1",
                           state=ItemState.VERIFIED, bytes_total=DATA_BYTES,
                           bytes_done=STREAM_BYTES)]
    store.create_task(task)
    store.update_task(task.id, state=TaskState.SUCCEEDED, finished_at=time.time())
    stream = io.StringIO()

    watch_task(store, task.id, stream, terminal=True, no_color=True)
    store.close()

    assert "1.5 MiB / 1.5 MiB" in stream.getvalue()
    assert "976.6 KiB" not in stream.getvalue()


WATCH_CASES = [
    (TaskState.SUCCEEDED, None, 0),
    (TaskState.FAILED, {"error": "ConnectionLost", "message": "lost", "exit_status": 3}, 3),
    (TaskState.FAILED, {"error": "VerificationFailed", "message": "differs", "exit_status": 1}, 1),
    (TaskState.FAILED, None, 1),
    (TaskState.CANCELLED, {"error": "Cancelled", "message": "cancelled", "exit_status": 130}, 130),
    (TaskState.INTERRUPTED, None, 130),
    (TaskState.ROLLED_BACK, None, 1),
]


def store_finished_task(environ: dict[str, str], task_id: str, state: TaskState,
                        error: dict | None) -> None:
    store = TaskStore(default_store_path(environ))
    try:
        store.create_task(Task(id=task_id, spec=TaskSpec(source_host="old", target_host="new")))
        store.update_task(task_id, state=state, finished_at=time.time(), error=error)
    finally:
        store.close()


def test_status_watch_exits_with_task_outcome(environ: dict[str, str]) -> None:
    for index, (state, error, expected) in enumerate(WATCH_CASES):
        task_id = f"{index:012x}"
        store_finished_task(environ, task_id, state, error)

        watched = invoke("ddmctl", ["status", task_id, "--watch"], environ)
        watched_json = invoke("ddmctl", ["status", task_id, "--watch", "--json"], environ)
        plain = invoke("ddmctl", ["status", task_id], environ)

        assert watched.status == expected, (state, error, watched.stderr)
        assert watched_json.status == expected, (state, error, watched_json.stderr)
        assert plain.status == 0, (state, plain.stderr)


def test_status_names_stopped_writers(environ: dict[str, str]) -> None:
    task_id = store_task(environ, item("db", ItemState.COPYING, 0, 100),
                         state=TaskState.INTERRUPTED)
    store = TaskStore(default_store_path(environ))
    try:
        store.set_extra(task_id, stopped_writers={"action": "stop", "ids": ["a1b2c3d4e5f6" * 2]})
    finally:
        store.close()

    text = invoke("ddmctl", ["status", task_id], environ)
    data = json.loads(invoke("ddmctl", ["status", task_id, "--json"], environ).stdout)

    assert (f"stopped   a1b2c3d4e5f6 on old; 'ddmctl resume {task_id}' or 'ddmctl rollback "
            f"{task_id}' starts them again") in text.stdout
    assert data["stopped_source_containers"] == ["a1b2c3d4e5f6"]


def test_status_of_full_task_in_cutover(environ: dict[str, str]) -> None:
    store = TaskStore(default_store_path(environ))
    try:
        spec = TaskSpec(source_host="old", target_host="new", volumes=(), mode=Mode.FULL)
        task = store.create_task(Task(id="d" * 12, spec=spec))
        store.set_extra(task.id, source_running=["web", "db"])
        store.update_task(task.id, state=TaskState.INTERRUPTED, phase=Phase.VERIFY)
    finally:
        store.close()

    data = json.loads(invoke("ddmctl", ["status", task.id, "--json"], environ).stdout)

    assert data["stopped_source_containers"] == ["web", "db"]


def test_status_image_row_shows_bytes_sent(environ: dict[str, str]) -> None:
    store = TaskStore(default_store_path(environ))
    try:
        spec = TaskSpec(source_host="old", target_host="new", volumes=(), mode=Mode.FULL)
        task = store.create_task(Task(id="e" * 12, spec=spec))
        store.set_extra(task.id, transfers=[{
            "position": 0, "kind": "image", "name": "app:1.0", "target": "app:1.0",
            "bytes_total": 2 * 1024 * KIB, "bytes_done": 2 * 1024 * KIB, "bytes_sent": 7680,
            "state": "sent", "started_at": 0.0, "finished_at": 1.0}])
    finally:
        store.close()

    text = invoke("ddmctl", ["status", task.id], environ).stdout

    assert "image     app:1.0  sent  2.0 MiB / 2.0 MiB read, 7.5 KiB sent to the target" in text
