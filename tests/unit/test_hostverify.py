"""Host-side verify: the scan script's manifest against GNU tar's, and the comparison.

The scan script runs here as a local python3 subprocess on a temporary tree, and GNU tar
archives the same tree with the host data path's options. Both manifests must agree in every
aspect that verify compares on the host path, with SHA-256 as the content digest.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ddm.manifest import Manifest, ManifestBuilder, ManifestEntry, compare_manifests
from ddmdriver.hostpath import CREATE_OPTIONS
from ddmsyncer import hostverify
from ddmsyncer.datapath import DataPath, verify_aspects

HOST_FULL = verify_aspects(DataPath.HOST, deep=True)
MTIME = 1_600_000_000_123_456_789


def tar_manifest(root: Path) -> Manifest:
    archive = subprocess.run(["tar", "--create", "--file=-", f"--directory={root}",
                              *CREATE_OPTIONS, "."], check=True, capture_output=True).stdout
    builder = ManifestBuilder(sha256=True)
    builder.feed(archive)
    return builder.close()


def scan_records(root: Path, *, hash_content: bool = True) -> list[list[object]]:
    output = subprocess.run([sys.executable, "-c", hostverify.LOADER, hostverify.HOST_SCRIPT,
                             str(root), "sha256" if hash_content else "none"],
                            check=True, capture_output=True).stdout
    return [json.loads(line) for line in output.splitlines()]


def scan(root: Path, *, hash_content: bool = True) -> Manifest:
    return hostverify.manifest_from_records(scan_records(root, hash_content=hash_content),
                                            hash_content=hash_content)


def build_tree(root: Path) -> None:
    top = bytes(root)
    os.makedirs(os.path.join(top, b"dir/nested"))
    with open(os.path.join(top, b"dir/data.bin"), "wb") as handle:
        handle.write(os.urandom(3 * 1024 * 1024 + 17))
    with open(os.path.join(top, b"latin1-\xe9"), "wb") as handle:
        handle.write(b"raw name\n")
    with open(os.path.join(top, b"empty"), "wb"):
        pass
    with open(os.path.join(top, b"sparse"), "wb") as handle:
        handle.truncate(8 * 1024 * 1024)
        handle.seek(4 * 1024 * 1024)
        handle.write(b"B" * 4096)
    os.symlink(b"dir/data.bin", os.path.join(top, b"link"))
    os.link(os.path.join(top, b"dir/data.bin"), os.path.join(top, b"hardlink"))
    os.mkfifo(os.path.join(top, b"fifo"))
    os.chmod(os.path.join(top, b"dir/nested"), 0o2775)
    os.setxattr(os.path.join(top, b"empty"), b"user.comment", b"\x00\xff kept")
    if os.geteuid() == 0:
        os.mknod(os.path.join(top, b"char-device"), 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        os.chown(os.path.join(top, b"empty"), 3_000_000, 4_000_123)
    if shutil.which("setfacl"):
        subprocess.run(["setfacl", "-m", "u:1234:rwx,g:555:r,u:0:r", os.path.join(top, b"empty")],
                       check=True)
        subprocess.run(["setfacl", "-d", "-m", "g:555:rx", os.path.join(top, b"dir")], check=True)
    for directory, dirnames, filenames in os.walk(top, topdown=False):
        for name in [*filenames, *dirnames]:
            os.utime(os.path.join(directory, name), ns=(MTIME, MTIME), follow_symlinks=False)
    os.utime(top, ns=(MTIME + 5, MTIME + 5))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "volume"
    root.mkdir()
    build_tree(root)
    return root


def test_scan_matches_tar_manifest(tree: Path) -> None:
    source = hostverify.sha256_view(tar_manifest(tree))
    target = scan(tree)

    assert source is not None
    assert compare_manifests(source, target, HOST_FULL) == []
    assert set(source.entries) == set(target.entries)
    assert target.entries[b"sparse"].sparse is True
    assert target.entries[b"dir/data.bin"].digest == source.entries[b"dir/data.bin"].sha256


def test_scan_acl_text_matches_tar(tree: Path) -> None:
    if not shutil.which("setfacl"):
        pytest.skip("setfacl is not installed")
    source = tar_manifest(tree)
    target = scan(tree)

    assert target.entries[b"empty"].acl_access == source.entries[b"empty"].acl_access
    assert "user:root:r--" in target.entries[b"empty"].acl_access
    assert target.entries[b"dir"].acl_default == source.entries[b"dir"].acl_default
    assert target.entries[b"dir"].acl_access == source.entries[b"dir"].acl_access


def test_scan_groups_hard_links(tree: Path) -> None:
    target = scan(tree)
    kinds = sorted(target.entries[path].type for path in (b"dir/data.bin", b"hardlink"))
    assert kinds == ["file", "hardlink"]


def test_scan_detects_flipped_byte(tree: Path) -> None:
    source = hostverify.sha256_view(tar_manifest(tree))
    with open(tree / "dir" / "data.bin", "r+b") as handle:
        handle.seek(1024 * 1024)
        byte = handle.read(1)
        handle.seek(1024 * 1024)
        handle.write(bytes([byte[0] ^ 0xFF]))
    os.utime(tree / "dir" / "data.bin", ns=(MTIME, MTIME))

    differences = compare_manifests(source, scan(tree), HOST_FULL)
    assert [(difference.path, difference.aspect) for difference in differences] == [
        (b"dir/data.bin", "content"), (b"hardlink", "content")]


@pytest.mark.parametrize("change, aspect", [
    (lambda path: os.chmod(path, 0o600), "mode"),
    (lambda path: os.utime(path, ns=(MTIME + 10**9, MTIME + 10**9)), "mtime"),
    (lambda path: os.setxattr(path, b"user.other", b"x"), "xattrs"),
])
def test_scan_detects_changed_metadata(tree: Path, change, aspect: str) -> None:
    source = hostverify.sha256_view(tar_manifest(tree))
    change(os.path.join(bytes(tree), b"latin1-\xe9"))

    differences = compare_manifests(source, scan(tree), HOST_FULL)
    assert [(difference.path, difference.aspect) for difference in differences
            if difference.aspect != "mtime_ns"] == [(b"latin1-\xe9", aspect)]


def test_scan_detects_changed_owner(tree: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    source = hostverify.sha256_view(tar_manifest(tree))
    os.chown(tree / "dir" / "data.bin", 1, 1)

    differences = compare_manifests(source, scan(tree), HOST_FULL)
    assert {(difference.path, difference.aspect) for difference in differences} == {
        (b"dir/data.bin", "owner"), (b"hardlink", "owner")}


def test_scan_without_hashing_has_no_digests(tree: Path) -> None:
    target = scan(tree, hash_content=False)
    assert target.hash_content is False
    assert all(entry.digest is None for entry in target.entries.values())


def test_sha256_view_needs_every_file_digest() -> None:
    entries = {b".": ManifestEntry(b".", "dir", 0o755, 0, 0, 0),
               b"a": ManifestEntry(b"a", "file", 0o644, 0, 0, 1, digest="x" * 32)}
    assert hostverify.sha256_view(Manifest(entries=entries)) is None

    entries[b"a"] = ManifestEntry(b"a", "file", 0o644, 0, 0, 1, digest="x" * 32, sha256="ab")
    view = hostverify.sha256_view(Manifest(entries=entries))
    assert view is not None
    assert view.entries[b"a"].digest == "ab"


def test_manifest_json_keeps_sha256(tree: Path) -> None:
    manifest = tar_manifest(tree)
    loaded = Manifest.from_json(manifest.to_json())
    assert loaded.entries[b"dir/data.bin"].sha256 == manifest.entries[b"dir/data.bin"].sha256
    assert loaded.entries[b"hardlink"].sha256 == manifest.entries[b"dir/data.bin"].sha256
    assert loaded.entries[b"dir/data.bin"].sha256 is not None


def test_builder_sha256_off_by_default(tree: Path) -> None:
    archive = subprocess.run(["tar", "--create", "--file=-", f"--directory={tree}",
                              *CREATE_OPTIONS, "."], check=True, capture_output=True).stdout
    builder = ManifestBuilder()
    builder.feed(archive)
    assert all(entry.sha256 is None for entry in builder.close().entries.values())


def test_lines_splits_chunks() -> None:
    class Channel:
        def __init__(self, chunks: list[bytes]) -> None:
            self.chunks = chunks

        def recv(self, size: int) -> bytes:
            return self.chunks.pop(0) if self.chunks else b""

    batches = list(hostverify._line_batches(Channel([b"[1]\n[2", b"]\n[3]\n[4"])))
    assert batches == [([b"[1]"], 4), ([b"[2]", b"[3]"], 8), ([b"[4"], 2)]


def test_decode_records_decodes_each_line() -> None:
    lines = [b'["YQ==", "file", 420]', b'["Yg==", "dir", 493, [["eA==", ""]]]']
    assert hostverify.decode_records(lines) == [json.loads(line) for line in lines]
    assert hostverify.decode_records([]) == []


@pytest.mark.parametrize("lines", [
    [b"[1]", b"[2"],              # invalid JSON
    [b"[1]", b"{}"],              # not an array
    [b"[1]", b""],                # empty line
    [b"[1] [2]"],                 # two values on one line
])
def test_decode_records_rejects_lines_not_one_array_each(lines: list[bytes]) -> None:
    with pytest.raises(ValueError):
        hostverify.decode_records(lines)


def test_sha256_view_changes_only_file_digests(tree: Path) -> None:
    source = tar_manifest(tree)
    view = hostverify.sha256_view(source)

    assert view is not None
    assert list(view.entries) == list(source.entries)
    for path, entry in source.entries.items():
        expected = dataclasses.replace(entry, digest=entry.sha256) if entry.type == "file" else entry
        assert view.entries[path] == expected


def test_sha256_view_records_equal_scan_records(tree: Path) -> None:
    """Equal entries must give equal records, so the comparison skips them undecoded."""
    view = hostverify.sha256_view(tar_manifest(tree))
    target = scan(tree)

    assert view is not None
    view_records = dict(view.entries.iter_records())
    target_records = dict(target.entries.iter_records())
    for path in (b"empty", b"sparse", b"latin1-\xe9", b"dir/nested", b"link"):
        assert view.entries[path] == target.entries[path]
        assert view_records[path] == target_records[path]


def test_sha256_view_thread_returns_view(tree: Path) -> None:
    source = tar_manifest(tree)
    view = hostverify.SHA256ViewThread(source).result()

    assert view is not None
    assert view == hostverify.sha256_view(source)


def test_sha256_view_thread_raises_error() -> None:
    manifest = Manifest()
    manifest.close()
    with pytest.raises(Exception, match="closed"):
        hostverify.SHA256ViewThread(manifest).result()


def test_scan_walks_every_entry_once(tmp_path: Path) -> None:
    root = tmp_path / "volume"
    for directory in ("a", "a/b", "a-b", "a.b/c/d", "empty"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    for name in ("a/b/file", "a-b/file", "a.b/c/d/file", "top", "a/z"):
        (root / name).write_bytes(name.encode())
    os.symlink("a", root / "link-to-dir")

    expected = {b"."}
    for directory, dirnames, filenames in os.walk(bytes(root)):
        for name in [*dirnames, *filenames]:
            expected.add(os.path.relpath(os.path.join(directory, name), bytes(root)))
    paths = [base64.b64decode(record[0]) for record in scan_records(root)]

    assert sorted(paths) == sorted(expected)
    assert len(paths) == len(set(paths))
    assert b"link-to-dir/b" not in paths
