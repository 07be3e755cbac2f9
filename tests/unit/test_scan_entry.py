"""The compact scan entry keeps every field and gives the same update decisions."""

import pytest

from ddmsyncer.incremental import Scan, plan_update
from ddmsyncer.scanentry import (
    Entry,
    entry_from_record,
    entry_record,
    record_comparison,
    record_from_fields,
)

FIELDS = dict(path=b"d/\xff-not-utf8", type="file", mode=0o104755, uid=70000, gid=2**32 - 2,
              size=2**40 + 3, mtime_ns=-1_500_000_000_123, link=None, rdev=0,
              inode=2**64 - 1, nlink=3, digest="ab" * 32, dev=2**63 + 5,
              ctime_ns=1_764_900_000_123_456_789, xattrs="cd" * 32)


def test_entry_keeps_every_field():
    entry = Entry(**FIELDS)

    for name, value in FIELDS.items():
        assert getattr(entry, name) == value, name


def test_entry_positional_order_matches_scan_line():
    entry = Entry(*FIELDS.values())

    assert entry == Entry(**FIELDS)
    assert hash(entry) == hash(Entry(**FIELDS))


def test_entry_keys():
    entry = Entry(**FIELDS)

    assert entry.file_key() == (2**63 + 5, 2**64 - 1, 2**40 + 3, -1_500_000_000_123,
                                1_764_900_000_123_456_789)
    assert entry.key() == ("file", 0o104755, 70000, 2**32 - 2, 2**40 + 3, -1501, None, 0,
                           "ab" * 32, "cd" * 32)
    assert entry.key(with_mtime=False)[5] is None


def test_entry_is_immutable():
    entry = Entry(**FIELDS)

    with pytest.raises(AttributeError):
        entry.digest = None
    with pytest.raises(AttributeError):
        entry.size = 1


def test_entry_with_digest_copies_other_fields():
    entry = Entry(**FIELDS)
    copy = entry.with_digest(None)

    assert copy.digest is None
    assert entry.digest == "ab" * 32
    assert copy != entry
    assert copy.with_digest("ab" * 32) == entry
    assert copy.file_key() == entry.file_key()


def test_entry_rejects_negative_size():
    with pytest.raises(Exception):
        Entry(**{**FIELDS, "size": -1})


def test_entry_repr_names_fields():
    text = repr(Entry(**FIELDS))

    assert text.startswith("Entry(path=b'd/\\xff-not-utf8', type='file'")
    assert "inode=18446744073709551615" in text


def make(path, kind="file", *, size=4, mtime=10, inode=1, nlink=1, digest="0" * 64,
         link=None, mode=0o644):
    return Entry(path, kind, mode, 0, 0, size if kind == "file" else 0, mtime * 10**9 + 7,
                 link, 0, inode, nlink, digest if kind == "file" else None)


def scan(*entries):
    result = Scan()
    for entry in entries:
        result[entry.path] = entry
    return result


def test_plan_decisions_on_crafted_scans():
    source = scan(make(b".", "dir", inode=1), make(b"same", inode=2),
                  make(b"changed", inode=3, digest="1" * 64),
                  make(b"added\xff", inode=4),
                  make(b"kind", "dir", inode=5),
                  make(b"link-a", inode=6, nlink=2), make(b"link-b", inode=6, nlink=2),
                  make(b"sym", "symlink", inode=7, link=b"same"),
                  make(b"mode", inode=8, mode=0o600))
    target = scan(make(b".", "dir", inode=1), make(b"same", inode=12),
                  make(b"changed", inode=13), make(b"removed", inode=14),
                  make(b"kind", inode=15),
                  make(b"link-a", inode=16, nlink=1, digest="2" * 64),
                  make(b"link-b", inode=17, nlink=1),
                  make(b"sym", "symlink", inode=18, link=b"other"),
                  make(b"mode", inode=19))

    plan = plan_update(source, target)

    assert plan.delete == [b"kind", b"removed"]
    assert sorted(plan.send) == sorted([b".", b"added\xff", b"changed", b"kind", b"link-a",
                                        b"link-b", b"mode", b"sym"])
    assert plan.send[0] == b"."
    assert plan.send_bytes == 4 * 4


@pytest.mark.parametrize("digest", [None, "ab" * 32, "AB" * 32, "abc", "zz" * 32, "a b" * 21 + "c"])
def test_entry_digest_round_trips(digest):
    entry = Entry(**{**FIELDS, "digest": digest})

    assert entry.digest == digest
    assert entry == Entry(**{**FIELDS, "digest": digest})
    assert entry.with_digest("cd" * 32).digest == "cd" * 32
    assert entry.with_digest("cd" * 32).with_digest(digest) == entry


def test_entries_with_other_digests_differ():
    entry = Entry(**FIELDS)

    assert entry != entry.with_digest("ac" * 32)
    assert entry != entry.with_digest(None)
    assert entry.key() != entry.with_digest("AB" * 32).key()


@pytest.mark.parametrize("digest", ["ab" * 32, "AB" * 32, "sha256-pieces-16777216:" + "ab" * 32,
                                    None])
def test_record_from_fields_matches_entry(digest):
    fields = {**FIELDS, "digest": digest}
    values = list(fields.values())

    record = record_from_fields(*values[1:])

    assert record == entry_record(Entry(*values))
    assert entry_from_record(fields["path"], record) == Entry(*values)


@pytest.mark.parametrize("changes", [
    {}, {"digest": "AB" * 32}, {"digest": None}, {"digest": "abc"}, {"digest": "cd" * 32},
    {"mtime_ns": FIELDS["mtime_ns"] + 1}, {"mtime_ns": FIELDS["mtime_ns"] + 2_000_000_000},
    {"inode": 7, "dev": 8, "ctime_ns": 9, "nlink": 1}, {"mode": 0o100644}, {"xattrs": None},
    {"link": b"target"}, {"type": "dir"},
], ids=lambda changes: ",".join(changes) or "same")
def test_record_comparison_matches_entry_key(changes):
    left = Entry(**FIELDS)
    right = Entry(**{**FIELDS, **changes})

    left_key, kind, nlink, inode = record_comparison(entry_record(left))
    right_key = record_comparison(entry_record(right))[0]

    assert (left_key == right_key) == (left.key() == right.key())
    assert (kind, nlink, inode) == (left.type, left.nlink, left.inode)


def test_plan_same_for_scans_and_dicts():
    source = {entry.path: entry for entry in (
        Entry(b".", "dir", 0o755, 0, 0, 0, 10**9, None, 0, 1, 2, None),
        Entry(b"same", "file", 0o644, 0, 0, 3, 10**9, None, 0, 2, 1, "ab" * 32),
        Entry(b"changed", "file", 0o644, 0, 0, 3, 10**9, None, 0, 3, 1, "cd" * 32),
        Entry(b"kind", "file", 0o644, 0, 0, 3, 10**9, None, 0, 4, 1, "ab" * 32),
    )}
    target = {entry.path: entry for entry in (
        Entry(b".", "dir", 0o755, 0, 0, 0, 10**9, None, 0, 9, 2, None),
        Entry(b"same", "file", 0o644, 0, 0, 3, 10**9 + 5, None, 0, 8, 1, "ab" * 32),
        Entry(b"changed", "file", 0o644, 0, 0, 3, 10**9, None, 0, 7, 1, "ef" * 32),
        Entry(b"kind", "dir", 0o755, 0, 0, 0, 10**9, None, 0, 6, 2, None),
        Entry(b"extra", "file", 0o644, 0, 0, 3, 10**9, None, 0, 5, 1, "ab" * 32),
    )}

    from_dicts = plan_update(source, target)
    from_scans = plan_update(Scan(source), Scan(target))

    assert (from_scans.send, from_scans.delete) == (from_dicts.send, from_dicts.delete)
    assert from_scans.send == [b".", b"changed", b"kind"]
    assert from_scans.delete == [b"extra", b"kind"]
