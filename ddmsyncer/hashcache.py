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
  the file does not change ctime. Digests of files whose ctime is less than
  RACY_MARGIN_NANOSECONDS before the scan started are therefore not stored.
- NOTE: setting the host's clock back, or writing the block device underneath the file system,
  can change content without a new ctime. The cache cannot detect that.

Each row carries an xxh3-128 checksum over its scope, path, key and digest. A row whose
checksum does not match (a damaged database, a row copied to another path) is ignored and the
file is hashed again. The checksum does not stop someone who can write the task database on
purpose: that person can also change the task records that verification relies on.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import xxhash

from ddm.piecehash import digest_fits_size
from ddm.store import TaskStore

log = logging.getLogger(__name__)

# Linux sets file timestamps from a coarse clock that advances once per timer tick (1 to 10 ms,
# depending on CONFIG_HZ), and FAT keeps mtimes in 2-second steps. Two seconds covers both.
RACY_MARGIN_NANOSECONDS = 2_000_000_000

FileKey = tuple[int, int, int, int, int]  # dev, inode, size, mtime_ns, ctime_ns


@dataclass(frozen=True, slots=True)
class CachedHash:
    """A stored digest and the key of the file it was computed from."""

    key: FileKey
    digest: str


def cache_scope(engine: Any, mountpoint: str) -> str:
    """Return the cache scope of a volume: the host's URL and the volume's mountpoint."""
    return f"{engine.host.url} {mountpoint}"


def row_checksum(scope: str, path: bytes, file_key: str, digest: str) -> str:
    text = json.dumps([scope, base64.b64encode(path).decode("ascii"), file_key, digest])
    return xxhash.xxh3_128_hexdigest(text.encode("utf-8"))


def _checksum_function(scope: str) -> Any:
    """Return row_checksum for one scope, with the scope's JSON encoded once.

    HashCache.load checks every row of a scope. json.dumps of the row's list is the scope's
    JSON, then the three other strings, each JSON-encoded and joined by ", ".
    """
    prefix = "[" + json.dumps(scope) + ", "
    dumps, b64encode, hexdigest = json.dumps, base64.b64encode, xxhash.xxh3_128_hexdigest

    def checksum(path: bytes, file_key: str, digest: str) -> str:
        text = (f"{prefix}\"{b64encode(path).decode('ascii')}\", {dumps(file_key)}, "
                f"{dumps(digest)}]")
        return hexdigest(text.encode("utf-8"))

    return checksum


def format_key(key: FileKey) -> str:
    return " ".join(str(value) for value in key)


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

    def load(self, scope: str) -> dict[bytes, CachedHash]:
        """Return the scope's cached digests by path, without rows that fail their checksum.

        Rows whose digest is not the form the scans compute for that size (the plain SHA-256
        of a large file, stored before pieced digests existed) are left out too, so those
        files are hashed again instead of looking changed.
        """
        known: dict[bytes, CachedHash] = {}
        damaged = 0
        outdated = 0
        row_checksum_of_scope = _checksum_function(scope)
        for path, file_key, digest, checksum in self.store.load_file_hashes(scope):
            key = parse_key(file_key)
            if key is None or checksum != row_checksum_of_scope(path, file_key, digest):
                damaged += 1
                continue
            if not digest_fits_size(digest, key[2]):  # key[2] is the size
                outdated += 1
                continue
            known[path] = CachedHash(key, digest)
        if damaged:
            log.warning("ignored %d damaged hash cache rows of %s; those files are hashed again",
                        damaged, scope)
        if outdated:
            log.info("ignored %d hash cache rows of %s with an outdated digest form; those files "
                     "are hashed again", outdated, scope)
        return known

    def save(self, scope: str, hashed: dict[bytes, CachedHash],
             removed: list[bytes]) -> None:
        """Store freshly computed digests and forget the paths that are gone."""
        rows = []
        for path, cached in hashed.items():
            file_key = format_key(cached.key)
            rows.append((path, file_key, cached.digest,
                         row_checksum(scope, path, file_key, cached.digest)))
        self.store.save_file_hashes(scope, rows, removed)

    def replace(self, scope: str, rows: Iterable[tuple[bytes, CachedHash]],
                batch_rows: int) -> int:
        """Replace every row of the scope with `rows`, stored `batch_rows` at a time.

        Runs in one transaction, so readers see the old rows or all new ones. Returns how
        many rows were stored.
        """
        stored = 0

        def batches() -> Iterator[list[tuple[bytes, str, str, str]]]:
            nonlocal stored
            batch = []
            for path, cached in rows:
                file_key = format_key(cached.key)
                batch.append((path, file_key, cached.digest,
                              row_checksum(scope, path, file_key, cached.digest)))
                if len(batch) >= batch_rows:
                    stored += len(batch)
                    yield batch
                    batch = []
            stored += len(batch)
            yield batch

        self.store.replace_file_hashes(scope, batches())
        return stored


def known_keys_input(known: dict[bytes, CachedHash]) -> bytes:
    """Return the stdin of a `scan ROOT cached` command: one line per known file key."""
    lines = [base64.b64encode(path) + b" " + format_key(cached.key).encode("ascii")
             for path, cached in known.items()]
    return b"\n".join(lines)


def is_racy(ctime_ns: int, scan_started_ns: int) -> bool:
    """Return whether a file changed too close to the scan for its digest to be cached."""
    return ctime_ns >= scan_started_ns - RACY_MARGIN_NANOSECONDS
