"""Warm cutover of full-mode tasks (`--warm`) and the downtime of every full-mode cutover.

A warm task copies the volumes of running source containers in the copy phase, while those
containers still run (the pre-copy). After the migrate phase has stopped them, only the
delta goes over, with the scan and transfer steps of ddmsyncer/incremental.py: both hosts
scan the volume at once, then one command on the target deletes the removed entries and
unpacks the tar stream of new and changed entries. The target volume gets no backup, because
the task created it and its rollback removes it.

Which files are hashed while the containers are down? Only files whose mtime is at most
PRECOPY_MTIME_MARGIN_SECONDS before the pre-copy started (clock of the source host, rounded
down to whole seconds) are hashed, on both hosts and in the same scan, because only they can
have changed without their mtime showing it. A file that differs in type, mode, owner, size or
whole-second mtime is sent whatever its hash. A file whose mtime an application set back into the past while keeping its size
is missed here, as with rsync's default quick check. Verify therefore hashes every file of
both volumes again (verify full), after the target has started, and fails the task, which
rolls it back, on any difference.

Downtime runs from the moment the first source container is stopped until every target
container runs (and is healthy, when it has a healthcheck) and its published ports accept
connections. It is stored in the task's extra state as `downtime_seconds`, for cold and warm
cutovers alike.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from ddm.task import TaskItem
from ddmsyncer import incremental
from ddmsyncer.hashcache import HashCache

log = logging.getLogger(__name__)

STOPPED_AT_KEY = "source_stopped_at"
WARM_KEY = "warm"
# Covers the whole-second mtimes that the archive API gives the pre-copy.
PRECOPY_MTIME_MARGIN_SECONDS = 2


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
    """Store and return the downtime, or return None when no source container was stopped."""
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
        source_mountpoint, target_mountpoint = _mountpoints(runner, name)
        _save_record(runner, name, precopy_started_at=_host_time(runner.source),
                     source_mountpoint=source_mountpoint, target_mountpoint=target_mountpoint)
        before = int(runner.extra().get("volume_bytes_sent") or 0)
        runner._copy_volume(name)
        sent = int(runner.extra().get("volume_bytes_sent") or 0) - before
        _save_record(runner, name, precopy_bytes=sent)
        runner.record("info", "precopied", f"pre-copied volume {name!r} while its containers "
                      f"run: {sent} bytes")
        start_delta_commands(runner, [name])


def precopied(runner: Any) -> set[str]:
    return set(_records(runner))


@dataclass
class DeltaCommands:
    """The host commands of one volume's delta pass, started before the source stops."""

    scans: dict[str, incremental.HostCommand]
    tar_channels: incremental.TarChannels | None

    def close(self) -> None:
        for command in self.scans.values():
            command.close()
        if self.tar_channels is not None:
            self.tar_channels.close()


def _delta_mountpoints(runner: Any, name: str) -> tuple[str, str]:
    record = _records(runner)[name]
    if record.get("source_mountpoint") and record.get("target_mountpoint"):
        return record["source_mountpoint"], record["target_mountpoint"]
    return _mountpoints(runner, name)  # a task started by an older version


def start_delta_commands(runner: Any, names: list[str]) -> None:
    """Start the scans and tar commands of the delta passes, which wait until copy_delta.

    Called after the pre-copy, and again before the source containers stop for a task resumed
    in another process, so that opening SSH channels and starting python3 and tar on both
    hosts does not count as downtime. The scans read the volumes only once copy_delta sends
    them their (empty) stdin. A command that copy_delta does not use ends when its channel is
    closed.
    """
    started = _started_commands(runner)
    for name in names:
        if name not in _records(runner) or name in started:
            continue
        source_mountpoint, target_mountpoint = _delta_mountpoints(runner, name)
        mode = f"newer:{_newer_than_ns(_records(runner)[name]['precopy_started_at'])}"
        commands = DeltaCommands({}, None)
        started[name] = commands
        commands.scans["source"] = incremental.HostCommand(
            runner.source, ["scan", source_mountpoint, mode])
        commands.scans["target"] = incremental.HostCommand(
            runner.target, ["scan", target_mountpoint, mode])
        commands.tar_channels = incremental.open_tar_channels(
            runner.source, source_mountpoint, runner.target, target_mountpoint, apply=True)


def close_delta_commands(runner: Any) -> None:
    """Close the started commands that no delta pass used (after a failure)."""
    for commands in _started_commands(runner).values():
        commands.close()
    _started_commands(runner).clear()


def _started_commands(runner: Any) -> dict[str, DeltaCommands]:
    if getattr(runner, "_delta_commands", None) is None:
        runner._delta_commands = {}
    return runner._delta_commands


def copy_delta(runner: Any, name: str) -> None:
    """Update a pre-copied target volume with what changed on the source since the pre-copy."""
    commands = _started_commands(runner).pop(name, None)
    try:
        _copy_delta(runner, name, commands)
    finally:
        if commands is not None:
            commands.close()


def _copy_delta(runner: Any, name: str, commands: DeltaCommands | None) -> None:
    record = _records(runner)[name]
    source_mountpoint, target_mountpoint = _delta_mountpoints(runner, name)
    started = time.monotonic()
    source_scan, target_scan, scan_bytes = incremental.scan_both(
        runner.source, source_mountpoint, runner.target, target_mountpoint,
        hash_mode=f"newer:{_newer_than_ns(record['precopy_started_at'])}",
        commands=commands.scans if commands is not None else None)
    plan = incremental.plan_update(source_scan, target_scan)
    log.info("volume %s: delta scans took %.2f s", name, time.monotonic() - started)

    archive_bytes = 0
    if plan.send or plan.delete:
        archive_bytes, _ = incremental.relay_tar(
            runner.source, source_mountpoint, runner.target, target_mountpoint, plan.send,
            lambda count: None, delete=plan.delete,
            channels=commands.tar_channels if commands is not None else None)
        if commands is not None:
            commands.tar_channels = None  # relay_tar closed them
    result = incremental.UpdateResult(plan, source_scan, target_scan, plan.written_entries,
                                      len(plan.delete), archive_bytes, scan_bytes, "",
                                      time.monotonic() - started)
    runner._warm_updates[name] = result
    runner._manifests_by_name.pop(name, None)  # the pre-copy's manifest is out of date
    runner.add_sent_bytes("volume", result.archive_bytes)
    _save_record(runner, name, delta_bytes=result.archive_bytes,
                 delta_entries=result.sent_entries, deleted_entries=result.deleted_entries,
                 scan_bytes=result.scan_bytes, hashed_entries=source_scan.hashed_files)
    runner.record("info", "delta", f"volume {name!r}: sent {result.sent_entries} changed "
                  f"entries ({result.archive_bytes} bytes), deleted {result.deleted_entries}")


def verify_deltas(runner: Any) -> None:
    """Compare fresh host-side scans of every volume updated by copy_delta."""
    for name in runner._warm_updates:
        source_mountpoint, target_mountpoint = _mountpoints(runner, name)
        item = TaskItem(task_id=runner.task.id, position=0, source=name, target=name)
        # Without the update, verify full hashes every file whose key the cache does not
        # hold; see the module docstring.
        incremental.verify_update(runner.source, source_mountpoint, runner.target,
                                  target_mountpoint, item, runner.task.spec.verify,
                                  cache=HashCache(runner.store))


def discard_backups(runner: Any) -> None:
    """Remove the `cp -al` backups that older versions made in the delta pass."""
    for name, record in _records(runner).items():
        if record.get("backup"):
            incremental.discard_backup(runner.target, record["backup"])
            _save_record(runner, name, backup=None, backup_complete=False)


def _newer_than_ns(precopy_started_at: float) -> int:
    """Return the mtime from which files may have changed since the pre-copy, in nanoseconds.

    It is rounded down to whole seconds, so a target file whose mtime the archive API truncated
    to seconds is hashed whenever the source file of the same whole-second mtime is.
    """
    return int(precopy_started_at - PRECOPY_MTIME_MARGIN_SECONDS) * 1_000_000_000


def _host_time(engine: Any) -> float:
    """Return the host's clock in seconds since the epoch, as the scans' mtimes use it."""
    result = engine.ssh.exec_command(["date", "+%s"])
    if result.exit_status != 0:
        from ddm.errors import MigrationFailed

        raise MigrationFailed(f"failed to read the clock of host {engine.host.name} with 'date': "
                              f"{result.stderr.decode('utf-8', 'replace').strip()[-200:]}")
    return float(result.stdout.strip())


def _mountpoints(runner: Any, name: str) -> tuple[str, str]:
    source = runner.source.volume_inspect(name)
    target = runner.target.volume_inspect(name)
    if source is None or target is None or not source.mountpoint or not target.mountpoint:
        from ddm.errors import MigrationFailed

        raise MigrationFailed(f"mountpoint of volume {name!r} not found on both hosts",
                              hint="--warm works on volumes of the local driver only")
    return source.mountpoint, target.mountpoint
