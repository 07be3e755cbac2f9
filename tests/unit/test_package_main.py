"""`python -m PACKAGE` runs each command-line tool, as its console script does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TREE = Path(__file__).resolve().parents[2]


def run_module(package: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(TREE),
               "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config"),
               "XDG_DATA_HOME": str(tmp_path / "data")}
    return subprocess.run([sys.executable, "-m", package, "--help"], capture_output=True,
                          text=True, env=environ, cwd=tmp_path, timeout=120)


def test_ddmctl_module_prints_help(tmp_path: Path) -> None:
    completed = run_module("ddmctl", tmp_path)

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("Usage: ddmctl [OPTIONS] COMMAND [ARGS]...")
    assert "rollback" in completed.stdout
    assert "migrate" in completed.stdout


@pytest.mark.parametrize("package", ["ddmsyncer", "ddmdriver", "ddmverify", "ddminit"])
def test_tool_module_prints_help(tmp_path: Path, package: str) -> None:
    completed = run_module(package, tmp_path)

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith(f"Usage: {package} [OPTIONS]")
