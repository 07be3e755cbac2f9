"""The controller's cache of host-side file hashes, so that scans hash only changed files.

The host scans of incremental migration (ddmsyncer/hostscan.py) hash file content with
SHA-256, in the pieced form of ddm.piecehash for large files. The cache stores each digest
in the task database with the file's key: device, inode, size, mtime_ns and ctime_ns as the
host's lstat reported them when the file was hashed. A scan sends the known keys to the
host, which hashes only the files whose key differs or is unknown. The controller then fills
in the cached digest of each file whose reported key equals the cached key. Nothing is
written on the hosts.

Why ctime is in the key: a user can set a file's mtime back (touch -d), but not its ctime,
which the kernel sets to the current time on every change of content or metadata. A key match
therefore means that the file was not changed since it was hashed, within these limits:
- A change within the same tick of the file system's timestamp clock as the scan that hashed
  the file does not change ctime. Digests of files whose ctime is less than the racy margin
  (racy_margin_ns(): 0.2 s on file systems with sub-millisecond timestamps, else 2 s) before
  the scan started are therefore not stored.
- NOTE: setting the host's clock back, or writing the block device underneath the file system,
  can change content without a new ctime. So can a process that writes through a shared
  memory mapping to a page it already dirtied: Linux sets ctime at the write fault of a clean
  page only (seen on the lab's kernel, where a second write to a mapped 4 KiB file kept its
  key). The cache, and the rescans that use the same keys, cannot detect that; `ddmverify
  --deep` hashes every file and does.

Each row carries an xxh3-128 checksum over its scope, path, key and digest. A row whose
checksum does not match (a damaged database, a row copied to another path) is ignored and the
file is hashed again. The checksum does not stop someone who can write the task database on
purpose: that person can also change the task records that verification relies on.
"""

from __future__ import annotations

import base64
import json
import logging
import struct
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import xxhash

from ddm.piecehash import digest_fits_size
from ddm.store import TaskStore

if TYPE_CHECKING:
    from ddmsyncer.scantable import KnownHashes

log = logging.getLogger(__name__)

# Linux sets file timestamps from a coarse clock that advances once per timer tick (1 to 10 ms,
# depending on CONFIG_HZ), so a change right after a scan's lstat may get a ctime up to one
# tick before the scan's clock reading. A file system also truncates timestamps to its own
# granularity: whole seconds for ext3's small inodes, 2-second steps for FAT's mtimes.
# RACY_MARGIN_NANOSECONDS covers both. A ctime that is not a whole number of milliseconds
# comes from a file system that keeps finer timestamps, so only the tick matters there, and
# FINE_RACY_MARGIN_NANOSECONDS (20 ticks at CONFIG_HZ=100, the slowest tick) applies.
# NOTE: network file systems take ctime from the server's clock. Both margins assume that the
# server's and the host's clocks differ by less than the margin.
RACY_MARGIN_NANOSECONDS = 2_000_000_000
FINE_RACY_MARGIN_NANOSECONDS = 200_000_000
# A ctime with a remainder modulo this came from a clock finer than the coarse granularities.
_COARSE_GRANULARITY_NANOSECONDS = 1_000_000

FileKey = tuple[int, int, int, int, int]  # dev, inode, size, mtime_ns, ctime_ns


# dev, inode, size, mtime_ns, ctime_ns; timestamps are signed (a file may predate 1970).
_PACKED_KEY = struct.Struct("<QQQqq")


class CachedHash:
    """A stored digest and the key of the file it was computed from; immutable.

    The controller loads one per cached file of both volumes at once, so the key is stored
    packed in 40 bytes instead of a tuple of five ints, which takes about 150 bytes more.
    """

    __slots__ = ("_key", "digest")

    _key: bytes
    digest: str

    def __init__(self, key: FileKey, digest: str) -> None:
        object.__setattr__(self, "_key", _PACKED_KEY.pack(*key))
        object.__setattr__(self, "digest", digest)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field {name!r} of a cached hash")

    @classmethod
    def from_packed(cls, packed_key: bytes, digest: str) -> CachedHash:
        """Return the cached hash of a key packed as `packed_key` returns it."""
        cached = object.__new__(cls)
        object.__setattr__(cached, "_key", packed_key)
        object.__setattr__(cached, "digest", digest)
        return cached

    @property
    def packed_key(self) -> bytes:
        """The key packed in 40 bytes (little-endian dev, inode, size, mtime_ns, ctime_ns)."""
        return self._key

    @property
    def key(self) -> FileKey:
        """The file's (dev, inode, size, mtime_ns, ctime_ns) when the digest was computed."""
        dev, inode, size, mtime_ns, ctime_ns = _PACKED_KEY.unpack(self._key)
        return dev, inode, size, mtime_ns, ctime_ns

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CachedHash):
            return NotImplemented
        return (self._key, self.digest) == (other._key, other.digest)

    def __hash__(self) -> int:
        return hash((self._key, self.digest))

    def __repr__(self) -> str:
        return f"CachedHash(key={self.key!r}, digest={self.digest!r})"


def cache_scope(engine: Any, mountpoint: str) -> str:
    """Return the cache scope of a volume: the host's URL and the volume's mountpoint."""
    return f"{engine.host.url} {mountpoint}"


def row_checksum(scope: str, path: bytes, file_key: str, digest: str) -> str:
    text = json.dumps([scope, base64.b64encode(path).decode("ascii"), file_key, digest])
    return xxhash.xxh3_128_hexdigest(text.encode("utf-8"))


def _checksum_function(scope: str) -> Any:
    """Return row_checksum for one scope, with the scope's JSON encoded once.

    HashCache.load checks every row of a scope, and save() and replace() write one per row. json.dumps of the row's list is the scope's
    JSON, then the three other strings, each JSON-encoded and joined by ", ".
    """
    prefix = "[" + json.dumps(scope) + ", "
    dumps, b64encode, hexdigest = json.dumps, base64.b64encode, xxhash.xxh3_128_hexdigest

    def checksum(path: bytes, file_key: str, digest: str, encoded_path: str | None = None) -> str:
        if encoded_path is None:
            encoded_path = b64encode(path).decode("ascii")
        text = f"{prefix}\"{encoded_path}\", {dumps(file_key)}, {dumps(digest)}]"
        return hexdigest(text.encode("utf-8"))

    return checksum


def format_key(key: FileKey) -> str:
    return "%d %d %d %d %d" % key


def parse_key(text: str) -> FileKey | None:
    values = text.split()
    # isdigit() on the joined fields rejects signs, underscores and other forms int() takes.
    if len(values) != 5 or not "".join(values).isdigit():
        return None
    dev, inode, size, mtime_ns, ctime_ns = map(int, values)
    return dev, inode, size, mtime_ns, ctime_ns


class HashCache:
    """Loads and stores the cached digests of one task database."""

    def __init__(self, store: TaskStore) -> None:
        self.store = store

    def load(self, scope: str) -> KnownHashes:
        """Return the scope's cached digests by path, without rows that fail their checksum.

        Rows whose digest is not the form the scans compute for that size (the plain SHA-256
        of a large file, stored before pieced digests existed) are left out too, so those
        files are hashed again instead of looking changed. The rows go to a temporary SQLite
        database (ddmsyncer.scantable), so a scope of any size takes about the same memory.
        """
        from ddmsyncer.scantable import KnownHashes

        return KnownHashes(self.iter_valid(scope))

    def iter_valid(self, scope: str) -> Iterator[tuple[bytes, CachedHash]]:
        """Yield the scope's (path, cached digest) rows that load() keeps, reading them once."""
        for path, _, key, _, digest in self._iter_checked(scope):
            yield path, CachedHash(key, digest)

    def known_keys_input(self, scope: str, chunk_bytes: int = 1024 * 1024) -> Iterator[bytes]:
        """Yield the stdin of a `scan ROOT cached` command from the scope's valid rows.

        The lines equal those of the module's known_keys_input(self.iter_valid(scope)), but
        each row's base64 path and key text are made once: a scan of a large volume reads
        every row, so this loop is on the scan's critical path.
        """
        chunk = bytearray()
        for _, encoded_path, key, key_text, digest in self._iter_checked(scope):
            chunk += f"{encoded_path} {key_text} {digest}\n".encode("ascii")
            if len(chunk) >= chunk_bytes:
                yield bytes(chunk)
                chunk.clear()
        yield bytes(chunk)

    def _iter_checked(self, scope: str) -> Iterator[tuple[bytes, str, FileKey, str, str]]:
        """Yield (path, base64 path, key, key text, digest) of the rows that pass the checks.

        The key text is format_key(key), the form the hosts parse. Rows that fail their
        checksum or whose digest has an outdated form are counted and logged, not yielded.
        """
        damaged = 0
        outdated = 0
        row_checksum_of_scope = _checksum_function(scope)
        b64encode = base64.b64encode
        for path, file_key, digest, checksum in self.store.iter_file_hashes(scope):
            key = parse_key(file_key)
            encoded_path = b64encode(path).decode("ascii")
            if key is None or \
                    checksum != row_checksum_of_scope(path, file_key, digest, encoded_path):
                damaged += 1
                continue
            if not digest_fits_size(digest, key[2]):  # key[2] is the size
                outdated += 1
                continue
            yield path, encoded_path, key, format_key(key), digest
        if damaged:
            log.warning("ignored %d damaged hash cache rows of %s; those files are hashed again",
                        damaged, scope)
        if outdated:
            log.info("ignored %d hash cache rows of %s with an outdated digest form; those files "
                     "are hashed again", outdated, scope)

    def save(self, scope: str, hashed: dict[bytes, CachedHash],
             removed: list[bytes]) -> None:
        """Store freshly computed digests and forget the paths that are gone."""
        rows = []
        checksum = _checksum_function(scope)
        for path, cached in hashed.items():
            file_key = format_key(cached.key)
            rows.append((path, file_key, cached.digest, checksum(path, file_key, cached.digest)))
        self.store.save_file_hashes(scope, rows, removed)

    def replace(self, scope: str, rows: Iterable[tuple[bytes, CachedHash]],
                batch_rows: int) -> int:
        """Replace every row of the scope with `rows`, stored `batch_rows` at a time.

        Runs in one transaction, so readers see the old rows or all new ones. Returns how
        many rows were stored.
        """
        stored = 0
        checksum = _checksum_function(scope)

        def batches() -> Iterator[list[tuple[bytes, str, str, str]]]:
            nonlocal stored
            batch = []
            for path, cached in rows:
                file_key = format_key(cached.key)
                batch.append((path, file_key, cached.digest, checksum(path, file_key, cached.digest)))
                if len(batch) >= batch_rows:
                    stored += len(batch)
                    yield batch
                    batch = []
            stored += len(batch)
            yield batch

        self.store.replace_file_hashes(scope, batches())
        return stored


def known_keys_input(known: Iterable[tuple[bytes, CachedHash]], chunk_bytes: int = 1024 * 1024
                     ) -> Iterator[bytes]:
    """Yield the stdin of a `scan ROOT cached` command in chunks.

    One line per known file: path in base64, key and digest, which the host reports for
    the file when its key is unchanged.
    """
    chunk = bytearray()
    for path, cached in known:
        chunk += b" ".join((base64.b64encode(path), format_key(cached.key).encode("ascii"),
                            cached.digest.encode("ascii"))) + b"\n"
        if len(chunk) >= chunk_bytes:
            yield bytes(chunk)
            chunk.clear()
    yield bytes(chunk)


def racy_margin_ns(ctime_ns: int) -> int:
    """Return the racy margin for a file with this ctime, in nanoseconds."""
    if ctime_ns % _COARSE_GRANULARITY_NANOSECONDS:
        return _fine_margin_ns()
    return RACY_MARGIN_NANOSECONDS


def _fine_margin_ns() -> int:
    """Return the fine margin, never longer than the coarse one (tests set that to 0)."""
    return min(FINE_RACY_MARGIN_NANOSECONDS, RACY_MARGIN_NANOSECONDS)


def sql_racy_margin(ctime_column: str) -> str:
    """Return an SQL expression equal to racy_margin_ns() of an integer column.

    SQLite's % takes the ctime's sign, unlike Python's, but both are zero for the same ctimes.
    """
    return (f"(CASE WHEN {ctime_column} % {_COARSE_GRANULARITY_NANOSECONDS} = 0"
            f" THEN {int(RACY_MARGIN_NANOSECONDS)} ELSE {int(_fine_margin_ns())} END)")


def is_racy(ctime_ns: int, scan_started_ns: int) -> bool:
    """Return whether a file changed too close to the scan for its digest to be cached."""
    return ctime_ns >= scan_started_ns - racy_margin_ns(ctime_ns)
