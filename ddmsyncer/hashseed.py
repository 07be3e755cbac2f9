"""Fill the hash cache during a full copy, so that the first incremental re-migration hashes
only the files that changed since.

The cache (ddmsyncer/hashcache.py) stores a file's SHA-256 with its key: device, inode,
size, mtime_ns and ctime_ns from lstat. A full copy on the host data path with a host-side
verify already has a SHA-256 of every file on both sides:

* Target: the verify scan (hostmanifest.py) hashes every file of the staging volume. With
  "keys" it also reports each file's lstat key and the host's clock just before that lstat.
  The rows are stored under the real volume's mountpoint once the staging directory was
  renamed onto it, because the incremental scans key on that mountpoint. rename(2) on one
  file system keeps the device, inode and ctime of the files inside. When the target engine
  copied the data instead, the rows are dropped.
* Source: the controller hashes each file from the tar stream. The stream has no inode, so
  a stat-only scan (`hostscan.py stat`) runs beside the copy. It writes its start time S
  (host clock) first, and tar starts only after the controller read that line. A row is
  stored when the tar member's pax size, mtime and ctime equal the scan's lstat and that
  ctime is older than S minus the racy margin (hashcache.racy_margin_ns).

Why a source row is sound: let c be the ctime both saw. Every change to a file sets its
ctime to the current time, so no change happened between c (plus one clock tick) and the
later of the two stats. tar stats the file after S, and c is more than the margin before S,
so a change during or after tar's read sets a ctime other than c. The file then never shows
key K again, and the row is never used. Otherwise the bytes tar read are the content that
the file has whenever its key is K. Files changed less than the margin before S are not
cached, as in the incremental scans.

Target files that the copy wrote less than the margin before the verify scan reached them
are hashed once more (`hostscan.py rehash`) after the host's clock has passed their ctime
plus the margin. That second hash follows the rule above, and its row is stored when key
and digest equal the verify scan's. Checking the key again without hashing would not do: a
change in the same clock tick as the copy's last write leaves the key as it was.

A hard-link member carries no content, so its row gets the digest of the member it links to.
Its own pax header still has to match its own lstat. A failed seed only logs, and the copy
goes on.

Keys, ctimes and digests wait in a private temporary SQLite database per seed, which keeps at
most SEED_CACHE_KIB of pages in memory, and the rows go to the task database in batches. So
the seed's memory does not grow with the number of files.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from typing import Any

from ddm.manifest import Manifest, ManifestEntry
from ddm.store import TaskStore
from ddmsyncer import hashcache
from ddmsyncer.hashcache import CachedHash, FileKey, HashCache

log = logging.getLogger(__name__)

# How long the copy waits for the stat scan's start line before it goes on without a seed.
STAT_START_TIMEOUT_SECONDS = 30.0
RECEIVE_BYTES = 1024 * 1024
# How long closing a seed waits for its stat reader thread to see the closed channel.
READER_JOIN_SECONDS = 5.0
# Archive member types whose manifest entry has the file's SHA-256.
SEEDED_TYPES = ("file", "hardlink")
# Positions of the fields that add_manifest() reads in EntryTable.iter_values() tuples.
_VALUE_NAMES = tuple(field.name for field in dataclasses.fields(ManifestEntry))[1:]
_TYPE_VALUE = _VALUE_NAMES.index("type")
_SIZE_VALUE = _VALUE_NAMES.index("size")
_MTIME_VALUE = _VALUE_NAMES.index("mtime_ns")
_SHA256_VALUE = _VALUE_NAMES.index("sha256")
# Pages of one seed database that SQLite keeps in memory before it writes them to its
# temporary file, in KiB, and the rows held in Python before they go to SQLite.
SEED_CACHE_KIB = 4096
SEED_BATCH_ROWS = 2000
# The target's recently written files are hashed again only up to this many bytes in total,
# so a large copy does not read much of its target twice. Above it they are not seeded.
REHASH_MAX_BYTES = 256 * 1024 * 1024
# The rehash waits on the host for at most the racy margin plus this much, in nanoseconds,
# so that a file with a ctime in the future cannot hold the copy.
REHASH_EXTRA_WAIT_NANOSECONDS = 1_000_000_000

SeedRow = tuple[bytes, CachedHash]


def open_seed_database() -> sqlite3.Connection:
    """Open a private temporary SQLite database, deleted when it is closed."""
    database = sqlite3.connect("", check_same_thread=False, isolation_level=None)
    database.execute(f"PRAGMA cache_size=-{SEED_CACHE_KIB}")
    database.execute("PRAGMA journal_mode=OFF")
    database.execute("PRAGMA synchronous=OFF")
    return database


class _BatchedTable:
    """Rows for one table of a seed database, inserted SEED_BATCH_ROWS at a time.

    Later rows for a path replace earlier ones. add() may run in one thread while another
    thread adds to another table of the same database. A failed insert (a full temporary
    directory) is logged and sets `error`, and later rows are dropped, so that the copy or
    verify that feeds the seed goes on.
    """

    def __init__(self, database: sqlite3.Connection, lock: threading.Lock, name: str,
                 columns: int) -> None:
        self._database = database
        self._lock = lock
        self._insert = f"INSERT OR REPLACE INTO {name} VALUES ({', '.join('?' * columns)})"
        self._pending: list[tuple[Any, ...]] = []
        self.error: sqlite3.Error | None = None

    def add(self, row: tuple[Any, ...]) -> None:
        if self.error is not None:
            return
        self._pending.append(row)
        if len(self._pending) >= SEED_BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        rows, self._pending = self._pending, []
        if not rows or self.error is not None:
            return
        with self._lock:
            try:
                self._database.execute("BEGIN")
                self._database.executemany(self._insert, rows)
                self._database.execute("COMMIT")
            except sqlite3.Error as error:
                self.error = error
                log.warning("no hash cache seed: writing its temporary database failed: %s",
                            error)
                if self._database.in_transaction:
                    self._database.execute("ROLLBACK")


class SeedJoin:
    """The source seed's three inputs in one temporary database, joined in SQL.

    `members` has the pax ctime of each file member of the copy's tar stream, `stat_keys`
    the lstat key of each regular file from the stat-only scan, and `digests` the manifest's
    size, mtime and SHA-256 of each file and hard link.
    """

    def __init__(self) -> None:
        self._database = open_seed_database()
        self._database.executescript(
            "CREATE TABLE members (path BLOB PRIMARY KEY, ctime_ns INTEGER NOT NULL)"
            " WITHOUT ROWID;"
            "CREATE TABLE stat_keys (path BLOB PRIMARY KEY, dev INTEGER NOT NULL,"
            " inode INTEGER NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,"
            " ctime_ns INTEGER NOT NULL) WITHOUT ROWID;"
            "CREATE TABLE digests (path BLOB PRIMARY KEY, size INTEGER NOT NULL,"
            " mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL) WITHOUT ROWID;"
        )
        lock = threading.Lock()
        self._members = _BatchedTable(self._database, lock, "members", 2)
        self._stat_keys = _BatchedTable(self._database, lock, "stat_keys", 6)
        self._digests = _BatchedTable(self._database, lock, "digests", 4)

    def add_member_ctime(self, path: bytes, ctime_ns: int) -> None:
        self._members.add((path, ctime_ns))

    def add_stat_key(self, path: bytes, key: FileKey) -> None:
        self._stat_keys.add((path, *key))

    def add_manifest(self, manifest: Manifest) -> None:
        """Add the size, mtime and SHA-256 of each file and hard link of `manifest`."""
        add = self._digests.add
        for path, values in manifest.entries.iter_values():
            sha256 = values[_SHA256_VALUE]
            mtime_ns = values[_MTIME_VALUE]
            if values[_TYPE_VALUE] in SEEDED_TYPES and sha256 is not None and mtime_ns is not None:
                add((path, values[_SIZE_VALUE], mtime_ns, sha256))

    def rows(self, started_ns: int) -> Iterator[SeedRow]:
        """Yield a row for each file whose pax size, mtime and ctime equal its lstat key.

        Files whose ctime is within the racy margin before `started_ns`, the stat scan's
        start, are left out. Rows come in path order.
        """
        for table in (self._members, self._stat_keys, self._digests):
            table.flush()
            if table.error is not None:
                return
        query = (
            "SELECT members.path, dev, inode, stat_keys.size, stat_keys.mtime_ns,"
            " stat_keys.ctime_ns, sha256"
            " FROM members JOIN stat_keys USING (path) JOIN digests USING (path)"
            " WHERE digests.size = stat_keys.size AND digests.mtime_ns = stat_keys.mtime_ns"
            " AND members.ctime_ns = stat_keys.ctime_ns"
            f" AND stat_keys.ctime_ns < ? - {hashcache.sql_racy_margin('stat_keys.ctime_ns')}"
            " ORDER BY members.path"
        )
        for path, dev, inode, size, mtime_ns, ctime_ns, sha256 in self._database.execute(
                query, (started_ns,)):
            yield path, CachedHash((dev, inode, size, mtime_ns, ctime_ns), sha256)

    def close(self) -> None:
        """Delete the database."""
        self._database.close()


class ScanSeed:
    """Cache rows from hostmanifest.py records made with "keys", in a temporary database.

    Each hashed regular file is kept with the host's clock before its lstat (checked_ns).
    rows() yields those outside the racy margin. rehash_racy() hashes the others again once
    the margin has passed and takes those whose key and digest did not change.
    """

    def __init__(self) -> None:
        self._database = open_seed_database()
        self._database.execute(
            "CREATE TABLE scanned (path BLOB PRIMARY KEY, dev INTEGER NOT NULL,"
            " inode INTEGER NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,"
            " ctime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL, checked_ns INTEGER NOT NULL)"
            " WITHOUT ROWID"
        )
        self._scanned = _BatchedTable(self._database, threading.Lock(), "scanned", 8)

    def add(self, record: list[Any]) -> None:
        """Take one record of a hashed regular file."""
        kind, size, mtime_ns, inode, sha256 = record[1], record[5], record[6], record[10], record[16]
        if kind != "file" or sha256 is None or len(record) < 20:
            return
        dev, ctime_ns, checked_ns = record[17], record[18], record[19]
        path = base64.b64decode(record[0])
        self._scanned.add((path, dev, inode, size, mtime_ns, ctime_ns, sha256, checked_ns))

    @property
    def racy_files(self) -> int:
        """Return how many hashed files changed within the racy margin before their lstat."""
        self._scanned.flush()
        query = f"SELECT COUNT(*) FROM scanned WHERE {_racy_condition()}"
        return self._database.execute(query).fetchone()[0]

    def rows(self) -> Iterator[SeedRow]:
        """Yield the rows of files that did not change within the racy margin, in path order."""
        self._scanned.flush()
        if self._scanned.error is not None:
            return
        query = ("SELECT path, dev, inode, size, mtime_ns, ctime_ns, sha256 FROM scanned"
                 f" WHERE NOT {_racy_condition()} ORDER BY path")
        for path, dev, inode, size, mtime_ns, ctime_ns, sha256 in self._database.execute(query):
            yield path, CachedHash((dev, inode, size, mtime_ns, ctime_ns), sha256)

    def rehash_racy(self, engine: Any, access: Any, directory: str) -> int:
        """Hash the racy files under `directory` again on the host; return how many now count.

        Waits on the host until its clock has passed the newest racy ctime plus the margin.
        Logs instead of raising when the host command fails.
        """
        self._scanned.flush()
        if self._scanned.error is not None:
            return 0
        count, total_bytes, not_before_ns = self.racy_summary()
        if not count:
            return 0
        if total_bytes > REHASH_MAX_BYTES:
            log.info("not hashing %d recently written files of %s:%s again: %d bytes is more "
                     "than %d", count, engine.host.name, directory, total_bytes, REHASH_MAX_BYTES)
            return 0
        paths = b"".join(path + b"\0" for (path,) in self._database.execute(
            f"SELECT path FROM scanned WHERE {_racy_condition()} ORDER BY path"))
        max_wait_ns = hashcache.RACY_MARGIN_NANOSECONDS + REHASH_EXTRA_WAIT_NANOSECONDS
        try:
            lines = _run_rehash(engine, access, directory, paths, not_before_ns, max_wait_ns)
            confirmed = self._confirm(lines)
        except Exception as error:  # noqa: BLE001 - the seed is optional, the copy goes on
            log.info("hashing the recently written files of %s:%s again failed: %s",
                     engine.host.name, directory, error)
            return 0
        log.info("%d of %d recently written files of %s:%s hashed again for the hash cache",
                 confirmed, count, engine.host.name, directory)
        return confirmed

    def racy_summary(self) -> tuple[int, int, int]:
        """Return the racy files' count and bytes, and the host time when none is racy.

        That time is the host clock, in nanoseconds, at which every racy file's ctime has
        left its margin (0 without racy files).
        """
        self._scanned.flush()
        margin = hashcache.sql_racy_margin("ctime_ns")
        query = (f"SELECT COUNT(*), TOTAL(size), MAX(ctime_ns + {margin}) FROM scanned"
                 f" WHERE {_racy_condition()}")
        count, total_bytes, not_before_ns = self._database.execute(query).fetchone()
        return count, int(total_bytes), not_before_ns or 0

    def confirm(self, records: Iterable[list[Any]]) -> int:
        """Take rehash records [path, dev, inode, size, mtime_ns, ctime_ns, sha256, checked_ns].

        A file counts once its record shows the key and digest of the verify scan and a ctime
        outside the racy margin before the record's checked_ns. Returns how many counted.
        """
        self._scanned.flush()
        update = ("UPDATE scanned SET checked_ns = ? WHERE path = ? AND dev = ? AND inode = ?"
                  " AND size = ? AND mtime_ns = ? AND ctime_ns = ? AND sha256 = ?")
        confirmed = 0
        self._database.execute("BEGIN")
        try:
            for path, dev, inode, size, mtime_ns, ctime_ns, sha256, checked_ns in records:
                if hashcache.is_racy(ctime_ns, checked_ns):
                    continue
                cursor = self._database.execute(update, (checked_ns, base64.b64decode(path),
                                                         dev, inode, size, mtime_ns, ctime_ns,
                                                         sha256))
                confirmed += cursor.rowcount
        finally:
            self._database.execute("COMMIT")
        return confirmed

    def _confirm(self, lines: Iterable[bytes]) -> int:
        return self.confirm(json.loads(line) for line in lines if line)

    def close(self) -> None:
        """Delete the database."""
        self._database.close()


class PendingSourceSeed:
    """A started stat scan of the source volume whose start line has not been read yet.

    open() starts `hostscan.py stat` and returns at once; wait() reads the start line and
    returns the SourceSeed. Between the two, the host starts the scan's login shell and
    python3 while the controller starts other commands, but tar must not read the volume
    before wait() has returned.
    """

    def __init__(self, engine: Any, directory: str, channel: Any) -> None:
        self.engine = engine
        self.directory = directory
        self._channel = channel
        self._join = SeedJoin()
        self._failures: list[str] = []
        self._first_line: list[bytes] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(
            target=_read_stat_lines,
            args=(channel, self._join, self._failures, self._first_line, self._ready),
            name="ddm-seed-stat", daemon=True)
        self._reader.start()

    @classmethod
    def open(cls, engine: Any, access: Any, directory: str) -> PendingSourceSeed | None:
        """Start the stat scan; return None (after logging why) when it cannot start."""
        from ddmsyncer.incremental import HOST_SCRIPT, LOADER

        argv = access.argv("python3", "-c", LOADER, HOST_SCRIPT, "stat", directory)
        try:
            channel = engine.ssh.open_command(argv)
        except Exception as error:  # noqa: BLE001 - the seed is optional, the copy goes on
            log.info("no hash cache seed for %s:%s: %s", engine.host.name, directory, error)
            return None
        return cls(engine, directory, channel)

    def wait(self) -> SourceSeed | None:
        """Wait for the scan's start line; return the seed, or None (logged) without one."""
        ready = self._ready.wait(STAT_START_TIMEOUT_SECONDS)
        started_ns = _started_ns(self._first_line) if ready else None
        if started_ns is None:
            self.close()
            log.info("no hash cache seed for %s:%s: the stat scan did not start (%s)",
                     self.engine.host.name, self.directory,
                     "; ".join(self._failures) or "no start line")
            return None
        return SourceSeed(self.engine, self._channel, started_ns, self._reader, self._join,
                          self._failures)

    def close(self) -> None:
        """End the scan without a seed, when the copy stops before wait()."""
        self._channel.close()
        self._reader.join(READER_JOIN_SECONDS)
        self._join.close()


class SourceSeed:
    """The stat-only scan of the source volume and the ctimes of the copy's tar members.

    start() opens `hostscan.py stat` and waits for its start line, so call it just before
    tar starts. member_check() wraps the builder's member check to note each file's pax
    ctime. rows() joins both with the manifest after the copy.
    """

    def __init__(self, engine: Any, channel: Any, started_ns: int, reader: threading.Thread,
                 join: SeedJoin, failures: list[str]) -> None:
        self.engine = engine
        self.channel = channel
        self.started_ns = started_ns
        self._reader = reader
        self._join = join
        self._failures = failures

    @classmethod
    def start(cls, engine: Any, access: Any, directory: str) -> SourceSeed | None:
        """Start the stat scan; return None (after logging why) when it cannot run."""
        pending = PendingSourceSeed.open(engine, access, directory)
        return None if pending is None else pending.wait()

    def member_check(self, check: Callable[[Any], None]) -> Callable[[Any], None]:
        """Return a member check that runs `check` and notes the pax ctime of each file."""
        return noting_ctimes(check, self._join.add_member_ctime)

    def rows(self, manifest: Manifest) -> Iterator[SeedRow]:
        """Wait for the stat scan; yield the rows whose stream header matches its lstat."""
        self._reader.join()
        status = self.channel.recv_exit_status()
        self.channel.close()
        if status != 0 or self._failures:
            log.info("no hash cache seed for %s: the stat scan failed (exit status %d; %s)",
                     self.engine.host.name, status, "; ".join(self._failures))
            return
        self._join.add_manifest(manifest)
        yield from self._join.rows(self.started_ns)

    def close(self) -> None:
        """End the scan and delete the seed's database; after rows(), or after a failed copy."""
        self.channel.close()
        self._reader.join(READER_JOIN_SECONDS)
        self._join.close()


def noting_ctimes(check: Callable[[Any], None],
                  note: Callable[[bytes, int], None]) -> Callable[[Any], None]:
    """Return a ManifestBuilder member check that runs `check` and notes each file's pax ctime.

    `note` gets the volume path and the ctime in nanoseconds of each file and hard link.
    """

    def check_and_note(entry: Any) -> None:
        check(entry)
        if entry.type in SEEDED_TYPES and entry.ctime_ns is not None:
            note(member_path(entry.path), entry.ctime_ns)

    return check_and_note


def member_path(path: bytes) -> bytes:
    """Map a member path of the host tar stream ("./a/b") to a volume path ("a/b")."""
    while path.startswith((b"./", b"/")):
        path = path[2:] if path.startswith(b"./") else path[1:]
    path = path.rstrip(b"/")
    return path or b"."


def store_rows(store: TaskStore, scope: str, rows: Iterable[SeedRow]) -> int:
    """Replace the cache rows of a scope with `rows`; return how many were stored.

    Logs instead of raising on a store error. Without rows (no seed, or a failed scan) the
    scope keeps the rows that earlier re-migrations stored, because a stale row only misses
    and costs one hash.
    """
    iterator = iter(rows)
    first = next(iterator, None)
    if first is None:
        return 0
    try:
        stored = HashCache(store).replace(scope, chain([first], iterator), SEED_BATCH_ROWS)
    except sqlite3.Error as error:
        log.warning("storing the hash cache rows of %s failed: %s", scope, error)
        return 0
    log.info("seeded the hash cache of %s with %d files", scope, stored)
    return stored


def _racy_condition() -> str:
    """Return the SQL condition of a scanned file whose ctime is racy at its checked_ns."""
    return f"ctime_ns >= checked_ns - {hashcache.sql_racy_margin('ctime_ns')}"


def _run_rehash(engine: Any, access: Any, directory: str, paths: bytes, not_before_ns: int,
                max_wait_ns: int) -> Iterator[bytes]:
    """Run `hostscan.py rehash` on the host; yield its output lines."""
    from ddmsyncer.incremental import HOST_SCRIPT, LOADER

    argv = access.argv("python3", "-c", LOADER, HOST_SCRIPT, "rehash", directory,
                       str(not_before_ns), str(max_wait_ns))
    channel = engine.ssh.open_command(argv)
    try:
        channel.sendall(paths)
        channel.shutdown_write()
        pending = b""
        while chunk := channel.recv(RECEIVE_BYTES):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            yield from lines
        status = channel.recv_exit_status()
    finally:
        channel.close()
    if status != 0:
        raise OSError(f"hostscan.py rehash exited with status {status}")


def _read_stat_lines(channel: Any, join: SeedJoin, failures: list[str],
                     first_line: list[bytes], ready: threading.Event) -> None:
    """Read the stat scan's output into `join`; set `ready` after its first line."""
    pending = b""
    try:
        while chunk := channel.recv(RECEIVE_BYTES):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not ready.is_set():
                    first_line.append(line)
                    ready.set()
                    continue
                path, dev, inode, size, mtime_ns, ctime_ns = json.loads(line)
                join.add_stat_key(base64.b64decode(path), (dev, inode, size, mtime_ns, ctime_ns))
    except (OSError, ValueError, sqlite3.Error) as error:
        failures.append(str(error))
    finally:
        ready.set()


def _started_ns(first_line: list[bytes]) -> int | None:
    if not first_line:
        return None
    try:
        value = json.loads(first_line[0]).get("started_ns")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None
