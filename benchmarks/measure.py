"""Run commands as child processes and measure wall time, CPU time and peak RSS.

Each child is reaped with os.wait4, which returns the resource usage of that child (and of
its own children that it waited for), so the numbers belong to the measured command only,
not to the benchmark process or to earlier runs.

The lab's hosts run on the same machine, so the busy time of all its CPUs while a command
runs (from /proc/stat) adds what the hosts' tar, sshd, dockerd and scans cost to the
controller's own CPU time. It includes any other work on the machine in that time.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcessUsage:
    """Resources used by one or more child processes of the controller."""

    seconds: float  # wall time from the first start to the last exit
    cpu_seconds: float  # user plus system time, summed over the processes
    max_rss_bytes: int  # the largest peak resident set size of any one process
    exit_statuses: tuple[int, ...]
    # Busy time of every CPU of the machine while the processes ran; None without /proc/stat.
    machine_cpu_seconds: float | None = None


PROC_STAT = Path("/proc/stat")
# The idle and iowait columns of the "cpu" line of /proc/stat.
_IDLE_COLUMNS = (3, 4)


def machine_busy_seconds(path: Path = PROC_STAT) -> float | None:
    """Return the busy time of all CPUs since boot, in seconds; None where it is unknown.

    Busy is every column of the "cpu" line of /proc/stat except idle and iowait, and except
    guest time, which the kernel already counts in user time.
    """
    if not hasattr(os, "sysconf"):  # Windows: no clock ticks, and no /proc/stat either
        return None
    try:
        first_line = path.read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    columns = first_line.split()
    if not columns or columns[0] != "cpu":
        return None
    try:
        ticks = [int(value) for value in columns[1:9]]  # up to steal, before guest
    except ValueError:
        return None
    busy = sum(value for index, value in enumerate(ticks) if index not in _IDLE_COLUMNS)
    return busy / os.sysconf("SC_CLK_TCK")


def machine_cpu_since(busy_before: float | None) -> float | None:
    """Return the machine's busy CPU seconds since machine_busy_seconds() gave busy_before."""
    busy_after = machine_busy_seconds()
    if busy_before is None or busy_after is None:
        return None
    return busy_after - busy_before


def format_seconds(seconds: float | None) -> str:
    """Return seconds with one decimal for a table, or "-" when unknown."""
    return "-" if seconds is None else f"{seconds:.1f}"


def _reap(process: subprocess.Popen[bytes]) -> tuple[int, os.struct_rusage | None]:
    """Wait for a child with wait4; return its exit status and resource usage."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage


def _combine(started: float, results: Sequence[tuple[int, os.struct_rusage | None]],
             busy_before: float | None) -> ProcessUsage:
    usages = [usage for _, usage in results if usage is not None]
    machine_cpu = machine_cpu_since(busy_before)
    return ProcessUsage(
        seconds=time.monotonic() - started,
        cpu_seconds=sum(usage.ru_utime + usage.ru_stime for usage in usages),
        # Linux reports ru_maxrss in KiB.
        max_rss_bytes=max((usage.ru_maxrss * 1024 for usage in usages), default=0),
        exit_statuses=tuple(status for status, _ in results),
        machine_cpu_seconds=machine_cpu,
    )


def run_command(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, stdout_path: str | None = None
) -> tuple[ProcessUsage, str]:
    """Run one command; return its usage and its stderr (stdout goes to stdout_path)."""
    stdout = open(stdout_path, "wb") if stdout_path else subprocess.DEVNULL
    busy_before = machine_busy_seconds()
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None,
        )
        assert process.stderr is not None
        stderr = process.stderr.read()
        result = _reap(process)
    finally:
        if stdout_path:
            stdout.close()
    return _combine(started, [result], busy_before), stderr.decode("utf-8", "replace")


def run_pipeline(
    producer: Sequence[str], consumer: Sequence[str], *, env: Mapping[str, str] | None = None
) -> tuple[ProcessUsage, str]:
    """Run `producer | consumer` with the pipe in this process's kernel, not through Python.

    The consumer reads the producer's stdout directly, as `a | b` in a shell does; the
    returned usage covers both processes, the two ssh clients of a hand-made pipeline.
    """
    busy_before = machine_busy_seconds()
    started = time.monotonic()
    first = subprocess.Popen(
        list(producer), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=dict(env) if env is not None else None,
    )
    assert first.stdout is not None
    second = subprocess.Popen(
        list(consumer), stdin=first.stdout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=dict(env) if env is not None else None,
    )
    first.stdout.close()

    assert first.stderr is not None and second.stderr is not None
    errors = first.stderr.read() + second.stderr.read()
    results = [_reap(first), _reap(second)]
    return _combine(started, results, busy_before), errors.decode("utf-8", "replace")
