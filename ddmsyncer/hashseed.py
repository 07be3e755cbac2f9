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
  ctime is older than S minus hashcache.RACY_MARGIN_NANOSECONDS.

Why a source row is sound: let c be the ctime both saw. Every change to a file sets its
ctime to the current time, so no change happened between c (plus one clock tick) and the
later of the two stats. tar stats the file after S, and c is more than the margin before S,
so a change during or after tar's read sets a ctime other than c. The file then never shows
key K again, and the row is never used. Otherwise the bytes tar read are the content that
the file has whenever its key is K. Files changed less than the margin before S are not
cached, as in the incremental scans.

A hard-link member carries no content, so its row gets the digest of the member it links to.
Its own pax header still has to match its own lstat. A failed seed only logs, and the copy
goes on.
"""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from ddm.manifest import Manifest
from ddm.store import TaskStore
from ddmsyncer import hashcache
from ddmsyncer.hashcache import CachedHash, FileKey, HashCache

log = logging.getLogger(__name__)

# How long the copy waits for the stat scan's start line before it goes on without a seed.
STAT_START_TIMEOUT_SECONDS = 30.0
RECEIVE_BYTES = 1024 * 1024
# Archive member types whose manifest entry has the file's SHA-256.
SEEDED_TYPES = ("file", "hardlink")
# A volume with more regular files than this is not seeded, and its first re-migration hashes
# every file. The seed keeps every file's key in memory (about 0.5 KiB per file on each side):
# 100,000 files took the controller from 135 to 191 MiB peak RSS, over the 150 MiB goal.
# TODO: keep the keys and ctimes in a temporary SQLite table, as ddm.manifest.EntryTable
# does for manifests, and lift the limit.
SEED_MAX_FILES = 50_000


class ScanSeed:
    """Collects cache rows from hostmanifest.py records made with "keys"."""

    def __init__(self) -> None:
        self.rows: dict[bytes, CachedHash] = {}
        self.racy_files = 0
        self.too_many_files = False

    def add(self, record: list[Any]) -> None:
        """Take one record; store a row for a hashed regular file that did not change lately."""
        kind, size, mtime_ns, inode, sha256 = record[1], record[5], record[6], record[10], record[16]
        if kind != "file" or sha256 is None or len(record) < 20 or self.too_many_files:
            return
        if len(self.rows) >= SEED_MAX_FILES:
            self.too_many_files = True
            self.rows.clear()
            log.info("no hash cache seed from the scan: more than %d files", SEED_MAX_FILES)
            return
        dev, ctime_ns, checked_ns = record[17], record[18], record[19]
        if hashcache.is_racy(ctime_ns, checked_ns):
            self.racy_files += 1
            return
        path = base64.b64decode(record[0])
        self.rows[path] = CachedHash((dev, inode, size, mtime_ns, ctime_ns), sha256)


class SourceSeed:
    """The stat-only scan of the source volume and the ctimes of the copy's tar members.

    start() opens `hostscan.py stat` and waits for its start line, so call it just before
    tar starts. member_check() wraps the builder's member check to note each file's pax
    ctime. rows() joins both with the manifest after the copy.
    """

    def __init__(self, engine: Any, channel: Any, started_ns: int, reader: threading.Thread,
                 keys: dict[bytes, FileKey], failures: list[str]) -> None:
        self.engine = engine
        self.channel = channel
        self.started_ns = started_ns
        self._reader = reader
        self._keys = keys
        self._failures = failures
        self._ctimes: dict[bytes, int] = {}

    @classmethod
    def start(cls, engine: Any, access: Any, directory: str) -> SourceSeed | None:
        """Start the stat scan; return None (after logging why) when it cannot run."""
        from ddmsyncer.incremental import HOST_SCRIPT, LOADER

        argv = access.argv("python3", "-c", LOADER, HOST_SCRIPT, "stat", directory)
        try:
            channel = engine.ssh.open_command(argv)
        except Exception as error:  # noqa: BLE001 - the seed is optional, the copy goes on
            log.info("no hash cache seed for %s:%s: %s", engine.host.name, directory, error)
            return None

        keys: dict[bytes, FileKey] = {}
        failures: list[str] = []
        first_line: list[bytes] = []
        ready = threading.Event()
        reader = threading.Thread(target=_read_stat_lines,
                                  args=(channel, keys, failures, first_line, ready),
                                  name="ddm-seed-stat", daemon=True)
        reader.start()
        started_ns = _started_ns(first_line) if ready.wait(STAT_START_TIMEOUT_SECONDS) else None
        if started_ns is None:
            channel.close()
            log.info("no hash cache seed for %s:%s: the stat scan did not start (%s)",
                     engine.host.name, directory, "; ".join(failures) or "no start line")
            return None
        return cls(engine, channel, started_ns, reader, keys, failures)

    def member_check(self, check: Callable[[Any], None]) -> Callable[[Any], None]:
        """Return a member check that runs `check` and notes the pax ctime of each file."""
        return noting_ctimes(check, self._ctimes, limit=SEED_MAX_FILES)

    def rows(self, manifest: Manifest) -> dict[bytes, CachedHash]:
        """Wait for the stat scan; return the rows whose stream header matches its lstat."""
        self._reader.join()
        status = self.channel.recv_exit_status()
        self.channel.close()
        if status != 0 or self._failures:
            log.info("no hash cache seed for %s: the stat scan failed (exit status %d; %s)",
                     self.engine.host.name, status, "; ".join(self._failures))
            return {}
        if len(self._keys) > SEED_MAX_FILES or len(self._ctimes) > SEED_MAX_FILES:
            log.info("no hash cache seed for %s: more than %d files", self.engine.host.name,
                     SEED_MAX_FILES)
            return {}
        return matching_rows(manifest, self._ctimes, self._keys, self.started_ns)

    def close(self) -> None:
        """Abandon the scan after a failed copy."""
        self.channel.close()


def matching_rows(manifest: Manifest, ctimes: dict[bytes, int], keys: dict[bytes, FileKey],
                  started_ns: int) -> dict[bytes, CachedHash]:
    """Return a row for each file whose pax size, mtime and ctime equal its lstat key.

    Files whose ctime is within the racy margin before the stat scan started are left out.
    """
    rows: dict[bytes, CachedHash] = {}
    for path, ctime_ns in ctimes.items():
        key = keys.get(path)
        entry = manifest.entries.get(path)
        if key is None or entry is None or entry.type not in SEEDED_TYPES or entry.sha256 is None:
            continue
        _, _, size, mtime_ns, stat_ctime_ns = key
        if (entry.size, entry.mtime_ns, ctime_ns) != (size, mtime_ns, stat_ctime_ns):
            continue
        if hashcache.is_racy(stat_ctime_ns, started_ns):
            continue
        rows[path] = CachedHash(key, entry.sha256)
    return rows


def noting_ctimes(check: Callable[[Any], None], ctimes: dict[bytes, int], *,
                  limit: int | None = None) -> Callable[[Any], None]:
    """Return a ManifestBuilder member check that runs `check` and notes each file's pax ctime.

    Past `limit` files it notes one more and then stops, so the caller sees the limit passed.
    """

    def check_and_note(entry: Any) -> None:
        check(entry)
        if limit is not None and len(ctimes) > limit:
            return
        if entry.type in SEEDED_TYPES and entry.ctime_ns is not None:
            ctimes[member_path(entry.path)] = entry.ctime_ns

    return check_and_note


def member_path(path: bytes) -> bytes:
    """Map a member path of the host tar stream ("./a/b") to a volume path ("a/b")."""
    while path.startswith((b"./", b"/")):
        path = path[2:] if path.startswith(b"./") else path[1:]
    path = path.rstrip(b"/")
    return path or b"."


def store_rows(store: TaskStore, scope: str, rows: dict[bytes, CachedHash]) -> None:
    """Replace the cache rows of a scope with `rows`; log instead of raising on a store error.

    Without rows (no seed, or over SEED_MAX_FILES) the scope keeps the rows that earlier
    re-migrations stored, because a stale row only misses and costs one hash.
    """
    if not rows:
        return
    cache = HashCache(store)
    try:
        removed = [path for path in cache.load(scope) if path not in rows]
        cache.save(scope, rows, removed)
    except sqlite3.Error as error:
        log.warning("storing %d hash cache rows of %s failed: %s", len(rows), scope, error)
        return
    log.info("seeded the hash cache of %s with %d files", scope, len(rows))


def _read_stat_lines(channel: Any, keys: dict[bytes, FileKey], failures: list[str],
                     first_line: list[bytes], ready: threading.Event) -> None:
    """Read the stat scan's output into `keys`; set `ready` after its first line."""
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
                if len(keys) > SEED_MAX_FILES:
                    continue  # read on to the end, so that the scan exits normally
                path, dev, inode, size, mtime_ns, ctime_ns = json.loads(line)
                keys[base64.b64decode(path)] = (dev, inode, size, mtime_ns, ctime_ns)
    except (OSError, ValueError) as error:
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
