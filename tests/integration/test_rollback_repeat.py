"""Lab tests of `ddmctl rollback` of a task that failed or was rolled back before."""

from __future__ import annotations

from typing import Any

import pytest

from ddm.errors import MigrationFailed
from ddm.task import TaskItem
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


def test_failed_task_rolled_back_again(h1: LabHost, h2: LabHost, isolated_env: IsolatedEnv,
                                       resources: LabResources, verify_fails: None) -> None:
    source = resources.create_volume(h1)
    resources.add_volume(h2, source)
    write_volume_tree(h1, source, {"note.txt": File(b"original content\n")})
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
    source = resources.create_volume(h1)
    resources.add_volume(h2, source)
    write_volume_tree(h1, source, {"note.txt": File(b"original content\n")})
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
