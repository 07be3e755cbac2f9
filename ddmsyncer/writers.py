"""Containers that write to a source volume while it is copied, and what DDM does about them.

Policies, from the `migrate` options stored in the task spec:

* no option: a volume mounted by a running container is rejected in prepare, naming the
  containers, because a copy of a changing volume can hold torn files;
* `--stop-writers`: stop those containers for the copy and start them again afterwards;
* `--pause`: `docker pause` them for the copy and unpause them afterwards;
* `--live`: copy while they run, then look for files that changed during the copy. With
  `--stop-writers` or `--pause` too, a volume with changed files is copied again in a final
  pass with the writers stopped or paused. Without either, the task fails.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ddm.errors import MigrationFailed, UsageError

log = logging.getLogger(__name__)

MAX_NAMED_CONTAINERS = 5


@dataclass(frozen=True)
class WriterPolicy:
    """Policy for running containers that mount a source volume."""

    quiesce: str | None  # "stop", "pause" or None
    live: bool

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> WriterPolicy:
        stop = bool(options.get("stop_writers"))
        pause = bool(options.get("pause"))
        if stop and pause:
            raise UsageError("--stop-writers and --pause exclude each other", hint="choose one")
        quiesce = None
        if stop:
            quiesce = "stop"
        elif pause:
            quiesce = "pause"
        return cls(quiesce=quiesce, live=bool(options.get("live")))


@dataclass(frozen=True)
class Writer:
    """A running container that mounts a volume."""

    id: str
    name: str


def running_writers(engine: Any, volume: str) -> list[Writer]:
    """Return the running containers on `engine` that mount `volume`."""
    containers = engine.api.containers(filters={"volume": volume, "status": "running"})
    writers = []
    for container in containers:
        if not any(mount.get("Name") == volume for mount in container.get("Mounts") or []):
            continue
        names = container.get("Names") or [container["Id"][:12]]
        writers.append(Writer(container["Id"], names[0].lstrip("/")))
    return writers


def describe(writers: list[Writer]) -> str:
    names = ", ".join(writer.name for writer in writers[:MAX_NAMED_CONTAINERS])
    more = len(writers) - MAX_NAMED_CONTAINERS
    return names + (f" and {more} more" if more > 0 else "")


def reject_running_writers(host_name: str, volume: str, writers: list[Writer]) -> None:
    """Raise MigrationFailed for a volume that running containers use, naming them."""
    raise MigrationFailed(
        f"volume {volume!r} on host {host_name!r} is used by running containers: {describe(writers)}",
        hint="pass --stop-writers or --pause to stop them for the copy, or --live to copy "
        "while they run and detect changed files",
    )


def quiesce(engine: Any, writers: list[Writer], action: str) -> None:
    """Stop or pause the writers."""
    for writer in writers:
        if action == "pause":
            engine.api.pause(writer.id)
        else:
            engine.api.stop(writer.id)
        log.info("%s container %s on %s for the copy", "paused" if action == "pause" else "stopped",
                 writer.name, engine.host.name)


def release(engine: Any, writer_ids: list[str], action: str) -> list[str]:
    """Start or unpause containers that quiesce() stopped; return the IDs that failed."""
    failed = []
    for writer_id in writer_ids:
        try:
            state = engine.api.inspect_container(writer_id)["State"]
            if action == "pause" and state.get("Paused"):
                engine.api.unpause(writer_id)
            elif action == "stop" and not state.get("Running"):
                engine.api.start(writer_id)
        except Exception as error:  # noqa: BLE001 - every writer gets its chance to restart
            log.error("could not restart container %s on %s: %s", writer_id[:12], engine.host.name, error)
            failed.append(writer_id)
    return failed
