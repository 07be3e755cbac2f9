"""Incremental re-migration: update a target volume that contains an earlier DDM copy of the source.

When does it apply? The task asks for it (`--incremental`), the target volume exists, and an
earlier task of this store that succeeded copied the same source volume from the same source
host to this target volume on this target host. Without such a task the target is foreign
data and the usual rules apply (refused, or replaced with --force).

How is the update decided? Both hosts scan their mountpoint (ddmsyncer/hostscan.py over SSH):
type, mode, owner, size, mtime, link target and, unless verify is none, the SHA-256 of every
regular file. A file whose device, inode, size, mtime and ctime equal those of an earlier scan
is not hashed again: its digest comes from the controller's cache (ddmsyncer/hashcache.py). A source entry is sent when the target lacks it or differs in any of these; a
target entry that the source lacks is deleted. mtime is compared in whole seconds, because
Docker's archive API, which made the first copy, truncates mtimes to seconds. Only the sent
entries cross the wire, as a tar stream from `tar` on the source to `tar` on the target,
relayed and hashed by the controller. Verification rescans both volumes and compares them
entry by entry. Each host reports only the entries whose lstat key changed since the update's
scan, and the target's host also reports the sent entries. The controller reuses the rest of
the update's scans. The docstring of verify_update lists which files each side hashes again.

How does a failure leave the target as it was? Before any change, the entries the update
replaces or deletes are moved (renamed) into a backup directory beside the mountpoint, after a
journal that also lists the sent paths that do not exist yet and the metadata of the
directories the update rewrites (`stash` in hostscan.py). Unchanged files stay untouched, so
their ctime, and with it their cached hash, stays valid. Rollback (a failed phase, Ctrl-C,
`ddmctl rollback` of an unfinished task, a resumed task) removes the new entries, moves the
stashed ones back and resets the directories' metadata (`unstash`). The cleanup phase of a task
that verified removes the backup. A succeeded incremental task cannot be rolled back.
rename(2) cannot move entries across mounts, so `stash` rejects a target whose mountpoint, or
a directory in it whose entries it would move, is on another mount than the backup directory
(a disk mounted onto `_data`), before it changes anything (SeparateMount).

Requirements: both hosts are ssh:// hosts where the login user can read (source) and write
(target) the volume's mountpoint, with python3 and GNU tar; volumes use the local driver.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import xxhash

from ddm.differences import MAX_REPORTED_DIFFERENCES
from ddm.errors import DDMError, MigrationFailed, TransferFailed, UsageError, VerificationFailed
from ddm.store import TaskStore
from ddm.task import ItemState, TaskItem, TaskState, VerifyMode
from ddmdriver.ssh import exit_detail
from ddmsyncer import hashcache, scanentry, scanstore, updatereport
from ddmsyncer.copyorigin import copying_task
from ddmsyncer.hashcache import CachedHash, HashCache
from ddmsyncer.scandiff import summarize_scan_differences
from ddmsyncer.scanentry import Entry
from ddmsyncer.scantable import EntryMapping, KnownHashes, paired, paired_records
from ddmsyncer.undo import ROLLBACK_ABSENT

log = logging.getLogger(__name__)

HOST_SCRIPT = base64.b64encode(Path(__file__).with_name("hostscan.py").read_bytes()).decode("ascii")
LOADER = "import base64,sys;exec(compile(base64.b64decode(sys.argv.pop(1)),'hostscan','exec'))"
BACKUP_PREFIX = "ddm-backup-"
RELAY_CHUNK = 1024 * 1024
EXTRA_KEY = "incremental"
# Backups made by `stash`; records without this format are `cp -al` copies of older versions.
STASH_FORMAT = "stash"
# hostscan's exit status when `stash` rejects a target on a separate mount; equals its
# SEPARATE_MOUNT_STATUS.
STASH_SEPARATE_MOUNT_STATUS = 3


class SeparateMount(MigrationFailed):
    """`stash` changed nothing because the target volume's data is on another mount than the
    backup directory, so rename(2) would fail with EXDEV."""


class Scan(EntryMapping):
    """Entries of a host-side scan by path, with the scan's hashing counts.

    The entries are kept in a temporary SQLite database (ddmsyncer.scantable), and iteration
    is in path order.
    """

    hashed_files: int = 0  # files the host hashed in this scan
    hashed_bytes: int = 0
    cache_hits: int = 0  # files whose digest came from the controller's cache
    started_ns: int = 0  # the host's clock when the scan started
    reused_entries: int = 0  # entries a rescan took from the earlier scan (rescan_volume)
    # Of a "cached" scan: the digests the host computed, and the known paths it did not find.
    hashed: KnownHashes | None = None
    gone: Sequence[bytes] = ()
    # Of a rescan run with keep_listing: what its host was sent and reported (RescanListing).
    listing: RescanListing | None = None

    def close(self) -> None:
        if self.listing is not None:
            self.listing.close()
            self.listing = None
        super().close()


@dataclass
class RescanListing:
    """The key lines a rescan sent its host, and the entries the host reported.

    A later rescan of the merged scan lists the same keys again, so it sends these lines and
    only corrects the reported entries, instead of making a line for every entry
    (rescan_volume). The lines are kept in a temporary file, about 80 bytes per entry.
    """

    lines: BinaryIO  # the listing without its final "end", read from the start
    reported: Scan
    hash_content: bool  # whether the rescan required digests of the files it listed
    earlier_started_ns: int  # started_ns of the scan whose keys were listed

    def close(self) -> None:
        self.lines.close()
        self.reported.close()


@dataclass
class Plan:
    """Entries an incremental update sends and deletes."""

    send: list[bytes] = field(default_factory=list)
    delete: list[bytes] = field(default_factory=list)
    send_bytes: int = 0  # file data in the tar stream: each inode once, however many names
    # Target entries that the source lacks, each counted: `delete` names only the outermost
    # path of a removed directory, and also paths whose type changed, which are sent again.
    removed_entries: int = 0
    # Target directories whose extended attributes differ from the source's: tar never
    # removes one, so `stash` clears them before tar sets the source's.
    reset_xattrs: list[bytes] = field(default_factory=list)

    @property
    def written_entries(self) -> int:
        """The number of sent entries without the volume root, which tar sends for its mtime."""
        return len(self.send) - (b"." in self.send)


@dataclass
class UpdateResult:
    """Counts of one incremental update, stored in the task for status and benchmarks."""

    plan: Plan
    source_scan: Scan
    target_scan: Scan
    sent_entries: int  # Plan.written_entries: without the volume root
    deleted_entries: int  # Plan.removed_entries
    archive_bytes: int
    scan_bytes: int
    stream_digest: str
    seconds: float
    stored_scans: bool = False  # both volumes were rescanned against stored verified scans
    warnings: list[str] = field(default_factory=list)  # for the task's events


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


class HostCommand:
    """A hostscan.py command started on a host, which waits for its stdin until finish().

    Starting it early moves the SSH channel setup and the start of python3 out of a critical
    section, such as the downtime of a warm cutover: `scan` reads all of stdin before it walks.
    """

    def __init__(self, engine: Any, arguments: list[str]) -> None:
        self.engine = engine
        self.arguments = arguments
        self.channel = engine.ssh.open_command(_host_argv(*arguments))
        self.errors = _drain_stderr(self.channel)
        self.input_sent = False
        self.exit_status: int | None = None  # set when the command ended

    def send_input(self, stdin: bytes | Iterable[bytes]) -> None:
        """Send all of stdin (bytes or chunks) and close it, so finish() and lines() send none."""
        _send_stdin(self.channel, stdin)
        self.channel.shutdown_write()
        self.input_sent = True

    def finish(self, stdin: bytes | Iterable[bytes] = b"") -> bytes:
        """Send stdin (bytes or chunks of bytes), wait for the command to end, return stdout."""
        channel = self.channel
        try:
            if not self.input_sent:
                self.send_input(stdin)
            parts: list[bytes] = []
            while chunk := channel.recv(RELAY_CHUNK):
                parts.append(chunk)
            self.errors.join()
            status = self.exit_status = channel.recv_exit_status()
        finally:
            channel.close()
        self._check(status)
        return b"".join(parts)

    def lines(self, stdin: bytes | Iterable[bytes] = b"") -> Iterator[bytes]:
        """Send stdin and yield stdout line by line, so a long listing is never held whole.

        stdin is bytes or an iterable of chunks, sent as they come. Raises MigrationFailed
        after the last line when the command failed.
        """
        channel = self.channel
        try:
            if not self.input_sent:
                self.send_input(stdin)
            del stdin  # a long listing is not kept while the output is read
            pending = b""
            while chunk := channel.recv(RELAY_CHUNK):
                pending += chunk
                *complete, pending = pending.split(b"\n")
                yield from complete
            if pending:
                yield pending
            self.errors.join()
            status = channel.recv_exit_status()
        finally:
            channel.close()
        self._check(status)

    def _check(self, status: int) -> None:
        if status != 0:
            raise MigrationFailed(
                f"host command {self.arguments[0]} failed on host {self.engine.host.name} with "
                f"{exit_detail(status, self.errors.text[-500:])}",
                hint="incremental migration needs python3 and GNU tar on both hosts",
            )

    def close(self) -> None:
        """Abandon a command that was not finished; the host ends it when its channel closes."""
        self.channel.close()


def open_at_once(*openers: Callable[[], Any]) -> list[Any]:
    """Call each opener in a thread of its own; return their results in order.

    Starting a command waits for two round trips to the host and for its fork, so commands
    opened at once are ready sooner. When an opener fails, the results of the others are
    closed and the first error is raised.
    """
    results: list[Any] = [None] * len(openers)
    failures: list[BaseException] = []

    def call(index: int, opener: Callable[[], Any]) -> None:
        try:
            results[index] = opener()
        except BaseException as error:  # noqa: BLE001 - raised below in the calling thread
            failures.append(error)

    threads = [threading.Thread(target=call, args=(index, opener), name="ddm-open", daemon=True)
               for index, opener in enumerate(openers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    if failures:
        for result in results:
            if result is not None:
                result.close()
        raise failures[0]
    return results


def _send_stdin(channel: Any, stdin: bytes | Iterable[bytes]) -> None:
    chunks = (stdin,) if isinstance(stdin, (bytes, bytearray)) else stdin
    for chunk in chunks:
        if chunk:
            channel.sendall(chunk)


def _run_host(engine: Any, arguments: list[str], stdin: bytes = b"") -> bytes:
    """Run hostscan.py on a host with `stdin`; return its stdout."""
    return HostCommand(engine, arguments).finish(stdin)


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


# Known digests for a "cached" scan: a mapping by path, or (path, CachedHash) pairs read once.
KnownInput = Mapping[bytes, CachedHash] | Iterable[tuple[bytes, CachedHash]]


def scan_volume(engine: Any, mountpoint: str, *, hash_mode: str = "all",
                paths: Iterable[bytes] = (),
                known: KnownInput | None = None,
                command: HostCommand | None = None) -> tuple[Scan, int]:
    """Scan a volume on its host; return the entries by path and the bytes of the scan output.

    hash_mode "cached" sends the keys and digests of `known` (a mapping, or (path,
    CachedHash) pairs read once) to the host. It hashes only the files whose key is not
    among them and reports the known digest of every other file whose key equals the known
    key exactly. The scan's `hashed` then contains the digests the host computed, and `gone`
    the known paths that no longer exist.
    """
    stdin: bytes | Iterable[bytes] = b""
    if hash_mode == "list":
        stdin = b"\0".join(paths)
    elif hash_mode == "cached":
        pairs = known.items() if isinstance(known, Mapping) else known
        stdin = hashcache.known_keys_input(pairs or ())
    if command is None:
        command = HostCommand(engine, ["scan", mountpoint, hash_mode])

    # The generator keeps its own reference to stdin only until it has sent it.
    lines = command.lines(stdin)
    del stdin
    entries, _, output_bytes = _read_scan(lines, cached=hash_mode == "cached")
    return entries, output_bytes


def _read_scan(lines: Iterable[bytes], *, cached: bool = False
               ) -> tuple[Scan, dict[str, Any], int]:
    """Parse the output of hostscan's scan or rescan; return the entries, summary and bytes.

    With `cached` (a scan in "cached" mode), the digests the host computed go to the
    scan's `hashed` table, so that only they are stored in the hash cache, and the
    summary's gone paths to its `gone`. A line with a 16th field carries a known digest.
    """
    entries = Scan()
    if cached:
        entries.hashed = KnownHashes()
    summary: dict[str, Any] = {}
    output_bytes = 0
    # Records are stored as they are parsed, SAVE_BATCH_ROWS at a time, without an Entry
    # per line: a scan line becomes one row and is read back only when compared.
    rows: list[tuple[bytes, bytes]] = []
    loads, b64decode, record_from_fields = json.loads, base64.b64decode, \
        scanentry.record_from_fields
    for line in lines:
        output_bytes += len(line) + 1
        if not line:
            continue
        values = loads(line)
        if isinstance(values, dict):
            summary = values
            entries.hashed_files = values["hashed_files"]
            entries.hashed_bytes = values["hashed_bytes"]
            entries.started_ns = values["started_ns"]
            entries.cache_hits = values.get("cache_hits", 0)
            entries.gone = [b64decode(path) for path in values.get("gone", ())]
            continue
        known_digest = len(values) > SCAN_FIELDS and values.pop() is True
        path = b64decode(values[0])
        if values[7] is not None:
            values[7] = b64decode(values[7])
        rows.append((path, record_from_fields(*values[1:])))
        if len(rows) >= SAVE_BATCH_ROWS:
            entries.add_records(rows)
            rows = []
        # values: path, type, mode, uid, gid, size, mtime_ns, link, rdev, inode, nlink,
        # digest, dev, ctime_ns, xattrs (see hostscan.py)
        if cached and not known_digest and values[1] == "file" and values[11] is not None:
            file_key = (values[12], values[9], values[5], values[6], values[13])
            entries.hashed[path] = CachedHash(file_key, values[11])
    entries.add_records(rows)
    return entries, summary, output_bytes


# Fields of a hostscan.py scan line; a "cached" scan adds one to lines with a known digest.
SCAN_FIELDS = 15


def rescan_volume(engine: Any, mountpoint: str, earlier: Scan, *, hash_content: bool,
                  command: HostCommand | None = None,
                  untrusted: Collection[bytes] = (),
                  keep_listing: bool = False) -> tuple[Scan, int]:
    """Scan a volume again and reuse the entries of `earlier` whose lstat key is unchanged.

    The host lstats every entry and reports in full only those whose (device, inode, size,
    mtime_ns, ctime_ns) differs from the earlier scan's, which it hashes when hash_content
    is set. Entries whose ctime is within the racy margin (hashcache.is_racy) of the earlier
    scan's start are not trusted, because a change in the same clock tick keeps the ctime.
    Neither is a file of `earlier` without a digest when hash_content is set, nor an entry
    whose path is in `untrusted`. The host reports and hashes every untrusted entry. Returns
    the merged scan, equal to a full scan under that rule, and the bytes of the host's output.
    With keep_listing, the merged scan keeps what the host was sent and reported
    (RescanListing), so that a rescan of it sends the same lines again.
    """
    relisted = _relisting(earlier, hash_content, untrusted)
    if relisted is not None:
        merged, listing = relisted
    else:
        merged, listing = _full_listing(earlier, hash_content, untrusted)

    lines_file = None
    if keep_listing:
        lines_file = tempfile.TemporaryFile(prefix="ddm-listing-")
        listing = _copied_to(listing, lines_file)
    if command is None:
        command = HostCommand(engine, ["rescan", mountpoint, "all" if hash_content else "none"])
    try:
        changed, summary, output_bytes = _read_scan(command.lines(listing))
    except BaseException:
        if lines_file is not None:
            lines_file.close()
        merged.close()
        raise

    # Then the gone entries leave and the reported ones replace or join the rest. The host
    # reported every entry it was not sent, so `changed` contains every untrusted one.
    for path in summary["gone"]:
        merged.pop(base64.b64decode(path), None)
    merged.update(changed.items())
    merged.hashed_files, merged.hashed_bytes = changed.hashed_files, changed.hashed_bytes
    merged.started_ns = changed.started_ns
    merged.reused_entries = summary["unchanged"]
    if lines_file is not None:
        merged.listing = RescanListing(lines_file, changed, hash_content, earlier.started_ns)
    else:
        changed.close()
    return merged, output_bytes


def _full_listing(earlier: Scan, hash_content: bool,
                  untrusted: Collection[bytes]) -> tuple[Scan, Iterator[bytes]]:
    """Return a new scan and the listing that fills it with the trusted entries of `earlier`.

    The trusted entries are copied as stored while their keys are listed for the host.
    """
    merged = Scan()
    trusted_key = scanentry.trusted_record_key

    def listing() -> Iterator[bytes]:
        chunk = bytearray()
        copied: list[tuple[bytes, bytes]] = []
        for path, record in earlier.iter_records():
            key = trusted_key(record, earlier.started_ns, need_digest=hash_content)
            if key is not None and path not in untrusted:
                chunk += base64.b64encode(path) + b" " + key + b"\n"
                copied.append((path, record))
            if len(copied) >= SAVE_BATCH_ROWS:
                merged.add_records(copied)
                copied.clear()
            if len(chunk) >= RELAY_CHUNK:
                yield bytes(chunk)
                chunk.clear()
        merged.add_records(copied)
        yield bytes(chunk) + b"end"  # without "end" the host scans nothing

    return merged, listing()


def _relisting(earlier: Scan, hash_content: bool,
               untrusted: Collection[bytes]) -> tuple[Scan, Iterator[bytes]] | None:
    """Return a copy of `earlier` and its listing, made from the rescan that produced it.

    `earlier` is that rescan's merged scan. Its listed entries kept their listed keys and are
    trusted again, because their ctime was before the start of the scan before it. So the
    host gets the same lines, then a line for each entry it reported: the new key of a
    trusted one, and the path alone, which drops the key, for the others and for every
    untrusted path. Returns None when the rescan kept no listing or its rule was weaker.
    """
    previous_listing = earlier.listing
    if previous_listing is None or (hash_content and not previous_listing.hash_content) or \
            previous_listing.earlier_started_ns > earlier.started_ns:  # a host clock set back
        return None

    distrusted = set(untrusted)
    corrections = bytearray()
    trusted_key = scanentry.trusted_record_key
    for path, record in previous_listing.reported.iter_records():
        key = trusted_key(record, earlier.started_ns, need_digest=hash_content)
        if key is None or path in distrusted:
            distrusted.add(path)
        else:
            corrections += base64.b64encode(path) + b" " + key + b"\n"
    for path in distrusted:
        corrections += base64.b64encode(path) + b"\n"

    merged = earlier.clone()
    for path in distrusted:
        merged.pop(path, None)

    def listing() -> Iterator[bytes]:
        previous_listing.lines.seek(0)
        while chunk := previous_listing.lines.read(RELAY_CHUNK):
            yield chunk
        yield bytes(corrections) + b"end"

    return merged, listing()


def _copied_to(listing: Iterator[bytes], lines_file: BinaryIO) -> Iterator[bytes]:
    """Yield the chunks of `listing`, writing each to lines_file without the final "end"."""
    previous = None
    for chunk in listing:
        if previous is not None:
            lines_file.write(previous)
            yield previous
        previous = chunk
    if previous is not None:
        lines_file.write(previous.removesuffix(b"end"))
        yield previous


def _cacheable(entry: Entry | None, started_ns: int) -> CachedHash | None:
    """Return a scanned file's digest and key when they are safe to cache, else None."""
    if entry is None or entry.type != "file" or entry.digest is None:
        return None
    if hashcache.is_racy(entry.ctime_ns, started_ns):
        return None
    return CachedHash(entry.file_key(), entry.digest)


def _save_scan_digests(cache: HashCache, scope: str, scan: Scan,
                       known: Mapping[bytes, CachedHash]) -> None:
    """Store the digests of `scan` that `known` lacks, and forget known paths the scan lacks.

    Both are walked side by side in path order, and the rows are stored in batches, so
    memory does not grow with the file count.
    """
    fresh: dict[bytes, CachedHash] = {}
    removed: list[bytes] = []
    for path, entry, cached in paired(scan, known):
        if entry is None:
            removed.append(path)
            continue
        digest = _cacheable(entry, scan.started_ns)
        if digest is not None and digest != cached:
            fresh[path] = digest
            if len(fresh) >= SAVE_BATCH_ROWS:
                cache.save(scope, fresh, [])
                fresh = {}
    cache.save(scope, fresh, removed)


# Rows per transaction when scan digests are stored.
SAVE_BATCH_ROWS = 2000


def scan_both(source: Any, source_mountpoint: str, target: Any, target_mountpoint: str, *,
              cache: HashCache | None = None, hash_mode: str = "all",
              paths: Iterable[bytes] = (), commands: dict[str, HostCommand] | None = None
              ) -> tuple[Scan, Scan, int]:
    """Scan source and target at once (one thread per host); return both and the output bytes.

    With a cache, the digests the hosts compute are stored in it, and hash_mode "cached"
    hashes only the files the cache has no valid digest for. Without one, "cached" hashes all.
    `commands` are scan commands started earlier with the same mode, by "source" and "target".
    """
    if cache is None and hash_mode == "cached":
        hash_mode = "all"
    sides = {"source": (source, source_mountpoint), "target": (target, target_mountpoint)}
    scopes = {name: hashcache.cache_scope(engine, mountpoint)
              for name, (engine, mountpoint) in sides.items()}
    # Only "cached" sends the stored keys and digests to the hosts. Other modes read them
    # after the scans, one side at a time, into a temporary table (ddmsyncer.scantable).
    preload = cache is not None and hash_mode == "cached"
    # The commands start before the cache is read, so that opening the channels and starting
    # python3 on the hosts overlap with the read. `scan` reads all its stdin before it walks.
    commands = dict(commands or {})
    try:
        for name, (engine, mountpoint) in sides.items():
            if name not in commands:
                commands[name] = HostCommand(engine, ["scan", mountpoint, hash_mode])
    except BaseException:
        _close_all(commands)
        raise
    paths = list(paths)
    results: dict[str, tuple[Scan, int]] = {}
    failures: list[BaseException] = []

    def scan(name: str) -> None:
        engine, mountpoint = sides[name]
        try:
            results[name] = scan_volume(engine, mountpoint, hash_mode=hash_mode, paths=paths,
                                        command=commands.pop(name))
        except BaseException as error:  # noqa: BLE001 - raised below in the calling thread
            failures.append(error)

    def send_known(name: str) -> None:
        # The task database is read in this thread only. The host reads all of its stdin
        # before it walks, so the rows are sent as they are read and never kept.
        if preload:
            commands[name].send_input(cache.known_keys_input(scopes[name]))

    # The source host walks while the controller sends the target's cache rows.
    thread = None
    try:
        send_known("source")
        thread = threading.Thread(target=scan, args=("source",), name="ddm-scan-source",
                                  daemon=True)
        thread.start()
        send_known("target")
        scan("target")
    finally:
        if thread is not None:
            thread.join()
        _close_all(commands)  # left only when sending the cache rows failed
    if failures:
        raise failures[0]

    if cache is not None and hash_mode != "none":
        for name, scope in scopes.items():
            scanned = results[name][0]
            if preload:
                _save_hashed_digests(cache, scope, scanned)
                continue
            side_known = cache.load(scope)
            _save_scan_digests(cache, scope, scanned, side_known)
            side_known.close()
    return results["source"][0], results["target"][0], results["source"][1] + results["target"][1]


def _save_hashed_digests(cache: HashCache, scope: str, scan: Scan) -> None:
    """Store the digests the host computed in a "cached" scan, and forget its gone paths."""
    fresh: dict[bytes, CachedHash] = {}
    for path, cached in (scan.hashed or {}).items():
        if hashcache.is_racy(cached.key[4], scan.started_ns):  # key[4] is the ctime
            continue
        fresh[path] = cached
        if len(fresh) >= SAVE_BATCH_ROWS:
            cache.save(scope, fresh, [])
            fresh = {}
    cache.save(scope, fresh, list(scan.gone))


def _close_all(commands: dict[str, HostCommand]) -> None:
    while commands:
        commands.popitem()[1].close()


# Planning


def plan_update(source: Mapping[bytes, Entry], target: Mapping[bytes, Entry]) -> Plan:
    """Decide which source entries to send and which target entries to delete.

    Both scans are walked side by side in path order (scantable.paired), so the decision
    looks up only the sent paths.
    """
    plan = Plan()
    delete: list[bytes] = []
    linked: dict[int, list[bytes]] = {}  # the names of each multi-link inode of the source
    target_linked: dict[int, list[bytes]] = {}
    for path, entry, existing in _paired_comparisons(source, target):
        _add_link(target_linked, path, existing)
        if entry is None:
            delete.append(path)
            plan.removed_entries += 1
            continue
        key, kind, nlink, inode = entry
        _add_link(linked, path, entry)
        if existing is not None and existing[0] == key:
            continue
        if existing is not None and existing[1] != kind and path != b".":
            delete.append(path)  # tar cannot put a file where a directory is, or back
        elif existing is not None and kind == "dir" and existing[0][-1] != key[-1]:
            plan.reset_xattrs.append(path)  # the key's last field is the xattrs digest
        plan.send.append(path)
    # A name linked to other names on one side only: tar sends the source's links again.
    plan.send += [path for path in _relinked(linked, target_linked)
                  if path not in plan.send and path in source]

    plan.delete = _outermost(sorted(set(delete)))
    plan.send = _with_parents(source, _with_hard_links(source, plan.send, linked) + plan.delete)
    plan.send_bytes = _file_data_bytes(source, plan.send)
    return plan


# (comparison key, type, nlink, inode) of an entry; equal keys mean equal Entry.key().
Comparison = tuple[tuple[Any, ...], str, int, int]


def _paired_comparisons(source: Mapping[bytes, Entry], target: Mapping[bytes, Entry]
                        ) -> Iterator[tuple[bytes, Comparison | None, Comparison | None]]:
    """Yield (path, source comparison or None, target comparison or None) in path order.

    Scans stored in SQLite are compared from their records, without building each Entry,
    because an update compares every entry of both volumes.
    """
    if isinstance(source, EntryMapping) and isinstance(target, EntryMapping):
        compare = scanentry.record_comparison
        for path, source_record, target_record in paired_records(source, target):
            yield (path, None if source_record is None else compare(source_record),
                   None if target_record is None else compare(target_record))
        return
    for path, source_entry, target_entry in paired(source, target):
        yield (path, None if source_entry is None else _entry_comparison(source_entry),
               None if target_entry is None else _entry_comparison(target_entry))


def _add_link(groups: dict[int, list[bytes]], path: bytes, entry: Comparison | None) -> None:
    """Add a multi-link file's name to the names of its inode in `groups`."""
    if entry is not None and entry[1] == "file" and entry[2] > 1:
        groups.setdefault(entry[3], []).append(path)


def _relinked(source_groups: dict[int, list[bytes]], target_groups: dict[int, list[bytes]]
              ) -> list[bytes]:
    """Return the names whose hard links within the volume differ between the two sides.

    A file's group is the set of its volume's names that share its inode, so links from
    outside the volume, which nlink counts too, do not count. The comparison keys leave
    links out, so `ln -f a b` between two equal files changes no key.
    """
    source_of = {name: frozenset(names) for names in source_groups.values() for name in names}
    target_of = {name: frozenset(names) for names in target_groups.values() for name in names}
    return sorted(name for name in source_of.keys() | target_of.keys()
                  if source_of.get(name, frozenset((name,)))
                  != target_of.get(name, frozenset((name,))))


def _entry_comparison(entry: Entry) -> Comparison:
    return entry.key(), entry.type, entry.nlink, entry.inode


def _file_data_bytes(source: Mapping[bytes, Entry], paths: list[bytes]) -> int:
    """Return the file data that tar sends for `paths`, counting each hard-linked inode once.

    tar stores the content of a multi-link file with its first name and the others as hard
    link members without data.
    """
    return _data_bytes(source[path] for path in paths)


def volume_data_bytes(scan: Mapping[bytes, Entry]) -> int:
    """Return the file data of a scanned volume, counting each hard-linked inode once.

    One pass over the entries; only the inodes of multi-link files are kept.
    """
    return _data_bytes(scan.values())


def _data_bytes(entries: Iterable[Entry]) -> int:
    """Sum the sizes of the regular files among `entries`, each multi-link inode once."""
    total = 0
    inodes: set[tuple[int, int]] = set()
    for entry in entries:
        if entry.type != "file":
            continue
        if entry.nlink > 1:
            if (entry.dev, entry.inode) in inodes:
                continue
            inodes.add((entry.dev, entry.inode))
        total += entry.size
    return total


def _with_parents(source: Mapping[bytes, Entry], paths: list[bytes]) -> list[bytes]:
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
    """Drop paths inside another listed path; removing the directory removes them.

    Each path's ancestors are looked up, because in byte order a directory's contents need
    not follow it directly: b"a-b" and b"a.b" sort between b"a" and b"a/b".
    """
    listed = set(paths)
    kept: list[bytes] = []
    for path in paths:
        parent = os.path.dirname(path)
        while parent and parent not in listed:
            parent = os.path.dirname(parent)
        if not parent:
            kept.append(path)
    return kept


def _with_hard_links(source: Mapping[bytes, Entry], send: list[bytes],
                     linked: dict[int, list[bytes]]) -> list[bytes]:
    """Add every other name of a sent multi-link file, so tar archives them as hard links.

    `linked` lists the source's names of each multi-link inode.
    """
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


@dataclass
class TarChannels:
    """The source's `tar -c` and the target's unpacking command, started by open_tar_channels."""

    reader: Any
    writer: Any
    apply: bool  # the writer is hostscan's `apply`, which reads a deletion listing first
    decoder: Any = None  # ddmdriver.codec.StreamDecompressor when the stream is compressed

    def close(self) -> None:
        self.reader.close()
        self.writer.close()


# Extended attributes and ACLs travel with the sent entries, because the scans compare them.
XATTR_OPTIONS = ("--xattrs", "--xattrs-include=*", "--acls")


def open_tar_channels(source: Any, source_mountpoint: str, target: Any, target_mountpoint: str,
                      *, apply: bool, codec: Any = None) -> TarChannels:
    """Start the source's `tar -c` and the target's `tar -x` (or hostscan's `apply`).

    Both wait for their stdin, so they can be started before the paths are known. Closing
    them unused leaves the target unchanged: `tar -x` and `apply` get no archive. With a
    ddmdriver.codec.Codec the hosts compress and decompress the stream; `apply` takes only
    an uncompressed stream.
    """
    from ddmdriver.codec import StreamDecompressor, compressing_argv, decompressing_argv

    if apply and codec is not None:
        raise ValueError("hostscan's apply command takes only an uncompressed tar stream")
    # --sparse keeps holes: without it, a sparse file arrived fully allocated.
    reader_argv = ["tar", "-C", source_mountpoint, "--format=posix", "--numeric-owner", "--sparse",
                   *XATTR_OPTIONS, "--no-recursion", "--null", "-T", "-", "-cf", "-"]
    writer_argv = ["tar", "-C", target_mountpoint, "--numeric-owner", "--same-owner", "-p",
                   *XATTR_OPTIONS, "-xf", "-"]
    decoder = None
    if codec is not None:
        reader_argv = compressing_argv((), reader_argv, codec)
        writer_argv = decompressing_argv((), writer_argv, codec)
        decoder = StreamDecompressor(codec, f"{source.host.name}:{source_mountpoint}")
    if apply:
        writer_argv = _host_argv("apply", target_mountpoint)

    reader = source.ssh.open_command(reader_argv)
    try:
        writer = target.ssh.open_command(writer_argv)
    except BaseException:
        reader.close()
        raise
    return TarChannels(reader, writer, apply, decoder)


def relay_tar(source: Any, source_mountpoint: str, target: Any, target_mountpoint: str,
              paths: list[bytes], on_chunk: Callable[[int], None],
              delete: list[bytes] = (), channels: TarChannels | None = None, *,
              codec: Any = None, on_wire: Callable[[int], None] | None = None
              ) -> tuple[int, str]:
    """Stream `tar` of `paths` from the source to `tar -x` on the target; return (bytes, digest).

    With `delete`, one command on the target removes those paths first and then unpacks the
    stream (hostscan's `apply`), which saves the round trip of a separate delete command.
    `channels` are the two commands from open_tar_channels, started earlier; `delete` needs
    channels opened with apply=True. With a codec (used only when `channels` is None) the
    digest and on_chunk count the tar bytes, and on_wire the compressed bytes.
    """
    if channels is None:
        channels = open_tar_channels(source, source_mountpoint, target, target_mountpoint,
                                     apply=bool(delete), codec=codec)
    if delete and not channels.apply:
        raise ValueError("deleting paths needs tar channels opened with apply=True")
    reader, writer, apply, decoder = (channels.reader, channels.writer, channels.apply,
                                      channels.decoder)
    reader_errors, writer_errors = _drain_stderr(reader), _drain_stderr(writer)
    hasher = xxhash.xxh3_128()
    total = 0
    try:
        if apply:
            listing = b"\0".join(delete)
            writer.sendall(len(listing).to_bytes(8, "big") + listing)
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
            f"with {exit_detail(statuses, (reader_errors.text + ' ' + writer_errors.text)[-500:])}",
            hint="the target was restored from its backup; check the hosts' tar and retry",
        )
    return total, hasher.hexdigest()


def stash_input(plan: Plan) -> bytes:
    """Return the stdin of hostscan's `stash`: the plan's sent and deleted paths."""
    return json.dumps({
        "send": [base64.b64encode(path).decode("ascii") for path in plan.send],
        "delete": [base64.b64encode(path).decode("ascii") for path in plan.delete],
        "reset_xattrs": [base64.b64encode(path).decode("ascii") for path in plan.reset_xattrs],
    }).encode("ascii")


def update_volume(source: Any, source_mountpoint: str, target: Any, target_mountpoint: str, *,
                  task_id: str, hash_content: bool, on_chunk: Callable[[int], None],
                  on_backup: Callable[[str, bool], None],
                  cache: HashCache | None = None, codec: Any = None,
                  on_wire: Callable[[int], None] | None = None) -> UpdateResult:
    """Bring the target volume up to date with the source; back up what changes first.

    on_backup(path, complete) is called before and after the backup is made, so the caller
    can record it for rollback. An update with nothing to send or delete makes no backup.
    """
    started = time.monotonic()
    hash_mode = "none"
    if hash_content:
        hash_mode = "all" if cache is None else "cached"
    sides = (("source", source, source_mountpoint), ("target", target, target_mountpoint))
    # With a verified scan stored for both volumes (ddmsyncer.scanstore), both are rescanned
    # against those instead of scanned in full.
    rescan_mode = "all" if hash_content else "none"
    use_stored = cache is not None and all(
        scanstore.is_stored(cache.store, hashcache.cache_scope(engine, mountpoint))
        for _, engine, mountpoint in sides)
    # The scan commands open first, because python3 must be running on both hosts before
    # they can read the keys that scan_both or _rescan_pair send. The stash and tar commands
    # wait on stdin, so starting them now overlaps their start-up with the scans, and with
    # reading the stored scans. Unused, they are closed and change nothing.
    scans: dict[str, HostCommand] = {}
    stash = channels = stored = None
    problems: list[str] = []
    scan_arguments = {name: ["rescan", mountpoint, rescan_mode] if use_stored else
                      ["scan", mountpoint, hash_mode] for name, _, mountpoint in sides}
    backup = backup_path(target_mountpoint, task_id)
    try:
        scans["source"], scans["target"], stash, channels = open_at_once(
            lambda: HostCommand(source, scan_arguments["source"]),
            lambda: HostCommand(target, scan_arguments["target"]),
            lambda: HostCommand(target, ["stash", target_mountpoint, backup]),
            lambda: open_tar_channels(source, source_mountpoint, target, target_mountpoint,
                                      apply=False, codec=codec))
        if use_stored:
            stored = load_stored_scans(cache.store, source, source_mountpoint, target,
                                       target_mountpoint, problems)
        if use_stored and stored is None:  # a stored scan failed its checks: scan in full
            _close_all(scans)
            for name, engine, mountpoint in sides:
                scans[name] = HostCommand(engine, ["scan", mountpoint, hash_mode])
        result = _update(source, source_mountpoint, target, target_mountpoint,
                         hash_mode=hash_mode, cache=cache, on_chunk=on_chunk,
                         on_backup=on_backup, backup=backup, stash=stash, channels=channels,
                         scans=scans, started=started, on_wire=on_wire, stored=stored)
        result.stored_scans = stored is not None
        result.warnings = problems
        return result
    finally:
        _close_all(scans)
        if stored is not None:
            for scan in stored:
                scan.close()
        if stash is not None:
            stash.close()
        if channels is not None:
            channels.close()


def _update(source: Any, source_mountpoint: str, target: Any, target_mountpoint: str, *,
            hash_mode: str, cache: HashCache | None, on_chunk: Callable[[int], None],
            on_backup: Callable[[str, bool], None], backup: str, stash: HostCommand,
            channels: TarChannels, scans: dict[str, HostCommand], started: float,
            on_wire: Callable[[int], None] | None = None,
            stored: tuple[Scan, Scan] | None = None) -> UpdateResult:
    if stored is None:
        source_scan, target_scan, scan_bytes = scan_both(
            source, source_mountpoint, target, target_mountpoint, cache=cache,
            hash_mode=hash_mode, commands=scans,
        )
    else:
        # Verify rescans the result, and sends the same listing again (_relisting).
        source_scan, target_scan, scan_bytes = _rescan_pair(
            source, source_mountpoint, stored[0], target, target_mountpoint, stored[1],
            hash_content=hash_mode != "none", commands=scans, keep_listing=True)
    scans.clear()  # both closed them
    plan = plan_update(source_scan, target_scan)
    log.info("incremental update of %s: %d entries to send (%d bytes), %d to delete; "
             "hashed %d source and %d target files", target_mountpoint, len(plan.send),
             plan.send_bytes, len(plan.delete), source_scan.hashed_files,
             target_scan.hashed_files)

    if plan.send or plan.delete:
        on_backup(backup, False)
        try:
            stash.finish(stash_input(plan))
        except MigrationFailed:
            if stash.exit_status == STASH_SEPARATE_MOUNT_STATUS:
                raise SeparateMount(f"{stash.errors.text} on host {target.host.name}, so "
                                    f"entries cannot be moved into the backup directory "
                                    f"{backup}") from None
            raise
        on_backup(backup, True)

    archive_bytes, digest = 0, xxhash.xxh3_128().hexdigest()
    if plan.send:
        archive_bytes, digest = relay_tar(source, source_mountpoint, target, target_mountpoint,
                                          plan.send, on_chunk, channels=channels,
                                          on_wire=on_wire)
    return UpdateResult(plan, source_scan, target_scan, plan.written_entries, plan.removed_entries,
                        archive_bytes, scan_bytes, digest, time.monotonic() - started)


def restore_backup(target: Any, target_mountpoint: str, backup: str, *,
                   backup_format: str | None = STASH_FORMAT) -> None:
    """Put the target volume back as it was before the update (no-op without a backup)."""
    command = "unstash" if backup_format == STASH_FORMAT else "restore"
    _run_host(target, [command, target_mountpoint, backup])
    log.info("restored %s from %s", target_mountpoint, backup)


def discard_backup(target: Any, backup: str) -> None:
    _run_host(target, ["discard", backup])


# Verifying


@dataclass
class VerifyResult:
    """Counts of one host-side verification."""

    scan_bytes: int
    hashed_files: dict[str, int]
    cache_hits: dict[str, int]
    reused_entries: int = 0  # source entries taken from the update's scan (rescan_volume)
    target_reused_entries: int = 0  # target entries taken from the update's scan


@dataclass
class UpdateDigests:
    """What verify takes from an update made in this process.

    Both scans of the update are kept. Verify rescans both volumes and reuses every entry
    whose lstat key is unchanged, except the target's sent entries. Both scans are temporary
    SQLite tables (ddmsyncer.scantable), so keeping them until verify ends costs disk, not
    memory.
    """

    sent: list[bytes]
    source_scan: Scan
    target_scan: Scan  # the target before the update
    # (source, target) mountpoints the update worked on; a volume recreated since under the
    # same name has the same mountpoint, and its scan then differs.
    mountpoints: tuple[str, str] | None = None
    # Verify's scan commands by "source" and "target", started by start_verify_scans.
    commands: dict[str, HostCommand] = field(default_factory=dict)

    def close_commands(self) -> None:
        """Close the scan commands that verify did not use; closed unused, they scan nothing."""
        while self.commands:
            self.commands.popitem()[1].close()


def update_digests(update: UpdateResult) -> UpdateDigests:
    # The scans wait for verify, which may come after other volumes' copies (--parallel).
    for scan in (update.source_scan, update.target_scan):
        if isinstance(scan, EntryMapping):
            scan.release_memory()
    return UpdateDigests(list(update.plan.send), update.source_scan, update.target_scan)


def start_verify_scans(source: Any, source_mountpoint: str, target: Any,
                       target_mountpoint: str, update: UpdateDigests, mode: VerifyMode) -> None:
    """Start verify's two scan commands now, so their start-up is not part of the verify phase.

    Both wait for their stdin, which verify_update sends, so they scan the volumes only then.
    """
    update.commands.update(open_verify_scans(source, source_mountpoint, target,
                                             target_mountpoint, mode))


def open_verify_scans(source: Any, source_mountpoint: str, target: Any, target_mountpoint: str,
                      mode: VerifyMode) -> dict[str, HostCommand]:
    """Return verify's two started `rescan` commands by "source" and "target".

    They wait for the listing on stdin and walk only once it ends, so they may be started
    before the update changes the target.
    """
    hash_mode = "all" if mode is VerifyMode.FULL else "none"
    commands: dict[str, HostCommand] = {}
    try:
        commands["source"] = HostCommand(source, ["rescan", source_mountpoint, hash_mode])
        commands["target"] = HostCommand(target, ["rescan", target_mountpoint, hash_mode])
    except BaseException:
        _close_all(commands)
        raise
    return commands


class CommandOpener(threading.Thread):
    """Opens host commands in a thread, so that their channel setup overlaps other work."""

    def __init__(self, open_commands: Callable[[], dict[str, HostCommand]]) -> None:
        super().__init__(name="ddm-open-commands", daemon=True)
        self._open_commands = open_commands
        self._commands: dict[str, HostCommand] = {}
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            self._commands = self._open_commands()
        except BaseException as error:  # noqa: BLE001 - raised by commands() in the caller
            self._error = error

    def commands(self) -> dict[str, HostCommand]:
        """Wait for the opening to end, then return the commands or raise its error."""
        self.join()
        if self._error is not None:
            raise self._error
        return self._commands

    def close(self) -> None:
        """Wait for the opening to end and close every command it opened."""
        self.join()
        _close_all(self._commands)


def verify_update(source: Any, source_mountpoint: str, target: Any, target_mountpoint: str,
                  item: TaskItem, mode: VerifyMode,
                  update: UpdateResult | UpdateDigests | None = None,
                  cache: HashCache | None = None) -> VerifyResult:
    """Compare fresh scans of both volumes; raise VerificationFailed on any difference.

    Every aspect of every entry is compared, and with verify full the SHA-256 of every file's
    content, hashed on each host. Without the update made in this process, files whose key
    matches the cache get the cached digest and every other file is hashed.

    Given the update, both volumes are rescanned (rescan_volume): each host lstats every
    entry and reports, and hashes, only the entries whose device, inode, size, mtime_ns or
    ctime_ns changed since the update's scan or whose ctime was racy at that scan. On the
    target, the sent entries are reported and hashed too. Every other entry keeps its record
    of the update's scan, where each unsent target file had the source's digest.
    """
    full = mode is VerifyMode.FULL
    if isinstance(update, UpdateResult):
        update = update_digests(update)
    if update is not None:
        source_scan, target_scan, scan_bytes = _rescan_both(
            source, source_mountpoint, target, target_mountpoint, update, full=full, cache=cache)
    else:
        source_scan, target_scan, scan_bytes = scan_both(
            source, source_mountpoint, target, target_mountpoint, cache=cache,
            hash_mode="cached" if full else "none")

    _raise_on_differences(source_scan, target_scan, item, content=full)
    if cache is not None and full:
        store_verified_scans(cache.store, source, source_mountpoint, source_scan, target,
                             target_mountpoint, target_scan, item.task_id)
    return VerifyResult(scan_bytes,
                        {"source": source_scan.hashed_files, "target": target_scan.hashed_files},
                        {"source": source_scan.cache_hits, "target": target_scan.cache_hits},
                        source_scan.reused_entries, target_scan.reused_entries)


def verify_target(target: Any, target_mountpoint: str, item: TaskItem, update: UpdateDigests,
                  cache: HashCache | None = None, *, hint: str | None = None) -> VerifyResult:
    """Compare a fresh scan of the target with the update's source scan, with every digest.

    The source is not scanned again, so use it only for a source that cannot have changed
    since its scan, such as the volume of stopped containers. The target is rescanned against the
    update's target scan (rescan_volume) without the sent paths, so its host hashes the sent
    files and every file whose key changed since or was racy at that scan. Uses
    update.commands["target"] when present, a "rescan TARGET all" command.
    """
    try:
        target_scan, scan_bytes = rescan_volume(target, target_mountpoint, update.target_scan,
                                                hash_content=True, untrusted=set(update.sent),
                                                command=update.commands.pop("target", None))
    finally:
        update.close_commands()
    if cache is not None:
        _save_verified_digests(cache, target, target_mountpoint, target_scan, update.target_scan)
    _raise_on_differences(update.source_scan, target_scan, item, content=True, hint=hint)
    return VerifyResult(scan_bytes, {"source": 0, "target": target_scan.hashed_files},
                        {"source": 0, "target": target_scan.cache_hits},
                        len(update.source_scan), target_scan.reused_entries)


def _raise_on_differences(source_scan: Scan, target_scan: Scan, item: TaskItem, *,
                          content: bool, hint: str | None = None) -> None:
    differences = list(_differences(source_scan, target_scan, content=content))
    if differences:
        summary = summarize_scan_differences(differences, MAX_REPORTED_DIFFERENCES, source_scan,
                                             target_scan)
        raise VerificationFailed(
            f"volume {item.target!r} differs from source {item.source!r} after the incremental "
            f"update in {summary}",
            hint=hint or "the target was restored from its backup; run 'ddmverify' to inspect",
        )


def _rescan_both(source: Any, source_mountpoint: str, target: Any, target_mountpoint: str,
                 update: UpdateDigests, *, full: bool, cache: HashCache | None
                 ) -> tuple[Scan, Scan, int]:
    """Rescan source and target against the update's scans, one thread per host.

    The target's sent entries are not taken from the update's scan, which shows them as they
    were before the update, so the target's host reports and hashes them.
    """
    earlier_target = update.target_scan
    try:
        source_scan, target_scan, scan_bytes = _rescan_pair(
            source, source_mountpoint, update.source_scan, target, target_mountpoint,
            earlier_target, hash_content=full, commands=update.commands,
            untrusted_target=set(update.sent))
    finally:
        update.close_commands()
    if cache is not None and full:
        _save_verified_digests(cache, target, target_mountpoint, target_scan, earlier_target)
    return source_scan, target_scan, scan_bytes


def _rescan_pair(source: Any, source_mountpoint: str, earlier_source: Scan, target: Any,
                 target_mountpoint: str, earlier_target: Scan, *, hash_content: bool,
                 commands: dict[str, HostCommand],
                 untrusted_target: Collection[bytes] = (),
                 keep_listing: bool = False) -> tuple[Scan, Scan, int]:
    """Rescan both volumes against earlier scans, one thread per host; return both and the bytes.

    Uses and removes the "rescan" commands in `commands` by "source" and "target" when present.
    keep_listing is rescan_volume's.
    """
    results: dict[str, tuple[Scan, int]] = {}
    failures: list[BaseException] = []
    target_command = commands.pop("target", None)
    source_command = commands.pop("source", None)

    def scan_target() -> None:
        try:
            results["target"] = rescan_volume(target, target_mountpoint, earlier_target,
                                              hash_content=hash_content,
                                              untrusted=untrusted_target,
                                              command=target_command, keep_listing=keep_listing)
        except BaseException as error:  # noqa: BLE001 - raised below in the calling thread
            failures.append(error)

    thread = threading.Thread(target=scan_target, name="ddm-rescan-target", daemon=True)
    thread.start()
    try:
        source_scan, source_bytes = rescan_volume(source, source_mountpoint, earlier_source,
                                                  hash_content=hash_content,
                                                  command=source_command,
                                                  keep_listing=keep_listing)
    finally:
        thread.join()
        for command in (source_command, target_command):
            if command is not None:
                command.close()
    if failures:
        raise failures[0]
    target_scan, target_bytes = results["target"]
    return source_scan, target_scan, source_bytes + target_bytes


def load_stored_scans(store: TaskStore, source: Any, source_mountpoint: str, target: Any,
                      target_mountpoint: str, problems: list[str] | None = None
                      ) -> tuple[Scan, Scan] | None:
    """Return the verified scans stored for both volumes (ddmsyncer.scanstore), or None.

    Both must be stored and intact, because the update then rescans both volumes. Why a
    stored scan was not used is appended to `problems`.
    """
    loaded: list[Scan] = []
    for engine, mountpoint in ((source, source_mountpoint), (target, target_mountpoint)):
        found = scanstore.load(store, hashcache.cache_scope(engine, mountpoint), Scan, problems)
        if found is None:
            break
        scan, started_ns = found
        scan.started_ns = started_ns
        loaded.append(scan)
    if len(loaded) < 2:
        for scan in loaded:
            scan.close()
        return None
    return loaded[0], loaded[1]


def store_verified_scans(store: TaskStore, source: Any, source_mountpoint: str,
                         source_scan: Scan, target: Any, target_mountpoint: str,
                         target_scan: Scan, task_id: str) -> None:
    """Keep both scans of a passed verification for the next update of these volumes."""
    for engine, mountpoint, scan in ((source, source_mountpoint, source_scan),
                                     (target, target_mountpoint, target_scan)):
        scanstore.save(store, hashcache.cache_scope(engine, mountpoint), scan,
                       started_ns=scan.started_ns, task_id=task_id)


def _save_verified_digests(cache: HashCache, target: Any, target_mountpoint: str, scan: Scan,
                           earlier: Scan) -> None:
    """Cache the target digests that verify computed, and forget the target's removed files.

    `earlier` is the update's scan, which stored its digests, so the cache is not loaded.
    The source's rows stay as the update's scan stored them, because a source that changed
    since then fails verification.
    """
    scope = hashcache.cache_scope(target, target_mountpoint)
    fresh: dict[bytes, CachedHash] = {}
    removed: list[bytes] = []
    # Records are compared undecoded: most files are unchanged, with equal records.
    for path, record, before_record in paired_records(scan, earlier):
        if record == before_record:
            continue
        before = None if before_record is None else \
            scanentry.entry_from_record(path, before_record)
        if record is None:
            if before.type == "file":
                removed.append(path)
            continue
        entry = scanentry.entry_from_record(path, record)
        cached = _cacheable(entry, scan.started_ns)
        if cached is None or (before is not None and before.file_key() == cached.key
                              and before.digest == cached.digest):
            continue
        fresh[path] = cached
        if len(fresh) >= SAVE_BATCH_ROWS:
            cache.save(scope, fresh, [])
            fresh = {}
    cache.save(scope, fresh, removed)


def _differences(source: Mapping[bytes, Entry], target: Mapping[bytes, Entry], *,
                 content: bool = True) -> Iterator[tuple[bytes, str]]:
    """Yield (path, aspect) for each difference in path order, then the names whose hard links
    differ (_relinked); without `content` digests are not compared."""
    names = ("type", "mode", "uid", "gid", "size", "mtime", "link", "rdev", "content", "xattrs")
    source_groups: dict[int, list[bytes]] = {}
    target_groups: dict[int, list[bytes]] = {}
    for path, source_entry, target_entry in _paired_comparisons(source, target):
        _add_link(source_groups, path, source_entry)
        _add_link(target_groups, path, target_entry)
        if target_entry is None:
            yield path, "missing on target"
        elif source_entry is None:
            yield path, "extra on target"
        elif source_entry[0] != target_entry[0]:
            # Only differing entries are read again in full, to name the aspects.
            source_key, target_key = source[path].key(), target[path].key()
            for name, left, right in zip(names, source_key, target_key):
                if left != right and (content or name != "content"):
                    yield path, name
    for path in _relinked(source_groups, target_groups):
        if path in source and path in target:  # else reported as missing or extra above
            yield path, "hard links"


# Dry run

MAX_LISTED_PATHS = 20


def plan_dry_run(source: Any, target: Any, item: TaskItem, spec: Any, store: TaskStore,
                 check: Callable[[], Any]) -> dict[str, Any] | None:
    """Return the plan fields of an incremental update of one volume, or None when none applies.

    None means that the real run would not update this volume incrementally (no ssh:// hosts,
    no target volume or no earlier copy), so the caller plans a full copy. Otherwise both hosts
    scan the volume as the real run does, without changing either host. Digests the hosts
    compute are stored in the controller's hash cache, which the real run then reuses.
    `check` runs the usual prepare checks of the volume with the target allowed to exist.
    """
    if not (supports_host_commands(source) and supports_host_commands(target)):
        return None
    if target.volume_inspect(item.target) is None:
        return None
    earlier = earlier_copy(store, "", spec.source_host, spec.target_host, item)
    if earlier is None:
        return None

    volume_check = check()
    source_volume = source.volume_inspect(item.source)
    target_volume = target.volume_inspect(item.target)
    if not source_volume.mountpoint or not target_volume.mountpoint:
        raise MigrationFailed(
            f"cannot find the mountpoints of {item.source!r} and {item.target!r}",
            hint="incremental migration works on volumes of the local driver only",
        )
    hash_content = spec.verify is not VerifyMode.NONE
    source_scan, target_scan, _ = scan_both(
        source, source_volume.mountpoint, target, target_volume.mountpoint,
        cache=HashCache(store), hash_mode="cached" if hash_content else "none",
    )
    plan = plan_update(source_scan, target_scan)
    return {
        "action": "incremental",
        "earlier_task": earlier,
        "driver": volume_check.source_driver,
        "size_bytes": volume_check.size_bytes,
        "data_path": "host",
        "incremental": {
            "send_entries": plan.written_entries,
            "send_bytes": plan.send_bytes,
            "delete_entries": plan.removed_entries,
            "send": [os.fsdecode(path) for path in plan.send[:MAX_LISTED_PATHS]],
            "delete": [os.fsdecode(path) for path in plan.delete[:MAX_LISTED_PATHS]],
            "hashed_files": {"source": source_scan.hashed_files,
                             "target": target_scan.hashed_files},
        },
    }


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
_UPDATES: dict[tuple[str, int], UpdateDigests] = {}
# `discard-later` commands started by verify_item, by (task ID, item position).
_DISCARDS: dict[tuple[str, int], HostCommand] = {}


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
        earlier = copying_task(runner.store, earlier, item)
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

    # Verify's scans are opened in a thread while the update runs, because opening a channel
    # and starting python3 waits on the host. They walk only when verify sends their stdin.
    verify_mode = runner.task.spec.verify
    opener = None
    if verify_mode is not VerifyMode.NONE:
        opener = CommandOpener(lambda: open_verify_scans(
            runner.source, source_mountpoint, runner.target, target_mountpoint, verify_mode))
        opener.start()
    try:
        result = update_volume(
            runner.source, source_mountpoint, runner.target, target_mountpoint,
            task_id=runner.task.id,
            hash_content=verify_mode is not VerifyMode.NONE,
            on_chunk=on_chunk,
            on_backup=lambda backup, complete: _save_record(
                runner, item, backup=backup, backup_complete=complete,
                backup_format=STASH_FORMAT, target_mountpoint=target_mountpoint),
            cache=HashCache(runner.store),
            codec=codec,
            on_wire=lambda count: wire_bytes.__setitem__(0, wire_bytes[0] + count),
        )
    except BaseException as error:
        if opener is not None:
            opener.close()
        if isinstance(error, SeparateMount):
            raise MigrationFailed(
                f"cannot update volume {item.target!r} incrementally: {error}; the volume is "
                "unchanged",
                hint=f"copy the source into a new volume without --incremental (--volume "
                f"{item.source}:NEW_NAME), or move the data from that mount onto the file "
                f"system of {os.path.dirname(target_mountpoint)} and retry",
            ) from None
        raise
    runner.staged.compression.record_result(item, result.archive_bytes, wire_bytes[0])
    for message in result.warnings:
        runner.record("warning", "stored_scan_ignored", message, position=item.position)
    digests = update_digests(result)
    digests.mountpoints = (source_mountpoint, target_mountpoint)
    _UPDATES[(runner.task.id, item.position)] = digests
    if opener is not None:
        digests.commands.update(opener.commands())
    _save_record(runner, item, sent_entries=result.sent_entries,
                 deleted_entries=result.deleted_entries, archive_bytes=result.archive_bytes,
                 scan_bytes=result.scan_bytes, seconds=result.seconds,
                 hashed_files={"source": result.source_scan.hashed_files,
                               "target": result.target_scan.hashed_files},
                 cache_hits={"source": result.source_scan.cache_hits,
                             "target": result.target_scan.cache_hits},
                 reused_entries={"source": result.source_scan.reused_entries,
                                 "target": result.target_scan.reused_entries})
    updatereport.record_update(runner, item, result)
    return result


def verify_item(runner: Any, item: TaskItem) -> None:
    update = _UPDATES.pop((runner.task.id, item.position), None)
    if update is not None and update.mountpoints is not None:
        source_mountpoint, target_mountpoint = update.mountpoints
    else:
        source_mountpoint, target_mountpoint = _mountpoints(runner, item)
    backup = _records(runner).get(str(item.position), {}).get("backup")
    if backup:
        # Started now, it removes the backup only when the cleanup phase of a task that
        # verified sends "discard". Closed unused, it keeps the backup (hostscan's discard-later).
        _DISCARDS[(runner.task.id, item.position)] = HostCommand(
            runner.target, ["discard-later", backup])
    verified = verify_update(runner.source, source_mountpoint, runner.target, target_mountpoint,
                             item, runner.task.spec.verify, update, HashCache(runner.store))
    _save_record(runner, item, verify_scan_bytes=verified.scan_bytes,
                 verify_hashed_files=verified.hashed_files,
                 verify_reused_entries=verified.reused_entries,
                 verify_target_reused_entries=verified.target_reused_entries)
    updatereport.record_update_verified(runner, item, verified)


def discard_backups(runner: Any) -> None:
    """Remove the backups of verified items; called by the cleanup phase of a task that verified."""
    for position, record in _records(runner).items():
        item = runner.task.items[int(position)]
        if record.get("backup") and item.state in (ItemState.VERIFIED, ItemState.UNVERIFIED):
            started = _DISCARDS.pop((runner.task.id, item.position), None)
            if started is None or not _finish_discard(started):
                discard_backup(runner.target, record["backup"])
            _save_record(runner, item, backup=None)
    _close_started_commands(runner)


def _finish_discard(command: HostCommand) -> bool:
    """Tell a started `discard-later` command to remove its backup; return whether it did."""
    try:
        command.finish(b"discard")
    except (DDMError, OSError, EOFError) as error:
        log.warning("started discard of %s failed, running it again: %s",
                    command.arguments[1], error)
        return False
    return True


def _close_started_commands(runner: Any) -> None:
    """Close this task's verify and discard commands that were started early and not used."""
    for key in [key for key in _UPDATES if key[0] == runner.task.id]:
        _UPDATES.pop(key).close_commands()
    for key in [key for key in _DISCARDS if key[0] == runner.task.id]:
        _DISCARDS.pop(key).close()


def check_rollback_allowed(runner: Any) -> None:
    """Raise UsageError when the task succeeded and updated a target volume incrementally.

    The cleanup phase of a succeeded task removed the backups, so nothing could undo the
    update, and a rollback would only mark the task rolled back.
    """
    if runner.task.state is not TaskState.SUCCEEDED:
        return
    records = _records(runner)
    updated = [item for item in runner.task.items
               if records.get(str(item.position), {}).get("sent_entries") is not None]
    if not updated:
        return
    names = ", ".join(repr(item.target) for item in updated)
    volumes = "volume" if len(updated) == 1 else "volumes"
    raise UsageError(
        f"task {runner.task.id} cannot be rolled back: it succeeded and updated {volumes} "
        f"{names} on {runner.task.spec.target_host} incrementally, and its backup is removed",
        hint="the updated volumes stay as they are; to change them, run 'ddmctl migrate' again",
    )


def restore_backups(runner: Any) -> None:
    """Undo every incremental update of the task whose backup still exists."""
    _close_started_commands(runner)
    for position, record in _records(runner).items():
        _undo(runner, runner.task.items[int(position)], record)


def _record_target_gone(runner: Any, item: TaskItem) -> None:
    """Record that an update's target volume is gone, so there is nothing to restore.

    The backup directory was inside the volume's directory and went with it. The event is a
    ROLLBACK_ABSENT one, so `ddmctl rollback` reports the volume absent, not restored.
    """
    host = runner.task.spec.target_host
    runner.record("warning", ROLLBACK_ABSENT, f"volume {item.target!r} no longer exists on "
                  f"{host}, so the rollback could not restore it", position=item.position)
    runner.targets_gone_at_restore.append(item.target)
    _save_record(runner, item, backup=None, backup_complete=False)


def replace_restore_hint(runner: Any, error: BaseException) -> None:
    """Replace the hint of a task's error when its rollback found an updated volume gone.

    Errors of an incremental update are raised with a hint saying that the target was
    restored from its backup, before the rollback runs.
    """
    gone = runner.targets_gone_at_restore
    if not gone or not isinstance(error, DDMError):
        return
    names = ", ".join(repr(name) for name in gone)
    error.hint = (f"volume {names} no longer existed on {runner.task.spec.target_host} when the "
                  "rollback came to restore it, so nothing was restored; find out what removed "
                  "it before you run the migration again")


def _undo(runner: Any, item: TaskItem, record: dict[str, Any]) -> None:
    """Undo the update with its backup.

    A stash backup is undone even when incomplete, because it moved entries out before its
    command ended. A `cp -al` backup of an older version is restored when complete and only
    removed otherwise, because it was made before any change.
    """
    if not record.get("backup"):
        return
    # The fault that stopped the task may have broken the target's connection, so both
    # steps reconnect once (runner.on_host). Restoring from the journal may run again.
    target_host = runner.task.spec.target_host
    if runner.on_host(target_host, lambda target: target.volume_inspect(item.target)) is None:
        _record_target_gone(runner, item)
        return
    # NOTE: a volume removed and created again under its name has the same mountpoint but
    # no backup, so `unstash` finds nothing to do and the update counts as undone.
    backup_format = record.get("backup_format")
    if record.get("backup_complete") or backup_format == STASH_FORMAT:
        runner.on_host(target_host, lambda target: restore_backup(
            target, record["target_mountpoint"], record["backup"], backup_format=backup_format))
        runner.record("info", "restored", f"restored volume {item.target!r} on "
                      f"{target_host} to its state before the task",
                      position=item.position)
    else:
        runner.on_host(target_host, lambda target: discard_backup(target, record["backup"]))
    _save_record(runner, item, backup=None, backup_complete=False)
