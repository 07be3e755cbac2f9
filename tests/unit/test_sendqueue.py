"""ChannelSender: chunks sent in order from a thread, and the sender's errors raised to the relay."""

from __future__ import annotations

import threading

import pytest

from ddmdriver.sendqueue import QUEUE_CHUNKS, ChannelSender


def test_sender_keeps_order_and_offsets() -> None:
    sent: list[tuple[bytes, int]] = []
    sender = ChannelSender(lambda chunk, offset: sent.append((chunk, offset)))
    sender.start()
    chunks = [bytes([index]) * (index + 1) for index in range(50)]
    for chunk in chunks:
        sender.put(chunk)
    sender.finish()

    assert [chunk for chunk, _ in sent] == chunks
    assert [offset for _, offset in sent] == [sum(range(1, index + 1)) for index in range(50)]
    assert sender.sent_bytes == sum(len(chunk) for chunk in chunks)
    assert not sender.is_alive()


def test_sender_error_raised_by_put() -> None:
    def send(chunk: bytes, offset: int) -> None:
        if chunk == b"bad":
            raise OSError("channel closed")

    sender = ChannelSender(send)
    sender.start()
    sender.put(b"good")
    sender.put(b"bad")
    sender.join(timeout=10)

    with pytest.raises(OSError, match="channel closed"):
        sender.put(b"after")
    with pytest.raises(OSError, match="channel closed"):
        sender.finish()


def test_sender_sends_nothing_after_error() -> None:
    sent: list[bytes] = []
    release = threading.Event()

    def send(chunk: bytes, offset: int) -> None:
        if chunk == b"first":
            release.wait(10)
            raise OSError("window closed")
        sent.append(chunk)

    sender = ChannelSender(send)
    sender.start()
    sender.put(b"first")
    for index in range(QUEUE_CHUNKS):
        sender.put(b"queued %d" % index)
    release.set()

    with pytest.raises(OSError, match="window closed"):
        sender.finish()
    assert sent == []


def test_sender_stop_ends_blocked_thread() -> None:
    release = threading.Event()
    sent: list[bytes] = []

    def send(chunk: bytes, offset: int) -> None:
        release.wait(10)
        sent.append(chunk)

    sender = ChannelSender(send)
    sender.start()
    for index in range(QUEUE_CHUNKS + 1):
        sender.put(b"%d" % index)
    sender.stop()
    release.set()
    sender.join(timeout=10)

    assert not sender.is_alive()
    assert len(sent) <= 1
