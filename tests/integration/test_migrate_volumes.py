"""Volume migration end to end on the lab: the commands against two real Docker hosts over SSH.

Every tree is written and read from outside the containers (tests.lab.tree), so the checks do
not depend on the Docker archive API that DDM itself uses.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from ddm import api
from ddm.config import load_config
from ddm.env import Environment
from ddm.errors import Cancelled, TransferFailed
from ddm.events import Event, Progress
from ddm.store import TaskStore, default_store_path
from ddm.task import ItemState, TaskState
from ddmctl.common import run_main
from tests.lab.resources import unique_name
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

WHOLE_SECONDS = 1_000_000_000

RICH_TREE = {
    ".": Dir(mode=0o700, uid=999, gid=999),
    "a/b/c/deep.txt": "nested\n",
    "a/b/empty": Dir(),
    "data.bin": RandomFile(3 << 20, seed=7),
    "hard-1": File(b"shared inode\n"),
    "a/hard-2": HardLink("hard-1"),
    "abs-link": Symlink("/etc/passwd"),
    "dangling": Symlink("does/not/exist"),
    "rel-link": Symlink("a/b/c/deep.txt"),
    "big-ids": File(b"owner above the ustar limit\n", uid=3_000_000, gid=3_000_001),
    "setuid": File(b"#!/bin/sh\n", mode=0o4755),
    "sticky": Dir(mode=0o1777),
    "fifo": Fifo(mode=0o640),
    b"latin1-\xe9-\xff": b"a name that is not UTF-8\n",
    "n" * 200: "a 200-byte name\n",
    "empty-dir": Dir(mode=0o750, uid=12, gid=34),
}


@dataclass(frozen=True)
class Outcome:
    status: int
    stdout: str
    stderr: str


def run_command(prog: str, *args: str) -> Outcome:
    """Run a DDM command in-process with the test's environment; capture its streams."""
    module = __import__(f"{prog}.cli", fromlist=["cli"])
    stdout, stderr = io.StringIO(), io.StringIO()
    env = Environment(stdin=io.StringIO(), stdout=stdout, stderr=stderr,
                      environ=dict(os.environ), stdin_isatty=False, stdout_isatty=False,
                      stderr_isatty=False)
    status = run_main(module.cli, list(args), env=env, prog_name=prog)
    return Outcome(status, stdout.getvalue(), stderr.getvalue())


def volumes_on(host) -> set[str]:
    return set(host.docker("volume", "ls", "-q").stdout.split())


def containers_on(host) -> set[str]:
    return set(host.docker("ps", "-aq").stdout.split())


def open_store() -> TaskStore:
    return TaskStore(default_store_path(os.environ))


def test_migrate_rich_tree_keeps_every_aspect(h1, h2, isolated_env, resources):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, RICH_TREE)
    source_before = snapshot_volume_tree(h1, volume)

    outcome = run_command("ddmctl", "migrate", "--from", "h1", "--to", "h2", "--volume", volume,
                          "--yes", "--json")

    assert outcome.status == 0, outcome.stderr
    task = json.loads(outcome.stdout)
    assert task["state"] == "succeeded"
    assert task["volumes"][0]["state"] == "verified"
    target = snapshot_volume_tree(h2, volume)
    assert diff_snapshots(source_before, target, mtime_resolution_ns=WHOLE_SECONDS) == []
    assert target[b"."].uid == 999
    assert target[b"."].mode & 0o7777 == 0o700
    assert target[b"hard-1"].hardlink_group == target[b"a/hard-2"].hardlink_group
    assert target[b"hard-1"].hardlink_group is not None
    assert target[b"big-ids"].uid == 3_000_000
    assert snapshot_volume_tree(h1, volume) == source_before


def test_migrate_rename_with_src_dst(h1, h2, isolated_env, resources):
    source = resources.create_volume(h1, labels={"app": "db"})
    target = unique_name("renamed")
    resources.add_volume(h2, target)
    write_volume_tree(h1, source, {"x/y.txt": "renamed on the way\n"})

    outcome = run_command("ddmctl", "migrate", "--from", "h1", "--to", "h2", "--volume",
                          f"{source}:{target}", "--yes")

    assert outcome.status == 0, outcome.stderr
    assert target in volumes_on(h2)
    assert source not in volumes_on(h2)
    labels = json.loads(h2.docker("volume", "inspect", target).stdout)[0]["Labels"]
    assert labels == {"app": "db"}
    assert diff_snapshots(snapshot_volume_tree(h1, source), snapshot_volume_tree(h2, target),
                          mtime_resolution_ns=WHOLE_SECONDS) == []


def test_clone_on_one_host_through_local(h1, isolated_env, resources, monkeypatch):
    # The implicit host "local" follows DOCKER_HOST; point it at lab host h1's engine.
    monkeypatch.setenv("DOCKER_HOST", f"unix://{h1.engine_socket}")
    source = resources.create_volume(h1)
    clone = unique_name("clone")
    resources.add_volume(h1, clone)
    write_volume_tree(h1, source, {"f": "clone me\n", "d/g": RandomFile(4096, seed=1)})

    outcome = run_command("ddmctl", "migrate", "--from", "local", "--to", "local", "--volume",
                          f"{source}:{clone}", "--yes")

    assert outcome.status == 0, outcome.stderr
    assert diff_snapshots(snapshot_volume_tree(h1, source), snapshot_volume_tree(h1, clone),
                          mtime_resolution_ns=WHOLE_SECONDS) == []


def test_target_name_taken_is_refused(h1, h2, isolated_env, resources):
    volume = resources.create_volume(h1)
    resources.create_volume(h2, volume)
    write_volume_tree(h1, volume, {"new.txt": "from the source\n"})
    write_volume_tree(h2, volume, {"old.txt": "already on the target\n"})
    target_before = snapshot_volume_tree(h2, volume)
    containers_before = containers_on(h2)

    outcome = run_command("ddmctl", "migrate", "--from", "h1", "--to", "h2", "--volume", volume,
                          "--yes")

    assert outcome.status == 1
    assert "already exists" in outcome.stderr
    assert volume in outcome.stderr
    assert len(outcome.stderr.strip().splitlines()) >= 1
    assert snapshot_volume_tree(h2, volume) == target_before
    assert containers_on(h2) == containers_before


def test_target_without_room_is_refused(h1, h2, isolated_env, resources, monkeypatch):
    from ddmdriver.engine import Engine
    from ddmsyncer import volumes as volume_steps

    volume = resources.create_volume(h1)
    write_volume_tree(h1, volume, {"data.bin": RandomFile(1 << 20, seed=3)})
    # The free space comes from the target's host probe, so no separate df may run, and a
    # margin larger than any disk makes the check fail.
    monkeypatch.setattr(volume_steps, "SPACE_MARGIN_BYTES", 1 << 60)
    df_paths: list[str] = []
    monkeypatch.setattr(Engine, "free_bytes", lambda engine, path: df_paths.append(path))
    volumes_before = volumes_on(h2)

    outcome = run_command("ddmctl", "migrate", "--from", "h1", "--to", "h2", "--volume", volume,
                          "--yes")

    assert outcome.status == 1
    assert "not enough space on host 'h2'" in outcome.stderr
    assert df_paths == []
    assert volumes_on(h2) == volumes_before


def test_source_volume_missing(h1, h2, isolated_env):
    missing = unique_name("missing")
    volumes_before = volumes_on(h2)

    outcome = run_command("ddmctl", "migrate", "--from", "h1", "--to", "h2", "--volume", missing,
                          "--yes")

    assert outcome.status == 1
    assert f"volume '{missing}' not found on host 'h1'" in outcome.stderr
    assert "Traceback" not in outcome.stderr
    assert volumes_on(h2) == volumes_before


def test_unknown_host_key_is_refused(h1, h2, isolated_env, resources, tmp_path):
    empty_known_hosts = tmp_path / "known_hosts"
    empty_known_hosts.write_text("")
    config = yaml.safe_load(isolated_env.config_path.read_text())
    config["known_hosts"] = str(empty_known_hosts)
    isolated_env.config_path.write_text(yaml.safe_dump(config))
    volume = resources.create_volume(h1)

    outcome = run_command("ddmctl", "migrate", "--from", "h1", "--to", "h2", "--volume", volume,
                          "--yes")

    assert outcome.status == 4
    assert "SHA256:" in outcome.stderr
    assert "127.0.0.21" in outcome.stderr
    assert not empty_known_hosts.read_text()
    assert volume not in volumes_on(h2)


def test_wrong_key_file_is_refused(h1, h2, isolated_env, resources, tmp_path):
    wrong_key = tmp_path / "wrong_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong_key)],
                   check=True)
    config = yaml.safe_load(isolated_env.config_path.read_text())
    config["identity_file"] = str(wrong_key)
    isolated_env.config_path.write_text(yaml.safe_dump(config))

    outcome = run_command("ddmdriver", "ping", "h1")

    assert outcome.status == 5
    assert "root" in outcome.stderr
    assert str(wrong_key) in outcome.stderr
    assert wrong_key.read_text().split("\n")[1] not in outcome.stderr


def test_ddmverify_detects_flipped_byte(h1, h2, isolated_env, resources):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, {"keep.txt": "unchanged\n", "flip.bin": RandomFile(65536, seed=3)})
    assert run_command("ddmctl", "migrate", "--from", "h1", "--to", "h2", "--volume", volume,
                       "--yes").status == 0

    matching = run_command("ddmverify", "--from", "h1", "--to", "h2", "--volume", volume,
                           "--deep", "--json")
    assert matching.status == 0, matching.stderr
    assert json.loads(matching.stdout)["match"] is True

    path = f"{h2.volume_mountpoint(volume)}/flip.bin"
    # Flip one bit and put the old mtime back, so only the content differs.
    h2.run([sys.executable, "-c",
            "import os, sys\n"
            "path = sys.argv[1]\n"
            "before = os.stat(path)\n"
            "with open(path, 'r+b') as f:\n"
            "    f.seek(40000); b = f.read(1); f.seek(40000); f.write(bytes([b[0] ^ 1]))\n"
            "os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))\n",
            path])

    differing = run_command("ddmverify", "--from", "h1", "--to", "h2", "--volume", volume,
                            "--deep", "--json")

    assert differing.status == 1
    report = json.loads(differing.stdout)
    assert report["match"] is False
    assert report["volumes"][0]["differences"] == [
        {"path": "flip.bin", "aspect": "content",
         "source": report["volumes"][0]["differences"][0]["source"],
         "target": report["volumes"][0]["differences"][0]["target"]},
    ]
    assert report["volumes"][0]["differences"][0]["source"] != \
        report["volumes"][0]["differences"][0]["target"]


def test_copy_failing_midway_rolls_back(h1, h2, isolated_env, resources):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, {f"f{index}": RandomFile(1 << 20, seed=index)
                                   for index in range(8)})
    source_before = snapshot_volume_tree(h1, volume)
    config = load_config(environ=os.environ)
    store = open_store()
    task = api.create_task(store, config, source="h1", target="h2", volumes=[volume])

    def fail_midway(event: Event) -> None:
        if isinstance(event, Progress) and event.bytes_done > (2 << 20):
            raise TransferFailed("injected failure in the middle of the copy")

    with pytest.raises(TransferFailed):
        api.run_task(config, store, task.id, on_event=fail_midway)

    stored = store.get_task(task.id)
    assert stored.state is TaskState.FAILED
    assert stored.items[0].state is ItemState.ROLLED_BACK
    assert volume not in volumes_on(h2)
    assert not [name for name in containers_on(h2)
                if "ddm.task" in h2.docker("inspect", name).stdout]
    assert snapshot_volume_tree(h1, volume) == source_before


def test_task_commands_list_status_rollback(h1, h2, isolated_env, resources):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, {"f": "listed\n"})
    migrated = run_command("ddmctl", "migrate", "--from", "h1", "--to", "h2", "--volume", volume,
                           "--yes", "--json")
    task_id = json.loads(migrated.stdout)["id"]

    listed = json.loads(run_command("ddmctl", "list", "--json").stdout)
    status = run_command("ddmctl", "status", task_id, "--json")
    rolled_back = run_command("ddmctl", "rollback", task_id, "--json")

    assert task_id in [task["id"] for task in listed]
    assert json.loads(status.stdout)["state"] == "succeeded"
    assert rolled_back.status == 0, rolled_back.stderr
    assert json.loads(rolled_back.stdout)["state"] == "rolled_back"
    assert volume not in volumes_on(h2)
    assert volume in volumes_on(h1)


def test_status_of_unknown_task(isolated_env):
    outcome = run_command("ddmctl", "status", "0123456789ab")

    assert outcome.status == 2
    assert "not found" in outcome.stderr


def test_ddmdriver_ping_and_manifest(h1, isolated_env, resources):
    volume = resources.create_volume(h1)
    write_volume_tree(h1, volume, {"one": "1\n", "sub/two": "22\n"})

    ping = run_command("ddmdriver", "ping", "h1", "--json")
    manifest = run_command("ddmdriver", "manifest", "h1", volume, "--json")

    assert ping.status == 0, ping.stderr
    assert json.loads(ping.stdout)["api_version"]
    assert manifest.status == 0, manifest.stderr
    text = manifest.stdout
    assert "one" in text
    assert "sub/two" in text


def test_syncer_runs_stored_task_in_subprocess(h1, h2, isolated_env, resources):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, {"f": RandomFile(1 << 20, seed=11)})
    config = load_config(environ=os.environ)
    store = open_store()
    task = api.create_task(store, config, source="h1", target="h2", volumes=[volume])

    completed = subprocess.run([sys.executable, "-m", "ddmsyncer.cli", "run", task.id],
                               capture_output=True, text=True, timeout=300)

    assert completed.returncode == 0, completed.stderr
    assert store.get_task(task.id).state is TaskState.SUCCEEDED
    assert diff_snapshots(snapshot_volume_tree(h1, volume), snapshot_volume_tree(h2, volume),
                          mtime_resolution_ns=WHOLE_SECONDS) == []


def wait_for_copy_start(store: TaskStore, task_id: str, process: subprocess.Popen) -> None:
    """Poll the store until the task's first volume is being copied (bounded by count)."""
    for _ in range(600):
        items = store.get_items(task_id) if task_id else []
        if items and items[0].state is ItemState.COPYING:
            return
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} did not start copying")


def test_ctrl_c_during_copy_rolls_back(h1, h2, isolated_env, resources):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, {f"f{index}": RandomFile(4 << 20, seed=index)
                                   for index in range(8)})
    source_before = snapshot_volume_tree(h1, volume)
    config = load_config(environ=os.environ)
    store = open_store()
    task = api.create_task(store, config, source="h1", target="h2", volumes=[volume])

    process = subprocess.Popen([sys.executable, "-m", "ddmsyncer.cli", "run", task.id],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_copy_start(store, task.id, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)

    assert process.returncode == 130, stderr
    assert "interrupted" in stderr
    assert f"task {task.id} stopped by an interrupt and is now failed" in stderr
    stored = store.get_task(task.id)
    assert stored.state is TaskState.FAILED
    assert stored.error["message"] == "interrupted"
    assert volume not in volumes_on(h2)
    assert snapshot_volume_tree(h1, volume) == source_before


def test_cancel_from_another_store_rolls_back(h1, h2, isolated_env, resources):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, {f"f{index}": RandomFile(4 << 20, seed=index)
                                   for index in range(4)})
    config = load_config(environ=os.environ)
    store = open_store()
    task = api.create_task(store, config, source="h1", target="h2", volumes=[volume])
    other_terminal = open_store()
    cancelled = []

    def cancel_on_first_progress(event: Event) -> None:
        if isinstance(event, Progress) and not cancelled:
            cancelled.append(api.cancel_task(other_terminal, task.id).control)

    with pytest.raises(Cancelled):
        api.run_task(config, store, task.id, on_event=cancel_on_first_progress)

    assert cancelled == ["cancel"]
    assert store.get_task(task.id).state is TaskState.CANCELLED
    assert volume not in volumes_on(h2)


def test_resume_requires_interrupted_task(h1, h2, isolated_env, resources):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, {"f": "done\n"})
    migrated = run_command("ddmctl", "migrate", "--from", "h1", "--to", "h2", "--volume", volume,
                           "--yes", "--json")
    task_id = json.loads(migrated.stdout)["id"]

    resumed = run_command("ddmctl", "resume", task_id)

    assert resumed.status == 6
    assert "only an interrupted task can be resumed" in resumed.stderr


def test_terminal_shows_bars_and_stdout_stays_data(h1, h2, isolated_env, resources):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, {"f": RandomFile(2 << 20, seed=5)})
    stdout, stderr = io.StringIO(), io.StringIO()
    env = Environment(stdin=io.StringIO(), stdout=stdout, stderr=stderr, environ=dict(os.environ),
                      stdin_isatty=False, stdout_isatty=True, stderr_isatty=True)
    module = __import__("ddmctl.cli", fromlist=["cli"])

    status = run_main(module.cli, ["migrate", "--from", "h1", "--to", "h2", "--volume", volume,
                                   "--yes"], env=env, prog_name="ddmctl")

    assert status == 0, stderr.getvalue()
    assert f"{volume} → {volume}" in stderr.getvalue()
    assert "MiB" in stderr.getvalue()
    assert stdout.getvalue().split("\t")[:3] == [volume, volume, "verified"]


def test_json_progress_lines_on_stderr(h1, h2, isolated_env, resources):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, {"f": "json\n"})

    outcome = run_command("ddmctl", "migrate", "--from", "h1", "--to", "h2", "--volume", volume,
                          "--yes", "--json")

    events = [json.loads(line) for line in outcome.stderr.splitlines() if line.startswith("{")]
    kinds = [event["event"] for event in events]
    assert "PhaseStarted" in kinds
    assert kinds[-1] == "TaskFinished"
    assert json.loads(outcome.stdout)["state"] == "succeeded"
