"""Helpers that run the DDM commands in-process against temporary home directories.

No helper here opens a connection: the commands get their streams and environment variables
through `ddm.env.Environment`, so nothing reads the real HOME, ~/.ssh or Docker socket.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import io
import os
import signal
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import click

from ddm.env import Environment
from ddmctl.common import run_main

# The five console scripts of pyproject.toml. Each module has a click command named `cli`.
COMMAND_NAMES = ("ddmctl", "ddminit", "ddmverify", "ddmsyncer", "ddmdriver")


@dataclass(frozen=True)
class Outcome:
    """Exit status and captured output of one command run."""

    status: int
    stdout: str
    stderr: str


def command_available(prog: str) -> bool:
    """Return whether the module `PROG.cli` exists (ddmdriver's may not be written yet)."""
    return importlib.util.find_spec(f"{prog}.cli") is not None


def load_command(prog: str) -> click.Command:
    """Import and return the click command of a console script."""
    module = importlib.import_module(f"{prog}.cli")
    return module.cli


def home_environ(home: Path) -> dict[str, str]:
    """Return an environment whose HOME and XDG directories all lie under `home`."""
    return {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
    }


def invoke(
    prog: str,
    args: Sequence[str],
    environ: Mapping[str, str],
    *,
    stdin_text: str = "",
    stdin_isatty: bool = False,
) -> Outcome:
    """Run a command through run_main with in-memory streams and return what it did."""
    stdout = io.StringIO()
    stderr = io.StringIO()
    env = Environment(
        stdin=io.StringIO(stdin_text),
        stdout=stdout,
        stderr=stderr,
        environ=dict(environ),
        stdin_isatty=stdin_isatty,
        stdout_isatty=False,
        stderr_isatty=False,
    )
    # `migrate` and `serve` install a SIGTERM handler, so the previous one is put back.
    sigterm_handler = signal.getsignal(signal.SIGTERM)
    try:
        status = run_main(load_command(prog), list(args), env=env, prog_name=prog)
    finally:
        signal.signal(signal.SIGTERM, sigterm_handler)
    return Outcome(status=status, stdout=stdout.getvalue(), stderr=stderr.getvalue())


def error_line(outcome: Outcome, prog: str) -> str:
    """Assert that a run failed with exit status 2 and one clean error line, and return it."""
    assert outcome.status == 2, outcome
    assert outcome.stdout == "", outcome
    assert "Traceback" not in outcome.stderr, outcome.stderr
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    return lines[0]


def snapshot_tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Return the type, mode, size, mtime and content hash of every entry under `root`."""
    entries: dict[str, tuple[object, ...]] = {}
    for directory, names, files in os.walk(root):
        for name in names + files:
            path = Path(directory, name)
            info = path.lstat()
            relative = str(path.relative_to(root))
            if stat.S_ISREG(info.st_mode):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                entries[relative] = ("file", info.st_mode, info.st_size, info.st_mtime_ns, digest)
            elif stat.S_ISLNK(info.st_mode):
                entries[relative] = ("symlink", os.readlink(path))
            else:
                entries[relative] = ("other", info.st_mode)
    return entries
