"""Helpers for the lab tests of the operator tools: run commands in-process, read host state."""

from __future__ import annotations

import io
import json
import os
import signal
from dataclasses import dataclass
from typing import Any

import click

from ddm.env import Environment
from ddmctl.common import run_main
from tests.lab import LabHost


@dataclass(frozen=True)
class Outcome:
    """Exit status and captured output of one command run."""

    status: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def run_command(command: click.Command, prog: str, *args: str,
                environ: dict[str, str] | None = None) -> Outcome:
    """Run a DDM command in this process with the test's environment (isolated_env)."""
    env = Environment(stdin=io.StringIO(""), stdout=io.StringIO(), stderr=io.StringIO(),
                      environ=dict(os.environ if environ is None else environ),
                      stdin_isatty=False, stdout_isatty=False, stderr_isatty=False)
    sigterm_handler = signal.getsignal(signal.SIGTERM)
    try:
        status = run_main(command, list(args), env=env, prog_name=prog)
    finally:
        signal.signal(signal.SIGTERM, sigterm_handler)
    return Outcome(status, env.stdout.getvalue(), env.stderr.getvalue())


def ddmctl(*args: str, environ: dict[str, str] | None = None) -> Outcome:
    from ddmctl.cli import cli

    return run_command(cli, "ddmctl", *args, environ=environ)


def ddmsyncer(*args: str) -> Outcome:
    from ddmsyncer.cli import cli

    return run_command(cli, "ddmsyncer", *args)


def host_state(host: LabHost) -> dict[str, list[str]]:
    """Return the host's volumes, containers (with state) and images, each sorted."""
    def lines(*argv: str) -> list[str]:
        return sorted(host.docker(*argv).stdout.split("\n"))

    return {
        "volumes": lines("volume", "ls", "--format", "{{.Name}} {{.Driver}}"),
        "containers": lines("ps", "--all", "--no-trunc", "--format",
                            "{{.ID}} {{.Names}} {{.Status}}"),
        "images": lines("images", "--all", "--no-trunc", "--format",
                        "{{.ID}} {{.Repository}}:{{.Tag}}"),
    }


def volume_names(host: LabHost) -> set[str]:
    return set(host.docker("volume", "ls", "--quiet").stdout.split())


def hold_lock(resource: str, holder_id: str) -> None:
    """Store a running task of this process that holds the lock `resource`, as a second task would."""
    from ddm.store import TaskStore, default_store_path
    from ddm.task import Task, TaskSpec, TaskState

    store = TaskStore(default_store_path(os.environ))
    holder = Task(id=holder_id, spec=TaskSpec(source_host="h1", target_host="h2"))
    store.create_task(holder, reserved_by=os.getpid())
    store.update_task(holder.id, state=TaskState.RUNNING)
    store.acquire_locks(holder.id, [resource])
    store.close()


def hold_engine_lock(host: LabHost, volume: str, holder_id: str) -> str:
    """Lock `volume` of the host's engine by engine ID for a running task; return the engine ID.

    That is the lock that a task whose config names the same engine by another host name holds.
    """
    from ddmsyncer.volumes import engine_lock_names

    engine_id = host.docker("info", "--format", "{{.ID}}").stdout.strip()
    (resource,) = engine_lock_names([f"{host.name}/volume/{volume}"], {host.name: engine_id})
    hold_lock(resource, holder_id)
    return engine_id
