"""Buffer sizes that --parallel workers share (ddmdriver.buffers)."""

from __future__ import annotations

import threading

from ddmdriver import buffers

MIB = 1024 * 1024


def test_one_worker_keeps_default_sizes():
    assert buffers.shared_by(1) == buffers.DEFAULT_SIZES
    assert buffers.DEFAULT_SIZES == buffers.BufferSizes(window_size=4 * MIB, queue_bytes=8 * MIB)


def test_workers_share_default_sizes():
    sizes = buffers.shared_by(3)
    assert sizes.window_size == 4 * MIB // 3
    assert sizes.queue_bytes == 8 * MIB // 3


def test_share_never_below_minimum():
    assert buffers.shared_by(16) == buffers.MINIMUM_SIZES
    assert buffers.shared_by(0) == buffers.DEFAULT_SIZES


def test_use_applies_to_calling_thread_only():
    seen_in_thread: list[buffers.BufferSizes] = []
    shared = buffers.shared_by(4)

    with buffers.use(shared):
        inside = buffers.current()
        thread = threading.Thread(target=lambda: seen_in_thread.append(buffers.current()))
        thread.start()
        thread.join()

    assert inside == shared
    assert seen_in_thread == [buffers.DEFAULT_SIZES]
    assert buffers.current() == buffers.DEFAULT_SIZES
