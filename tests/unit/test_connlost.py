"""A failed phase becomes ConnectionLost only when a host's SSH connection is gone."""

from __future__ import annotations

from types import SimpleNamespace

from ddm.errors import Cancelled, ConnectionLost, ExitStatus, TransferFailed
from ddm.task import Phase, TaskSpec
from ddmsyncer import connlost


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
              "too: ...; once the host is reachable, run 'ddmctl resume ffffffffffff' or "
              "'ddmctl rollback ffffffffffff'")
    task = SimpleNamespace(error={"error": "ConnectionLost", "message": stored})

    connlost.add_next_step(lost, task)

    assert str(lost) == stored
