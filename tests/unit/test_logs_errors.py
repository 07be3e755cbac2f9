"""`ddmctl logs --container` errors: volumes-mode tasks and full-mode tasks that failed."""

from __future__ import annotations

from ddm.api import create_task
from ddm.config import load_config
from ddm.store import TaskStore, default_store_path
from ddm.task import Mode, Task, TaskSpec, TaskState
from tests.unit.cli_support import invoke


def store_full_task(environ: dict[str, str], task_id: str, containers: list[str]) -> str:
    """Store a full-mode task whose logs volume archived `containers`; return its ID."""
    store = TaskStore(default_store_path(environ))
    try:
        spec = TaskSpec(source_host="local", target_host="local", volumes=(), mode=Mode.FULL)
        task = store.create_task(Task(id=task_id, spec=spec))
        store.set_extra(task.id, logs_volume=f"ddm-logs-{task_id}", source_containers=containers)
        return task.id
    finally:
        store.close()


def test_container_log_of_volumes_task(environ: dict[str, str]) -> None:
    store = TaskStore(default_store_path(environ))
    try:
        task = create_task(store, load_config(None, environ), source="local", target="local",
                           volumes=("va:vb",), verify="full", force=False)
    finally:
        store.close()

    outcome = invoke("ddmctl", ["logs", task.id, "--container", "x"], environ)

    assert outcome.status == 2
    assert "--container applies to full-mode tasks only" in outcome.stderr
    assert f"'ddmctl logs {task.id}' without it prints the task's event log" in outcome.stderr
    assert "finalize" not in outcome.stderr


def test_container_log_of_failed_full_task(environ: dict[str, str]) -> None:
    task_id = store_full_task(environ, "decafbadf00d", ["web"])
    store = TaskStore(default_store_path(environ))
    try:
        store.update_task(task_id, state=TaskState.FAILED)
    finally:
        store.close()

    outcome = invoke("ddmctl", ["logs", task_id, "--container", "web"], environ)

    assert outcome.status == 2
    assert "task decafbadf00d is failed, so its container logs are not archived" in outcome.stderr
    assert "read it with 'docker logs web' on local" in outcome.stderr
    assert "not found" not in outcome.stderr


def test_container_log_of_unknown_container(environ: dict[str, str]) -> None:
    task_id = store_full_task(environ, "decafbadf00e", ["web", "db"])

    outcome = invoke("ddmctl", ["logs", task_id, "--container", "shop-db"], environ)

    assert outcome.status == 2
    assert "container 'shop-db' is not part of task decafbadf00e" in outcome.stderr
    assert "name one of its containers: web, db" in outcome.stderr
