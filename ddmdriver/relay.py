"""Relay a tar archive from a container on one engine to a container on another.

The archive flows GET /containers/{id}/archive on the source -> this process -> PUT
/containers/{id}/archive on the target. A background thread reads the source into a bounded
queue while the calling thread sends to the target, so both connections stay busy and
memory stays constant (the queue contains at most `queue_bytes`). Every byte is hashed with
xxh3-128 on the way and handed to the observers, for example a manifest builder and a
progress counter.

With a `guard` (ddm.archive_guard), every member of the archive is checked before the chunk
that completes its header goes to the target. A member that would write outside the volume
(an absolute path, "..", or a path through an earlier symlink) stops the copy before the
target engine unpacks it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import xxhash

from ddm.archive_guard import ArchiveGuard, guard_observer
from ddm.errors import DDMError, TransferFailed
from ddmdriver import buffers
from ddmdriver.engine import ArchiveStream, Engine

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 1024 * 1024
DEFAULT_QUEUE_BYTES = buffers.DEFAULT_SIZES.queue_bytes
QUEUE_POLL_SECONDS = 0.5

Observer = Callable[[memoryview], None]


@dataclass(frozen=True)
class RelayResult:
    """Size, xxh3-128 hex digest and duration of a relayed archive stream."""

    bytes: int
    stream_digest: str
    seconds: float

    @property
    def mib_per_second(self) -> float:
        return self.bytes / (1024 * 1024) / self.seconds if self.seconds > 0 else 0.0


class _End:
    """Queue item after the last chunk."""


class _SourceFailure(Exception):
    """Raised inside the PUT body when the source side failed, to abort the request."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _ObserverFailure(Exception):
    """Carries an observer's exception out of the PUT body, to be raised unchanged."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _SourceReader(threading.Thread):
    """Thread that copies the source archive into a bounded queue."""

    def __init__(self, stream: ArchiveStream, chunk_size: int, queue_bytes: int) -> None:
        super().__init__(name="ddm-relay-source", daemon=True)
        self.stream = stream
        self.chunk_size = chunk_size
        self.chunks: queue.Queue[bytes | _End | BaseException] = queue.Queue(
            maxsize=max(2, queue_bytes // chunk_size)
        )
        self.stopped = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopped.is_set():
                chunk = self.stream.read(self.chunk_size)
                if not chunk:
                    self._put(_End())
                    return
                self._put(chunk)
        except BaseException as error:  # handed to the sending thread, which raises it
            self._put(error)

    def _put(self, item: bytes | _End | BaseException) -> None:
        while not self.stopped.is_set():
            try:
                self.chunks.put(item, timeout=QUEUE_POLL_SECONDS)
                return
            except queue.Full:
                continue

    def stop(self) -> None:
        self.stopped.set()


def relay_archive(
    source: Engine,
    source_container: str,
    source_path: str,
    target: Engine,
    target_container: str,
    target_path: str,
    *,
    observers: Sequence[Observer] = (),
    guard: ArchiveGuard | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    queue_bytes: int | None = None,
) -> RelayResult:
    """Copy the archive of `source_path` in the source container to `target_path` in the target.

    `queue_bytes` defaults to the calling thread's share (ddmdriver.buffers). `guard` checks
    each member before the target receives the end of its header; callers
    that copy volume data pass one. Without it the stream may be any bytes.

    Raises TransferFailed naming the side (source or target) that failed, and
    UnsafeArchiveMember when the guard rejects a member; errors raised by an observer pass
    through unchanged. Either way both requests are closed before it returns.
    """
    started = time.monotonic()
    source_name = f"{source.host.name}:{source_container[:12]}:{source_path}"
    target_name = f"{target.host.name}:{target_container[:12]}:{target_path}"
    checks: list[Observer] = []
    if guard is not None:
        check_members, _ = guard_observer(guard)
        checks.append(check_members)

    try:
        stream = source.get_archive(source_container, source_path, chunk_size=chunk_size)
    except DDMError as error:
        raise TransferFailed(f"source {source_name} failed: {error}") from error

    reader = _SourceReader(stream, chunk_size, queue_bytes or buffers.current().queue_bytes)
    hasher = xxhash.xxh3_128()
    counter = [0]
    reader.start()
    try:
        body = _body(reader, hasher, [*checks, *observers], counter)
        target.put_archive(target_container, target_path, body)
    except _SourceFailure as failure:
        raise TransferFailed(f"source {source_name} failed: {failure.error}") from failure.error
    except _ObserverFailure as failure:
        raise failure.error from None
    except DDMError as error:
        raise TransferFailed(
            f"target {target_name} failed after {counter[0]} bytes: {error}"
        ) from error
    finally:
        reader.stop()
        if reader.is_alive():
            stream.abort()
        reader.join(timeout=10)
        stream.close()

    seconds = time.monotonic() - started
    result = RelayResult(bytes=counter[0], stream_digest=hasher.hexdigest(), seconds=seconds)
    logger.info(
        "relayed %d bytes from %s to %s in %.2f s (%.1f MiB/s)",
        result.bytes,
        source_name,
        target_name,
        result.seconds,
        result.mib_per_second,
    )
    return result


def archive_root(path: str) -> bytes:
    """Return the member path of `path` itself in its Engine API archive: "/v" gives b"v".

    The engine names the members of GET /containers/{id}/archive?path=P after P's last
    component; for "/" the members are relative to the root itself (b".").
    """
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return name.encode("utf-8", "surrogateescape") if name not in ("", ".") else b"."


def _body(
    reader: _SourceReader,
    hasher: xxhash.xxh3_128,
    observers: Sequence[Observer],
    counter: list[int],
) -> Iterator[bytes]:
    """Yield the source chunks for the PUT body, hashing and observing each one."""
    while True:
        item = reader.chunks.get()
        if isinstance(item, _End):
            return
        if isinstance(item, BaseException):
            raise _SourceFailure(item)

        hasher.update(item)
        view = memoryview(item)
        try:
            for observer in observers:
                observer(view)
        except BaseException as error:
            raise _ObserverFailure(error) from error
        counter[0] += len(item)
        yield item
