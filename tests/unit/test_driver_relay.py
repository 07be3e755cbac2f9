"""Tests of ddmdriver.relay with in-process stand-ins for the two engines.

The lab covers the real path; these tests inject failures on either side, which a real
engine cannot be made to produce on demand.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import pytest
import xxhash

from ddm.errors import ConnectionFailed, TransferFailed
from ddmdriver.relay import relay_archive


@dataclass
class FakeHost:
    name: str


class FakeStream:
    """Serves `data` in reads of at most the requested size; can fail after `fail_after`."""

    def __init__(self, data: bytes, fail_after: int | None = None, endless: bool = False) -> None:
        self.data = data
        self.offset = 0
        self.fail_after = fail_after
        self.endless = endless
        self.aborted = threading.Event()
        self.closed = False

    def read(self, size: int) -> bytes:
        if self.aborted.is_set():
            return b""
        if self.fail_after is not None and self.offset >= self.fail_after:
            raise TransferFailed("reading archive of /v on src failed: connection reset")
        if self.endless:
            self.offset += size
            return b"x" * size
        chunk = self.data[self.offset : self.offset + size]
        self.offset += len(chunk)
        return chunk

    def abort(self) -> None:
        self.aborted.set()

    def close(self) -> None:
        self.closed = True


class FakeSource:
    def __init__(self, stream: FakeStream) -> None:
        self.host = FakeHost("src")
        self.stream = stream

    def get_archive(self, container_id: str, path: str, *, chunk_size: int) -> FakeStream:
        return self.stream


class FakeTarget:
    def __init__(self, fail_after: int | None = None, delay: float = 0.0) -> None:
        self.host = FakeHost("dst")
        self.received = bytearray()
        self.fail_after = fail_after
        self.delay = delay

    def put_archive(self, container_id: str, path: str, chunks: Iterable[bytes]) -> None:
        for chunk in chunks:
            time.sleep(self.delay)
            self.received += chunk
            if self.fail_after is not None and len(self.received) >= self.fail_after:
                raise ConnectionFailed("Docker engine on dst not reachable: broken pipe")


def relay(source: FakeSource, target: FakeTarget, **options: object):  # type: ignore[no-untyped-def]
    return relay_archive(source, "c" * 64, "/v", target, "d" * 64, "/", **options)  # type: ignore[arg-type]


def test_relay_copies_and_hashes() -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    target = FakeTarget()
    seen = bytearray()

    result = relay(FakeSource(FakeStream(data)), target, observers=[seen.extend], chunk_size=65536)

    assert bytes(target.received) == data
    assert bytes(seen) == data
    assert result.bytes == len(data)
    assert result.stream_digest == xxhash.xxh3_128(data).hexdigest()
    assert result.seconds > 0


def test_relay_observers_get_memoryviews_in_order() -> None:
    data = bytes(range(256)) * 1000
    kinds: list[type] = []
    calls: list[str] = []

    def first(view: memoryview) -> None:
        kinds.append(type(view))
        calls.append("first")

    def second(view: memoryview) -> None:
        calls.append("second")

    relay(FakeSource(FakeStream(data)), FakeTarget(), observers=[first, second], chunk_size=100_000)

    assert set(kinds) == {memoryview}
    assert calls == ["first", "second"] * 3


def test_relay_empty_archive() -> None:
    target = FakeTarget()

    result = relay(FakeSource(FakeStream(b"")), target)

    assert result.bytes == 0
    assert result.stream_digest == xxhash.xxh3_128(b"").hexdigest()
    assert target.received == b""


def test_relay_source_failure_names_source() -> None:
    stream = FakeStream(os.urandom(1024 * 1024), fail_after=256 * 1024)
    target = FakeTarget()

    with pytest.raises(TransferFailed) as raised:
        relay(FakeSource(stream), target, chunk_size=65536)

    assert str(raised.value).startswith("source src:")
    assert "connection reset" in str(raised.value)
    assert len(target.received) == 256 * 1024
    assert stream.closed


def test_relay_target_failure_names_target_and_stops_reader() -> None:
    stream = FakeStream(b"", endless=True)
    before = threading.active_count()

    with pytest.raises(TransferFailed) as raised:
        relay(FakeSource(stream), FakeTarget(fail_after=512 * 1024), chunk_size=65536)

    assert str(raised.value).startswith("target dst:")
    assert "broken pipe" in str(raised.value)
    assert stream.aborted.is_set()
    assert stream.closed
    assert threading.active_count() == before


def test_relay_observer_error_passes_through() -> None:
    class ManifestBroken(Exception):
        pass

    def observer(view: memoryview) -> None:
        raise ManifestBroken("truncated tar")

    with pytest.raises(ManifestBroken, match="truncated tar"):
        relay(FakeSource(FakeStream(os.urandom(10_000))), FakeTarget(), observers=[observer])


def test_relay_queue_bounds_read_ahead() -> None:
    stream = FakeStream(os.urandom(4 * 1024 * 1024))
    target = FakeTarget(delay=0.01)
    read_ahead: list[int] = []

    def observer(view: memoryview) -> None:
        read_ahead.append(stream.offset - len(target.received))

    relay(
        FakeSource(stream), target, observers=[observer], chunk_size=65536, queue_bytes=4 * 65536
    )

    # The queue contains 4 chunks, the reader may have one more, and the sender one.
    assert max(read_ahead) <= 6 * 65536
