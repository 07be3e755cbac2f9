"""Verify of an incremental update that rescans both volumes, with hostscan.py run locally.

After an update made in this process, verify lets each host report only the entries whose
lstat key changed since the update's scan, and the target's host also the sent entries.
These tests check that every change made between the update and verify is still found, on
the source and on the target.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ddm.errors import VerificationFailed
from ddm.store import TaskStore
from ddm.task import TaskItem, VerifyMode
from ddmsyncer import hashcache, incremental
from ddmsyncer.hashcache import HashCache
from tests.unit.test_hash_cache import FILES, LocalEngine, rewrite_keeping_mtime, write_tree

ITEM = TaskItem(task_id="t", position=0, source="v", target="v")


@pytest.fixture
def no_racy_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    # The tests write files right before they scan them; without this, no entry is trusted.
    monkeypatch.setattr(hashcache, "RACY_MARGIN_NANOSECONDS", 0)


@pytest.fixture
def every_ctime_racy(monkeypatch: pytest.MonkeyPatch) -> None:
    # The files' ctimes stay within the margin however long a loaded machine takes to scan.
    monkeypatch.setattr(hashcache, "RACY_MARGIN_NANOSECONDS", 10**18)
    monkeypatch.setattr(hashcache, "FINE_RACY_MARGIN_NANOSECONDS", 10**18)


@pytest.fixture
def store(tmp_path: Path) -> TaskStore:
    opened = TaskStore(tmp_path / "tasks.db")
    yield opened
    opened.close()


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    source_root, target_root = tmp_path / "source" / "_data", tmp_path / "target" / "_data"
    write_tree(source_root, {**FILES, "new.txt": b"new\n"})
    write_tree(target_root, {**FILES, "dir/b.bin": b"old" * 10, "gone.txt": b"gone\n"})
    return source_root, target_root


def update(roots: tuple[Path, Path], store: TaskStore) -> incremental.UpdateResult:
    source_root, target_root = roots
    result = incremental.update_volume(
        LocalEngine("h1"), str(source_root), LocalEngine("h2"), str(target_root), task_id="t",
        hash_content=True, on_chunk=lambda count: None, on_backup=lambda path, complete: None,
        cache=HashCache(store))
    incremental.discard_backup(LocalEngine("h2"), incremental.backup_path(str(target_root), "t"))
    return result


def verify(roots: tuple[Path, Path], store: TaskStore, result: incremental.UpdateResult,
           mode: VerifyMode = VerifyMode.FULL) -> incremental.VerifyResult:
    source_root, target_root = roots
    return incremental.verify_update(LocalEngine("h1"), str(source_root), LocalEngine("h2"),
                                     str(target_root), ITEM, mode,
                                     incremental.update_digests(result), HashCache(store))


def test_rescan_reuses_unchanged_entries(roots, store, no_racy_margin):
    result = update(roots, store)

    verified = verify(roots, store, result)

    assert verified.reused_entries == len(result.source_scan)
    assert verified.hashed_files["source"] == 0
    assert verified.hashed_files["target"] == 2  # the sent dir/b.bin and new.txt


def test_verify_reuses_unsent_target_entries(roots, store, no_racy_margin):
    result = update(roots, store)
    changed = set(result.plan.send) | set(result.plan.delete)

    verified = verify(roots, store, result)

    unsent = [path for path in result.target_scan if path not in changed]
    assert unsent == [b"a.txt", b"dir/c.bin"]
    assert verified.target_reused_entries == len(unsent)


def test_removed_unsent_target_file_fails(roots, store, no_racy_margin):
    _, target_root = roots
    result = update(roots, store)
    (target_root / "dir" / "c.bin").unlink()

    with pytest.raises(VerificationFailed, match="dir/c.bin: missing on target"):
        verify(roots, store, result)


def test_target_mode_change_before_verify_fails(roots, store, no_racy_margin):
    _, target_root = roots
    result = update(roots, store)
    os.chmod(target_root / "a.txt", 0o600)

    with pytest.raises(VerificationFailed, match="a.txt: mode"):
        verify(roots, store, result, VerifyMode.QUICK)


def test_racy_target_entries_hashed_again(roots, store, every_ctime_racy):
    """Target files changed within the racy margin of the update's scan are hashed again."""
    result = update(roots, store)

    verified = verify(roots, store, result)

    target_files = [path for path, entry in incremental.update_digests(result).target_scan.items()
                    if entry.type == "file" and path not in result.plan.delete]
    assert verified.target_reused_entries == 0
    assert verified.hashed_files["target"] == len(set(target_files) | {b"new.txt"})


def test_rescan_reports_changed_and_removed(roots, store, no_racy_margin):
    source_root, _ = roots
    earlier = update(roots, store).source_scan
    rewrite_keeping_mtime(source_root / "dir" / "c.bin", b"C" * 100)
    (source_root / "a.txt").unlink()
    (source_root / "dir" / "added.txt").write_bytes(b"added\n")

    rescanned, _ = incremental.rescan_volume(LocalEngine("h1"), str(source_root), earlier,
                                             hash_content=True)

    assert b"a.txt" not in rescanned
    assert rescanned[b"dir/added.txt"].digest is not None
    assert rescanned[b"dir/c.bin"].digest != earlier[b"dir/c.bin"].digest
    assert rescanned[b"dir/c.bin"].mtime_ns == earlier[b"dir/c.bin"].mtime_ns
    assert rescanned.hashed_files == 2
    # Unchanged: new.txt and dir/b.bin. Changed: the root and dir (names added or removed).
    assert rescanned.reused_entries == 2
    assert set(rescanned) == set(earlier) - {b"a.txt"} | {b"dir/added.txt"}


def test_rescan_distrusts_racy_entries(roots, store, every_ctime_racy):
    """Entries changed less than the racy margin before the update's scan are rescanned."""
    source_root, _ = roots
    earlier = update(roots, store).source_scan

    rescanned, _ = incremental.rescan_volume(LocalEngine("h1"), str(source_root), earlier,
                                             hash_content=True)

    assert rescanned.reused_entries == 0
    assert rescanned.hashed_files == len([e for e in earlier.values() if e.type == "file"])
    assert {path: entry.digest for path, entry in rescanned.items()} == \
        {path: entry.digest for path, entry in earlier.items()}


def test_source_change_before_verify_fails(roots, store, no_racy_margin):
    """A source file rewritten after the update's scan, mtime set back, fails verify."""
    source_root, _ = roots
    result = update(roots, store)
    rewrite_keeping_mtime(source_root / "dir" / "c.bin", b"C" * 100)

    with pytest.raises(VerificationFailed, match="dir/c.bin: content"):
        verify(roots, store, result)


def test_source_mode_change_before_verify_fails(roots, store, no_racy_margin):
    source_root, _ = roots
    result = update(roots, store)
    os.chmod(source_root / "a.txt", 0o600)

    with pytest.raises(VerificationFailed, match="a.txt: mode"):
        verify(roots, store, result, VerifyMode.QUICK)


def test_source_file_added_before_verify_fails(roots, store, no_racy_margin):
    source_root, _ = roots
    result = update(roots, store)
    (source_root / "late.txt").write_bytes(b"late\n")

    with pytest.raises(VerificationFailed, match="late.txt: missing on target"):
        verify(roots, store, result)


def test_corrupt_unsent_target_file_fails(roots, store, no_racy_margin):
    """A target file that was not sent, rewritten after the copy with its mtime set back."""
    _, target_root = roots
    result = update(roots, store)
    assert b"dir/c.bin" not in result.plan.send
    rewrite_keeping_mtime(target_root / "dir" / "c.bin", b"X" * 100)

    with pytest.raises(VerificationFailed, match="dir/c.bin: content"):
        verify(roots, store, result)


def test_corrupt_sent_target_file_fails(roots, store, no_racy_margin):
    _, target_root = roots
    result = update(roots, store)
    assert b"dir/b.bin" in result.plan.send
    rewrite_keeping_mtime(target_root / "dir" / "b.bin", b"X" * 4096)

    with pytest.raises(VerificationFailed, match="dir/b.bin: content"):
        verify(roots, store, result)


def test_extra_target_file_fails(roots, store, no_racy_margin):
    _, target_root = roots
    result = update(roots, store)
    (target_root / "stray.txt").write_bytes(b"stray\n")

    with pytest.raises(VerificationFailed, match="stray.txt: extra on target"):
        verify(roots, store, result)


def test_verify_caches_target_digests(roots, store, no_racy_margin):
    """Verify stores the digests it hashed on the target and drops the rows of removed files."""
    _, target_root = roots
    result = update(roots, store)

    verify(roots, store, result)

    scope = hashcache.cache_scope(LocalEngine("h2"), str(target_root))
    cached = HashCache(store).load(scope)
    assert set(cached) == {b"a.txt", b"dir/b.bin", b"dir/c.bin", b"new.txt"}
    info = (target_root / "dir" / "b.bin").stat()
    assert cached[b"dir/b.bin"].key == (info.st_dev, info.st_ino, info.st_size,
                                        info.st_mtime_ns, info.st_ctime_ns)


def test_started_verify_scans_are_used(roots, store, no_racy_margin):
    source_root, target_root = roots
    result = update(roots, store)
    digests = incremental.update_digests(result)
    incremental.start_verify_scans(LocalEngine("h1"), str(source_root), LocalEngine("h2"),
                                   str(target_root), digests, VerifyMode.FULL)
    started = dict(digests.commands)

    verified = incremental.verify_update(LocalEngine("h1"), str(source_root), LocalEngine("h2"),
                                         str(target_root), ITEM, VerifyMode.FULL, digests)

    assert verified.reused_entries == len(result.source_scan)
    assert digests.commands == {}
    assert all(command.channel.process.returncode == 0 for command in started.values())


def test_rescan_closed_unused_scans_nothing(roots):
    source_root, _ = roots
    command = incremental.HostCommand(LocalEngine("h1"), ["rescan", str(source_root), "all"])

    assert command.finish(b"") == b""


def test_discard_later_needs_request(tmp_path: Path):
    backup = tmp_path / "ddm-backup-t"
    (backup / "data").mkdir(parents=True)
    engine = LocalEngine("h2")

    incremental.HostCommand(engine, ["discard-later", str(backup)]).close()
    assert backup.exists()
    incremental.HostCommand(engine, ["discard-later", str(backup)]).finish(b"")
    assert backup.exists()
    incremental.HostCommand(engine, ["discard-later", str(backup)]).finish(b"discard")
    assert not backup.exists()
