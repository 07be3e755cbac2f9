"""Scans in SQLite tables, compared as sorted streams, decide as in-memory dictionaries did."""

from __future__ import annotations

from pathlib import Path

import pytest

from ddm.store import TaskStore
from ddmsyncer import hashcache, incremental
from ddmsyncer.direct import compare_scans, manifest_from_scan
from ddmsyncer.hashcache import CachedHash, HashCache
from ddmsyncer.incremental import Scan, _differences, plan_update
from ddmsyncer.scanentry import Entry
from ddmsyncer.scantable import KnownHashes, paired
from tests.unit.test_hash_cache import LocalEngine, write_tree

SECOND = 1_000_000_000
# Byte order puts b"a-b" (0x2d) and b"a.b" (0x2e) between b"a" and b"a/b" (0x2f), so a
# directory's contents do not follow it directly. b"\xff" sorts after every ASCII name.
TRICKY = (b"a", b"a-b", b"a.b", b"a/b", b"a/b/c", b"a\xff", b"b\xfe\xfd", b"\xffz")


def entry(path: bytes, kind: str = "file", *, size: int = 10, digest: str | None = "aa",
          inode: int = 0, nlink: int = 1, mode: int = 0o644) -> Entry:
    return Entry(path, kind, mode, 0, 0, size if kind == "file" else 0, 100 * SECOND, None, 0,
                 inode, nlink, digest if kind == "file" else None)


def as_dict(*entries: Entry) -> dict[bytes, Entry]:
    return {item.path: item for item in (entry(b".", "dir"), *entries)}


def as_table(entries: dict[bytes, Entry]) -> Scan:
    return Scan(entries)


def reference_plan(source: dict[bytes, Entry], target: dict[bytes, Entry]) -> tuple[list, list]:
    """The decision rule written as plain set operations on dictionaries."""
    send = {path for path, item in source.items()
            if path not in target or target[path].key() != item.key()}
    delete = {path for path in target if path not in source}
    delete |= {path for path in send if path in target and path != b"."
               and target[path].type != source[path].type}
    outermost = sorted(path for path in delete
                       if not any(path.startswith(other + b"/") for other in delete))
    return sorted(send), outermost


def source_and_target() -> tuple[dict[bytes, Entry], dict[bytes, Entry]]:
    source = as_dict(
        entry(b"a", "dir"), entry(b"a/b", "dir"), entry(b"a/b/c", digest="c1"),
        entry(b"a-b", digest="s1"),                       # changed content
        entry(b"a.b", "dir"),                             # a file on the target
        entry(b"a\xff", digest="new"),                    # added, not UTF-8
        entry(b"h1", digest="hh", inode=5, nlink=2),      # hard link: one name changed
        entry(b"h2", digest="hh", inode=5, nlink=2),
    )
    target = as_dict(
        entry(b"a", "dir"), entry(b"a/b", "dir"), entry(b"a/b/c", digest="c1"),
        entry(b"a-b", digest="t1"),
        entry(b"a.b", digest="was a file"),
        entry(b"b\xfe\xfd", "dir"), entry(b"b\xfe\xfd/x"),  # removed directory with contents
        entry(b"h1", digest="old", inode=9, nlink=2),
        entry(b"h2", digest="hh", inode=9, nlink=2),
        entry(b"\xffz"),                                  # removed, not UTF-8
    )
    return source, target


def test_paired_walks_tricky_names_in_byte_order():
    left = as_table({path: entry(path) for path in TRICKY[::2]})
    right = as_table({path: entry(path) for path in TRICKY[1::2]})

    walked = [(path, a is not None, b is not None) for path, a, b in paired(left, right)]

    assert [path for path, _, _ in walked] == sorted(TRICKY)
    assert all(present_left != present_right for _, present_left, present_right in walked)


def test_paired_matches_equal_paths_once():
    left = as_table({path: entry(path, digest="l") for path in TRICKY})
    right = {path: entry(path, digest="r") for path in TRICKY[2:]}

    walked = list(paired(left, right))

    assert [path for path, _, _ in walked] == sorted(TRICKY)
    assert [b.digest if b else None for _, _, b in walked] == [None, None] + ["r"] * 6
    assert all(a.digest == "l" for _, a, _ in walked)


def test_plan_from_tables_equals_plan_from_dicts():
    source, target = source_and_target()

    from_dicts = plan_update(source, target)
    from_tables = plan_update(as_table(source), as_table(target))

    assert from_tables == from_dicts
    assert from_tables.send == [b".", b"a-b", b"a.b", b"a\xff", b"h1", b"h2"]
    assert from_tables.delete == [b"a.b", b"b\xfe\xfd", b"\xffz"]


def test_plan_matches_reference_rule():
    source, target = source_and_target()
    send, delete = reference_plan(source, target)

    plan = plan_update(as_table(source), as_table(target))

    assert plan.delete == delete
    assert set(send) <= set(plan.send)
    assert set(plan.send) - set(send) == {b".", b"h2"}  # the root, for its mtime; a link name


def test_plan_deletes_outermost_across_tricky_names():
    """b"a-b" sorts between b"a" and b"a/b", but b"a/b" must still go with its directory."""
    source = as_dict()
    target = as_dict(entry(b"a", "dir"), entry(b"a-b"), entry(b"a/b"), entry(b"a/c", "dir"),
                     entry(b"a/c/d"))

    plan = plan_update(as_table(source), as_table(target))

    assert plan.delete == [b"a", b"a-b"]
    assert plan.send == [b"."]


def test_plan_type_change_deletes_then_sends():
    source = as_dict(entry(b"x", "dir"), entry(b"x/y"), entry(b"x.y"))
    target = as_dict(entry(b"x"), entry(b"x.y", "symlink"))

    plan = plan_update(as_table(source), as_table(target))

    assert plan.delete == [b"x", b"x.y"]
    assert plan.send == [b".", b"x", b"x/y", b"x.y"]  # parents first, as tar needs them


def test_differences_from_tables_in_path_order():
    source, target = source_and_target()

    found = list(_differences(as_table(source), as_table(target)))

    assert found == [
        (b"a-b", "content"),
        (b"a.b", "type"),
        (b"a.b", "size"),
        (b"a.b", "content"),
        (b"a\xff", "missing on target"),
        (b"b\xfe\xfd", "extra on target"),
        (b"b\xfe\xfd/x", "extra on target"),
        (b"h1", "content"),
        (b"\xffz", "extra on target"),
    ]
    assert found == list(_differences(source, target))


def test_compare_scans_tables_skip_sockets_and_check_links():
    source = as_dict(entry(b"s", "socket"), entry(b"l1", inode=3, nlink=2),
                     entry(b"l2", inode=3, nlink=2), entry(b"l-3", inode=3, nlink=2))
    target = as_dict(entry(b"l1", inode=4, nlink=2), entry(b"l2", inode=4, nlink=2),
                     entry(b"l-3", inode=6))

    found = compare_scans(as_table(source), as_table(target))

    assert found == [(b"l-3", "hard links"), (b"l1", "hard links"), (b"l2", "hard links")]
    assert found == compare_scans(source, target)
    assert (b"s", "missing on target") not in found


def test_manifest_from_table_marks_first_link_name():
    scan = as_table(as_dict(entry(b"l/b", inode=3, nlink=2), entry(b"l-a", inode=3, nlink=2),
                            entry(b"l", "dir")))

    manifest = manifest_from_scan(scan)

    assert manifest.entries[b"l-a"].type == "file"
    assert manifest.entries[b"l/b"].type == "hardlink"
    assert manifest.entries[b"l/b"].linkname == b"l-a"
    assert len(manifest) == 4


def test_scan_table_mapping_operations():
    table = Scan()
    for path in TRICKY:
        table[path] = entry(path, digest=path.hex())

    del table[b"a.b"]
    popped = table.pop(b"a")

    assert popped.digest == b"a".hex()
    assert list(table) == sorted(set(TRICKY) - {b"a", b"a.b"})
    assert len(table) == len(TRICKY) - 2
    assert table[b"a\xff"] == entry(b"a\xff", digest=b"a\xff".hex())
    assert b"a.b" not in table
    with pytest.raises(KeyError):
        table[b"missing"]


def test_known_hashes_round_trip():
    key = (2**63 + 1, 2**64 - 1, 4096, -5, 1_764_900_000_123_456_789)
    known = KnownHashes([(b"f\xff", CachedHash(key, "ab" * 32))])

    assert dict(known.items()) == {b"f\xff": CachedHash(key, "ab" * 32)}
    assert known[b"f\xff"].key == key


@pytest.fixture
def store(tmp_path: Path) -> TaskStore:
    opened = TaskStore(tmp_path / "tasks.db")
    yield opened
    opened.close()


def test_cached_scan_forgets_gone_files(tmp_path: Path, store: TaskStore,
                                        monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(hashcache, "RACY_MARGIN_NANOSECONDS", 0)
    root = tmp_path / "v"
    write_tree(root, {"keep.txt": b"k\n", "a.b/gone.txt": b"g\n", "a-b": b"x\n"})
    engine, cache = LocalEngine("h1"), HashCache(store)
    scope = hashcache.cache_scope(engine, str(root))
    incremental.scan_both(engine, str(root), engine, str(root), cache=cache, hash_mode="cached")
    assert set(dict(cache.load(scope).items())) == {b"keep.txt", b"a.b/gone.txt", b"a-b"}

    (root / "a.b" / "gone.txt").unlink()
    again, _, _ = incremental.scan_both(engine, str(root), engine, str(root), cache=cache,
                                        hash_mode="cached")

    assert again.gone == [b"a.b/gone.txt"]
    assert again.cache_hits == 2
    assert again.hashed_files == 0
    assert again[b"keep.txt"].digest == hashcache.HashCache(store).load(scope)[b"keep.txt"].digest
    assert set(dict(cache.load(scope).items())) == {b"keep.txt", b"a-b"}


def test_volume_data_bytes_counts_links_once():
    scan = as_table(as_dict(entry(b"a", size=100, inode=7, nlink=2),
                            entry(b"a-b", size=100, inode=7, nlink=2),
                            entry(b"a/b", size=5, inode=8), entry(b"d", "dir")))

    assert incremental.volume_data_bytes(scan) == 105
    assert incremental.volume_data_bytes(dict(scan.items())) == 105
