"""SHA-256 of large files in fixed-size pieces, so that a host can hash one file on all cores.

One SHA-256 runs on one core: hashing a 2 GiB file took about 1.4 s on the lab's hosts. A
file of at least MIN_PIECES pieces therefore gets a pieced digest instead of the plain
SHA-256 of its content. The content is split into consecutive pieces of `piece_bytes` (the
last one may be shorter), each piece is hashed with SHA-256, and the digest is

    SHA-256(HEADER || piece_bytes as 8 bytes big-endian || digest of piece 0 || ... ||
            digest of piece n-1 || content length as 8 bytes big-endian)

written as "sha256-pieces-<piece_bytes>:<64 hex digits>". Smaller files keep the plain
SHA-256 hex digest, so digests stored before pieced digests existed stay valid for them.

The check is as strong as plain SHA-256: two different contents with equal pieced digests
would need a SHA-256 collision, either in the outer hash or in one piece. The piece size and
the length are inside the outer hash, so a digest never matches content cut another way.

The host scripts (ddmsyncer/hostmanifest.py, ddmsyncer/hostscan.py) compute the same digest
with threads, because they run on the hosts without this package. They must use the same
PIECE_BYTES, MIN_PIECES and HEADER; a unit test compares them.
"""

from __future__ import annotations

import hashlib
from typing import Any

# 16 MiB keeps the list of piece digests small (4 KiB for 2 GiB) while a 64 MiB file still
# splits across two threads.
PIECE_BYTES = 16 * 1024 * 1024
MIN_PIECES = 4
HEADER = b"ddm sha256 pieces\n"
PREFIX = "sha256-pieces-"


def is_pieced_size(size: int, piece_bytes: int = PIECE_BYTES) -> bool:
    """Return True when a file of `size` bytes gets a pieced digest rather than plain SHA-256."""
    return size >= MIN_PIECES * piece_bytes


def is_pieced_digest(digest: str) -> bool:
    return digest.startswith(PREFIX)


def digest_fits_size(digest: str, size: int, piece_bytes: int = PIECE_BYTES) -> bool:
    """Return True when `digest` has the form that a file of `size` bytes gets now.

    A hash cache row stored before pieced digests existed contains the plain SHA-256 of a large
    file, and a host scan now reports its pieced digest; such a row must not be used.
    """
    if is_pieced_size(size, piece_bytes):
        return digest.startswith(f"{PREFIX}{piece_bytes}:")
    return not is_pieced_digest(digest)


class PiecedSHA256:
    """Incremental pieced digest of a stream, fed in chunks of any size."""

    def __init__(self, piece_bytes: int = PIECE_BYTES) -> None:
        if piece_bytes <= 0:
            raise ValueError(f"piece size must be positive, not {piece_bytes}")
        self.piece_bytes = piece_bytes
        self._outer = hashlib.sha256(HEADER + piece_bytes.to_bytes(8, "big"))
        self._piece: Any = hashlib.sha256()
        self._piece_filled = 0
        self._length = 0

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            take = min(len(view), self.piece_bytes - self._piece_filled)
            self._piece.update(view[:take])
            self._piece_filled += take
            self._length += take
            view = view[take:]
            if self._piece_filled == self.piece_bytes:
                self._outer.update(self._piece.digest())
                self._piece = hashlib.sha256()
                self._piece_filled = 0

    def hexdigest(self) -> str:
        """Return the digest of everything fed so far, in its "sha256-pieces-N:HEX" form."""
        outer = self._outer.copy()
        if self._piece_filled:
            outer.update(self._piece.digest())
        outer.update(self._length.to_bytes(8, "big"))
        return f"{PREFIX}{self.piece_bytes}:{outer.hexdigest()}"


def content_hasher(size: int, piece_bytes: int = PIECE_BYTES) -> Any:
    """Return the hasher for a file of `size` bytes: PiecedSHA256 or hashlib's SHA-256.

    Both have update() and hexdigest().
    """
    if is_pieced_size(size, piece_bytes):
        return PiecedSHA256(piece_bytes)
    return hashlib.sha256()
