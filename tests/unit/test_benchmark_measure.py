"""benchmarks.measure: the machine's busy CPU time around a measured command."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from benchmarks.measure import machine_busy_seconds, run_command

# The "cpu" line of /proc/stat: user nice system idle iowait irq softirq steal guest guest_nice.
STAT_LINE = "cpu  100 20 30 4000 500 6 7 8 900 10\ncpu0 1 2 3 4 5 6 7 8 9 10\n"


@pytest.mark.skipif(not hasattr(os, "sysconf"), reason="clock ticks need os.sysconf (POSIX)")
def test_busy_skips_idle_and_guest(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text(STAT_LINE)

    busy = machine_busy_seconds(stat)

    # user, nice, system, irq, softirq and steal; guest is already part of user.
    assert busy == pytest.approx((100 + 20 + 30 + 6 + 7 + 8) / os.sysconf("SC_CLK_TCK"))


@pytest.mark.parametrize("text", ["", "intr 1 2 3\n", "cpu  1 2 x\n"])
def test_busy_unknown_for_other_text(tmp_path: Path, text: str) -> None:
    stat = tmp_path / "stat"
    stat.write_text(text)
    assert machine_busy_seconds(stat) is None


def test_busy_unknown_without_file(tmp_path: Path) -> None:
    assert machine_busy_seconds(tmp_path / "missing") is None


@pytest.mark.skipif(not Path("/proc/stat").exists() or not hasattr(os, "wait4"),
                    reason="needs Linux's /proc/stat and os.wait4")
def test_machine_cpu_covers_command_cpu() -> None:
    """A command that spins for a while shows up in the machine's busy time too."""
    spin = "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass"

    usage, _ = run_command([sys.executable, "-c", spin])

    assert usage.exit_statuses == (0,)
    assert usage.cpu_seconds >= 0.5
    assert usage.machine_cpu_seconds is not None
    # Clock ticks of 10 ms round both numbers.
    assert usage.machine_cpu_seconds >= usage.cpu_seconds - 0.05
