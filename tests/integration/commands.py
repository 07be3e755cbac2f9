"""Run DDM's commands in-process against the lab, with their own HOME and task store."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from ddm.env import Environment
from ddmctl.common import run_main
from tests.lab import Lab


@dataclass(frozen=True)
class CommandResult:
    status: int
    stdout: str
    stderr: str


def run_command(lab: Lab, tmp_path: Path, prog: str, *args: str) -> CommandResult:
    """Run `prog` (ddmctl or ddmverify) with `args` and return its status and output."""
    if prog == "ddmctl":
        from ddmctl.cli import cli
    else:
        from ddmverify.cli import cli

    config = lab.write_ddm_config(tmp_path / "ddm.yaml")
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True, exist_ok=True)
    stdout, stderr = io.StringIO(), io.StringIO()
    env = Environment(
        stdin=io.StringIO(),
        stdout=stdout,
        stderr=stderr,
        environ={"HOME": str(home), "USER": "root", "DDM_CONFIG": str(config),
                 "XDG_DATA_HOME": str(home / "data"), "XDG_CONFIG_HOME": str(home / "config")},
        stdin_isatty=False,
        stdout_isatty=False,
        stderr_isatty=False,
    )
    status = run_main(cli, list(args), env=env, prog_name=prog)
    return CommandResult(status, stdout.getvalue(), stderr.getvalue())
