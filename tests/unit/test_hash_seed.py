"""Seeding the hash cache from a full copy: which rows the stream and the scans prove."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from ddm.manifest import Manifest, ManifestBuilder
from ddm.store import TaskStore
from ddmsyncer import hashcache, hashseed
from ddmsyncer.hashseed import ScanSeed, SeedJoin, member_path, noting_ctimes

SECOND = 1_000_000_000


def host_tar_join(root: Path) -> tuple[Manifest, SeedJoin]:
    """Archive `root` as the host data path does; return the manifest and a join of its ctimes."""
    archive = subprocess.run(
        ["tar", "--create", "--file=-", f"--directory={root}", "--format=posix", "--sparse",
         "--numeric-owner", "."], check=True, capture_output=True).stdout
    join = SeedJoin()
    builder = ManifestBuilder(sha256=True,
                              member_check=noting_ctimes(lambda entry: None, join.add_member_ctime))
    builder.feed(archive)
    manifest = builder.close()
    join.add_manifest(manifest)
    return manifest, join


def stat_key(path: Path) -> hashcache.FileKey:
    info = os.lstat(path)
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


def add_stat_keys(join: SeedJoin, root: Path, *names: bytes) -> dict[bytes, hashcache.FileKey]:
    keys = {name: stat_key(root / os.fsdecode(name)) for name in names}
    for name, key in keys.items():
        join.add_stat_key(name, key)
    return keys


def after(keys: dict[bytes, hashcache.FileKey]) -> int:
    """Return a stat scan start time outside the racy margin of every key."""
    return max(key[4] for key in keys.values()) + hashcache.RACY_MARGIN_NANOSECONDS + SECOND


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "a.txt").write_bytes(b"alpha\n")
    (tmp_path / "b.bin").write_bytes(bytes(range(256)) * 8)
    os.link(tmp_path / "b.bin", tmp_path / "dir" / "b-link")
    return tmp_path


def test_join_rows_for_matching_files(volume):
    manifest, join = host_tar_join(volume)
    keys = add_stat_keys(join, volume, b"dir/a.txt", b"b.bin", b"dir/b-link")

    rows = dict(join.rows(after(keys)))

    assert set(rows) == {b"dir/a.txt", b"b.bin", b"dir/b-link"}
    assert rows[b"dir/a.txt"].digest == hashlib.sha256(b"alpha\n").hexdigest()
    assert rows[b"dir/a.txt"].key == keys[b"dir/a.txt"]
    assert manifest.entries[b"dir/b-link"].type == "hardlink"
    assert rows[b"dir/b-link"].digest == rows[b"b.bin"].digest
    assert rows[b"dir/b-link"].key == keys[b"dir/b-link"]


def test_join_rows_in_path_order(volume):
    _, join = host_tar_join(volume)
    keys = add_stat_keys(join, volume, b"dir/b-link", b"b.bin", b"dir/a.txt")

    paths = [path for path, _ in join.rows(after(keys))]

    assert paths == sorted(paths)


def test_join_skips_file_changed_after_read(volume):
    _, join = host_tar_join(volume)
    before = os.lstat(volume / "dir" / "a.txt")
    (volume / "dir" / "a.txt").write_bytes(b"ALPHA\n")
    os.utime(volume / "dir" / "a.txt", ns=(before.st_atime_ns, before.st_mtime_ns))
    keys = add_stat_keys(join, volume, b"dir/a.txt")

    assert keys[b"dir/a.txt"][4] != before.st_ctime_ns
    assert list(join.rows(after(keys))) == []


@pytest.mark.parametrize("field", ["size", "mtime", "ctime"])
def test_join_skips_other_size_mtime_or_ctime(volume, field):
    _, join = host_tar_join(volume)
    dev, inode, size, mtime_ns, ctime_ns = stat_key(volume / "dir" / "a.txt")
    if field == "size":
        size += 1
    elif field == "mtime":
        mtime_ns += 1
    else:
        ctime_ns -= 1
    join.add_stat_key(b"dir/a.txt", (dev, inode, size, mtime_ns, ctime_ns))

    assert list(join.rows(ctime_ns + 3 * SECOND + hashcache.RACY_MARGIN_NANOSECONDS)) == []


def test_join_racy_rule_at_the_margin(volume):
    _, join = host_tar_join(volume)
    keys = add_stat_keys(join, volume, b"dir/a.txt")
    ctime_ns = keys[b"dir/a.txt"][4]
    margin = hashcache.racy_margin_ns(ctime_ns)

    # The test's file system keeps nanoseconds, so the short margin applies.
    assert ctime_ns % 1_000_000 != 0
    assert margin == hashcache.FINE_RACY_MARGIN_NANOSECONDS
    assert list(join.rows(ctime_ns + margin)) == []
    assert [path for path, _ in join.rows(ctime_ns + margin + 1)] == [b"dir/a.txt"]


def test_join_skips_member_without_ctime(volume):
    manifest, _ = host_tar_join(volume)
    join = SeedJoin()
    join.add_manifest(manifest)
    keys = add_stat_keys(join, volume, b"dir/a.txt")

    assert list(join.rows(after(keys))) == []


def test_join_skips_file_missing_from_manifest(volume):
    _, join = host_tar_join(volume)
    (volume / "late.txt").write_bytes(b"written after the copy\n")
    keys = add_stat_keys(join, volume, b"late.txt")

    assert list(join.rows(after(keys))) == []


def test_join_keeps_newline_and_non_utf8_names(tmp_path: Path):
    names = [b"line\nbreak.txt", b"latin-\xe9.bin", b"dir\xff/\x01raw"]
    (tmp_path / os.fsdecode(b"dir\xff")).mkdir()
    for index, name in enumerate(names):
        (tmp_path / os.fsdecode(name)).write_bytes(b"content %d\n" % index)
    _, join = host_tar_join(tmp_path)
    keys = add_stat_keys(join, tmp_path, *names)

    rows = dict(join.rows(after(keys)))

    assert set(rows) == set(names)
    for index, name in enumerate(names):
        assert rows[name].digest == hashlib.sha256(b"content %d\n" % index).hexdigest()
        assert rows[name].key == keys[name]


def test_join_handles_more_rows_than_a_batch(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(hashseed, "SEED_BATCH_ROWS", 7)
    for index in range(30):
        (tmp_path / f"f{index:02d}").write_bytes(b"%d" % index)
    _, join = host_tar_join(tmp_path)
    keys = add_stat_keys(join, tmp_path, *(b"f%02d" % index for index in range(30)))

    rows = dict(join.rows(after(keys)))

    assert len(rows) == 30
    assert rows[b"f29"].digest == hashlib.sha256(b"29").hexdigest()


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

    rows = dict(seed.rows())
    assert set(rows) == {b"kept"}
    assert rows[b"kept"].key == (2049, 77, 5, 90 * SECOND, 100 * SECOND)
    assert seed.racy_files == 1


# A ctime of a file system with whole-second or millisecond timestamps, and one with
# nanoseconds, 0.5 s before the scan's clock reading at 110 s.
COARSE_CTIME_NS = 109_500_000_000
FINE_CTIME_NS = 109_500_000_001


@pytest.mark.parametrize(("ctime_ns", "margin"), [
    (COARSE_CTIME_NS, 2 * SECOND),
    (FINE_CTIME_NS, SECOND // 5),
    (-COARSE_CTIME_NS, 2 * SECOND),  # before 1970
    (-FINE_CTIME_NS, SECOND // 5),
])
def test_racy_margin_follows_timestamp_granularity(ctime_ns, margin):
    assert hashcache.racy_margin_ns(ctime_ns) == margin
    with closing(sqlite3.connect("")) as database:
        query = f"SELECT {hashcache.sql_racy_margin('?1')}"
        assert database.execute(query, (ctime_ns,)).fetchone()[0] == margin


def test_scan_seed_racy_rule_per_file():
    """A nanosecond ctime 0.5 s before the lstat is settled; a whole-millisecond one is not."""
    seed = ScanSeed()
    seed.add(scan_record(b"coarse", ctime_ns=COARSE_CTIME_NS))
    seed.add(scan_record(b"fine", ctime_ns=FINE_CTIME_NS))
    seed.add(scan_record(b"fine-recent", ctime_ns=109_900_000_001))

    assert set(dict(seed.rows())) == {b"fine"}
    count, total_bytes, not_before_ns = seed.racy_summary()
    assert (count, total_bytes) == (2, 10)
    # The rehash waits for the coarse file's 2 s margin, the later of the two.
    assert not_before_ns == COARSE_CTIME_NS + 2 * SECOND
    assert hashcache.is_racy(FINE_CTIME_NS, 110 * SECOND) is False
    assert hashcache.is_racy(COARSE_CTIME_NS, 110 * SECOND) is True


def rehash_record(path: bytes, *, inode: int = 77, sha256: str = "ab" * 32,
                  checked_ns: int = 112 * SECOND) -> list:
    encoded = base64.b64encode(path).decode("ascii")
    return [encoded, 2049, inode, 5, 90 * SECOND, 109 * SECOND, sha256, checked_ns]


def test_scan_seed_confirms_rehashed_racy_file():
    seed = ScanSeed()
    for name in (b"same", b"other-digest", b"other-inode", b"still-racy", b"never-rehashed"):
        seed.add(scan_record(name, ctime_ns=109 * SECOND))

    confirmed = seed.confirm([
        rehash_record(b"same"),
        rehash_record(b"other-digest", sha256="cd" * 32),
        rehash_record(b"other-inode", inode=78),
        rehash_record(b"still-racy", checked_ns=110 * SECOND),
        rehash_record(b"unknown"),
    ])

    assert confirmed == 1
    rows = dict(seed.rows())
    assert set(rows) == {b"same"}
    assert rows[b"same"].key == (2049, 77, 5, 90 * SECOND, 109 * SECOND)
    assert seed.racy_files == 4


def test_member_path_matches_manifest_paths():
    assert member_path(b"./dir/a.txt") == b"dir/a.txt"
    assert member_path(b"./") == b"."
    assert member_path(b"/abs/x") == b"abs/x"


def test_noting_ctimes_notes_files_and_hard_links(volume):
    archive = subprocess.run(["tar", "--create", "--file=-", f"--directory={volume}",
                              "--format=posix", "."], check=True, capture_output=True).stdout
    noted: dict[bytes, int] = {}
    checked: list[bytes] = []
    builder = ManifestBuilder(sha256=True, member_check=noting_ctimes(
        lambda entry: checked.append(entry.path), noted.__setitem__))
    builder.feed(archive)
    builder.close()

    assert set(noted) == {b"dir/a.txt", b"b.bin", b"dir/b-link"}
    assert noted[b"dir/a.txt"] == os.lstat(volume / "dir" / "a.txt").st_ctime_ns
    assert len(checked) == 5


def stored_rows(store: TaskStore, scope: str) -> dict[bytes, hashcache.CachedHash]:
    return hashcache.HashCache(store).load(scope)


def cached(index: int) -> hashcache.CachedHash:
    return hashcache.CachedHash((1, index, 5, 10, 20), f"{index:064x}")


def test_store_rows_replaces_scope_in_batches(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(hashseed, "SEED_BATCH_ROWS", 3)
    store = TaskStore(tmp_path / "tasks.db")
    hashcache.HashCache(store).save("scope", {b"old": cached(99), b"f1": cached(98)}, [])
    hashcache.HashCache(store).save("other", {b"old": cached(97)}, [])

    stored = hashseed.store_rows(store, "scope", ((b"f%d" % index, cached(index))
                                                  for index in range(10)))

    rows = stored_rows(store, "scope")
    assert stored == 10
    assert set(rows) == {b"f%d" % index for index in range(10)}
    assert rows[b"f1"] == cached(1)
    assert set(stored_rows(store, "other")) == {b"old"}


def test_store_rows_keeps_scope_without_rows(tmp_path: Path):
    store = TaskStore(tmp_path / "tasks.db")
    hashcache.HashCache(store).save("scope", {b"old": cached(99)}, [])

    assert hashseed.store_rows(store, "scope", iter([])) == 0
    assert stored_rows(store, "scope") == {b"old": cached(99)}


def run_rehash(root: Path, paths: list[bytes], not_before_ns: int) -> list[list]:
    script = Path(hashseed.__file__).with_name("hostscan.py")
    output = subprocess.run(
        [sys.executable, str(script), "rehash", str(root), str(not_before_ns),
         str(hashcache.RACY_MARGIN_NANOSECONDS)],
        input=b"".join(path + b"\0" for path in paths), check=True, capture_output=True).stdout
    return [json.loads(line) for line in output.splitlines()]


def test_host_rehash_waits_and_hashes(volume):
    key = stat_key(volume / "dir" / "a.txt")
    not_before_ns = time.time_ns() + SECOND // 5

    records = run_rehash(volume, [b"dir/a.txt", b"dir", b"gone"], not_before_ns)

    assert len(records) == 1
    path, dev, inode, size, mtime_ns, ctime_ns, sha256, checked_ns = records[0]
    assert base64.b64decode(path) == b"dir/a.txt"
    assert (dev, inode, size, mtime_ns, ctime_ns) == key
    assert sha256 == hashlib.sha256(b"alpha\n").hexdigest()
    assert checked_ns >= not_before_ns


def test_scan_seed_confirms_host_rehash(volume):
    key = stat_key(volume / "dir" / "a.txt")
    seed = ScanSeed()
    record = scan_record(b"dir/a.txt", sha256=hashlib.sha256(b"alpha\n").hexdigest(),
                         ctime_ns=key[4], checked_ns=key[4] + 1)
    record[5], record[6], record[10], record[17] = key[2], key[3], key[1], key[0]
    seed.add(record)
    not_before_ns = key[4] + hashcache.RACY_MARGIN_NANOSECONDS

    confirmed = seed.confirm(run_rehash(volume, [b"dir/a.txt"], not_before_ns))

    assert confirmed == 1
    assert dict(seed.rows())[b"dir/a.txt"].key == key


def test_seed_database_failure_drops_seed(monkeypatch):
    monkeypatch.setattr(hashseed, "SEED_BATCH_ROWS", 1)
    seed = ScanSeed()
    seed.add(scan_record(b"kept"))
    seed._database.execute("DROP TABLE scanned")

    seed.add(scan_record(b"after-failure"))
    seed.add(scan_record(b"dropped"))

    assert seed._scanned.error is not None
    assert list(seed.rows()) == []
