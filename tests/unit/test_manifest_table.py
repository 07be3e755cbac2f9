"""Tests of the SQLite-backed entry table, streaming comparison and chunked storage."""

from __future__ import annotations

import dataclasses
import json
import random
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from ddm import manifest as manifest_module
from ddm.manifest import (
    ALL_ASPECTS,
    DEEP_ASPECTS,
    QUICK_ASPECTS,
    EntryTable,
    Manifest,
    ManifestBuilder,
    ManifestEntry,
    ManifestError,
    compare_manifests,
)
from ddm.manifest_store import MANIFEST_CHUNK_ENTRIES, load_task_manifest, save_task_manifest
from ddm.store import TaskStore
from ddm.task import Task, TaskItem, TaskSpec, VolumeSpec
from tests.unit.manifest_reference import reference_compare

ASPECT_SETS = [ALL_ASPECTS, DEEP_ASPECTS, QUICK_ASPECTS, ("presence",), ("link", "content"),
               ("type", "size", "mtime_ns", "sparse")]


def generated_entries(seed: int, count: int = 400) -> dict[bytes, ManifestEntry]:
    """Return a tree with every entry type, raw-byte names and hard-link groups."""
    rng = random.Random(seed)
    entries: dict[bytes, ManifestEntry] = {}

    def add(entry: ManifestEntry) -> None:
        entries[entry.path] = entry

    add(ManifestEntry(b".", "dir", 0o755, 0, 0, 0, mtime_ns=1_700_000_000 * 10**9))
    directories = [b"d", b"caf\xc3\xa9", b"raw\xff\xfe", b"new\nline", b"sp ace"]
    for directory in directories:
        add(ManifestEntry(directory, "dir", 0o2775, 1000, 1000, 0, mtime_ns=rng.randrange(10**18),
                          acl_default="user::rwx\ngroup::r-x\nother::---\n"))
    files: list[bytes] = []
    for index in range(count):
        directory = rng.choice(directories)
        name = bytes(rng.choice(b"abcz\x01\x80\xff") for _ in range(rng.randrange(1, 6)))
        path = directory + b"/" + name + b"%d" % index
        kind = rng.choice(["file"] * 6 + ["symlink", "fifo", "char", "block"])
        if kind == "file":
            size = rng.randrange(0, 10**6)
            add(ManifestEntry(
                path, "file", rng.choice([0o644, 0o4755, 0o600]), rng.randrange(3), 0, size,
                mtime_ns=rng.randrange(10**18), digest=f"{rng.getrandbits(128):032x}",
                xattrs={b"user.k": bytes([rng.randrange(256)])} if rng.random() < 0.2 else None,
                acl_access="user::rw-\nuser:7:r--\n" if rng.random() < 0.1 else None,
                sparse=rng.random() < 0.05,
            ))
            files.append(path)
        elif kind == "symlink":
            add(ManifestEntry(path, "symlink", 0o777, 0, 0, 0, linkname=b"../t\xfe" + name))
        elif kind in ("char", "block"):
            add(ManifestEntry(path, kind, 0o660, 0, 6, 0, devmajor=rng.randrange(300),
                              devminor=rng.randrange(300)))
        else:
            add(ManifestEntry(path, "fifo", 0o600, 0, 0, 0, mtime_ns=rng.randrange(10**18)))

    # Hard-link groups: links to a file, a link to a link, and a dangling link.
    for index in range(count // 20):
        target = entries[rng.choice(files)]
        link = b"d/link\xff%d" % index
        add(dataclasses.replace(target, path=link, type="hardlink", linkname=target.path,
                                xattrs=None, acl_access=None))
        if index % 3 == 0:
            add(dataclasses.replace(entries[link], path=link + b".2", linkname=link))
    add(ManifestEntry(b"d/dangling", "hardlink", 0o644, 0, 0, 0, linkname=b"missing"))
    return entries


def mutated(entries: dict[bytes, ManifestEntry], seed: int) -> dict[bytes, ManifestEntry]:
    """Return a copy of `entries` with removed, added and changed entries."""
    rng = random.Random(seed)
    result = dict(entries)
    paths = sorted(result)
    for path in rng.sample(paths, len(paths) // 10):
        entry = result[path]
        change = rng.randrange(8)
        if change == 0:
            del result[path]
        elif change == 1:
            result[path] = dataclasses.replace(entry, mode=entry.mode ^ 0o1)
        elif change == 2:
            result[path] = dataclasses.replace(entry, digest="0" * 32 if entry.digest else None)
        elif change == 3 and entry.mtime_ns is not None:
            result[path] = dataclasses.replace(entry, mtime_ns=entry.mtime_ns + rng.choice([1, 10**9]))
        elif change == 4:
            result[path] = dataclasses.replace(entry, type="file" if entry.type != "file" else "dir")
        elif change == 5 and entry.type != "hardlink":
            # Make the path a hard link to another file, which changes its group.
            other = result.get(rng.choice(paths))
            if other is not None and other.type == "file":
                result[path] = dataclasses.replace(other, path=path, type="hardlink",
                                                   linkname=other.path)
        elif change == 6:
            result[path] = dataclasses.replace(entry, xattrs={b"user.new": b"\x00"})
        else:
            result[path + b"\xffextra"] = dataclasses.replace(entry, path=path + b"\xffextra")
    return result


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_compare_equals_dictionary_compare(seed: int) -> None:
    source = generated_entries(seed)
    target = mutated(source, seed + 100)

    for aspects in ASPECT_SETS:
        expected = reference_compare(source, target, aspects)
        actual = compare_manifests(Manifest(source), Manifest(target), aspects)
        assert actual == expected
        assert compare_manifests(Manifest(target), Manifest(source), aspects) == \
            reference_compare(target, source, aspects)
    assert reference_compare(source, target, ALL_ASPECTS)  # the mutation changed something


def test_compare_equal_generated_trees() -> None:
    source = generated_entries(9)

    assert compare_manifests(Manifest(source), Manifest(dict(source)), ALL_ASPECTS) == []


def test_compare_over_many_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest_module, "TABLE_BATCH_ENTRIES", 7)
    source = generated_entries(5, count=300)
    target = mutated(source, 6)

    actual = compare_manifests(Manifest(source), Manifest(target), ALL_ASPECTS)

    assert actual == reference_compare(source, target, ALL_ASPECTS)


def test_table_orders_paths_as_sorted_bytes() -> None:
    entries = generated_entries(11)
    table = EntryTable(entries.values())

    assert list(table) == sorted(entries)
    assert [path for path, _ in table.items()] == sorted(entries)
    assert list(table.values()) == [entries[path] for path in sorted(entries)]
    assert len(table) == len(entries)


def test_table_values_match_entries() -> None:
    entries = generated_entries(7)
    table = EntryTable(entries.values())

    values = list(table.iter_values())

    assert [path for path, _ in values] == sorted(entries)
    for path, fields in values:
        assert ManifestEntry(path, *fields) == entries[path]


def test_table_lookup_and_replace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest_module, "TABLE_BATCH_ENTRIES", 3)
    table = EntryTable()
    first = ManifestEntry(b"a\xff", "file", 0o644, 0, 0, 1, xattrs={b"user.x": b"\xff"})
    table.add(first)
    for index in range(10):
        table.add(ManifestEntry(b"f%d" % index, "fifo", 0o600, 0, 0, 0))
    replacement = dataclasses.replace(first, size=2)
    table.add(replacement)

    assert table[b"a\xff"] == replacement
    assert b"f3" in table
    assert b"nope" not in table
    assert table.get(b"nope") is None
    with pytest.raises(KeyError):
        table[b"nope"]
    assert len(table) == 11
    table.flush()
    assert table[b"a\xff"] == replacement
    assert [entry.path for entry in table.iter_entries(hardlinks_only=True)] == []


def test_table_keeps_few_entries_in_python() -> None:
    tracemalloc.start()
    try:
        builder_table = EntryTable()
        for index in range(20_000):
            builder_table.add(ManifestEntry(b"dir/file-%06d" % index, "file", 0o644, 0, 0, 4096,
                                            mtime_ns=index, digest=f"{index:032x}"))
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert len(builder_table) == 20_000
    # The entries themselves are in SQLite's cache and file: at most one batch stays in
    # Python objects (about 500 bytes each).
    assert current < 2 * 1024 * 1024


def test_table_filled_in_one_thread_read_in_another() -> None:
    table = EntryTable()

    def fill() -> None:
        for index in range(5000):
            table.add(ManifestEntry(b"%05d" % index, "fifo", 0o600, 0, 0, 0))

    thread = threading.Thread(target=fill)
    thread.start()
    thread.join()

    assert len(table) == 5000
    assert next(iter(table)) == b"00000"


def test_manifest_equality_and_close() -> None:
    entries = generated_entries(3, count=50)
    one = Manifest(entries, stream_digest="1" * 32, bytes_fed=5)
    two = Manifest(dict(entries), stream_digest="1" * 32, bytes_fed=5)
    other = Manifest(mutated(entries, 4), stream_digest="1" * 32, bytes_fed=5)

    assert one == two
    assert one != other
    assert one != Manifest(entries, stream_digest="2" * 32, bytes_fed=5)
    one.close()


def test_json_chunks_round_trip() -> None:
    manifest = Manifest(generated_entries(21), stream_digest="a" * 32, bytes_fed=99)
    chunks = list(manifest.json_chunks(37))
    header = manifest.json_header(len(chunks))

    restored = Manifest.from_json_chunks(header, chunks)

    assert restored == manifest
    assert all(len(json.loads(chunk)) <= 37 for chunk in chunks)
    whole = json.loads(manifest.to_json())
    assert [item for chunk in chunks for item in json.loads(chunk)] == whole["entries"]
    assert json.loads(header)["entries"] is None


def test_json_chunks_match_whole_document() -> None:
    manifest = Manifest(generated_entries(22), stream_digest="a" * 32, bytes_fed=99)

    chunked = [item for chunk in manifest.json_chunks(37) for item in json.loads(chunk)]

    assert chunked == json.loads(manifest.to_json())["entries"]


def test_chunked_header_alone_is_rejected() -> None:
    manifest = Manifest(generated_entries(22, count=20))
    header = manifest.json_header(1)

    with pytest.raises(ManifestError):
        Manifest.from_json(header)
    with pytest.raises(ManifestError, match="0 entry chunks found, 1 expected"):
        Manifest.from_json_chunks(header, [])


def test_json_chunks_reject_duplicate_path() -> None:
    manifest = Manifest(generated_entries(23, count=20))
    chunks = list(manifest.json_chunks(5))
    chunks.append(chunks[0])

    with pytest.raises(ManifestError, match="duplicate path"):
        Manifest.from_json_chunks(manifest.json_header(len(chunks)), chunks)


def test_from_json_accepts_unsorted_entries() -> None:
    manifest = Manifest(generated_entries(24, count=30))
    document = json.loads(manifest.to_json())
    document["entries"].reverse()

    assert Manifest.from_json(json.dumps(document)) == manifest
    document["entries"].append(document["entries"][3])
    with pytest.raises(ManifestError, match="duplicate path"):
        Manifest.from_json(json.dumps(document))


# Task database


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TaskStore]:
    store = TaskStore(tmp_path / "tasks.db")
    spec = TaskSpec(source_host="h1", target_host="h2",
                    volumes=(VolumeSpec(source="a", target="b"), VolumeSpec(source="c", target="d")))
    items = [TaskItem(task_id="0123456789ab", position=0, source="a", target="b"),
             TaskItem(task_id="0123456789ab", position=1, source="c", target="d")]
    store.create_task(Task(id="0123456789ab", spec=spec, items=items))
    yield store
    store.close()


def test_task_manifest_round_trip(store: TaskStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ddm.manifest_store.MANIFEST_CHUNK_ENTRIES", 50)
    manifest = Manifest(generated_entries(31), stream_digest="b" * 32, bytes_fed=7)

    save_task_manifest(store, "0123456789ab", 0, manifest)

    assert load_task_manifest(store, "0123456789ab", 0) == manifest
    assert load_task_manifest(store, "0123456789ab", 1) is None
    chunks = list(store.iter_manifest_chunks("0123456789ab", 0))
    assert len(chunks) == -(-len(manifest) // 50)


def test_task_manifest_replaced(store: TaskStore) -> None:
    first = Manifest(generated_entries(32, count=3000))
    second = Manifest(generated_entries(33, count=10))

    save_task_manifest(store, "0123456789ab", 1, first)
    save_task_manifest(store, "0123456789ab", 1, second)

    assert load_task_manifest(store, "0123456789ab", 1) == second
    assert len(list(store.iter_manifest_chunks("0123456789ab", 1))) == 1
    assert MANIFEST_CHUNK_ENTRIES >= len(second)


def test_task_manifest_whole_document_still_loads(store: TaskStore) -> None:
    manifest = Manifest(generated_entries(34, count=40))
    store.save_manifest("0123456789ab", 0, manifest.to_json().encode())

    assert load_task_manifest(store, "0123456789ab", 0) == manifest


def test_task_manifest_missing_chunk_rejected(store: TaskStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ddm.manifest_store.MANIFEST_CHUNK_ENTRIES", 10)
    save_task_manifest(store, "0123456789ab", 0, Manifest(generated_entries(35, count=40)))
    with store.transaction() as db:
        db.execute("DELETE FROM manifest_chunks WHERE chunk = 2")

    with pytest.raises(ManifestError, match="entry chunks found"):
        load_task_manifest(store, "0123456789ab", 0)


# Builder


def test_builder_member_check_sees_every_member() -> None:
    from tests.unit.test_manifest import archive, member

    data = archive([member("d", b"5"), member("d/a", content=b"x"),
                    member("d/l", b"2", linkname="a")])
    seen: list[bytes] = []
    builder = ManifestBuilder(member_check=lambda entry: seen.append(entry.path))
    builder.feed(data)
    manifest = builder.close()

    assert seen == [b"d/", b"d/a", b"d/l"]  # raw member paths, before normalizing
    assert sorted(manifest.entries) == [b"d", b"d/a", b"d/l"]


def test_builder_member_check_error_passes_through() -> None:
    from tests.unit.test_manifest import archive, member

    class Rejected(Exception):
        pass

    def reject(entry: object) -> None:
        raise Rejected("no")

    builder = ManifestBuilder(member_check=reject)
    with pytest.raises(Rejected):
        builder.feed(archive([member("a", content=b"x")]))


def test_equal_entries_give_equal_records() -> None:
    """compare_manifests() skips equal records undecoded, so equal entries must store equally."""
    digest = "ab" * 32
    shared = ManifestEntry(b"f", "file", 0o644, 0, 0, 1, mtime_ns=5, digest=digest, sha256=digest,
                           xattrs={b"user.b": b"2", b"user.a": b"1"})
    separate = ManifestEntry(b"f", "file", 0o644, 0, 0, 1, mtime_ns=5, digest="".join(["ab"] * 32),
                             sha256="".join(["a", "b"] * 32),
                             xattrs={b"user.a": b"1", b"user.b": b"2"})
    first, second = EntryTable([shared]), EntryTable([separate])

    assert shared == separate
    assert list(first.iter_records()) == list(second.iter_records())
    assert first[b"f"] == shared
