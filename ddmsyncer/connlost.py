"""Report as ConnectionLost a task that failed because an open SSH connection broke.

A connection that breaks in the middle of a phase surfaces as whatever the step was doing:
a TransferFailed of the tar relay ("Socket is closed"), an engine error, an EOFError. Once a
phase failed, the runner calls this module to check whether a host's connection is gone, so
the operator gets the connection error class and its exit status (3), the host's name and the
next step, in place of the step's own error.
"""

from __future__ import annotations

from typing import Any

from ddm.errors import (
    Cancelled,
    ConfigError,
    ConnectionLost,
    DDMError,
    Interrupted,
    TaskConflict,
    UsageError,
)

# Errors that are not a symptom of a broken connection: the operator stopped the task, or it
# failed before it used a connection.
NOT_CONNECTION_SYMPTOMS = (Cancelled, Interrupted, TaskConflict, UsageError, ConfigError)


def lost_hosts(runner: Any) -> list[str]:
    """Return the names of hosts with an SSH connection of this task that is no longer active.

    Checks the runner's own engines and those of its --parallel worker slots, source host first.
    """
    engines = list(getattr(runner, "_engines", {}).values())
    worker_pool = getattr(runner, "_worker_pool", None)
    for slot in getattr(worker_pool, "_slots", None) or []:
        engines.extend(slot.engines.values())

    lost: set[str] = set()
    for engine in engines:
        connection = getattr(engine, "ssh", None)
        if connection is not None and not connection.is_active:
            lost.add(engine.host.name)
    spec = runner.task.spec
    order = [spec.source_host, spec.target_host]
    return sorted(lost, key=lambda name: order.index(name) if name in order else len(order))


def as_connection_lost(runner: Any, error: BaseException) -> ConnectionLost | None:
    """Return a ConnectionLost for `error` when a host's connection broke, else None.

    The message names the host, the phase and the step's error. It has no hint yet, because
    the next step depends on the rollback: the runner sets `rolled_back_hint` when the
    rollback succeeded, and `add_next_step` handles a failed one.
    """
    if isinstance(error, ConnectionLost) or not isinstance(error, Exception):
        return None
    if isinstance(error, NOT_CONNECTION_SYMPTOMS):
        return None
    hosts = lost_hosts(runner)
    if not hosts:
        return None

    detail = error.message if isinstance(error, DDMError) else (str(error) or type(error).__name__)
    names = " and ".join(repr(name) for name in hosts)
    subject = "connections to hosts" if len(hosts) > 1 else "connection to host"
    lost = ConnectionLost(f"the SSH {subject} {names} broke during the "
                          f"{runner.task.phase.value} phase ({detail})")
    lost.hosts = hosts  # type: ignore[attr-defined]
    return lost


def rolled_back_hint(lost: ConnectionLost) -> str:
    """Return the next step after the task was rolled back: check the host, migrate again."""
    hosts = getattr(lost, "hosts", [])
    if len(hosts) == 1:
        check = f"check that host {hosts[0]!r} is up and accepts SSH connections"
    else:
        names = " and ".join(repr(name) for name in hosts)
        check = f"check that hosts {names} are up and accept SSH connections"
    return f"the target was rolled back; {check}, then run the migration again"


def add_next_step(lost: ConnectionLost, task: Any) -> None:
    """Complete the message of `lost` from the task's state after the rollback.

    A rolled-back task (FAILED) got its hint before it was stored. A task whose rollback
    failed too is INTERRUPTED, and its stored message tells the operator to resume or roll
    back once the host is reachable, so the raised error takes that message.
    """
    stored = task.error or {}
    if stored.get("error") == ConnectionLost.__name__ and stored.get("message"):
        lost.message, lost.hint = stored["message"], None
