"""What `ddmctl migrate` prints on stdout for a task that failed before or during its copy.

The runner is replaced by one that stores the end state a real run stores, so these tests
need no host.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from typing import Any

import pytest

from ddm import api
from ddm.errors import TransferFailed, VolumeNotFound
from ddm.config import load_config
from ddm.store import TaskStore, default_store_path
from ddm.task import ItemState, Phase, TaskState
from tests.unit.cli_support import invoke

pytestmark = pytest.mark.usefixtures("no_network")


def fail_in_prepare(config: Any, store: TaskStore, task_id: str, on_event: Any = None) -> None:
    """Store what a run whose prepare phase found a missing source volume stores, and raise."""
    error = VolumeNotFound("volume 'missingvol' not found on host 'a'")
    store.claim_task(task_id, 1, (TaskState.QUEUED,))
    store.update_task(task_id, state=TaskState.FAILED, phase=Phase.ROLLBACK,
                      error=error.to_dict(), finished_at=time.time(), runner_pid=None)
    raise error


def fail_in_first_copy(config: Any, store: TaskStore, task_id: str,
                       on_event: Any = None) -> None:
    """Store a run that failed while copying its first volume, before it started the second."""
    error = TransferFailed("injected failure copying volume 'vfirst'")
    store.claim_task(task_id, 1, (TaskState.QUEUED,))
    store.update_item(task_id, 0, state=ItemState.ROLLED_BACK, started_at=time.time(),
                      bytes_done=2048)
    store.update_task(task_id, state=TaskState.FAILED, phase=Phase.ROLLBACK,
                      error=error.to_dict(), finished_at=time.time(), runner_pid=None)
    raise error


def migrate(environ: dict[str, str], *volumes: str, as_json: bool = False) -> Any:
    args = ["migrate", "--from", "a", "--to", "b", "--yes"]
    for volume in volumes:
        args += ["--volume", volume]
    return invoke("ddmctl", args + (["--json"] if as_json else []), environ)


def test_prepare_failure_prints_no_volume_rows(configured: dict[str, str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "run_task", fail_in_prepare)

    outcome = migrate(configured, "missingvol", "vother")

    assert outcome.status == 1, outcome.stderr
    assert outcome.stdout == ""
    assert "ddmctl: error: volume 'missingvol' not found on host 'a'" in outcome.stderr


def test_prepare_failure_json_lists_pending_volumes(configured: dict[str, str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "run_task", fail_in_prepare)

    outcome = migrate(configured, "missingvol", "vother", as_json=True)

    assert outcome.status == 1, outcome.stderr
    document = json.loads(outcome.stdout)
    assert document["state"] == "failed"
    assert document["error"]["error"] == "VolumeNotFound"
    assert [volume["source"] for volume in document["volumes"]] == ["missingvol", "vother"]
    assert [volume["state"] for volume in document["volumes"]] == ["pending", "pending"]
    assert [volume["started_at"] for volume in document["volumes"]] == [None, None]


def test_copy_failure_prints_started_volumes_only(configured: dict[str, str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "run_task", fail_in_first_copy)

    outcome = migrate(configured, "vfirst", "vsecond:vrenamed")
    as_json = migrate(configured, "vfirst", "vsecond:vrenamed", as_json=True)

    assert outcome.status == 1, outcome.stderr
    assert outcome.stdout == "vfirst\tvfirst\trolled_back\t2.0 KiB\n"
    volumes = json.loads(as_json.stdout)["volumes"]
    assert [(volume["target"], volume["state"]) for volume in volumes] == [
        ("vfirst", "rolled_back"), ("vrenamed", "pending")]


def test_declined_migrate_creates_no_task(configured: dict[str, str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # click.confirm reads its input from sys.stdin, not from the command's environment.
    monkeypatch.setattr(sys, "stdin", io.StringIO("n\n"))
    monkeypatch.setattr(api, "run_task", fail_in_prepare)

    outcome = invoke("ddmctl", ["migrate", "--from", "a", "--to", "b", "--volume", "v1"],
                     configured, stdin_isatty=True)

    assert outcome.status == 1, outcome
    assert outcome.stdout == ""
    assert outcome.stderr == (
        "migrate volumes v1 from a to b? [y/N]: "
        "ddmctl: error: no task was created because the confirmation was declined; run the command again "
        "and answer yes, or pass --yes\n"
    )
    listed = invoke("ddmctl", ["list", "--json"], configured)
    assert json.loads(listed.stdout) == []


def test_run_of_running_task_prints_nothing(configured: dict[str, str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(None, configured)
    store = TaskStore(default_store_path(configured))
    task = api.create_task(store, config, source="a", target="b", volumes=["big:bigq2"])
    # This process acts as the other runner, so the stored runner pid is alive.
    store.claim_task(task.id, os.getpid(), (TaskState.QUEUED,))
    claim = TaskStore.claim_task

    def claim_while_copying(self: TaskStore, task_id: str, pid: int,
                            states: tuple[TaskState, ...]) -> bool:
        # The other runner goes on copying while `ddmsyncer run` tries to claim the task.
        self.update_item(task_id, 0, state=ItemState.COPYING, started_at=time.time(),
                         bytes_done=4096)
        return claim(self, task_id, pid, states)

    monkeypatch.setattr(TaskStore, "claim_task", claim_while_copying)

    outcome = invoke("ddmsyncer", ["run", task.id], configured)

    assert outcome.status == 6, outcome
    assert outcome.stdout == ""
    assert outcome.stderr == (
        f"ddmsyncer: error: task {task.id} is running, not queued or interrupted; only queued "
        f"or interrupted tasks can run; see 'ddmctl status {task.id}'\n"
    )
