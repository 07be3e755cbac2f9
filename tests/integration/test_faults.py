"""Fault tests on the lab: a migration interrupted mid-copy ends verified or rolled back.

Every test checks the three promises after the fault: the source tree is unchanged (read from
outside the containers), the target host has the volumes and containers it had before the task
(or, after a resume, exactly one more volume, equal to the source), and the task record names
the outcome in its state and error.

Faults are triggered from the task's own progress events, so they hit at a known byte count
instead of racing the copy.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from ddm import api
from ddm.config import Config
from ddm.env import Environment
from ddm.errors import ConnectionLost, ExitStatus, MigrationFailed, TransferFailed
from ddm.events import Event, Progress
from ddm.store import TaskStore
from ddm.task import ItemState, Task, TaskState
from ddmctl.common import run_main
from ddmsyncer import runner as runner_module
from tests.lab import LabHost
from tests.lab.isolation import IsolatedEnv
from tests.lab.resources import LabResources, unique_name
from tests.lab.tree import Dir, RandomFile, Snapshot, diff_snapshots, snapshot_volume_tree, write_volume_tree

MIB = 1024 * 1024
VOLUME_BYTES = 8 * MIB
HALF = VOLUME_BYTES // 2


@dataclass(frozen=True)
class HostState:
    """The volume names and container IDs of a lab host."""

    volumes: frozenset[str]
    containers: frozenset[str]


def host_state(host: LabHost) -> HostState:
    volumes = host.docker("volume", "ls", "--quiet").stdout.split()
    containers = host.docker("ps", "--all", "--quiet", "--no-trunc").stdout.split()
    return HostState(frozenset(volumes), frozenset(containers))


def make_source_volume(h1: LabHost, resources: LabResources) -> str:
    volume = resources.create_volume(h1, labels={"app": "faults"})
    write_volume_tree(
        h1,
        volume,
        {
            "data/first.bin": RandomFile(VOLUME_BYTES // 2, seed=11),
            "data/second.bin": RandomFile(VOLUME_BYTES // 2, seed=12),
            "empty": Dir(mode=0o700, uid=999, gid=999),
            "notes.txt": "fault test\n",
        },
    )
    return volume


@pytest.fixture
def every_chunk_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    """Emit a Progress event for every relayed chunk (1 MiB), so a fault hits at a known offset."""
    monkeypatch.setattr(runner_module, "PROGRESS_EVENT_SECONDS", 0.0)


@pytest.fixture
def config(isolated_env: IsolatedEnv) -> Config:
    return api.load_config(environ=isolated_env.environ)


@pytest.fixture
def store(isolated_env: IsolatedEnv) -> TaskStore:
    task_store = api.open_store(isolated_env.environ)
    yield task_store
    task_store.close()


def new_task(store: TaskStore, config: Config, source: str, target: str | None = None,
             **options: object) -> Task:
    """Create a task on the Engine API data path, whose helper containers these faults hit."""
    mapping = source if target is None else f"{source}:{target}"
    return api.create_task(store, config, source="h1", target="h2", volumes=[mapping], verify="full",
                           options={"data_path": "engine", **options})


def at_half(action: Callable[[], None]) -> Callable[[Event], None]:
    """Return an event callback that runs `action` once, at the first Progress past HALF bytes."""
    fired: list[int] = []

    def callback(event: Event) -> None:
        if isinstance(event, Progress) and event.bytes_done >= HALF and not fired:
            fired.append(event.bytes_done)
            action()

    callback.fired = fired  # type: ignore[attr-defined]
    return callback


def assert_source_unchanged(before: Snapshot, h1: LabHost, volume: str) -> None:
    assert diff_snapshots(before, snapshot_volume_tree(h1, volume)) == []


def assert_failed_and_rolled_back(task: Task, error_class: type[BaseException]) -> None:
    assert task.state is TaskState.FAILED
    assert task.error is not None
    assert task.error["error"] == error_class.__name__
    for item in task.items:
        assert item.state is ItemState.ROLLED_BACK
        assert item.target_created is False


def assert_verified_copy(task: Task, h1: LabHost, h2: LabHost, source: str, target: str) -> None:
    assert task.state is TaskState.SUCCEEDED
    assert task.error is None
    assert [item.state for item in task.items] == [ItemState.VERIFIED]
    expected = snapshot_volume_tree(h1, source)
    actual = snapshot_volume_tree(h2, target)
    # The Engine API archive keeps whole-second mtimes only.
    assert diff_snapshots(expected, actual, ignore=("mtime_ns",)) == []


def run_command(prog: str, *args: str) -> tuple[int, str, str]:
    """Run a DDM command in this process; return (exit status, stdout, stderr)."""
    module = __import__(f"{prog}.cli", fromlist=["cli"])
    stdout, stderr = io.StringIO(), io.StringIO()
    env = Environment(stdin=io.StringIO(), stdout=stdout, stderr=stderr, environ=dict(os.environ),
                      stdin_isatty=False, stdout_isatty=False, stderr_isatty=False)
    status = run_main(module.cli, list(args), env=env, prog_name=prog)
    return status, stdout.getvalue(), stderr.getvalue()


def test_ssh_cut_at_half_rolls_back(
    h1: LabHost, h2: LabHost, resources: LabResources, config: Config, store: TaskStore,
    every_chunk_reports: None,
) -> None:
    volume = make_source_volume(h1, resources)
    resources.add_volume(h2, volume)
    source_before = snapshot_volume_tree(h1, volume)
    target_before = host_state(h2)
    source_containers = host_state(h1).containers
    task = new_task(store, config, volume)
    cut_counts: list[int] = []
    callback = at_half(lambda: cut_counts.append(h2.cut_connections()))

    with pytest.raises(ConnectionLost) as raised:
        api.run_task(config, store, task.id, on_event=callback)

    assert callback.fired and callback.fired[0] < VOLUME_BYTES  # type: ignore[attr-defined]
    assert cut_counts and cut_counts[0] >= 1
    assert "host 'h2'" in str(raised.value)
    assert "target h2" in str(raised.value)
    assert raised.value.exit_status is ExitStatus.CONNECTION
    stored = store.get_task(task.id)
    assert_failed_and_rolled_back(stored, ConnectionLost)
    assert stored.error is not None and "target h2" in stored.error["message"]
    assert host_state(h2) == target_before
    assert host_state(h1).containers == source_containers
    assert_source_unchanged(source_before, h1, volume)
    kinds = [event["kind"] for event in store.get_events(task.id)]
    assert "rolled_back" in kinds
    assert "rollback_failed" not in kinds


# A wrapper around `ddmsyncer run` that stops in the middle of the copy: after HALF bytes it
# stores the byte count and blocks, so the test kills it at a known point of the copy.
PAUSING_SYNCER = textwrap.dedent(
    """
    import runpy, sys, threading
    from ddmsyncer import runner

    add = runner._ProgressCounter.add
    half = int(sys.argv.pop(1))

    def add_then_pause(self, count):
        add(self, count)
        if self.done >= half:
            self.runner.store.update_item(self.runner.task.id, self.item.position,
                                          bytes_done=self.done)
            threading.Event().wait()

    runner._ProgressCounter.add = add_then_pause
    sys.argv[0] = "ddmsyncer"
    runpy.run_module("ddmsyncer.cli", run_name="__main__")
    """
)


def wait_for_bytes(store: TaskStore, task_id: str, minimum: int, process: subprocess.Popen) -> int:
    """Poll the task store until the task's first volume reports `minimum` bytes copied."""
    while True:
        done = store.get_items(task_id)[0].bytes_done
        if done >= minimum:
            return done
        if process.poll() is not None:
            raise AssertionError(f"ddmsyncer exited with {process.returncode} before copying "
                                 f"{minimum} bytes: {process.stderr.read() if process.stderr else ''}")
        time.sleep(0.05)


def kill_syncer_mid_copy(store: TaskStore, task: Task, h2: LabHost) -> int:
    """Run `ddmsyncer run TASK` until it copied HALF bytes, SIGKILL it, and return the bytes copied."""
    process = subprocess.Popen(
        [sys.executable, "-c", PAUSING_SYNCER, str(HALF), "run", task.id],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        copied = wait_for_bytes(store, task.id, HALF, process)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()

    killed = store.get_task(task.id)
    assert killed.state is TaskState.RUNNING
    assert killed.items[0].state is ItemState.COPYING
    helpers = h2.docker("ps", "--all", "--quiet", "--filter", f"label=ddm.task={task.id}").stdout.split()
    assert helpers, "the killed run left no helper container on the target, so the test proves nothing"
    return copied


def assert_no_helpers(task: Task, *hosts: LabHost) -> None:
    for host in hosts:
        leftovers = host.docker("ps", "--all", "--quiet", "--filter", f"label=ddm.task={task.id}")
        assert leftovers.stdout.split() == [], host.name


def test_syncer_killed_then_resumed(
    h1: LabHost, h2: LabHost, resources: LabResources, config: Config, store: TaskStore,
) -> None:
    volume = make_source_volume(h1, resources)
    resources.add_volume(h2, volume)
    source_before = snapshot_volume_tree(h1, volume)
    target_before = host_state(h2)
    task = new_task(store, config, volume)

    copied = kill_syncer_mid_copy(store, task, h2)
    status, stdout, stderr = run_command("ddmctl", "resume", task.id)

    assert HALF <= copied < VOLUME_BYTES

    assert status == 0, stderr
    resumed = store.get_task(task.id)
    assert_verified_copy(resumed, h1, h2, volume, volume)
    assert host_state(h2).volumes == target_before.volumes | {volume}
    assert host_state(h2).containers == target_before.containers
    assert_no_helpers(task, h1, h2)
    assert_source_unchanged(source_before, h1, volume)
    kinds = [event["kind"] for event in store.get_events(task.id)]
    assert "interrupted" in kinds
    assert "helpers_removed" in kinds


def test_syncer_killed_then_rolled_back(
    h1: LabHost, h2: LabHost, resources: LabResources, config: Config, store: TaskStore,
) -> None:
    volume = make_source_volume(h1, resources)
    resources.add_volume(h2, volume)
    source_before = snapshot_volume_tree(h1, volume)
    source_containers = host_state(h1).containers
    target_before = host_state(h2)
    task = new_task(store, config, volume)

    kill_syncer_mid_copy(store, task, h2)
    status, stdout, stderr = run_command("ddmctl", "rollback", task.id)

    assert status == 0, stderr
    # The copy never left its staging volume, so no target volume was the task's.
    assert stdout == (f"{volume}\t{volume}\tremoved\tthe rollback removed only the task's "
                      "staging copy; the task did not create this target volume\n")
    rolled_back = store.get_task(task.id)
    assert rolled_back.state is TaskState.ROLLED_BACK
    assert rolled_back.items[0].state is ItemState.ROLLED_BACK
    assert host_state(h2) == target_before
    assert host_state(h1).containers == source_containers
    assert_no_helpers(task, h1, h2)
    assert_source_unchanged(source_before, h1, volume)


def test_target_dockerd_stopped_then_resumed(
    h1: LabHost, h2: LabHost, resources: LabResources, config: Config, store: TaskStore,
    every_chunk_reports: None,
) -> None:
    volume = make_source_volume(h1, resources)
    resources.add_volume(h2, volume)
    source_before = snapshot_volume_tree(h1, volume)
    target_before = host_state(h2)
    task = new_task(store, config, volume)
    # SIGKILL, as in an engine crash: a SIGTERM waits about 15 s for the unfinished upload.
    callback = at_half(lambda: h2.stop_dockerd(kill=True))

    with pytest.raises(MigrationFailed):
        api.run_task(config, store, task.id, on_event=callback)

    assert callback.fired  # type: ignore[attr-defined]
    stopped = store.get_task(task.id)
    # The rollback cannot reach the stopped engine, so the task waits to be resumed or rolled back.
    assert stopped.state is TaskState.INTERRUPTED
    assert stopped.error is not None
    assert "h2" in stopped.error["message"]
    kinds = [event["kind"] for event in store.get_events(task.id)]
    assert "failed" in kinds
    assert "rollback_failed" in kinds

    h2.start_dockerd()
    status, stdout, stderr = run_command("ddmctl", "resume", task.id)

    assert status == 0, stderr
    assert_verified_copy(store.get_task(task.id), h1, h2, volume, volume)
    assert host_state(h2).volumes == target_before.volumes | {volume}
    assert host_state(h2).containers == target_before.containers
    assert_source_unchanged(source_before, h1, volume)


def test_target_volume_out_of_space_rolls_back(
    h1: LabHost, h2: LabHost, resources: LabResources, config: Config, store: TaskStore,
) -> None:
    # A tmpfs volume keeps its data only while a container mounts it, so a running container
    # keeps the source mounted. Its 15.5 MiB sparse file takes 512 KiB of the 4 MiB tmpfs on
    # the source; the Engine API writes it out in full on the target, whose volume DDM creates
    # with the same options, so the target runs out of space after about 4 MiB.
    tmpfs = {"type": "tmpfs", "device": "tmpfs", "o": "size=4m"}
    volume = resources.create_volume(h1, driver_opts=tmpfs)
    resources.add_volume(h2, volume)
    holder = resources.create_container(h1, volumes={volume: "/data"}, start=True)
    h1.docker("exec", holder, "dd", "if=/dev/urandom", "of=/data/sparse.bin", "bs=1024",
              "count=512", "seek=15360")
    h1.docker("exec", holder, "sh", "-c", "echo small > /data/small.txt")
    usage = h1.docker("exec", holder, "du", "-k", "/data/sparse.bin").stdout.split()[0]
    assert int(usage) <= 1024
    listing_before = h1.docker("exec", holder, "ls", "-ln", "/data").stdout
    target_before = host_state(h2)
    # The holder only keeps the tmpfs mounted and writes nothing, so the copy runs live.
    task = new_task(store, config, volume, live=True)

    with pytest.raises(TransferFailed) as raised:
        api.run_task(config, store, task.id)

    assert "no space left on device" in str(raised.value).lower()
    assert_failed_and_rolled_back(store.get_task(task.id), TransferFailed)
    assert host_state(h2) == target_before
    assert h1.docker("exec", holder, "ls", "-ln", "/data").stdout == listing_before


def test_second_migration_of_same_volume_refused(
    h1: LabHost, h2: LabHost, resources: LabResources, config: Config, store: TaskStore,
    every_chunk_reports: None,
) -> None:
    volume = make_source_volume(h1, resources)
    other_name = unique_name()
    resources.add_volume(h2, volume)
    resources.add_volume(h2, other_name)
    source_before = snapshot_volume_tree(h1, volume)
    target_before = host_state(h2)
    task = new_task(store, config, volume)
    second: list[subprocess.CompletedProcess[str]] = []

    def start_second() -> None:
        second.append(subprocess.run(
            [sys.executable, "-m", "ddmctl.cli", "migrate", "--from", "h1", "--to", "h2",
             "--volume", f"{volume}:{other_name}", "--yes", "--json"],
            capture_output=True, text=True, timeout=300,
        ))

    api.run_task(config, store, task.id, on_event=at_half(start_second))

    (refused,) = second
    assert refused.returncode == ExitStatus.CONFLICT, refused.stderr
    # With --json, stderr carries the progress events as JSON lines and then the error line.
    error_line = refused.stderr.strip().splitlines()[-1]
    assert error_line.startswith("ddmctl: error: ")
    assert f"h1/volume/{volume} is held by task {task.id}" in error_line
    second_task = json.loads(refused.stdout)
    assert second_task["state"] == TaskState.FAILED.value
    assert task.id in second_task["error"]["message"]
    assert second_task["error"]["exit_status"] == ExitStatus.CONFLICT

    assert_verified_copy(store.get_task(task.id), h1, h2, volume, volume)
    assert host_state(h2).volumes == target_before.volumes | {volume}
    assert other_name not in host_state(h2).volumes
    assert host_state(h2).containers == target_before.containers
    assert_source_unchanged(source_before, h1, volume)
