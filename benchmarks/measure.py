"""Run commands as child processes and measure wall time, CPU time and peak RSS.

Each child is reaped with os.wait4, which returns the resource usage of that child (and of
its own children that it waited for), so the numbers belong to the measured command only,
not to the benchmark process or to earlier runs.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessUsage:
    """Resources used by one or more child processes of the controller."""

    seconds: float  # wall time from the first start to the last exit
    cpu_seconds: float  # user plus system time, summed over the processes
    max_rss_bytes: int  # the largest peak resident set size of any one process
    exit_statuses: tuple[int, ...]


def _reap(process: subprocess.Popen[bytes]) -> tuple[int, os.struct_rusage | None]:
    """Wait for a child with wait4; return its exit status and resource usage."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage


def _combine(started: float, results: Sequence[tuple[int, os.struct_rusage | None]]) -> ProcessUsage:
    usages = [usage for _, usage in results if usage is not None]
    return ProcessUsage(
        seconds=time.monotonic() - started,
        cpu_seconds=sum(usage.ru_utime + usage.ru_stime for usage in usages),
        # Linux reports ru_maxrss in KiB.
        max_rss_bytes=max((usage.ru_maxrss * 1024 for usage in usages), default=0),
        exit_statuses=tuple(status for status, _ in results),
    )


def run_command(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, stdout_path: str | None = None
) -> tuple[ProcessUsage, str]:
    """Run one command; return its usage and its stderr (stdout goes to stdout_path)."""
    stdout = open(stdout_path, "wb") if stdout_path else subprocess.DEVNULL
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
    return _combine(started, [result]), stderr.decode("utf-8", "replace")


def run_pipeline(
    producer: Sequence[str], consumer: Sequence[str], *, env: Mapping[str, str] | None = None
) -> tuple[ProcessUsage, str]:
    """Run `producer | consumer` with the pipe in this process's kernel, not through Python.

    The consumer reads the producer's stdout directly, as `a | b` in a shell does; the
    returned usage covers both processes, the two ssh clients of a hand-made pipeline.
    """
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
    return _combine(started, results), errors.decode("utf-8", "replace")
