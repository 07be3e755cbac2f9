"""A thread that sends queued chunks to an SSH channel, so a relay can parse while it sends.

A relay that receives, checks and sends each chunk in one thread stops checking whenever the
target's socket buffer or channel window is full. With a ChannelSender the relay thread checks
chunk N+1 while this thread waits to send chunk N. Chunks are still sent in order and only
after the relay thread has checked them, because the relay puts a chunk on the queue only
when its observers have returned.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

# Chunks waiting to be sent. The relay receives at most 1 MiB per chunk, so queued chunks take
# at most that many MiB.
QUEUE_CHUNKS = 4

_END = object()


class ChannelSender(threading.Thread):
    """Sends each chunk given to put() with `send(chunk, offset)` in this thread, in order.

    `offset` is the number of bytes sent before the chunk, for error messages.

    The first exception that `send` raises is kept: put() and finish() raise it in the
    caller's thread, and no later chunk is sent.
    """

    def __init__(self, send: Callable[[bytes, int], None], *, name: str = "ddm-channel-sender") -> None:
        super().__init__(name=name, daemon=True)
        self._send = send
        self.sent_bytes = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_CHUNKS)
        self._error: BaseException | None = None
        self._stopped = threading.Event()

    def run(self) -> None:
        while True:
            chunk = self._queue.get()
            if chunk is _END or self._stopped.is_set():
                return
            try:
                self._send(chunk, self.sent_bytes)
                self.sent_bytes += len(chunk)
            except BaseException as error:  # noqa: BLE001 - re-raised by put() or finish()
                self._error = error
                self._stopped.set()
                self._drain()
                return

    def put(self, chunk: bytes) -> None:
        """Queue `chunk`, waiting while the queue is full. Raises the error that stopped the sender."""
        self._raise_error()
        while True:
            try:
                self._queue.put(chunk, timeout=0.5)
                return
            except queue.Full:
                self._raise_error()
                if not self.is_alive():
                    raise RuntimeError("the channel sender stopped before the end of the stream") from None

    def finish(self) -> None:
        """Wait until every queued chunk was sent. Raises the error that stopped the sender."""
        self.put(_END)
        self.join()
        self._raise_error()

    def stop(self) -> None:
        """Drop the queued chunks and end the thread without waiting for it."""
        self._stopped.set()
        self._drain()
        try:
            self._queue.put_nowait(_END)
        except queue.Full:
            pass

    def _drain(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error
