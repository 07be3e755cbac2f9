"""The hash cache of host-side scans, and stash/unstash, with hostscan.py run on local directories.

LocalEngine runs the host commands of ddmsyncer.incremental as local subprocesses, so these
tests exercise the real host script and the controller's cache logic without a lab.
"""

from __future__ import annotations

import base64
import os
import sqlite3
import subprocess
import threading
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from ddm.errors import VerificationFailed
from ddm.store import TaskStore
from ddm.task import TaskItem, VerifyMode
from ddmsyncer import hashcache, incremental
from ddmsyncer.hashcache import HashCache


class LocalChannel:
    """The part of an SSH exec channel that incremental._run_host and relay_tar use."""

    def __init__(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)

    def sendall(self, data: bytes) -> None:
        self.process.stdin.write(data)

    def shutdown_write(self) -> None:
        self.process.stdin.close()

    def recv(self, size: int) -> bytes:
        return self.process.stdout.read1(size)

    def recv_stderr(self, size: int) -> bytes:
        return self.process.stderr.read1(size)

    def recv_exit_status(self) -> int:
        return self.process.wait()

    def close(self) -> None:
        if not self.process.stdin.closed:
            self.process.stdin.close()  # as the SSH server does when a channel closes
        self.process.wait()


class LocalSSH:
    def open_command(self, argv: list[str]) -> LocalChannel:
        return LocalChannel(argv)


@dataclass(frozen=True)
class LocalHost:
    name: str
    url: str


class LocalEngine:
    def __init__(self, name: str) -> None:
        self.host = LocalHost(name, f"ssh://{name}")
        self.ssh = LocalSSH()


@pytest.fixture(autouse=True)
def no_racy_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    # The test writes files right before it scans them; without this, none would be cached.
    monkeypatch.setattr(hashcache, "RACY_MARGIN_NANOSECONDS", 0)


@pytest.fixture
def store(tmp_path: Path) -> TaskStore:
    opened = TaskStore(tmp_path / "tasks.db")
    yield opened
    opened.close()


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        os.utime(path, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))


def rewrite_keeping_mtime(path: Path, content: bytes) -> None:
    """Change a file's content at the same size and set its mtime back (touch -d)."""
    before = path.stat()
    assert len(content) == before.st_size
    path.write_bytes(content)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


FILES = {"a.txt": b"alpha\n", "dir/b.bin": b"b" * 4096, "dir/c.bin": b"c" * 100}


def scan(root: Path, cache: HashCache) -> incremental.Scan:
    engine = LocalEngine("h1")
    source, _, _ = incremental.scan_both(engine, str(root), engine, str(root), cache=cache,
                                         hash_mode="cached")
    return source


def test_cache_hit_skips_hashing(tmp_path: Path, store: TaskStore):
    write_tree(tmp_path / "v", FILES)
    cache = HashCache(store)

    first = scan(tmp_path / "v", cache)
    second = scan(tmp_path / "v", cache)

    assert first.hashed_files == 3
    assert second.hashed_files == 0
    assert second.cache_hits == 3
    assert {path: entry.digest for path, entry in second.items()} == \
        {path: entry.digest for path, entry in first.items()}


def test_cache_detects_restored_mtime(tmp_path: Path, store: TaskStore):
    write_tree(tmp_path / "v", FILES)
    cache = HashCache(store)
    first = scan(tmp_path / "v", cache)

    rewrite_keeping_mtime(tmp_path / "v" / "dir" / "b.bin", b"x" * 4096)
    second = scan(tmp_path / "v", cache)

    assert second.hashed_files == 1
    assert second[b"dir/b.bin"].mtime_ns == first[b"dir/b.bin"].mtime_ns
    assert second[b"dir/b.bin"].digest != first[b"dir/b.bin"].digest


def test_damaged_cache_row_is_ignored(tmp_path: Path, store: TaskStore):
    write_tree(tmp_path / "v", FILES)
    cache = HashCache(store)
    scan(tmp_path / "v", cache)
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE file_hashes SET digest = ? WHERE path = ?", ("0" * 64, b"a.txt"))

    again = scan(tmp_path / "v", cache)

    assert again.hashed_files == 1
    assert again[b"a.txt"].digest != "0" * 64


def test_known_keys_input_skips_bad_rows(tmp_path: Path, store: TaskStore):
    """The scan input read straight from the rows equals the one built from iter_valid."""
    write_tree(tmp_path / "v", FILES)
    cache = HashCache(store)
    scan(tmp_path / "v", cache)
    scope = hashcache.cache_scope(LocalEngine("h1"), str(tmp_path / "v"))
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE file_hashes SET digest = ? WHERE path = ?", ("0" * 64, b"a.txt"))

    lines = b"".join(cache.known_keys_input(scope)).splitlines()

    assert lines == b"".join(hashcache.known_keys_input(cache.iter_valid(scope))).splitlines()
    assert [base64.b64decode(line.split()[0]) for line in lines] == [b"dir/b.bin", b"dir/c.bin"]
    info = (tmp_path / "v" / "dir" / "c.bin").stat()
    assert lines[1].split()[1:6] == [str(value).encode() for value in (
        info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)]


def test_damaged_cache_cannot_pass_verify(tmp_path: Path, store: TaskStore):
    """A target file that differs, with a cache row forged to its new key, still fails verify."""
    source_root, target_root = tmp_path / "source", tmp_path / "target"
    write_tree(source_root, FILES)
    write_tree(target_root, FILES)
    source, target = LocalEngine("h1"), LocalEngine("h2")
    cache = HashCache(store)
    incremental.scan_both(source, str(source_root), target, str(target_root), cache=cache,
                          hash_mode="cached")

    wrong = target_root / "dir" / "b.bin"
    rewrite_keeping_mtime(wrong, b"y" * 4096)
    info = wrong.stat()
    new_key = hashcache.format_key((info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns,
                                    info.st_ctime_ns))
    scope = hashcache.cache_scope(target, str(target_root))
    with sqlite3.connect(store.path) as db:
        changed = db.execute("UPDATE file_hashes SET file_key = ? WHERE scope = ? AND path = ?",
                             (new_key, scope, b"dir/b.bin")).rowcount
    assert changed == 1

    item = TaskItem(task_id="t", position=0, source="v", target="v")
    with pytest.raises(VerificationFailed, match="dir/b.bin: content"):
        incremental.verify_update(source, str(source_root), target, str(target_root), item,
                                  VerifyMode.FULL, cache=cache)


def snapshot(root: Path) -> dict[str, tuple]:
    """Return every entry's type, mode, owner, size, mtime, inode and content."""
    entries = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            path = Path(directory) / name
            info = path.lstat()
            content = path.read_bytes() if path.is_file() and not path.is_symlink() else None
            entries[str(path.relative_to(root))] = (
                info.st_mode, info.st_uid, info.st_gid, info.st_size if content else 0,
                info.st_mtime_ns, info.st_ino if content is not None else 0, content)
    return entries


def test_unstash_restores_target(tmp_path: Path):
    """stash, an update that writes, deletes and changes a type, then unstash: all undone."""
    root = tmp_path / "_data"
    write_tree(root, {**FILES, "gone/deep/d.txt": b"d\n", "kind": b"file becomes a directory"})
    os.chmod(root / "dir", 0o700)
    os.utime(root / "dir", ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
    before = snapshot(root)
    backup = str(tmp_path / "ddm-backup-t")
    plan = incremental.Plan(send=[b".", b"dir", b"dir/b.bin", b"dir/new.txt", b"kind",
                                  b"kind/inner"],
                            delete=[b"gone", b"kind"])
    engine = LocalEngine("h2")

    incremental._run_host(engine, ["stash", str(root), backup], incremental.stash_input(plan))
    assert not (root / "gone").exists()
    assert not (root / "dir" / "b.bin").exists()
    (root / "dir" / "b.bin").write_bytes(b"new content")
    (root / "dir" / "new.txt").write_bytes(b"new\n")
    (root / "kind").mkdir()
    (root / "kind" / "inner").write_bytes(b"inner\n")
    os.chmod(root / "dir", 0o755)
    incremental.restore_backup(engine, str(root), backup)

    assert snapshot(root) == before
    assert not os.path.exists(backup)


def test_unstash_after_partial_stash(tmp_path: Path):
    """A stash that stopped after its journal, before moving anything, is undone harmlessly."""
    root = tmp_path / "_data"
    write_tree(root, FILES)
    before = snapshot(root)
    backup = tmp_path / "ddm-backup-t"
    (backup / "data").mkdir(parents=True)
    (backup / "journal.json").write_text(
        '{"moved": ["YS50eHQ="], "new": ["bmV3"], "directories": []}')

    incremental.restore_backup(LocalEngine("h2"), str(root), str(backup))

    assert snapshot(root) == before
    assert not backup.exists()


def test_apply_deletes_then_unpacks(tmp_path: Path):
    source_root, target_root = tmp_path / "source", tmp_path / "target"
    write_tree(source_root, {"a.txt": b"new alpha\n"})
    write_tree(target_root, {"a.txt": b"old\n", "old/x": b"x"})
    chunks: list[int] = []
    lock = threading.Lock()

    def count(size: int) -> None:
        with lock:
            chunks.append(size)

    incremental.relay_tar(LocalEngine("h1"), str(source_root), LocalEngine("h2"),
                          str(target_root), [b"a.txt"], count, delete=[b"old"])

    assert (target_root / "a.txt").read_bytes() == b"new alpha\n"
    assert not (target_root / "old").exists()
    assert sum(chunks) > 0


def test_update_volume_local_round_trip(tmp_path: Path, store: TaskStore):
    """update_volume with the stash and tar commands started early; then a no-op update."""
    source_root, target_root = tmp_path / "source" / "_data", tmp_path / "target" / "_data"
    write_tree(source_root, {**FILES, "new.txt": b"new\n"})
    write_tree(target_root, {**FILES, "dir/b.bin": b"old" * 10, "gone.txt": b"gone\n"})
    source, target = LocalEngine("h1"), LocalEngine("h2")
    backups: list[tuple[str, bool]] = []

    def update() -> incremental.UpdateResult:
        return incremental.update_volume(
            source, str(source_root), target, str(target_root), task_id="t", hash_content=True,
            on_chunk=lambda count: None,
            on_backup=lambda path, complete: backups.append((path, complete)),
            cache=HashCache(store))

    first = update()
    assert first.deleted_entries == 1
    assert (target_root / "dir" / "b.bin").read_bytes() == b"b" * 4096
    assert (target_root / "new.txt").read_bytes() == b"new\n"
    assert not (target_root / "gone.txt").exists()
    assert [complete for _, complete in backups] == [False, True]
    incremental.discard_backup(target, backups[-1][0])

    second = update()
    assert second.sent_entries == 0
    assert second.deleted_entries == 0
    assert len(backups) == 2  # no backup for an update that changes nothing
    assert not os.path.exists(backups[-1][0])


def test_stored_rows_carry_row_checksum(store: TaskStore):
    # A scope and paths with characters that JSON escapes: quotes, backslashes, non-ASCII.
    scope = 'h1:/var/lib/docker/volumes/"q\\z\u00e9"/_data'
    rows = {b"plain": hashcache.CachedHash((1, 2, 3, 4, 5), "ab" * 32),
            b"caf\xc3\xa9 \"x\"\\": hashcache.CachedHash((7, 8, 9, 10, 11), "cd" * 32),
            b"\xff\xfe": hashcache.CachedHash((0, 0, 0, 0, 0), "ef" * 32)}
    cache = HashCache(store)

    cache.replace(scope, rows.items(), batch_rows=2)
    cache.save(scope + "-saved", rows, [])

    for stored_scope in (scope, scope + "-saved"):
        with closing(sqlite3.connect(store.path)) as database:
            stored = database.execute("SELECT path, file_key, digest, checksum FROM file_hashes "
                                      "WHERE scope = ?", (stored_scope,)).fetchall()
        assert sorted(bytes(row[0]) for row in stored) == sorted(rows)
        for path, file_key, digest, checksum in stored:
            assert checksum == hashcache.row_checksum(stored_scope, bytes(path), file_key, digest)
        assert dict(cache.load(stored_scope)) == rows


@pytest.mark.parametrize("text", ["2049 17 4096 1796472580123456789 1796472580123456789",
                                  "ab" * 32, "", "-1 2", 'quote"d', "back\\slash", "tab\there",
                                  "del\x7f", "caf\u00e9", "new\nline", "\u2028"])
def test_checksum_function_equals_row_checksum(text: str):
    scope = "h1:/var/lib/docker/volumes/v/_data"
    checksum = hashcache._checksum_function(scope)

    assert checksum(b"a/b", text, "ab" * 32) == hashcache.row_checksum(scope, b"a/b", text, "ab" * 32)
    assert checksum(b"a/b", "1 2 3 4 5", text) == hashcache.row_checksum(scope, b"a/b", "1 2 3 4 5",
                                                                         text)
