"""The lab removes a dockerd pid file whose PID now belongs to another process."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.lab.host import _remove_stale_pid_file

# The lab runs on Linux only; the Windows simulation of test_windows_portability.py blocks
# grp, and Popen.kill() needs the SIGKILL that it removes.
pytest.importorskip("grp")


def test_other_program_pid_file_removed(tmp_path: Path) -> None:
    # This test's own PID runs python, not dockerd: a reused PID after a killed dockerd.
    pid_file = tmp_path / "docker.pid"
    pid_file.write_text(f"{os.getpid()}\n")

    _remove_stale_pid_file(pid_file, "dockerd", os.getpid())

    assert not pid_file.exists()


def test_live_dockerd_pid_file_kept(tmp_path: Path) -> None:
    # A copy of sleep named dockerd plays a running engine in this mount namespace.
    fake = tmp_path / "dockerd"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", fake)
    process = subprocess.Popen([str(fake), "30"])
    try:
        pid_file = tmp_path / "docker.pid"
        pid_file.write_text(f"{process.pid}\n")

        _remove_stale_pid_file(pid_file, "dockerd", os.getpid())

        assert pid_file.read_text() == f"{process.pid}\n"
    finally:
        process.kill()
        process.wait()


def test_exited_process_pid_file_removed(tmp_path: Path) -> None:
    process = subprocess.Popen(["true"])
    process.wait()
    pid_file = tmp_path / "docker.pid"
    pid_file.write_text(f"{process.pid}\n")

    _remove_stale_pid_file(pid_file, "dockerd", os.getpid())

    assert not pid_file.exists()
