"""A failed phase becomes ConnectionLost only when a host's SSH connection is gone.

A raw EOFError, socket error or paramiko SSHException becomes a DDM error in any case.
"""

from __future__ import annotations

import io
from types import SimpleNamespace

import click
import paramiko
import pytest

from ddm.config import load_config
from ddm.env import Environment
from ddm.errors import Cancelled, ConnectionLost, ExitStatus, MigrationFailed, TransferFailed
from ddm.store import TaskStore
from ddm.task import Phase, Task, TaskSpec, TaskState
from ddmctl import cli as ddmctl_cli
from ddmctl.common import DDMGroup, run_main
from ddmsyncer import connlost
from ddmsyncer.runner import TaskRunner, _rollback_failed_dict, take_rollback_failure


def engine(name: str, *, active: bool) -> SimpleNamespace:
    return SimpleNamespace(host=SimpleNamespace(name=name), ssh=SimpleNamespace(is_active=active))


def runner_with(engines: list[SimpleNamespace], slot_engines: list[SimpleNamespace]) -> SimpleNamespace:
    task = SimpleNamespace(id="f" * 12, phase=Phase.COPY, error=None,
                           spec=TaskSpec(source_host="h1", target_host="h2"))
    slot = SimpleNamespace(engines={index: item for index, item in enumerate(slot_engines)})
    return SimpleNamespace(task=task, _engines={item.host.name: item for item in engines},
                           _worker_pool=SimpleNamespace(_slots=[slot]))


SEND_FAILED = TransferFailed("sending to tar on target h2:/v failed after 0 bytes: Socket is closed")


def test_lost_slot_connection_becomes_connection_lost() -> None:
    runner = runner_with([engine("h1", active=True), engine("h2", active=True)],
                         [engine("h2", active=False)])

    lost = connlost.as_connection_lost(runner, SEND_FAILED)

    assert isinstance(lost, ConnectionLost)
    assert lost.exit_status is ExitStatus.CONNECTION
    assert str(lost).startswith("the SSH connection to host 'h2' broke during the copy phase")
    assert "Socket is closed" in str(lost)


def test_active_connections_keep_error() -> None:
    runner = runner_with([engine("h1", active=True), engine("h2", active=True)], [])

    assert connlost.as_connection_lost(runner, SEND_FAILED) is None


def test_cancel_is_not_connection_lost() -> None:
    runner = runner_with([engine("h2", active=False)], [])

    assert connlost.as_connection_lost(runner, Cancelled("task was cancelled")) is None


def test_both_hosts_lost_source_first() -> None:
    runner = runner_with([engine("h2", active=False), engine("h1", active=False)], [])

    lost = connlost.as_connection_lost(runner, SEND_FAILED)

    assert lost is not None
    assert "SSH connections to hosts 'h1' and 'h2'" in str(lost)
    assert "hosts 'h1' and 'h2' are up" in connlost.rolled_back_hint(lost)


def test_failed_rollback_takes_stored_message() -> None:
    runner = runner_with([engine("h2", active=False)], [])
    lost = connlost.as_connection_lost(runner, SEND_FAILED)
    assert lost is not None
    stored = ("the SSH connection to host 'h2' broke during the copy phase (...); rollback failed "
              "too: ...; the target may still hold what the task created: fix what stopped the "
              "rollback, then run 'ddmctl rollback ffffffffffff', or 'ddmctl resume ffffffffffff' "
              "to finish the task")
    task = SimpleNamespace(state=TaskState.INTERRUPTED,
                           error={"error": "ConnectionLost", "message": stored,
                                  "rollback_error": {"error": "ConnectionFailed"}})

    take_rollback_failure(lost, task)

    assert str(lost) == stored


def test_failed_rollback_drops_rolled_back_hint() -> None:
    error = TransferFailed("cannot move /a to /b on h2: mv failed",
                           hint="the target was rolled back; check the host's volume directory")
    rollback_error = MigrationFailed("Docker rejected removing volume v: device or resource busy")

    stored = _rollback_failed_dict("ffffffffffff", error, rollback_error)
    task = SimpleNamespace(state=TaskState.INTERRUPTED, error=stored)
    take_rollback_failure(error, task)

    assert "rolled back" not in stored["message"]
    assert stored["message"].startswith("cannot move /a to /b on h2: mv failed; rollback failed "
                                        "too: Docker rejected removing volume v")
    assert "run 'ddmctl rollback ffffffffffff'" in stored["message"]
    assert str(error) == stored["message"]


def test_rolled_back_task_keeps_hint() -> None:
    error = TransferFailed("cannot move /a to /b on h2: mv failed",
                           hint="the target was rolled back; check the host's volume directory")
    task = SimpleNamespace(state=TaskState.FAILED, error=error.to_dict())

    take_rollback_failure(error, task)

    assert error.hint == "the target was rolled back; check the host's volume directory"


class FlippingConnection:
    """An SSH connection that reads as active `active_reads` times, then as inactive."""

    def __init__(self, active_reads: int) -> None:
        self.active_reads = active_reads

    @property
    def is_active(self) -> bool:
        self.active_reads -= 1
        return self.active_reads >= 0


def test_raw_eof_with_active_connections_becomes_transfer_failed(monkeypatch) -> None:
    monkeypatch.setattr(connlost, "SETTLE_SECONDS", 0.0)
    runner = runner_with([engine("h1", active=True), engine("h2", active=True)], [])

    error = connlost.as_task_error(runner, EOFError())

    assert isinstance(error, TransferFailed)
    assert error.exit_status is ExitStatus.FAILED
    assert "copy phase of task ffffffffffff failed on a broken connection (EOFError)" in str(error)


def test_raw_eof_waits_for_connection_to_turn_inactive(monkeypatch) -> None:
    monkeypatch.setattr(connlost, "SETTLE_POLL_SECONDS", 0.0)
    late = SimpleNamespace(host=SimpleNamespace(name="h2"), ssh=FlippingConnection(3))
    runner = runner_with([engine("h1", active=True), late], [])

    error = connlost.as_task_error(runner, EOFError())

    assert isinstance(error, ConnectionLost)
    assert error.exit_status is ExitStatus.CONNECTION
    assert str(error).startswith("the SSH connection to host 'h2' broke during the copy phase "
                                 "(EOFError)")


@pytest.mark.parametrize("error", [EOFError(), OSError("Socket is closed"),
                                   ConnectionResetError(104, "reset"),
                                   paramiko.SSHException("No existing session")],
                         ids=["eof", "socket-closed", "reset", "ssh-exception"])
def test_raw_connection_errors_are_replaced(monkeypatch, error) -> None:
    monkeypatch.setattr(connlost, "SETTLE_SECONDS", 0.0)
    runner = runner_with([engine("h1", active=True)], [])

    assert isinstance(connlost.as_task_error(runner, error), TransferFailed)


def test_other_errors_are_kept(monkeypatch) -> None:
    monkeypatch.setattr(connlost, "SETTLE_SECONDS", 0.0)
    runner = runner_with([engine("h1", active=True)], [])

    assert connlost.as_task_error(runner, FileNotFoundError(2, "missing")) is None
    assert connlost.as_task_error(runner, ValueError("bug")) is None
    assert connlost.as_task_error(runner, SEND_FAILED) is None


@pytest.fixture
def eof_runner(tmp_path, monkeypatch) -> TaskRunner:
    """A real TaskRunner over a real store whose prepare step raises a bare EOFError."""
    monkeypatch.setattr(connlost, "SETTLE_SECONDS", 0.0)
    store = TaskStore(tmp_path / "tasks.db")
    task = Task(id="e" * 12, spec=TaskSpec(source_host="h1", target_host="h2"))
    store.create_task(task)
    runner = TaskRunner(load_config(environ={"HOME": str(tmp_path)}), store, task.id)

    def fail_step() -> None:
        raise EOFError()

    monkeypatch.setattr(runner, "prepare", fail_step)
    monkeypatch.setattr(runner, "rollback", lambda **options: None)
    return runner


def test_runner_turns_step_eof_into_transfer_failed(eof_runner: TaskRunner) -> None:
    with pytest.raises(TransferFailed) as raised:
        eof_runner.run()

    stored = eof_runner.store.get_task(eof_runner.task.id)
    assert stored.state is TaskState.FAILED
    assert stored.error["error"] == "TransferFailed"
    assert stored.error["exit_status"] == int(ExitStatus.FAILED)
    assert "prepare phase" in stored.error["message"]
    assert "EOFError" in stored.error["message"]
    assert isinstance(raised.value.__cause__, EOFError)


def test_runner_turns_step_eof_into_connection_lost(eof_runner: TaskRunner) -> None:
    eof_runner._engines["h2"] = engine("h2", active=False)

    with pytest.raises(ConnectionLost) as raised:
        eof_runner.run()

    stored = eof_runner.store.get_task(eof_runner.task.id)
    assert stored.error["error"] == "ConnectionLost"
    assert stored.error["exit_status"] == int(ExitStatus.CONNECTION)
    assert "host 'h2'" in str(raised.value)


class ClosedSocket:
    """A socket whose peer has closed the connection: recv returns no bytes."""

    def recv(self, size: int) -> bytes:
        return b""

    def settimeout(self, seconds: float | None) -> None:
        pass


def paramiko_eof() -> None:
    """Raise the EOFError that paramiko raises when the peer closed the socket."""
    paramiko.Packetizer(ClosedSocket()).read_all(4)


def failing_group(step) -> click.Group:
    @click.group(cls=DDMGroup)
    def group() -> None:
        pass

    @group.command()
    def fail() -> None:
        step()

    return group


def run_group(group: click.Group) -> tuple[int, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    status = run_main(group, ["fail"], Environment(environ={}, stdout=stdout, stderr=stderr),
                      prog_name="ddmctl")
    return status, stderr.getvalue()


def test_ddmctl_paramiko_eof_exits_with_connection_status() -> None:
    status, stderr = run_group(failing_group(paramiko_eof))

    assert status == int(ExitStatus.CONNECTION)
    assert stderr.count("\n") == 1
    assert stderr.startswith("ddmctl: error: an SSH connection closed unexpectedly during "
                             "'ddmctl fail' (EOFError")
    assert "interrupted" not in stderr


def test_ddmctl_other_eof_exits_with_failure_status() -> None:
    def raise_eof() -> None:
        raise EOFError()

    status, stderr = run_group(failing_group(raise_eof))

    assert status == int(ExitStatus.FAILED)
    assert stderr.count("\n") == 1
    assert "input ended unexpectedly during 'ddmctl fail' (EOFError)" in stderr


def test_ddmctl_uses_eof_converting_group() -> None:
    assert isinstance(ddmctl_cli.cli, DDMGroup)
