"""Verified scans kept for the next incremental update (ddmsyncer.scanstore), hostscan.py run locally.

A verified update stores both volumes' scans. The next update rescans against them, so each
host reports only entries whose lstat key changed. These tests check that every change made
since, on either side, is still found, and that a damaged stored scan is not used.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from ddm.errors import VerificationFailed
from ddm.store import TaskStore
from ddm.task import VerifyMode
from ddmsyncer import hashcache, incremental, scanstore
from ddmsyncer.hashcache import HashCache
from tests.unit.test_hash_cache import LocalEngine, rewrite_keeping_mtime
# The fixtures of the rescan tests, used by name: a racy margin of 0, a task database, and
# source and target trees that differ in dir/b.bin, new.txt and gone.txt.
from tests.unit.test_incremental_rescan import ITEM, no_racy_margin, roots, store  # noqa: F401


def update(roots: tuple[Path, Path], store: TaskStore, task_id: str) -> incremental.UpdateResult:
    source_root, target_root = roots
    result = incremental.update_volume(
        LocalEngine("h1"), str(source_root), LocalEngine("h2"), str(target_root),
        task_id=task_id, hash_content=True, on_chunk=lambda count: None,
        on_backup=lambda path, complete: None, cache=HashCache(store))
    incremental.discard_backup(LocalEngine("h2"),
                               incremental.backup_path(str(target_root), task_id))
    return result


def verify(roots: tuple[Path, Path], store: TaskStore, result: incremental.UpdateResult
           ) -> incremental.VerifyResult:
    source_root, target_root = roots
    return incremental.verify_update(LocalEngine("h1"), str(source_root), LocalEngine("h2"),
                                     str(target_root), ITEM, VerifyMode.FULL,
                                     incremental.update_digests(result), HashCache(store))


def update_and_verify(roots: tuple[Path, Path], store: TaskStore, task_id: str
                      ) -> incremental.UpdateResult:
    result = update(roots, store, task_id)
    verify(roots, store, result)
    return result


def scope(roots: tuple[Path, Path], side: int) -> str:
    return hashcache.cache_scope(LocalEngine(("h1", "h2")[side]), str(roots[side]))


def stored_paths(store: TaskStore, scope_name: str) -> set[bytes] | None:
    found = scanstore.load(store, scope_name, incremental.Scan)
    if found is None:
        return None
    scan, _ = found
    try:
        return set(scan)
    finally:
        scan.close()


def test_verify_stores_both_scans(roots, store, no_racy_margin):
    result = update_and_verify(roots, store, "t1")

    expected = set(result.source_scan)
    assert stored_paths(store, scope(roots, 0)) == expected
    assert stored_paths(store, scope(roots, 1)) == expected


def test_next_update_rescans_stored_scans(roots, store, no_racy_margin):
    source_root, _ = roots
    update_and_verify(roots, store, "t1")
    rewrite_keeping_mtime(source_root / "dir" / "c.bin", b"C" * 100)
    (source_root / "a.txt").unlink()
    (source_root / "added.txt").write_bytes(b"added\n")

    result = update(roots, store, "t2")

    # Parents of sent entries are sent too, so that tar sets their mtimes back.
    assert sorted(result.plan.send) == [b".", b"added.txt", b"dir", b"dir/c.bin"]
    assert result.plan.delete == [b"a.txt"]
    # Reused: new.txt, dir and dir/b.bin. The root changed (names added and removed).
    assert result.source_scan.reused_entries == 3
    assert result.source_scan.hashed_files == 2  # dir/c.bin and added.txt
    assert result.source_scan.cache_hits == 0


def test_update_after_stored_scans_verifies(roots, store, no_racy_margin):
    source_root, target_root = roots
    update_and_verify(roots, store, "t1")
    rewrite_keeping_mtime(source_root / "dir" / "c.bin", b"C" * 100)

    result = update(roots, store, "t2")
    verified = verify(roots, store, result)

    assert (target_root / "dir" / "c.bin").read_bytes() == b"C" * 100
    assert verified.hashed_files["source"] == 0


def test_target_change_since_stored_scan_is_sent(roots, store, no_racy_margin):
    """A target file rewritten after the last verification, mtime set back, is sent again."""
    _, target_root = roots
    update_and_verify(roots, store, "t1")
    rewrite_keeping_mtime(target_root / "dir" / "c.bin", b"X" * 100)
    os.chmod(target_root / "new.txt", 0o600)

    result = update(roots, store, "t2")

    assert sorted(result.plan.send) == [b".", b"dir", b"dir/c.bin", b"new.txt"]
    assert result.target_scan.reused_entries > 0
    verify(roots, store, result)
    assert (target_root / "dir" / "c.bin").read_bytes() == b"c" * 100


def every_ctime_racy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hashcache, "RACY_MARGIN_NANOSECONDS", 10**18)
    monkeypatch.setattr(hashcache, "FINE_RACY_MARGIN_NANOSECONDS", 10**18)


def test_racy_stored_entries_hashed_again(roots, store, monkeypatch):
    """Entries changed within the racy margin of the stored scan's start are not trusted."""
    every_ctime_racy(monkeypatch)
    update_and_verify(roots, store, "t1")

    result = update(roots, store, "t2")

    assert result.plan.send == []
    assert result.source_scan.reused_entries == 0
    assert result.source_scan.hashed_files == 4  # every file of FILES and new.txt


def test_failed_verify_stores_no_scan(roots, store, no_racy_margin):
    _, target_root = roots
    result = update(roots, store, "t1")
    rewrite_keeping_mtime(target_root / "dir" / "c.bin", b"X" * 100)

    with pytest.raises(VerificationFailed):
        verify(roots, store, result)

    assert stored_paths(store, scope(roots, 0)) is None
    assert stored_paths(store, scope(roots, 1)) is None


def damage_first_chunk(store: TaskStore, scope_name: str) -> None:
    with store.transaction() as db:
        row = db.execute("SELECT records FROM volume_scan_chunks WHERE scope = ? AND chunk = 0",
                         (scope_name,)).fetchone()
        damaged = bytearray(row["records"])
        damaged[len(damaged) // 2] ^= 0xFF
        db.execute("UPDATE volume_scan_chunks SET records = ? WHERE scope = ? AND chunk = 0",
                   (bytes(damaged), scope_name))


def test_damaged_stored_scan_not_used(roots, store, no_racy_margin, caplog):
    source_root, _ = roots
    update_and_verify(roots, store, "t1")
    damage_first_chunk(store, scope(roots, 1))
    rewrite_keeping_mtime(source_root / "dir" / "c.bin", b"C" * 100)

    with caplog.at_level(logging.WARNING, logger="ddmsyncer.scanstore"):
        result = update(roots, store, "t2")

    assert "chunk 0 fails its checksum" in caplog.text
    assert result.source_scan.reused_entries == 0
    assert result.target_scan.reused_entries == 0
    assert sorted(result.plan.send) == [b".", b"dir", b"dir/c.bin"]


def test_missing_chunk_rejected(tmp_path, store):
    scan = incremental.Scan((bytes([65 + index % 26]) * (index + 1), FILE_ENTRY)
                            for index in range(scanstore.CHUNK_ROWS + 5))
    scanstore.save(store, "h1 /v", scan, started_ns=7, task_id="t1")
    with store.transaction() as db:
        db.execute("DELETE FROM volume_scan_chunks WHERE scope = 'h1 /v' AND chunk = 0")

    assert scanstore.load(store, "h1 /v", incremental.Scan) is None


def test_save_and_load_round_trip(store):
    scan = incremental.Scan((b"f%05d" % index, FILE_ENTRY)
                            for index in range(scanstore.CHUNK_ROWS * 2 + 1))

    stored = scanstore.save(store, "h1 /v", scan, started_ns=123, task_id="t1")
    loaded, started_ns = scanstore.load(store, "h1 /v", incremental.Scan)

    assert stored == len(scan)
    assert started_ns == 123
    assert list(loaded.iter_records()) == list(scan.iter_records())


def test_save_replaces_earlier_scan(store):
    scanstore.save(store, "h1 /v", incremental.Scan({b"old": FILE_ENTRY}), started_ns=1,
                   task_id="t1")
    scanstore.save(store, "h1 /v", incremental.Scan({b"new": FILE_ENTRY}), started_ns=2,
                   task_id="t2")

    loaded, started_ns = scanstore.load(store, "h1 /v", incremental.Scan)

    assert list(loaded) == [b"new"]
    assert started_ns == 2


def test_head_checksum_mismatch_rejected(store):
    scanstore.save(store, "h1 /v", incremental.Scan({b"a": FILE_ENTRY}), started_ns=1,
                   task_id="t1")
    with store.transaction() as db:
        db.execute("UPDATE volume_scans SET head = replace(head, '\"started_ns\": 1', "
                   "'\"started_ns\": 9')")

    assert scanstore.load(store, "h1 /v", incremental.Scan) is None


FILE_ENTRY = incremental.Entry(b"x", "file", 0o644, 0, 0, 3, 1_600_000_000_000_000_000, None, 0,
                               11, 1, "ab" * 32, 2049, 1_600_000_000_000_000_000, None)


def stored_update(roots: tuple[Path, Path], store: TaskStore) -> incremental.UpdateResult:
    """Verify one update, change dir/c.bin on the source, and update again from stored scans."""
    source_root, _ = roots
    update_and_verify(roots, store, "t1")
    rewrite_keeping_mtime(source_root / "dir" / "c.bin", b"C" * 100)
    return update(roots, store, "t2")


def no_full_listing(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("verify listed every entry again")

    monkeypatch.setattr(incremental, "_full_listing", fail)


def test_verify_sends_update_listing_again(roots, store, no_racy_margin, monkeypatch):
    result = stored_update(roots, store)
    no_full_listing(monkeypatch)

    verified = verify(roots, store, result)

    assert result.source_scan.listing is not None
    assert verified.hashed_files == {"source": 0, "target": 1}  # the sent dir/c.bin
    assert verified.reused_entries == len(result.source_scan)


# Each case: a change made to (source root, target root) after an update whose verify
# relists the update's scans, and the difference that verify reports.
RELISTED_DAMAGE = {
    "source change": (lambda source, target: rewrite_keeping_mtime(source / "dir" / "b.bin",
                                                                   b"B" * 4096),
                      "dir/b.bin: content"),
    "corrupt sent file": (lambda source, target: rewrite_keeping_mtime(target / "dir" / "c.bin",
                                                                       b"X" * 100),
                          "dir/c.bin: content"),
    "removed file": (lambda source, target: (target / "new.txt").unlink(),
                     "new.txt: missing on target"),
    "extra file": (lambda source, target: (target / "dir" / "extra.txt").write_bytes(b"extra\n"),
                   "dir/extra.txt: extra on target"),
}


@pytest.mark.parametrize("case", sorted(RELISTED_DAMAGE))
def test_relisted_verify_finds_damage(roots, store, no_racy_margin, monkeypatch, case):
    damage, difference = RELISTED_DAMAGE[case]
    result = stored_update(roots, store)
    no_full_listing(monkeypatch)
    assert b"dir/c.bin" in result.plan.send
    damage(*roots)

    with pytest.raises(VerificationFailed, match=difference):
        verify(roots, store, result)


def test_relisted_verify_distrusts_racy_reports(roots, store, monkeypatch):
    """Entries the update's rescan reported with a racy ctime are hashed again by verify."""
    source_root, _ = roots
    monkeypatch.setattr(hashcache, "RACY_MARGIN_NANOSECONDS", 0)
    result = stored_update(roots, store)
    every_ctime_racy(monkeypatch)
    no_full_listing(monkeypatch)

    verified = verify(roots, store, result)

    # dir/c.bin was reported by the update's rescan, so its key is dropped and it is hashed.
    assert verified.hashed_files["source"] == 1
    assert (source_root / "dir" / "c.bin").read_bytes() == b"C" * 100


@pytest.mark.parametrize("damage", [
    "UPDATE volume_scans SET head = CAST(head AS BLOB)",
    "UPDATE volume_scan_chunks SET records = 'abc'",
    "UPDATE volume_scan_chunks SET checksum = 7",
    "UPDATE volume_scans SET head = '{}'",
])
def test_damaged_rows_ignored_with_reason(store, damage):
    scanstore.save(store, "h1 /v", incremental.Scan({b"a": FILE_ENTRY}), started_ns=1,
                   task_id="t1")
    with store.transaction() as db:
        db.execute(damage)
    problems: list[str] = []

    loaded = scanstore.load(store, "h1 /v", incremental.Scan, problems)

    assert loaded is None
    assert len(problems) == 1
    assert problems[0].startswith("ignored the stored scan of h1 /v: ")


def test_save_replaces_chunks_left_without_head(store):
    scanstore.save(store, "h1 /v", incremental.Scan({b"old": FILE_ENTRY}), started_ns=1,
                   task_id="t1")
    # The sqlite3 shell leaves foreign keys off, so deleting a head keeps its chunks.
    store._db.execute("PRAGMA foreign_keys=OFF")
    store._db.execute("DELETE FROM volume_scans")
    store._db.execute("PRAGMA foreign_keys=ON")

    scanstore.save(store, "h1 /v", incremental.Scan({b"new": FILE_ENTRY}), started_ns=2,
                   task_id="t2")
    loaded, _ = scanstore.load(store, "h1 /v", incremental.Scan)

    assert list(loaded) == [b"new"]


def test_update_reports_ignored_stored_scan(roots, store, no_racy_margin):
    update_and_verify(roots, store, "t1")
    damage_first_chunk(store, scope(roots, 0))

    result = update(roots, store, "t2")

    assert result.stored_scans is False
    assert len(result.warnings) == 1
    assert "chunk 0 fails its checksum" in result.warnings[0]


def test_update_marks_stored_scans_used(roots, store, no_racy_margin):
    update_and_verify(roots, store, "t1")

    result = update(roots, store, "t2")

    assert result.stored_scans is True
    assert result.warnings == []


def test_restore_undoes_directory_xattrs(roots, store, no_racy_margin):
    """A failed update's restore removes the xattrs that tar set on an existing directory."""
    source_root, target_root = roots
    os.setxattr(source_root / "dir", "user.added", b"new")
    os.setxattr(target_root / "dir", "user.kept", b"old")
    os.setxattr(source_root / "dir", "user.kept", b"changed")
    before = {name: os.getxattr(target_root / "dir", name)
              for name in os.listxattr(target_root / "dir")}
    backups: list[str] = []
    incremental.update_volume(
        LocalEngine("h1"), str(source_root), LocalEngine("h2"), str(target_root),
        task_id="t1", hash_content=True, on_chunk=lambda count: None,
        on_backup=lambda path, complete: backups.append(path), cache=HashCache(store))
    assert os.getxattr(target_root / "dir", "user.added") == b"new"

    incremental.restore_backup(LocalEngine("h2"), str(target_root), backups[0])

    after = {name: os.getxattr(target_root / "dir", name)
             for name in os.listxattr(target_root / "dir")}
    assert after == before


def test_update_removes_directory_xattr(roots, store, no_racy_margin):
    source_root, target_root = roots
    os.setxattr(target_root / "dir", "user.stale", b"1")
    os.setxattr(source_root / "dir", "user.other", b"2")

    result = update(roots, store, "t1")
    verify(roots, store, result)

    assert result.plan.reset_xattrs == [b"dir"]
    assert os.listxattr(target_root / "dir") == ["user.other"]
