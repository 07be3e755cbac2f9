"""`ddmctl rollback` against the volume locks of a task that runs at the same time.

Task A copies a volume to h2. Task C then updates that copy with --incremental, and when C's
verify phase starts (the update has written the volume, and its backup is beside it), a second
process runs `ddmctl rollback A`. The rollback would remove the volume that C holds locked.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ddm.errors import ExitStatus
from ddm.task import ItemState, TaskState
from ddmsyncer.undo import ROLLBACK_ABSENT
from tests.integration.test_incremental import (backups_on, change_source, copied_volume,
                                                migrated_volume, run_update)
from tests.integration.test_migrate_volumes import WHOLE_SECONDS, run_command
from tests.lab.tree import diff_snapshots, snapshot_volume_tree


def ddmctl_process(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ddmctl in a process of its own, as a second terminal would."""
    return subprocess.run([sys.executable, "-m", "ddmctl.cli", *args], capture_output=True,
                          text=True, timeout=300, check=False)


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_rollback_rejected_while_update_runs(h1, h2, isolated_env, resources, force):
    volume, first = migrated_volume(h1, h2, resources)
    change_source(h1, volume)
    rollbacks: list[subprocess.CompletedProcess[str]] = []
    on_h2_during_rollback: list[bool] = []

    def roll_back_first() -> None:
        rollbacks.append(ddmctl_process("rollback", first["id"], *(["--force"] if force else [])))
        on_h2_during_rollback.append(volume in h2.docker("volume", "ls", "-q").stdout.split())

    store, update_id, error = run_update(volume, roll_back_first)

    (rollback,) = rollbacks
    assert rollback.returncode == ExitStatus.CONFLICT, rollback.stderr
    assert rollback.stdout == ""
    assert rollback.stderr == (
        f"ddmctl: error: h2/volume/{volume} is held by task {update_id}, which is running; "
        f"wait for it to end or cancel it ('ddmctl cancel {update_id}' stops it and rolls it "
        "back), then try again\n")
    assert on_h2_during_rollback == [True]
    assert error is None
    assert store.get_task(update_id).state is TaskState.SUCCEEDED
    assert diff_snapshots(snapshot_volume_tree(h1, volume), snapshot_volume_tree(h2, volume),
                          mtime_resolution_ns=WHOLE_SECONDS) == []
    assert backups_on(h2, volume) == []
    # The rejected rollback left task A as it was and released the locks it took.
    first_after = store.get_task(first["id"])
    assert first_after.state is TaskState.SUCCEEDED
    assert first_after.runner_pid is None
    assert [item.state for item in first_after.items] == [ItemState.VERIFIED]
    assert first_after.finished_at == first["finished_at"]
    with store.transaction() as db:
        assert db.execute("SELECT resource, task_id FROM locks").fetchall() == []


def test_rollback_after_update_ends_removes(h1, h2, isolated_env, resources):
    """Once the update has ended, the rollback it blocked runs, here with --force."""
    volume, first = migrated_volume(h1, h2, resources)
    change_source(h1, volume)
    store, update_id, error = run_update(volume, lambda: None)
    assert error is None

    outcome = run_command("ddmctl", "rollback", first["id"], "--force")

    assert outcome.status == 0, outcome.stderr
    assert outcome.stdout == f"{volume}\t{volume}\tremoved\n"
    assert volume not in h2.docker("volume", "ls", "-q").stdout.split()
    assert store.get_task(first["id"]).state is TaskState.ROLLED_BACK


def test_update_rollback_finds_target_gone(h1, h2, isolated_env, resources):
    """A rollback of an update whose target volume was removed meanwhile does not claim a restore."""
    volume = copied_volume(h1, h2, resources)
    change_source(h1, volume)

    def remove_target() -> None:
        h2.docker("volume", "rm", volume)

    store, update_id, error = run_update(volume, remove_target)

    assert error is not None
    assert "restored from its backup" not in str(error)
    assert str(error).endswith(
        f"volume {volume!r} no longer existed on h2 when the rollback came to restore it, so "
        "nothing was restored; find out what removed it before you run the migration again")
    task = store.get_task(update_id)
    assert task.state is TaskState.FAILED
    assert task.error["message"] == str(error)
    events = store.get_events(update_id)
    assert [event["kind"] for event in events if event["kind"] == "restored"] == []
    (absent,) = [event for event in events if event["kind"] == ROLLBACK_ABSENT]
    assert absent["level"] == "warning"
    assert absent["message"] == (f"volume {volume!r} no longer exists on h2, so the rollback "
                                 "could not restore it")
    assert volume not in h2.docker("volume", "ls", "-q").stdout.split()
    status = run_command("ddmctl", "status", update_id)
    print(status.stdout)
    assert "restored from its backup" not in status.stdout
    assert "so nothing was restored" in status.stdout


def test_rollback_waits_for_engine_lock(h1, h2, isolated_env, resources):
    """A task that locked the target volume through another name of h2's engine stops a rollback."""
    from ddm.store import TaskStore, default_store_path
    from tests.integration.operator_support import hold_engine_lock

    volume, first = migrated_volume(h1, h2, resources)
    target_before = snapshot_volume_tree(h2, volume)
    holder = "a" * 12
    engine_id = hold_engine_lock(h2, volume, holder)

    rollback = run_command("ddmctl", "rollback", first["id"])

    assert rollback.status == ExitStatus.CONFLICT, rollback.stderr
    assert rollback.stderr.splitlines()[-1] == (
        f"ddmctl: error: volume {volume!r} on Docker engine {engine_id} (also reached under "
        f"another host name) is held by task {holder}, which is running; wait for it to end or "
        f"cancel it ('ddmctl cancel {holder}' stops it and rolls it back), then try again")
    assert snapshot_volume_tree(h2, volume) == target_before
    store = TaskStore(default_store_path(os.environ))
    assert store.get_task(first["id"]).state is TaskState.SUCCEEDED
    with store.transaction() as db:
        assert [tuple(row) for row in db.execute("SELECT task_id FROM locks")] == [(holder,)]
