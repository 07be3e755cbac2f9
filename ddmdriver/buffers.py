"""Sizes of the SSH channel windows and relay queues, shared out among parallel copies.

A relay holds up to one channel window of received bytes in paramiko's buffer of each SSH
channel (and a copy of it while it is handed on) and up to `queue_bytes` in its queue. One
copy at a time uses the full sizes. With `--parallel N`, N copies run at once, each over SSH
connections of its own, and each worker thread sets `shared_by(N)` for the connections and
relays it opens. The bytes in flight of all workers together then stay near one copy's, and so
does the memory that they cost.

Peak RSS of the controller, measured on the lab with `--parallel 3` and three 128 MiB volumes
on the Engine API path (2 vCPUs, loopback SSH): 172 MiB with the full sizes and 141 MiB with a
2 MiB queue. A 2 MiB queue with 1 MiB windows brought it to 98 MiB.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class BufferSizes:
    """Flow-control window of each SSH channel and byte limit of each relay queue."""

    window_size: int
    queue_bytes: int


# One copy at a time: a 4 MiB window fills a 50 ms path at about 80 MiB/s (see ddmdriver.ssh).
DEFAULT_SIZES = BufferSizes(window_size=4 * MIB, queue_bytes=8 * MIB)
# The floor for a share: below 1 MiB a window holds only four of DDM's 256 KiB SSH packets.
MINIMUM_SIZES = BufferSizes(window_size=1 * MIB, queue_bytes=2 * MIB)

_current: contextvars.ContextVar[BufferSizes] = contextvars.ContextVar(
    "ddm_buffer_sizes", default=DEFAULT_SIZES
)


def current() -> BufferSizes:
    """Return the sizes for connections and relays opened by the calling thread."""
    return _current.get()


def shared_by(workers: int) -> BufferSizes:
    """Return one worker's share of the default sizes when `workers` copies run at once."""
    count = max(1, workers)
    return BufferSizes(
        window_size=max(MINIMUM_SIZES.window_size, DEFAULT_SIZES.window_size // count),
        queue_bytes=max(MINIMUM_SIZES.queue_bytes, DEFAULT_SIZES.queue_bytes // count),
    )


@contextlib.contextmanager
def use(sizes: BufferSizes) -> Iterator[None]:
    """Apply `sizes` to the connections and relays that the calling thread opens meanwhile.

    A context variable is per thread: threads started inside keep the defaults.
    """
    token = _current.set(sizes)
    try:
        yield
    finally:
        _current.reset(token)
