"""Task steps of `--route direct`: copy host to host, verify by hashing on each host, clean up.

The copy itself is ddmdriver.direct. Because no byte of the volume passes this process, the
stream is not hashed here. Instead the verify phase scans both volumes on their own hosts
(ddmsyncer/hostscan.py over SSH, which needs python3 on both hosts). It compares, per path,
type, mode, owner, size, mtime to the nanosecond, symlink text, device numbers and hard-link
groups. Unless the task has `--verify none`, it also compares the SHA-256 of every regular
file, hashed from the file on the source host and from the file on the target host. So every
byte that was written is read back and checked, with `--verify quick` too. Both scans start
with the stream: the source's in SourceScan, the target's in the scan session of
ddmsyncer.hostverify, which hashes the pieces of large files while tar writes them.

Cleanup: before DDM installs a key or creates the source's work directory, it records
both in the task's state. copy_item() removes them when the copy ends in any way, and
remove_leftovers() (run by the runner's cleanup, which also runs in every rollback,
`ddmctl rollback` included) removes what a killed run left behind.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from ddm.differences import MAX_REPORTED_DIFFERENCES, ROLLED_BACK_VERIFY_HINT
from ddm.errors import DDMError, UsageError, VerificationFailed
from ddm.manifest import EntryTable, Manifest, ManifestEntry
from ddm.manifest_store import save_task_manifest
from ddm.task import TaskItem, VerifyMode
from ddmsyncer import hashcache, hashseed, hostverify
from ddmsyncer.scandiff import summarize_scan_differences
from ddmsyncer.scantable import paired, sorted_items

log = logging.getLogger(__name__)

EXTRA_KEY = "direct_route"
_RECORD_LOCK = threading.Lock()  # --parallel workers record their items at once


def requested(runner: Any) -> bool:
    """Return whether the task requests the direct route."""
    return runner.task.spec.options.get("route") == "direct"


def check_route(item: TaskItem, route: Any) -> None:
    """Raise UsageError when an item would take the Engine API path, which has no direct route."""
    from ddmsyncer.datapath import DataPath

    if route.data_path is DataPath.ENGINE:
        raise UsageError(f"--route direct needs the host data path, but volume {item.source!r} "
                         f"uses the Engine API ({route.reason})", hint="use --route relay")


# Aspects the verify phase compares on the direct route. Both host scans compare every
# xattr, and ACLs are xattrs. Holes are compared only by the manifest scan of a plain local
# volume (hostmanifest.py), not by the metadata fallback, so the plan does not promise them.
VERIFIED_ASPECTS = ("presence", "type", "mode", "owner", "size", "link", "device", "mtime",
                    "mtime_ns", "content", "xattrs", "acl")
NOT_VERIFIED_ASPECTS = ("sparse",)


def plan_aspects(verify: VerifyMode) -> dict[str, list[str]]:
    """Return the plan's "verified" and "not_verified" lists for the direct route."""
    verified = [] if verify is VerifyMode.NONE else list(VERIFIED_ASPECTS)
    return {"verified": verified, "not_verified": list(NOT_VERIFIED_ASPECTS)}


# Copy


def copy_item(runner: Any, item: TaskItem, staging_directory: str, route: Any,
              counter: Any, *, scan_source: bool = True,
              before_stream: Callable[[], None] | None = None) -> tuple[Manifest, int, str, list[str]]:
    """Stream one volume from the source host straight into the staging directory.

    Returns the source manifest, the archive's bytes, an empty stream digest (no process saw
    the stream) and the paths tar saw change. With scan_source, the manifest comes from a
    metadata-only scan of the source after the stream. Without it, the manifest is empty,
    because the verify phase scans the source with hashes and gives the task its manifest
    then (see staged.StagedVolumes.verify_direct). `before_stream` runs once the key is
    installed, just before tar starts writing on the target.
    """
    from ddmdriver import direct

    task_id = runner.task.id
    source, target = runner.source, runner.target
    endpoint = direct.direct_target(target)
    keys_path = direct.authorized_keys_path(target)
    work_directory = direct.work_directory(task_id, item.position)
    alias = f"ddm-direct-{task_id}-{item.position}"

    _record(runner, item.position, {"authorized_keys": keys_path, "work_directory": work_directory,
                                    "access_prefix": list(route.source_access.prefix)})
    key = direct.generate_task_key(direct.key_comment(task_id, item.position))
    line = direct.authorized_keys_line(key, direct.forced_command(route.target_access, staging_directory))
    failed = True
    try:
        run_both(lambda: direct.install_task_key(target, keys_path, line),
                  lambda: direct.prepare_source(source, route.source_access, work_directory, key,
                                                endpoint, alias))
        if before_stream is not None:
            before_stream()
        # NOTE: no progress events and no check for `ddmctl cancel` or pause until the
        # stream ends; Ctrl-C (SIGINT) does stop it.
        result = direct.stream_direct(source, route.source_access, route.source_directory,
                                      work_directory, endpoint, alias, f"volume {item.source!r}")
        failed = False
    finally:
        _remove_item(runner, item.position, raise_errors=not failed)

    runner.record("info", "route", f"volume {item.source!r}: {result.bytes} bytes streamed directly "
                  f"from {source.host.name} to {endpoint.address}:{endpoint.port}",
                  position=item.position)
    for path in result.skipped_sockets:
        runner.warn(f"volume {item.source!r}: socket {path} skipped (sockets cannot be copied; the "
                    "program that owns it creates it again)")
    counter.add(result.bytes)
    if not scan_source:
        return Manifest(hash_content=False), result.bytes, "", result.changed_paths
    source_scan = _scan(source, route.source_directory, "none")
    return manifest_from_scan(source_scan), result.bytes, "", result.changed_paths


def run_both(first: Callable[[], None], second: Callable[[], None]) -> None:
    """Run two steps on different hosts at once (one SSH round trip instead of two).

    Waits for both, then raises the first step's error, else the second's.
    """
    errors: list[BaseException] = []

    def run_second() -> None:
        try:
            second()
        except BaseException as error:  # noqa: BLE001 - raised below in the calling thread
            errors.append(error)

    thread = threading.Thread(target=run_second, name="ddm-direct-prepare", daemon=True)
    thread.start()
    try:
        first()
    finally:
        thread.join()
    if errors:
        raise errors[0]


# Verify


class SourceScan(threading.Thread):
    """The verify phase's hashing scan of the source volume, started when the stream starts.

    The source is read by tar and by this scan at about the same time, so the scan uses CPU
    that the stream leaves idle, and the verify phase then scans only the target. A file
    that changes while both read it differs between the scan's digest and the target's copy,
    so verify fails on it, as it does when the relay route hashes the stream.

    After the scan the thread stores the source's hash cache rows through a connection of its
    own to the task database, so that the verify phase need not wait for them. The rows
    describe the source's files alone, so they stay valid whatever verify finds. result()
    waits for the thread and raises its error; close() waits too and deletes the seed's
    database.
    """

    def __init__(self, runner: Any, access: Any, directory: str) -> None:
        super().__init__(name="ddm-direct-source-scan", daemon=True)
        self.source, self.access, self.directory = runner.source, access, directory
        self.store_path = runner.store_path
        self.seed = hashseed.ScanSeed()
        self._scan: hostverify.HostScan | None = None
        self._error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self._scan = hostverify.scan_manifest(self.source, self.access, self.directory,
                                                  hash_content=True, on_record=self.seed.add)
            self._store_seed()
        except BaseException as error:  # noqa: BLE001 - re-raised by result()
            self._error = error

    def _store_seed(self) -> None:
        from ddm.store import TaskStore

        store = TaskStore(self.store_path)
        try:
            hashseed.store_rows(store, hashcache.cache_scope(self.source, self.directory),
                                self.seed.rows())
        finally:
            store.close()

    def store_manifest(self, task_id: str, position: int, mode: VerifyMode) -> Manifest:
        """Store the scan's manifest as the item's record (see recorded_manifest); return it.

        Uses a connection of its own, so that the verify phase can store it while the target
        is scanned (see staged.StagedVolumes.verify_direct).
        """
        from ddm.store import TaskStore

        manifest = recorded_manifest(self.result().manifest, mode)
        store = TaskStore(self.store_path)
        try:
            save_task_manifest(store, task_id, position, manifest)
        finally:
            store.close()
        return manifest

    def result(self) -> hostverify.HostScan:
        """Return the scan once the thread has stored the seed; raise the thread's error."""
        self.join()
        if self._error is not None:
            raise self._error
        assert self._scan is not None
        return self._scan

    def close(self) -> None:
        self.join()
        self.seed.close()


def metadata_only(manifest: Manifest) -> Manifest:
    """Return the manifest with its entries but without content hashing, for the task's record.

    A rollback then compares only the target's metadata with it.
    """
    return Manifest(entries=manifest.entries, hash_content=False)


def recorded_manifest(manifest: Manifest, mode: VerifyMode) -> Manifest:
    """Return the hashing scan's manifest as the task records it for a rollback's check.

    With --verify full it keeps the scan's SHA-256 digests, so that a rollback also finds a
    file rewritten with its old size and mtime (ddmsyncer.rollbackcheck compares SHA-256
    with SHA-256), as it does after a relayed copy with --verify full. Otherwise it keeps
    metadata only, as the relay route does with --verify quick.
    """
    return manifest if mode is VerifyMode.FULL else metadata_only(manifest)


def verify_staging(runner: Any, item: TaskItem, source_directory: str, staging_directory: str,
                   mode: VerifyMode) -> Manifest:
    """Compare host-side scans of the source and the staging volume; return the target's manifest.

    Raises VerificationFailed listing the first differences.
    """
    from ddmsyncer.incremental import scan_both

    hash_mode = "none" if mode is VerifyMode.NONE else "all"
    source_scan, target_scan, _ = scan_both(runner.source, source_directory, runner.target,
                                            staging_directory, hash_mode=hash_mode)
    differences = compare_scans(source_scan, target_scan)
    if differences:
        summary = summarize_scan_differences(differences, MAX_REPORTED_DIFFERENCES, source_scan,
                                             target_scan)
        raise VerificationFailed(
            f"volume {item.target!r} differs from source {item.source!r} in {summary}",
            hint=ROLLED_BACK_VERIFY_HINT,
        )
    return manifest_from_scan(target_scan)


def compare_scans(source: Mapping[bytes, Any], target: Mapping[bytes, Any]
                  ) -> list[tuple[bytes, str]]:
    """Return (path, aspect) for every difference between two host-side scans, in path order.

    Sockets on the source are left out, because tar skips them (a warning names each one).
    The scans are walked side by side (scantable.paired), so only the hard-link groups and
    the differences are held in memory.
    """
    source_groups, target_groups = _link_groups(source), _link_groups(target)
    differences = []
    for path, source_entry, target_entry in paired(source, target):
        if source_entry is not None and source_entry.type == "socket":
            source_entry = None
        if source_entry is None and target_entry is None:
            continue
        if target_entry is None:
            differences.append((path, "missing on target"))
            continue
        if source_entry is None:
            differences.append((path, "extra on target"))
            continue
        differences += [(path, aspect) for aspect in _aspects_differing(source_entry, target_entry)]
        if source_groups.get(path) != target_groups.get(path):
            differences.append((path, "hard links"))
    return differences


def _aspects_differing(source: Any, target: Any) -> list[str]:
    aspects = ("type", "mode", "uid", "gid", "size", "mtime_ns", "link", "rdev", "digest",
               "xattrs")
    names = {"digest": "content", "link": "symlink text", "rdev": "device"}
    return [names.get(aspect, aspect) for aspect in aspects
            if getattr(source, aspect) != getattr(target, aspect)]


def _link_groups(scan: Mapping[bytes, Any]) -> dict[bytes, tuple[bytes, ...]]:
    """Return, for each file with more than one link, the sorted paths of its inode."""
    by_inode: dict[int, list[bytes]] = {}
    for path, entry in scan.items():
        if entry.type == "file" and entry.nlink > 1:
            by_inode.setdefault(entry.inode, []).append(path)
    return {path: tuple(sorted(paths)) for paths in by_inode.values() for path in paths}


def manifest_from_scan(scan: Mapping[bytes, Any]) -> Manifest:
    """Return a metadata-only Manifest of a host-side scan, hard links as in a tar manifest.

    The first path of a hard-link group (in sorted order) is the file, the others are
    "hardlink" entries naming it. The scan's SHA-256 digests are left out, because a
    manifest's digests are xxh3-128. Entries go straight into the manifest's EntryTable.
    """
    entries = EntryTable()
    first_path: dict[int, bytes] = {}
    for path, entry in sorted_items(scan):
        if entry.type not in ("file", "dir", "symlink", "fifo", "char", "block"):
            continue
        kind, linkname = entry.type, entry.link if entry.type == "symlink" else None
        if entry.type == "file" and entry.nlink > 1:
            first = first_path.setdefault(entry.inode, path)
            if first != path:
                kind, linkname = "hardlink", first
        entries.add(ManifestEntry(
            path=path, type=kind, mode=entry.mode, uid=entry.uid, gid=entry.gid, size=entry.size,
            linkname=linkname, devmajor=os.major(entry.rdev), devminor=os.minor(entry.rdev),
            mtime_ns=entry.mtime_ns,
        ))
    return Manifest(entries=entries, hash_content=False)


def _scan(engine: Any, directory: str, hash_mode: str) -> dict[bytes, Any]:
    from ddmsyncer.incremental import scan_volume

    scan, _ = scan_volume(engine, directory, hash_mode=hash_mode)
    return scan


# Cleanup


def remove_leftovers(runner: Any) -> None:
    """Remove every task key and source work directory the task's state still records.

    Raises DDMError when one cannot be removed; its record stays for the next attempt.
    """
    for position in sorted(_records(runner), key=int):
        _remove_item(runner, int(position), raise_errors=True)


def _remove_item(runner: Any, position: int, *, raise_errors: bool) -> None:
    """Remove one item's key from the target and its work directory from the source.

    With raise_errors false (the copy already failed), a failure is logged and recorded as
    a warning, and the record stays so that the rollback tries again.
    """
    from ddmdriver import direct

    record = _records(runner).get(str(position))
    if record is None:
        return
    spec = runner.task.spec
    marker = direct.item_marker(runner.task.id, position)
    try:
        runner.on_host(spec.target_host, lambda target: direct.remove_task_keys(
            target, record["authorized_keys"], marker))
        runner.on_host(spec.source_host, lambda source: direct.cleanup_source(
            source, tuple(record["access_prefix"]), record["work_directory"]))
    except DDMError as error:
        if raise_errors:
            raise
        runner.warn(f"removing the direct-route key of item {position} failed: {error}; the "
                    "rollback tries again")
        return
    _record(runner, position, None)


def _records(runner: Any) -> dict[str, dict[str, Any]]:
    return dict(runner.store.get_extra(runner.task.id).get(EXTRA_KEY) or {})


def _record(runner: Any, position: int, record: dict[str, Any] | None) -> None:
    """Store (or with None, forget) what one item installed; no secret is stored."""
    with _RECORD_LOCK:
        records = _records(runner)
        if record is None:
            records.pop(str(position), None)
        else:
            records[str(position)] = record
        runner.store.set_extra(runner.task.id, **{EXTRA_KEY: records})
