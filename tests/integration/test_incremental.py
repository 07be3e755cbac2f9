"""Incremental re-migration and --parallel on the lab.

Trees are written, changed and compared from outside the containers (tests.lab.tree), so the
checks do not depend on DDM's own host-side scans.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time

import pytest

from ddm import api
from ddm.config import load_config
from ddm.errors import DDMError
from ddm.events import Event, PhaseStarted
from ddm.store import TaskStore, default_store_path
from ddm.task import TaskState
from ddmsyncer import hashcache, incremental
from tests.integration.test_migrate_volumes import WHOLE_SECONDS, run_command
from tests.lab.tree import (
    Dir,
    Fifo,
    File,
    HardLink,
    RandomFile,
    Symlink,
    diff_snapshots,
    snapshot_volume_tree,
    write_volume_tree,
)

FILE_BYTES = 256 * 1024
TREE = {
    ".": Dir(mode=0o750, uid=999, gid=999),
    **{f"data/f{index}.bin": RandomFile(FILE_BYTES, seed=index) for index in range(12)},
    "data/hard-1": File(b"shared inode\n"),
    "hard-2": HardLink("data/hard-1"),
    "link": Symlink("data/f0.bin"),
    "fifo": Fifo(),
    "old/dir/note.txt": "removed later\n",
    "conf/app.conf": "setting = 1\n",
}
CHANGED_FILES_BYTES = 2 * FILE_BYTES + 64 * 1024


def migrate(volume: str, *options: str) -> dict:
    outcome = run_command("ddmctl", "migrate", "--from", "h1", "--to", "h2", "--volume", volume,
                          "--yes", "--json", *options)
    assert outcome.status == 0, outcome.stderr
    return json.loads(outcome.stdout)


def migrated_volume(h1, h2, resources) -> tuple[str, dict]:
    """Write TREE into a new volume on h1 and migrate it to h2; return its name and the task."""
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, TREE)
    return volume, migrate(volume)


def change_source(h1, volume: str) -> None:
    """Rewrite one file, add two, remove a file and a directory, change a mode."""
    write_volume_tree(h1, volume, {
        "data/f3.bin": RandomFile(FILE_BYTES, seed=1003),
        "data/new.bin": RandomFile(64 * 1024, seed=2000),
        "added/deep/new.txt": "added\n",
        "conf/app.conf": File(b"setting = 2\n", mode=0o600),
    })
    mountpoint = h1.volume_mountpoint(volume)
    h1.run(["rm", "-r", f"{mountpoint}/old", f"{mountpoint}/data/f7.bin"])


def backups_on(h2, volume: str) -> list[str]:
    volume_dir = os.path.dirname(str(h2.volume_host_path(volume)))
    return [name for name in os.listdir(volume_dir) if name.startswith("ddm-backup-")]


def incremental_record(task_id: str) -> dict:
    store = TaskStore(default_store_path(os.environ))
    try:
        return store.get_extra(task_id)["incremental"]["0"]
    finally:
        store.close()


def copied_volume(h1, h2, resources) -> str:
    """Create a volume with TREE on h1, copy it to h2 with a full migration; return its name."""
    return migrated_volume(h1, h2, resources)[0]


def execute_in_task_database(statement: str) -> None:
    store = TaskStore(default_store_path(os.environ))
    try:
        with store.transaction() as db:
            db.execute(statement)
    finally:
        store.close()


def test_incremental_sends_only_changes(h1, h2, isolated_env, resources):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, TREE)
    migrate(volume)
    change_source(h1, volume)

    task = migrate(volume, "--incremental")

    assert task["state"] == "succeeded"
    assert task["volumes"][0]["state"] == "verified"
    sent = task["volumes"][0]["bytes_done"]
    assert 0 < sent < CHANGED_FILES_BYTES + 64 * 1024
    record = incremental_record(task["id"])
    assert record["deleted_entries"] == 4  # old, old/dir, old/dir/note.txt and data/f7.bin
    assert record["archive_bytes"] == sent
    assert diff_snapshots(snapshot_volume_tree(h1, volume), snapshot_volume_tree(h2, volume),
                          mtime_resolution_ns=WHOLE_SECONDS) == []
    assert backups_on(h2, volume) == []


def test_incremental_counts_in_events_and_status(h1, h2, isolated_env, resources):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, TREE)
    migrate(volume)
    change_source(h1, volume)

    task = migrate(volume, "--incremental")
    logs = run_command("ddmctl", "logs", task["id"])
    status = run_command("ddmctl", "status", task["id"], "--json", "--events")

    assert logs.status == 0, logs.stderr
    updated_lines = [line for line in logs.stdout.splitlines() if "updated:" in line]
    assert len(updated_lines) == 1
    assert "4 entries removed" in updated_lines[0]
    assert "hashed" in updated_lines[0]
    assert status.status == 0, status.stderr
    document = json.loads(status.stdout)
    record = document["incremental"]["0"]
    assert record["deleted_entries"] == 4  # old, old/dir, old/dir/note.txt and data/f7.bin
    assert record["archive_bytes"] == task["volumes"][0]["bytes_done"]
    assert record["sent_entries"] >= 4  # f3.bin, new.bin, new.txt, app.conf
    updated = [event for event in document["events"] if event["kind"] == "updated"]
    assert len(updated) == 1
    data = updated[0]["data"]
    assert data["position"] == 0
    assert data["entries_removed"] == 4
    assert data["entries_written"] == record["sent_entries"]
    assert data["archive_bytes"] == record["archive_bytes"]
    assert 0 < data["file_bytes_sent"] <= data["archive_bytes"]
    assert data["hashed_files"] == record["hashed_files"]
    assert [event["kind"] for event in document["events"]].count("update_verified") == 1


def test_incremental_keeps_sparse_file_sparse(h1, h2, isolated_env, resources):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, TREE)
    migrate(volume)
    sparse = f"{h1.volume_mountpoint(volume)}/sparse.bin"
    h1.run(["truncate", "--size=8M", sparse])
    h1.run(["dd", "if=/dev/urandom", f"of={sparse}", "bs=4096", "count=1", "seek=1000",
            "conv=notrunc", "status=none"])

    task = migrate(volume, "--incremental")

    assert task["state"] == "succeeded"
    copied = f"{h2.volume_mountpoint(volume)}/sparse.bin"
    size, blocks = h2.run(["stat", "--format=%s %b", copied]).stdout.split()
    assert int(size) == 8 << 20
    assert int(blocks) * 512 < 1 << 20  # 8 MiB apparent, one 4 KiB block of data
    assert (h2.run(["sha256sum", copied]).stdout.split()[0]
            == h1.run(["sha256sum", sparse]).stdout.split()[0])


def test_incremental_unchanged_sends_no_files(h1, h2, isolated_env, resources):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, TREE)
    migrate(volume)

    task = migrate(volume, "--incremental")

    assert task["state"] == "succeeded"
    record = incremental_record(task["id"])
    assert record["deleted_entries"] == 0
    assert record["sent_entries"] == 0
    assert record["archive_bytes"] == 0


def set_xattr(host, volume: str, relative: str, name: str, value: bytes) -> None:
    """Set an extended attribute on a file of the volume from inside the host's namespace."""
    path = f"{host.volume_mountpoint(volume)}/{relative}"
    host.run(["python3", "-I", "-c",
              "import os, sys; os.setxattr(sys.argv[1], sys.argv[2], sys.argv[3].encode())",
              path, name, value.decode()])


def test_incremental_sends_xattr_only_change(h1, h2, isolated_env, resources):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, {"a.txt": File(b"same content\n", xattrs={"user.k": b"v1"}),
                                   "b.txt": "untouched\n"})
    migrate(volume)
    set_xattr(h1, volume, "a.txt", "user.k", b"v2")

    rerun = run_command("ddmctl", "migrate", "--from", "h1", "--to", "h2", "--volume", volume,
                        "--yes")
    task = migrate(volume, "--incremental")

    assert rerun.status != 0
    assert "a.txt: xattrs" in rerun.stderr
    assert task["volumes"][0]["state"] == "verified"
    assert incremental_record(task["id"])["sent_entries"] >= 1
    target_file = snapshot_volume_tree(h2, volume)[b"a.txt"]
    assert dict(target_file.xattrs)["user.k"] == b"v2"


def test_incremental_failure_restores_target(h1, h2, isolated_env, resources):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, TREE)
    migrate(volume)
    target_before = snapshot_volume_tree(h2, volume)
    change_source(h1, volume)
    config = load_config(environ=os.environ)
    store = TaskStore(default_store_path(os.environ))
    task = api.create_task(store, config, source="h1", target="h2", volumes=[volume],
                           options={"incremental": True})

    def fail_at_verify(event: Event) -> None:
        if isinstance(event, PhaseStarted) and event.phase == "verify":
            raise DDMError("injected failure after the update")

    with pytest.raises(DDMError):
        api.run_task(config, store, task.id, on_event=fail_at_verify)

    assert store.get_task(task.id).state is TaskState.FAILED
    assert snapshot_volume_tree(h2, volume) == target_before
    assert backups_on(h2, volume) == []


def test_failure_restores_directory_xattrs(h1, h2, isolated_env, resources):
    volume = copied_volume(h1, h2, resources)
    target_before = snapshot_volume_tree(h2, volume)
    set_xattr(h1, volume, "data", "user.added", b"new")  # tar sets it on the existing dir

    def fail() -> None:
        raise DDMError("injected failure after the update")

    store, task_id, _ = run_failing_update(volume, fail)

    assert store.get_task(task_id).state is TaskState.FAILED
    assert dict(snapshot_volume_tree(h2, volume)[b"data"].xattrs) == {}
    assert snapshot_volume_tree(h2, volume) == target_before


def test_incremental_removes_directory_xattr(h1, h2, isolated_env, resources):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, TREE)
    set_xattr(h1, volume, "conf", "user.stale", b"1")
    migrate(volume)
    h1.run(["python3", "-I", "-c", "import os, sys; os.removexattr(sys.argv[1], 'user.stale')",
            f"{h1.volume_mountpoint(volume)}/conf"])

    task = migrate(volume, "--incremental")

    assert task["volumes"][0]["state"] == "verified"
    assert dict(snapshot_volume_tree(h2, volume)[b"conf"].xattrs) == {}
    assert diff_snapshots(snapshot_volume_tree(h1, volume), snapshot_volume_tree(h2, volume),
                          mtime_resolution_ns=WHOLE_SECONDS) == []


def test_rollback_of_old_failed_update(h1, h2, isolated_env, resources):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, TREE)
    migrate(volume)
    change_source(h1, volume)
    config = load_config(environ=os.environ)
    store = TaskStore(default_store_path(os.environ))
    failed = api.create_task(store, config, source="h1", target="h2", volumes=[volume],
                             options={"incremental": True})

    def fail_at_verify(event: Event) -> None:
        if isinstance(event, PhaseStarted) and event.phase == "verify":
            raise DDMError("injected failure after the update")

    with pytest.raises(DDMError):
        api.run_task(config, store, failed.id, on_event=fail_at_verify)
    later = migrate(volume, "--incremental")
    source_now = snapshot_volume_tree(h1, volume)
    target_now = snapshot_volume_tree(h2, volume)

    outcome = run_command("ddmctl", "rollback", failed.id)

    assert outcome.status == 0, outcome.stderr
    assert outcome.stdout == (
        f"{volume}\t{volume}\tkept\tan earlier rollback restored it from the task's backup; "
        f"task {later['id']} wrote this target volume since, and this rollback left it as it is\n")
    assert snapshot_volume_tree(h2, volume) == target_now
    assert not diff_snapshots(source_now, target_now, mtime_resolution_ns=WHOLE_SECONDS)
    assert snapshot_volume_tree(h1, volume) == source_now
    assert backups_on(h2, volume) == []


def test_incremental_cut_connection_restores_target(h1, h2, isolated_env, resources):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, TREE)
    migrate(volume)
    target_before = snapshot_volume_tree(h2, volume)
    change_source(h1, volume)
    config = load_config(environ=os.environ)
    store = TaskStore(default_store_path(os.environ))
    task = api.create_task(store, config, source="h1", target="h2", volumes=[volume],
                           options={"incremental": True})
    cut: list[int] = []

    def cut_at_verify(event: Event) -> None:
        if isinstance(event, PhaseStarted) and event.phase == "verify" and not cut:
            cut.append(h2.cut_connections())

    with pytest.raises(DDMError):
        api.run_task(config, store, task.id, on_event=cut_at_verify)

    assert cut and cut[0] >= 1
    assert store.get_task(task.id).state is TaskState.FAILED
    kinds = [event["kind"] for event in store.get_events(task.id)]
    assert "restored" in kinds
    assert "rollback_failed" not in kinds
    assert snapshot_volume_tree(h2, volume) == target_before
    assert backups_on(h2, volume) == []


def test_incremental_refuses_foreign_target(h1, h2, isolated_env, resources):
    volume = resources.create_volume(h1)
    write_volume_tree(h1, volume, {"a.txt": "source\n"})
    resources.create_volume(h2, volume)
    write_volume_tree(h2, volume, {"b.txt": "not made by DDM\n"})

    outcome = run_command("ddmctl", "migrate", "--from", "h1", "--to", "h2", "--volume", volume,
                          "--yes", "--incremental")

    assert outcome.status == 1
    assert "already exists" in outcome.stderr
    assert set(snapshot_volume_tree(h2, volume)) == {b".", b"b.txt"}


@pytest.fixture
def no_racy_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    # The tests write files right before the scans; without this, none would be cached.
    monkeypatch.setattr(hashcache, "RACY_MARGIN_NANOSECONDS", 0)


def cache_rows(host_url: str, mountpoint: str) -> dict[bytes, str]:
    """Return the valid hash cache rows of one volume on one host: path -> SHA-256."""
    store = TaskStore(default_store_path(os.environ))
    try:
        known = hashcache.HashCache(store).load(f"{host_url} {mountpoint}")
    finally:
        store.close()
    return {path: cached.digest for path, cached in known.items()}


def lab_url(host) -> str:
    return load_config(environ=os.environ).host(host.name).url


TREE_FILES = sum(1 for spec in TREE.values() if not isinstance(spec, (Dir, Symlink, Fifo)))


def test_full_copy_seeds_hash_cache(h1, h2, isolated_env, resources, no_racy_margin):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, TREE)

    migrate(volume)

    source_rows = cache_rows(lab_url(h1), h1.volume_mountpoint(volume))
    target_rows = cache_rows(lab_url(h2), h2.volume_mountpoint(volume))
    expected = {os.fsencode(path) for path, spec in TREE.items()
                if not isinstance(spec, (Dir, Symlink, Fifo))}
    assert set(source_rows) == expected
    assert set(target_rows) == expected
    content = (h1.volume_host_path(volume) / "conf" / "app.conf").read_bytes()
    assert source_rows[b"conf/app.conf"] == hashlib.sha256(content).hexdigest()
    assert target_rows == source_rows


def test_incremental_after_seed_hashes_changes(h1, h2, isolated_env, resources, no_racy_margin):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, TREE)
    migrate(volume)
    change_source(h1, volume)

    task = migrate(volume, "--incremental")

    record = incremental_record(task["id"])
    # Hashed: the rewritten f3.bin and app.conf, the new new.bin and new.txt.
    assert record["hashed_files"] == {"source": 4, "target": 0}
    assert record["cache_hits"] == {"source": TREE_FILES - 4, "target": TREE_FILES}
    assert task["volumes"][0]["state"] == "verified"
    assert diff_snapshots(snapshot_volume_tree(h1, volume), snapshot_volume_tree(h2, volume),
                          mtime_resolution_ns=WHOLE_SECONDS) == []


def test_seed_with_racy_margin_covers_target(h1, h2, isolated_env, resources):
    # The real margins: on a machine that is not busy, the copy writes most target files
    # within the margin before the verify scan reaches them, so their rows need the second hash.
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, TREE)
    time.sleep(hashcache.RACY_MARGIN_NANOSECONDS / 1e9 + 0.5)  # source files leave the margin
    migrate(volume)
    change_source(h1, volume)

    target_rows = cache_rows(lab_url(h2), h2.volume_mountpoint(volume))
    task = migrate(volume, "--incremental")

    expected = {os.fsencode(path) for path, spec in TREE.items()
                if not isinstance(spec, (Dir, Symlink, Fifo))}
    assert set(target_rows) == expected
    record = incremental_record(task["id"])
    # Hashed: the rewritten f3.bin and app.conf, the new new.bin and new.txt.
    assert record["hashed_files"] == {"source": 4, "target": 0}
    assert record["cache_hits"] == {"source": TREE_FILES - 4, "target": TREE_FILES}
    assert task["volumes"][0]["state"] == "verified"


def test_seeded_row_misses_changed_file(h1, h2, isolated_env, resources, no_racy_margin):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, TREE)
    migrate(volume)
    # Same size and mtime, other content: only the ctime shows the change.
    mountpoint = h1.volume_mountpoint(volume)
    changed = f"{mountpoint}/data/f5.bin"
    mtime = h1.run(["stat", "--format=%y", changed]).stdout.strip()
    h1.run(["dd", "if=/dev/zero", f"of={changed}", f"bs={FILE_BYTES}", "count=1",
            "conv=notrunc", "status=none"])
    h1.run(["touch", "-m", "-d", mtime, changed])

    task = migrate(volume, "--incremental")

    record = incremental_record(task["id"])
    assert record["hashed_files"]["source"] == 1
    assert record["sent_entries"] >= 1
    target_file = h2.volume_host_path(volume) / "data" / "f5.bin"
    assert target_file.read_bytes() == bytes(FILE_BYTES)


def test_incremental_cache_skips_hashing(h1, h2, isolated_env, resources, no_racy_margin):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, TREE)
    migrate(volume)
    first = migrate(volume, "--incremental")
    change_source(h1, volume)
    forget_stored_scans()  # else the update rescans the scans that `first` verified

    second = migrate(volume, "--incremental")

    files = TREE_FILES
    # The full copy seeded the cache, so the first re-migration hashed nothing.
    assert incremental_record(first["id"])["hashed_files"] == {"source": 0, "target": 0}
    record = incremental_record(second["id"])
    # Hashed: the rewritten f3.bin and app.conf, the new new.bin and new.txt. Cache hits: all
    # other files, without the removed f7.bin and old/dir/note.txt.
    assert record["hashed_files"] == {"source": 4, "target": 0}
    assert record["cache_hits"] == {"source": files - 4, "target": files}
    assert second["volumes"][0]["state"] == "verified"
    assert diff_snapshots(snapshot_volume_tree(h1, volume), snapshot_volume_tree(h2, volume),
                          mtime_resolution_ns=WHOLE_SECONDS) == []


def forget_stored_scans() -> None:
    execute_in_task_database("DELETE FROM volume_scans")


def test_update_rescans_last_verified_scans(h1, h2, isolated_env, resources, no_racy_margin):
    volume = copied_volume(h1, h2, resources)
    migrate(volume, "--incremental")
    change_source(h1, volume)
    # A change on the target since the last verification, which its lstat key still shows.
    drifted = h2.volume_host_path(volume) / "data" / "f5.bin"
    rewrite_keeping_mtime(drifted, bytes(FILE_BYTES))

    task = migrate(volume, "--incremental")

    record = incremental_record(task["id"])
    assert record["cache_hits"] == {"source": 0, "target": 0}
    assert record["reused_entries"]["source"] > 0
    assert record["reused_entries"]["target"] > 0
    # Hashed on the source: f3.bin, app.conf, new.bin and new.txt; on the target: f5.bin.
    assert record["hashed_files"] == {"source": 4, "target": 1}
    assert task["volumes"][0]["state"] == "verified"
    assert drifted.read_bytes() == (h1.volume_host_path(volume) / "data" / "f5.bin").read_bytes()
    assert diff_snapshots(snapshot_volume_tree(h1, volume), snapshot_volume_tree(h2, volume),
                          mtime_resolution_ns=WHOLE_SECONDS) == []


def test_damaged_stored_scan_in_task_log(h1, h2, isolated_env, resources, no_racy_margin):
    volume = copied_volume(h1, h2, resources)
    migrate(volume, "--incremental")
    execute_in_task_database("UPDATE volume_scan_chunks SET records = 'damaged'")
    change_source(h1, volume)

    task = migrate(volume, "--incremental")
    logs = run_command("ddmctl", "logs", task["id"])

    assert task["volumes"][0]["state"] == "verified"
    assert incremental_record(task["id"])["reused_entries"] == {"source": 0, "target": 0}
    warnings = [line for line in logs.stdout.splitlines() if "ignored the stored scan" in line]
    # Both scans were damaged; the source's is read first, and the update then scans both.
    assert len(warnings) == 1
    assert "is not a blob with a text checksum" in warnings[0]
    assert diff_snapshots(snapshot_volume_tree(h1, volume), snapshot_volume_tree(h2, volume),
                          mtime_resolution_ns=WHOLE_SECONDS) == []


def test_incremental_detects_restored_mtime(h1, h2, isolated_env, resources, no_racy_margin):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, TREE)
    migrate(volume)
    migrate(volume, "--incremental")
    changed = h1.volume_host_path(volume) / "data" / "f5.bin"
    before = changed.stat()
    changed.write_bytes(bytes(FILE_BYTES))
    os.utime(changed, ns=(before.st_atime_ns, before.st_mtime_ns))

    task = migrate(volume, "--incremental")

    record = incremental_record(task["id"])
    assert record["hashed_files"]["source"] == 1
    assert record["sent_entries"] >= 1
    target_file = h2.volume_host_path(volume) / "data" / "f5.bin"
    assert target_file.read_bytes() == bytes(FILE_BYTES)
    assert target_file.stat().st_mtime_ns // WHOLE_SECONDS == before.st_mtime_ns // WHOLE_SECONDS


def test_verify_none_misses_restored_mtime(h1, h2, isolated_env, resources):
    # With --verify none nothing is hashed, so the update compares metadata only.
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, TREE)
    migrate(volume)
    changed = h1.volume_host_path(volume) / "data" / "f5.bin"
    before = changed.stat()
    changed.write_bytes(bytes(FILE_BYTES))
    os.utime(changed, ns=(before.st_atime_ns, before.st_mtime_ns))
    target_file = h2.volume_host_path(volume) / "data" / "f5.bin"
    target_before = target_file.read_bytes()

    task = migrate(volume, "--incremental", "--verify", "none")

    assert incremental_record(task["id"])["sent_entries"] == 0
    assert target_file.read_bytes() == target_before
    assert target_before != bytes(FILE_BYTES)


def test_incremental_dry_run_shows_update(h1, h2, isolated_env, resources):
    volume, first = migrated_volume(h1, h2, resources)
    change_source(h1, volume)
    target_before = snapshot_volume_tree(h2, volume)

    outcome = run_command("ddmctl", "migrate", "--from", "h1", "--to", "h2", "--volume", volume,
                          "--incremental", "--dry-run", "--json")

    assert outcome.status == 0, outcome.stdout + outcome.stderr
    plan = json.loads(outcome.stdout)
    assert plan["conflicts"] == []
    entry = plan["objects"][0]
    assert entry["action"] == "incremental"
    assert entry["earlier_task"] == first["id"]
    assert entry["incremental"]["delete_entries"] == 4  # "old" contains two more entries
    assert set(entry["incremental"]["delete"]) == {"old", "data/f7.bin"}
    assert {"data/f3.bin", "data/new.bin", "added/deep/new.txt"} <= set(entry["incremental"]["send"])
    # The hosts' scans compare xattrs and ACLs, and mtimes in whole seconds only.
    assert entry["not_verified"] == ["mtime_ns", "sparse"]
    assert {"xattrs", "acl", "content", "mtime"} <= set(entry["verified"])
    assert snapshot_volume_tree(h2, volume) == target_before
    text = run_command("ddmctl", "migrate", "--from", "h1", "--to", "h2", "--volume", volume,
                       "--incremental", "--dry-run")
    assert "incremental update of the existing target" in text.stdout


def test_parallel_three_volumes(h1, h2, isolated_env, resources):
    volumes = [resources.create_volume(h1) for _ in range(3)]
    for index, volume in enumerate(volumes):
        resources.add_volume(h2, volume)
        write_volume_tree(h1, volume, {f"v{index}/data.bin": RandomFile(2 << 20, seed=index),
                                       "shared.txt": f"volume {index}\n"})
    arguments = [argument for volume in volumes for argument in ("--volume", volume)]

    task = migrate(arguments[1], *arguments[2:], "--parallel", "3")

    assert task["state"] == "succeeded"
    assert [item["state"] for item in task["volumes"]] == ["verified"] * 3
    for volume in volumes:
        assert diff_snapshots(snapshot_volume_tree(h1, volume), snapshot_volume_tree(h2, volume),
                              mtime_resolution_ns=WHOLE_SECONDS) == []
    helpers = h2.docker("ps", "-aq", "--filter", "label=ddm.task").stdout.split()
    assert helpers == []


def rewrite_keeping_mtime(path, content: bytes) -> None:
    """Change a file's content at the same size and set its mtime back, as `touch -d` can."""
    before = path.stat()
    assert len(content) == before.st_size
    path.write_bytes(content)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def run_update(volume: str, on_verify) -> tuple[TaskStore, str, BaseException | None]:
    """Run an incremental update of `volume` in this process; call on_verify() when verify starts.

    Returns the store, the task ID and the error the task raised, if any.
    """
    config = load_config(environ=os.environ)
    store = TaskStore(default_store_path(os.environ))
    task = api.create_task(store, config, source="h1", target="h2", volumes=[volume],
                           options={"incremental": True})

    def on_event(event: Event) -> None:
        if isinstance(event, PhaseStarted) and event.phase == "verify":
            on_verify()

    try:
        api.run_task(config, store, task.id, on_event=on_event)
    except DDMError as error:
        return store, task.id, error
    return store, task.id, None


def run_failing_update(volume: str, change_at_verify) -> tuple[TaskStore, str, str]:
    """Run an incremental task that must fail; call change_at_verify() when verify starts.

    Returns the store, the task ID and the error message.
    """
    store, task_id, error = run_update(volume, change_at_verify)
    assert error is not None, "the update succeeded"
    return store, task_id, str(error)


def test_incremental_verify_reuses_scans(h1, h2, isolated_env, resources, no_racy_margin):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, TREE)
    migrate(volume)
    change_source(h1, volume)

    task = migrate(volume, "--incremental")

    record = incremental_record(task["id"])
    assert task["volumes"][0]["state"] == "verified"
    assert record["verify_reused_entries"] > 0
    assert record["verify_target_reused_entries"] > 0
    assert diff_snapshots(snapshot_volume_tree(h1, volume), snapshot_volume_tree(h2, volume),
                          mtime_resolution_ns=WHOLE_SECONDS) == []


def test_source_change_before_verify_fails(h1, h2, isolated_env, resources, no_racy_margin):
    """A source file rewritten between the update's scan and verify, mtime set back."""
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, TREE)
    migrate(volume)
    change_source(h1, volume)
    target_before = snapshot_volume_tree(h2, volume)
    unsent = h1.volume_host_path(volume) / "data" / "f5.bin"

    store, task_id, message = run_failing_update(
        volume,
        lambda: rewrite_keeping_mtime(unsent, bytes(FILE_BYTES)))

    assert "after the incremental update in 1 place: data/f5.bin: content (source " in message
    assert store.get_task(task_id).state is TaskState.FAILED
    assert snapshot_volume_tree(h2, volume) == target_before
    assert backups_on(h2, volume) == []


def test_target_corrupted_before_verify_fails(h1, h2, isolated_env, resources, no_racy_margin):
    """A target file that the update did not send, rewritten after the copy, mtime set back."""
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, TREE)
    migrate(volume)
    change_source(h1, volume)
    unsent = h2.volume_host_path(volume) / "data" / "f6.bin"

    store, task_id, message = run_failing_update(
        volume,
        lambda: rewrite_keeping_mtime(unsent, bytes(FILE_BYTES)))

    assert "data/f6.bin: content" in message
    assert store.get_task(task_id).state is TaskState.FAILED
    assert backups_on(h2, volume) == []


LINKED_TREE = {
    "h1f": File(b"shared by three names\n"),
    "h2f": HardLink("h1f"),
    "h3f": HardLink("h1f"),
    "other.txt": "unrelated\n",
    # Equal files with equal mtimes: linking them changes no comparison key.
    "twin-a.txt": File(b"twin\n", mtime_ns=1_600_000_000 * WHOLE_SECONDS),
    "twin-b.txt": File(b"twin\n", mtime_ns=1_600_000_000 * WHOLE_SECONDS),
}


def leave_link_group(h1, volume: str) -> None:
    """Replace h2f by a separate file, so h1f and h3f keep the shared inode."""
    mountpoint = h1.volume_mountpoint(volume)
    h1.run(["rm", f"{mountpoint}/h2f"])
    write_volume_tree(h1, volume, {"h2f": "separate\n"})


def join_link_group(h1, volume: str) -> None:
    mountpoint = h1.volume_mountpoint(volume)
    h1.run(["ln", f"{mountpoint}/h1f", f"{mountpoint}/h4f"])


def copy_out_of_group(h1, volume: str) -> None:
    """Give h2f an inode of its own with the same content, mode and mtime (cp -p)."""
    mountpoint = h1.volume_mountpoint(volume)
    h1.run(["sh", "-c", f"cp -p {mountpoint}/h2f {mountpoint}/h2f.tmp && "
                        f"mv {mountpoint}/h2f.tmp {mountpoint}/h2f"])


def link_equal_files(h1, volume: str) -> None:
    mountpoint = h1.volume_mountpoint(volume)
    h1.run(["ln", "-f", f"{mountpoint}/twin-a.txt", f"{mountpoint}/twin-b.txt"])


def change_shared_content(h1, volume: str) -> None:
    """Rewrite the shared inode in place, so all three names get the new content."""
    mountpoint = h1.volume_mountpoint(volume)
    h1.run(["sh", "-c", f"echo 'new shared content' > {mountpoint}/h1f"])


@pytest.mark.parametrize("change", [leave_link_group, join_link_group, change_shared_content,
                                    copy_out_of_group, link_equal_files],
                         ids=["member-leaves", "member-joins", "shared-content-changes",
                              "same-content-copy-leaves", "equal-files-linked"])
def test_incremental_hard_link_changes(h1, h2, isolated_env, resources, change):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, LINKED_TREE)
    migrate(volume)
    change(h1, volume)

    task = migrate(volume, "--incremental")

    assert task["state"] == "succeeded"
    assert task["volumes"][0]["state"] == "verified"
    assert diff_snapshots(snapshot_volume_tree(h1, volume), snapshot_volume_tree(h2, volume),
                          mtime_resolution_ns=WHOLE_SECONDS) == []
    assert backups_on(h2, volume) == []


def cut_before(monkeypatch: pytest.MonkeyPatch, h2, step: str) -> list[int]:
    """Cut every SSH connection to h2 when the step (incremental.NAME) is first called.

    "HostCommand.lines" cuts after the scan commands opened their channels, so the scan
    writes its stdin into a connection that is gone but may still look active.
    """
    owner, name = ((incremental.HostCommand, "lines") if step == "HostCommand.lines"
                   else (incremental, step))
    original = getattr(owner, name)
    cut: list[int] = []
    first_call = threading.Lock()

    def cut_then_call(*args, **kwargs):
        # The scans call HostCommand.lines from one thread per host. The lock lets only the
        # first caller cut, so its count is the one that dropped the connections.
        with first_call:
            if not cut:
                cut.append(h2.cut_connections())
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, cut_then_call)
    return cut


@pytest.mark.parametrize("step", ["scan_both", "HostCommand.lines", "relay_tar", "verify_update"])
def test_incremental_lost_connection_exits_3(h1, h2, isolated_env, resources, monkeypatch, step):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, TREE)
    migrate(volume)
    target_before = snapshot_volume_tree(h2, volume)
    change_source(h1, volume)
    cut = cut_before(monkeypatch, h2, step)

    outcome = run_command("ddmctl", "migrate", "--from", "h1", "--to", "h2", "--volume", volume,
                          "--yes", "--incremental")

    assert cut and cut[0] >= 1
    assert outcome.status == 3, outcome.stderr
    error_lines = [line for line in outcome.stderr.splitlines() if "ddmctl: error:" in line]
    assert len(error_lines) == 1, outcome.stderr
    assert error_lines[0].startswith("ddmctl: error: the SSH connection to host 'h2' broke")
    assert "" not in outcome.stderr.splitlines()  # click's blank line before "interrupted"
    assert "interrupted" not in outcome.stderr
    assert snapshot_volume_tree(h2, volume) == target_before
    listed = run_command("ddmctl", "list", "--json")
    task = json.loads(listed.stdout)[0]
    status = run_command("ddmctl", "status", task["id"], "--json")
    error = json.loads(status.stdout)["error"]
    assert error["error"] == "ConnectionLost"
    assert error["exit_status"] == 3
    assert "host 'h2'" in error["message"]


def test_rollback_rejects_succeeded_update(h1, h2, isolated_env, resources):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, TREE)
    migrate(volume)
    change_source(h1, volume)
    task = migrate(volume, "--incremental")
    updated = snapshot_volume_tree(h2, volume)

    outcome = run_command("ddmctl", "rollback", task["id"])

    assert outcome.status == 2, outcome.stderr
    assert outcome.stdout == ""
    error_lines = outcome.stderr.splitlines()
    assert len(error_lines) == 1, outcome.stderr
    assert error_lines[0].startswith(f"ddmctl: error: task {task['id']} cannot be rolled back: "
                                     "it succeeded and updated volume")
    assert "run 'ddmctl migrate' again" in error_lines[0]
    status = json.loads(run_command("ddmctl", "status", task["id"], "--json").stdout)
    assert status["state"] == "succeeded"
    assert snapshot_volume_tree(h2, volume) == updated


def test_updated_event_counts_inode_once(h1, h2, isolated_env, resources):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, {"h1f": RandomFile(64 * 1024, seed=1),
                                   "h2f": HardLink("h1f"), "h3f": HardLink("h1f"),
                                   "other.txt": "unchanged\n"})
    migrate(volume)
    mountpoint = h1.volume_mountpoint(volume)
    h1.run(["dd", "if=/dev/urandom", f"of={mountpoint}/h1f", "bs=64k", "count=1",
            "conv=notrunc", "status=none"])

    task = migrate(volume, "--incremental")
    logs = run_command("ddmctl", "logs", task["id"])
    status = json.loads(run_command("ddmctl", "status", task["id"], "--json", "--events").stdout)

    updated = [event["data"] for event in status["events"] if event["kind"] == "updated"]
    assert len(updated) == 1
    assert updated[0]["file_bytes_sent"] == 64 * 1024  # one inode, three names
    assert updated[0]["entries_written"] == 3  # h1f, h2f, h3f; the volume root is not counted
    assert status["incremental"]["0"]["sent_entries"] == 3
    updated_lines = [line for line in logs.stdout.splitlines() if "updated:" in line]
    assert len(updated_lines) == 1
    assert "3 entries written (65536 bytes of file data" in updated_lines[0]
    assert diff_snapshots(snapshot_volume_tree(h1, volume), snapshot_volume_tree(h2, volume),
                          mtime_resolution_ns=WHOLE_SECONDS) == []
