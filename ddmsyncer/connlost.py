"""Report as ConnectionLost a task that failed because an open SSH connection broke.

A connection that breaks in the middle of a phase surfaces as whatever the step was doing:
a TransferFailed of the tar relay ("Socket is closed"), an engine error, an EOFError. Once a
phase failed, the runner calls this module to check whether a host's connection is gone.
If one is, the operator gets the connection error class with its exit status (3), the host's
name and the next step, in place of the step's own error. A raw EOFError, socket error or paramiko
SSHException that no host's connection explains becomes TransferFailed (as_task_error).
"""

from __future__ import annotations

import errno
import time
from typing import Any

import paramiko

from ddm.errors import (
    Cancelled,
    ConfigError,
    ConnectionLost,
    DDMError,
    Interrupted,
    TaskConflict,
    TransferFailed,
    UsageError,
)

# Errors that are not a symptom of a broken connection: the operator stopped the task, or it
# failed before it used a connection.
NOT_CONNECTION_SYMPTOMS = (Cancelled, Interrupted, TaskConflict, UsageError, ConfigError)

# errno values of the OSErrors that a broken network connection raises. paramiko's own
# "Socket is closed" is an OSError without errno.
CONNECTION_ERRNOS = frozenset({
    errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ETIMEDOUT, errno.ENOTCONN,
    errno.ESHUTDOWN, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN,
})
# paramiko notices a closed socket in its transport thread, which closes the channels before
# it marks the transport inactive. A step can therefore get an EOFError while the connection
# still looks active for a short moment, so a raw error waits up to SETTLE_SECONDS for it.
SETTLE_SECONDS = 2.0
SETTLE_POLL_SECONDS = 0.05


def is_raw_connection_error(error: BaseException) -> bool:
    """Return whether `error` is how paramiko or a socket reports a broken connection."""
    if isinstance(error, (EOFError, paramiko.SSHException, ConnectionError, TimeoutError)):
        return True
    return type(error) is OSError and (error.errno is None or error.errno in CONNECTION_ERRNOS)


def _task_engines(runner: Any) -> list[Any]:
    engines = list(getattr(runner, "_engines", {}).values())
    worker_pool = getattr(runner, "_worker_pool", None)
    for slot in getattr(worker_pool, "_slots", None) or []:
        engines.extend(slot.engines.values())
    return engines


def lost_hosts(runner: Any, *, settle_seconds: float = 0.0) -> list[str]:
    """Return the names of hosts with an SSH connection of this task that is no longer active.

    Checks the runner's own engines and those of its --parallel worker slots, source host first.
    With `settle_seconds`, waits up to that long for a connection to turn inactive.
    """
    engines = _task_engines(runner)
    deadline = time.monotonic() + settle_seconds
    while time.monotonic() < deadline and not _inactive(engines):
        time.sleep(SETTLE_POLL_SECONDS)

    lost = {engine.host.name for engine in _inactive(engines)}
    spec = runner.task.spec
    order = [spec.source_host, spec.target_host]
    return sorted(lost, key=lambda name: order.index(name) if name in order else len(order))


def _inactive(engines: list[Any]) -> list[Any]:
    inactive = []
    for engine in engines:
        connection = getattr(engine, "ssh", None)
        if connection is not None and not connection.is_active:
            inactive.append(engine)
    return inactive


def as_connection_lost(runner: Any, error: BaseException) -> ConnectionLost | None:
    """Return a ConnectionLost for `error` when a host's connection broke, else None.

    The message names the host, the phase and the step's error. It has no hint yet, because
    the next step depends on the rollback: the runner sets `rolled_back_hint` when the
    rollback succeeded, and runner.take_rollback_failure handles a failed one.
    """
    if isinstance(error, ConnectionLost) or not isinstance(error, Exception):
        return None
    if isinstance(error, NOT_CONNECTION_SYMPTOMS):
        return None
    settle_seconds = SETTLE_SECONDS if is_raw_connection_error(error) else 0.0
    hosts = lost_hosts(runner, settle_seconds=settle_seconds)
    if not hosts:
        return None

    detail = error.message if isinstance(error, DDMError) else _describe_raw(error)
    names = " and ".join(repr(name) for name in hosts)
    subject = "connections to hosts" if len(hosts) > 1 else "connection to host"
    lost = ConnectionLost(f"the SSH {subject} {names} broke during the "
                          f"{runner.task.phase.value} phase ({detail})")
    lost.hosts = hosts  # type: ignore[attr-defined]
    return lost


def as_task_error(runner: Any, error: BaseException) -> DDMError | None:
    """Return the DDM error that replaces `error`, or None to keep `error` as it is.

    A broken host connection becomes ConnectionLost (exit status 3). Any other EOFError,
    socket error or paramiko SSHException becomes TransferFailed, so that no bare EOFError
    leaves the runner: click would turn it into "interrupted" with exit status 130.
    """
    lost = as_connection_lost(runner, error)
    if lost is not None or not isinstance(error, Exception) or not is_raw_connection_error(error):
        return lost
    return TransferFailed(
        f"the {runner.task.phase.value} phase of task {runner.task.id} failed on a broken "
        f"connection ({_describe_raw(error)})",
        hint="check that the hosts are up and accept SSH connections, then run the migration "
        "again",
    )


def _describe_raw(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def rolled_back_hint(lost: ConnectionLost) -> str:
    """Return the next step after the task was rolled back: check the host, migrate again."""
    hosts = getattr(lost, "hosts", [])
    if len(hosts) == 1:
        check = f"check that host {hosts[0]!r} is up and accepts SSH connections"
    else:
        names = " and ".join(repr(name) for name in hosts)
        check = f"check that hosts {names} are up and accept SSH connections"
    return f"the target was rolled back; {check}, then run the migration again"
