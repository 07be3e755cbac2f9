"""plan_update: which entries an incremental update sends and deletes."""

from __future__ import annotations

from ddmdriver.ssh import exit_detail
from ddmsyncer import incremental
from ddmsyncer.incremental import (
    Entry,
    plan_update,
)
from ddmsyncer.scanentry import entry_record, trusted_record_key

SECOND = 1_000_000_000


def entry(path: bytes, kind: str = "file", *, size: int = 10, mtime: int = 100 * SECOND,
          digest: str | None = "aa", mode: int = 0o644, inode: int = 0, nlink: int = 1) -> Entry:
    return Entry(path, kind, mode, 0, 0, size if kind == "file" else 0, mtime, None, 0, inode,
                 nlink, digest if kind == "file" else None)


def tree(*entries: Entry) -> dict[bytes, Entry]:
    return {item.path: item for item in (entry(b".", "dir"), *entries)}


def test_plan_identical_trees_send_nothing():
    source = tree(entry(b"d", "dir"), entry(b"d/a"))
    plan = plan_update(source, dict(source))
    assert plan.send == []
    assert plan.delete == []


def test_plan_changed_file_sends_it_and_parents():
    source = tree(entry(b"d", "dir"), entry(b"d/a", digest="bb"), entry(b"b"))
    target = tree(entry(b"d", "dir"), entry(b"d/a"), entry(b"b"))
    plan = plan_update(source, target)
    assert plan.send == [b".", b"d", b"d/a"]
    assert plan.send_bytes == 10
    assert plan.delete == []


def test_plan_mtime_compared_in_whole_seconds():
    source = tree(entry(b"a", mtime=100 * SECOND + 123))
    target = tree(entry(b"a", mtime=100 * SECOND))
    assert plan_update(source, target).send == []


def test_plan_removed_directory_deleted_once():
    source = tree()
    target = tree(entry(b"old", "dir"), entry(b"old/x"), entry(b"old/y"))
    plan = plan_update(source, target)
    assert plan.delete == [b"old"]
    assert plan.send == [b"."]
    assert plan.removed_entries == 3  # what the update reports as removed


def test_plan_type_change_not_removed():
    source = tree(entry(b"x"), entry(b"kept"))
    target = tree(entry(b"x", "dir"), entry(b"x/inner"), entry(b"kept"), entry(b"gone"))
    plan = plan_update(source, target)
    assert plan.delete == [b"gone", b"x"]
    assert plan.removed_entries == 2  # x/inner and gone; x is replaced, not removed


def test_plan_type_change_deletes_first():
    source = tree(entry(b"x"))
    target = tree(entry(b"x", "dir"), entry(b"x/inner"))
    plan = plan_update(source, target)
    assert plan.delete == [b"x"]
    assert b"x" in plan.send


def test_plan_hard_link_sends_every_name():
    source = tree(entry(b"a", digest="bb", inode=7, nlink=2), entry(b"b", digest="bb", inode=7,
                                                                    nlink=2))
    target = tree(entry(b"a", inode=3, nlink=2), entry(b"b", digest="bb", inode=3, nlink=2))
    assert plan_update(source, target).send == [b".", b"a", b"b"]


def test_rescan_trusts_only_settled_records():
    racy = Entry(b"racy", "file", 0o644, 0, 0, 10, 100 * SECOND, None, 0, 4, 1, "aa", 0,
                 99 * SECOND)
    settled = Entry(b"same", "file", 0o644, 0, 0, 10, 100 * SECOND, None, 0, 1, 1, "aa", 5,
                    90 * SECOND)
    unhashed = entry(b"unhashed", inode=3, digest=None)
    directory = entry(b"d", "dir", inode=6)
    scan_started_ns = 100 * SECOND  # whole-second ctimes, so the margin is 2 s

    def key(item: Entry, need_digest: bool = True) -> bytes | None:
        return trusted_record_key(entry_record(item), scan_started_ns, need_digest=need_digest)

    assert key(settled) == b"5 1 10 %d %d" % (100 * SECOND, 90 * SECOND)
    assert key(racy) is None
    assert key(unhashed) is None
    assert key(unhashed, need_digest=False) == b"0 3 10 %d 0" % (100 * SECOND)
    assert key(directory) == b"0 6 0 %d 0" % (100 * SECOND)


def test_plan_counts_hard_linked_data_once():
    names = (b"h1f", b"h2f", b"h3f")
    source = tree(*(entry(name, size=1000, digest="bb", inode=7, nlink=3) for name in names),
                  entry(b"single", size=5, digest="bb", inode=8))
    target = tree(*(entry(name, size=1000, inode=9, nlink=3) for name in names),
                  entry(b"single", size=5, inode=10))

    plan = plan_update(source, target)

    assert plan.send == [b".", b"h1f", b"h2f", b"h3f", b"single"]
    assert plan.send_bytes == 1005
    assert plan.written_entries == 4


def test_plan_counts_added_link_names_once():
    source = tree(entry(b"h1f", size=1000, inode=7, nlink=2), entry(b"h4f", size=1000, inode=7,
                                                                     nlink=2))
    target = tree(entry(b"h1f", size=1000, inode=9))

    plan = plan_update(source, target)

    assert plan.send == [b".", b"h1f", b"h4f"]
    assert plan.send_bytes == 1000
    assert plan.written_entries == 2


def test_exit_detail_leaves_out_empty_parts() -> None:
    assert exit_detail(-1, "") == ("exit status -1 (none received: the command was killed or "
                                   "the SSH connection closed)")
    assert exit_detail((0, 2), " tar:  bad \n") == "exit statuses 0, 2: tar: bad"
    assert exit_detail(2, "") == "exit status 2"


def test_plan_sends_new_link_between_equal_files():
    """`ln -f a b` on two equal files changes no comparison key, only the links."""
    source = tree(entry(b"a", inode=7, nlink=2), entry(b"b", inode=7, nlink=2))
    target = tree(entry(b"a", inode=3), entry(b"b", inode=4))

    assert plan_update(source, target).send == [b".", b"a", b"b"]


def test_plan_sends_names_leaving_a_link():
    source = tree(entry(b"a", inode=3), entry(b"b", inode=4))
    target = tree(entry(b"a", inode=7, nlink=2), entry(b"b", inode=7, nlink=2))

    assert plan_update(source, target).send == [b".", b"a", b"b"]


def test_plan_ignores_links_outside_volume():
    # nlink 2 with one name in the volume: the other link is outside, and tar cannot copy it.
    source = tree(entry(b"a", inode=7, nlink=2))
    target = tree(entry(b"a", inode=3))

    assert plan_update(source, target).send == []


def test_verify_reports_changed_links():
    source = tree(entry(b"a", inode=7, nlink=2), entry(b"b", inode=7, nlink=2))
    target = tree(entry(b"a", inode=3), entry(b"b", inode=4))

    differences = list(incremental._differences(source, target))

    assert differences == [(b"a", "hard links"), (b"b", "hard links")]
