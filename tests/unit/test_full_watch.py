"""`ddmctl status TASK --watch` of a full-mode task, from a real task database.

The transfers and the stop of the source containers are written by the real FullTaskRunner
code (TransferProgress, warm.mark_source_stopped) into a task database on disk. No engine is
contacted: the runner opens engines only when a step needs one.
"""

from __future__ import annotations

import io
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from ddm import api
from ddm.config import load_config
from ddm.env import Environment
from ddm.store import TaskStore, default_store_path
from ddm.task import Phase, TaskState
from ddmctl import watch
from ddmctl.cli import cli
from ddmctl.common import run_main
from ddmsyncer import containers, warm
from ddmsyncer.runner import create_runner

MIB = 1024 * 1024
IMAGE_SENT = "ddmtest/shop-web:1.0"
IMAGE_SENDING = "ddmtest/shop-db:2.1"
VOLUME = "shop_data"
STOPPED_SECONDS_AGO = 125.0
RECORDED_DOWNTIME = 130.0


def write_config(environ: dict[str, str]) -> None:
    directory = Path(environ["XDG_CONFIG_HOME"]) / "ddm"
    directory.mkdir(parents=True)
    (directory / "config.yaml").write_text(
        "hosts:\n  old: {url: 'ssh://root@old.example'}\n  new: {url: 'ssh://root@new.example'}\n")


@pytest.fixture
def cutover_task(environ: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                 no_network: None) -> tuple[TaskStore, str]:
    """A running full-mode task in its cutover: one image sent, one image and a volume sending."""
    write_config(environ)
    config = load_config(None, environ)
    store = TaskStore(default_store_path(environ))
    task = api.create_full_task(store, config, source="old", target="new",
                                containers=["shop-web-1", "shop-db-1"])
    store.claim_task(task.id, os.getpid(), (TaskState.QUEUED,))
    store.update_task(task.id, phase=Phase.MIGRATE)

    monkeypatch.setattr(containers, "PROGRESS_STORE_SECONDS", 0.0)
    runner = create_runner(config, store, task.id)
    runner._positions = 0
    sent = containers.TransferProgress(runner, "image", IMAGE_SENT, 4 * MIB)
    sent.add(4 * MIB)
    sent.finish(4 * MIB)
    sending = containers.TransferProgress(runner, "image", IMAGE_SENDING, 2 * MIB)
    sending.add(MIB)
    volume = containers.TransferProgress(runner, "volume", VOLUME, MIB)
    volume.add(512 * 1024)

    warm.mark_source_stopped(runner)
    store.set_extra(task.id, source_stopped_at=time.time() - STOPPED_SECONDS_AGO)
    runner.record("info", "stopped", "stopped source container 'shop-web-1'")
    return store, task.id


def finish_task(store: TaskStore, task_id: str) -> None:
    """Store what the runner stores at the end: every transfer sent, downtime, succeeded."""
    transfers = store.get_extra(task_id)["transfers"]
    for transfer in transfers:
        transfer.update(bytes_done=transfer["bytes_total"], state="sent")
    store.set_extra(task_id, transfers=transfers, downtime_seconds=RECORDED_DOWNTIME)
    store.update_task(task_id, state=TaskState.SUCCEEDED, phase=Phase.CLEANUP,
                      finished_at=time.time())


def advance_transfers(store: TaskStore, task_id: str) -> None:
    """Store more bytes of the transfers that are still sending, as the runner would."""
    transfers = store.get_extra(task_id)["transfers"]
    for transfer in transfers:
        if transfer["state"] == "sending":
            transfer["bytes_done"] += transfer["bytes_total"] // 4
    store.set_extra(task_id, transfers=transfers)


def watch_status(environ: dict[str, str], task_id: str, store: TaskStore,
                 monkeypatch: pytest.MonkeyPatch, *, terminal: bool) -> tuple[int, str, str]:
    """Run `ddmctl status TASK --watch`: the transfers advance at the first wait between
    reads of the store, and the task finishes at the second."""
    steps = [lambda: advance_transfers(store, task_id), lambda: finish_task(store, task_id)]

    def next_step(seconds: float) -> None:
        steps.pop(0)()

    monkeypatch.setattr(watch, "sleep_between_reads", next_step)
    env = Environment(stdin=io.StringIO(""), stdout=io.StringIO(), stderr=io.StringIO(),
                      environ={**environ, "NO_COLOR": "1", "COLUMNS": "160"}, stdin_isatty=False,
                      stdout_isatty=False, stderr_isatty=terminal)
    status = run_main(cli, ["status", task_id, "--watch"], env=env, prog_name="ddmctl")
    return status, env.stdout.getvalue(), env.stderr.getvalue()


def frames(rendered: str) -> list[str]:
    """Split the terminal output into the frames that rich drew, without escape sequences."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", rendered)
    return [frame for frame in re.split(r"(?=task  [0-9a-f]{12}  state)", text) if frame]


def test_stored_transfers(cutover_task: tuple[TaskStore, str]) -> None:
    store, task_id = cutover_task

    transfers: list[dict[str, Any]] = store.get_extra(task_id)["transfers"]

    assert [(t["kind"], t["name"], t["state"], t["bytes_done"], t["bytes_total"])
            for t in transfers] == [
        ("image", IMAGE_SENT, "sent", 4 * MIB, 4 * MIB),
        ("image", IMAGE_SENDING, "sending", MIB, 2 * MIB),
        ("volume", VOLUME, "sending", 512 * 1024, MIB),
    ]
    kinds = [event["kind"] for event in store.get_events(task_id)]
    assert kinds.count("transfer_started") == 3


def test_watch_terminal_full_mode(cutover_task: tuple[TaskStore, str], environ: dict[str, str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    store, task_id = cutover_task

    status, stdout, stderr = watch_status(environ, task_id, store, monkeypatch, terminal=True)

    assert status == 0, stderr
    first, second, *rest = frames(stderr)
    assert "state  running  phase  migrate" in first
    assert f"image {IMAGE_SENT}" in first
    assert f"image {IMAGE_SENDING}" in first
    assert f"volume {VOLUME}" in first
    assert "4.0 MiB / 4.0 MiB" in first
    assert "1.0 MiB / 2.0 MiB" in first
    assert "512.0 KiB / 1.0 MiB" in first
    match = re.search(r"downtime so far 2 min (\d+) s \(source containers stopped at", first)
    assert match is not None, first
    assert int(match.group(1)) >= 5

    # The second read finds more bytes, so the sending rows get a rate and an ETA.
    assert "1.5 MiB / 2.0 MiB" in second
    assert "768.0 KiB / 1.0 MiB" in second
    volume_row = next(line for line in second.splitlines() if f"volume {VOLUME}" in line)
    assert re.search(r"\d+(\.\d)? (B|KiB|MiB|GiB|TiB)/s +\d", volume_row), volume_row

    final = rest[-1]
    assert "state  succeeded" in final
    assert "downtime 2 min 10 s" in final
    assert "2.0 MiB / 2.0 MiB" in final
    assert "downtime so far" not in final
    # The task's state is printed on stdout after the watch.
    assert "downtime  130.00 s" in stdout
    assert f"image     {IMAGE_SENT}  sent  4.0 MiB / 4.0 MiB" in stdout


def test_watch_piped_full_mode(cutover_task: tuple[TaskStore, str], environ: dict[str, str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    store, task_id = cutover_task

    status, _stdout, stderr = watch_status(environ, task_id, store, monkeypatch, terminal=False)

    assert status == 0, stderr
    lines = stderr.splitlines()
    assert "\x1b" not in stderr
    assert f"image {IMAGE_SENT}: sent 100%, 4.0 MiB of 4.0 MiB" in lines
    assert f"image {IMAGE_SENDING}: sending 50%, 1.0 MiB of 2.0 MiB" in lines
    assert f"volume {VOLUME}: sending 50%, 512.0 KiB of 1.0 MiB" in lines
    assert f"volume {VOLUME}: sending 70%, 768.0 KiB of 1.0 MiB" in lines
    # While the cutover runs, the downtime is written in steps of 10 s.
    assert [line for line in lines if line.startswith("downtime so far")][0].startswith(
        "downtime so far 2 min 0 s (source containers stopped at ")
    assert lines[-1] == "downtime 2 min 10 s"


def test_stop_time_from_event(cutover_task: tuple[TaskStore, str]) -> None:
    store, task_id = cutover_task
    store.set_extra(task_id, source_stopped_at=None)
    first_stop = store.get_events(task_id)[-1]

    progress = watch.read_full_progress(store, store.get_task(task_id))

    assert first_stop["kind"] == "stopped"
    assert progress.stopped_at == first_stop["at"]
    assert [transfer["name"] for transfer in progress.transfers] == [
        IMAGE_SENT, IMAGE_SENDING, VOLUME]
    text = watch.downtime_text(store.get_task(task_id), progress, first_stop["at"] + 42.0)
    assert text is not None
    assert text.startswith("downtime so far 42 s (source containers stopped at ")
