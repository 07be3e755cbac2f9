"""Warm cutover (`--mode full --warm`) of a container with a named volume between h1 and h2.

The source volume is changed from outside the container right after the pre-copy, in the
callback of the copy phase's PhaseFinished event, so the delta pass always has work to do.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from ddm import api
from ddm.config import load_config
from ddm.errors import VerificationFailed
from ddm.events import Event, PhaseFinished
from ddmctl.cli import cli
from ddmctl.common import run_main
from ddmsyncer import warm
from tests.integration.test_full_mode import (
    TAR_MTIME_RESOLUTION_NS,
    build_image,
    host_state,
    is_running,
)
from tests.lab import Lab, LabHost
from tests.lab.tree import RandomFile, diff_snapshots, snapshot_volume_tree, write_volume_tree

FILE_BYTES = 128 * 1024
FILE_COUNT = 16
# The disguised file's mtime lies in the future, so the delta pass always hashes it.
FUTURE_MTIME_NS = (int(time.time()) + 3600) * 1_000_000_000
# An old mtime: only its new ctime shows that this file changed after the pre-copy.
OLD_MTIME_NS = 1_600_000_000 * 1_000_000_000
TREE = {
    **{f"data/f{index}.bin": RandomFile(FILE_BYTES, seed=index) for index in range(FILE_COUNT)},
    "data/f7.bin": RandomFile(FILE_BYTES, seed=7, mtime_ns=FUTURE_MTIME_NS),
    "data/f9.bin": RandomFile(FILE_BYTES, seed=9, mtime_ns=OLD_MTIME_NS),
}
# Written after the pre-copy: one file is rewritten, one added and one removed. One more is
# rewritten with its size and mtime kept, so that only its content hash shows the change.
DELTA_TREE = {
    "data/f3.bin": RandomFile(FILE_BYTES, seed=1003),
    "added/new.bin": RandomFile(32 * 1024, seed=2000),
}
REMOVED_FILE = "data/f5.bin"
DISGUISED_FILE = "data/f7.bin"
OLD_DISGUISED_FILE = "data/f9.bin"
DELTA_BYTES = 2 * FILE_BYTES + 32 * 1024


@dataclass
class App:
    """A running container on h1 with one named volume at /data."""

    container: str
    volume: str
    image: str


@pytest.fixture
def app(lab: Lab, isolated_env: Any) -> Iterator[App]:
    h1 = lab.host("h1")
    token = uuid.uuid4().hex[:8]
    item = App(container=f"ddmwarm-{token}", volume=f"ddmwarm-{token}-data",
               image=f"ddmtest/warm-{token}:1.0")
    try:
        build_image(h1, item.image)  # the lab's busybox image has another ID on each host
        h1.docker("volume", "create", item.volume)
        write_volume_tree(h1, item.volume, TREE)
        h1.docker("run", "-d", "--name", item.container, "--network", "none",
                  "--stop-timeout", "1", "-v", f"{item.volume}:/data", item.image,
                  "sleep", "3600")
        yield item
    finally:
        for host in (lab.host("h1"), lab.host("h2")):
            host.docker("rm", "-f", item.container, check=False)
            host.docker("volume", "rm", "-f", item.volume, check=False)
            host.docker("image", "rm", "-f", item.image, check=False)
            for volume in host.docker("volume", "ls", "-q").stdout.split():
                if volume.startswith("ddm-logs-"):
                    host.docker("volume", "rm", "-f", volume, check=False)


def change_after_precopy(h1: LabHost, volume: str, disguised_files: list[str]) -> Any:
    """Return an event callback that changes the source volume once the copy phase ends.

    Each of disguised_files gets new content of the same size and keeps its mtime.
    """

    def on_event(event: Event) -> None:
        if not (isinstance(event, PhaseFinished) and event.phase == "copy"):
            return
        snapshot = snapshot_volume_tree(h1, volume)
        tree = dict(DELTA_TREE)
        for index, path in enumerate(disguised_files):
            tree[path] = RandomFile(FILE_BYTES, seed=3000 + index,
                                    mtime_ns=snapshot[path.encode()].mtime_ns)
        mountpoint = write_volume_tree(h1, volume, tree)
        h1.run(["rm", f"{mountpoint}/{REMOVED_FILE}"])

    return on_event


def run_warm_task(lab: Lab, app: App, disguised_files: list[str] | None = None) -> str:
    config = load_config()
    store = api.open_store()
    task = api.create_full_task(store, config, source="h1", target="h2",
                                containers=[app.container], options={"warm": True})
    on_event = change_after_precopy(lab.host("h1"), app.volume,
                                    disguised_files or [DISGUISED_FILE])
    api.run_task(config, store, task.id, on_event=on_event)
    return task.id


def test_warm_cutover_sends_delta(lab: Lab, app: App,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    h1, h2 = lab.host("h1"), lab.host("h2")
    task_id = run_warm_task(lab, app)

    assert is_running(h2, app.container)
    assert not is_running(h1, app.container)
    source = snapshot_volume_tree(h1, app.volume)
    assert REMOVED_FILE.encode() not in source
    assert b"added/new.bin" in source
    assert diff_snapshots(source, snapshot_volume_tree(h2, app.volume),
                          mtime_resolution_ns=TAR_MTIME_RESOLUTION_NS) == []

    extra = api.open_store().get_extra(task_id)
    record = extra["warm"][app.volume]
    assert record["precopy_bytes"] >= FILE_COUNT * FILE_BYTES
    assert record["delta_bytes"] >= DELTA_BYTES
    assert record["delta_bytes"] < DELTA_BYTES + 64 * 1024
    assert record["deleted_entries"] == 1
    assert record["hashed_entries"] >= 1
    assert "backup" not in record  # the task created the target volume, so no backup is made
    # The image declares VOLUME /anon, so an empty anonymous volume is pre-copied too.
    assert len(extra["warm"]) == 2
    warm_bytes = sum(entry["precopy_bytes"] + entry["delta_bytes"]
                     for entry in extra["warm"].values())
    assert extra["volume_bytes_sent"] == warm_bytes
    assert extra["downtime_seconds"] > 0

    assert run_main(cli, ["status", task_id, "--json"], prog_name="ddmctl") == 0
    status = json.loads(capsys.readouterr().out)
    assert status["downtime_seconds"] == extra["downtime_seconds"]
    assert run_main(cli, ["status", task_id], prog_name="ddmctl") == 0
    assert f"downtime  {extra['downtime_seconds']:.2f} s" in capsys.readouterr().out


def test_warm_cutover_rolls_back(lab: Lab, app: App,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    h1, h2 = lab.host("h1"), lab.host("h2")
    h1_before, h2_before = host_state(h1), host_state(h2)
    task_id = run_warm_task(lab, app)
    source_after_change = snapshot_volume_tree(h1, app.volume)

    status = run_main(cli, ["rollback", task_id], prog_name="ddmctl")
    assert status == 0, capsys.readouterr().err
    assert host_state(h2) == h2_before
    assert host_state(h1) == h1_before
    assert is_running(h1, app.container)
    assert diff_snapshots(source_after_change, snapshot_volume_tree(h1, app.volume)) == []


def test_cold_cutover_records_downtime(lab: Lab, app: App) -> None:
    config = load_config()
    store = api.open_store()
    task = api.create_full_task(store, config, source="h1", target="h2",
                                containers=[app.container])
    api.run_task(config, store, task.id)

    extra = store.get_extra(task.id)
    assert extra["downtime_seconds"] > 0
    assert extra["warm"] == {}
    assert extra["volume_bytes_sent"] >= FILE_COUNT * FILE_BYTES


def test_warm_delta_sends_old_mtime_change(lab: Lab, app: App) -> None:
    h1, h2 = lab.host("h1"), lab.host("h2")
    before = snapshot_volume_tree(h1, app.volume)

    task_id = run_warm_task(lab, app, disguised_files=[OLD_DISGUISED_FILE])

    source = snapshot_volume_tree(h1, app.volume)
    path = OLD_DISGUISED_FILE.encode()
    assert source[path].sha256 != before[path].sha256
    assert source[path].mtime_ns == before[path].mtime_ns
    assert diff_snapshots(source, snapshot_volume_tree(h2, app.volume),
                          mtime_resolution_ns=TAR_MTIME_RESOLUTION_NS) == []
    assert is_running(h2, app.container)
    record = api.open_store().get_extra(task_id)["warm"][app.volume]
    assert record["seeded"] is True
    # f3, added/new.bin and the disguised file, and no file the pre-copy wrote unchanged.
    assert record["hashed_files"]["source"] == 3
    assert record["hashed_files"]["target"] == 0


@pytest.mark.parametrize("keep_scans", [True, False], ids=["rescan", "cached"])
def test_warm_verify_catches_target_damage(lab: Lab, app: App, keep_scans: bool,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A target file the delta did not send is rewritten with its size and mtime kept.

    Only its content shows the change, so verify fails only when it hashes that file again.
    Without the scans made after the pre-copy, as in a task resumed by another process, the
    delta pass scans in "cached" mode.
    """
    h1, h2 = lab.host("h1"), lab.host("h2")
    if not keep_scans:
        seed_digests = warm.seed_digests

        def seed_digests_without_scans(runner: Any, name: str, finished: float) -> None:
            seed_digests(runner, name, finished)
            runner._warm_seed_scans.clear()

        monkeypatch.setattr(warm, "seed_digests", seed_digests_without_scans)
    h2_before = host_state(h2)
    damaged = "data/f1.bin"
    copy_delta = warm.copy_delta

    def copy_delta_then_damage(runner: Any, name: str) -> None:
        copy_delta(runner, name)
        if name != app.volume:
            return
        snapshot = snapshot_volume_tree(h2, app.volume)
        write_volume_tree(h2, app.volume, {damaged: RandomFile(
            FILE_BYTES, seed=4000, mtime_ns=snapshot[damaged.encode()].mtime_ns)})
        after = snapshot_volume_tree(h2, app.volume)
        assert after[damaged.encode()].size == snapshot[damaged.encode()].size
        assert after[damaged.encode()].mtime_ns == snapshot[damaged.encode()].mtime_ns
        assert after[damaged.encode()].sha256 != snapshot[damaged.encode()].sha256

    monkeypatch.setattr(warm, "copy_delta", copy_delta_then_damage)
    with pytest.raises(VerificationFailed) as raised:
        run_warm_task(lab, app)

    assert f"{damaged}: content" in str(raised.value)
    assert host_state(h2) == h2_before
    assert is_running(h1, app.container)
    task = api.open_store().list_tasks(limit=1)[0]
    assert task.state.value == "failed"
    record = api.open_store().get_extra(task.id)["warm"][app.volume]
    assert record["seeded"] is True
    assert record["hashed_files"]["target"] == 0
