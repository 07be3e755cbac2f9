"""Tests of the full-mode plan of a re-run that the task would finish as already migrated."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ddm.errors import TargetExists
from ddm.store import TaskStore
from ddm.task import Mode, Task, TaskSpec, TaskState
from ddmctl.commands.planning import plan_lines
from ddmdriver import engine as engine_module
from ddmsyncer import fullplan, plan, rerun
from ddmsyncer.linkprobe import LinkRate

pytestmark = pytest.mark.usefixtures("no_network")

SPEC = TaskSpec(source_host="h1", target_host="h2", mode=Mode.FULL,
                options={"containers": ["web"], "project": None})


class _Engine:
    def __init__(self, role: str) -> None:
        self.role = role
        self.host = SimpleNamespace(name=role)
        self.api = SimpleNamespace(info=lambda: {"ID": f"engine-{role}"})

    def __enter__(self) -> _Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _inspect(engine: _Engine, name: str) -> dict[str, Any]:
    if engine.role == "h2":
        return {"Id": "target-web"}
    return {"Id": "source-web", "State": {"Running": False, "StartedAt": "0001-01-01T00:00:00Z"}}


def _plan_with_conflict(source: Any, target: Any, spec: TaskSpec) -> fullplan.FullPlan:
    full_plan = fullplan.FullPlan()
    full_plan.conflict("container", "web", TargetExists, "container 'web' exists on host 'h2'")
    return full_plan


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TaskStore]:
    task_store = TaskStore(tmp_path / "tasks.db")
    yield task_store
    task_store.close()


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "open_engine", lambda host, config: _Engine(host.name))
    monkeypatch.setattr(plan, "_engine_summary", lambda engine: {"host": engine.host.name})
    monkeypatch.setattr(plan, "measure_link",
                        lambda engine, probe_bytes: LinkRate(engine.host.name, None, None, 0))
    monkeypatch.setattr(fullplan, "build_full_plan", _plan_with_conflict)
    monkeypatch.setattr(rerun.driver, "container_inspect", _inspect)


def finish_earlier_task(store: TaskStore) -> None:
    store.create_task(Task(id="aaaa00000001", spec=SPEC, created_at=1.0))
    store.update_task("aaaa00000001", state=TaskState.SUCCEEDED)
    store.set_extra("aaaa00000001", **{rerun.EXTRA_KEY: {
        "task": "aaaa00000001", "started_at": 100.0,
        "source_containers": [{"name": "web", "id": "source-web"}],
        "target_containers": [{"name": "web", "id": "target-web"}],
    }})


CONFIG = SimpleNamespace(host=lambda name: SimpleNamespace(name=name))


@pytest.mark.usefixtures("offline")
def test_full_plan_of_rerun_has_no_conflicts(store: TaskStore) -> None:
    finish_earlier_task(store)

    document = plan.build_plan(CONFIG, SPEC, probe_bytes=0, store=store)

    assert document["conflicts"] == []
    assert document["ok"] is True
    assert [(entry["kind"], entry["target"], entry["action"], entry["earlier_task"])
            for entry in document["objects"]] == [
        ("container", "web", "already_migrated", "aaaa00000001")]
    assert document["bytes_total"] == 0
    lines = [line.strip() for line in plan_lines(document)]
    assert "container web -> web: -, already_migrated, data path none" in lines
    assert "already migrated by task aaaa00000001; nothing is sent" in lines


@pytest.mark.usefixtures("offline")
def test_full_plan_without_earlier_task_keeps_conflict(store: TaskStore) -> None:
    document = plan.build_plan(CONFIG, SPEC, probe_bytes=0, store=store)

    assert [conflict["object"] for conflict in document["conflicts"]] == ["web"]
    assert document["ok"] is False
