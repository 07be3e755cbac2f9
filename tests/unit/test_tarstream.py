"""Tests of the tar stream parser against Python's tarfile, GNU tar and the files on disk."""

from __future__ import annotations

import contextlib
import io
import os
import random
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddm.tarstream import TarEntry, TarStreamError, TarStreamParser, display_path

CHUNK_SIZES = [1, 511, 512, 513, 65536, None, "random"]

TARFILE_TYPES = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.CONTTYPE: "file",
    tarfile.GNUTYPE_SPARSE: "file",
    tarfile.LNKTYPE: "hardlink",
    tarfile.SYMTYPE: "symlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.DIRTYPE: "dir",
    tarfile.FIFOTYPE: "fifo",
}


@dataclass
class Parsed:
    entry: TarEntry
    length: int  # bytes passed to on_data
    digest: str | None
    data_calls: int


def split(data: bytes, chunk_size: int | str | None, seed: int = 0) -> Iterator[bytes]:
    if chunk_size is None:
        yield data
        return
    rng = random.Random(seed)
    position = 0
    while position < len(data):
        size = rng.randint(1, 100_000) if chunk_size == "random" else int(chunk_size)
        yield data[position : position + size]
        position += size


def parse(data: bytes, chunk_size: int | str | None = None) -> list[Parsed]:
    results: list[Parsed] = []
    state: dict[str, object] = {}

    def on_entry(entry: TarEntry) -> None:
        state.update(hash=xxhash.xxh3_128(), length=0, calls=0, entry=entry)

    def on_data(view: memoryview) -> None:
        state["hash"].update(view)  # type: ignore[attr-defined]
        state["length"] += len(view)  # type: ignore[operator]
        state["calls"] += 1  # type: ignore[operator]

    def on_entry_end(entry: TarEntry) -> None:
        assert state["entry"] is entry
        digest = state["hash"].hexdigest() if entry.type == "file" else None  # type: ignore
        results.append(Parsed(entry, state["length"], digest, state["calls"]))  # type: ignore

    parser = TarStreamParser(on_entry, on_data, on_entry_end)
    for chunk in split(data, chunk_size):
        parser.feed(chunk)
    parser.close()
    return results


def read_with_tarfile(data: bytes) -> list[dict[str, object]]:
    """Return what Python's tarfile reads from an archive, with independent content digests."""
    members = []
    with tarfile.open(
        fileobj=io.BytesIO(data), mode="r:", encoding="utf-8", errors="surrogateescape"
    ) as archive:
        for member in archive:
            content = None
            if member.isreg():
                extracted = archive.extractfile(member)
                assert extracted is not None
                content = extracted.read()
            members.append(
                {
                    "path": os.fsencode(member.name),
                    "type": TARFILE_TYPES[member.type],
                    "mode": member.mode & 0o7777,
                    "uid": member.uid,
                    "gid": member.gid,
                    "size": member.size if member.isreg() else 0,
                    "linkname": os.fsencode(member.linkname)
                    if member.islnk() or member.issym()
                    else None,
                    "mtime": member.mtime,
                    "devices": (member.devmajor, member.devminor) if member.isdev() else (0, 0),
                    "digest": None if content is None else xxhash.xxh3_128(content).hexdigest(),
                    "sparse": member.sparse is not None,
                }
            )
    return members


def assert_matches_tarfile(parsed: list[Parsed], data: bytes) -> None:
    expected = read_with_tarfile(data)
    assert len(parsed) == len(expected)
    for item, member in zip(parsed, expected, strict=True):
        entry = item.entry
        path = entry.path.rstrip(b"/") if entry.type == "dir" else entry.path
        assert path == member["path"] or path == member["path"] + b"/"
        assert entry.type == member["type"], path
        assert entry.mode == member["mode"], path
        assert entry.uid == member["uid"], path
        assert entry.gid == member["gid"], path
        assert entry.size == member["size"], path
        assert entry.linkname == member["linkname"], path
        assert (entry.devmajor, entry.devminor) == member["devices"], path
        assert abs(entry.mtime_ns / 1e9 - float(member["mtime"])) < 1e-6, path  # type: ignore
        assert entry.sparse == member["sparse"], path
        assert item.digest == member["digest"], path
        if entry.type == "file":
            assert item.length == entry.size, path


# Archives built with Python's tarfile


def make_member(
    name: str,
    kind: bytes = tarfile.REGTYPE,
    content: bytes = b"",
    *,
    mode: int = 0o644,
    uid: int = 1000,
    gid: int = 1000,
    mtime: float = 1_700_000_000,
    linkname: str = "",
    devices: tuple[int, int] = (0, 0),
    pax_headers: dict[str, str] | None = None,
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid = uid
    info.gid = gid
    info.mtime = mtime  # type: ignore[assignment]
    info.linkname = linkname
    info.devmajor, info.devminor = devices
    info.uname = "user"
    info.gname = "group"
    if pax_headers:
        info.pax_headers = pax_headers
    if kind == tarfile.REGTYPE:
        info.size = len(content)
        return info, content
    return info, None


def write_archive(members: list[tuple[tarfile.TarInfo, bytes | None]], tar_format: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(
        fileobj=buffer, mode="w", format=tar_format, encoding="utf-8", errors="surrogateescape"
    ) as archive:
        for info, content in members:
            archive.addfile(info, io.BytesIO(content) if content is not None else None)
    return buffer.getvalue()


def sample_members(tar_format: int) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """Return members of every kind. The ustar variant leaves out what ustar cannot store."""
    rng = random.Random(7)
    extended = tar_format != tarfile.USTAR_FORMAT
    big_id = 3_000_000 if extended else 2_000_000
    members = [
        make_member("top/", tarfile.DIRTYPE, mode=0o755),
        make_member("top/a/b/c/", tarfile.DIRTYPE, mode=0o700),
        make_member("top/a/b/c/deep.txt", content=b"deep\n"),
        make_member("top/empty-dir/", tarfile.DIRTYPE),
        make_member("top/empty-file"),
        make_member("top/one-byte", content=b"x"),
        make_member("top/511", content=rng.randbytes(511)),
        make_member("top/512", content=rng.randbytes(512)),
        make_member("top/513", content=rng.randbytes(513)),
        make_member("top/large", content=rng.randbytes(200_000)),
        make_member("top/hard", tarfile.LNKTYPE, linkname="top/large"),
        make_member("top/absolute-link", tarfile.SYMTYPE, linkname="/etc/passwd"),
        make_member("top/dangling-link", tarfile.SYMTYPE, linkname="../nowhere/x"),
        make_member("top/big-owner", content=b"owner", uid=big_id, gid=big_id),
        make_member("top/setuid", content=b"#!/bin/sh\n", mode=0o4755),
        make_member("top/sticky/", tarfile.DIRTYPE, mode=0o1777),
        make_member("top/setgid-dir/", tarfile.DIRTYPE, mode=0o2775),
        make_member("top/fifo", tarfile.FIFOTYPE, mode=0o600),
        make_member("top/null", tarfile.CHRTYPE, mode=0o666, devices=(1, 3)),
        make_member("top/disk", tarfile.BLKTYPE, mode=0o660, devices=(8, 0)),
        make_member("top/bad\udcff name", content=b"not utf-8"),
        make_member("top/" + "d" * 95 + "/" + "f" * 100, content=b"200"),  # 200 bytes
        make_member("p" * 155 + "/" + "n" * 99, content=b"255"),  # 255 bytes
    ]
    if extended:
        members += [
            make_member("x" * 150 + "/" + "y" * 150, content=b"301 bytes"),
            make_member("top/long-link", tarfile.SYMTYPE, linkname="t" * 150 + "/target"),
            make_member("top/old", content=b"old", mtime=-1000),
        ]
    if tar_format == tarfile.PAX_FORMAT:
        members.append(make_member("top/fraction", content=b"f", mtime=1_700_000_000.25))
    return members


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize(
    "tar_format",
    [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT],
    ids=["pax", "gnu", "ustar"],
)
def test_parser_matches_tarfile(tar_format: int, chunk_size: int | str | None) -> None:
    data = write_archive(sample_members(tar_format), tar_format)

    parsed = parse(data, chunk_size)

    assert_matches_tarfile(parsed, data)


def test_parser_reads_special_fields() -> None:
    data = write_archive(sample_members(tarfile.PAX_FORMAT), tarfile.PAX_FORMAT)

    entries = {item.entry.path: item.entry for item in parse(data)}

    assert entries[b"top/big-owner"].uid == 3_000_000
    assert entries[b"top/setuid"].mode == 0o4755
    assert entries[b"top/sticky/"].mode == 0o1777
    assert entries[b"top/bad\xff name"].type == "file"
    assert entries[b"top/fraction"].mtime_ns == 1_700_000_000_250_000_000
    assert entries[b"top/old"].mtime_ns == -1000 * 10**9
    assert entries[b"top/null"].devmajor == 1
    assert entries[b"top/null"].devminor == 3
    assert entries[b"top/hard"].linkname == b"top/large"
    assert entries[b"top/hard"].size == 0
    assert entries[b"top/absolute-link"].linkname == b"/etc/passwd"
    assert entries[b"top/one-byte"].uname == "user"
    assert len(entries[b"x" * 150 + b"/" + b"y" * 150].path) == 301


def test_gnu_base256_fields() -> None:
    data = write_archive(sample_members(tarfile.GNU_FORMAT), tarfile.GNU_FORMAT)
    header = data[data.index(b"top/big-owner") :][:512]

    entries = {item.entry.path: item.entry for item in parse(data)}

    assert header[108] == 0x80  # uid is written in base-256
    assert entries[b"top/big-owner"].uid == 3_000_000
    assert entries[b"top/big-owner"].gid == 3_000_000
    assert entries[b"top/old"].mtime_ns == -1000 * 10**9


def test_content_arrives_in_whole_slices() -> None:
    data = write_archive([make_member("f", content=bytes(1024 * 1024))], tarfile.PAX_FORMAT)

    parsed = parse(data)

    assert parsed[0].data_calls == 1
    assert parsed[0].length == 1024 * 1024


def test_entry_offset_points_at_first_header() -> None:
    members = [
        make_member("a", content=b"a" * 600),
        make_member("b" * 120, content=b"b"),  # needs a pax header
    ]
    data = write_archive(members, tarfile.PAX_FORMAT)

    parsed = parse(data)

    assert parsed[0].entry.offset == 0
    assert parsed[1].entry.offset == 512 + 1024
    assert data[parsed[1].entry.offset + 156 : parsed[1].entry.offset + 157] == b"x"


# Hand-made extension headers


def pax_records(records: list[tuple[bytes, bytes]]) -> bytes:
    output = b""
    for key, value in records:
        body = b" " + key + b"=" + value + b"\n"
        length = len(body) + 1
        while len(str(length).encode()) + len(body) != length:
            length += 1
        output += str(length).encode() + body
    return output


def raw_member(name: bytes, kind: bytes, content: bytes, **fields: int) -> bytes:
    info = tarfile.TarInfo(name.decode("utf-8", "surrogateescape"))
    info.type = kind
    info.size = len(content)
    info.mode = fields.get("mode", 0o644)
    info.mtime = fields.get("mtime", 1_700_000_000)
    header = info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    return header + content + bytes(-len(content) % 512)


def end_marker() -> bytes:
    return bytes(1024)


def test_pax_binary_xattrs_and_acls() -> None:
    acl = b"user::rw-,user:1000:r--,group::r--,mask::r--,other::r--"
    records = pax_records(
        [
            (b"path", b"renamed\xfe"),
            (b"SCHILY.xattr.user.binary", b"\x00\xff\n="),
            (b"SCHILY.xattr.user.empty", b""),
            (b"LIBARCHIVE.xattr.user.percent%3Dname", b"aGVsbG8"),  # "hello", no padding
            (b"RHT.security.selinux", b"system_u:object_r:tmp_t:s0"),
            (b"SCHILY.acl.access", acl),
            (b"SCHILY.acl.default", b"user::rwx,group::r-x,other::r-x"),
            (b"mtime", b"1700000000.123456789123"),
            (b"uid", b"4000000000"),
            (b"gname", b"staff"),
        ]
    )
    data = (
        raw_member(b"PaxHeaders/x", b"x", records)
        + raw_member(b"placeholder", tarfile.REGTYPE, b"content")
        + end_marker()
    )

    [item] = parse(data, 1)

    entry = item.entry
    assert entry.path == b"renamed\xfe"
    assert entry.xattrs == {
        b"user.binary": b"\x00\xff\n=",
        b"user.empty": b"",
        b"user.percent=name": b"hello",
        b"security.selinux": b"system_u:object_r:tmp_t:s0",
    }
    assert entry.acl_access == acl.decode()
    assert entry.acl_default == "user::rwx,group::r-x,other::r-x"
    assert entry.mtime_ns == 1_700_000_000_123_456_789
    assert entry.uid == 4_000_000_000
    assert entry.gname == "staff"
    assert item.digest == xxhash.xxh3_128(b"content").hexdigest()


def test_pax_global_header_applies_until_overridden() -> None:
    global_records = pax_records([(b"uid", b"5000000"), (b"SCHILY.xattr.user.g", b"1")])
    local_records = pax_records([(b"uid", b""), (b"gid", b"42")])
    data = (
        raw_member(b"GlobalHead", b"g", global_records)
        + raw_member(b"first", tarfile.REGTYPE, b"1")
        + raw_member(b"PaxHeaders/second", b"x", local_records)
        + raw_member(b"second", tarfile.REGTYPE, b"2")
        + end_marker()
    )

    first, second = (item.entry for item in parse(data, 7))

    assert first.uid == 5_000_000
    assert first.xattrs == {b"user.g": b"1"}
    assert first.offset == 1024  # the global header is no part of the member
    assert second.uid == 0  # the empty local value cancels the global one
    assert second.gid == 42
    assert second.offset == 2048


def test_pax_size_over_8_gib() -> None:
    size = 9 * 1024**3
    info, _ = make_member("huge")
    info.size = size
    header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    assert b" size=9663676416\n" in header
    received = 0

    def on_data(view: memoryview) -> None:
        nonlocal received
        received += len(view)

    entries: list[TarEntry] = []
    parser = TarStreamParser(entries.append, on_data)
    parser.feed(header)
    zeros = bytes(16 * 1024 * 1024)
    for _ in range(size // len(zeros)):
        parser.feed(zeros)
    parser.feed(end_marker())
    parser.close()

    assert entries[0].size == size
    assert received == size


def test_gnu_base256_size_over_8_gib() -> None:
    size = 8 * 1024**3 + 512
    info, _ = make_member("huge")
    info.size = size
    header = info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
    assert header[124] == 0x80
    entries: list[TarEntry] = []
    parser = TarStreamParser(entries.append)  # no on_data: the content is skipped

    parser.feed(header)
    zeros = bytes(16 * 1024 * 1024)
    for _ in range(size // len(zeros)):
        parser.feed(zeros)
    parser.feed(bytes(size % len(zeros)))
    parser.feed(end_marker())
    parser.close()

    assert entries[0].size == size


def test_old_gnu_sparse_from_hand_made_header() -> None:
    # An 'S' header with two extents and the real size. The data is the two extents.
    info, _ = make_member("sparse")
    info.size = 5
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape"))
    header[156:157] = b"S"
    header[386:410] = b"00000000010\0" + b"00000000002\0"
    header[410:434] = b"00000000100\0" + b"00000000003\0"
    header[483:495] = b"00000000200\0"
    header[148:156] = b"        "
    header[148:156] = b"%06o\0 " % sum(header)
    data = bytes(header) + b"abcde".ljust(512, b"\0") + end_marker()

    [item] = parse(data, 3)

    expected = bytearray(0o200)
    expected[0o10 : 0o10 + 2] = b"ab"
    expected[0o100 : 0o100 + 3] = b"cde"
    assert item.entry.sparse
    assert item.entry.size == 0o200
    assert item.digest == xxhash.xxh3_128(bytes(expected)).hexdigest()


# Errors


@pytest.mark.parametrize("cut", [100, 512, 700, 1024 + 300, -1024, -512, -1])
def test_truncated_stream_raises_on_close(cut: int) -> None:
    data = write_archive([make_member("a", content=b"a" * 600)], tarfile.USTAR_FORMAT)
    data = data[: data.rindex(b"a") + 1] + bytes(512 - 600 % 512) + end_marker()
    truncated = data[:cut]
    parser = TarStreamParser()

    parser.feed(truncated)
    with pytest.raises(TarStreamError) as caught:
        parser.close()

    assert caught.value.offset == len(truncated)
    assert f"at byte offset {len(truncated)}" in str(caught.value)


def test_truncated_stream_names_member() -> None:
    data = write_archive([make_member("member", content=b"a" * 600)], tarfile.USTAR_FORMAT)
    parser = TarStreamParser()

    parser.feed(data[:700])
    with pytest.raises(TarStreamError, match=r"inside the data of member \(836 bytes missing\)"):
        parser.close()


def test_corrupted_checksum_raises_with_header_offset() -> None:
    data = bytearray(
        write_archive(
            [make_member("first", content=b"1" * 100), make_member("second")],
            tarfile.USTAR_FORMAT,
        )
    )
    data[1024 + 3] ^= 0x01  # inside the name of the second header
    parser = TarStreamParser()

    with pytest.raises(TarStreamError, match="checksum") as caught:
        for chunk in split(bytes(data), 100):
            parser.feed(chunk)

    assert caught.value.offset == 1024
    with pytest.raises(TarStreamError) as again:
        parser.feed(b"more")
    assert again.value is caught.value


def test_lone_zero_block_before_header_raises() -> None:
    member = write_archive([make_member("a")], tarfile.USTAR_FORMAT)[:512]
    parser = TarStreamParser()

    with pytest.raises(TarStreamError, match="single zero block") as caught:
        parser.feed(bytes(512) + member)

    assert caught.value.offset == 512


def test_invalid_pax_record_raises() -> None:
    data = raw_member(b"PaxHeaders/x", b"x", b"99 path=a\n") + end_marker()

    with pytest.raises(TarStreamError, match="pax record"):
        TarStreamParser().feed(data)


def test_oversized_extension_header_raises() -> None:
    records = pax_records([(b"path", b"p" * 5000)])
    data = raw_member(b"PaxHeaders/x", b"x", records)

    with pytest.raises(TarStreamError, match="exceeds the maximum of 4096 bytes"):
        TarStreamParser(max_extension_size=4096).feed(data)


def test_garbage_after_end_marker_is_counted() -> None:
    data = write_archive([make_member("a")], tarfile.USTAR_FORMAT)
    parser = TarStreamParser()

    parser.feed(data + b"garbage")
    parser.close()

    assert parser.finished
    assert parser.trailing_bytes == len(data) - 512 - 1024 + len(b"garbage")


def test_callback_error_stops_parser() -> None:
    def on_entry(entry: TarEntry) -> None:
        raise KeyError("rejected")

    parser = TarStreamParser(on_entry)
    data = write_archive([make_member("a")], tarfile.USTAR_FORMAT)

    with pytest.raises(KeyError):
        parser.feed(data)
    with pytest.raises(KeyError):
        parser.close()


# Archives written by GNU tar from real files


def sparse_file(path: Path, size: int, data_offsets: list[int]) -> None:
    with open(path, "wb") as file:
        file.truncate(size)
        for offset in data_offsets:
            file.seek(offset)
            file.write(b"data@%d" % offset)


def make_tree(root: Path) -> None:
    """Create a tree with a member of every kind. Needs root for chown and mknod."""
    (root / "dir" / "nested" / "deeper").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "empty-file").touch()
    (root / "dir" / "nested" / "deeper" / "file.txt").write_bytes(b"nested\n")
    (root / "random").write_bytes(random.Random(3).randbytes(300_000))
    os.link(root / "random", root / "hard-link")
    os.symlink("/etc/hostname", root / "absolute-link")
    os.symlink("missing/target", root / "dangling-link")
    os.mkfifo(root / "fifo")
    (root / "setuid").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "setuid", 0o4755)
    (root / "sticky").mkdir()
    os.chmod(root / "sticky", 0o1777)
    (root / "owned").write_bytes(b"owner")
    os.chown(root / "owned", 3_000_000, 3_000_000)
    (root / os.fsdecode(b"bad\xffname")).write_bytes(b"non-utf-8 name")
    long_dir = root / ("d" * 200)
    long_dir.mkdir()
    (long_dir / ("f" * 200)).write_bytes(b"long path")
    sparse_file(root / "sparse", 5 * 1024 * 1024, [1024 * 1024, 3 * 1024 * 1024 + 100])
    sparse_file(root / "fragmented", 8 * 1024 * 1024, [i * 65536 for i in range(1, 100)])
    os.setxattr(root / "random", "user.binary", b"\x00\xff binary")
    os.setxattr(root / "empty-file", "user.comment", b"hello")
    with contextlib.suppress(PermissionError):  # the tests then run without a device node
        os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))


def gnu_tar(root: Path, *options: str) -> bytes:
    tar = shutil.which("tar")
    if tar is None:
        pytest.skip("GNU tar is not installed")
    command = [tar, "--numeric-owner", "--sparse", *options, "-C", str(root), "-cf", "-", "."]
    return subprocess.run(command, check=True, capture_output=True).stdout


def set_acl(path: Path) -> bool:
    setfacl = shutil.which("setfacl")
    if setfacl is None:
        return False
    result = subprocess.run(
        [setfacl, "-m", "u:1234:r", str(path)], check=False, capture_output=True
    )
    return result.returncode == 0


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0:
        pytest.skip("building the tree needs root (chown, mknod)")
    root = tmp_path_factory.mktemp("tree")
    make_tree(root)
    return root


def hard_link_pair(entries: dict[bytes, Parsed], *paths: bytes) -> dict[str, Parsed]:
    """Return the two members of a hard-link pair by type, whichever tar archived first."""
    pair = {entries[path].entry.type: entries[path] for path in paths}
    assert sorted(pair) == ["file", "hardlink"]
    return pair


def disk_digest(path: Path) -> str:
    return xxhash.xxh3_128(path.read_bytes()).hexdigest()


GNU_TAR_VARIANTS = {
    "posix-1.0": ["--format=posix", "--xattrs", "--acls", "--sparse-version=1.0"],
    "posix-0.1": ["--format=posix", "--xattrs", "--acls", "--sparse-version=0.1"],
    "posix-0.0": ["--format=posix", "--xattrs", "--acls", "--sparse-version=0.0"],
    "gnu": ["--format=gnu"],
}


@pytest.mark.parametrize("variant", GNU_TAR_VARIANTS)
@pytest.mark.parametrize("chunk_size", [1, 511, 513, 65536, None, "random"])
def test_gnu_tar_archive_matches_disk(tree: Path, variant: str, chunk_size: object) -> None:
    data = gnu_tar(tree, *GNU_TAR_VARIANTS[variant])

    parsed = parse(data, chunk_size)  # type: ignore[arg-type]

    assert_matches_tarfile(parsed, data)
    entries = {item.entry.path.rstrip(b"/"): item for item in parsed}
    assert entries[b"./sticky"].entry.path == b"./sticky/"
    linked = hard_link_pair(entries, b"./random", b"./hard-link")
    entries[b"./random"] = linked["file"]
    for relative in ("random", "sparse", "fragmented", "dir/nested/deeper/file.txt"):
        item = entries[b"./" + relative.encode()]
        assert item.digest == disk_digest(tree / relative), relative
        assert item.entry.size == (tree / relative).stat().st_size, relative
    assert entries[b"./sparse"].entry.sparse
    assert entries[b"./fragmented"].entry.sparse
    assert linked["hardlink"].entry.linkname == linked["file"].entry.path
    assert entries[b"./owned"].entry.uid == 3_000_000
    assert entries[b"./setuid"].entry.mode == 0o4755
    assert entries[b"./sticky"].entry.mode == 0o1777
    assert entries[b"./fifo"].entry.type == "fifo"
    assert entries[b"./dangling-link"].entry.linkname == b"missing/target"
    assert entries[b"./bad\xffname"].digest == xxhash.xxh3_128(b"non-utf-8 name").hexdigest()
    long_path = b"./" + b"d" * 200 + b"/" + b"f" * 200
    assert entries[long_path].digest == xxhash.xxh3_128(b"long path").hexdigest()
    if (tree / "null").exists():
        assert (entries[b"./null"].entry.devmajor, entries[b"./null"].entry.devminor) == (1, 3)


def test_gnu_tar_posix_xattrs_and_acl(tree: Path, tmp_path: Path) -> None:
    acl_file = tmp_path / "acl"
    acl_file.write_bytes(b"acl")
    if not set_acl(acl_file):
        pytest.skip("setfacl failed on this file system")
    shutil.copy(acl_file, tree / "acl")
    assert set_acl(tree / "acl")
    try:
        data = gnu_tar(tree, *GNU_TAR_VARIANTS["posix-1.0"])
    finally:
        (tree / "acl").unlink()

    parsed = {item.entry.path: item for item in parse(data, 4096)}
    entries = {path: item.entry for path, item in parsed.items()}
    linked = hard_link_pair(parsed, b"./random", b"./hard-link")

    # GNU tar 1.34 writes xattrs only on the first member of a hard-link group.
    assert linked["file"].entry.xattrs == {b"user.binary": b"\x00\xff binary"}
    assert linked["hardlink"].entry.xattrs == {}
    assert entries[b"./empty-file"].xattrs == {b"user.comment": b"hello"}
    assert entries[b"./acl"].acl_access is not None
    assert "user:1234:r--" in entries[b"./acl"].acl_access
    assert entries[b"./random"].mtime_ns == (tree / "random").stat().st_mtime_ns


# Property test


member_names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
    min_size=1,
    max_size=120,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    files=st.lists(
        st.tuples(member_names, st.binary(max_size=3000), st.integers(0, 2**21 - 1)),
        max_size=8,
        unique_by=lambda item: item[0],
    ),
    tar_format=st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT]),
    seed=st.integers(0, 2**32),
)
def test_random_archives_match_tarfile(
    files: list[tuple[str, bytes, int]], tar_format: int, seed: int
) -> None:
    members = [make_member(name, content=content, uid=uid) for name, content, uid in files]
    data = write_archive(members, tar_format)
    rng = random.Random(seed)
    chunks = []
    position = 0
    while position < len(data):
        size = rng.choice([1, 100, 511, 512, 513, 4096, 70000])
        chunks.append(data[position : position + size])
        position += size

    results: list[Parsed] = []
    state: dict[str, object] = {}
    parser = TarStreamParser(
        lambda entry: state.update(hash=xxhash.xxh3_128()),
        lambda view: state["hash"].update(view),  # type: ignore[attr-defined]
        lambda entry: results.append(
            Parsed(entry, entry.size, state["hash"].hexdigest(), 0)  # type: ignore
        ),
    )
    for chunk in chunks:
        parser.feed(chunk)
    parser.close()

    assert_matches_tarfile(results, data)


def test_display_path_escapes() -> None:
    assert display_path(b"plain/path") == "plain/path"
    assert display_path(b"bad\xffbyte") == "bad\\xffbyte"
    assert display_path(b"new\nline\ttab") == "new\\nline\\ttab"
    assert display_path(b"back\\slash") == "back\\\\slash"
    assert display_path(b"\x01") == "\\x01"
    assert display_path("caf\u00e9".encode()) == "caf\u00e9"
    assert display_path("\u0085".encode()) == "\\u0085"
    assert display_path("\u202e".encode()) == "\\u202e"
