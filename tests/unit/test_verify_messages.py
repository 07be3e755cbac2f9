"""The error line of a migration's failed verify: the count, the values and their limits."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ddm.errors import VerificationFailed
from ddm.manifest import EntryTable, Manifest, ManifestEntry
from ddm.task import TaskItem, VerifyMode
from ddmsyncer import direct, incremental, staged, volumes
from ddmsyncer.incremental import Entry

ITEM = TaskItem(task_id="t1", position=0, source="src", target="dst")
HINT = ("; the target was rolled back; stop whatever writes the source volume outside "
        "containers and retry, and check the target host's disk if the same difference comes "
        "back")
MTIME_NS = 1_600_000_000 * 1_000_000_000


def manifest(*entries: ManifestEntry) -> Manifest:
    table = EntryTable()
    table.add(ManifestEntry(path=b".", type="dir", mode=0o755, uid=0, gid=0, size=0,
                            mtime_ns=MTIME_NS))
    for entry in entries:
        table.add(entry)
    return Manifest(entries=table, hash_content=False)


def file_entry(path: bytes, size: int, **fields: Any) -> ManifestEntry:
    values: dict[str, Any] = dict(path=path, type="file", mode=0o644, uid=0, gid=0, size=size,
                                  mtime_ns=MTIME_NS)
    values.update(fields)
    return ManifestEntry(**values)


def scan_entry(path: bytes, **fields: Any) -> Entry:
    values: dict[str, Any] = dict(path=path, type="file", mode=0o644, uid=0, gid=0, size=5,
                                  mtime_ns=MTIME_NS, link=None, rdev=0, inode=1, nlink=1,
                                  digest="d" * 64)
    values.update(fields)
    return Entry(**values)


def failure_of(source: Manifest, target: Manifest) -> str:
    with pytest.raises(VerificationFailed) as failure:
        volumes.verify_volume(source, target, ITEM, VerifyMode.QUICK)
    return str(failure.value)


def test_one_difference_says_one_place() -> None:
    message = failure_of(manifest(file_entry(b"a.txt", 4)), manifest(file_entry(b"a.txt", 5)))

    assert message == ("volume 'dst' differs from source 'src' in 1 place: "
                       "a.txt: size (source 4, target 5)" + HINT)


def test_staging_copy_names_target_first() -> None:
    source, target = manifest(file_entry(b"a.txt", 4)), manifest(file_entry(b"a.txt", 5))

    with pytest.raises(VerificationFailed) as failure:
        staged.check_manifests(source, target, ITEM, ("size",), "ddm-staging-t1-0")

    assert str(failure.value) == ("volume 'dst' (copied into staging volume 'ddm-staging-t1-0') "
                                  "differs from source 'src' in 1 place: "
                                  "a.txt: size (source 4, target 5)" + HINT)


def test_two_differences_say_places() -> None:
    source = manifest(file_entry(b"a.txt", 4, mode=0o600))
    target = manifest(file_entry(b"a.txt", 4, mode=0o644, uid=1000))

    assert failure_of(source, target) == (
        "volume 'dst' differs from source 'src' in 2 places: "
        "a.txt: mode (source 0600, target 0644); a.txt: owner (source 0:0, target 1000:0)"
        + HINT)


def test_missing_path_shows_presence() -> None:
    message = failure_of(manifest(file_entry(b"gone", 1)), manifest())

    assert "in 1 place: gone: presence (source file, target missing);" in message


def test_differences_beyond_limit_counted() -> None:
    count = volumes.MAX_REPORTED_DIFFERENCES + 3
    names = [f"f{index:02d}".encode() for index in range(count)]

    message = failure_of(manifest(*(file_entry(name, 1) for name in names)),
                         manifest(*(file_entry(name, 2) for name in names)))

    assert f"in {count} places: f00: size (source 1, target 2); " in message
    assert message.count(": size (source 1, target 2)") == volumes.MAX_REPORTED_DIFFERENCES
    assert f"f19: size (source 1, target 2) and 3 more{HINT}" in message
    assert "f20" not in message


def test_long_value_cut_to_limit() -> None:
    long_text = b"x" * 500
    source = manifest(ManifestEntry(path=b"link", type="symlink", mode=0o777, uid=0, gid=0,
                                    size=0, linkname=long_text, mtime_ns=MTIME_NS))
    target = manifest(ManifestEntry(path=b"link", type="symlink", mode=0o777, uid=0, gid=0,
                                    size=0, linkname=b"short", mtime_ns=MTIME_NS))

    message = failure_of(source, target)

    cut = "x" * 77 + "..."
    assert f"link: link (source {cut}, target short);" in message


def test_staged_check_uses_same_message() -> None:
    with pytest.raises(VerificationFailed) as failure:
        staged.check_manifests(manifest(file_entry(b"a.txt", 4)), manifest(file_entry(b"a.txt", 5)),
                               ITEM, volumes.QUICK_ASPECTS)

    assert str(failure.value) == ("volume 'dst' differs from source 'src' in 1 place: "
                                  "a.txt: size (source 4, target 5)" + HINT)


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, dict[bytes, Entry]]]:
    """The source and target scans that incremental.scan_both() returns to direct verify."""
    found: dict[str, dict[bytes, Entry]] = {"source": {}, "target": {}}

    def scan_both(*args: object, **options: object) -> tuple[dict, dict, int]:
        return found["source"], found["target"], 0

    monkeypatch.setattr(incremental, "scan_both", scan_both)
    yield found


class _Runner:
    source = target = None


def test_direct_route_one_place_with_values(scans: dict[str, dict[bytes, Entry]]) -> None:
    scans["source"][b"a"] = scan_entry(b"a", size=5)
    scans["target"][b"a"] = scan_entry(b"a", size=6)

    with pytest.raises(VerificationFailed) as failure:
        direct.verify_staging(_Runner(), ITEM, "/src", "/staging", VerifyMode.QUICK)

    assert str(failure.value) == ("volume 'dst' differs from source 'src' in 1 place: "
                                  "a: size (source 5, target 6)" + HINT)


def test_direct_route_counts_beyond_limit(scans: dict[str, dict[bytes, Entry]]) -> None:
    count = direct.MAX_REPORTED_DIFFERENCES + 2
    for index in range(count):
        path = f"f{index:02d}".encode()
        scans["source"][path] = scan_entry(path, inode=index, mode=0o600)
        scans["target"][path] = scan_entry(path, inode=index, mode=0o640)

    with pytest.raises(VerificationFailed) as failure:
        direct.verify_staging(_Runner(), ITEM, "/src", "/staging", VerifyMode.QUICK)

    message = str(failure.value)
    assert f"in {count} places: f00: mode (source 0600, target 0640); " in message
    assert f"f19: mode (source 0600, target 0640) and 2 more{HINT}" in message


def test_direct_route_values_per_aspect(scans: dict[str, dict[bytes, Entry]]) -> None:
    scans["source"].update({
        b"dev": scan_entry(b"dev", type="char", size=0, rdev=(1 << 8) | 3, digest=None),
        b"gone": scan_entry(b"gone", inode=2),
        b"link": scan_entry(b"link", type="symlink", link=b"a", inode=3, digest=None),
        b"time": scan_entry(b"time", inode=4),
    })
    scans["target"].update({
        b"dev": scan_entry(b"dev", type="char", size=0, rdev=(1 << 8) | 5, digest=None),
        b"link": scan_entry(b"link", type="symlink", link=b"b", inode=3, digest=None),
        b"time": scan_entry(b"time", inode=4, mtime_ns=MTIME_NS + 1, uid=7),
    })

    with pytest.raises(VerificationFailed) as failure:
        direct.verify_staging(_Runner(), ITEM, "/src", "/staging", VerifyMode.QUICK)

    assert str(failure.value) == (
        "volume 'dst' differs from source 'src' in 5 places: "
        "dev: device (source 1:3, target 1:5); gone: missing on target; "
        "link: symlink text (source a, target b); time: uid (source 0, target 7); "
        "time: mtime_ns (source 2020-09-13T12:26:40.000000000Z, "
        "target 2020-09-13T12:26:40.000000001Z)" + HINT)


def test_incremental_verify_shows_values() -> None:
    source = {b"a.txt": scan_entry(b"a.txt", digest="a" * 64)}
    target = {b"a.txt": scan_entry(b"a.txt", digest="b" * 64, mtime_ns=MTIME_NS + 10**9)}

    with pytest.raises(VerificationFailed) as failure:
        incremental._raise_on_differences(source, target, ITEM, content=True)

    assert str(failure.value) == (
        "volume 'dst' differs from source 'src' after the incremental update in 2 places: "
        "a.txt: mtime (source 2020-09-13T12:26:40Z, target 2020-09-13T12:26:41Z); "
        f"a.txt: content (source {'a' * 64}, target {'b' * 64}); the target was restored "
        "from its backup; run 'ddmverify' to inspect")
