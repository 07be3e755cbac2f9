"""Tests of task callbacks: commands run without a shell, and URL notifications over HTTP.

The HTTP tests start a small server on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ddm.callbacks import (
    CallbackError,
    Callbacks,
    post_json,
    run_command,
    run_task_callbacks,
    validate_command,
    validate_url,
)
from ddm.config import Defaults
from ddm.store import TaskStore
from ddm.task import Mode, Task, TaskItem, TaskSpec, TaskState, VolumeSpec
from tests.callback_server import RecordingServer

SUMMARY = {"summary_version": 1, "task_id": "0123456789ab", "result": "succeeded",
           "objects": []}


@pytest.fixture
def no_sleep() -> Iterator[list[float]]:
    """Record backoff pauses instead of sleeping."""
    yield []


def test_post_json_success_sends_summary() -> None:
    with RecordingServer([200]) as server:
        outcome = post_json(server.url, SUMMARY)

    assert outcome.ok
    assert outcome.attempts == 1
    assert outcome.details["http_status"] == 200
    assert server.bodies == [SUMMARY]


def test_post_json_fails_twice_then_succeeds(no_sleep: list[float]) -> None:
    with RecordingServer([500, 503, 200]) as server:
        outcome = post_json(server.url, SUMMARY, backoff=0.5, sleep=no_sleep.append)

    assert outcome.ok
    assert outcome.attempts == 3
    assert len(server.bodies) == 3
    assert no_sleep == [0.5, 1.0]


def test_post_json_gives_up_after_attempts(no_sleep: list[float]) -> None:
    with RecordingServer([500, 500, 500, 500, 500]) as server:
        outcome = post_json(server.url, SUMMARY, attempts=3, sleep=no_sleep.append)

    assert not outcome.ok
    assert outcome.attempts == 3
    assert outcome.error == "HTTP 500 Internal Server Error"
    assert len(server.bodies) == 3


def test_post_json_client_error_not_retried(no_sleep: list[float]) -> None:
    with RecordingServer([404, 200]) as server:
        outcome = post_json(server.url, SUMMARY, sleep=no_sleep.append)

    assert not outcome.ok
    assert outcome.attempts == 1
    assert outcome.error.startswith("HTTP 404")
    assert no_sleep == []


def test_post_json_timeout_bounds_silent_server(no_sleep: list[float]) -> None:
    with RecordingServer([None, None]) as server:
        started = time.monotonic()
        outcome = post_json(server.url, SUMMARY, timeout=0.5, attempts=2, sleep=no_sleep.append)
        elapsed = time.monotonic() - started

    assert not outcome.ok
    assert outcome.attempts == 2
    assert outcome.error == "timed out"
    assert len(server.bodies) == 2
    # Two attempts of 0.5 s each; the bound is generous because the machine may be loaded.
    assert elapsed < 20


def test_post_json_refused_connection(no_sleep: list[float]) -> None:
    with RecordingServer([]) as server:
        url = server.url
    outcome = post_json(url, SUMMARY, attempts=2, timeout=2, sleep=no_sleep.append)

    assert not outcome.ok
    assert outcome.attempts == 2
    assert "refused" in outcome.error.lower()


def test_run_command_gets_stdin_and_environment(tmp_path: Path) -> None:
    output = tmp_path / "out.json"
    script = ("import json, os, sys; json.dump({'stdin': json.load(sys.stdin), "
              "'id': os.environ['DDM_TASK_ID'], 'result': os.environ['DDM_TASK_RESULT'], "
              "'argv': sys.argv[1:]}, open(sys.argv[1], 'w'))")
    command = f"{sys.executable} -c \"{script}\" '{output}' '$HOME; echo'"

    outcome = run_command(command, SUMMARY)

    assert outcome.ok, outcome
    recorded = json.loads(output.read_text())
    assert recorded["stdin"] == SUMMARY
    assert recorded["id"] == "0123456789ab"
    assert recorded["result"] == "succeeded"
    # No shell: the quoted word reaches the command unexpanded.
    assert recorded["argv"] == [str(output), "$HOME; echo"]


def test_run_command_failure_reported() -> None:
    outcome = run_command(f"{sys.executable} -c 'import sys; sys.exit(3)'", SUMMARY)

    assert not outcome.ok
    assert outcome.error == "exited with status 3"
    assert outcome.details["exit_status"] == 3


def test_run_command_missing_program() -> None:
    outcome = run_command("/nonexistent/ddm-callback --flag", SUMMARY)

    assert not outcome.ok
    assert outcome.error.startswith("cannot start '/nonexistent/ddm-callback'")


def test_run_command_timeout() -> None:
    outcome = run_command(f"{sys.executable} -c 'import time; time.sleep(30)'", SUMMARY,
                          timeout=0.5)

    assert not outcome.ok
    assert outcome.error == "timed out after 0.5 s"


@pytest.mark.parametrize("url", [
    "ftp://127.0.0.1/x", "file:///etc/passwd", "http://", "http://host:99999/", "hook",
    "http://a b/", "",
])
def test_validate_url_rejects(url: str) -> None:
    with pytest.raises(CallbackError):
        validate_url(url)


@pytest.mark.parametrize("command", ["", "   ", "echo 'unclosed", "a\x00b"])
def test_validate_command_rejects(command: str) -> None:
    with pytest.raises(CallbackError):
        validate_command(command)


def test_callbacks_command_line_overrides_defaults() -> None:
    defaults = Defaults(on_success="ok-default", on_failure="fail-default",
                        notify=("http://127.0.0.1:1/default",))

    merged = Callbacks.build(on_success="ok-cli", on_failure=None, notify=(),
                             defaults=defaults)

    assert merged.on_success == "ok-cli"
    assert merged.on_failure == "fail-default"
    assert merged.notify == ("http://127.0.0.1:1/default",)
    assert Callbacks.from_options(merged.to_options()) == merged


def test_failing_callbacks_recorded_not_raised(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "tasks.db")
    with RecordingServer([500, 500]) as server:
        callbacks = Callbacks(on_failure=f"{sys.executable} -c 'import sys; sys.exit(2)'",
                              notify=(server.url,))
        spec = TaskSpec(source_host="a", target_host="b", volumes=(VolumeSpec("v1", "v1"),),
                        options=callbacks.to_options())
        task = Task(id="feedfacecafe", spec=spec,
                    items=[TaskItem(task_id="feedfacecafe", position=0, source="v1",
                                    target="v1")])
        store.create_task(task)
        store.update_task(task.id, state=TaskState.FAILED, finished_at=time.time())

        outcomes = run_task_callbacks(store, store.get_task(task.id), attempts=2,
                                      sleep=lambda seconds: None)

    assert [outcome.ok for outcome in outcomes] == [False, False]
    assert server.bodies[0]["result"] == "failed"
    assert server.bodies[0]["objects"][0]["source"] == "v1"
    events = [event for event in store.get_events(task.id) if event["kind"] == "callback_failed"]
    assert len(events) == 2
    assert events[0]["data"]["exit_status"] == 2
    assert events[1]["data"]["attempts"] == 2
    assert store.get_task(task.id).state is TaskState.FAILED
    store.close()


def test_full_mode_summary_lists_containers_and_transfers(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "tasks.db")
    with RecordingServer([200]) as server:
        callbacks = Callbacks(notify=(server.url,))
        spec = TaskSpec(source_host="a", target_host="b", volumes=(), mode=Mode.FULL,
                        options=callbacks.to_options())
        task = Task(id="decafbadf00d", spec=spec)
        store.create_task(task)
        store.set_extra(task.id, plan={"containers": [{"name": "web", "image": "app:1"}]},
                        transfers=[
                            {"position": 0, "kind": "image", "name": "app:1", "target": "app:1",
                             "state": "sent", "bytes_done": 4096},
                            {"position": 1, "kind": "volume", "name": "webdata",
                             "target": "webdata", "state": "sent", "bytes_done": 512},
                        ])
        store.update_task(task.id, state=TaskState.SUCCEEDED, finished_at=time.time())

        outcomes = run_task_callbacks(store, store.get_task(task.id), attempts=1)

    assert [outcome.ok for outcome in outcomes] == [True]
    objects = server.bodies[0]["objects"]
    assert objects[0] == {"kind": "container", "source": "web", "target": "web",
                          "image": "app:1"}
    assert [(entry["kind"], entry["source"], entry["bytes_done"]) for entry in objects[1:]] == [
        ("image", "app:1", 4096), ("volume", "webdata", 512)]
    store.close()
