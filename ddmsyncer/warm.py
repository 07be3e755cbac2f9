"""Warm cutover of full-mode tasks (`--warm`) and the downtime of every full-mode cutover.

A warm task copies the volumes of running source containers in the copy phase, while those
containers still run (the pre-copy). After the migrate phase has stopped them, only the
delta goes over: ddmsyncer/incremental.py scans the source volume and the pre-copied target
volume on their hosts, sends new and changed files, deletes removed ones, and backs the target
volume up with `cp -al` first. Verify compares fresh host-side scans of both volumes.

Downtime runs from the moment the first source container is stopped until every target
container runs (and is healthy, when it has a healthcheck) and its published ports accept
connections. It is stored in the task's extra state as `downtime_seconds`, for cold and warm
cutovers alike.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ddm.task import TaskItem, VerifyMode
from ddmsyncer import incremental

log = logging.getLogger(__name__)

STOPPED_AT_KEY = "source_stopped_at"
WARM_KEY = "warm"


def is_warm(runner: Any) -> bool:
    return bool(runner.task.spec.options.get("warm"))


def supports_warm(runner: Any) -> bool:
    """Return whether both hosts can run the host-side scans of the delta pass."""
    return (incremental.supports_host_commands(runner.source)
            and incremental.supports_host_commands(runner.target))


# Downtime


def mark_source_stopped(runner: Any) -> None:
    """Store the wall-clock time of the first source container stop (later calls keep it)."""
    if runner.extra().get(STOPPED_AT_KEY) is None:
        runner.store.set_extra(runner.task.id, **{STOPPED_AT_KEY: time.time()})


def record_downtime(runner: Any) -> float | None:
    """Store and return the downtime; None when no source container was stopped."""
    stopped_at = runner.extra().get(STOPPED_AT_KEY)
    if stopped_at is None:
        return None
    downtime = time.time() - float(stopped_at)
    runner.store.set_extra(runner.task.id, downtime_seconds=downtime)
    runner.record("info", "downtime", f"downtime {downtime:.2f} s from the first source stop "
                  "until the target containers passed their state check")
    return downtime


# Pre-copy and delta


def _records(runner: Any) -> dict[str, dict[str, Any]]:
    return dict(runner.extra().get(WARM_KEY) or {})


def _save_record(runner: Any, volume: str, **values: Any) -> None:
    records = _records(runner)
    records.setdefault(volume, {}).update(values)
    runner.store.set_extra(runner.task.id, **{WARM_KEY: records})


def precopy(runner: Any, volume_names: list[str]) -> None:
    """Copy volumes of running source containers in full while those containers run."""
    for name in volume_names:
        runner.check_control(force=True)
        before = int(runner.extra().get("volume_bytes_sent") or 0)
        runner._copy_volume(name)
        sent = int(runner.extra().get("volume_bytes_sent") or 0) - before
        _save_record(runner, name, precopy_bytes=sent)
        runner.record("info", "precopied", f"pre-copied volume {name!r} while its containers "
                      f"run: {sent} bytes")


def precopied(runner: Any) -> set[str]:
    return set(_records(runner))


def copy_delta(runner: Any, name: str) -> None:
    """Update a pre-copied target volume with what changed on the source since the pre-copy."""
    source_mountpoint, target_mountpoint = _mountpoints(runner, name)
    result = incremental.update_volume(
        runner.source, source_mountpoint, runner.target, target_mountpoint,
        task_id=runner.task.id,
        hash_content=runner.task.spec.verify is not VerifyMode.NONE,
        on_chunk=lambda count: None,
        on_backup=lambda backup, complete: _save_record(
            runner, name, backup=backup, backup_complete=complete),
    )
    runner._warm_updates[name] = result
    runner._manifests_by_name.pop(name, None)  # the pre-copy's manifest is out of date
    runner.add_sent_bytes("volume", result.archive_bytes)
    _save_record(runner, name, delta_bytes=result.archive_bytes,
                 delta_entries=result.sent_entries, deleted_entries=result.deleted_entries,
                 scan_bytes=result.scan_bytes)
    runner.record("info", "delta", f"volume {name!r}: sent {result.sent_entries} changed "
                  f"entries ({result.archive_bytes} bytes), deleted {result.deleted_entries}")


def verify_deltas(runner: Any) -> None:
    """Compare fresh host-side scans of every volume updated by copy_delta."""
    for name, update in runner._warm_updates.items():
        source_mountpoint, target_mountpoint = _mountpoints(runner, name)
        item = TaskItem(task_id=runner.task.id, position=0, source=name, target=name)
        incremental.verify_update(runner.source, source_mountpoint, runner.target,
                                  target_mountpoint, item, runner.task.spec.verify, update)


def discard_backups(runner: Any) -> None:
    """Remove the `cp -al` backups of the delta pass; called after the task verified."""
    for name, record in _records(runner).items():
        if record.get("backup"):
            incremental.discard_backup(runner.target, record["backup"])
            _save_record(runner, name, backup=None, backup_complete=False)


def _mountpoints(runner: Any, name: str) -> tuple[str, str]:
    source = runner.source.volume_inspect(name)
    target = runner.target.volume_inspect(name)
    if source is None or target is None or not source.mountpoint or not target.mountpoint:
        from ddm.errors import MigrationFailed

        raise MigrationFailed(f"cannot find the mountpoints of volume {name!r} on both hosts",
                              hint="--warm works on volumes of the local driver only")
    return source.mountpoint, target.mountpoint
