"""Lab tests of task control: pause, resume, cancel, create and serve, logs, list, watch,
callbacks and fleet plans."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ddm import api
from ddm.events import Event, Paused, Progress
from ddm.task import TaskState
from ddmsyncer import runner as runner_module
from tests.callback_server import RecordingServer
from tests.integration.operator_support import ddmctl, ddmsyncer, volume_names
from tests.lab import LabHost
from tests.lab.isolation import IsolatedEnv
from tests.lab.resources import LabResources, unique_name
from tests.lab.tree import File, RandomFile, diff_snapshots, snapshot_volume_tree, write_volume_tree

WAIT_SECONDS = 300  # an upper bound for a loaded machine, not a timing assertion

# The Engine API archive keeps whole-second mtimes, so snapshots are compared at that resolution.
WHOLE_SECONDS = 1_000_000_000


def small_volume(host: LabHost, resources: LabResources, **files: Any) -> str:
    volume = resources.create_volume(host)
    write_volume_tree(host, volume, files or {"a.txt": File(b"hello\n"),
                                              "dir/b.bin": RandomFile(64 * 1024, seed=1)})
    return volume


class PausingRun:
    """Runs a task in a thread and pauses it from the event callback at its first progress.

    CONTROL_POLL_SECONDS and PROGRESS_EVENT_SECONDS are set to 0 by the test, so the runner
    reads the control column after every chunk and the pause takes effect at the next one.
    """

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.events: list[Event] = []
        self.paused = threading.Event()
        self.error: BaseException | None = None
        self._pause_sent = False
        self.thread = threading.Thread(target=self._run)

    def on_event(self, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, Progress) and event.bytes_done > 0 and not self._pause_sent:
            self._pause_sent = True
            store = api.open_store()
            api.pause_task(store, self.task_id)
            store.close()
        if isinstance(event, Paused):
            self.paused.set()

    def _run(self) -> None:
        config = api.load_config()
        store = api.open_store()
        try:
            api.run_task(config, store, self.task_id, on_event=self.on_event)
        except BaseException as error:  # noqa: BLE001 - inspected by the test
            self.error = error
        finally:
            store.close()

    def progress_count(self) -> int:
        return sum(1 for event in self.events if isinstance(event, Progress))


@pytest.fixture
def fast_control(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_module, "CONTROL_POLL_SECONDS", 0.0)
    monkeypatch.setattr(runner_module, "PROGRESS_EVENT_SECONDS", 0.0)


def start_paused_task(h1: LabHost, h2: LabHost, resources: LabResources) -> tuple[PausingRun, str, str]:
    source = resources.create_volume(h1)
    write_volume_tree(h1, source, {"big.bin": RandomFile(24 * 1024 * 1024, seed=7),
                                   "small.txt": File(b"x\n")})
    target = f"{source}-copy"
    resources.add_volume(h2, target)
    store = api.open_store()
    task = api.create_task(store, api.load_config(), source="h1", target="h2",
                           volumes=[f"{source}:{target}"])
    store.close()

    run = PausingRun(task.id)
    run.thread.start()
    assert run.paused.wait(WAIT_SECONDS), "the task never paused"
    return run, source, target


def test_pause_then_resume_completes(h1: LabHost, h2: LabHost, isolated_env: IsolatedEnv,
                                     resources: LabResources, fast_control: None) -> None:
    run, source, target = start_paused_task(h1, h2, resources)

    status = ddmctl("status", run.task_id, "--json")
    assert status.json()["control"] == "pause"
    assert status.json()["state"] == "running"
    assert "running (paused)" in ddmctl("status", run.task_id).stdout
    count = run.progress_count()
    time.sleep(1.5)
    assert run.progress_count() == count, "progress went on while paused"
    assert run.thread.is_alive()

    resumed = ddmctl("resume", run.task_id)
    assert resumed.status == 0, resumed.stderr
    assert "resume requested" in resumed.stderr
    run.thread.join(WAIT_SECONDS)

    assert run.error is None, run.error
    task = api.open_store().get_task(run.task_id)
    assert task.state is TaskState.SUCCEEDED
    assert not diff_snapshots(
        snapshot_volume_tree(h1, source), snapshot_volume_tree(h2, target),
        mtime_resolution_ns=WHOLE_SECONDS,
    )
    kinds = [event["kind"] for event in api.open_store().get_events(run.task_id)]
    assert kinds.index("pause_requested") < kinds.index("paused") < kinds.index("resumed")


def test_cancel_while_paused_rolls_back(h1: LabHost, h2: LabHost, isolated_env: IsolatedEnv,
                                        resources: LabResources, fast_control: None) -> None:
    run, _, target = start_paused_task(h1, h2, resources)
    # The copy fills a staging volume; the target name appears only after verification.
    staging = {name for name in volume_names(h2) if name.startswith("ddm-staging-")}
    assert staging
    assert target not in volume_names(h2)

    cancelled = ddmctl("cancel", run.task_id)
    assert cancelled.status == 0, cancelled.stderr
    run.thread.join(WAIT_SECONDS)

    assert run.error is not None
    assert "cancelled while paused" in str(run.error)
    assert api.open_store().get_task(run.task_id).state is TaskState.CANCELLED
    assert target not in volume_names(h2)
    assert not staging & volume_names(h2)


def test_pause_rejects_finished_task(h1: LabHost, h2: LabHost, isolated_env: IsolatedEnv,
                                     resources: LabResources) -> None:
    source = small_volume(h1, resources)
    resources.add_volume(h2, source)
    migrated = ddmctl("migrate", "--from", "h1", "--to", "h2", "--volume", source, "--json")
    task_id = migrated.json()["id"]

    outcome = ddmctl("pause", task_id)

    assert outcome.status == 6
    assert "only a running task can be paused" in outcome.stderr


def test_create_and_serve_two_tasks(h1: LabHost, h2: LabHost, isolated_env: IsolatedEnv,
                                    resources: LabResources) -> None:
    sources = [small_volume(h1, resources), small_volume(h1, resources)]
    task_ids = []
    for source in sources:
        resources.add_volume(h2, source)
        created = ddmctl("create", "--from", "h1", "--to", "h2", "--volume", source)
        assert created.status == 0, created.stderr
        task_ids.append(created.stdout.strip())
    assert all(len(task_id) == 12 for task_id in task_ids)
    queued = ddmctl("list", "--state", "queued", "--json").json()
    assert {task["id"] for task in queued} == set(task_ids)

    served = ddmsyncer("serve", "--concurrency", "2", "--once", "--poll-interval", "0.2")

    assert served.status == 0, served.stderr
    store = api.open_store()
    for task_id, source in zip(task_ids, sources):
        assert store.get_task(task_id).state is TaskState.SUCCEEDED
        assert not diff_snapshots(
            snapshot_volume_tree(h1, source), snapshot_volume_tree(h2, source),
            mtime_resolution_ns=WHOLE_SECONDS,
        )


def test_logs_list_filters_and_watch(h1: LabHost, h2: LabHost, isolated_env: IsolatedEnv,
                                     resources: LabResources) -> None:
    source = small_volume(h1, resources)
    target = f"{source}-w"
    resources.add_volume(h2, target)
    migrated = ddmctl("migrate", "--from", "h1", "--to", "h2", "--volume", f"{source}:{target}",
                      "--json")
    task_id = migrated.json()["id"]

    logs = ddmctl("logs", task_id)
    assert logs.status == 0
    kinds = [line.split()[3] for line in logs.stdout.splitlines()]
    assert kinds[0] == "created"
    assert "verified" in kinds
    assert kinds[-1] == "finished"
    assert ddmctl("logs", task_id, "--json").json()[-1]["message"] == "task succeeded"

    assert [task["id"] for task in ddmctl("list", "--host", "h2", "--json").json()] == [task_id]
    assert ddmctl("list", "--host", "h9", "--json").json() == []
    assert ddmctl("list", "--since", "1h", "--json").json()[0]["id"] == task_id
    assert ddmctl("list", "--since", "2000-01-01", "--state", "failed", "--json").json() == []
    assert ddmctl("list", "--since", "soon").status == 2

    watched = ddmctl("status", task_id, "--watch")
    assert watched.status == 0
    assert f"task {task_id} succeeded, phase done" in watched.stderr
    assert "state     succeeded" in watched.stdout


def test_callbacks_run_and_never_change_result(
    h1: LabHost, h2: LabHost, isolated_env: IsolatedEnv, resources: LabResources,
    tmp_path: Path
) -> None:
    source = small_volume(h1, resources)
    resources.add_volume(h2, source)
    written = tmp_path / "summary.json"
    on_success = (f"{sys.executable} -c \"import json, os, sys; "
                  f"json.dump(dict(summary=json.load(sys.stdin), id=os.environ['DDM_TASK_ID'], "
                  f"result=os.environ['DDM_TASK_RESULT']), open(sys.argv[1], 'w'))\" {written}")

    with RecordingServer([500, 200]) as server:
        outcome = ddmctl("migrate", "--from", "h1", "--to", "h2", "--volume", source,
                         "--on-success", on_success, "--on-failure", "/nonexistent/never-run",
                         "--notify", server.url, "--json")

    assert outcome.status == 0, outcome.stderr
    task_id = outcome.json()["id"]
    recorded = json.loads(written.read_text())
    assert recorded["id"] == task_id
    assert recorded["result"] == "succeeded"
    assert recorded["summary"]["objects"][0]["source"] == source
    assert [body["task_id"] for body in server.bodies] == [task_id, task_id]
    events = api.open_store().get_events(task_id)
    callbacks = [event for event in events if event["kind"] == "callback"]
    assert [event["data"]["kind"] for event in callbacks] == ["command", "url"]
    assert callbacks[1]["data"]["attempts"] == 2


def test_failing_callback_keeps_success(
    h1: LabHost, h2: LabHost, isolated_env: IsolatedEnv, resources: LabResources
) -> None:
    source = small_volume(h1, resources)
    resources.add_volume(h2, source)

    outcome = ddmctl("migrate", "--from", "h1", "--to", "h2", "--volume", source,
                     "--on-success", f"{sys.executable} -c 'import sys; sys.exit(4)'", "--json")

    assert outcome.status == 0, outcome.stderr
    assert outcome.json()["state"] == "succeeded"
    task_id = outcome.json()["id"]
    failed = [event for event in api.open_store().get_events(task_id)
              if event["kind"] == "callback_failed"]
    assert len(failed) == 1
    assert "exited with status 4" in failed[0]["message"]
    assert api.open_store().get_task(task_id).state is TaskState.SUCCEEDED


def write_fleet(path: Path, items: list[dict[str, Any]], total: int = 2) -> Path:
    lines = ["version: 1", f"concurrency: {{total: {total}, per_host: 2}}", "items:"]
    for item in items:
        lines.append(f"  - {json.dumps(item)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_apply_one_item_fails_alone(h1: LabHost, h2: LabHost, isolated_env: IsolatedEnv,
                                    resources: LabResources, tmp_path: Path) -> None:
    first, second = small_volume(h1, resources), small_volume(h1, resources)
    missing = unique_name("missing")
    for name in (first, f"{second}-b", missing):
        resources.add_volume(h2, name)
    plan = write_fleet(tmp_path / "fleet.yaml", [
        {"name": "first", "from": "h1", "to": "h2", "volumes": [first]},
        {"name": "missing", "from": "h1", "to": "h2", "volumes": [missing]},
        {"name": "second", "from": "h1", "to": "h2", "volumes": [f"{second}:{second}-b"]},
    ])
    before = volume_names(h2)

    dry_run = ddmctl("apply", str(plan), "--dry-run")
    assert dry_run.status == 1
    assert "item missing: h1 -> h2, 1 volume, 1 conflict" in dry_run.stdout
    assert volume_names(h2) == before

    outcome = ddmctl("apply", str(plan), "--json")

    assert outcome.status == 1, outcome.stderr
    results = {item["name"]: item for item in outcome.json()["items"]}
    assert results["first"]["state"] == "succeeded"
    assert results["second"]["state"] == "succeeded"
    assert results["missing"]["state"] == "failed"
    assert "not found on host 'h1'" in results["missing"]["error"]
    assert volume_names(h2) - before == {first, f"{second}-b"}
    assert not diff_snapshots(
        snapshot_volume_tree(h1, second), snapshot_volume_tree(h2, f"{second}-b"),
        mtime_resolution_ns=WHOLE_SECONDS,
    )


def test_apply_fail_fast_skips_rest(h1: LabHost, h2: LabHost, isolated_env: IsolatedEnv,
                                    resources: LabResources, tmp_path: Path) -> None:
    other = small_volume(h1, resources)
    missing = unique_name("missing")
    resources.add_volume(h2, other)
    plan = write_fleet(tmp_path / "fleet.yaml", [
        {"name": "missing", "from": "h1", "to": "h2", "volumes": [missing]},
        {"name": "other", "from": "h1", "to": "h2", "volumes": [other]},
    ], total=1)

    outcome = ddmctl("apply", str(plan), "--fail-fast")

    assert outcome.status == 1
    rows = {line.split()[0]: line.split() for line in outcome.stdout.splitlines()[1:]}
    assert rows["missing"][3:5] != ["-", "skipped"]
    assert rows["missing"][4] == "failed"
    assert rows["other"][3:5] == ["-", "skipped"]
    assert other not in volume_names(h2)
    assert "1 of 2 items succeeded" not in outcome.stderr
    assert "0 of 2 items succeeded" in outcome.stderr
