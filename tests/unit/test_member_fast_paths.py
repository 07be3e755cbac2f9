"""The per-member shortcuts of the tar parser and the manifest builder give the results of
the general code paths they skip, and invalid input still fails."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest
import xxhash

from ddm import tarstream
from ddm.manifest import EntryTable, ManifestBuilder, ManifestEntry, ManifestError
from ddm.tarstream import TarStreamError, TarStreamParser


def pax_records(records: list[tuple[bytes, bytes]]) -> bytes:
    output = b""
    for key, value in records:
        body = b" " + key + b"=" + value + b"\n"
        length = len(body) + 1
        while len(str(length).encode()) + len(body) != length:
            length += 1
        output += str(length).encode() + body
    return output


def parse_by_lengths(data: bytes, monkeypatch: pytest.MonkeyPatch) -> object:
    """Return the records or the error message of the length-following parse alone."""
    with monkeypatch.context() as patch:
        patch.setattr(tarstream, "_split_pax_records", lambda data: None)
        try:
            return tarstream._parse_pax_records(data, 0)
        except TarStreamError as error:
            return str(error)


def parse_with_split(data: bytes) -> object:
    try:
        return tarstream._parse_pax_records(data, 0)
    except TarStreamError as error:
        return str(error)


TIMES = pax_records([(b"mtime", b"1796449833.68894005"), (b"atime", b"1796449830.445874437"),
                     (b"ctime", b"1796449833.688940051")])

PAX_CASES = {
    "times": TIMES,
    "empty": b"",
    "path with spaces and equals": pax_records([(b"path", b"a b=c/d e")]),
    "value with newline": pax_records([(b"SCHILY.xattr.user.x", b"one\ntwo\n")]),
    "binary value": pax_records([(b"SCHILY.xattr.user.b", bytes(range(256)))]),
    "empty value": pax_records([(b"uname", b"")]),
    "zero padding": TIMES + bytes(40),
    "leading zeros": b"00000000000000000000029 mtime=1796449833.68894005\n",
    "length too short": b"28 mtime=1796449833.68894005\n",
    "length too long": b"30 mtime=1796449833.68894005\n",
    "no newline at end": b"29 mtime=1796449833.68894005",
    "no equals sign": b"10 mtime12\n",
    "empty keyword": b"7 =abc\n",
    "no length": b" mtime=1\n",
    "text after records": TIMES + b"garbage",
}


@pytest.mark.parametrize("case", sorted(PAX_CASES))
def test_pax_split_matches_length_walk(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = PAX_CASES[case]

    assert parse_with_split(data) == parse_by_lengths(data, monkeypatch)


def test_pax_split_returns_records() -> None:
    records = tarstream._split_pax_records(TIMES)

    assert records == [(b"mtime", b"1796449833.68894005"), (b"atime", b"1796449830.445874437"),
                       (b"ctime", b"1796449833.688940051")]


def test_pax_split_defers_newline_values() -> None:
    data = PAX_CASES["value with newline"]

    assert tarstream._split_pax_records(data) is None
    assert tarstream._parse_pax_records(data, 0) == [(b"SCHILY.xattr.user.x", b"one\ntwo\n")]


NUMBER_FIELDS = [
    b"0000644\0",
    b"0000755\0",
    b"    644 ",
    b"644\0\0\0\0\0",
    b"\0\0\0\0\0\0\0\0",
    b"00000010000\0",
    b"\x80\0\0\0\0\0\0\0\0\0\x10\0",
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xfe",
]


@pytest.mark.parametrize("field", NUMBER_FIELDS)
def test_cached_number_matches_parse(field: bytes) -> None:
    expected = tarstream._parse_number(field, "mode", 0)

    assert tarstream._cached_number(field, "mode", 0) == expected
    assert tarstream._cached_number(field, "mode", 0) == expected


@pytest.mark.parametrize("field", [b"0000899\0", b"12ab\0\0\0\0", b"\x41\x42\x43\x44\0\0\0\0"])
def test_cached_number_rejects_invalid(field: bytes) -> None:
    for _ in range(2):
        with pytest.raises(TarStreamError, match="invalid number"):
            tarstream._cached_number(field, "uid", 512)
    assert field not in tarstream._NUMBER_CACHE


def test_number_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tarstream, "_NUMBER_CACHE", {})
    monkeypatch.setattr(tarstream, "_NUMBER_CACHE_MAX", 8)

    for value in range(20):
        field = b"%07o\0" % value
        assert tarstream._cached_number(field, "gid", 0) == value

    assert len(tarstream._NUMBER_CACHE) <= 8


# Archives


def member(name: str, content: bytes = b"", *, kind: bytes = tarfile.REGTYPE,
           pax: dict[str, str] | None = None, linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(content) if kind == tarfile.REGTYPE else 0
    info.mode = 0o640
    info.uid, info.gid = 1000, 1001
    info.mtime = 1_700_000_000
    info.linkname = linkname
    if pax:
        info.pax_headers = pax
    return info, content


def write_pax(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    output = io.BytesIO()
    with tarfile.open(fileobj=output, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, content in members:
            archive.addfile(info, io.BytesIO(content) if info.isreg() else None)
    return output.getvalue()


CONTENTS = {
    "empty": b"",
    "one byte": b"x",
    "block": bytes(range(256)) * 16,
    "odd": b"abc" * 1001,
    "large": bytes(range(251)) * 600,
}


def mixed_archive() -> bytes:
    members = [member("./", kind=tarfile.DIRTYPE)]
    for name, content in CONTENTS.items():
        members.append(member(f"./d/{name}", content, pax={"mtime": "1700000000.123456789"}))
    long_name = "./" + "n" * 150 + "/file"
    members += [
        member(long_name, b"long name content"),
        member("./x", b"with xattr", pax={"SCHILY.xattr.user.tag": "v1",
                                          "SCHILY.acl.access": "user::rw-,group::r--,other::---",
                                          "mtime": "1700000001.5"}),
        member("./hard", kind=tarfile.LNKTYPE, linkname="./d/block"),
        member("./link", kind=tarfile.SYMTYPE, linkname="d/odd"),
    ]
    return write_pax(members)


def build(data: bytes, chunk_size: int) -> dict[bytes, ManifestEntry]:
    builder = ManifestBuilder(hash_content=True, sha256=True)
    for position in range(0, len(data), chunk_size):
        builder.feed(data[position : position + chunk_size])
    manifest = builder.close()
    entries = dict(manifest.entries.items())
    manifest.close()
    return entries


@pytest.mark.parametrize("chunk_size", [1, 511, 4096, 70000, 10**9])
def test_builder_digests_independent_of_chunks(chunk_size: int) -> None:
    data = mixed_archive()

    entries = build(data, chunk_size)

    for name, content in CONTENTS.items():
        entry = entries[b"d/" + name.encode()]
        assert entry.digest == xxhash.xxh3_128_hexdigest(content), name
        assert entry.sha256 == hashlib.sha256(content).hexdigest(), name
    assert entries[b"hard"].digest == entries[b"d/block"].digest
    assert entries[b"hard"].sha256 == entries[b"d/block"].sha256
    assert entries[b"x"].xattrs == {b"user.tag": b"v1"}
    assert entries[b"x"].acl_access == "user::rw-,group::r--,other::---"
    assert entries[b"link"].digest is None
    assert entries == build(data, 1)


def test_builder_digests_of_gnu_sparse_member() -> None:
    # An old GNU sparse member ('S'): 4 KiB of data at offset 8192 of a 16 KiB file.
    data = bytes(range(256)) * 16
    info = tarfile.TarInfo("sparse")
    info.type = tarfile.GNUTYPE_SPARSE
    info.size = len(data)
    info.mtime = 1_700_000_000
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape"))
    header[386:398] = b"%011o\0" % 8192
    header[398:410] = b"%011o\0" % len(data)
    header[483:495] = b"%011o\0" % 16384
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    archive = bytes(header) + data + bytes(1024)
    expected = bytes(8192) + data + bytes(4096)

    for chunk_size in (1, 512, 10**9):
        entry = build(archive, chunk_size)[b"sparse"]
        assert entry.sparse
        assert entry.size == 16384
        assert entry.digest == xxhash.xxh3_128_hexdigest(expected)
        assert entry.sha256 == hashlib.sha256(expected).hexdigest()


@pytest.mark.parametrize("cut", [600, 1024 + 100, 6000, -1, 512])
def test_builder_rejects_truncated_archive(cut: int) -> None:
    # Negative and small cuts count from the end of the last header: tarfile pads the
    # archive with zero blocks to a 10 KiB record.
    data = mixed_archive()
    last_header_end = len(data.rstrip(b"\0")) + 511 & ~511
    if cut <= 512:
        cut += last_header_end
    builder = ManifestBuilder(hash_content=True, sha256=True)

    builder.feed(data[:cut])

    with pytest.raises(ManifestError, match="stream ends"):
        builder.close()


def test_builder_rejects_corrupt_header() -> None:
    data = bytearray(mixed_archive())
    data[512 * 3 + 10] ^= 0x01  # a byte of the name in a later header
    builder = ManifestBuilder(hash_content=True, sha256=True)

    with pytest.raises(ManifestError, match="checksum mismatch"):
        builder.feed(bytes(data))


# pax keywords outside the plain set still reach the sparse, xattr and ACL readers.


def parse_entries(data: bytes) -> list[tarstream.TarEntry]:
    entries: list[tarstream.TarEntry] = []
    parser = TarStreamParser(on_entry=entries.append)
    parser.feed(data)
    parser.close()
    return entries


def raw_pax_member(records: list[tuple[bytes, bytes]], content: bytes) -> bytes:
    data = pax_records(records)
    pax = tarfile.TarInfo("./PaxHeaders/f")
    pax.type = tarfile.XHDTYPE
    pax.size = len(data)
    info = tarfile.TarInfo("./f")
    info.size = len(content)
    return (pax.tobuf(tarfile.USTAR_FORMAT) + data + bytes(-len(data) % 512)
            + info.tobuf(tarfile.USTAR_FORMAT) + content + bytes(-len(content) % 512))


def test_plain_pax_member_has_no_xattrs() -> None:
    records = [(b"mtime", b"1.5"), (b"atime", b"1"), (b"ctime", b"2.25"), (b"path", b"./g")]

    [entry] = parse_entries(raw_pax_member(records, b"abc") + bytes(1024))

    assert entry.path == b"./g"
    assert entry.xattrs == {}
    assert entry.acl_access is None
    assert entry.acl_default is None
    assert not entry.sparse
    assert entry.mtime_ns == 1_500_000_000
    assert entry.ctime_ns == 2_250_000_000


def test_pax_member_with_other_keys_reads_them() -> None:
    records = [(b"mtime", b"1"), (b"LIBARCHIVE.xattr.user.a", b"dmFsdWU"),
               (b"RHT.security.selinux", b"ctx"), (b"SCHILY.acl.default", b"user::rwx")]

    [entry] = parse_entries(raw_pax_member(records, b"abc") + bytes(1024))

    assert entry.xattrs == {b"user.a": b"value", b"security.selinux": b"ctx"}
    assert entry.acl_default == "user::rwx"


def test_sparse_pairs_with_plain_keys_are_read() -> None:
    # Sparse format 0.0 pairs without GNU.sparse.size: the sparse reader must still reject it.
    records = [(b"mtime", b"1"), (b"GNU.sparse.offset", b"0"), (b"GNU.sparse.numbytes", b"3")]

    with pytest.raises(TarStreamError, match="GNU.sparse.size"):
        parse_entries(raw_pax_member(records, b"abc") + bytes(1024))


# EntryTable


def test_table_add_values_equals_add() -> None:
    entry = ManifestEntry(path=b"a/b", type="file", mode=0o600, uid=1, gid=2, size=3,
                          mtime_ns=5, xattrs={b"user.z": b"1", b"user.a": b"2"}, digest="d",
                          sha256="s")
    by_entry = EntryTable([entry])
    by_values = EntryTable()
    values = tuple(getattr(entry, name) for name in ("type", "mode", "uid", "gid", "size",
                                                     "linkname", "devmajor", "devminor",
                                                     "mtime_ns", "xattrs", "acl_access",
                                                     "acl_default", "sparse", "digest",
                                                     "sha256"))

    by_values.add_values(b"a/b", values)

    assert by_values[b"a/b"] == entry  # read back before the flush
    assert list(by_values.iter_records()) == list(by_entry.iter_records())


# Member path normalization

NORMALIZED_PATHS = {
    b"./d/f": b"d/f",
    b"./f": b"f",
    b"./": b".",
    b".": b".",
    b"": b".",
    b"/": b".",
    b"./.hidden": b".hidden",
    b"././a": b"a",
    b".//a": b"a",
    b"./a/": b"a",
    b"./a//b": b"a//b",
    b"/abs/x": b"abs/x",
    b"../up": b"../up",
    b"./..": b"..",
    b"v/a": b"v/a",
}


@pytest.mark.parametrize("path", sorted(NORMALIZED_PATHS))
def test_normalize_path_cases(path: bytes) -> None:
    from ddm.manifest import _normalize_path

    assert _normalize_path(path) == NORMALIZED_PATHS[path]


# pax times

PAX_TIMES = [b"1796449833.68894005", b"1796449833.688940051", b"1700000000.1", b"0.000000001",
             b"1700000000.1234567891", b"1700000000", b"1700000000.", b"-1.5", b"-0.000000001",
             b"12.000000000"]


def pax_time_by_sign_and_padding(value: bytes) -> int:
    """Return the nanoseconds the general branch computes, written out independently."""
    negative = value.startswith(b"-")
    seconds, _, fraction = value.lstrip(b"-").partition(b".")
    nanoseconds = int(seconds) * 1_000_000_000 + int(fraction[:9].ljust(9, b"0"))
    return -nanoseconds if negative else nanoseconds


@pytest.mark.parametrize("value", PAX_TIMES)
def test_pax_time_matches_general_form(value: bytes) -> None:
    assert tarstream._parse_pax_time(value, 0) == pax_time_by_sign_and_padding(value)


@pytest.mark.parametrize("value", [b"", b".5", b"1.5x", b"1,5", b"x", b"1.-5", b"+1.5"])
def test_pax_time_rejects_invalid(value: bytes) -> None:
    with pytest.raises(TarStreamError, match="invalid pax time"):
        tarstream._parse_pax_time(value, 0)
