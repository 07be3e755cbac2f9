"""Seeding the hash cache from a full copy: which rows the stream and the scans prove."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from ddm.manifest import Manifest, ManifestBuilder
from ddmsyncer import hashcache, hashseed
from ddmsyncer.hashseed import ScanSeed, matching_rows, member_path, noting_ctimes

SECOND = 1_000_000_000


def host_tar_manifest(root: Path) -> tuple[Manifest, dict[bytes, int]]:
    """Archive `root` as the host data path does and return the manifest and member ctimes."""
    archive = subprocess.run(
        ["tar", "--create", "--file=-", f"--directory={root}", "--format=posix", "--sparse",
         "--numeric-owner", "."], check=True, capture_output=True).stdout
    ctimes: dict[bytes, int] = {}
    builder = ManifestBuilder(sha256=True, member_check=noting_ctimes(lambda entry: None, ctimes))
    builder.feed(archive)
    return builder.close(), ctimes


def stat_keys(root: Path, *names: str) -> dict[bytes, hashcache.FileKey]:
    keys = {}
    for name in names:
        info = os.lstat(root / name)
        keys[name.encode()] = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns,
                               info.st_ctime_ns)
    return keys


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "a.txt").write_bytes(b"alpha\n")
    (tmp_path / "b.bin").write_bytes(bytes(range(256)) * 8)
    os.link(tmp_path / "b.bin", tmp_path / "dir" / "b-link")
    return tmp_path


def test_seed_rows_for_matching_files(volume):
    manifest, ctimes = host_tar_manifest(volume)
    keys = stat_keys(volume, "dir/a.txt", "b.bin", "dir/b-link")
    later = max(key[4] for key in keys.values()) + 3 * SECOND

    rows = matching_rows(manifest, ctimes, keys, later)

    assert set(rows) == {b"dir/a.txt", b"b.bin", b"dir/b-link"}
    assert rows[b"dir/a.txt"].digest == hashlib.sha256(b"alpha\n").hexdigest()
    assert rows[b"dir/a.txt"].key == keys[b"dir/a.txt"]
    assert rows[b"dir/b-link"].digest == rows[b"b.bin"].digest


def test_seed_skips_file_changed_after_read(volume):
    manifest, ctimes = host_tar_manifest(volume)
    before = os.lstat(volume / "dir" / "a.txt")
    (volume / "dir" / "a.txt").write_bytes(b"ALPHA\n")
    os.utime(volume / "dir" / "a.txt", ns=(before.st_atime_ns, before.st_mtime_ns))
    keys = stat_keys(volume, "dir/a.txt")
    later = keys[b"dir/a.txt"][4] + 3 * SECOND

    rows = matching_rows(manifest, ctimes, keys, later)

    assert ctimes[b"dir/a.txt"] != keys[b"dir/a.txt"][4]
    assert rows == {}


@pytest.mark.parametrize("field, delta", [("size", 1), ("mtime", 1)])
def test_seed_skips_other_size_or_mtime(volume, field, delta):
    manifest, ctimes = host_tar_manifest(volume)
    dev, inode, size, mtime_ns, ctime_ns = stat_keys(volume, "dir/a.txt")[b"dir/a.txt"]
    if field == "size":
        size += delta
    else:
        mtime_ns += delta
    keys = {b"dir/a.txt": (dev, inode, size, mtime_ns, ctime_ns)}

    assert matching_rows(manifest, ctimes, keys, ctime_ns + 3 * SECOND) == {}


def test_seed_skips_recent_change(volume):
    manifest, ctimes = host_tar_manifest(volume)
    keys = stat_keys(volume, "dir/a.txt")
    ctime_ns = keys[b"dir/a.txt"][4]

    assert matching_rows(manifest, ctimes, keys, ctime_ns + SECOND) == {}


def test_seed_skips_member_without_ctime(volume):
    manifest, _ = host_tar_manifest(volume)
    keys = stat_keys(volume, "dir/a.txt")

    assert matching_rows(manifest, {}, keys, keys[b"dir/a.txt"][4] + 3 * SECOND) == {}


def scan_record(path: bytes, kind: str = "file", *, sha256: str | None = "ab" * 32,
                ctime_ns: int = 100 * SECOND, checked_ns: int = 110 * SECOND) -> list:
    encoded = base64.b64encode(path).decode("ascii")
    return [encoded, kind, 0o644, 0, 0, 5, 90 * SECOND, None, 0, 0, 77, 1, [], None, None,
            False, sha256, 2049, ctime_ns, checked_ns]


def test_scan_seed_takes_hashed_old_files():
    seed = ScanSeed()

    seed.add(scan_record(b"kept"))
    seed.add(scan_record(b"recent", ctime_ns=109 * SECOND))
    seed.add(scan_record(b"unhashed", sha256=None))
    seed.add(scan_record(b"dir", "dir", sha256=None))
    seed.add(scan_record(b"no-keys")[:17])

    assert set(seed.rows) == {b"kept"}
    assert seed.rows[b"kept"].key == (2049, 77, 5, 90 * SECOND, 100 * SECOND)
    assert seed.racy_files == 1


def test_member_path_matches_manifest_paths():
    assert member_path(b"./dir/a.txt") == b"dir/a.txt"
    assert member_path(b"./") == b"."
    assert member_path(b"/abs/x") == b"abs/x"


def test_scan_seed_drops_everything_past_the_file_limit(monkeypatch):
    monkeypatch.setattr(hashseed, "SEED_MAX_FILES", 2)
    seed = ScanSeed()

    for name in (b"one", b"two", b"three", b"four"):
        seed.add(scan_record(name))

    assert seed.rows == {}
    assert seed.too_many_files


def test_noting_ctimes_stops_one_past_the_limit(volume):
    archive = subprocess.run(["tar", "--create", "--file=-", f"--directory={volume}",
                              "--format=posix", "."], check=True, capture_output=True).stdout
    ctimes: dict[bytes, int] = {}
    builder = ManifestBuilder(sha256=True,
                              member_check=noting_ctimes(lambda entry: None, ctimes, limit=1))
    builder.feed(archive)
    builder.close()

    assert len(ctimes) == 2
