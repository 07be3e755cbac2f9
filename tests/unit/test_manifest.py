"""Tests of manifest building, JSON round trips and manifest comparison."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import xxhash

from ddm.manifest import (
    ALL_ASPECTS,
    DEEP_ASPECTS,
    QUICK_ASPECTS,
    Difference,
    Manifest,
    ManifestBuilder,
    ManifestEntry,
    ManifestError,
    compare_manifests,
    display_path,
)


def member(
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
    if pax_headers:
        info.pax_headers = pax_headers
    if kind == tarfile.REGTYPE:
        info.size = len(content)
        return info, content
    return info, None


def archive(
    members: list[tuple[tarfile.TarInfo, bytes | None]], tar_format: int = tarfile.PAX_FORMAT
) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(
        fileobj=buffer, mode="w", format=tar_format, encoding="utf-8", errors="surrogateescape"
    ) as output:
        for info, content in members:
            output.addfile(info, io.BytesIO(content) if content is not None else None)
    return buffer.getvalue()


def build(data: bytes, chunk_size: int = 4096, **options: object) -> Manifest:
    builder = ManifestBuilder(**options)  # type: ignore[arg-type]
    for position in range(0, len(data), chunk_size):
        builder.feed(data[position : position + chunk_size])
    return builder.close()


def digest(content: bytes) -> str:
    return xxhash.xxh3_128(content).hexdigest()


def volume_members(
    changes: dict[str, dict[str, object]] | None = None,
) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """Members of a Docker archive of the container path /v, with optional field changes."""
    specs: dict[str, dict[str, object]] = {
        "v/": {"kind": tarfile.DIRTYPE, "mode": 0o755, "uid": 0, "gid": 0},
        "v/data/": {"kind": tarfile.DIRTYPE, "mode": 0o750},
        "v/data/a.bin": {"content": bytes(range(256)) * 40},
        "v/data/b.txt": {"content": b"hello\n", "mode": 0o600},
        "v/empty": {},
        "v/link": {"kind": tarfile.SYMTYPE, "linkname": "data/b.txt", "mode": 0o777},
        "v/tty": {"kind": tarfile.CHRTYPE, "devices": (5, 0), "mode": 0o620},
    }
    for name, change in (changes or {}).items():
        if change.get("remove"):
            del specs[name]
        else:
            specs[name] = {**specs.get(name, {}), **change}

    members = []
    for name, spec in specs.items():
        members.append(
            member(
                name,
                spec.get("kind", tarfile.REGTYPE),  # type: ignore[arg-type]
                spec.get("content", b""),  # type: ignore[arg-type]
                mode=spec.get("mode", 0o644),  # type: ignore[arg-type]
                uid=spec.get("uid", 1000),  # type: ignore[arg-type]
                gid=spec.get("gid", 1000),  # type: ignore[arg-type]
                mtime=spec.get("mtime", 1_700_000_000),  # type: ignore[arg-type]
                linkname=spec.get("linkname", ""),  # type: ignore[arg-type]
                devices=spec.get("devices", (0, 0)),  # type: ignore[arg-type]
                pax_headers=spec.get("pax_headers"),  # type: ignore[arg-type]
            )
        )
    return members


def volume_manifest(changes: dict[str, dict[str, object]] | None = None) -> Manifest:
    return build(archive(volume_members(changes)), strip_prefix=b"v/")


# Building


@pytest.mark.parametrize("chunk_size", [1, 511, 512, 513, 65536, 10**9])
def test_builder_strips_prefix_and_hashes(chunk_size: int) -> None:
    data = archive(volume_members())

    manifest = build(data, chunk_size, strip_prefix=b"v/")

    assert sorted(manifest.entries) == [
        b".",
        b"data",
        b"data/a.bin",
        b"data/b.txt",
        b"empty",
        b"link",
        b"tty",
    ]
    assert manifest.entries[b"."].type == "dir"
    assert manifest.entries[b"."].uid == 0
    assert manifest.entries[b"data/a.bin"].digest == digest(bytes(range(256)) * 40)
    assert manifest.entries[b"data/a.bin"].size == 10240
    assert manifest.entries[b"data/b.txt"].mode == 0o600
    assert manifest.entries[b"empty"].digest == digest(b"")
    assert manifest.entries[b"link"].linkname == b"data/b.txt"
    assert manifest.entries[b"link"].digest is None
    assert (manifest.entries[b"tty"].devmajor, manifest.entries[b"tty"].devminor) == (5, 0)
    assert manifest.entries[b"data"].mtime_ns == 1_700_000_000 * 10**9
    assert manifest.stream_digest == digest(data)
    assert manifest.bytes_fed == len(data)


def test_builder_without_hashing() -> None:
    manifest = build(archive(volume_members()), strip_prefix=b"v", hash_content=False)

    assert manifest.entries[b"data/a.bin"].digest is None
    assert manifest.entries[b"data/a.bin"].size == 10240
    assert manifest.hash_content is False
    assert manifest.stream_digest is not None


def test_builder_normalizes_dot_slash_paths() -> None:
    data = archive(
        [member("./", tarfile.DIRTYPE), member("./a/", tarfile.DIRTYPE), member("./a/f")]
    )

    manifest = build(data)

    assert sorted(manifest.entries) == [b".", b"a", b"a/f"]


def test_builder_rejects_member_outside_prefix() -> None:
    data = archive([member("v/", tarfile.DIRTYPE), member("other/file")])
    builder = ManifestBuilder(strip_prefix=b"v/")

    with pytest.raises(ManifestError, match="other/file at byte offset 512 is outside"):
        builder.feed(data)


def test_builder_hard_link_takes_target_content() -> None:
    data = archive([member("f", content=b"shared"), member("g", tarfile.LNKTYPE, linkname="f")])

    manifest = build(data)

    link = manifest.entries[b"g"]
    assert link.type == "hardlink"
    assert link.linkname == b"f"
    assert link.size == 6
    assert link.digest == digest(b"shared")
    assert manifest.total_file_bytes == 6


def test_builder_stats() -> None:
    manifest = volume_manifest()

    assert manifest.counts_by_type() == {
        "file": 3,
        "dir": 2,
        "symlink": 1,
        "hardlink": 0,
        "fifo": 0,
        "char": 1,
        "block": 0,
    }
    assert manifest.total_file_bytes == 10240 + 6
    assert len(manifest) == 7


def test_builder_truncated_stream_raises_with_offset() -> None:
    data = archive(volume_members())
    builder = ManifestBuilder(strip_prefix=b"v/")

    builder.feed(data[:3000])
    with pytest.raises(ManifestError) as caught:
        builder.close()

    assert caught.value.offset == 3000
    assert "stream ends inside the data of v/data/a.bin" in str(caught.value)


def test_builder_corrupt_header_raises_on_feed() -> None:
    data = bytearray(archive(volume_members(), tarfile.USTAR_FORMAT))
    data[512 + 10] ^= 0x20  # the header of v/data/
    builder = ManifestBuilder(strip_prefix=b"v/")

    with pytest.raises(ManifestError, match="checksum") as caught:
        builder.feed(bytes(data))

    assert caught.value.offset == 512


# JSON


def special_manifest() -> Manifest:
    entries = [
        ManifestEntry(b".", "dir", 0o755, 0, 0, 0, mtime_ns=1),
        ManifestEntry(
            b"bad\xffname\n",
            "file",
            0o4755,
            3_000_000,
            3_000_000,
            5,
            mtime_ns=1_700_000_000_123_456_789,
            xattrs={b"user.bin": b"\x00\xff", b"user.text": b"plain"},
            acl_access="user::rw-,user:1000:r--,group::r--,mask::r--,other::r--",
            acl_default="user::rwx,group::r-x,other::\udcff",
            digest="0" * 32,
        ),
        ManifestEntry(b"sparse", "file", 0o644, 0, 0, 2**40, sparse=True, digest="1" * 32),
        ManifestEntry(b"link", "symlink", 0o777, 0, 0, 0, linkname=b"/abs\xfe"),
        ManifestEntry(
            b"hard",
            "hardlink",
            0o4755,
            3_000_000,
            3_000_000,
            5,
            linkname=b"bad\xffname\n",
            digest="0" * 32,
        ),
        ManifestEntry(b"disk", "block", 0o660, 0, 6, 0, devmajor=8, devminor=0),
        ManifestEntry(b"fifo", "fifo", 0o600, 0, 0, 0),
    ]
    return Manifest(
        {entry.path: entry for entry in entries},
        stream_digest="2" * 32,
        bytes_fed=12345,
        hash_content=True,
    )


def test_json_round_trip_is_lossless() -> None:
    manifest = special_manifest()

    restored = Manifest.from_json(manifest.to_json())

    assert restored == manifest


def test_json_encodes_non_utf8_as_base64() -> None:
    document = json.loads(special_manifest().to_json())
    entries = {json.dumps(item["path"]): item for item in document["entries"]}

    bad = entries[json.dumps({"base64": "YmFk/25hbWUK"})]
    assert bad["xattrs"] == [["user.bin", {"base64": "AP8="}], ["user.text", "plain"]]
    assert bad["acl_default"] == {"base64": "dXNlcjo6cnd4LGdyb3VwOjpyLXgsb3RoZXI6Ov8="}
    assert bad["mtime_ns"] == 1_700_000_000_123_456_789
    assert entries['"disk"']["devmajor"] == 8
    assert "devmajor" not in entries['"fifo"']
    assert "digest" not in entries['"fifo"']
    assert entries['"sparse"']["sparse"] is True
    assert document["entries"][0]["path"] == "."
    assert document["format"] == "ddm-manifest"
    assert document["version"] == 1


def test_json_round_trip_of_built_manifest() -> None:
    manifest = volume_manifest()

    assert Manifest.from_json(manifest.to_json(indent=2).encode()) == manifest


HEADER = '{"format": "ddm-manifest", "version": 1, "hash_content": true, "bytes_fed": 0, '
ENTRY = '"type": "dir", "mode": 0, "uid": 0, "gid": 0, "size": 0'


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"format": "other", "version": 1, "entries": []}',
        '{"format": "ddm-manifest", "version": 2, "entries": []}',
        HEADER + '"entries": [{"path": "a", "type": "socket", "mode": 0, "uid": 0, "gid": 0, '
        '"size": 0}]}',
        HEADER + '"entries": [{"path": "a", "type": "file", "mode": "0644", "uid": 0, "gid": 0, '
        '"size": 0}]}',
        HEADER + '"entries": [{"path": {"base64": "%%%"}, ' + ENTRY + "}]}",
        HEADER + '"entries": [{"path": "a", ' + ENTRY + '}, {"path": "a", ' + ENTRY + "}]}",
    ],
)
def test_from_json_rejects_invalid(text: str) -> None:
    with pytest.raises(ManifestError, match="invalid manifest JSON"):
        Manifest.from_json(text)


# Comparison


def test_compare_equal_trees() -> None:
    assert compare_manifests(volume_manifest(), volume_manifest(), ALL_ASPECTS) == []


def test_compare_one_byte_content_change() -> None:
    changed = bytearray(bytes(range(256)) * 40)
    changed[5000] ^= 0x01
    target = volume_manifest({"v/data/a.bin": {"content": bytes(changed)}})

    deep = compare_manifests(volume_manifest(), target, DEEP_ASPECTS)
    quick = compare_manifests(volume_manifest(), target, QUICK_ASPECTS)

    assert [(item.path, item.aspect) for item in deep] == [(b"data/a.bin", "content")]
    assert deep[0].source == digest(bytes(range(256)) * 40)
    assert deep[0].target == digest(bytes(changed))
    assert quick == []


def test_compare_mode_change() -> None:
    target = volume_manifest({"v/data/b.txt": {"mode": 0o644}})

    differences = compare_manifests(volume_manifest(), target, DEEP_ASPECTS)

    assert differences == [Difference(b"data/b.txt", "mode", 0o600, 0o644)]
    assert differences[0].describe() == "data/b.txt: mode differs (source 0600, target 0644)"


def test_compare_owner_change() -> None:
    target = volume_manifest({"v/data/": {"uid": 3_000_000}})

    differences = compare_manifests(volume_manifest(), target, QUICK_ASPECTS)

    assert differences == [Difference(b"data", "owner", (1000, 1000), (3_000_000, 1000))]


def test_compare_extra_and_missing_paths() -> None:
    target = volume_manifest({"v/empty": {"remove": True}, "v/data/new": {"content": b"n"}})

    differences = compare_manifests(volume_manifest(), target, DEEP_ASPECTS)

    assert differences == [
        Difference(b"data/new", "presence", None, "file"),
        Difference(b"empty", "presence", "file", None),
    ]


def test_compare_type_change_skips_type_dependent_aspects() -> None:
    target = volume_manifest({"v/empty": {"kind": tarfile.DIRTYPE}})

    differences = compare_manifests(volume_manifest(), target, DEEP_ASPECTS)

    assert differences == [Difference(b"empty", "type", "file", "dir")]


def test_compare_symlink_text_change() -> None:
    target = volume_manifest({"v/link": {"linkname": "/elsewhere"}})

    differences = compare_manifests(volume_manifest(), target, QUICK_ASPECTS)

    assert differences == [Difference(b"link", "link", b"data/b.txt", b"/elsewhere")]


def test_compare_mtime_seconds_and_nanoseconds() -> None:
    source = volume_manifest({"v/empty": {"mtime": 1_700_000_000.5}})
    same_second = volume_manifest({"v/empty": {"mtime": 1_700_000_000.25}})
    next_second = volume_manifest({"v/empty": {"mtime": 1_700_000_001.5}})

    assert compare_manifests(source, same_second, DEEP_ASPECTS) == []
    assert compare_manifests(source, same_second, ["mtime_ns"]) == [
        Difference(b"empty", "mtime_ns", 1_700_000_000_500_000_000, 1_700_000_000_250_000_000)
    ]
    assert compare_manifests(source, next_second, ["mtime"]) == [
        Difference(b"empty", "mtime", 1_700_000_000, 1_700_000_001)
    ]


def test_compare_mtime_change_is_one_difference() -> None:
    source = volume_manifest({"v/empty": {"mtime": 1_700_000_000.5}})
    next_second = volume_manifest({"v/empty": {"mtime": 1_700_000_001.5}})

    differences = compare_manifests(source, next_second, ["mtime", "mtime_ns"])

    assert differences == [Difference(b"empty", "mtime", 1_700_000_000, 1_700_000_001)]
    assert compare_manifests(source, next_second, ["mtime_ns"]) == [
        Difference(b"empty", "mtime_ns", 1_700_000_000_500_000_000, 1_700_000_001_500_000_000)
    ]


def test_compare_xattrs_and_acl() -> None:
    source = volume_manifest(
        {"v/empty": {"pax_headers": {"SCHILY.xattr.user.a": "1", "SCHILY.acl.access": "u::rw-"}}}
    )
    target = volume_manifest(
        {"v/empty": {"pax_headers": {"SCHILY.xattr.user.a": "2", "SCHILY.acl.access": "u::r--"}}}
    )

    differences = compare_manifests(source, target, QUICK_ASPECTS)

    assert differences == [
        Difference(b"empty", "xattrs", {b"user.a": b"1"}, {b"user.a": b"2"}),
        Difference(b"empty", "acl", ("u::rw-", None), ("u::r--", None)),
    ]


def test_compare_device_numbers() -> None:
    target = volume_manifest({"v/tty": {"devices": (5, 1)}})

    differences = compare_manifests(volume_manifest(), target, QUICK_ASPECTS)

    assert differences == [Difference(b"tty", "device", (5, 0), (5, 1))]


def hard_link_archive(first: str, links: list[str], content: bytes = b"shared") -> bytes:
    members = [member("d/", tarfile.DIRTYPE), member(first, content=content)]
    members += [member(link, tarfile.LNKTYPE, linkname=first) for link in links]
    return archive(members)


def test_compare_hard_links_different_first_member() -> None:
    source = build(hard_link_archive("d/a", ["d/b", "d/c"]))
    target = build(hard_link_archive("d/c", ["d/a", "d/b"]))

    assert source.entries[b"d/a"].type == "file"
    assert target.entries[b"d/a"].type == "hardlink"
    assert compare_manifests(source, target, ALL_ASPECTS) == []


def test_compare_broken_hard_link_group() -> None:
    source = build(hard_link_archive("d/a", ["d/b"]))
    target = build(
        archive(
            [
                member("d/", tarfile.DIRTYPE),
                member("d/a", content=b"shared"),
                member("d/b", content=b"shared"),
            ]
        )
    )

    differences = compare_manifests(source, target, DEEP_ASPECTS)

    assert differences == [
        Difference(b"d/a", "link", (b"d/a", b"d/b"), None),
        Difference(b"d/b", "link", (b"d/a", b"d/b"), None),
    ]
    assert differences[0].describe() == "d/a: link differs (source [d/a, d/b], target none)"


def test_compare_hard_link_group_content_change() -> None:
    source = build(hard_link_archive("d/a", ["d/b"]))
    target = build(hard_link_archive("d/b", ["d/a"], content=b"change"))

    differences = compare_manifests(source, target, DEEP_ASPECTS)

    assert [(item.path, item.aspect) for item in differences] == [
        (b"d/a", "content"),
        (b"d/b", "content"),
    ]


def test_compare_rejects_unknown_aspect() -> None:
    with pytest.raises(ValueError, match="unknown manifest aspects \\['colour'\\]"):
        compare_manifests(volume_manifest(), volume_manifest(), ["colour"])


def test_compare_content_needs_hashing() -> None:
    unhashed = build(archive(volume_members()), strip_prefix=b"v/", hash_content=False)

    with pytest.raises(ManifestError, match="without content hashing"):
        compare_manifests(volume_manifest(), unhashed, DEEP_ASPECTS)
    assert compare_manifests(volume_manifest(), unhashed, QUICK_ASPECTS) == []


def test_compare_uses_manifests_from_json() -> None:
    source = volume_manifest()
    target = Manifest.from_json(volume_manifest({"v/data/b.txt": {"uid": 7}}).to_json())

    differences = compare_manifests(source, target, DEEP_ASPECTS)

    assert differences == [Difference(b"data/b.txt", "owner", (1000, 1000), (7, 1000))]


def test_difference_describe_escapes_path() -> None:
    difference = Difference(b"bad\xff\nname", "content", "a" * 32, "b" * 32)

    assert difference.describe() == (
        f"bad\\xff\\nname: content differs (source {'a' * 32}, target {'b' * 32})"
    )


def test_difference_describe_owner_and_device() -> None:
    owner = Difference(b"a", "owner", (1000, 1000), (7, 1000))
    device = Difference(b"tty", "device", (4, 1), (4, 2))

    assert owner.describe() == "a: owner differs (source 1000:1000, target 7:1000)"
    assert device.describe() == "tty: device differs (source 4:1, target 4:2)"


def test_manifest_entry_is_frozen() -> None:
    entry = ManifestEntry(b"a", "file", 0o644, 0, 0, 0)

    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.mode = 0o600  # type: ignore[misc]


def test_display_path_is_exported() -> None:
    assert display_path(b"\xff") == "\\xff"


# GNU tar and tarfile archives of the same tree on disk


@pytest.fixture()
def disk_tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "dir" / "sub" / "file").write_bytes(random.Random(1).randbytes(100_000))
    for name in ("a", "b", "c"):
        (root / name).write_bytes(b"")
    (root / "z-first").write_bytes(b"linked content")
    os.link(root / "z-first", root / "a-second")
    os.link(root / "z-first", root / "m-third")
    os.symlink("dir/sub/file", root / "symlink")
    with open(root / "sparse", "wb") as file:
        file.truncate(4 * 1024 * 1024)
        file.seek(2 * 1024 * 1024)
        file.write(b"middle")
    (root / os.fsdecode(b"bad\xffname")).write_bytes(b"x")
    return root


def gnu_tar_archive(root: Path) -> bytes:
    tar = shutil.which("tar")
    if tar is None:
        pytest.skip("GNU tar is not installed")
    command = [
        tar,
        "--format=posix",
        "--sparse",
        "--xattrs",
        "--acls",
        "--numeric-owner",
        "-C",
        str(root),
        "-cf",
        "-",
        ".",
    ]
    return subprocess.run(command, check=True, capture_output=True).stdout


def tarfile_archive(root: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(
        fileobj=buffer,
        mode="w",
        format=tarfile.PAX_FORMAT,
        encoding="utf-8",
        errors="surrogateescape",
    ) as output:
        # Named "v" like Docker's archive of /v. tarfile adds directory members sorted by name.
        output.add(root, arcname="v")
    return buffer.getvalue()


def test_gnu_tar_and_tarfile_manifests_equal(disk_tree: Path) -> None:
    gnu = build(gnu_tar_archive(disk_tree), 65536)
    python = build(tarfile_archive(disk_tree), 65536, strip_prefix=b"v")

    differences = compare_manifests(gnu, python, DEEP_ASPECTS)

    assert differences == []
    assert gnu.entries[b"sparse"].sparse
    assert not python.entries[b"sparse"].sparse
    assert gnu.entries[b"sparse"].digest == digest((disk_tree / "sparse").read_bytes())
    assert compare_manifests(gnu, python, ["sparse"]) == [
        Difference(b"sparse", "sparse", True, False)
    ]


def test_gnu_tar_archive_detects_one_byte_change(disk_tree: Path) -> None:
    before = build(gnu_tar_archive(disk_tree))
    path = disk_tree / "dir" / "sub" / "file"
    content = bytearray(path.read_bytes())
    content[77_777] ^= 0xFF
    stat = path.stat()
    path.write_bytes(bytes(content))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    after = build(gnu_tar_archive(disk_tree))

    differences = compare_manifests(before, after, ALL_ASPECTS)
    assert [(item.path, item.aspect) for item in differences] == [(b"dir/sub/file", "content")]
