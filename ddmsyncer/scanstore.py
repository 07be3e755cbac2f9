"""Verified scans of volumes, kept in the task database for the next incremental update.

When an incremental update verifies with content digests, its final scans of both volumes
are what each host held at that moment. They are stored by cache scope (host URL and
mountpoint, hashcache.cache_scope), and the next update of either volume rescans against
them (incremental.rescan_volume): the host lstats every entry but reports and hashes only
those whose (device, inode, size, mtime_ns, ctime_ns) key changed or whose ctime was racy
when the stored scan started. That is the trust rule of the hash cache and of verify's
rescan, and it has the same limits (see ddmsyncer.hashcache). A stored scan that is old
costs only work, because every entry changed since is reported in full.

A scan is stored as a head (JSON: started_ns, entries, chunks, task_id) and chunks of
marshalled (path, record) rows, records as ddmsyncer.scanentry.entry_record writes them.
The head and each chunk carry an xxh3-128 checksum over the scope and their bytes, checked
before anything is unmarshalled. A scan that fails a check is not used and the update scans
in full. As with the hash cache, the checksums find damage, not a person who can write the
task database on purpose.
"""

from __future__ import annotations

import json
import logging
import marshal
import sqlite3
from collections.abc import Callable, Iterator
from typing import TypeVar

import xxhash

from ddm.store import TaskStore
from ddmsyncer.scantable import EntryMapping

log = logging.getLogger(__name__)

CHUNK_ROWS = 2000
Mapped = TypeVar("Mapped", bound=EntryMapping)


def _checksum(scope: str, label: str, data: bytes) -> str:
    hasher = xxhash.xxh3_128()
    for part in (scope.encode("utf-8"), label.encode("ascii"), data):
        hasher.update(len(part).to_bytes(8, "big"))
        hasher.update(part)
    return hasher.hexdigest()


def save(store: TaskStore, scope: str, scan: EntryMapping, *, started_ns: int,
         task_id: str) -> int:
    """Store `scan` as the verified scan of `scope`, replacing the one before; return its entries."""
    entries = 0

    def chunks() -> Iterator[tuple[bytes, str]]:
        nonlocal entries
        rows: list[tuple[bytes, bytes]] = []
        number = 0
        for row in scan.iter_records():
            rows.append(row)
            if len(rows) >= CHUNK_ROWS:
                yield _chunk(scope, number, rows)
                entries += len(rows)
                number += 1
                rows = []
        if rows:
            yield _chunk(scope, number, rows)
            entries += len(rows)

    def head_of(chunk_count: int) -> tuple[str, str]:
        head = json.dumps({"started_ns": started_ns, "entries": entries, "chunks": chunk_count,
                           "task_id": task_id}, sort_keys=True)
        return head, _checksum(scope, "head", head.encode("utf-8"))

    store.replace_volume_scan(scope, chunks(), head_of)
    return entries


def _chunk(scope: str, number: int, rows: list[tuple[bytes, bytes]]) -> tuple[bytes, str]:
    data = marshal.dumps(rows, 2)
    return data, _checksum(scope, f"chunk {number}", data)


def is_stored(store: TaskStore, scope: str) -> bool:
    """Return whether a scan of `scope` is stored; load() still checks it."""
    return store.has_volume_scan(scope)


class StoredScanError(Exception):
    """A stored scan failed a check, which the message names."""


def load(store: TaskStore, scope: str, new_mapping: Callable[[], Mapped],
         problems: list[str] | None = None) -> tuple[Mapped, int] | None:
    """Return the stored scan of `scope` in a mapping from new_mapping(), and its started_ns.

    None means that no usable scan is stored: none was, or one failed its checks. A failed
    check is logged as a warning and its message appended to `problems`. Reads the task
    database in the calling thread.
    """
    if not store.has_volume_scan(scope):
        return None
    mapping = new_mapping()
    try:
        started_ns = _load(store, scope, mapping)
    except (StoredScanError, sqlite3.Error) as error:
        mapping.close()
        message = f"ignored the stored scan of {scope}: {error}; the volume is scanned in full"
        log.warning("%s", message)
        if problems is not None:
            problems.append(message)
        return None
    except BaseException:
        mapping.close()
        raise
    return mapping, started_ns


def _load(store: TaskStore, scope: str, into: EntryMapping) -> int:
    stored = store.get_volume_scan_head(scope)
    if stored is None:
        raise StoredScanError("it was deleted while it was read")
    head_text, head_checksum = stored
    if not isinstance(head_text, str) or not isinstance(head_checksum, str):
        raise StoredScanError("its head is not text")
    if _checksum(scope, "head", head_text.encode("utf-8")) != head_checksum:
        raise StoredScanError("its head fails its checksum")
    try:
        head = json.loads(head_text)
        chunk_count, entry_count = int(head["chunks"]), int(head["entries"])
        started_ns = int(head["started_ns"])
    except (ValueError, KeyError, TypeError) as error:
        raise StoredScanError(f"its head cannot be read: {error!r}") from None

    entries = 0
    for number, rows in _checked_chunks(store, scope):
        if number >= chunk_count:
            raise StoredScanError(f"it has more than the {chunk_count} chunks of its head")
        into.add_records(rows)
        entries += len(rows)
    if entries != entry_count:
        raise StoredScanError(f"it has {entries} entries, but its head records {entry_count}")
    return started_ns


def _checked_chunks(store: TaskStore, scope: str) -> Iterator[tuple[int, list[tuple[bytes, bytes]]]]:
    expected = 0
    for number, data, checksum in store.iter_volume_scan_chunks(scope):
        if number != expected:
            raise StoredScanError(f"chunk {expected} is missing")
        if not isinstance(data, bytes) or not isinstance(checksum, str):
            raise StoredScanError(f"chunk {number} is not a blob with a text checksum")
        if _checksum(scope, f"chunk {number}", data) != checksum:
            raise StoredScanError(f"chunk {number} fails its checksum")
        expected += 1
        yield number, _rows(data, number)


def _rows(data: bytes, number: int) -> list[tuple[bytes, bytes]]:
    try:
        rows = marshal.loads(data)
    except (EOFError, ValueError, TypeError) as error:
        raise StoredScanError(f"chunk {number} cannot be read: {error}") from None
    if not isinstance(rows, list) or not all(
            isinstance(row, tuple) and len(row) == 2 and isinstance(row[0], bytes)
            and isinstance(row[1], bytes) for row in rows):
        raise StoredScanError(f"chunk {number} does not contain (path, record) rows")
    return rows
