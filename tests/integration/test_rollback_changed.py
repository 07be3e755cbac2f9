"""Lab tests of `ddmctl rollback` of a succeeded task: changed, replaced and missing targets.

A file rewritten in place with the same size and its old mtime looks unchanged to a check of
metadata only, so the rollback must compare content whenever the task stored digests.
"""

from __future__ import annotations

import sys
import time

import pytest

from ddm.errors import ExitStatus
from ddmsyncer import hashcache
from tests.integration.operator_support import ddmctl, volume_names
from tests.integration.test_incremental import cache_rows, lab_url
from tests.integration.test_migrate_volumes import RICH_TREE
from tests.lab import LabHost
from tests.lab.isolation import IsolatedEnv
from tests.lab.resources import LabResources
from tests.lab.tree import File, RandomFile, snapshot_volume_tree, write_volume_tree

ORIGINAL = b"original content\n"
REWRITTEN = b"changed content!\n"

# Run in the host's namespaces: overwrite a file in place with bytes of the same length,
# then put its mtime (nanoseconds) back, as a careless backup restore or `touch -r` does.
REWRITE_KEEPING_MTIME = """
import os, sys
path, data = sys.argv[1], sys.argv[2].encode()
before = os.stat(path)
assert len(data) == before.st_size, (len(data), before.st_size)
with open(path, "r+b") as stream:
    stream.write(data)
os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
"""


def rewrite_keeping_mtime(host: LabHost, volume: str, name: str, data: bytes) -> None:
    path = f"{host.volume_mountpoint(volume)}/{name}"
    host.run([sys.executable, "-I", "-c", REWRITE_KEEPING_MTIME, path, data.decode()])


def read_file(host: LabHost, volume: str, name: str) -> bytes:
    path = f"{host.volume_mountpoint(volume)}/{name}"
    return host.run(["cat", path], text=False).stdout


def source_volume(h1: LabHost, h2: LabHost, resources: LabResources,
                  tree: dict[str, object]) -> str:
    """Create a source volume with `tree` on h1 and register its copy on h2 for removal."""
    source = resources.create_volume(h1)
    resources.add_volume(h2, source)
    write_volume_tree(h1, source, tree)
    return source


def migrate(source: str, *options: str) -> str:
    outcome = ddmctl("migrate", "--from", "h1", "--to", "h2", "--volume", source, "--yes",
                     "--json", *options)
    assert outcome.status == 0, outcome.stderr
    return outcome.json()["id"]


@pytest.mark.parametrize("data_path", ["engine", "host"])
def test_rollback_keeps_same_size_rewrite(h1: LabHost, h2: LabHost, isolated_env: IsolatedEnv,
                                          resources: LabResources, data_path: str) -> None:
    source = source_volume(h1, h2, resources, {"note.txt": File(ORIGINAL),
                                               "dir/data.bin": RandomFile(64 * 1024, seed=3)})
    source_before = snapshot_volume_tree(h1, source)
    task_id = migrate(source, "--verify", "full", "--data-path", data_path)
    target_before = snapshot_volume_tree(h2, source)

    rewrite_keeping_mtime(h2, source, "note.txt", REWRITTEN)
    target_after = snapshot_volume_tree(h2, source)
    assert target_after[b"note.txt"].mtime_ns == target_before[b"note.txt"].mtime_ns
    assert target_after[b"note.txt"].size == target_before[b"note.txt"].size
    rejected = ddmctl("rollback", task_id)

    assert rejected.status == ExitStatus.CONFLICT, rejected.stderr
    assert "note.txt: content), with content and metadata compared" in rejected.stderr
    assert source in volume_names(h2)
    assert read_file(h2, source, "note.txt") == REWRITTEN
    assert snapshot_volume_tree(h2, source) == target_after
    assert snapshot_volume_tree(h1, source) == source_before

    forced = ddmctl("rollback", task_id, "--force")

    assert forced.status == 0, forced.stderr
    assert source not in volume_names(h2)
    assert snapshot_volume_tree(h1, source) == source_before


def test_rollback_quick_task_catches_mode_change(h1: LabHost, h2: LabHost,
                                                 isolated_env: IsolatedEnv,
                                                 resources: LabResources) -> None:
    source = source_volume(h1, h2, resources, {"note.txt": File(ORIGINAL, mode=0o644)})
    source_before = snapshot_volume_tree(h1, source)
    task_id = migrate(source, "--verify", "quick")

    h2.run(["chmod", "0600", f"{h2.volume_mountpoint(source)}/note.txt"])
    rejected = ddmctl("rollback", task_id)

    assert rejected.status == ExitStatus.CONFLICT, rejected.stderr
    assert "note.txt: mode), with metadata only compared" in rejected.stderr
    assert source in volume_names(h2)
    assert read_file(h2, source, "note.txt") == ORIGINAL
    assert snapshot_volume_tree(h1, source) == source_before


@pytest.mark.parametrize("data_path", ["engine", "host"])
def test_rollback_unchanged_target_is_removed(h1: LabHost, h2: LabHost,
                                              isolated_env: IsolatedEnv,
                                              resources: LabResources, data_path: str) -> None:
    # Hard links, symlinks, a FIFO, odd owners and modes must compare equal after the copy,
    # or every rollback of such a volume would be rejected.
    source = source_volume(h1, h2, resources, RICH_TREE)
    source_before = snapshot_volume_tree(h1, source)
    task_id = migrate(source, "--verify", "full", "--data-path", data_path)

    rolled_back = ddmctl("rollback", task_id)

    assert rolled_back.status == 0, rolled_back.stderr
    assert source not in volume_names(h2)
    assert snapshot_volume_tree(h1, source) == source_before


def test_rollback_keeps_volume_replaced_by_later_task(h1: LabHost, h2: LabHost,
                                                      isolated_env: IsolatedEnv,
                                                      resources: LabResources) -> None:
    source = source_volume(h1, h2, resources, {"note.txt": File(ORIGINAL)})
    first = migrate(source)
    # The Engine API gives a volume's CreatedAt in whole seconds, so the second task must
    # create its volume in a later second to give it another CreatedAt.
    time.sleep(1.1)
    migrate(source, "--force")
    replaced = snapshot_volume_tree(h2, source)

    rejected = ddmctl("rollback", first)

    assert rejected.status == ExitStatus.CONFLICT, rejected.stderr
    assert "was replaced, or its top directory changed" in rejected.stderr
    assert source in volume_names(h2)
    assert snapshot_volume_tree(h2, source) == replaced


def test_second_rollback_checks_volume_left_in_use(h1: LabHost, h2: LabHost,
                                                   isolated_env: IsolatedEnv,
                                                   resources: LabResources) -> None:
    sources = [source_volume(h1, h2, resources, {"note.txt": File(ORIGINAL)})
               for _ in range(2)]
    outcome = ddmctl("migrate", "--from", "h1", "--to", "h2", "--volume", sources[0],
                     "--volume", sources[1], "--yes", "--json")
    assert outcome.status == 0, outcome.stderr
    task_id = outcome.json()["id"]
    holder = resources.create_container(h2, volumes={sources[1]: "/data"})

    stopped = ddmctl("rollback", task_id)
    write_volume_tree(h2, sources[1], {"new.txt": File(b"written after the first rollback\n")})
    h2.docker("rm", "--force", holder)
    again = ddmctl("rollback", task_id, "--json")

    assert stopped.status != 0
    assert sources[0] not in volume_names(h2)
    assert again.status == ExitStatus.CONFLICT, again.stderr
    assert "changed since task" in again.stderr
    report = [volume["rollback"]["outcome"] for volume in again.json()["volumes"]]
    assert report == ["removed", "kept"]
    assert read_file(h2, sources[1], "new.txt") == b"written after the first rollback\n"


def test_rollback_names_every_changed_volume(h1: LabHost, h2: LabHost,
                                             isolated_env: IsolatedEnv,
                                             resources: LabResources) -> None:
    sources = [source_volume(h1, h2, resources, {"note.txt": File(ORIGINAL, mode=0o644)})
               for _ in range(3)]
    volume_options = [option for source in sources for option in ("--volume", source)]
    outcome = ddmctl("migrate", "--from", "h1", "--to", "h2", *volume_options, "--yes",
                     "--json")
    assert outcome.status == 0, outcome.stderr
    task_id = outcome.json()["id"]
    for source in (sources[0], sources[2]):
        h2.run(["chmod", "0600", f"{h2.volume_mountpoint(source)}/note.txt"])

    rejected = ddmctl("rollback", task_id, "--json")
    text = ddmctl("rollback", task_id)

    assert rejected.status == ExitStatus.CONFLICT, rejected.stderr
    assert f"2 target volumes on h2 changed since task {task_id}" in rejected.stderr
    assert f"{sources[0]!r} and {sources[2]!r}" in rejected.stderr
    assert len(rejected.stderr.splitlines()) == 1
    report = {volume["source"]: volume["rollback"] for volume in rejected.json()["volumes"]}
    assert report[sources[0]]["outcome"] == "kept"
    assert "note.txt: mode), with content and metadata compared" in report[sources[0]]["reason"]
    assert report[sources[1]]["outcome"] == "remaining"
    assert "removed nothing" in report[sources[1]]["reason"]
    assert report[sources[2]]["outcome"] == "kept"
    assert text.status == ExitStatus.CONFLICT, text.stderr
    assert [line.split("\t")[2] for line in text.stdout.splitlines()] == ["kept", "remaining",
                                                                          "kept"]
    assert set(sources) <= set(volume_names(h2))


def test_rollback_reports_volume_already_gone(h1: LabHost, h2: LabHost,
                                              isolated_env: IsolatedEnv,
                                              resources: LabResources) -> None:
    sources = [source_volume(h1, h2, resources, {"note.txt": File(ORIGINAL)})
               for _ in range(2)]
    source_before = snapshot_volume_tree(h1, sources[0])
    volume_options = [option for source in sources for option in ("--volume", source)]
    first = ddmctl("migrate", "--from", "h1", "--to", "h2", *volume_options, "--yes", "--json")
    second = ddmctl("migrate", "--from", "h1", "--to", "h2", *volume_options, "--force",
                    "--yes", "--json")
    assert first.status == 0, first.stderr
    assert second.status == 0, second.stderr
    h2.docker("volume", "rm", sources[0])

    # The second task's rollback finds the first volume removed by hand, and the first
    # task's rollback finds both removed by the second task's rollback.
    as_json = ddmctl("rollback", second.json()["id"], "--json")
    text = ddmctl("rollback", first.json()["id"])

    assert as_json.status == 0, as_json.stderr
    report = [volume["rollback"] for volume in as_json.json()["volumes"]]
    assert report[0] == {"outcome": "absent", "reason": "the volume no longer existed, so the "
                                                        "rollback had nothing to remove"}
    assert report[1] == {"outcome": "removed", "reason": None}
    assert text.status == 0, text.stderr
    assert text.stdout.splitlines() == [
        f"{source}\t{source}\tabsent\tthe volume no longer existed, so the rollback had "
        "nothing to remove" for source in sources]
    assert not set(sources) & set(volume_names(h2))
    assert snapshot_volume_tree(h1, sources[0]) == source_before


def test_rollback_keeps_migration_finish_time(h1: LabHost, h2: LabHost,
                                              isolated_env: IsolatedEnv,
                                              resources: LabResources) -> None:
    source = source_volume(h1, h2, resources, {"note.txt": File(ORIGINAL)})
    task_id = migrate(source)
    migrated = ddmctl("status", task_id, "--json").json()
    # Times are stored in seconds as floats, so a second is plenty to tell them apart.
    time.sleep(1.1)

    rolled_back = ddmctl("rollback", task_id)
    status = ddmctl("status", task_id, "--json").json()
    listed = [task for task in ddmctl("list", "--json").json() if task["id"] == task_id]
    text = ddmctl("status", task_id).stdout.splitlines()

    assert rolled_back.status == 0, rolled_back.stderr
    assert migrated["rollback_finished_at"] is None
    assert status["state"] == "rolled_back"
    assert status["finished_at"] == migrated["finished_at"]
    assert status["duration_seconds"] == migrated["duration_seconds"]
    assert status["rollback_finished_at"] >= migrated["finished_at"] + 1
    assert len(listed) == 1
    assert listed[0]["finished_at"] == migrated["finished_at"]
    assert listed[0]["rollback_finished_at"] == status["rollback_finished_at"]
    assert len([line for line in text if line.startswith("rollback  ")]) == 1
    assert source not in volume_names(h2)


def migrate_volumes(sources: list[str]) -> str:
    volume_options = [option for source in sources for option in ("--volume", source)]
    outcome = ddmctl("migrate", "--from", "h1", "--to", "h2", *volume_options, "--yes",
                     "--json")
    assert outcome.status == 0, outcome.stderr
    return outcome.json()["id"]


ABSENT_REASON = "the volume no longer existed, so the rollback had nothing to remove"


def test_rejected_rollback_reports_absent_volume(h1: LabHost, h2: LabHost,
                                                 isolated_env: IsolatedEnv,
                                                 resources: LabResources) -> None:
    sources = [source_volume(h1, h2, resources, {"note.txt": File(ORIGINAL, mode=0o644)})
               for _ in range(2)]
    sources_before = [snapshot_volume_tree(h1, source) for source in sources]
    task_id = migrate_volumes(sources)
    h2.docker("volume", "rm", sources[0])
    h2.run(["chmod", "0600", f"{h2.volume_mountpoint(sources[1])}/note.txt"])
    changed_target = snapshot_volume_tree(h2, sources[1])

    as_json = ddmctl("rollback", task_id, "--json")
    text = ddmctl("rollback", task_id)

    assert as_json.status == ExitStatus.CONFLICT, as_json.stderr
    report = [volume["rollback"] for volume in as_json.json()["volumes"]]
    assert report[0] == {"outcome": "absent", "reason": ABSENT_REASON}
    assert report[1]["outcome"] == "kept"
    assert "note.txt: mode)" in report[1]["reason"]
    assert text.status == ExitStatus.CONFLICT, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == f"{sources[0]}\t{sources[0]}\tabsent\t{ABSENT_REASON}"
    assert lines[1].split("\t")[2] == "kept"
    assert sources[0] not in volume_names(h2)
    assert snapshot_volume_tree(h2, sources[1]) == changed_target
    assert [snapshot_volume_tree(h1, source) for source in sources] == sources_before


def test_status_shows_volume_found_absent(h1: LabHost, h2: LabHost,
                                          isolated_env: IsolatedEnv,
                                          resources: LabResources) -> None:
    sources = [source_volume(h1, h2, resources, {"note.txt": File(ORIGINAL)})
               for _ in range(2)]
    task_id = migrate_volumes(sources)
    h2.docker("volume", "rm", sources[0])

    rolled_back = ddmctl("rollback", task_id)
    as_json = ddmctl("status", task_id, "--json").json()
    listed = [task for task in ddmctl("list", "--json").json() if task["id"] == task_id]
    text = ddmctl("status", task_id).stdout.splitlines()

    assert rolled_back.status == 0, rolled_back.stderr
    assert [line.split("\t")[2] for line in rolled_back.stdout.splitlines()] == ["absent",
                                                                                 "removed"]
    assert [volume["state"] for volume in as_json["volumes"]] == ["absent", "rolled_back"]
    assert [volume["state"] for volume in listed[0]["volumes"]] == ["absent", "rolled_back"]
    volume_lines = [line.split() for line in text if line.startswith("volume    ")]
    assert [line[4] for line in volume_lines] == ["absent", "rolled_back"]
    assert as_json["state"] == "rolled_back"
    assert not set(sources) & set(volume_names(h2))


def test_repeated_rollback_keeps_recreated_volume(h1: LabHost, h2: LabHost,
                                                  isolated_env: IsolatedEnv,
                                                  resources: LabResources) -> None:
    source = source_volume(h1, h2, resources, {"note.txt": File(ORIGINAL)})
    source_before = snapshot_volume_tree(h1, source)
    task_id = migrate(source)
    first = ddmctl("rollback", task_id)
    assert first.status == 0, first.stderr
    assert source not in volume_names(h2)
    h2.docker("volume", "create", source)
    write_volume_tree(h2, source, {"operator.txt": File(b"created by hand\n")})
    recreated = snapshot_volume_tree(h2, source)

    as_json = ddmctl("rollback", task_id, "--json")
    text = ddmctl("rollback", task_id)

    assert as_json.status == 0, as_json.stderr
    report = as_json.json()["volumes"][0]["rollback"]
    assert report["outcome"] == "kept"
    assert "an earlier rollback removed what the task wrote" in report["reason"]
    assert "is not the task's copy" in report["reason"]
    assert text.status == 0, text.stderr
    assert [line.split("\t")[2] for line in text.stdout.splitlines()] == ["kept"]
    assert source in volume_names(h2)
    assert read_file(h2, source, "operator.txt") == b"created by hand\n"
    assert snapshot_volume_tree(h2, source) == recreated
    assert snapshot_volume_tree(h1, source) == source_before



@pytest.fixture
def no_racy_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    # The copy writes the files just before the verify scan; without this, none is seeded.
    monkeypatch.setattr(hashcache, "RACY_MARGIN_NANOSECONDS", 0)
    monkeypatch.setattr(hashcache, "FINE_RACY_MARGIN_NANOSECONDS", 0)


def test_rollback_forgets_removed_volume_hashes(h1: LabHost, h2: LabHost,
                                                isolated_env: IsolatedEnv,
                                                resources: LabResources,
                                                no_racy_margin: None) -> None:
    source = source_volume(h1, h2, resources, {"note.txt": File(ORIGINAL),
                                               "dir/data.bin": RandomFile(64 * 1024, seed=3)})
    task_id = migrate(source, "--verify", "full", "--data-path", "host")
    target_mountpoint = h2.volume_mountpoint(source)
    assert set(cache_rows(lab_url(h2), target_mountpoint)) == {b"note.txt", b"dir/data.bin"}

    rolled_back = ddmctl("rollback", task_id)

    assert rolled_back.status == 0, rolled_back.stderr
    assert cache_rows(lab_url(h2), target_mountpoint) == {}
    assert set(cache_rows(lab_url(h1), h1.volume_mountpoint(source))) == {b"note.txt",
                                                                          b"dir/data.bin"}
