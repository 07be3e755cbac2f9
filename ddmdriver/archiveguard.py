"""Reject tar members that could write outside the volume they are unpacked into.

`ArchiveGuard` is a relay observer: it parses the stream on its way to the target and
raises HostileArchive before the chunk that completes a bad member header is sent on.
A member is rejected when its path or hard-link target is absolute or has a ".."
component, or when its path lies below a path that an earlier member made a symlink,
because unpacking it could write through that link. Symlink texts themselves are not checked:
absolute and dangling links are ordinary volume content, and nothing is written through
them once no later member lies below them.
"""

from __future__ import annotations

import logging

from ddm.errors import TransferFailed
from ddm.tarstream import TarEntry, TarStreamError, TarStreamParser, display_path

logger = logging.getLogger(__name__)


class HostileArchive(TransferFailed):
    """A tar member that would write outside the target volume."""


class ArchiveGuard:
    """Relay observer that raises HostileArchive for a member unsafe to unpack.

    `strip_prefix` is the leading component of every member (b"v" for the Engine API
    archive of /v, b"" for a host tar archive made with `-C MOUNTPOINT .`).
    """

    def __init__(self, description: str, *, strip_prefix: bytes = b"") -> None:
        self.description = description
        self.prefix = strip_prefix.strip(b"/")
        self.symlinks: set[tuple[bytes, ...]] = set()
        self.members = 0
        self._parser = TarStreamParser(self._check_member)

    def __call__(self, chunk: memoryview) -> None:
        try:
            self._parser.feed(chunk)
        except TarStreamError as error:
            raise TransferFailed(f"{self.description}: {error}") from None

    def _check_member(self, entry: TarEntry) -> None:
        self.members += 1
        path = self._relative(entry.path)
        self._reject_unsafe_name(entry.path, path, "path")
        if entry.type == "hardlink" and entry.linkname is not None:
            self._reject_unsafe_name(entry.linkname, self._relative(entry.linkname), "hard-link target")

        for parent in _parents(path):
            if parent in self.symlinks:
                self._reject(entry.path, f"lies below the symlink {display_path(b'/'.join(parent))}")

        # A path stays marked after a later member replaces the link, because whether the
        # unpacker removes the link or follows it differs between GNU tar and moby.
        if entry.type == "symlink":
            self.symlinks.add(path)

    def _relative(self, raw: bytes) -> tuple[bytes, ...]:
        components = tuple(part for part in raw.split(b"/") if part not in (b"", b"."))
        if self.prefix and components[:1] == (self.prefix,):
            components = components[1:]
        return components

    def _reject_unsafe_name(self, raw: bytes, components: tuple[bytes, ...], what: str) -> None:
        if raw.startswith(b"/"):
            self._reject(raw, f"has an absolute {what}")
        if b".." in components:
            self._reject(raw, f"has a '..' component in its {what}")

    def _reject(self, raw: bytes, reason: str) -> None:
        message = f"{self.description}: archive member {display_path(raw)} {reason}"
        logger.error("%s; the copy was stopped", message)
        raise HostileArchive(message, hint="the source produced an unsafe archive; nothing "
                             "below the member was written to the target")


def _parents(components: tuple[bytes, ...]) -> list[tuple[bytes, ...]]:
    return [components[:length] for length in range(1, len(components))]
