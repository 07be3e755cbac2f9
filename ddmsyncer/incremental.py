"""Incremental re-migration: update a target volume that contains an earlier DDM copy of the source.

When does it apply? The task asks for it (`--incremental`), the target volume exists, and an
earlier task of this store that succeeded copied the same source volume from the same source
host to this target volume on this target host. Without such a task the target is foreign
data and the usual rules apply (refused, or replaced with --force).

How is the update decided? Both hosts scan their mountpoint (ddmsyncer/hostscan.py over SSH):
type, mode, owner, size, mtime, link target and, unless verify is none, the SHA-256 of every
regular file. A source entry is sent when the target lacks it or differs in any of these; a
target entry that the source lacks is deleted. mtime is compared in whole seconds, because
Docker's archive API, which made the first copy, truncates mtimes to seconds. Only the sent
entries cross the wire, as a tar stream from `tar` on the source to `tar` on the target,
relayed and hashed by the controller. Verification compares fresh scans of both sides; see
verify_update for which files it hashes again.

How does a failure leave the target as it was? Before any change, the target's volume
directory is copied with hard links (`cp -al`) to a backup beside the mountpoint. GNU tar
unlinks a file before it writes its new content, and deletions only remove names, so no change
reaches a backed-up inode. Rollback (a failed phase, Ctrl-C, `ddmctl rollback` of an
unfinished task, a resumed task) replaces the mountpoint with the backup; the cleanup phase of a
task that verified removes the backup. A succeeded incremental task cannot be rolled back.

Requirements: both hosts are ssh:// hosts where the login user can read (source) and write
(target) the volume's mountpoint, with python3 and GNU tar; volumes use the local driver.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

import xxhash

from ddm.errors import MigrationFailed, TransferFailed, VerificationFailed
from ddm.store import TaskStore
from ddm.task import ItemState, TaskItem, TaskState, VerifyMode

log = logging.getLogger(__name__)

HOST_SCRIPT = base64.b64encode(Path(__file__).with_name("hostscan.py").read_bytes()).decode("ascii")
LOADER = "import base64,sys;exec(compile(base64.b64decode(sys.argv.pop(1)),'hostscan','exec'))"
BACKUP_PREFIX = "ddm-backup-"
RELAY_CHUNK = 1024 * 1024
MAX_REPORTED_DIFFERENCES = 20
EXTRA_KEY = "incremental"


@dataclass(frozen=True)
class Entry:
    """One entry of a host-side scan of a volume."""

    path: bytes
    type: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    link: bytes | None
    rdev: int
    inode: int
    nlink: int
    digest: str | None

    def key(self, *, with_mtime: bool = True) -> tuple[Any, ...]:
        """The aspects compared between source and target."""
        mtime = self.mtime_ns // 1_000_000_000 if with_mtime else None
        return (self.type, self.mode, self.uid, self.gid, self.size, mtime, self.link, self.rdev,
                self.digest)


Scan = dict[bytes, Entry]


@dataclass
class Plan:
    """Entries an incremental update sends and deletes."""

    send: list[bytes] = field(default_factory=list)
    delete: list[bytes] = field(default_factory=list)
    send_bytes: int = 0


@dataclass
class UpdateResult:
    """Counts of one incremental update, stored in the task for status and benchmarks."""

    plan: Plan
    source_scan: Scan
    target_scan: Scan
    sent_entries: int
    deleted_entries: int
    archive_bytes: int
    scan_bytes: int
    stream_digest: str
    seconds: float


# Applicability


def earlier_copy(store: TaskStore, task_id: str, source_host: str, target_host: str,
                 item: TaskItem) -> str | None:
    """Return the ID of an earlier succeeded task that copied this volume pair, or None."""
    for task in store.list_tasks(state=TaskState.SUCCEEDED, limit=1000):
        if task.id == task_id:
            continue
        if task.spec.source_host != source_host or task.spec.target_host != target_host:
            continue
        for earlier in task.items:
            if (earlier.source, earlier.target) == (item.source, item.target) and \
                    earlier.state is ItemState.VERIFIED:
                return task.id
    return None


def supports_host_commands(engine: Any) -> bool:
    return getattr(engine, "ssh", None) is not None


# Host commands


def _host_argv(*arguments: str) -> list[str]:
    return ["python3", "-c", LOADER, HOST_SCRIPT, *arguments]


def _run_host(engine: Any, arguments: list[str], stdin: bytes = b"",
              on_stdout: Callable[[bytes], None] | None = None) -> bytes:
    """Run hostscan.py on a host with `stdin`; return its stdout or hand it to on_stdout."""
    channel = engine.ssh.open_command(_host_argv(*arguments))
    try:
        if stdin:
            channel.sendall(stdin)
        channel.shutdown_write()
        parts: list[bytes] = []
        errors = _drain_stderr(channel)
        while chunk := channel.recv(RELAY_CHUNK):
            if on_stdout is None:
                parts.append(chunk)
            else:
                on_stdout(chunk)
        errors.join()
        status = channel.recv_exit_status()
    finally:
        channel.close()
    if status != 0:
        raise MigrationFailed(
            f"host command {arguments[0]} failed on host {engine.host.name} with exit status "
            f"{status}: {errors.text[-500:]}",
            hint="incremental migration needs python3 and GNU tar on both hosts",
        )
    return b"".join(parts)


class _StderrReader(threading.Thread):
    """Reads a channel's stderr so that a command writing much to it does not stall."""

    def __init__(self, channel: Any) -> None:
        super().__init__(name="ddm-stderr", daemon=True)
        self.channel = channel
        self.parts: list[bytes] = []

    def run(self) -> None:
        while chunk := self.channel.recv_stderr(65536):
            self.parts.append(chunk)

    @property
    def text(self) -> str:
        return b"".join(self.parts).decode("utf-8", "replace").strip()


def _drain_stderr(channel: Any) -> _StderrReader:
    reader = _StderrReader(channel)
    reader.start()
    return reader


def scan_volume(engine: Any, mountpoint: str, *, hash_mode: str = "all",
                paths: Iterable[bytes] = ()) -> tuple[Scan, int]:
    """Scan a volume on its host; return the entries by path and the bytes of the scan output."""
    stdin = b"\0".join(paths) if hash_mode == "list" else b""
    output = _run_host(engine, ["scan", mountpoint, hash_mode], stdin)
    entries: Scan = {}
    for line in output.splitlines():
        values = json.loads(line)
        values[0] = base64.b64decode(values[0])
        values[7] = base64.b64decode(values[7]) if values[7] is not None else None
        entry = Entry(*values)
        entries[entry.path] = entry
    return entries, len(output)


def scan_both(source: Any, source_mountpoint: str, target: Any, target_mountpoint: str,
              **options: Any) -> tuple[Scan, Scan, int]:
    """Scan source and target at once (one thread per host); return both and the output bytes."""
    results: dict[str, tuple[Scan, int]] = {}
    failures: list[BaseException] = []

    def scan(name: str, engine: Any, mountpoint: str) -> None:
        try:
            results[name] = scan_volume(engine, mountpoint, **options)
        except BaseException as error:  # noqa: BLE001 - raised below in the calling thread
            failures.append(error)

    thread = threading.Thread(target=scan, args=("target", target, target_mountpoint), daemon=True)
    thread.start()
    scan("source", source, source_mountpoint)
    thread.join()
    if failures:
        raise failures[0]
    return results["source"][0], results["target"][0], results["source"][1] + results["target"][1]


# Planning


def plan_update(source: Scan, target: Scan) -> Plan:
    """Decide which source entries to send and which target entries to delete."""
    plan = Plan()
    for path, entry in source.items():
        existing = target.get(path)
        if existing is not None and existing.key() == entry.key():
            continue
        if existing is not None and existing.type != entry.type and path != b".":
            plan.delete.append(path)  # tar cannot put a file where a directory is, or back
        plan.send.append(path)
        plan.send_bytes += entry.size

    plan.delete += [path for path in target if path not in source]
    plan.delete = _outermost(sorted(set(plan.delete)))
    plan.send = _with_parents(source, _with_hard_links(source, plan.send) + plan.delete)
    return plan


def _with_parents(source: Scan, paths: list[bytes]) -> list[bytes]:
    """Add the parent directories of sent and deleted paths, parents first.

    Writing or removing a name changes its directory's mtime on the target, so the directory
    is sent too (tar archives it without its contents) and tar sets its mtime last.
    """
    chosen = {path for path in paths if path in source}
    for path in paths:
        parent = os.path.dirname(path)
        while parent:
            if parent in source:
                chosen.add(parent)
            parent = os.path.dirname(parent)
        chosen.add(b".")
    return sorted(chosen, key=lambda path: PurePosixPath(os.fsdecode(path)).parts)


def _outermost(paths: list[bytes]) -> list[bytes]:
    """Drop paths inside another listed path; removing the directory removes them."""
    kept: list[bytes] = []
    for path in paths:
        if kept and path.startswith(kept[-1] + b"/"):
            continue
        kept.append(path)
    return kept


def _with_hard_links(source: Scan, send: list[bytes]) -> list[bytes]:
    """Add every other name of a sent multi-link file, so tar archives them as hard links."""
    linked: dict[int, list[bytes]] = {}
    for entry in source.values():
        if entry.type == "file" and entry.nlink > 1:
            linked.setdefault(entry.inode, []).append(entry.path)
    chosen = set(send)
    for path in send:
        entry = source[path]
        if entry.type == "file" and entry.nlink > 1:
            chosen.update(linked.get(entry.inode, []))
    return list(chosen)


# Applying


def backup_path(mountpoint: str, task_id: str) -> str:
    """Return the backup directory beside a volume's mountpoint."""
    return f"{os.path.dirname(mountpoint.rstrip('/'))}/{BACKUP_PREFIX}{task_id}"


def relay_tar(source: Any, source_mountpoint: str, target: Any, target_mountpoint: str,
              paths: list[bytes], on_chunk: Callable[[int], None], *, codec: Any = None,
              on_wire: Callable[[int], None] | None = None) -> tuple[int, str]:
    """Stream `tar` of `paths` from the source to `tar -x` on the target; return (bytes, digest).

    With a ddmdriver.codec.Codec, the hosts compress and decompress the stream; the digest
    and on_chunk count the tar bytes, and on_wire the compressed bytes.
    """
    from ddmdriver.codec import StreamDecompressor, compressing_argv, decompressing_argv

    reader_argv = ["tar", "-C", source_mountpoint, "--format=posix", "--numeric-owner",
                   "--no-recursion", "--null", "-T", "-", "-cf", "-"]
    writer_argv = ["tar", "-C", target_mountpoint, "--numeric-owner", "--same-owner", "-p", "-xf", "-"]
    decoder = None
    if codec is not None:
        reader_argv = compressing_argv((), reader_argv, codec)
        writer_argv = decompressing_argv((), writer_argv, codec)
        decoder = StreamDecompressor(codec, f"{source.host.name}:{source_mountpoint}")
    reader = source.ssh.open_command(reader_argv)
    writer = target.ssh.open_command(writer_argv)
    reader_errors, writer_errors = _drain_stderr(reader), _drain_stderr(writer)
    hasher = xxhash.xxh3_128()
    total = 0
    try:
        reader.sendall(b"\0".join(paths) + b"\0")
        reader.shutdown_write()
        while chunk := reader.recv(RELAY_CHUNK):
            data = chunk if decoder is None else decoder.decode(chunk)
            hasher.update(data)
            writer.sendall(chunk)
            total += len(data)
            on_chunk(len(data))
            if on_wire is not None:
                on_wire(len(chunk))
        if decoder is not None:
            decoder.finish()
        writer.shutdown_write()
        reader_errors.join()
        writer_errors.join()
        statuses = (reader.recv_exit_status(), writer.recv_exit_status())
    finally:
        reader.close()
        writer.close()

    if statuses != (0, 0):
        raise TransferFailed(
            f"incremental tar stream from {source.host.name} to {target.host.name} failed "
            f"(exit statuses {statuses[0]}, {statuses[1]}): "
            f"{(reader_errors.text + ' ' + writer_errors.text).strip()[-500:]}",
            hint="the target was restored from its backup; check the hosts' tar and retry",
        )
    return total, hasher.hexdigest()


def update_volume(source: Any, source_mountpoint: str, target: Any, target_mountpoint: str, *,
                  task_id: str, hash_content: bool, on_chunk: Callable[[int], None],
                  on_backup: Callable[[str, bool], None], codec: Any = None,
                  on_wire: Callable[[int], None] | None = None) -> UpdateResult:
    """Bring the target volume up to date with the source; back it up first.

    on_backup(path, complete) is called before and after the backup is made, so the caller
    can record it for rollback: a complete backup is restored, a partial one only removed.
    """
    started = time.monotonic()
    source_scan, target_scan, scan_bytes = scan_both(
        source, source_mountpoint, target, target_mountpoint,
        hash_mode="all" if hash_content else "none",
    )
    plan = plan_update(source_scan, target_scan)
    log.info("incremental update of %s: %d entries to send (%d bytes), %d to delete",
             target_mountpoint, len(plan.send), plan.send_bytes, len(plan.delete))

    backup = backup_path(target_mountpoint, task_id)
    on_backup(backup, False)
    _run_host(target, ["backup", target_mountpoint, backup])
    on_backup(backup, True)
    if plan.delete:
        _run_host(target, ["delete", target_mountpoint], b"\0".join(plan.delete))

    archive_bytes, digest = 0, xxhash.xxh3_128().hexdigest()
    if plan.send:
        archive_bytes, digest = relay_tar(source, source_mountpoint, target, target_mountpoint,
                                          plan.send, on_chunk, codec=codec, on_wire=on_wire)
    return UpdateResult(plan, source_scan, target_scan, len(plan.send), len(plan.delete),
                        archive_bytes, scan_bytes, digest, time.monotonic() - started)


def restore_backup(target: Any, target_mountpoint: str, backup: str) -> None:
    """Put the target volume back as it was before the update (no-op without a backup)."""
    _run_host(target, ["restore", target_mountpoint, backup])
    log.info("restored %s from %s", target_mountpoint, backup)


def discard_backup(target: Any, backup: str) -> None:
    _run_host(target, ["discard", backup])


# Verifying


def verify_update(source: Any, source_mountpoint: str, target: Any, target_mountpoint: str,
                  item: TaskItem, mode: VerifyMode, update: UpdateResult | None = None) -> int:
    """Compare fresh scans of both volumes; raise VerificationFailed on any difference.

    Returns the bytes of scan output that crossed the wire. Every aspect of every entry is
    compared, and with verify full the SHA-256 of every file's content, hashed on each host.
    Given the update made in this process, only the sent files are hashed again. A file that
    was not sent had equal hashes on both sides in the update's scans. It keeps them when it
    is still the same inode with the same size and mtime on both sides.
    """
    full = mode is VerifyMode.FULL
    sent = list(update.plan.send) if update is not None else []
    hash_mode = "none"
    if full:
        hash_mode = "all" if update is None else "list"
    source_scan, target_scan, scan_bytes = scan_both(
        source, source_mountpoint, target, target_mountpoint, hash_mode=hash_mode, paths=sent,
    )
    if full and update is not None:
        source_scan = _carry_digests(source_scan, update.source_scan, set(sent))
        target_scan = _carry_digests(target_scan, update.target_scan, set(sent))
    differences = list(_differences(source_scan, target_scan))
    if differences:
        shown = "; ".join(f"{os.fsdecode(path)}: {aspect}"
                          for path, aspect in differences[:MAX_REPORTED_DIFFERENCES])
        raise VerificationFailed(
            f"volume {item.target!r} differs from source {item.source!r} after the incremental "
            f"update in {len(differences)} places: {shown}",
            hint="the target was restored from its backup; run 'ddmverify' to inspect",
        )
    return scan_bytes


def _carry_digests(scan: Scan, earlier: Scan, sent: set[bytes]) -> Scan:
    """Copy the digests of unsent files from the earlier scan when the file is unchanged.

    A file that changed (other inode, size or mtime) keeps digest None, so it differs from
    the other side's and verification fails, which is the safe outcome.
    """
    carried: Scan = {}
    for path, entry in scan.items():
        before = earlier.get(path)
        unchanged = (
            before is not None and entry.type == "file" and path not in sent
            and (before.inode, before.size, before.mtime_ns) == (entry.inode, entry.size, entry.mtime_ns)
        )
        carried[path] = _replace_digest(entry, before.digest) if unchanged else entry
    return carried


def _replace_digest(entry: Entry, digest: str | None) -> Entry:
    return replace(entry, digest=digest)


def _differences(source: Scan, target: Scan) -> Iterator[tuple[bytes, str]]:
    for path in sorted(set(source) | set(target)):
        if path not in target:
            yield path, "missing on target"
        elif path not in source:
            yield path, "extra on target"
        elif source[path].key() != target[path].key():
            names = ("type", "mode", "uid", "gid", "size", "mtime", "link", "rdev", "content")
            for name, left, right in zip(names, source[path].key(), target[path].key()):
                if left != right:
                    yield path, name


# Task runner steps. `runner` is a ddmsyncer.runner.TaskRunner; these functions keep the
# incremental logic out of the runner, which only calls them.


def _records(runner: Any) -> dict[str, dict[str, Any]]:
    return dict(runner.store.get_extra(runner.task.id).get(EXTRA_KEY) or {})


def _save_record(runner: Any, item: TaskItem, **values: Any) -> None:
    with _EXTRA_LOCK:
        records = _records(runner)
        records.setdefault(str(item.position), {}).update(values)
        runner.store.set_extra(runner.task.id, **{EXTRA_KEY: records})


_EXTRA_LOCK = threading.Lock()

# Updates made in this process, by (task ID, item position), for verify_item; a task resumed
# in another process has none and hashes every file again.
_UPDATES: dict[tuple[str, int], UpdateResult] = {}


def select_items(runner: Any) -> dict[int, str]:
    """Return {item position: earlier task ID} for the items to update incrementally."""
    spec = runner.task.spec
    if not spec.options.get("incremental"):
        return {}
    if not (supports_host_commands(runner.source) and supports_host_commands(runner.target)):
        runner.warn("--incremental needs ssh:// hosts for its host-side scans; copying in full")
        return {}

    selected = {}
    for item in runner.pending_items():
        if item.target_created or runner.target.volume_inspect(item.target) is None:
            continue
        earlier = earlier_copy(runner.store, runner.task.id, spec.source_host, spec.target_host, item)
        if earlier is None:
            continue
        selected[item.position] = earlier
        runner.record("info", "incremental", f"volume {item.target!r} on {spec.target_host} holds "
                      f"the copy made by task {earlier}; updating it incrementally",
                      position=item.position)
    return selected


def _mountpoints(runner: Any, item: TaskItem) -> tuple[str, str]:
    source = runner.source.volume_inspect(item.source)
    target = runner.target.volume_inspect(item.target)
    if source is None or target is None or not source.mountpoint or not target.mountpoint:
        raise MigrationFailed(
            f"cannot find the mountpoints of {item.source!r} and {item.target!r}",
            hint="incremental migration works on volumes of the local driver only",
        )
    return source.mountpoint, target.mountpoint


def copy_item(runner: Any, item: TaskItem, on_chunk: Callable[[int], None]) -> UpdateResult:
    """Update one target volume in place, after restoring a backup that a crashed run left."""
    source_mountpoint, target_mountpoint = _mountpoints(runner, item)
    _undo(runner, item, _records(runner).get(str(item.position), {}))
    from ddmsyncer.compression import incremental_codec

    codec = incremental_codec(runner, item, source_mountpoint)
    wire_bytes = [0]

    result = update_volume(
        runner.source, source_mountpoint, runner.target, target_mountpoint,
        task_id=runner.task.id,
        hash_content=runner.task.spec.verify is not VerifyMode.NONE,
        on_chunk=on_chunk,
        on_backup=lambda backup, complete: _save_record(
            runner, item, backup=backup, backup_complete=complete,
            target_mountpoint=target_mountpoint),
        codec=codec,
        on_wire=lambda count: wire_bytes.__setitem__(0, wire_bytes[0] + count),
    )
    runner.staged.compression.record_result(item, result.archive_bytes, wire_bytes[0])
    _UPDATES[(runner.task.id, item.position)] = result
    _save_record(runner, item, sent_entries=result.sent_entries,
                 deleted_entries=result.deleted_entries, archive_bytes=result.archive_bytes,
                 scan_bytes=result.scan_bytes, seconds=result.seconds)
    return result


def verify_item(runner: Any, item: TaskItem) -> None:
    source_mountpoint, target_mountpoint = _mountpoints(runner, item)
    update = _UPDATES.pop((runner.task.id, item.position), None)
    scan_bytes = verify_update(runner.source, source_mountpoint, runner.target, target_mountpoint,
                               item, runner.task.spec.verify, update)
    _save_record(runner, item, verify_scan_bytes=scan_bytes)


def discard_backups(runner: Any) -> None:
    """Remove the backups of verified items; called by the cleanup phase of a task that verified."""
    for position, record in _records(runner).items():
        item = runner.task.items[int(position)]
        if record.get("backup") and item.state in (ItemState.VERIFIED, ItemState.UNVERIFIED):
            discard_backup(runner.target, record["backup"])
            _save_record(runner, item, backup=None)


def restore_backups(runner: Any) -> None:
    """Undo every incremental update of the task whose backup still exists."""
    for position, record in _records(runner).items():
        _undo(runner, runner.task.items[int(position)], record)


def _undo(runner: Any, item: TaskItem, record: dict[str, Any]) -> None:
    """Restore a complete backup, or remove a partial one (made before any change)."""
    if not record.get("backup"):
        return
    if record.get("backup_complete"):
        restore_backup(runner.target, record["target_mountpoint"], record["backup"])
        runner.record("info", "restored", f"restored volume {item.target!r} on "
                      f"{runner.task.spec.target_host} to its state before the task",
                      position=item.position)
    else:
        discard_backup(runner.target, record["backup"])
    _save_record(runner, item, backup=None, backup_complete=False)
