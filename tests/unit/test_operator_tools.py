"""Unit tests of the operator tools that need no lab: fleet plan validation, list filters,
clock parsing, duration estimates, config defaults for callbacks and the pause wait."""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path
from typing import Any

import click
import pytest

from ddm.config import config_from_dict
from ddm.errors import Cancelled, ConfigError, ExitStatus
from ddm.fleet import FleetPlanError, load_fleet_plan
from ddm.store import TaskStore
from ddm.task import ItemState, Mode, Task, TaskItem, TaskSpec, TaskState, VerifyMode, VolumeSpec
from ddmctl.tasks_filter import parse_since, task_matches
from ddmctl.watch import RateMeter, _PlainView, eta_seconds, watch_task
from ddmdriver.hostcheck import HostCheck, clock_skew, parse_rfc3339, worst_exit_status
from ddmsyncer import control
from ddmsyncer.linkprobe import LinkRate
from ddmsyncer.plan import estimate_duration, plan_steps

HOSTS = {"hosts": {"old": {"url": "ssh://root@old.example"},
                   "new": {"url": "ssh://root@new.example"},
                   "spare": {"url": "ssh://root@spare.example"}}}


def config(extra: dict[str, Any] | None = None) -> Any:
    return config_from_dict({**HOSTS, **(extra or {})}, None, {"HOME": "/nonexistent"})


def write_plan(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    return path


# Fleet plans.

def test_fleet_plan_valid(tmp_path: Path) -> None:
    path = write_plan(tmp_path, """
version: 1
concurrency: {total: 3, per_host: 1}
defaults: {verify: quick}
items:
  - {name: pg, from: old, to: new, volumes: [pgdata, "wal:wal-15"]}
  - {from: old, to: spare, volumes: cache, verify: none, force: true}
""")
    plan = load_fleet_plan(path, config())

    assert (plan.total, plan.per_host) == (3, 1)
    assert [item.name for item in plan.items] == ["pg", "item-2"]
    assert plan.items[0].spec.verify is VerifyMode.QUICK
    assert [(v.source, v.target) for v in plan.items[0].spec.volumes] == [
        ("pgdata", "pgdata"), ("wal", "wal-15")]
    assert plan.items[1].spec.verify is VerifyMode.NONE
    assert plan.items[1].spec.force is True
    assert plan.items[1].hosts == frozenset({"old", "spare"})


@pytest.mark.parametrize(("text", "expected"), [
    ("[1, 2]", "top level must be a mapping"),
    ("items: []", "missing 'items'"),
    ("version: 2\nitems: [{from: old, to: new, volumes: [a1]}]", "unsupported version 2"),
    ("items: [{from: old, to: new, volumes: [a1]}]\nextra: 1", "unknown key 'extra'"),
    ("items: [{from: old, to: nowhere, volumes: [a1]}]", "unknown host 'nowhere'"),
    ("items: [{from: old, to: new}]", "missing or invalid 'volumes'"),
    ("items: [{from: old, to: new, volumes: [-bad]}]", "invalid volume name"),
    ("items: [{to: new, volumes: [a1]}]", "missing or invalid 'from'"),
    ("items: [{from: old, to: new, volumes: [a1], verify: deep}]", "invalid verify 'deep'"),
    ("items: [{from: old, to: new, volumes: [a1], force: 'yes'}]", "invalid force"),
    ("items: [{from: old, to: new, volumes: [a1], notify: 'ftp://x/'}]", "invalid --notify URL"),
    ("concurrency: {total: 0}\nitems: [{from: old, to: new, volumes: [a1]}]",
     "invalid concurrency.total 0"),
    ("concurrency: {per_host: true}\nitems: [{from: old, to: new, volumes: [a1]}]",
     "invalid concurrency.per_host True"),
    ("items: [{name: x, from: old, to: new, volumes: [a1]}, "
     "{name: x, from: old, to: new, volumes: [b1]}]", "item name 'x' is used twice"),
    ("items: [{from: old, to: new, volumes: [a1]}, {from: spare, to: new, volumes: [a1]}]",
     "both write volume 'a1' on host 'new'"),
    ("items: [{from: old, to: new, volumes: [a1]", "invalid YAML"),
])
def test_fleet_plan_invalid(tmp_path: Path, text: str, expected: str) -> None:
    path = write_plan(tmp_path, text)

    with pytest.raises(FleetPlanError) as caught:
        load_fleet_plan(path, config())

    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)
    assert caught.value.exit_status is ExitStatus.USAGE


def test_fleet_plan_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FleetPlanError, match="fleet plan not found"):
        load_fleet_plan(tmp_path / "absent.yaml", config())


# Config defaults for callbacks.

def test_config_callback_defaults() -> None:
    loaded = config({"defaults": {"on_success": "notify-send 'done'",
                                  "notify": "https://hooks.example/ddm"}})

    assert loaded.defaults.on_success == "notify-send 'done'"
    assert loaded.defaults.on_failure is None
    assert loaded.defaults.notify == ("https://hooks.example/ddm",)
    assert loaded.to_dict()["defaults"]["notify"] == ["https://hooks.example/ddm"]


@pytest.mark.parametrize("defaults", [
    {"on_success": "echo 'open"},
    {"on_failure": 5},
    {"notify": "gopher://x/"},
    {"notify": {"url": "http://x/"}},
])
def test_config_callback_defaults_invalid(defaults: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as caught:
        config({"defaults": defaults})

    assert "defaults" in str(caught.value)


# List filters.

def test_parse_since_durations_and_dates() -> None:
    now = 1_800_000_000.0

    assert parse_since("90s", now) == now - 90
    assert parse_since("30m", now) == now - 1800
    assert parse_since("12h", now) == now - 43200
    assert parse_since("7d", now) == now - 7 * 86400
    assert parse_since("2026-12-04", now) == 1796342400.0
    assert parse_since("2026-12-04T10:00+01:00", now) == 1796374800.0
    assert parse_since(None, now) is None


def test_parse_since_invalid() -> None:
    with pytest.raises(click.BadParameter, match="invalid time 'yesterday'"):
        parse_since("yesterday")


def test_task_matches_host_and_since() -> None:
    task = Task(id="a" * 12, spec=TaskSpec(source_host="old", target_host="new"),
                created_at=1000.0)

    assert task_matches(task, host="old", since=None)
    assert task_matches(task, host="new", since=999.0)
    assert not task_matches(task, host="spare", since=None)
    assert not task_matches(task, host=None, since=1001.0)


# Host check helpers.

def test_parse_rfc3339_nanoseconds() -> None:
    assert parse_rfc3339("2026-12-04T20:00:00.123456789Z") == pytest.approx(1796414400.123456)
    assert parse_rfc3339("2026-12-04T21:00:00+01:00") == 1796414400.0
    assert parse_rfc3339("not a time") is None


def test_clock_skew_subtracts_half_round_trip() -> None:
    skew = clock_skew("2026-12-04T20:00:10Z", received=1796414400.5, rtt_seconds=1.0)

    assert skew == pytest.approx(10.0)
    assert clock_skew(None, 0.0, 0.0) is None


def test_worst_exit_status() -> None:
    results = [HostCheck("a", "ssh://a", exit_status=0), HostCheck("b", "ssh://b", exit_status=3),
               HostCheck("c", "ssh://c", exit_status=5), HostCheck("d", "ssh://d", exit_status=4)]

    assert worst_exit_status(results) == 5
    assert worst_exit_status(results[:2]) == 3
    assert worst_exit_status([]) == 0


# Plan steps and estimate.

def test_plan_steps_order() -> None:
    spec = TaskSpec(source_host="old", target_host="new",
                    volumes=(VolumeSpec("a1", "a1"), VolumeSpec("b1", "b2")))
    objects = [{"source": "a1", "target": "a1", "action": "replace"},
               {"source": "b1", "target": "b2", "action": "create"}]

    steps = plan_steps(spec, objects)

    assert [step["order"] for step in steps] == list(range(1, len(steps) + 1))
    assert [step["phase"] for step in steps] == [
        "prepare", "copy", "copy", "copy", "copy", "migrate", "verify", "verify", "verify",
        "verify", "verify", "cleanup"]
    # --force removes the old volume at promote, after its copy is verified.
    assert [step["action"] for step in steps[6:9]] == [
        "compare the staging volume's manifest with the source's (full)",
        "remove the existing target volume a1 (--force)",
        "create the target volume and move the staging volume's data into it"]


def test_plan_steps_direct_route() -> None:
    spec = TaskSpec(source_host="old", target_host="new", volumes=(VolumeSpec("a1", "a1"),),
                    options={"route": "direct"})
    objects = [{"source": "a1", "target": "a1", "action": "create", "data_path": "host"}]

    actions = [step["action"] for step in plan_steps(spec, objects)]

    assert not any("relay" in action for action in actions)
    assert any("one-task key in new's authorized_keys" in action for action in actions)
    assert any(action.startswith("scan the source and the staging volume") for action in actions)
    assert any("remove the task key" in action for action in actions)


def test_estimate_uses_slowest_link() -> None:
    links = {"source": LinkRate("old", 100.0, 50.0, 4),
             "target": LinkRate("new", 200.0, 20.0, 4)}
    objects = [{"size_bytes": 1000}, {"size_bytes": 1000}, {"size_bytes": None}]

    estimate = estimate_duration(objects, links, VerifyMode.FULL)

    assert estimate["copy_bytes_per_second"] == 20.0
    assert estimate["copy_seconds"] == 100.0
    assert estimate["verify_seconds"] == 10.0
    assert estimate["seconds"] == 110.0
    assert estimate["sizes_unknown"] == 1


def test_estimate_without_measurement() -> None:
    links = {"source": LinkRate("old", None, None, 0, note="not reached over SSH"),
             "target": LinkRate("new", 1.0, 1.0, 4)}

    estimate = estimate_duration([{"size_bytes": 10}], links, VerifyMode.NONE)

    assert estimate["seconds"] is None
    assert "old: not reached over SSH" in estimate["basis"]


# Watch view.

def test_plain_watch_view_writes_changes_only() -> None:
    stream = io.StringIO()
    view = _PlainView(stream)
    task = Task(id="b" * 12, spec=TaskSpec(source_host="old", target_host="new"),
                state=TaskState.RUNNING)
    task.items = [TaskItem(task_id=task.id, position=0, source="a1", target="a1",
                           state=ItemState.COPYING, bytes_total=1000, bytes_done=250)]
    meter = RateMeter()

    view.show(task, meter)
    view.show(task, meter)
    task.items[0].bytes_done = 260
    view.show(task, meter)
    task.items[0].bytes_done = 1000
    view.show(task, meter)

    lines = stream.getvalue().splitlines()
    assert lines == [
        f"task {task.id} running, phase prepare",
        "volume a1 -> a1: copying 20%, 250 B",
        "volume a1 -> a1: copying 20%, 260 B",
        "volume a1 -> a1: copying 100%, 1000 B",
    ]


def test_rate_meter_and_eta() -> None:
    task = Task(id="c" * 12, spec=TaskSpec(source_host="old", target_host="new"))
    task.items = [TaskItem(task_id=task.id, position=0, source="a1", target="a1")]
    meter = RateMeter()

    meter.update(task, 10.0)
    task.items[0].bytes_done = 500
    meter.update(task, 12.0)

    assert meter.rate(0) == 250.0
    assert eta_seconds(1000, meter.rate(0)) == 4.0
    assert eta_seconds(None, 1.0) is None
    assert eta_seconds(10, None) is None


# Pause wait.

class FakeRunner:
    """The parts of TaskRunner that wait_while_paused uses, over a real store."""

    def __init__(self, store: TaskStore, task: Task) -> None:
        self.store = store
        self.task = task
        self.events: list[Any] = []

    def record(self, level: str, kind: str, message: str, **data: Any) -> None:
        self.store.add_event(self.task.id, level, kind, message, data or None)

    def emit(self, event: Any) -> None:
        self.events.append(event)


@pytest.fixture
def paused_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[TaskStore, Task]:
    monkeypatch.setattr(control, "PAUSE_POLL_SECONDS", 0.05)
    store = TaskStore(tmp_path / "tasks.db")
    task = Task(id="d" * 12, spec=TaskSpec(source_host="old", target_host="new"))
    store.create_task(task)
    store.update_task(task.id, state=TaskState.RUNNING, control="pause")
    return store, store.get_task(task.id)


def _set_control_later(path: Path, task_id: str, value: str | None) -> threading.Thread:
    def change() -> None:
        time.sleep(0.3)
        other = TaskStore(path)
        other.update_task(task_id, control=value)
        other.close()

    thread = threading.Thread(target=change)
    thread.start()
    return thread


def test_pause_wait_ends_on_resume(paused_task: tuple[TaskStore, Task]) -> None:
    store, task = paused_task
    runner = FakeRunner(store, task)
    thread = _set_control_later(store.path, task.id, None)

    control.wait_while_paused(runner)
    thread.join()

    assert [event.kind for event in runner.events] == ["Paused", "Resumed"]
    assert runner.events[1].seconds > 0
    kinds = [event["kind"] for event in store.get_events(task.id)]
    assert kinds == ["paused", "resumed"]


def test_pause_wait_raises_on_cancel(paused_task: tuple[TaskStore, Task]) -> None:
    store, task = paused_task
    runner = FakeRunner(store, task)
    thread = _set_control_later(store.path, task.id, "cancel")

    with pytest.raises(Cancelled, match="cancelled while paused"):
        control.wait_while_paused(runner)
    thread.join()

    assert [event.kind for event in runner.events] == ["Paused"]


def test_watch_terminal_view_renders(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "tasks.db")
    task = Task(id="e" * 12, spec=TaskSpec(source_host="old", target_host="new"))
    task.items = [TaskItem(task_id=task.id, position=0, source="a1", target="b1",
                           state=ItemState.VERIFIED, bytes_total=2048, bytes_done=2048)]
    store.create_task(task)
    store.update_task(task.id, state=TaskState.SUCCEEDED, finished_at=time.time())
    stream = io.StringIO()

    last = watch_task(store, task.id, stream, terminal=True, no_color=True)

    assert last.state is TaskState.SUCCEEDED
    output = stream.getvalue()
    assert task.id in output
    assert "a1 → b1" in output
    assert "2.0 KiB / 2.0 KiB" in output
    store.close()


@pytest.mark.parametrize(("plan_text", "expected"), [
    (None, "fleet plan not found"),
    ("items: [{from: old, to: nowhere, volumes: [a1]}]", "unknown host 'nowhere'"),
    ("items: {from: old}", "missing 'items'"),
])
def test_apply_invalid_plan_exits_2(home: Path, environ: dict[str, str], no_network: None,
                                    plan_text: str | None, expected: str) -> None:
    from tests.unit.cli_support import error_line, invoke

    config_path = home / "ddm.yaml"
    config_path.write_text("version: 1\nhosts:\n  old: ssh://root@old.example\n"
                           "  new: ssh://root@new.example\n")
    plan_path = home / "fleet.yaml"
    if plan_text is not None:
        plan_path.write_text(plan_text)

    outcome = invoke("ddmctl", ["--config", str(config_path), "apply", str(plan_path)], environ)

    assert expected in error_line(outcome, "ddmctl")


def test_hosts_check_without_hosts_exits_2(home: Path, environ: dict[str, str],
                                           no_network: None) -> None:
    from tests.unit.cli_support import error_line, invoke

    outcome = invoke("ddmctl", ["hosts", "check"], environ)

    assert "no hosts to check" in error_line(outcome, "ddmctl")


def stored_task(tmp_path: Path, task_id: str, state: TaskState, *,
                reserved_by: int | None = None, **fields: Any) -> tuple[TaskStore, Task]:
    """Store a task in `state` with the other `fields`; return the store and the task."""
    store = TaskStore(tmp_path / "tasks.db")
    task = Task(id=task_id, spec=TaskSpec(source_host="old", target_host="new"))
    store.create_task(task, reserved_by=reserved_by)
    store.update_task(task.id, state=state, **fields)
    return store, task


@pytest.mark.parametrize("state, hint", [
    (TaskState.SUCCEEDED, "undo its changes with 'ddmctl rollback eeeeeeeeeeee'"),
    (TaskState.CANCELLED, "see what it left with 'ddmctl status eeeeeeeeeeee'"),
    (TaskState.ROLLED_BACK, "see what it left with 'ddmctl status eeeeeeeeeeee'"),
])
def test_cancel_ended_task(tmp_path: Path, state: TaskState, hint: str) -> None:
    from ddm.api import cancel_task
    from ddm.errors import TaskConflict

    store, task = stored_task(tmp_path, "e" * 12, state, finished_at=time.time())

    with pytest.raises(TaskConflict) as raised:
        cancel_task(store, task.id)

    assert str(raised.value) == (f"task {task.id} has already ended ({state.value}), so there is "
                                 f"nothing to cancel; {hint}")
    assert store.get_task(task.id).state is state


@pytest.mark.parametrize("state, hint", [
    (TaskState.QUEUED, "run it with 'ddmsyncer run ffffffffffff', or leave it to 'ddmsyncer serve'"),
    (TaskState.RUNNING, "it runs already; watch it with 'ddmctl status --watch ffffffffffff'"),
    (TaskState.SUCCEEDED, "start a new task with 'ddmctl migrate' instead"),
])
def test_resume_hint_by_state(tmp_path: Path, state: TaskState, hint: str) -> None:
    from ddm.api import resume_task
    from ddm.errors import TaskConflict

    # A live runner, so that a running task is not marked stale.
    store, task = stored_task(tmp_path, "f" * 12, state, reserved_by=os.getpid())

    with pytest.raises(TaskConflict) as raised:
        resume_task(config(), store, task.id)

    assert str(raised.value).endswith(hint)


def test_list_row_paused_and_full_mode() -> None:
    from ddmctl.commands.tasks import task_line

    paused = Task(id="a1" * 6, spec=TaskSpec(source_host="old", target_host="new",
                                             volumes=(VolumeSpec("pg", "pg"),)),
                  state=TaskState.RUNNING, control="pause",
                  items=[TaskItem(task_id="a1" * 6, position=0, source="pg", target="pg")])
    project = Task(id="b2" * 6, spec=TaskSpec(source_host="old", target_host="new", mode=Mode.FULL,
                                              options={"project": "shop"}))
    containers = Task(id="c3" * 6, spec=TaskSpec(source_host="old", target_host="new", mode=Mode.FULL,
                                                 options={"containers": ["web", "db"]}))

    assert task_line(paused).split()[4:5] == ["paused"]
    assert task_line(paused).endswith("  pg")
    assert task_line(project).endswith("  project shop")
    assert task_line(containers).endswith("  web,db")


def test_watch_queued_task_hint(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "tasks.db")
    task = Task(id="9" * 12, spec=TaskSpec(source_host="old", target_host="new"))
    store.create_task(task)
    stream = io.StringIO()

    def end_the_task(_: float) -> None:
        store.update_task(task.id, state=TaskState.CANCELLED, finished_at=time.time())

    last = watch_task(store, task.id, stream, terminal=False, no_color=True, sleep=end_the_task)

    assert last.state is TaskState.CANCELLED
    assert stream.getvalue().splitlines()[0] == (
        f"task {task.id} is queued: it starts when 'ddmsyncer serve' takes it or "
        f"'ddmsyncer run {task.id}' runs it")
    store.close()
