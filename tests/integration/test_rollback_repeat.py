"""Lab tests of `ddmctl rollback` of a task that failed or was rolled back before."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from ddm.errors import ExitStatus, MigrationFailed
from ddm.store import TaskStore, default_store_path
from ddm.task import TaskItem, TaskState
from ddmctl.commands.tasks import format_time
from ddmsyncer import runner as runner_module
from tests.integration.operator_support import ddmctl, volume_names
from tests.lab import LabHost
from tests.lab.isolation import IsolatedEnv
from tests.lab.resources import LabResources
from tests.lab.tree import File, snapshot_volume_tree, write_volume_tree

FAULT = "injected fault after the promote"
NOTHING_REMOVED = ("an earlier rollback removed what the task wrote, so this rollback had "
                   "nothing to remove")


@pytest.fixture
def verify_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    # The promote has created the target volume under its real name, so the failed task's
    # own rollback removes it.
    def fail(runner: Any, item: TaskItem) -> None:
        raise MigrationFailed(f"{FAULT} of volume {item.target!r}")

    monkeypatch.setattr(runner_module, "mark_verified", fail)


@pytest.fixture
def h2_engine_restarted(h2: LabHost) -> Iterator[None]:
    # Listed after `resources`, so h2's engine runs again before the test's volumes go.
    yield
    h2.start_dockerd()


def note_volume(h1: LabHost, h2: LabHost, resources: LabResources) -> str:
    """Create a source volume with one small file on h1; its copy on h2 is removed at the end."""
    source = resources.create_volume(h1)
    resources.add_volume(h2, source)
    write_volume_tree(h1, source, {"note.txt": File(b"original content\n")})
    return source


def fail_migration(h1: LabHost, h2: LabHost, resources: LabResources) -> tuple[str, str]:
    """Run a migration that verify_fails makes fail; return its source volume and task ID."""
    source = note_volume(h1, h2, resources)
    migrated = ddmctl("migrate", "--from", "h1", "--to", "h2", "--volume", source, "--yes")
    assert migrated.status != 0
    listed = ddmctl("list", "--state", "failed", "--json").json()
    assert len(listed) == 1
    return source, listed[0]["id"]


def stored_task_state(task_id: str) -> tuple[TaskState, dict[str, Any] | None]:
    task = TaskStore(default_store_path(os.environ)).get_task(task_id)
    return task.state, task.error


def test_failed_rollback_keeps_task_error(h1: LabHost, h2: LabHost, isolated_env: IsolatedEnv,
                                          resources: LabResources, verify_fails: None,
                                          h2_engine_restarted: None) -> None:
    source, task_id = fail_migration(h1, h2, resources)
    failed = ddmctl("status", task_id, "--json").json()
    h2.stop_dockerd()

    text = ddmctl("rollback", task_id)
    as_json = ddmctl("rollback", task_id, "--json")
    stored_state, stored_error = stored_task_state(task_id)
    status = ddmctl("status", task_id, "--json").json()
    status_lines = ddmctl("status", task_id).stdout.splitlines()
    still_listed = ddmctl("list", "--state", "failed", "--json").json()

    unchecked = (f"an earlier rollback removed what the task wrote; this rollback stopped "
                 f"before it checked whether a volume named {source!r} exists on h2 now")
    assert stored_state is TaskState.FAILED
    assert stored_error == failed["error"]
    assert FAULT in stored_error["message"]
    assert text.status == ExitStatus.CONNECTION, text.stderr
    assert text.stdout.splitlines() == [f"{source}\t{source}\tunknown\t{unchecked}"]
    assert text.stderr.splitlines()[-2] == f"task {task_id} stays failed"
    assert text.stderr.splitlines()[-1].startswith("ddmctl: error: ")
    assert "h2" in text.stderr.splitlines()[-1]
    assert as_json.status == ExitStatus.CONNECTION, as_json.stderr
    document = as_json.json()
    assert document["state"] == "failed"
    assert document["error"] == failed["error"]
    assert document["rollback_error"]["exit_status"] == ExitStatus.CONNECTION
    assert document["volumes"][0]["rollback"] == {"outcome": "unknown", "reason": unchecked}
    assert status["state"] == "failed"
    assert status["error"] == failed["error"]
    assert status["rollback_error"] == document["rollback_error"]
    assert "h2" in status["rollback_error"]["message"]
    assert f"ddmctl rollback {task_id}" in status["rollback_error"]["message"]
    assert "state     failed" in status_lines
    assert f"error     {failed['error']['message']}" in status_lines
    assert (f"rollback  {format_time(status['rollback_finished_at'])} UTC, failed: "
            f"{status['rollback_error']['message']}") in status_lines
    assert [task["id"] for task in still_listed] == [task_id]

    h2.start_dockerd()
    again = ddmctl("rollback", task_id)
    after = ddmctl("status", task_id, "--json").json()

    assert again.status == 0, again.stderr
    assert again.stdout.splitlines() == [f"{source}\t{source}\tabsent\t{NOTHING_REMOVED}"]
    assert after["state"] == "failed"
    assert after["error"] == failed["error"]
    assert after["rollback_error"] is None
    assert source not in volume_names(h2)


def test_unreadable_target_reports_unknown(h1: LabHost, h2: LabHost, isolated_env: IsolatedEnv,
                                           resources: LabResources, verify_fails: None,
                                           h2_engine_restarted: None,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    source, task_id = fail_migration(h1, h2, resources)
    failed = ddmctl("status", task_id, "--json").json()
    remove_staging_volumes = runner_module.remove_staging_volumes

    # The engine stops after the rollback's last step before its check of the volumes that
    # the earlier rollback removed, so only that check cannot read h2.
    def remove_then_stop_engine(runner: Any) -> None:
        remove_staging_volumes(runner)
        h2.stop_dockerd()

    monkeypatch.setattr(runner_module, "remove_staging_volumes", remove_then_stop_engine)

    text = ddmctl("rollback", task_id)
    stored_state, stored_error = stored_task_state(task_id)
    status = ddmctl("status", task_id, "--json").json()

    unchecked = (f"an earlier rollback removed what the task wrote; this rollback could not "
                 f"check whether a volume named {source!r} exists on h2 now: run 'ddmctl "
                 f"rollback {task_id}' again when h2 is reachable")
    assert text.status == 0, text.stderr
    assert text.stdout.splitlines() == [f"{source}\t{source}\tunknown\t{unchecked}"]
    assert "absent" not in text.stdout
    assert text.stderr.splitlines()[-1] == f"task {task_id} stays failed"
    assert stored_state is TaskState.FAILED
    assert stored_error == failed["error"]
    assert status["rollback_error"] is None

    monkeypatch.setattr(runner_module, "remove_staging_volumes", remove_staging_volumes)
    h2.start_dockerd()
    again = ddmctl("rollback", task_id)

    assert again.status == 0, again.stderr
    assert again.stdout.splitlines() == [f"{source}\t{source}\tabsent\t{NOTHING_REMOVED}"]


def test_failed_task_rolled_back_again(h1: LabHost, h2: LabHost, isolated_env: IsolatedEnv,
                                       resources: LabResources, verify_fails: None) -> None:
    source = note_volume(h1, h2, resources)
    source_before = snapshot_volume_tree(h1, source)
    migrated = ddmctl("migrate", "--from", "h1", "--to", "h2", "--volume", source, "--yes")
    assert migrated.status != 0
    assert FAULT in migrated.stderr
    listed = ddmctl("list", "--state", "failed", "--json").json()
    assert len(listed) == 1
    task_id = listed[0]["id"]
    failed = ddmctl("status", task_id, "--json").json()
    assert failed["volumes"][0]["state"] == "rolled_back"
    assert source not in volume_names(h2)

    text = ddmctl("rollback", task_id)
    as_json = ddmctl("rollback", task_id, "--json")
    status = ddmctl("status", task_id, "--json").json()
    still_listed = ddmctl("list", "--state", "failed", "--json").json()

    assert text.status == 0, text.stderr
    assert text.stdout.splitlines() == [f"{source}\t{source}\tabsent\t{NOTHING_REMOVED}"]
    assert text.stderr.splitlines()[-1] == f"task {task_id} stays failed"
    assert as_json.status == 0, as_json.stderr
    document = as_json.json()
    assert document["state"] == "failed"
    assert document["error"] == failed["error"]
    assert document["volumes"][0]["rollback"] == {"outcome": "absent",
                                                  "reason": NOTHING_REMOVED}
    assert status["state"] == "failed"
    assert status["error"] == failed["error"]
    assert FAULT in status["error"]["message"]
    assert status["finished_at"] == failed["finished_at"]
    assert [task["id"] for task in still_listed] == [task_id]
    assert source not in volume_names(h2)
    assert snapshot_volume_tree(h1, source) == source_before


def test_rolled_back_task_rolled_back_again(h1: LabHost, h2: LabHost,
                                            isolated_env: IsolatedEnv,
                                            resources: LabResources) -> None:
    source = note_volume(h1, h2, resources)
    migrated = ddmctl("migrate", "--from", "h1", "--to", "h2", "--volume", source, "--yes",
                      "--json")
    assert migrated.status == 0, migrated.stderr
    task_id = migrated.json()["id"]
    first = ddmctl("rollback", task_id)
    assert first.status == 0, first.stderr
    assert first.stdout.splitlines() == [f"{source}\t{source}\tremoved"]

    again = ddmctl("rollback", task_id)
    status = ddmctl("status", task_id, "--json").json()

    assert again.status == 0, again.stderr
    assert again.stdout.splitlines() == [f"{source}\t{source}\tabsent\t{NOTHING_REMOVED}"]
    assert again.stderr.splitlines()[-1] == f"task {task_id} stays rolled_back"
    assert status["state"] == "rolled_back"
    assert status["error"] is None
    assert source not in volume_names(h2)


def test_failed_rollback_keeps_interrupted_cause(h1: LabHost, h2: LabHost,
                                                 isolated_env: IsolatedEnv,
                                                 resources: LabResources,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 h2_engine_restarted: None) -> None:
    # The task fails with h2's engine stopped, so its own rollback fails too and the task
    # ends interrupted. A `ddmctl rollback` that then fails keeps the task's error.
    def stop_engine_and_fail(runner: Any, item: TaskItem) -> None:
        h2.stop_dockerd()
        raise MigrationFailed(f"{FAULT} of volume {item.target!r}")

    monkeypatch.setattr(runner_module, "mark_verified", stop_engine_and_fail)
    source = note_volume(h1, h2, resources)
    source_before = snapshot_volume_tree(h1, source)
    migrated = ddmctl("migrate", "--from", "h1", "--to", "h2", "--volume", source, "--yes")
    (listed,) = ddmctl("list", "--state", "interrupted", "--json").json()
    task_id = listed["id"]
    interrupted = ddmctl("status", task_id, "--json").json()

    rollback = ddmctl("rollback", task_id)
    stored_state, stored_error = stored_task_state(task_id)
    status = ddmctl("status", task_id, "--json").json()
    status_lines = ddmctl("status", task_id).stdout.splitlines()

    assert migrated.status != 0
    assert FAULT in interrupted["error"]["message"]
    assert rollback.status == ExitStatus.CONNECTION, rollback.stderr
    assert stored_state is TaskState.INTERRUPTED
    assert stored_error == interrupted["error"]
    assert status["rollback_error"]["exit_status"] == ExitStatus.CONNECTION
    assert (f"rollback  {format_time(status['rollback_finished_at'])} UTC, failed: "
            f"{status['rollback_error']['message']}") in status_lines

    h2.start_dockerd()
    again = ddmctl("rollback", task_id)
    after = ddmctl("status", task_id, "--json").json()

    assert again.status == 0, again.stderr
    assert after["state"] == "rolled_back"
    assert after["rollback_error"] is None
    assert snapshot_volume_tree(h1, source) == source_before
    assert source not in volume_names(h2)


def test_failed_rollback_of_killed_task_keeps_no_error(h1: LabHost, h2: LabHost,
                                                       isolated_env: IsolatedEnv,
                                                       resources: LabResources,
                                                       h2_engine_restarted: None) -> None:
    # A task whose runner was killed is interrupted without an error of its own, so the
    # rollback's error must not become one.
    source = note_volume(h1, h2, resources)
    migrated = ddmctl("migrate", "--from", "h1", "--to", "h2", "--volume", source, "--yes",
                      "--json")
    task_id = migrated.json()["id"]
    TaskStore(default_store_path(os.environ)).update_task(task_id, state=TaskState.INTERRUPTED)
    h2.stop_dockerd()

    rollback = ddmctl("rollback", task_id)
    stored_state, stored_error = stored_task_state(task_id)
    status = ddmctl("status", task_id, "--json").json()

    assert migrated.status == 0, migrated.stderr
    assert rollback.status == ExitStatus.CONNECTION, rollback.stderr
    assert stored_state is TaskState.INTERRUPTED
    assert stored_error is None
    assert status["rollback_error"]["exit_status"] == ExitStatus.CONNECTION
    assert "h2" in status["rollback_error"]["message"]
