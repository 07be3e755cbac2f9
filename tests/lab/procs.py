"""Start, find, signal and reap the lab's processes.

A process is identified by its PID together with its start time (field 22 of
/proc/PID/stat, in clock ticks since boot), so a PID that the kernel reused for an
unrelated process is never signalled. This matters because `down` may run in a
later process than `up`, long after the recorded processes exited.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.lab.errors import LabError

logger = logging.getLogger(__name__)

# Popen objects of the processes this Python process started, so that they can be
# reaped. A process started by an earlier `up` in another process is reaped by its
# new parent, PID 1.
_popen_by_pid: dict[int, subprocess.Popen[bytes]] = {}
_popen_lock = threading.Lock()

_POLL_SECONDS = 0.02


@dataclass(frozen=True)
class ProcessRecord:
    """A process identified by PID and start time."""

    pid: int
    start_time: int

    def to_json(self) -> dict[str, int]:
        return {"pid": self.pid, "start_time": self.start_time}

    @classmethod
    def from_json(cls, data: Mapping[str, int]) -> ProcessRecord:
        return cls(pid=int(data["pid"]), start_time=int(data["start_time"]))


@dataclass(frozen=True)
class ProcessStat:
    """The fields of /proc/PID/stat that the lab uses."""

    state: str
    ppid: int
    start_time: int


def read_stat(pid: int) -> ProcessStat | None:
    """Read /proc/PID/stat, or return None when the process does not exist."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None

    # The command name in field 2 may contain spaces and parentheses, so the
    # remaining fields start after the last closing parenthesis.
    fields = data[data.rindex(b")") + 2 :].split()
    return ProcessStat(state=fields[0].decode(), ppid=int(fields[1]), start_time=int(fields[19]))


def record_process(pid: int) -> ProcessRecord | None:
    """Return the record of a live process, or None when it does not exist."""
    stat = read_stat(pid)
    if stat is None:
        return None
    return ProcessRecord(pid=pid, start_time=stat.start_time)


def is_running(record: ProcessRecord | None) -> bool:
    """Return whether the recorded process still runs (a zombie counts as exited)."""
    if record is None:
        return False

    stat = read_stat(record.pid)
    if stat is None or stat.start_time != record.start_time:
        return False
    if stat.state in ("Z", "X", "x"):
        reap(record.pid)
        return False
    return True


def reap(pid: int) -> None:
    """Collect the exit status of a child process that this process started."""
    with _popen_lock:
        popen = _popen_by_pid.get(pid)
        if popen is not None and popen.poll() is not None:
            del _popen_by_pid[pid]


def spawn(argv: Sequence[str], *, log_path: Path | None, env: Mapping[str, str]) -> ProcessRecord:
    """Start a long-running process in its own session, with output appended to log_path.

    The process outlives this Python process, which lets `python -m tests.lab up`
    exit while the lab keeps running.
    """
    log_target = open(log_path, "ab") if log_path is not None else open(os.devnull, "wb")
    with log_target as log:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd="/",
            start_new_session=True,
        )

    with _popen_lock:
        _popen_by_pid[popen.pid] = popen

    # The child has not been reaped yet, so its stat entry exists even if it exited.
    stat = read_stat(popen.pid)
    start_time = stat.start_time if stat is not None else -1
    logger.debug("started pid %d: %s", popen.pid, " ".join(argv))
    return ProcessRecord(pid=popen.pid, start_time=start_time)


def send_signal(record: ProcessRecord, signum: int) -> bool:
    """Send a signal if the recorded process still runs; return whether it was sent."""
    if not is_running(record):
        return False
    try:
        os.kill(record.pid, signum)
    except ProcessLookupError:
        return False
    return True


def wait_for_exit(records: Iterable[ProcessRecord], timeout: float) -> bool:
    """Wait until none of the processes runs; return False on timeout."""
    pending = list(records)
    deadline = time.monotonic() + timeout
    while True:
        pending = [record for record in pending if is_running(record)]
        if not pending:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_SECONDS)


def stop_process(record: ProcessRecord | None, *, timeout: float, name: str) -> None:
    """Send SIGTERM, wait up to timeout seconds, then SIGKILL.

    Raises LabError when the process survives SIGKILL for 10 seconds, which
    happens only for a process stuck in uninterruptible sleep.
    """
    if record is None or not send_signal(record, signal.SIGTERM):
        return

    if wait_for_exit([record], timeout):
        logger.debug("%s (pid %d) exited after SIGTERM", name, record.pid)
        return

    logger.warning("%s (pid %d) still runs %.0f s after SIGTERM; sending SIGKILL", name, record.pid, timeout)
    kill_processes([record], name=name)


def kill_processes(records: Iterable[ProcessRecord], *, name: str) -> None:
    """SIGKILL the processes and wait until they are gone."""
    records = list(records)
    for record in records:
        send_signal(record, signal.SIGKILL)

    if not wait_for_exit(records, 10.0):
        survivors = [record.pid for record in records if is_running(record)]
        raise LabError(f"{name}: processes {survivors} survived SIGKILL for 10 s")


def parent_map() -> dict[int, int]:
    """Map the PID of every process on the machine to its parent PID."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = read_stat(int(entry))
        if stat is not None:
            parents[int(entry)] = stat.ppid
    return parents


def descendants(roots: Iterable[int], parents: Mapping[int, int] | None = None) -> set[int]:
    """Return the PIDs of all descendants of the given processes, excluding the roots."""
    if parents is None:
        parents = parent_map()

    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)

    found: set[int] = set()
    queue = list(roots)
    while queue:
        pid = queue.pop()
        for child in children.get(pid, []):
            if child not in found:
                found.add(child)
                queue.append(child)
    return found


def namespace_id(pid: int, kind: str) -> str | None:
    """Return the namespace of a process as readlink shows it, e.g. "net:[4026532175]"."""
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def pids_in_net_namespace(net_namespace: str) -> set[int]:
    """Return the PIDs of all processes whose network namespace is net_namespace."""
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and namespace_id(int(entry), "net") == net_namespace:
            found.add(int(entry))
    return found


def records_of(pids: Iterable[int]) -> list[ProcessRecord]:
    """Return records for those of the PIDs that still exist."""
    records = [record_process(pid) for pid in pids]
    return [record for record in records if record is not None]
