"""Mappings by path kept in a private temporary SQLite database, for scans of any size.

An incremental update keeps the scans of both hosts, verify keeps those and two more, and
each side's cached digests are looked up while its scan is read. Kept as Python objects,
that took about 300 bytes per entry and scan, so a volume of 100,000 files went over the
controller's memory goal. A DiskMapping keeps its rows in a database that SQLite writes to
a temporary file (in SQLITE_TMPDIR, else TMPDIR, else /var/tmp or /tmp) and deletes when
the mapping is closed or garbage-collected. At most ddm.manifest.TABLE_CACHE_KIB of pages
and TABLE_BATCH_ENTRIES pending rows stay in memory per mapping, whatever the entry count.

Iteration is in the byte order of the paths, the order of `sorted()` on bytes, because
SQLite compares BLOBs with memcmp. paired() walks two such mappings side by side, so that
comparing two scans needs no lookup per path.
"""

from __future__ import annotations

import marshal
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any, Generic, TypeVar

from ddm.manifest import TABLE_BATCH_ENTRIES, TABLE_CACHE_KIB
from ddmsyncer import scanentry
from ddmsyncer.hashcache import CachedHash

Value = TypeVar("Value")
Mapped = TypeVar("Mapped", bound="DiskMapping[Any]")
_MISSING = object()


class DiskMapping(MutableMapping[bytes, Value], Generic[Value]):
    """A mapping of path bytes to values, stored as records in a temporary SQLite database.

    Subclasses define _encode and _decode. One thread may fill a mapping and another read it
    later, but not both at once.
    """

    def __init__(self, items: Mapping[bytes, Value] | Iterable[tuple[bytes, Value]] = ()) -> None:
        self._db = sqlite3.connect("", check_same_thread=False, isolation_level=None)
        self._db.execute(f"PRAGMA cache_size=-{TABLE_CACHE_KIB}")
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE rows (path BLOB PRIMARY KEY, record BLOB NOT NULL)"
                         " WITHOUT ROWID")
        self._pending: dict[bytes, Value] = {}
        self._count: int | None = 0
        self._lock = threading.Lock()
        self.update(items)

    def _encode(self, value: Value) -> bytes:
        raise NotImplementedError

    def _decode(self, path: bytes, record: bytes) -> Value:
        raise NotImplementedError

    def flush(self) -> None:
        """Write the rows added since the last flush to the database."""
        with self._lock:
            if not self._pending:
                return
            rows = [(path, self._encode(value)) for path, value in self._pending.items()]
            self._pending = {}
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO rows VALUES (?, ?)", rows)
            self._db.execute("COMMIT")

    def clone(self: Mapped) -> Mapped:
        """Return a mapping of the same class with a copy of every row, copied page by page."""
        self.flush()
        other = type(self)()
        self._db.backup(other._db)
        other._count = self._count
        return other

    def release_memory(self) -> None:
        """Write pending rows and free SQLite's page cache, for a mapping kept for later."""
        self.flush()
        self._db.execute("PRAGMA shrink_memory")

    def close(self) -> None:
        """Delete the database. The mapping is unusable afterwards."""
        self._pending = {}
        self._db.close()

    def __setitem__(self, path: bytes, value: Value) -> None:
        self._pending[path] = value
        self._count = None
        if len(self._pending) >= TABLE_BATCH_ENTRIES:
            self.flush()

    def __getitem__(self, path: bytes) -> Value:
        value = self._pending.get(path, _MISSING)
        if value is not _MISSING:
            return value  # type: ignore[return-value]
        row = self._db.execute("SELECT record FROM rows WHERE path = ?", (path,)).fetchone()
        if row is None:
            raise KeyError(path)
        return self._decode(path, row[0])

    def __delitem__(self, path: bytes) -> None:
        self.flush()
        cursor = self._db.execute("DELETE FROM rows WHERE path = ?", (path,))
        if cursor.rowcount == 0:
            raise KeyError(path)
        self._count = None

    def __contains__(self, path: object) -> bool:
        if path in self._pending:
            return True
        row = self._db.execute("SELECT 1 FROM rows WHERE path = ?", (path,)).fetchone()
        return row is not None

    def __len__(self) -> int:
        if self._count is None:
            self.flush()
            self._count = self._db.execute("SELECT COUNT(*) FROM rows").fetchone()[0]
        return self._count

    def __iter__(self) -> Iterator[bytes]:
        self.flush()
        for (path,) in self._db.execute("SELECT path FROM rows ORDER BY path"):
            yield path

    def iter_items(self) -> Iterator[tuple[bytes, Value]]:
        """Yield (path, value) in path order, reading the database in one query."""
        self.flush()
        for path, record in self._db.execute("SELECT path, record FROM rows ORDER BY path"):
            yield path, self._decode(path, record)

    def iter_records(self) -> Iterator[tuple[bytes, bytes]]:
        """Yield (path, record) in path order, records as _encode returns them."""
        self.flush()
        yield from self._db.execute("SELECT path, record FROM rows ORDER BY path")

    def add_records(self, rows: Iterable[tuple[bytes, bytes]]) -> None:
        """Add (path, record) rows as iter_records yields them, without decoding them."""
        self.flush()
        with self._lock:
            self._count = None
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO rows VALUES (?, ?)", rows)
            self._db.execute("COMMIT")

    def items(self) -> Any:
        return _Items(self)

    def values(self) -> Any:
        return _Values(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {len(self)} entries>"


class _Items:
    def __init__(self, mapping: DiskMapping[Any]) -> None:
        self._mapping = mapping

    def __iter__(self) -> Iterator[tuple[bytes, Any]]:
        return self._mapping.iter_items()

    def __len__(self) -> int:
        return len(self._mapping)


class _Values:
    def __init__(self, mapping: DiskMapping[Any]) -> None:
        self._mapping = mapping

    def __iter__(self) -> Iterator[Any]:
        return (value for _, value in self._mapping.iter_items())

    def __len__(self) -> int:
        return len(self._mapping)


class EntryMapping(DiskMapping["scanentry.Entry"]):
    """Scan entries by path, each stored as the entry without its path (scanentry.entry_record)."""

    def _encode(self, value: scanentry.Entry) -> bytes:
        return scanentry.entry_record(value)

    def _decode(self, path: bytes, record: bytes) -> scanentry.Entry:
        return scanentry.entry_from_record(path, record)


class KnownHashes(DiskMapping[CachedHash]):
    """Cached digests by path (hashcache.CachedHash), records of 119 bytes per file on disk."""

    def _encode(self, value: CachedHash) -> bytes:
        return marshal.dumps((value.packed_key, value.digest), 2)

    def _decode(self, path: bytes, record: bytes) -> CachedHash:
        packed_key, digest = marshal.loads(record)
        return CachedHash.from_packed(packed_key, digest)


def sorted_items(mapping: Mapping[bytes, Value]) -> Iterator[tuple[bytes, Value]]:
    """Yield a mapping's (path, value) pairs in path order, without sorting a DiskMapping."""
    if isinstance(mapping, DiskMapping):
        return mapping.iter_items()
    return iter(sorted(mapping.items(), key=lambda item: item[0]))


def paired(left: Mapping[bytes, Any], right: Mapping[bytes, Any]
           ) -> Iterator[tuple[bytes, Any, Any]]:
    """Yield (path, left value or None, right value or None) for every path of either, in order.

    A merge of the two mappings' path-ordered items: each is read once, nothing is looked up.
    """
    return _merge(sorted_items(left), sorted_items(right))


def paired_records(left: DiskMapping[Any], right: DiskMapping[Any]
                   ) -> Iterator[tuple[bytes, bytes | None, bytes | None]]:
    """Yield (path, left record or None, right record or None) in path order, undecoded.

    Equal records of one mapping class mean equal values, so a caller can skip decoding them.
    """
    return _merge(left.iter_records(), right.iter_records())


def _merge(left_items: Iterator[tuple[bytes, Any]], right_items: Iterator[tuple[bytes, Any]]
           ) -> Iterator[tuple[bytes, Any, Any]]:
    left_item = next(left_items, None)
    right_item = next(right_items, None)
    while left_item is not None or right_item is not None:
        if right_item is None or (left_item is not None and left_item[0] < right_item[0]):
            yield left_item[0], left_item[1], None  # type: ignore[index]
            left_item = next(left_items, None)
        elif left_item is None or right_item[0] < left_item[0]:
            yield right_item[0], None, right_item[1]
            right_item = next(right_items, None)
        else:
            yield left_item[0], left_item[1], right_item[1]
            left_item = next(left_items, None)
            right_item = next(right_items, None)
