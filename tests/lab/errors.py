"""Exceptions raised by the test lab."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence


class LabError(Exception):
    """A lab host could not be started, reached or torn down."""


class LabCommandError(subprocess.CalledProcessError):
    """A command run inside a lab host exited with a non-zero status.

    Unlike CalledProcessError, str() includes the host name and the end of stderr,
    so a failing test shows why the command failed.
    """

    def __init__(
        self,
        host: str,
        returncode: int,
        cmd: Sequence[str],
        output: str | bytes | None,
        stderr: str | bytes | None,
    ) -> None:
        super().__init__(returncode, list(cmd), output, stderr)
        self.host = host

    def __str__(self) -> str:
        stderr = self.stderr
        if isinstance(stderr, bytes):
            stderr = stderr.decode("utf-8", "replace")

        detail = (stderr or "").strip()[-2000:]
        message = f"command on lab host {self.host} exited with status {self.returncode}: {self.cmd}"
        if detail:
            message += f"\nstderr: {detail}"
        return message
