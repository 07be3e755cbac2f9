"""Per-file manifests of a volume, built from its tar stream, and their comparison.

`ManifestBuilder` reads the tar stream of a volume while DDM copies it. Its entries go to an
`EntryTable`, a temporary SQLite database that keeps a few MiB in memory and the rest on
disk, so memory depends neither on file sizes nor on the number of files.
`compare_manifests()` lists the differences between the manifests of the source and the
target volume, reading both in path order side by side.

Check levels:

* `QUICK_ASPECTS` compare metadata and sizes: presence, type, mode, owner, size, link,
  mtime (whole seconds), xattrs, acl and device. They need no content hashing.
* `DEEP_ASPECTS` add "content", the xxh3-128 digest of each file, so both manifests must
  be built with `hash_content=True`.
* "mtime_ns" and "sparse" are in no default set. Docker's archive endpoint (moby's
  pkg/archive) truncates mtimes to whole seconds and writes no sparse files, so the two
  would differ from a GNU tar archive of the same volume.

NOTE: moby's pkg/archive also copies only the security.capability xattr (and, in newer
versions, security.ima) and no ACLs. So "xattrs" and "acl" compare equal only when both
manifests come from the same archive producer.

JSON format (`Manifest.to_json()`, version 1):

    {"format": "ddm-manifest", "version": 1, "hash_content": true,
     "bytes_fed": 10240, "stream_digest": "<32 hex digits>" or null,
     "entries": [{"path": "a/b", "type": "file", "mode": 420, "uid": 0, "gid": 0,
                  "size": 5, "mtime_ns": 1700000000123456789, "digest": "<32 hex>"}, ...]}

Entries are sorted by the bytes of their path. Every entry has path, type, mode, uid, gid
and size. The other keys appear only when they carry information:

* mtime_ns, acl_access, acl_default, digest and sha256 are omitted when None;
* linkname appears for symlinks and hard links, devmajor and devminor for devices;
* xattrs, omitted when None, is a list of [name, value] pairs sorted by name;
* sparse appears only as true.

Byte strings (path, linkname, xattr names and values) and ACL texts are a JSON string when
they are valid UTF-8, and otherwise an object {"base64": "<standard base64>"}, so any path
survives the round trip.

A manifest can also be written in parts (`json_header()` and `json_chunks()`): the document
above with "entries": null and "entry_chunks": N, followed by N JSON arrays of entries in
path order. The task database stores source manifests this way (ddm.manifest_store).
"""

from __future__ import annotations

import base64
import binascii
import collections
import dataclasses
import hashlib
import json
import logging
import marshal
import operator
import sqlite3
import threading
from collections.abc import Callable, ItemsView, Iterable, Iterator, Mapping, ValuesView
from dataclasses import dataclass, field
from typing import Any

import xxhash

from ddm.errors import DDMError
from ddm.piecehash import PIECE_BYTES, content_hasher, is_pieced_size
from ddm.tarstream import TarEntry, TarStreamError, TarStreamParser, display_path

__all__ = [
    "ALL_ASPECTS",
    "DEEP_ASPECTS",
    "ENTRY_TYPES",
    "QUICK_ASPECTS",
    "Difference",
    "EntryTable",
    "Manifest",
    "ManifestBuilder",
    "ManifestEntry",
    "ManifestError",
    "compare_manifests",
    "display_path",
]

logger = logging.getLogger(__name__)

ENTRY_TYPES = ("file", "dir", "symlink", "hardlink", "fifo", "char", "block")

QUICK_ASPECTS = (
    "presence",
    "type",
    "mode",
    "owner",
    "size",
    "link",
    "mtime",
    "xattrs",
    "acl",
    "device",
)
DEEP_ASPECTS = (*QUICK_ASPECTS, "content")
ALL_ASPECTS = (*DEEP_ASPECTS, "mtime_ns", "sparse")

# Aspects that only make sense between entries of the same type. When the "type" aspect
# reports a difference, these are not compared for that path.
_TYPE_DEPENDENT_ASPECTS = frozenset(("size", "link", "content", "sparse", "device"))

FORMAT_NAME = "ddm-manifest"
FORMAT_VERSION = 1


class ManifestError(DDMError):
    """A tar stream or manifest that cannot be read, or a comparison that cannot run.

    `offset` is the byte offset in the tar stream when the error comes from the stream.
    """

    def __init__(self, message: str, *, offset: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.offset = offset


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One path of a volume.

    For a hard link, size, digest and sparse are those of the link target.
    """

    path: bytes  # relative to the volume root, which is b"."
    type: str  # one of ENTRY_TYPES
    mode: int  # permission bits with setuid, setgid and sticky (07777)
    uid: int
    gid: int
    size: int  # content size (the real size for sparse files), 0 for non-files
    linkname: bytes | None = None  # symlink text, or the hard-link target's path
    devmajor: int = 0
    devminor: int = 0
    mtime_ns: int | None = None  # seconds * 10**9, plus nanoseconds when the archive has them
    xattrs: dict[bytes, bytes] | None = None
    acl_access: str | None = None
    acl_default: str | None = None
    sparse: bool = False
    digest: str | None = None  # xxh3-128 hex digest of the content, None for non-files
    # SHA-256 hex digest of the content, in the pieced form of ddm.piecehash for large files,
    # only from a builder made with sha256=True. A host with python3 can compute it without
    # the xxhash module (ddmsyncer.hostverify).
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class Difference:
    """One aspect of one path that differs between the source and the target manifest.

    For "presence", source and target are the entry types, or None where the path is
    missing. For the other aspects they are the compared values: "owner" is (uid, gid),
    "acl" is (acl_access, acl_default), "device" is (devmajor, devminor), and "link" is the
    symlink text or the sorted tuple of paths of a hard-link group. A path whose "mtime"
    (whole seconds) differs gets no "mtime_ns" difference as well. ddm.differences renders
    the values as text and JSON.
    """

    path: bytes
    aspect: str
    source: object
    target: object

    def describe(self) -> str:
        """Return one line for humans, with the path and values escaped by display_path()."""
        from ddm.differences import describe_value  # ddm.differences imports this module

        return (
            f"{display_path(self.path)}: {self.aspect} differs "
            f"(source {describe_value(self.aspect, self.source)}, "
            f"target {describe_value(self.aspect, self.target)})"
        )


# Every ManifestEntry field but the path, in declaration order. EntryTable stores these values
# as one marshal record, so a new field needs no change here, as long as its values are
# None, bool, int, str, bytes, or tuples and dicts of these.
_RECORD_FIELDS = tuple(item.name for item in dataclasses.fields(ManifestEntry))[1:]
_record_values = operator.attrgetter(*_RECORD_FIELDS)
# marshal format 2 writes no back-references (those came with format 3), so equal values
# always give equal bytes, however the objects in them are shared. compare_manifests() skips
# entries with equal records.
_MARSHAL_VERSION = 2

# The field order in which ManifestBuilder passes an entry's values to EntryTable.add_values.
_BUILDER_FIELDS = ("type", "mode", "uid", "gid", "size", "linkname", "devmajor", "devminor",
                   "mtime_ns", "xattrs", "acl_access", "acl_default", "sparse", "digest", "sha256")
if _RECORD_FIELDS != _BUILDER_FIELDS:
    raise ImportError("ManifestEntry fields changed: update _BUILDER_FIELDS and "
                      "ManifestBuilder._finish_entry to the new order")
_TYPE_INDEX = _RECORD_FIELDS.index("type")
_XATTRS_INDEX = _RECORD_FIELDS.index("xattrs")
_DIGEST_INDEX = _RECORD_FIELDS.index("digest")
_SHA256_INDEX = _RECORD_FIELDS.index("sha256")

def _record_bytes(values: tuple[Any, ...]) -> bytes:
    """Return the marshal record of an entry's values, with its xattrs sorted by name.

    Archives and host scans list xattrs in different orders, and marshal keeps a dict's order.
    """
    xattrs = values[_XATTRS_INDEX]
    if xattrs is not None and len(xattrs) > 1:
        xattrs = dict(sorted(xattrs.items()))
        values = (*values[:_XATTRS_INDEX], xattrs, *values[_XATTRS_INDEX + 1:])
    return marshal.dumps(values, _MARSHAL_VERSION)


# Pages of one EntryTable that SQLite keeps in memory before it writes them to its temporary
# file, in KiB, and the number of added entries held in Python before they go to SQLite.
TABLE_CACHE_KIB = 4096
TABLE_BATCH_ENTRIES = 2000


class EntryTable(Mapping[bytes, ManifestEntry]):
    """Manifest entries keyed by path, stored in a private temporary SQLite database.

    SQLite keeps up to TABLE_CACHE_KIB of the database in memory and writes the rest to a
    temporary file, which it deletes when the table is closed or garbage-collected. So memory
    stays flat however many entries a volume has. Iteration is in the byte order of the
    paths, as `sorted()` orders bytes. Adding an entry for a path that is already in the
    table replaces it. A table may be filled in one thread and read in another, but not
    both at once.
    """

    def __init__(self, entries: Iterable[ManifestEntry] = ()) -> None:
        self._db = sqlite3.connect("", check_same_thread=False, isolation_level=None)
        self._db.execute(f"PRAGMA cache_size=-{TABLE_CACHE_KIB}")
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(
            "CREATE TABLE entries (path BLOB PRIMARY KEY, hardlink INTEGER NOT NULL,"
            " record BLOB NOT NULL) WITHOUT ROWID"
        )
        # Entries not yet written, as their values in _RECORD_FIELDS order.
        self._pending: dict[bytes, tuple[Any, ...]] = {}
        self._count: int | None = 0
        self._lock = threading.Lock()
        for entry in entries:
            self.add(entry)

    def add(self, entry: ManifestEntry) -> None:
        """Add `entry` under its path, replacing an earlier entry for that path."""
        self.add_values(entry.path, _record_values(entry))

    def add_values(self, path: bytes, values: tuple[Any, ...]) -> None:
        """Add the entry of `path` given as its other field values, in _RECORD_FIELDS order.

        This skips building a ManifestEntry, whose frozen __init__ costs a few microseconds,
        for builders that add one entry per archive member.
        """
        self._pending[path] = values
        self._count = None
        if len(self._pending) >= TABLE_BATCH_ENTRIES:
            self.flush()

    def flush(self) -> None:
        """Write the entries added since the last flush to the database."""
        with self._lock:
            if not self._pending:
                return
            rows = [
                (path, values[_TYPE_INDEX] == "hardlink", _record_bytes(values))
                for path, values in self._pending.items()
            ]
            self._pending = {}
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?, ?)", rows)
            self._db.execute("COMMIT")

    def close(self) -> None:
        """Delete the database. The table is unusable afterwards."""
        self._pending = {}
        self._db.close()

    def __getitem__(self, path: bytes) -> ManifestEntry:
        values = self._pending.get(path)
        if values is not None:
            return ManifestEntry(path, *values)
        row = self._db.execute("SELECT record FROM entries WHERE path = ?", (path,)).fetchone()
        if row is None:
            raise KeyError(path)
        return ManifestEntry(path, *marshal.loads(row[0]))

    def __contains__(self, path: object) -> bool:
        if path in self._pending:
            return True
        row = self._db.execute("SELECT 1 FROM entries WHERE path = ?", (path,)).fetchone()
        return row is not None

    def __len__(self) -> int:
        if self._count is None:
            self.flush()
            self._count = self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        return self._count

    def __iter__(self) -> Iterator[bytes]:
        self.flush()
        for (path,) in self._db.execute("SELECT path FROM entries ORDER BY path"):
            yield path

    def __repr__(self) -> str:
        return f"<EntryTable of {len(self)} entries>"

    def items(self) -> ItemsView[bytes, ManifestEntry]:
        return _TableItems(self)

    def values(self) -> ValuesView[ManifestEntry]:
        return _TableValues(self)

    def iter_entries(self, *, hardlinks_only: bool = False) -> Iterator[ManifestEntry]:
        """Yield the entries in path order, or only the hard links."""
        self.flush()
        query = "SELECT path, record FROM entries"
        if hardlinks_only:
            query += " WHERE hardlink"
        for path, record in self._db.execute(query + " ORDER BY path"):
            yield ManifestEntry(path, *marshal.loads(record))

    def iter_records(self) -> Iterator[tuple[bytes, bytes]]:
        """Yield (path, record) in path order, where decode() turns a record into an entry.

        Equal records mean equal entries, so a comparison can skip decoding them. Unequal
        records may still decode to equal entries.
        """
        self.flush()
        yield from self._db.execute("SELECT path, record FROM entries ORDER BY path")

    def iter_values(self) -> Iterator[tuple[bytes, tuple[Any, ...]]]:
        """Yield (path, values) in path order, the values in ManifestEntry's field order after path.

        It builds no ManifestEntry, so callers that read a few fields of every entry take
        about a third of the time of iter_entries() (CPython 3.11.7, 100,000 entries).
        """
        self.flush()
        for path, record in self._db.execute("SELECT path, record FROM entries ORDER BY path"):
            yield path, marshal.loads(record)

    @staticmethod
    def decode(path: bytes, record: bytes) -> ManifestEntry:
        return ManifestEntry(path, *marshal.loads(record))

    def sha256_copy(self) -> EntryTable | None:
        """Return a copy in which each file's content digest is its SHA-256.

        Returns None when a file has no SHA-256. Records are rewritten without building
        entries, which takes less than half the time of replacing each entry.
        """
        self.flush()
        copy = EntryTable()
        rows: list[tuple[bytes, bool, bytes]] = []
        query = "SELECT path, hardlink, record FROM entries ORDER BY path"
        for path, hardlink, record in self._db.execute(query):
            values = marshal.loads(record)
            if values[_TYPE_INDEX] == "file":
                if values[_SHA256_INDEX] is None:
                    copy.close()
                    return None
                values = (*values[:_DIGEST_INDEX], values[_SHA256_INDEX], *values[_DIGEST_INDEX + 1:])
                record = marshal.dumps(values, _MARSHAL_VERSION)
            rows.append((path, hardlink, record))
            if len(rows) >= TABLE_BATCH_ENTRIES:
                copy._insert_rows(rows)
                rows = []
        copy._insert_rows(rows)
        return copy

    def _insert_rows(self, rows: list[tuple[bytes, bool, bytes]]) -> None:
        with self._lock:
            self._count = None
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?, ?)", rows)
            self._db.execute("COMMIT")


class _TableItems(ItemsView[bytes, ManifestEntry]):
    _mapping: EntryTable

    def __iter__(self) -> Iterator[tuple[bytes, ManifestEntry]]:
        for entry in self._mapping.iter_entries():
            yield entry.path, entry


class _TableValues(ValuesView[ManifestEntry]):
    _mapping: EntryTable

    def __iter__(self) -> Iterator[ManifestEntry]:
        return self._mapping.iter_entries()


@dataclass(eq=False)
class Manifest:
    """All entries of a volume, with the digest and length of the tar stream they came from.

    `entries` may be given as a mapping of path to entry or as an EntryTable. It is always
    an EntryTable afterwards, so a manifest of any size costs about the same memory.
    """

    entries: EntryTable = field(default_factory=EntryTable)
    stream_digest: str | None = None  # xxh3-128 over every byte fed, trailing bytes included
    bytes_fed: int = 0
    hash_content: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.entries, EntryTable):
            return
        given: Mapping[bytes, ManifestEntry] = self.entries
        table = EntryTable()
        for path, entry in given.items():
            table.add(entry if entry.path == path else dataclasses.replace(entry, path=path))
        self.entries = table

    def __len__(self) -> int:
        return len(self.entries)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Manifest):
            return NotImplemented
        if (self.stream_digest, self.bytes_fed, self.hash_content) != (
            other.stream_digest, other.bytes_fed, other.hash_content
        ):
            return False
        if len(self.entries) != len(other.entries):
            return False
        pairs = zip(self.entries.iter_entries(), other.entries.iter_entries(), strict=True)
        return all(mine == theirs for mine, theirs in pairs)

    __hash__ = None  # type: ignore[assignment]

    def close(self) -> None:
        """Delete the entry table's temporary database."""
        self.entries.close()

    @property
    def total_file_bytes(self) -> int:
        """Sum of the sizes of regular files, counting each hard-link group once."""
        return sum(entry.size for entry in self.entries.values() if entry.type == "file")

    def counts_by_type(self) -> dict[str, int]:
        """Return the number of entries of each type in ENTRY_TYPES, zeros included."""
        counts = dict.fromkeys(ENTRY_TYPES, 0)
        for entry in self.entries.values():
            counts[entry.type] += 1
        return counts

    def to_json(self, *, indent: int | None = None) -> str:
        """Serialize the manifest in the JSON format described in the module documentation.

        The result contains every entry in one string. json_header() and json_chunks() write
        the same entries in parts of bounded size.
        """
        document = self._header_document()
        document["entries"] = [_entry_to_json(entry) for entry in self.entries.values()]
        return json.dumps(document, indent=indent, ensure_ascii=False)

    def json_header(self, chunk_count: int) -> str:
        """Return the document of a manifest stored in parts: to_json() without the entries.

        Its "entries" is null and "entry_chunks" is the number of json_chunks() parts,
        so a reader that knows only the whole document rejects it instead of reading an
        empty manifest.
        """
        document = self._header_document()
        document["entries"] = None
        document["entry_chunks"] = chunk_count
        return json.dumps(document, ensure_ascii=False)

    def json_chunks(self, entries_per_chunk: int = 1000) -> Iterator[str]:
        """Yield the entries in path order as JSON arrays of at most `entries_per_chunk`."""
        chunk: list[dict[str, object]] = []
        for path, values in self.entries.iter_values():
            chunk.append(_entry_to_json(_EntryFields(path, *values)))
            if len(chunk) >= entries_per_chunk:
                yield json.dumps(chunk, ensure_ascii=False)
                chunk = []
        if chunk:
            yield json.dumps(chunk, ensure_ascii=False)

    def _header_document(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "hash_content": self.hash_content,
            "bytes_fed": self.bytes_fed,
            "stream_digest": self.stream_digest,
        }

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse a manifest written by to_json() and raise ManifestError when it is invalid."""
        try:
            document = json.loads(text)
            return cls._from_document(document, None)
        except (ValueError, TypeError, KeyError, binascii.Error) as error:
            raise ManifestError(f"invalid manifest JSON: {error}") from error

    @classmethod
    def from_json_chunks(cls, header: str | bytes, chunks: Iterable[str | bytes]) -> Manifest:
        """Parse a manifest written as json_header() and json_chunks(), or by to_json().

        Raises ManifestError when it is invalid or when parts are missing.
        """
        try:
            document = json.loads(header)
            return cls._from_document(document, chunks)
        except (ValueError, TypeError, KeyError, binascii.Error) as error:
            raise ManifestError(f"invalid manifest JSON: {error}") from error

    @classmethod
    def _from_document(cls, document: Any, chunks: Iterable[str | bytes] | None) -> Manifest:
        if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
            raise ValueError(f'"format" is not "{FORMAT_NAME}"')
        if document.get("version") != FORMAT_VERSION:
            raise ValueError(f"unsupported version {document.get('version')!r}")

        table = EntryTable()
        reader = _EntryReader(table)
        if document["entries"] is None and chunks is not None:
            expected = _json_int(document, "entry_chunks")
            read = 0
            for chunk in chunks:
                reader.read_all(json.loads(chunk))
                read += 1
            if read != expected:
                raise ValueError(f"{read} entry chunks found, {expected} expected")
        else:
            reader.read_all(document["entries"])

        stream_digest = document.get("stream_digest")
        if stream_digest is not None and not isinstance(stream_digest, str):
            raise ValueError('"stream_digest" is not a string')
        return cls(
            entries=table,
            stream_digest=stream_digest,
            bytes_fed=_json_int(document, "bytes_fed"),
            hash_content=_json_bool(document, "hash_content"),
        )


class _EntryReader:
    """Adds JSON entries to a table and rejects a path that appears twice.

    Entries written by DDM come in path order, so a duplicate is found by comparing each
    path with the one before. Entries out of order are looked up in the table instead.
    """

    def __init__(self, table: EntryTable) -> None:
        self.table = table
        self.last_path: bytes | None = None

    def read_all(self, items: Any) -> None:
        if not isinstance(items, list):
            raise TypeError(f"entries are not a list: {str(items)[:40]!r}")
        for item in items:
            entry = _entry_from_json(item)
            path = entry.path
            in_order = self.last_path is None or path > self.last_path
            if not in_order and path in self.table:
                raise ValueError(f"duplicate path {display_path(path)}")
            self.table.add(entry)
            if in_order:
                self.last_path = path


_EMPTY_XXH3_128 = xxhash.xxh3_128_hexdigest(b"")
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class ManifestBuilder:
    """Push parser that builds the manifest of a volume from its tar stream.

    `strip_prefix` removes a leading path component: Docker's archive of the container path
    /v names its members "v", "v/a" and so on, so strip_prefix=b"v" (or b"v/") maps them to
    ".", "a". A leading "./" or "/" is removed from every member path, and a trailing "/"
    too. A member outside the prefix raises ManifestError.

    `sha256` also stores the SHA-256 digest of each file's content in ManifestEntry.sha256;
    it needs `hash_content`. Files of at least four pieces of `piece_bytes` get the pieced
    form of that digest (ddm.piecehash), as the host scans compute it.

    `member_check`, when given, runs on each archive member as soon as its header is read,
    before the member is added. ArchiveGuard.check is one: parsing the stream once for both
    saves the per-member work of a second parser. An exception it raises passes through
    `feed()` unchanged.

    `feed()` raises ManifestError as soon as the stream is invalid. `close()` raises it when
    the stream was truncated, and otherwise returns the manifest.
    """

    def __init__(
        self,
        *,
        hash_content: bool = True,
        strip_prefix: bytes = b"",
        sha256: bool = False,
        member_check: Callable[[TarEntry], None] | None = None,
        piece_bytes: int = PIECE_BYTES,
    ) -> None:
        self.hash_content = hash_content
        self.sha256 = sha256 and hash_content
        self.piece_bytes = piece_bytes
        self._content_sha256: Any = None
        self._prefix = _normalize_path(strip_prefix) if strip_prefix else b"."
        self._member_check = member_check
        self._entries = EntryTable()
        self._stream_hash = xxhash.xxh3_128()
        self._content_hash: Any = None
        # Digests of a member whose whole content came in one piece, else None.
        self._content_digests: tuple[str, str | None] | None = None
        # The content size of the member being hashed, -1 while no member is hashed.
        self._content_size = -1
        self._current_path = b""
        self._manifest: Manifest | None = None

        on_data = self._update_content_hash if hash_content else None
        self._parser = TarStreamParser(self._start_entry, on_data, self._finish_entry)

    @property
    def bytes_fed(self) -> int:
        return self._parser.bytes_fed

    @property
    def stream_digest(self) -> str:
        """xxh3-128 hex digest of every byte fed so far."""
        return self._stream_hash.hexdigest()

    @property
    def entry_count(self) -> int:
        return len(self._entries)

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        """Add the next chunk of the tar stream."""
        if self._manifest is not None:
            raise RuntimeError("ManifestBuilder.feed() called after close()")

        self._stream_hash.update(chunk)
        try:
            self._parser.feed(chunk)
        except TarStreamError as error:
            raise ManifestError(str(error), offset=error.offset) from error

    def close(self) -> Manifest:
        """Check that the stream is complete and return the manifest."""
        if self._manifest is not None:
            return self._manifest

        try:
            self._parser.close()
        except TarStreamError as error:
            raise ManifestError(str(error), offset=error.offset) from error

        self._manifest = Manifest(
            entries=self._entries,
            stream_digest=self.stream_digest,
            bytes_fed=self.bytes_fed,
            hash_content=self.hash_content,
        )
        return self._manifest

    # Parser callbacks

    def _start_entry(self, entry: TarEntry) -> None:
        if self._member_check is not None:
            self._member_check(entry)
        self._current_path = self._volume_path(entry.path, entry.offset)
        self._content_hash = None
        self._content_sha256 = None
        self._content_digests = None
        self._content_size = entry.size if self.hash_content and entry.type == "file" else -1

    def _update_content_hash(self, data: memoryview) -> None:
        if self._content_hash is None:
            pieced = is_pieced_size(self._content_size, self.piece_bytes)
            if len(data) == self._content_size and not pieced:
                # The whole content in one piece, as for most small files: one-shot digests
                # cost less than creating, updating and finishing two hash objects.
                sha256 = hashlib.sha256(data).hexdigest() if self.sha256 else None
                self._content_digests = (xxhash.xxh3_128_hexdigest(data), sha256)
                return
            self._content_hash = xxhash.xxh3_128()
            if self.sha256:
                self._content_sha256 = content_hasher(self._content_size, self.piece_bytes)
        self._content_hash.update(data)
        if self._content_sha256 is not None:
            self._content_sha256.update(data)

    def _content_digest_pair(self) -> tuple[str | None, str | None]:
        """Return the xxh3-128 and SHA-256 hex digests of the member that just ended."""
        if self._content_size < 0:
            return None, None
        if self._content_digests is not None:
            return self._content_digests
        if self._content_hash is None:  # no content: an empty file
            return _EMPTY_XXH3_128, _EMPTY_SHA256 if self.sha256 else None
        sha256 = self._content_sha256.hexdigest() if self._content_sha256 is not None else None
        return self._content_hash.hexdigest(), sha256

    def _finish_entry(self, entry: TarEntry) -> None:
        path = self._current_path
        digest, sha256 = self._content_digest_pair()
        self._content_hash = None
        self._content_sha256 = None
        self._content_digests = None

        size = entry.size
        sparse = entry.sparse
        linkname = entry.linkname
        if entry.type == "hardlink":
            assert linkname is not None
            linkname = self._volume_path(linkname, entry.offset)
            size, digest, sparse = self._hard_link_content(path, linkname)
            linked = self._entries.get(linkname)
            sha256 = linked.sha256 if linked is not None else None

        if logger.isEnabledFor(logging.DEBUG) and path in self._entries:
            logger.debug(
                "archive member %s appears again, and the later member replaces it",
                display_path(path),
            )
        # The values in _RECORD_FIELDS order, which _BUILDER_FIELDS pins down.
        self._entries.add_values(path, (
            entry.type, entry.mode, entry.uid, entry.gid, size, linkname, entry.devmajor,
            entry.devminor, entry.mtime_ns, entry.xattrs or None, entry.acl_access,
            entry.acl_default, sparse, digest, sha256,
        ))

    def _hard_link_content(self, path: bytes, target_path: bytes) -> tuple[int, str | None, bool]:
        target = self._entries.get(target_path)
        if target is None:
            logger.warning(
                "hard link %s points to %s, which is not earlier in the archive",
                display_path(path),
                display_path(target_path),
            )
            return 0, None, False
        return target.size, target.digest, target.sparse

    def _volume_path(self, member_path: bytes, offset: int) -> bytes:
        """Map an archive member path to a path relative to the volume root."""
        path = _normalize_path(member_path)
        prefix = self._prefix
        if prefix == b".":
            return path
        if path == prefix:
            return b"."
        if path.startswith(prefix + b"/"):
            return _normalize_path(path[len(prefix) + 1 :])
        raise ManifestError(
            f"archive member {display_path(member_path)} at byte offset {offset} is outside "
            f"the prefix {display_path(prefix)}",
            offset=offset,
        )


def _normalize_path(path: bytes) -> bytes:
    """Remove leading "/" and "./" and trailing "/". An empty result becomes the root "."."""
    # Most members of a host tar stream look like b"./dir/file": one "./" and nothing else.
    if path[:2] == b"./" and path[2:3] not in (b"/", b".", b"") and path[-1:] != b"/":
        return path[2:]
    while True:
        if path.startswith(b"/"):
            path = path[1:]
        elif path.startswith(b"./"):
            path = path[2:]
        else:
            break
    path = path.rstrip(b"/")
    return path or b"."


# Comparison


class _InodeView:
    """A manifest seen by inode: hard-link groups and the entry that describes each inode.

    Two archives of one tree may pick different first members for a hard-link group, and
    GNU tar 1.34 writes no xattrs or ACLs on hard-link members. So every member of a group
    is compared through the group's first member, and the group's path set is compared as
    the "link" aspect. Only hard-link groups are held in memory.
    """

    def __init__(self, manifest: Manifest) -> None:
        self.entries = manifest.entries
        self.groups: dict[bytes, tuple[bytes, ...]] = {}
        self.inode_entries: dict[bytes, ManifestEntry] = {}

        members: dict[bytes, list[bytes]] = {}
        for entry in self.entries.iter_entries(hardlinks_only=True):
            root = self._resolve_root(entry)
            members.setdefault(root, [root]).append(entry.path)

        for root, paths in members.items():
            group = tuple(sorted(paths))
            root_entry = self.entries.get(root)
            for path in group:
                self.groups[path] = group
                if root_entry is not None and root_entry.type != "hardlink":
                    self.inode_entries[path] = root_entry

    def _resolve_root(self, entry: ManifestEntry) -> bytes:
        path = entry.path
        seen = {path}
        while entry.type == "hardlink" and entry.linkname is not None:
            path = entry.linkname
            next_entry = self.entries.get(path)
            if next_entry is None or path in seen:
                break
            seen.add(path)
            entry = next_entry
        return path

    def inode(self, entry: ManifestEntry) -> ManifestEntry:
        return self.inode_entries.get(entry.path) or entry


def compare_manifests(
    source: Manifest, target: Manifest, aspects: Iterable[str]
) -> list[Difference]:
    """Return the differences between two manifests, sorted by path, for the given aspects.

    Aspects are the names in ALL_ASPECTS, for example QUICK_ASPECTS or DEEP_ASPECTS.
    Raises ValueError for an unknown aspect, and ManifestError when "content" is requested
    but a manifest was built without content hashing. Both manifests are read once, in path
    order, side by side, so memory grows with the differences and hard links only.
    """
    selected = frozenset(aspects)
    unknown = selected - frozenset(ALL_ASPECTS)
    if unknown:
        raise ValueError(
            f"unknown manifest aspects {sorted(unknown)}; valid aspects are {list(ALL_ASPECTS)}"
        )
    if "content" in selected and not (source.hash_content and target.hash_content):
        raise ManifestError(
            "cannot compare content: a manifest was built without content hashing",
            hint="build both manifests with hash_content=True, or leave out the content aspect",
        )

    source_view = _InodeView(source)
    target_view = _InodeView(target)
    grouped = source_view.groups.keys() | target_view.groups.keys()
    decode = EntryTable.decode
    differences: list[Difference] = []
    pairs = _merge_by_path(source.entries.iter_records(), target.entries.iter_records())
    for path, source_record, target_record in pairs:
        if source_record is None or target_record is None:
            if "presence" in selected:
                source_type = decode(path, source_record).type if source_record else None
                target_type = decode(path, target_record).type if target_record else None
                differences.append(Difference(path, "presence", source_type, target_type))
            continue
        # Equal records are equal entries, which differ in nothing but their hard-link group.
        if source_record == target_record and path not in grouped:
            continue
        source_inode = source_view.inode(decode(path, source_record))
        target_inode = target_view.inode(decode(path, target_record))
        differences.extend(
            _compare_path(path, source_inode, target_inode, source_view, target_view, selected)
        )
    return differences


def _merge_by_path(
    source: Iterator[tuple[bytes, bytes]], target: Iterator[tuple[bytes, bytes]]
) -> Iterator[tuple[bytes, bytes | None, bytes | None]]:
    """Pair the records of two path-ordered streams: (path, source record, target record).

    The side that lacks a path gets None.
    """
    end = (None, None)
    source_path, source_record = next(source, end)
    target_path, target_record = next(target, end)
    while source_path is not None or target_path is not None:
        if target_path is None or (source_path is not None and source_path < target_path):
            yield source_path, source_record, None
            source_path, source_record = next(source, end)
        elif source_path is None or target_path < source_path:
            yield target_path, None, target_record
            target_path, target_record = next(target, end)
        else:
            yield source_path, source_record, target_record
            source_path, source_record = next(source, end)
            target_path, target_record = next(target, end)


def _compare_path(
    path: bytes,
    source_inode: ManifestEntry,
    target_inode: ManifestEntry,
    source_view: _InodeView,
    target_view: _InodeView,
    selected: frozenset[str],
) -> list[Difference]:
    differences: list[Difference] = []

    skip_type_dependent = False
    if "type" in selected and source_inode.type != target_inode.type:
        differences.append(Difference(path, "type", source_inode.type, target_inode.type))
        skip_type_dependent = True

    for aspect, read_value in _ASPECT_VALUES:
        if aspect not in selected:
            continue
        if skip_type_dependent and aspect in _TYPE_DEPENDENT_ASPECTS:
            continue
        # Whole seconds that differ make the nanoseconds differ too: one change, one difference.
        if aspect == "mtime_ns" and differences and differences[-1].aspect == "mtime":
            continue
        source_value = read_value(source_inode)
        target_value = read_value(target_inode)
        if source_value != target_value:
            differences.append(Difference(path, aspect, source_value, target_value))

    if "link" in selected and not skip_type_dependent:
        source_group = source_view.groups.get(path)
        target_group = target_view.groups.get(path)
        if source_group != target_group:
            differences.append(Difference(path, "link", source_group, target_group))
    return differences


def _symlink_text(entry: ManifestEntry) -> bytes | None:
    return entry.linkname if entry.type == "symlink" else None


def _device_numbers(entry: ManifestEntry) -> tuple[int, int] | None:
    return (entry.devmajor, entry.devminor) if entry.type in ("char", "block") else None


def _mtime_seconds(entry: ManifestEntry) -> int | None:
    return None if entry.mtime_ns is None else entry.mtime_ns // 1_000_000_000


# Aspects other than presence and type, in report order, with the value each compares.
# "link" compares the symlink text here and the hard-link group in _compare_path().
_ASPECT_VALUES: tuple[tuple[str, Callable[[ManifestEntry], object]], ...] = (
    ("mode", lambda entry: entry.mode),
    ("owner", lambda entry: (entry.uid, entry.gid)),
    ("size", lambda entry: entry.size),
    ("link", _symlink_text),
    ("content", lambda entry: entry.digest),
    ("mtime", _mtime_seconds),
    ("mtime_ns", lambda entry: entry.mtime_ns),
    ("xattrs", lambda entry: entry.xattrs or {}),
    ("acl", lambda entry: (entry.acl_access, entry.acl_default)),
    ("sparse", lambda entry: entry.sparse),
    ("device", _device_numbers),
)


# JSON encoding


def encode_bytes(value: bytes) -> str | dict[str, str]:
    """Return bytes as a JSON string when they are valid UTF-8, else as {"base64": ...}."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(value).decode("ascii")}


def _decode_bytes(value: object) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and isinstance(value.get("base64"), str):
        return base64.b64decode(value["base64"], validate=True)
    raise ValueError(f"expected a string or a base64 object, got {value!r}")


def encode_text(value: str) -> str | dict[str, str]:
    """Return encode_bytes() of the text's bytes, with surrogate escapes turned back into bytes."""
    return encode_bytes(value.encode("utf-8", "surrogateescape"))


def _decode_text(value: object) -> str:
    return _decode_bytes(value).decode("utf-8", "surrogateescape")


# An entry's fields read by name, as in ManifestEntry. A named tuple costs less to build than
# the frozen dataclass, for code that only reads the fields of every entry once.
_EntryFields = collections.namedtuple("_EntryFields", ("path", *_RECORD_FIELDS))


def _entry_to_json(entry: ManifestEntry | _EntryFields) -> dict[str, object]:
    item: dict[str, object] = {
        "path": encode_bytes(entry.path),
        "type": entry.type,
        "mode": entry.mode,
        "uid": entry.uid,
        "gid": entry.gid,
        "size": entry.size,
    }
    if entry.mtime_ns is not None:
        item["mtime_ns"] = entry.mtime_ns
    if entry.linkname is not None:
        item["linkname"] = encode_bytes(entry.linkname)
    if entry.devmajor or entry.devminor or entry.type in ("char", "block"):
        item["devmajor"] = entry.devmajor
        item["devminor"] = entry.devminor
    if entry.xattrs is not None:
        item["xattrs"] = [
            [encode_bytes(name), encode_bytes(entry.xattrs[name])]
            for name in sorted(entry.xattrs)
        ]
    if entry.acl_access is not None:
        item["acl_access"] = encode_text(entry.acl_access)
    if entry.acl_default is not None:
        item["acl_default"] = encode_text(entry.acl_default)
    if entry.sparse:
        item["sparse"] = True
    if entry.digest is not None:
        item["digest"] = entry.digest
    if entry.sha256 is not None:
        item["sha256"] = entry.sha256
    return item


def _entry_from_json(item: Any) -> ManifestEntry:
    if not isinstance(item, dict):
        raise TypeError(f"entry is not an object: {item!r}")
    entry_type = item["type"]
    if entry_type not in ENTRY_TYPES:
        raise ValueError(f"invalid entry type {entry_type!r}")

    xattrs = None
    if "xattrs" in item:
        xattrs = {_decode_bytes(name): _decode_bytes(value) for name, value in item["xattrs"]}
    linkname = _decode_bytes(item["linkname"]) if "linkname" in item else None
    acl_access = _decode_text(item["acl_access"]) if "acl_access" in item else None
    acl_default = _decode_text(item["acl_default"]) if "acl_default" in item else None
    digest = item.get("digest")
    if digest is not None and not isinstance(digest, str):
        raise ValueError(f"digest is not a string: {digest!r}")
    sha256 = item.get("sha256")
    if sha256 is not None and not isinstance(sha256, str):
        raise ValueError(f"sha256 is not a string: {sha256!r}")

    return ManifestEntry(
        path=_decode_bytes(item["path"]),
        type=entry_type,
        mode=_json_int(item, "mode"),
        uid=_json_int(item, "uid"),
        gid=_json_int(item, "gid"),
        size=_json_int(item, "size"),
        linkname=linkname,
        devmajor=_json_int(item, "devmajor", 0),
        devminor=_json_int(item, "devminor", 0),
        mtime_ns=_json_int(item, "mtime_ns", None),
        xattrs=xattrs,
        acl_access=acl_access,
        acl_default=acl_default,
        sparse=_json_bool(item, "sparse", False),
        digest=digest,
        sha256=sha256,
    )


_REQUIRED: Any = object()


def _json_int(item: dict[str, Any], key: str, default: Any = _REQUIRED) -> Any:
    if key not in item and default is not _REQUIRED:
        return default
    value = item[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{key} is not an integer: {value!r}")
    return value


def _json_bool(item: dict[str, Any], key: str, default: Any = _REQUIRED) -> Any:
    if key not in item and default is not _REQUIRED:
        return default
    value = item[key]
    if not isinstance(value, bool):
        raise TypeError(f"{key} is not a boolean: {value!r}")
    return value
