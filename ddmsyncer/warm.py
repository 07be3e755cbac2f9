"""Warm cutover of full-mode tasks (`--warm`) and the downtime of every full-mode cutover.

A warm task copies the volumes of running source containers in the copy phase, while those
containers still run (the pre-copy). After the migrate phase has stopped them, only the
delta goes over, with the scan and transfer steps of ddmsyncer/incremental.py: both hosts
scan the volume at once, then one command on the target deletes the removed entries and
unpacks the tar stream of new and changed entries. The target volume gets no backup, because
the task created it and its rollback removes it.

Which files are hashed while the containers are down? With verify full, right after the
pre-copy and while the containers still run, both hosts hash their copy of the volume once and
store each file's SHA-256 in the hash cache with its lstat key (device, inode, size, mtime_ns,
ctime_ns; see ddmsyncer/hashcache.py). It waits until the pre-copy's last writes are
hashcache.RACY_MARGIN_NANOSECONDS old, the longest racy margin, because files changed within
their margin of a scan's start are not cached. After the stop, each host rescans the volume against that scan
(incremental.rescan_volume): it lstats every entry and reports and hashes only those whose key
changed, and every other entry keeps its digest. A task resumed in another process, which no
longer has the scans, scans in "cached" mode instead, with the digests from the hash cache.
Every change to a file sets its ctime, so a file an application rewrote with its size and
mtime kept is hashed and sent too, on either host.

Verify then proves that the target equals the stopped source without hashing both volumes
again (incremental.verify_target). The source containers are stopped, so the source's delta
scan is final and the source is not scanned again. The target's host lstats every entry
and hashes the sent files and any file whose key changed since its delta scan, such as one
damaged after the delta. Every other entry is taken from that scan. Every aspect and
digest of every entry is compared with the source's delta scan, and a difference fails the
task, which rolls it back. NOTE: a process outside the source containers that writes to the
source volume during the downtime is not detected.

Without verify full, and for a task whose pre-copy an older version made, the delta scans
hash only files whose mtime is at most PRECOPY_MTIME_MARGIN_SECONDS before the pre-copy
started (clock of the source host, rounded down to whole seconds). A file whose mtime an
application set back into the past while keeping its size is missed there, as with rsync's
default quick check, and verify full (older tasks) scans both volumes in full instead.

Downtime runs from the moment the first source container is stopped until every target
container runs (and is healthy, when it has a healthcheck) and its published ports accept
connections. It is stored in the task's extra state as `downtime_seconds`, for cold and warm
cutovers alike.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from ddm.task import TaskItem, VerifyMode
from ddmsyncer import hashcache, incremental
from ddmsyncer.hashcache import HashCache

log = logging.getLogger(__name__)

STOPPED_AT_KEY = "source_stopped_at"
WARM_KEY = "warm"
# Covers the whole-second mtimes that the archive API gives the pre-copy.
PRECOPY_MTIME_MARGIN_SECONDS = 2
# Scan entries of both hosts that a task keeps from seed_digests until the delta pass. The
# scans are temporary SQLite tables (ddmsyncer.scantable, about 134 bytes a row on disk), so
# this bounds their disk space, not the controller's memory. Volumes above it are scanned in
# "cached" mode after the stop, which reads the digests from the hash cache instead.
SEED_SCANS_MAX_ENTRIES = 200_000


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
        precopy_finished = time.monotonic()
        if runner.task.spec.verify is VerifyMode.FULL:
            seed_digests(runner, name, precopy_finished)
        start_delta_commands(runner, [name])


def seed_digests(runner: Any, name: str, precopy_finished: float) -> None:
    """Hash both copies of a pre-copied volume into the hash cache while its containers run.

    The scans wait until the pre-copy's last writes on the target are older than the racy
    margin (controller clock), so that the cache keeps their digests. A record without
    "seeded" (verify quick or none, or a task an older version started) makes the delta pass
    use the mtime test instead.
    """
    source_mountpoint, target_mountpoint = _delta_mountpoints(runner, name)
    wait = precopy_finished + hashcache.RACY_MARGIN_NANOSECONDS / 1e9 - time.monotonic()
    if wait > 0:
        time.sleep(wait)

    started = time.monotonic()
    source_scan, target_scan, _ = incremental.scan_both(
        runner.source, source_mountpoint, runner.target, target_mountpoint,
        cache=HashCache(runner.store), hash_mode="cached")
    kept = _seed_scans(runner)
    kept_entries = sum(len(source) + len(target) for source, target in kept.values())
    if kept_entries + len(source_scan) + len(target_scan) <= SEED_SCANS_MAX_ENTRIES:
        kept[name] = (source_scan, target_scan)
    _save_record(runner, name, seeded=True,
                 seed_hashed_files={"source": source_scan.hashed_files,
                                    "target": target_scan.hashed_files})
    log.info("volume %s: hashed %d source and %d target files into the hash cache in %.2f s",
             name, source_scan.hashed_files, target_scan.hashed_files,
             time.monotonic() - started)


def _seed_scans(runner: Any) -> dict[str, tuple[incremental.Scan, incremental.Scan]]:
    """Return the (source, target) scans of seed_digests that this process keeps, by volume."""
    if getattr(runner, "_warm_seed_scans", None) is None:
        runner._warm_seed_scans = {}
    return runner._warm_seed_scans


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
    them their stdin. A command that copy_delta does not use ends when its channel is
    closed.
    """
    started = _started_commands(runner)
    for name in names:
        if name not in _records(runner) or name in started:
            continue
        source_mountpoint, target_mountpoint = _delta_mountpoints(runner, name)
        mode = _delta_hash_mode(runner, name)
        commands = DeltaCommands({}, None)
        started[name] = commands
        commands.scans["source"] = incremental.HostCommand(
            runner.source, _scan_arguments(mode, source_mountpoint))
        commands.scans["target"] = incremental.HostCommand(
            runner.target, _scan_arguments(mode, target_mountpoint))
        commands.tar_channels = incremental.open_tar_channels(
            runner.source, source_mountpoint, runner.target, target_mountpoint, apply=True)


def _scan_arguments(mode: str, mountpoint: str) -> list[str]:
    if mode == "rescan":
        return ["rescan", mountpoint, "all"]
    return ["scan", mountpoint, mode]


def close_delta_commands(runner: Any) -> None:
    """Close the started commands that no delta pass or verify used (after a failure)."""
    for commands in _started_commands(runner).values():
        commands.close()
    _started_commands(runner).clear()
    close_verify_commands(runner)


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
    source_mountpoint, target_mountpoint = _delta_mountpoints(runner, name)
    started = time.monotonic()
    hash_mode = _delta_hash_mode(runner, name)
    scans = commands.scans if commands is not None else {}
    if hash_mode == "rescan":
        source_scan, target_scan, scan_bytes = _rescan_seeded(runner, name, scans)
    else:
        source_scan, target_scan, scan_bytes = incremental.scan_both(
            runner.source, source_mountpoint, runner.target, target_mountpoint,
            cache=HashCache(runner.store) if hash_mode == "cached" else None,
            hash_mode=hash_mode, commands=scans)
    plan = incremental.plan_update(source_scan, target_scan)
    log.info("volume %s: delta scans took %.2f s, hashed %d source and %d target files", name,
             time.monotonic() - started, source_scan.hashed_files, target_scan.hashed_files)

    digests = None
    if hash_mode in ("rescan", "cached"):
        # Both scans have every file's digest, so verify needs to scan only the target. Its
        # command starts now, before the transfer, in place of the delta's finished scan.
        digests = incremental.UpdateDigests(list(plan.send), source_scan, target_scan,
                                            (source_mountpoint, target_mountpoint))
        digests.commands["target"] = incremental.HostCommand(
            runner.target, ["rescan", target_mountpoint, "all"])

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
    runner._warm_updates[name] = digests if digests is not None else result
    runner._manifests_by_name.pop(name, None)  # the pre-copy's manifest is out of date
    runner.add_sent_bytes("volume", result.archive_bytes)
    _save_record(runner, name, delta_bytes=result.archive_bytes,
                 delta_entries=result.sent_entries, deleted_entries=result.deleted_entries,
                 scan_bytes=result.scan_bytes, hashed_entries=source_scan.hashed_files,
                 hashed_files={"source": source_scan.hashed_files,
                               "target": target_scan.hashed_files})
    runner.record("info", "delta", f"volume {name!r}: sent {result.sent_entries} changed "
                  f"entries ({result.archive_bytes} bytes), deleted {result.deleted_entries}")


def _rescan_seeded(runner: Any, name: str, commands: dict[str, incremental.HostCommand]
                   ) -> tuple[incremental.Scan, incremental.Scan, int]:
    """Rescan both copies of a volume against the scans of seed_digests, one thread per host.

    Each host lstats every entry and reports and hashes only those whose key changed since
    the seed scan (incremental.rescan_volume), so the merged scans have every file's digest.
    """
    source_mountpoint, target_mountpoint = _delta_mountpoints(runner, name)
    seed_source, seed_target = _seed_scans(runner).pop(name)
    results: dict[str, tuple[incremental.Scan, int]] = {}
    failures: list[BaseException] = []

    def rescan_source() -> None:
        try:
            results["source"] = incremental.rescan_volume(
                runner.source, source_mountpoint, seed_source, hash_content=True,
                command=commands.pop("source", None))
        except BaseException as error:  # noqa: BLE001 - raised below in the calling thread
            failures.append(error)

    thread = threading.Thread(target=rescan_source, name="ddm-delta-source", daemon=True)
    thread.start()
    try:
        results["target"] = incremental.rescan_volume(
            runner.target, target_mountpoint, seed_target, hash_content=True,
            command=commands.pop("target", None))
    finally:
        thread.join()
    if failures:
        raise failures[0]
    (source_scan, source_bytes), (target_scan, target_bytes) = results["source"], results["target"]
    return source_scan, target_scan, source_bytes + target_bytes


def verify_deltas(runner: Any) -> None:
    """Compare host-side scans of every volume updated by copy_delta; see the module docstring."""
    while runner._warm_updates:
        name, update = runner._warm_updates.popitem()
        item = TaskItem(task_id=runner.task.id, position=0, source=name, target=name)
        started = time.monotonic()
        if isinstance(update, incremental.UpdateDigests):
            # The source containers are stopped, so the source's delta scan is final.
            _, target_mountpoint = update.mountpoints or _mountpoints(runner, name)
            result = incremental.verify_target(
                runner.target, target_mountpoint, item, update, HashCache(runner.store),
                hint="the cutover is rolled back and the source containers start again; "
                     "run 'ddmverify' to inspect")
        else:
            # The delta's scans lack the digests of older files, so verify full hashes every
            # file whose key the cache does not hold.
            source_mountpoint, target_mountpoint = _mountpoints(runner, name)
            result = incremental.verify_update(
                runner.source, source_mountpoint, runner.target, target_mountpoint, item,
                runner.task.spec.verify, cache=HashCache(runner.store))
        _save_record(runner, name, verify_hashed_files=result.hashed_files,
                     verify_reused_entries=result.reused_entries)
        log.info("volume %s: verify took %.2f s, hashed %d source and %d target files", name,
                 time.monotonic() - started, result.hashed_files["source"],
                 result.hashed_files["target"])


def close_verify_commands(runner: Any) -> None:
    """Close the verify scans that copy_delta started when verify did not run (a failure)."""
    for update in getattr(runner, "_warm_updates", {}).values():
        if isinstance(update, incremental.UpdateDigests):
            update.close_commands()


def discard_backups(runner: Any) -> None:
    """Remove the `cp -al` backups that older versions made in the delta pass."""
    for name, record in _records(runner).items():
        if record.get("backup"):
            incremental.discard_backup(runner.target, record["backup"])
            _save_record(runner, name, backup=None, backup_complete=False)


def _delta_hash_mode(runner: Any, name: str) -> str:
    """Return how the delta pass scans a volume.

    "rescan" when this process keeps the scans of seed_digests, "cached" when seed_digests
    ran in another process or kept no scans, else the mtime test "newer:NS".
    """
    if name in _seed_scans(runner):
        return "rescan"
    record = _records(runner)[name]
    if record.get("seeded"):
        return "cached"
    return f"newer:{_newer_than_ns(record['precopy_started_at'])}"


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
