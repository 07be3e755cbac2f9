"""`--route direct` on the lab: h1 streams to h2 over the lab link with a one-task key.

Trees are written and compared from outside the containers (tests.lab.tree). Every test
also checks that nothing of the task key is left: no line in h2's authorized_keys and no
work directory on h1.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ddmdriver.direct
import ddmsyncer.direct
from ddm.config import load_config
from ddm.errors import ExitStatus
from ddm.manifest_store import load_task_manifest
from ddm.store import TaskStore, default_store_path
from ddm.task import TaskState
from ddmdriver import direct
from ddmdriver.engine import open_engine
from ddmdriver.hostpath import probe_host_access
from ddmsyncer import hashcache, hostverify
from tests.integration.test_migrate_volumes import RICH_TREE, run_command, volumes_on
from tests.lab.tree import RandomFile, diff_snapshots, snapshot_volume_tree, write_volume_tree

pytestmark = pytest.mark.lab

SMALL_TREE = {
    "data/a.bin": RandomFile(512 * 1024, seed=1),
    "data/b.bin": RandomFile(64 * 1024, seed=2),
    "note.txt": "direct\n",
}


def migrate_direct(volume: str, *options: str):
    return run_command("ddmctl", "migrate", "--from", "h1", "--to", "h2", "--volume", volume,
                       "--route", "direct", "--yes", "--json", *options)


def task_key_lines(lab) -> list[str]:
    text = (lab.host("h2").directory / "authorized_keys").read_text()
    return [line for line in text.splitlines() if "ddm-direct:" in line]


def work_directories(task_id: str = "") -> list[str]:
    # The lab hosts share the machine's /tmp, where the source host's work directory lives.
    return glob.glob(f"/tmp/ddm-direct-{task_id}*")


def staging_volumes(h2) -> list[str]:
    return [name for name in volumes_on(h2) if name.startswith("ddm-staging-")]


def small_source(h1, h2, resources) -> str:
    """Create a source volume with SMALL_TREE on h1 and register its copy on h2 for removal."""
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, SMALL_TREE)
    return volume


def stored_record(task_id: str):
    """Return the task's stored verify record, the manifest of its item 0 and that item."""
    store = TaskStore(default_store_path(os.environ))
    try:
        return (store.get_extra(task_id).get("verify"), load_task_manifest(store, task_id, 0),
                store.get_task(task_id).items[0])
    finally:
        store.close()


def rewrite_config(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_direct_copy_is_byte_identical(lab, h1, h2, isolated_env, resources):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, RICH_TREE)
    source_before = snapshot_volume_tree(h1, volume)

    outcome = migrate_direct(volume)

    assert outcome.status == 0, outcome.stderr
    task = json.loads(outcome.stdout)
    assert task["volumes"][0]["state"] == "verified"
    assert diff_snapshots(source_before, snapshot_volume_tree(h2, volume)) == []
    assert snapshot_volume_tree(h1, volume) == source_before
    assert task_key_lines(lab) == []
    assert work_directories(task["id"]) == []
    assert "PRIVATE KEY" not in outcome.stdout + outcome.stderr


def test_direct_copy_goes_over_the_link(lab, h1, h2, isolated_env, resources):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, SMALL_TREE)

    outcome = migrate_direct(volume)

    assert outcome.status == 0, outcome.stderr
    task_id = json.loads(outcome.stdout)["id"]
    sshd_log = (h2.directory / "sshd.log").read_text()
    sessions = [line for line in sshd_log.splitlines()
                if "forced-command" in line and f"ddm-staging-{task_id}-0" in line]
    assert len(sessions) == 1
    assert f"from {h1.link_address}" in sessions[0]
    logs = run_command("ddmctl", "logs", task_id)
    assert "streamed directly from h1 to 198.51.100.12:22" in logs.stdout
    assert "PRIVATE KEY" not in logs.stdout


def test_direct_failure_removes_key(lab, h1, h2, isolated_env, resources, monkeypatch):
    volume = resources.create_volume(h1)
    write_volume_tree(h1, volume, SMALL_TREE)
    installed: list[str] = []
    original_install = ddmdriver.direct.install_task_key

    def install_and_remember(engine, path, line):
        original_install(engine, path, line)
        installed.extend(task_key_lines(lab))

    def extract_into_missing_directory(access, directory):
        # The target's tar fails at once: its --directory does not exist.
        return original_forced(access, f"{directory}/missing")

    original_forced = ddmdriver.direct.forced_command
    monkeypatch.setattr(ddmdriver.direct, "install_task_key", install_and_remember)
    monkeypatch.setattr(ddmdriver.direct, "forced_command", extract_into_missing_directory)

    outcome = migrate_direct(volume)

    assert outcome.status == 1, outcome.stderr
    assert "tar on target 198.51.100.12:22 failed" in outcome.stderr
    assert len(installed) == 1
    assert task_key_lines(lab) == []
    assert work_directories(json.loads(outcome.stdout)["id"]) == []
    assert volume not in volumes_on(h2)
    assert staging_volumes(h2) == []


def test_forced_command_runs_only_the_receive(lab, h1, h2, isolated_env, resources):
    volume = resources.create_volume(h2)
    receive_directory = h2.volume_mountpoint(volume)
    marker = h2.directory / "ran-another-command"
    config = load_config(environ=os.environ)
    task_id = "0123456789ab"
    work_directory = direct.work_directory(task_id, 0)

    with open_engine(config.host("h1"), config) as source, open_engine(config.host("h2"), config) as target:
        source_access = probe_host_access(source).access
        target_access = probe_host_access(target).access
        endpoint = direct.direct_target(target)
        keys_path = str(h2.directory / "authorized_keys")
        key = direct.generate_task_key(direct.key_comment(task_id, 0))
        direct.install_task_key(target, keys_path, direct.authorized_keys_line(
            key, direct.forced_command(target_access, receive_directory)))
        direct.prepare_source(source, source_access, work_directory, key, endpoint, "ddm-test")
        try:
            argv = direct.ssh_argv(work_directory, endpoint, "ddm-test")
            argv[-1] = f"touch {marker}"
            attempt = h1.run(argv, input="", check=False)
        finally:
            direct.remove_task_keys(target, keys_path, direct.task_marker(task_id))
            direct.cleanup_source(source, source_access.prefix, work_directory)

    assert not marker.exists()
    assert attempt.returncode != 255, attempt.stderr  # the key was accepted
    sshd_log = (h2.directory / "sshd.log").read_text()
    assert f"forced-command (key-option) 'tar --extract --file=- --directory={receive_directory}" in sshd_log
    assert task_key_lines(lab) == []
    assert not os.path.exists(work_directory)


def test_other_host_key_exits_4(lab, h1, h2, isolated_env, resources):
    # h2's direct_address points at h1's sshd, which presents h1's host key, not h2's.
    rewrite_config(isolated_env.config_path, f"direct_address: {h2.link_address}",
                   f"direct_address: {h1.link_address}")
    volume = resources.create_volume(h1)
    write_volume_tree(h1, volume, SMALL_TREE)

    outcome = migrate_direct(volume)

    assert outcome.status == 4, outcome.stderr
    assert "is not the key this controller verified" in outcome.stderr
    assert task_key_lines(lab) == []
    assert work_directories(json.loads(outcome.stdout)["id"]) == []
    assert volume not in volumes_on(h2)
    assert staging_volumes(h2) == []


def test_rollback_removes_leftovers_of_killed_run(lab, h1, h2, isolated_env, resources):
    volume = resources.create_volume(h1)
    write_volume_tree(h1, volume, SMALL_TREE)
    config = load_config(environ=os.environ)
    store = TaskStore(default_store_path(os.environ))
    outcome = run_command("ddmctl", "create", "--from", "h1", "--to", "h2", "--volume", volume,
                          "--route", "direct", "--json")
    assert outcome.status == 0, outcome.stderr
    task_id = json.loads(outcome.stdout)["id"]
    keys_path = str(h2.directory / "authorized_keys")
    work_directory = direct.work_directory(task_id, 0)

    # What a runner killed during the copy leaves: the key line and the work directory.
    store.set_extra(task_id, direct_route={"0": {"authorized_keys": keys_path,
                                                 "work_directory": work_directory,
                                                 "access_prefix": []}})
    with open_engine(config.host("h1"), config) as source, open_engine(config.host("h2"), config) as target:
        key = direct.generate_task_key(direct.key_comment(task_id, 0))
        direct.install_task_key(target, keys_path, direct.authorized_keys_line(key, "true"))
        access = probe_host_access(source).access
        direct.prepare_source(source, access, work_directory, key, direct.direct_target(target), "x")
    store.update_task(task_id, state=TaskState.INTERRUPTED)
    assert len(task_key_lines(lab)) == 1
    assert os.path.isdir(work_directory)

    rollback = run_command("ddmctl", "rollback", task_id)

    assert rollback.status == 0, rollback.stderr
    assert task_key_lines(lab) == []
    assert not os.path.exists(work_directory)
    assert store.get_extra(task_id)["direct_route"] == {}
    store.close()


@pytest.mark.parametrize("options, message", [
    (("--data-path", "engine"), "--route direct does not work with --data-path engine"),
    (("--incremental",), "--route direct does not work with --incremental"),
])
def test_direct_usage_errors(lab, h1, isolated_env, resources, options, message):
    volume = resources.create_volume(h1)

    outcome = migrate_direct(volume, *options)

    assert outcome.status == 2
    assert message in outcome.stderr


def test_direct_needs_direct_address(lab, h1, h2, isolated_env, resources):
    rewrite_config(isolated_env.config_path, f"    direct_address: {h2.link_address}\n", "")
    volume = resources.create_volume(h1)

    outcome = run_command("ddmctl", "plan", "--from", "h1", "--to", "h2", "--volume", volume,
                          "--route", "direct", "--probe-size", "0")

    assert outcome.status == 2
    assert "target host 'h2' has no direct_address" in outcome.stderr
    assert "set hosts.h2.direct_address" in outcome.stderr


def test_plan_shows_direct_route(lab, h1, isolated_env, resources):
    volume = resources.create_volume(h1)
    write_volume_tree(h1, volume, SMALL_TREE)

    outcome = run_command("ddmctl", "plan", "--from", "h1", "--to", "h2", "--volume", volume,
                          "--route", "direct", "--probe-size", "0", "--json")

    assert outcome.status == 0, outcome.stderr
    entry = json.loads(outcome.stdout)["objects"][0]
    assert entry["route"] == "direct"
    assert entry["data_path"] == "host"
    assert "content" in entry["verified"]
    # Both host scans compare xattrs (ACLs among them), and only the manifest scan holes.
    assert {"xattrs", "acl"} <= set(entry["verified"])
    assert entry["not_verified"] == ["sparse"]


def test_ctrl_c_during_direct_copy_removes_key(lab, h1, h2, isolated_env, resources, monkeypatch):
    volume = resources.create_volume(h1)
    write_volume_tree(h1, volume, SMALL_TREE)
    seen: dict[str, object] = {}

    def interrupted_stream(source, access, source_directory, directory, target, alias, description):
        seen["key_lines"] = task_key_lines(lab)
        seen["work_directory"] = directory
        seen["work_directory_existed"] = os.path.isdir(directory)
        raise KeyboardInterrupt

    monkeypatch.setattr(ddmdriver.direct, "stream_direct", interrupted_stream)

    outcome = migrate_direct(volume)

    assert outcome.status == 130, outcome.stderr
    assert len(seen["key_lines"]) == 1
    assert seen["work_directory_existed"] is True
    assert task_key_lines(lab) == []
    assert not os.path.exists(str(seen["work_directory"]))
    assert volume not in volumes_on(h2)
    assert staging_volumes(h2) == []


def test_private_key_never_stored_or_logged(lab, h1, h2, isolated_env, resources, monkeypatch, caplog):
    volume = resources.create_volume(h1)
    write_volume_tree(h1, volume, SMALL_TREE)
    keys = []
    original_generate = ddmdriver.direct.generate_task_key

    def generate_and_remember(comment):
        keys.append(original_generate(comment))
        return keys[-1]

    monkeypatch.setattr(ddmdriver.direct, "generate_task_key", generate_and_remember)
    caplog.set_level("DEBUG")

    outcome = migrate_direct(volume)

    assert outcome.status == 0, outcome.stderr
    assert len(keys) == 1
    # The longest base64 line of the OpenSSH private key block.
    secret = max(keys[0].private_openssh.decode().splitlines(), key=len)
    task_id = json.loads(outcome.stdout)["id"]
    logs = run_command("ddmctl", "logs", task_id)
    status = run_command("ddmctl", "status", task_id, "--json")
    store_path = Path(default_store_path(os.environ))
    database = b"".join(Path(f"{store_path}{suffix}").read_bytes() for suffix in ("", "-wal")
                        if Path(f"{store_path}{suffix}").exists())
    assert len(secret) > 40
    assert secret not in outcome.stdout + outcome.stderr
    assert secret not in logs.stdout + status.stdout
    assert secret not in caplog.text
    assert secret.encode() not in database


def test_direct_verify_scans_both_hosts(lab, h1, h2, isolated_env, resources):
    volume = small_source(h1, h2, resources)

    outcome = migrate_direct(volume)

    assert outcome.status == 0, outcome.stderr
    verify, _, _ = stored_record(json.loads(outcome.stdout)["id"])
    assert verify["0"]["method"] == "host-scan"
    assert 0 < verify["0"]["wire_bytes"] < 16 * 1024


def test_direct_verify_catches_changed_xattr(lab, h1, h2, isolated_env, resources, monkeypatch):
    volume = resources.create_volume(h1)
    write_volume_tree(h1, volume, SMALL_TREE)
    original_copy = ddmsyncer.direct.copy_item

    def copy_then_set_xattr(runner, item, staging_directory, route, counter, **options):
        result = original_copy(runner, item, staging_directory, route, counter, **options)
        # The staging directory is a path in h2's mount namespace.
        h2.run([sys.executable, "-I", "-c",
                "import os, sys; os.setxattr(sys.argv[1], 'user.changed', b'1')",
                f"{staging_directory}/note.txt"])
        return result

    monkeypatch.setattr(ddmsyncer.direct, "copy_item", copy_then_set_xattr)

    outcome = migrate_direct(volume)

    assert outcome.status == 1, outcome.stdout
    assert "in 1 place: note.txt: xattrs (source none, target user.changed=1);" in outcome.stderr
    assert volume not in volumes_on(h2)
    assert staging_volumes(h2) == []
    assert task_key_lines(lab) == []


@pytest.mark.parametrize("verify, metadata_scans", [("full", 0), ("quick", 0), ("none", 1)])
def test_direct_task_stores_source_manifest(lab, h1, h2, isolated_env, resources, monkeypatch,
                                            verify, metadata_scans):
    # With verify, only the hashing scan for verify reads the source, and its manifest becomes
    # the task's record. A rollback still finds a target changed since the task.
    volume = small_source(h1, h2, resources)
    scans = []
    original_scan = ddmsyncer.direct._scan

    def counted_scan(engine, directory, hash_mode):
        scans.append(hash_mode)
        return original_scan(engine, directory, hash_mode)

    monkeypatch.setattr(ddmsyncer.direct, "_scan", counted_scan)

    outcome = migrate_direct(volume, "--verify", verify)

    assert outcome.status == 0, outcome.stderr
    assert len(scans) == metadata_scans
    task_id = json.loads(outcome.stdout)["id"]
    _, stored, item = stored_record(task_id)
    assert sorted(stored.entries) == [b".", b"data", b"data/a.bin", b"data/b.bin",
                                      b"note.txt"]
    assert stored.entries[b"data/a.bin"].size == 512 * 1024
    # With --verify full the record keeps the source scan's SHA-256 digests for the rollback.
    assert stored.hash_content is (verify == "full")
    assert item.entries == 5

    h2.run(["chmod", "0600", f"{h2.volume_mountpoint(volume)}/note.txt"])
    rejected = run_command("ddmctl", "rollback", task_id)

    compared = "content and metadata" if verify == "full" else "metadata only"
    assert rejected.status == ExitStatus.CONFLICT, rejected.stderr
    assert f"note.txt: mode), with {compared} compared" in rejected.stderr
    assert volume in volumes_on(h2)


def test_direct_rollback_keeps_rewritten_target(lab, h1, h2, isolated_env, resources):
    # A byte changed with the file's size and mtime kept is found by content, as after a
    # relayed copy with --verify full, and the rollback keeps the volume.
    volume = small_source(h1, h2, resources)
    outcome = migrate_direct(volume)
    assert outcome.status == 0, outcome.stderr
    task_id = json.loads(outcome.stdout)["id"]
    path = f"{h2.volume_mountpoint(volume)}/data/b.bin"
    h2.run([sys.executable, "-I", "-c",
            "import os, sys; path = sys.argv[1]; info = os.stat(path); "
            "data = bytearray(open(path, 'rb').read()); data[10] ^= 1; "
            "open(path, 'r+b').write(data); os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))",
            path])

    rejected = run_command("ddmctl", "rollback", task_id)

    assert rejected.status == ExitStatus.CONFLICT, rejected.stderr
    assert "data/b.bin: content), with content and metadata compared" in rejected.stderr
    assert volume in volumes_on(h2)


def test_direct_source_scan_runs_with_the_stream(lab, h1, h2, isolated_env, resources,
                                                 monkeypatch):
    # The files are written just before the copy; without this, the seed leaves them out.
    monkeypatch.setattr(hashcache, "RACY_MARGIN_NANOSECONDS", 0)
    monkeypatch.setattr(hashcache, "FINE_RACY_MARGIN_NANOSECONDS", 0)
    volume = small_source(h1, h2, resources)
    streams_ended = []
    scans = []
    original_stream, original_scan = ddmdriver.direct.stream_direct, hostverify.scan_manifest
    original_session_scan = hostverify.ScanSession.scan

    def recorded_stream(*args, **options):
        result = original_stream(*args, **options)
        streams_ended.append(True)
        return result

    def recorded_scan(engine, access, directory, **options):
        scans.append((engine.host.name, bool(streams_ended)))
        return original_scan(engine, access, directory, **options)

    def recorded_session_scan(session, **options):
        scans.append((f"{session.engine.host.name} session", bool(streams_ended)))
        return original_session_scan(session, **options)

    monkeypatch.setattr(ddmdriver.direct, "stream_direct", recorded_stream)
    monkeypatch.setattr(hostverify, "scan_manifest", recorded_scan)
    monkeypatch.setattr(hostverify.ScanSession, "scan", recorded_session_scan)

    outcome = migrate_direct(volume)

    assert outcome.status == 0, outcome.stderr
    # The target's scan ran in the session started before the stream, after the stream.
    assert sorted(scans) == [("h1", False), ("h2 session", True)]
    assert diff_snapshots(snapshot_volume_tree(h1, volume), snapshot_volume_tree(h2, volume)) == []
    # The scan's thread stored the source's hash cache rows.
    source_url = load_config(environ=os.environ).host("h1").url
    store = TaskStore(default_store_path(os.environ))
    try:
        known = hashcache.HashCache(store).load(f"{source_url} {h1.volume_mountpoint(volume)}")
        rows = {path: cached.digest for path, cached in known.items()}
    finally:
        store.close()
    mountpoint = h1.volume_mountpoint(volume)
    expected = {os.fsencode(name): hashlib.sha256(
        h1.run(["cat", f"{mountpoint}/{name}"], text=False).stdout).hexdigest()
        for name in SMALL_TREE}
    assert rows == expected


def test_direct_fallback_verify_stores_manifest(lab, h1, h2, isolated_env, resources,
                                                monkeypatch):
    # Without the python3 probe, verify falls back to the metadata scans of both hosts.
    volume = small_source(h1, h2, resources)
    monkeypatch.setattr(hostverify.PythonProbes, "available", lambda self, engine, access: False)

    outcome = migrate_direct(volume)

    assert outcome.status == 0, outcome.stderr
    verify, stored, _ = stored_record(json.loads(outcome.stdout)["id"])
    assert verify["0"]["method"] == "direct-metadata-scan"
    assert sorted(stored.entries) == [b".", b"data", b"data/a.bin", b"data/b.bin",
                                      b"note.txt"]
    assert diff_snapshots(snapshot_volume_tree(h1, volume), snapshot_volume_tree(h2, volume)) == []
