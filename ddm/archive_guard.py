"""Reject tar members that would write outside the volume they are unpacked into.

Both data paths unpack an archive on the target: the Docker engine does it for the Engine API
path (PUT /containers/{id}/archive), and the host's tar does it for the host-level path. Each
passes every member through `ArchiveGuard.check()` while the stream crosses the controller,
before the bytes that complete the member's header are sent on, so the target never unpacks a
member the guard rejected.

A member is rejected when:

* its path is absolute, or has a ".." component;
* its path lies outside the archive root (the Engine API names members "v", "v/a", ... for
  the container path /v; the host-level path uses the root ".");
* a hard link's target breaks one of the two rules above;
* an earlier member made one of its parent directories a symlink, so unpacking it would write
  wherever that symlink points ("symlink, then write through it"). This also covers a hard
  link whose target path runs through such a symlink.

A symlink's own text may point anywhere, absolute and dangling targets included: that is
ordinary volume content, and it is harmless as long as nothing is written through the link.
"""

from __future__ import annotations

from collections.abc import Callable

from ddm.errors import MigrationFailed
from ddm.tarstream import TarEntry, TarStreamParser, display_path

ROOT = b"."


class UnsafeArchiveMember(MigrationFailed):
    """An archive member would write outside the volume root; the copy was stopped."""


def split_member_path(path: bytes) -> list[bytes]:
    """Return the components of a member path without empty and "." components."""
    return [part for part in path.split(b"/") if part not in (b"", b".")]


class ArchiveGuard:
    """Checks the members of one tar stream, in stream order, for writes outside the root.

    `root` is the member path that stands for the volume root: b"v" for an Engine API
    archive of /v, b"." when members are named relative to the volume root.
    """

    def __init__(self, root: bytes = ROOT, *, description: str = "archive") -> None:
        self.root = tuple(split_member_path(root))
        self.description = description
        # Paths (as component tuples) that the stream has made symlinks so far.
        self._symlinks: set[tuple[bytes, ...]] = set()
        self.members_checked = 0

    def check(self, entry: TarEntry) -> None:
        """Raise UnsafeArchiveMember when `entry` could write outside the root."""
        components = self._inside_root(entry.path, entry, "path")
        if entry.type == "hardlink" and entry.linkname is not None:
            self._inside_root(entry.linkname, entry, "hard link target")

        # A member that replaces a symlink (same path, any type) removes it, and a new
        # symlink is recorded only after its own parents were checked above.
        self._symlinks.discard(components)
        if entry.type == "symlink":
            self._symlinks.add(components)
        self.members_checked += 1

    def _inside_root(self, path: bytes, entry: TarEntry, what: str) -> tuple[bytes, ...]:
        if path.startswith(b"/"):
            self._reject(entry, f"its {what} {display_path(path)} is absolute")

        components = tuple(split_member_path(path))
        if b".." in components:
            self._reject(entry, f"its {what} {display_path(path)} contains '..'")
        if components[: len(self.root)] != self.root:
            root = display_path(b"/".join(self.root) or ROOT)
            self._reject(entry, f"its {what} {display_path(path)} is outside the root {root}")

        if not self._symlinks:
            return components
        for end in range(len(self.root), len(components)):
            parent = components[:end]
            if parent in self._symlinks:
                self._reject(
                    entry,
                    f"its {what} {display_path(path)} runs through the symlink "
                    f"{display_path(b'/'.join(parent) or ROOT)} of an earlier member",
                )
        return components

    def _reject(self, entry: TarEntry, reason: str) -> None:
        raise UnsafeArchiveMember(
            f"unsafe member {display_path(entry.path)} at byte offset {entry.offset} of the "
            f"{self.description}: {reason}",
            hint="nothing of it was unpacked; inspect the source volume for hostile content",
        )


def guard_observer(guard: ArchiveGuard) -> tuple[Callable[[memoryview], None], TarStreamParser]:
    """Return a relay observer that parses the stream and checks each member with `guard`.

    The parser is returned too, so the caller can call its close() at the end of the stream.
    """
    parser = TarStreamParser(on_entry=guard.check)
    return parser.feed, parser
