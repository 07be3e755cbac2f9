"""The task model: a migration task's request and its progress."""

from __future__ import annotations

import enum
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ddm.config import short_repr
from ddm.errors import UsageError

# Docker's own rule for volume and container names (daemon/names/names.go in moby).
DOCKER_NAME_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
MAX_DOCKER_NAME = 255


class Mode(str, enum.Enum):
    """Kind of objects a task moves: volumes only, or whole containers."""

    VOLUMES = "volumes"
    FULL = "full"


class Phase(str, enum.Enum):
    """Phases of a task, in the order the syncer runs them (rollback only on failure)."""

    PREPARE = "prepare"
    COPY = "copy"
    MIGRATE = "migrate"
    VERIFY = "verify"
    CLEANUP = "cleanup"
    ROLLBACK = "rollback"
    DONE = "done"


class TaskState(str, enum.Enum):
    """Overall state of a task."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # failed and rolled back: the target is as it was before the task
    ROLLED_BACK = "rolled_back"  # rolled back on the operator's request
    CANCELLED = "cancelled"  # cancelled by the operator and rolled back
    INTERRUPTED = "interrupted"  # the runner stopped mid-way; resume or roll back

    @property
    def finished(self) -> bool:
        return self in (
            TaskState.SUCCEEDED,
            TaskState.FAILED,
            TaskState.ROLLED_BACK,
            TaskState.CANCELLED,
        )


class ItemState(str, enum.Enum):
    """State of one volume within a task."""

    PENDING = "pending"
    COPYING = "copying"
    COPIED = "copied"
    VERIFIED = "verified"
    UNVERIFIED = "unverified"  # copied completely with --verify none: not compared
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    # The rollback found the target volume already gone, so it removed nothing.
    ABSENT = "absent"


class VerifyMode(str, enum.Enum):
    """Depth of the verify phase's comparison of source and target."""

    NONE = "none"
    QUICK = "quick"  # paths, types, modes, owners, sizes, link targets
    FULL = "full"  # quick plus the xxh3-128 hash of every file's content


def validate_docker_name(name: str, what: str = "volume") -> str:
    """Check a volume or container name against Docker's name rules and return it."""
    if not isinstance(name, str) or not name:
        raise UsageError(f"missing {what} name")
    if len(name) > MAX_DOCKER_NAME or not DOCKER_NAME_PATTERN.fullmatch(name):
        raise UsageError(
            f"invalid {what} name {short_repr(name)}",
            hint="Docker names use letters, digits, '_', '.' and '-', start with a letter or "
            f"digit and have 2 to {MAX_DOCKER_NAME} characters",
        )
    return name


def parse_volume_mapping(value: str) -> tuple[str, str]:
    """Parse a `--volume SRC[:DST]` argument into validated (source, target) names."""
    source, separator, target = value.partition(":")
    if not separator:
        target = source
    if ":" in target:
        raise UsageError(f"invalid volume mapping {value!r}: more than one ':'",
                         hint="write SRC to keep the name, or SRC:DST to rename the volume")
    if not source or not target:
        raise UsageError(f"invalid volume mapping {value!r}: missing "
                         f"{'source' if not source else 'target'} volume name",
                         hint="write SRC to keep the name, or SRC:DST to rename the volume")
    validate_docker_name(source)
    validate_docker_name(target)
    return source, target


def new_task_id() -> str:
    """Return a new task ID: 12 hex digits, short enough to type and unique enough to store."""
    return secrets.token_hex(6)


@dataclass(frozen=True)
class VolumeSpec:
    """One volume to move: its name on the source and on the target."""

    source: str
    target: str


@dataclass(frozen=True)
class TaskSpec:
    """The operator's request, stored unchanged with the task."""

    source_host: str
    target_host: str
    mode: Mode = Mode.VOLUMES
    volumes: tuple[VolumeSpec, ...] = ()
    verify: VerifyMode = VerifyMode.FULL
    force: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mode"] = self.mode.value
        data["verify"] = self.verify.value
        data["volumes"] = [asdict(volume) for volume in self.volumes]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskSpec:
        return cls(
            source_host=data["source_host"],
            target_host=data["target_host"],
            mode=Mode(data.get("mode", Mode.VOLUMES.value)),
            volumes=tuple(VolumeSpec(**volume) for volume in data.get("volumes", [])),
            verify=VerifyMode(data.get("verify", VerifyMode.FULL.value)),
            force=bool(data.get("force", False)),
            options=dict(data.get("options", {})),
        )


@dataclass
class TaskItem:
    """Progress and results of one volume within a task, as stored."""

    task_id: str
    position: int
    source: str
    target: str
    state: ItemState = ItemState.PENDING
    bytes_total: int | None = None
    bytes_done: int = 0
    entries: int | None = None
    stream_digest: str | None = None
    target_created: bool = False
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        return data


@dataclass
class Task:
    """A migration task as stored: the spec, its state and per-volume items."""

    id: str
    spec: TaskSpec
    state: TaskState = TaskState.QUEUED
    phase: Phase = Phase.PREPARE
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    error: dict[str, Any] | None = None
    runner_pid: int | None = None
    control: str | None = None
    items: list[TaskItem] = field(default_factory=list)

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.finished_at or time.time()) - self.started_at

    def to_dict(self) -> dict[str, Any]:
        """Return the task as a JSON-ready mapping (the `--json` form of status and list)."""
        return {
            "id": self.id,
            "state": self.state.value,
            "phase": self.phase.value,
            "mode": self.spec.mode.value,
            "source_host": self.spec.source_host,
            "target_host": self.spec.target_host,
            "spec": self.spec.to_dict(),
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_seconds": self.duration,
            "error": self.error,
            "control": self.control,
            "volumes": [item.to_dict() for item in self.items],
        }
