"""Tests of ddm.archive_guard, alone and inside the relay, with tar streams built by tarfile."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass

import pytest

from ddm.archive_guard import ArchiveGuard, UnsafeArchiveMember, guard_observer
from ddmdriver.relay import archive_root, relay_archive

Member = tuple[str, str, str | bytes]  # (name, type, content or link target)


def build_tar(members: Iterable[Member]) -> bytes:
    """Return a pax tar stream of the members, in order; content is padded to blocks."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, kind, value in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                data = value if isinstance(value, bytes) else value.encode()
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
                continue
            if kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, str(value)
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, str(value)
            archive.addfile(info)
    return buffer.getvalue()


def check_stream(data: bytes, root: bytes = b"v", chunk_size: int = 700) -> ArchiveGuard:
    guard = ArchiveGuard(root)
    feed, parser = guard_observer(guard)
    for start in range(0, len(data), chunk_size):
        feed(memoryview(data[start : start + chunk_size]))
    parser.close()
    return guard


SAFE_VOLUME: list[Member] = [
    ("v", "dir", ""),
    ("v/docs", "dir", ""),
    ("v/docs/readme.txt", "file", "hello\n"),
    ("v/abs-link", "symlink", "/etc/passwd"),
    ("v/up-link", "symlink", "../../outside"),
    ("v/dangling", "symlink", "/nowhere/at/all"),
    ("v/hard", "hardlink", "v/docs/readme.txt"),
    ("v/dots..name", "file", "two dots inside a name are fine"),
]


def test_safe_volume_passes() -> None:
    guard = check_stream(build_tar(SAFE_VOLUME))

    assert guard.members_checked == len(SAFE_VOLUME)


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([("v", "dir", ""), ("v/../evil", "file", "x")], "contains '..'"),
        ([("v", "dir", ""), ("v/a/../../evil", "file", "x")], "contains '..'"),
        ([("v", "dir", ""), ("/etc/evil", "file", "x")], "is absolute"),
        ([("v", "dir", ""), ("etc/evil", "file", "x")], "outside the root v"),
        ([("v", "dir", ""), ("vv/evil", "file", "x")], "outside the root v"),
        ([("v", "dir", ""), ("v/h", "hardlink", "/etc/shadow")], "hard link target /etc/shadow is absolute"),
        ([("v", "dir", ""), ("v/h", "hardlink", "v/../x")], "contains '..'"),
        ([("v", "dir", ""), ("v/h", "hardlink", "etc/shadow")], "outside the root v"),
    ],
)
def test_path_outside_root_rejected(members: list[Member], reason: str) -> None:
    with pytest.raises(UnsafeArchiveMember) as raised:
        check_stream(build_tar(members))

    assert reason in str(raised.value)


def test_write_through_symlink_rejected() -> None:
    members: list[Member] = [
        ("v", "dir", ""),
        ("v/link", "symlink", "/etc"),
        ("v/link/cron.d/evil", "file", "* * * * * root reboot\n"),
    ]

    with pytest.raises(UnsafeArchiveMember) as raised:
        check_stream(build_tar(members))

    message = str(raised.value)
    assert "v/link/cron.d/evil" in message
    assert "runs through the symlink v/link" in message


def test_hard_link_through_symlink_rejected() -> None:
    members: list[Member] = [
        ("v", "dir", ""),
        ("v/link", "symlink", "/etc"),
        ("v/h", "hardlink", "v/link/shadow"),
    ]

    with pytest.raises(UnsafeArchiveMember, match="hard link target v/link/shadow runs through"):
        check_stream(build_tar(members))


def test_root_symlink_rejects_later_members() -> None:
    members: list[Member] = [("v", "symlink", "/"), ("v/etc/evil", "file", "x")]

    with pytest.raises(UnsafeArchiveMember, match="runs through the symlink v "):
        check_stream(build_tar(members))


def test_symlink_replaced_by_directory_is_safe() -> None:
    members: list[Member] = [
        ("v", "dir", ""),
        ("v/link", "symlink", "/etc"),
        ("v/link", "dir", ""),
        ("v/link/file", "file", "x"),
    ]

    assert check_stream(build_tar(members)).members_checked == 4


def test_symlink_to_sibling_then_file_beside_it() -> None:
    # v/a-link points at v/a; writing v/a/x goes through the directory, never the link.
    members: list[Member] = [
        ("v", "dir", ""),
        ("v/a", "dir", ""),
        ("v/a-link", "symlink", "a"),
        ("v/a/x", "file", "x"),
    ]

    assert check_stream(build_tar(members)).members_checked == 4


def test_dot_root_accepts_relative_members() -> None:
    members: list[Member] = [(".", "dir", ""), ("./a", "file", "x"), ("b/c", "file", "y")]

    assert check_stream(build_tar(members), root=b".").members_checked == 3
    with pytest.raises(UnsafeArchiveMember, match="contains '..'"):
        check_stream(build_tar([("./../x", "file", "x")]), root=b".")


def test_archive_root_of_container_paths() -> None:
    assert archive_root("/v") == b"v"
    assert archive_root("/v/") == b"v"
    assert archive_root("/data/vol") == b"vol"
    assert archive_root("/") == b"."


# The relay with in-process engines: the target records every byte it receives.


@dataclass
class FakeHost:
    name: str


class FakeStream:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def read(self, size: int) -> bytes:
        chunk = self.data[self.offset : self.offset + size]
        self.offset += len(chunk)
        return chunk

    def abort(self) -> None:
        self.offset = len(self.data)

    def close(self) -> None:
        pass


class FakeSource:
    def __init__(self, data: bytes) -> None:
        self.host = FakeHost("src")
        self.data = data

    def get_archive(self, container_id: str, path: str, *, chunk_size: int) -> FakeStream:
        return FakeStream(self.data)


class RecordingTarget:
    def __init__(self) -> None:
        self.host = FakeHost("dst")
        self.received = bytearray()

    def put_archive(self, container_id: str, path: str, chunks: Iterable[bytes]) -> None:
        for chunk in chunks:
            self.received += chunk


def hostile_header_end(data: bytes, name: str) -> int:
    """Return the stream offset just past the ustar header block of member `name`."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        member = archive.getmember(name)
    return member.offset_data


def test_relay_stops_before_hostile_header() -> None:
    padding = ("v/padding.bin", "file", bytes(range(256)) * 64)  # 16 KiB before the attack
    data = build_tar([("v", "dir", ""), padding, ("v/link", "symlink", "/etc"),
                      ("v/link/evil", "file", "x")])
    target = RecordingTarget()

    with pytest.raises(UnsafeArchiveMember, match="v/link/evil"):
        relay_archive(FakeSource(data), "a" * 12, "/v", target, "b" * 12, "/",  # type: ignore[arg-type]
                      guard=ArchiveGuard(b"v"), chunk_size=512)

    header_end = hostile_header_end(data, "v/link/evil")
    assert len(target.received) > 16 * 1024
    assert len(target.received) < header_end
    assert bytes(target.received) == data[: len(target.received)]


def test_relay_passes_safe_volume_whole() -> None:
    data = build_tar(SAFE_VOLUME)
    target = RecordingTarget()

    result = relay_archive(FakeSource(data), "a" * 12, "/v", target, "b" * 12, "/",  # type: ignore[arg-type]
                           guard=ArchiveGuard(b"v"), chunk_size=1000)

    assert result.bytes == len(data)
    assert bytes(target.received) == data
