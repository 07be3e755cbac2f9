"""Verify a volume by scanning it on its own host, so that only a listing crosses the wire.

The default verify reads the target volume's whole archive back through the controller and
hashes it there. When the target's SSH account may read the volume's mountpoint (root or
passwordless sudo, see ddmdriver.hostpath) and the host has `python3`, DDM instead runs
ddmsyncer/hostmanifest.py on the target host. It lists every entry with the aspects a GNU tar
archive carries (type, mode, owner, size, mtime in nanoseconds, link, device, xattrs, ACLs,
sparseness) and, for verify full, the SHA-256 of each file's content, hashed on that host.
A file of at least 64 MiB gets the pieced SHA-256 of ddm.piecehash, which the host computes
in one thread per core.

The controller computes the same SHA-256 per file while it relays the copy, next to the
manifest's xxh3-128 digest. The target host need not have the xxhash module, and OpenSSL's
SHA-256 in hashlib uses the CPU's SHA extensions where they exist. Verify then compares the
source manifest, with SHA-256 as its content digest, against the manifest of the listing.
Every byte is still proven: each file's content was hashed from the stream on the controller
and from the disk on the target.

The scan script starts with the copy (ScanSession), on the relay route and on the direct
route (ddmsyncer.direct) alike. While tar writes a large file on the target, the script hashes each piece that tar has written past, reading the file back like
the scan does (PieceFollower in hostmanifest.py), so after the copy only the last pieces are
left to read. inotify reports every other open of the file and any write after tar's close,
and the scan reads such a file in full.

A volume with driver options (NFS, tmpfs) has a mountpoint that contains its data only while a
container uses it, so such volumes are read back as before.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddm.errors import DDMError, MigrationFailed
from ddm.manifest import EntryTable, Manifest
from ddm import piecehash
from ddmdriver.hostpath import MOVE_STEPS, PYTHON_CHECK, StderrCollector

log = logging.getLogger(__name__)

HOST_SCRIPT = base64.b64encode(Path(__file__).with_name("hostmanifest.py").read_bytes()).decode("ascii")
LOADER = "import base64,sys;exec(compile(base64.b64decode(sys.argv.pop(1)),'hostmanifest','exec'))"
PROBE_COMMAND = PYTHON_CHECK
PROBE_TIMEOUT_SECONDS = 30.0
# How long the copy waits for the verify scan to follow the staging directory. After that the
# copy starts anyway, and the scan reads every file after the copy.
READY_TIMEOUT_SECONDS = 5.0
RECEIVE_BYTES = 1024 * 1024

# Fields of a hostmanifest.py record without the hash cache fields that "keys" appends.
RECORD_FIELDS = 17

# The first line of the script's "session" mode, once it follows the directory.
SESSION_READY = b'{"ready": true'
# The start of the line after the listing in the script's "session" mode. The line is
# {"end": true, "followed_bytes": N}, N being the bytes hashed while the copy wrote them.
SESSION_END = b'{"end": true'

HOST_SCAN = "host-scan"
READ_BACK = "read-back"


@dataclass(frozen=True)
class HostScan:
    """The manifest of a volume scanned on its host, and the bytes of the listing."""

    manifest: Manifest
    listing_bytes: int
    # Content bytes that the target host hashed while the copy wrote them (session scans only).
    followed_bytes: int = 0


class PythonProbes:
    """Checks once per engine whether its host runs the scan script's python3.

    start() runs the check in a thread, so that its SSH round trip overlaps other work of
    the prepare phase; available() waits for it.
    """

    def __init__(self) -> None:
        # Keyed by host name, so the engines of --parallel workers reuse a result.
        self._results: dict[str, bool] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    def start(self, engine: Any, access: Any) -> None:
        key = engine.host.name
        with self._lock:
            if key in self._threads or key in self._results:
                return
            thread = threading.Thread(target=self._probe, args=(engine, access),
                                      name="ddm-python-probe", daemon=True)
            self._threads[key] = thread
        thread.start()

    def record(self, engine: Any, available: bool) -> None:
        """Store a result that the host probe (PROBE_SCRIPT) already found, so start() runs none."""
        with self._lock:
            self._results.setdefault(engine.host.name, available)

    def available(self, engine: Any, access: Any) -> bool:
        self.start(engine, access)
        thread = self._threads.get(engine.host.name)
        if thread is not None:
            thread.join()
        return self._results.get(engine.host.name, False)

    def _probe(self, engine: Any, access: Any) -> None:
        result = _probe_python(engine, access)
        with self._lock:
            self._results[engine.host.name] = result


def _probe_python(engine: Any, access: Any) -> bool:
    try:
        result = engine.ssh.exec_command(access.argv("python3", "-c", PROBE_COMMAND),
                                         timeout=PROBE_TIMEOUT_SECONDS)
    except (DDMError, ValueError) as error:
        log.info("python3 probe on %s failed: %s", engine.host.name, error)
        return False
    if result.exit_status != 0:
        log.info("host %s has no usable python3; verify reads volumes back", engine.host.name)
    return result.exit_status == 0


def plain_local_volume(info: Any) -> bool:
    """Return True for a local volume without driver options, whose mountpoint contains its data."""
    return info is not None and info.driver == "local" and not info.options and bool(info.mountpoint)


def scan_argv(access: Any, directory: str, *, hash_content: bool, keys: bool = False,
              piece_bytes: int | None = None, session: bool = False) -> list[str]:
    """Return the command that runs hostmanifest.py on the host.

    Without `piece_bytes` the piece size is piecehash.PIECE_BYTES at the time of the call, so
    that the scans of both sides of a comparison use the same one.
    """
    extra = (*(("keys",) if keys else ()), *(("session",) if session else ()))
    hash_mode = f"pieces:{piece_bytes or piecehash.PIECE_BYTES}" if hash_content else "none"
    return access.argv("python3", "-c", LOADER, HOST_SCRIPT, directory, hash_mode, *extra)


def scan_manifest(engine: Any, access: Any, directory: str, *, hash_content: bool,
                  on_record: Callable[[list[Any]], None] | None = None,
                  piece_bytes: int | None = None) -> HostScan:
    """Scan `directory` on the engine's host and return its manifest (content digest: SHA-256).

    Large files get the pieced SHA-256 of ddm.piecehash, as ManifestBuilder computes it with
    the same `piece_bytes`. `on_record`, when given, gets every record with the three hash
    cache fields that the script adds with "keys" (see hostmanifest.py), before the record
    becomes a manifest entry.
    """
    name = f"{engine.host.name}:{directory}"
    argv = scan_argv(access, directory, hash_content=hash_content, keys=on_record is not None,
                     piece_bytes=piece_bytes)
    channel = engine.ssh.open_command(argv)
    errors = StderrCollector(channel)
    errors.start()
    listing_bytes = 0

    def records() -> Iterator[list[Any]]:
        nonlocal listing_bytes
        for lines, size in _line_batches(channel):
            listing_bytes += size
            for record in decode_records(lines):
                if on_record is not None:
                    on_record(record)
                yield record

    try:
        channel.shutdown_write()
        manifest = manifest_from_records(records(), hash_content=hash_content)
        errors.join(timeout=10)
        status = channel.recv_exit_status()
    except ValueError as error:
        raise MigrationFailed(f"scanning {name} returned an invalid listing: {error}: "
                              f"{stderr_text(errors)}",
                              hint="check that python3 runs on that host") from None
    finally:
        channel.close()

    if status != 0:
        raise MigrationFailed(f"scanning {name} failed with exit status {status}: "
                              f"{stderr_text(errors)}",
                              hint="check that python3 runs on that host, or pass --verify quick")
    log.info("scanned %s on its host: %d entries, %d bytes of listing", name,
             len(manifest.entries), listing_bytes)
    return HostScan(manifest, listing_bytes)


class ScanSession:
    """hostmanifest.py started on a host before the verify needs it (its "session" mode).

    Starting it during the copy takes the login shell and python3's start off the verify
    phase, and lets the script hash large files while tar writes them. The script waits
    until scan() sends "scan", and after the listing it can move the
    verified directory with move(), which saves the SSH command of move_directory(). close()
    ends it at any point, and a script that gets the end of stdin before "scan" exits
    without scanning.
    """

    def __init__(self, engine: Any, access: Any, directory: str | None, *, hash_content: bool,
                 keys: bool, piece_bytes: int | None = None) -> None:
        """Start the script; with `directory` None, name the directory later with follow()."""
        self.engine = engine
        self.directory = directory
        self.hash_content = hash_content
        self.keys = keys
        self.name = f"{engine.host.name}:{directory or '(directory not named yet)'}"
        argv = scan_argv(access, directory or "-", hash_content=hash_content, keys=keys,
                         piece_bytes=piece_bytes, session=True)
        self.channel = engine.ssh.open_command(argv)
        self.errors = StderrCollector(self.channel)
        self.errors.start()
        self.ready = False
        # What wait_ready() read of a line when it timed out; scan() reads on from there.
        self._partial_line = b""

    def follow(self, directory: str) -> None:
        """Name the directory of a session started without one; raises OSError if the channel failed."""
        self.channel.sendall(json.dumps({"root": directory}).encode("utf-8") + b"\n")
        self.directory = directory
        self.name = f"{self.engine.host.name}:{directory}"

    def wait_ready(self, timeout_seconds: float) -> bool:
        """Wait until the script follows the directory; return False after the timeout or on EOF.

        Files that the copy creates before then are not hashed during the copy, so the
        caller starts writing after this returns. The scan works either way.
        """
        if self.ready:
            return True
        self.channel.settimeout(timeout_seconds)
        try:
            while not self._partial_line.endswith(b"\n"):
                chunk = self.channel.recv(1)
                if not chunk:
                    return False
                self._partial_line += chunk
        except OSError as error:
            log.info("verify scan of %s not ready after %.1f s: %s", self.name, timeout_seconds,
                     error or "timed out")
            return False
        finally:
            self.channel.settimeout(None)
        self.ready = self._partial_line.startswith(SESSION_READY)
        self._partial_line = b""
        return self.ready

    def scan(self, on_record: Callable[[list[Any]], None] | None = None) -> HostScan:
        """Scan the directory and return its manifest, as scan_manifest() does."""
        listing_bytes = 0
        ended = False
        followed_bytes = 0

        def records() -> Iterator[list[Any]]:
            nonlocal listing_bytes, ended, followed_bytes
            for lines, _ in _line_batches(self.channel, self._partial_line):
                listing, end_line = _session_listing(lines)
                listing_bytes += sum(map(len, listing)) + len(listing)
                for record in decode_records(listing):
                    if on_record is not None:
                        on_record(record)
                    yield record
                if end_line is not None:
                    ended = True
                    followed_bytes = json.loads(end_line).get("followed_bytes", 0)
                    return

        try:
            self.channel.sendall(b"scan\n")
            manifest = manifest_from_records(records(), hash_content=self.hash_content)
        except ValueError as error:
            self.close()
            raise MigrationFailed(f"scanning {self.name} returned an invalid listing: {error}: "
                                  f"{stderr_text(self.errors)}",
                                  hint="check that python3 runs on that host") from None
        except OSError as error:
            self.close()
            raise MigrationFailed(f"scanning {self.name} failed: {error}",
                                  hint="check the SSH connection to that host and retry") from None
        if not ended:
            status = self.channel.recv_exit_status()
            self.close()
            raise MigrationFailed(f"scanning {self.name} failed with exit status {status}: "
                                  f"{stderr_text(self.errors)}",
                                  hint="check that python3 runs on that host, or pass --verify quick")
        log.info("scanned %s on its host: %d entries, %d bytes of listing, %d bytes hashed "
                 "during the copy", self.name, len(manifest.entries), listing_bytes, followed_bytes)
        return HostScan(manifest, listing_bytes, followed_bytes)

    def move(self, target_directory: str) -> None:
        """Replace the empty `target_directory` by the scanned directory, like move_directory()."""
        try:
            self.channel.sendall(json.dumps({"move_to": target_directory}).encode("utf-8") + b"\n")
            self.channel.shutdown_write()
            status = self.channel.recv_exit_status()
            step = MOVE_STEPS.get(status, f"exit status {status}")
            reason = f"{step} ({stderr_text(self.errors)})"
        except OSError as error:
            status, reason = -1, str(error)
        finally:
            self.close()
        if status != 0:
            raise MigrationFailed(f"cannot move {self.directory} to {target_directory} on "
                                  f"{self.engine.host.name}: {reason}",
                                  hint="the target was rolled back; check the host's volume "
                                  "directory and retry")
        log.info("moved %s to %s on %s", self.directory, target_directory, self.engine.host.name)

    def close(self) -> None:
        self.channel.close()


def _line_batches(channel: Any, pending: bytes = b"") -> Iterator[tuple[list[bytes], int]]:
    """Yield the complete lines of each chunk of the channel's stdout, with their size in bytes.

    The size counts the newlines. `pending` is the start of the first line, read from the
    channel before. A last line without a newline comes alone at the end of the output.
    """
    while chunk := channel.recv(RECEIVE_BYTES):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        if complete:
            yield complete, sum(map(len, complete)) + len(complete)
    if pending:
        yield [pending], len(pending)


def decode_records(lines: list[bytes]) -> list[Any]:
    """Decode lines that each hold one JSON array, in one json.loads call for all of them.

    One call per line cost about 40% more for the 100,000 short lines of a scan of small files
    (CPython 3.11.7). Raises ValueError, as json.loads does for the first bad line, unless the
    joined lines decode to as many JSON arrays as there are lines.

    NOTE: so the line "[1],[2" followed by "3]" passes as two arrays. The records of a scan
    have a fixed number of fields, and manifest_from_records() rejects those that have fewer.
    """
    if not lines:
        return []
    try:
        records = json.loads(b"[" + b",".join(lines) + b"]")
    except ValueError:
        records = None
    if records is None or len(records) != len(lines) or not all(type(record) is list for record in records):
        # Decode each line to raise the error of the first bad one.
        for line in lines:
            if type(json.loads(line)) is not list:
                raise ValueError(f"listing line {line[:60]!r} is not a JSON array")
        raise ValueError("listing lines do not decode one array each")
    return records


def _session_listing(lines: list[bytes]) -> tuple[list[bytes], bytes | None]:
    """Split a session's lines into listing lines and the end line, if the batch contains it.

    The ready line is dropped; lines after the end line belong to nothing and are dropped.
    """
    listing = []
    for line in lines:
        if line.startswith(SESSION_READY):
            continue
        if line.startswith(SESSION_END):
            return listing, line
        listing.append(line)
    return listing, None


def stderr_text(errors: StderrCollector) -> str:
    """Return the end of a command's stderr as text for an error message."""
    return errors.text().decode("utf-8", "replace").strip()[-500:]


def manifest_from_records(records: Iterable[list[Any]], *, hash_content: bool) -> Manifest:
    """Build a manifest from hostmanifest.py's records, in the form a tar archive gives.

    The first name of a multi-link file in the script's walk order becomes a "file", and
    every other name a "hardlink" to it, as tar archives them. compare_manifests() compares
    hard-link groups by their sets of names, so which name comes first does not matter.
    Each record goes straight into the manifest's EntryTable, so memory does not grow with
    the number of entries, except for one path per multi-link inode.
    """
    table = EntryTable()
    first_names: dict[int, bytes] = {}
    for record in records:
        (path, kind, mode, uid, gid, size, mtime_ns, link, devmajor, devminor, inode, nlink,
         xattrs, acl_access, acl_default, sparse, sha256) = record[:RECORD_FIELDS]
        path = base64.b64decode(path)
        linkname = base64.b64decode(link) if link is not None else None
        if kind == "file" and nlink > 1:
            first = first_names.setdefault(inode, path)
            if first != path:
                kind, linkname = "hardlink", first
        decoded_xattrs = {base64.b64decode(name): base64.b64decode(value)
                          for name, value in xattrs} or None
        # The values in the field order of ManifestEntry after its path.
        table.add_values(path, (kind, mode, uid, gid, size, linkname, devmajor, devminor,
                                mtime_ns, decoded_xattrs, acl_access, acl_default, sparse,
                                sha256, sha256))
    return Manifest(entries=table, hash_content=hash_content)


def sha256_view(manifest: Manifest) -> Manifest | None:
    """Return the manifest with each file's SHA-256 as its content digest.

    Returns None when a file has no SHA-256 (the copy ran without it), so the caller falls
    back to reading the target back.
    """
    entries = manifest.entries.sha256_copy()
    if entries is None:
        return None
    return Manifest(entries=entries, stream_digest=manifest.stream_digest,
                    bytes_fed=manifest.bytes_fed, hash_content=manifest.hash_content)


class SHA256ViewThread(threading.Thread):
    """A thread, started on creation, that builds sha256_view(manifest). result() waits for it."""

    def __init__(self, manifest: Manifest) -> None:
        super().__init__(name="ddm-sha256-view", daemon=True)
        self.manifest = manifest
        self._view: Manifest | None = None
        self._error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self._view = sha256_view(self.manifest)
        except BaseException as error:  # noqa: BLE001 - re-raised by result()
            self._error = error

    def result(self) -> Manifest | None:
        """Return sha256_view(manifest): None when a file has no SHA-256."""
        self.join()
        if self._error is not None:
            raise self._error
        return self._view
