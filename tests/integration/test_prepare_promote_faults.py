"""Faults in the concurrent prepare and in the one-command promote still roll the task back."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

import ddmdriver.hostpath
from ddmsyncer import hostverify
from ddmsyncer import runner as runner_module
from tests.integration.commands import run_command
from tests.lab import Lab, LabHost
from tests.lab.resources import LabResources, unique_name
from tests.lab.tree import snapshot_volume_tree


def volumes_on(host: LabHost) -> list[str]:
    return host.docker("volume", "ls", "--quiet").stdout.split()


def filled_source(h1: LabHost, resources: LabResources) -> str:
    source = resources.create_volume(h1)
    root = h1.volume_host_path(source)
    (root / "data.bin").write_bytes(os.urandom(256 * 1024))
    (root / "notes.txt").write_bytes(b"notes\n")
    return source


def test_failed_move_rolls_back(lab: Lab, h1: LabHost, h2: LabHost, resources: LabResources,
                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A file appears in the new volume's directory just before the move, so the rename onto
    # it fails on the target host ("Directory not empty"), whichever command does the move.
    def add_blocker(directory: str) -> None:
        h2.run(["sh", "-c", 'echo blocker > "$1/blocker"', "sh", directory])

    original_session_move = hostverify.ScanSession.move
    original_move_directory = ddmdriver.hostpath.move_directory

    def session_move(session: hostverify.ScanSession, target_directory: str) -> None:
        add_blocker(target_directory)
        original_session_move(session, target_directory)

    def move_directory(engine: Any, access: Any, source_directory: str,
                       target_directory: str) -> None:
        add_blocker(target_directory)
        original_move_directory(engine, access, source_directory, target_directory)

    monkeypatch.setattr(hostverify.ScanSession, "move", session_move)
    monkeypatch.setattr(ddmdriver.hostpath, "move_directory", move_directory)
    source = filled_source(h1, resources)
    source_before = snapshot_volume_tree(h1, source)
    target = unique_name("moved")
    resources.add_volume(h2, target)
    volumes_before = volumes_on(h2)

    result = run_command(lab, tmp_path, "ddmctl", "migrate", "--from", "h1", "--to", "h2",
                         "--volume", f"{source}:{target}", "--data-path", "host", "--yes")

    assert result.status == 1, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "mv failed" in line]
    assert len(error_lines) == 1
    assert "not empty" in error_lines[0]
    assert volumes_on(h2) == volumes_before
    assert snapshot_volume_tree(h1, source) == source_before


@pytest.mark.parametrize("down", ["h1", "h2"])
def test_unreachable_host_fails_prepare(lab: Lab, h1: LabHost, h2: LabHost,
                                        resources: LabResources, tmp_path: Path,
                                        down: str) -> None:
    source = filled_source(h1, resources)
    target = unique_name("unreached")
    resources.add_volume(h2, target)
    volumes_before = volumes_on(h2)
    unreachable = h1 if down == "h1" else h2

    unreachable.stop_sshd()
    try:
        result = run_command(lab, tmp_path, "ddmctl", "migrate", "--from", "h1", "--to", "h2",
                             "--volume", f"{source}:{target}", "--yes")
    finally:
        unreachable.start_sshd()

    last_line = result.stderr.strip().splitlines()[-1]
    assert result.status == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert "paramiko" not in result.stderr
    assert down in last_line
    assert "SSH" in last_line
    assert volumes_on(h2) == volumes_before
    listed = json.loads(run_command(lab, tmp_path, "ddmctl", "list", "--json").stdout)
    # Nothing was created on either host, so there is nothing to undo: the task failed.
    assert listed[0]["state"] == "failed"
    assert down in listed[0]["error"]["message"]


def test_connection_lost_mid_copy_rolls_back(lab: Lab, h1: LabHost, h2: LabHost,
                                             resources: LabResources, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    sources = [filled_source(h1, resources) for _ in range(3)]
    sources_before = {name: snapshot_volume_tree(h1, name) for name in sources}
    targets = [unique_name("lost") for _ in sources]
    for target in targets:
        resources.add_volume(h2, target)
    volumes_before = volumes_on(h2)

    # Every SSH connection to h2 breaks once the first volume has sent its first bytes, as
    # when the host's sshd stops and takes its sessions along. The rollback connects again.
    cut: list[int] = []
    add = runner_module._ProgressCounter.add

    first_call = threading.Lock()

    def add_then_cut(counter: runner_module._ProgressCounter, count: int) -> None:
        # Several volumes count progress from their own threads; only the first one cuts.
        with first_call:
            if not cut:
                cut.append(h2.cut_connections())
        add(counter, count)

    monkeypatch.setattr(runner_module._ProgressCounter, "add", add_then_cut)
    mappings = [argument for source, target in zip(sources, targets)
                for argument in ("--volume", f"{source}:{target}")]

    result = run_command(lab, tmp_path, "ddmctl", "migrate", "--from", "h1", "--to", "h2",
                         *mappings, "--parallel", "3", "--yes")

    assert cut and cut[0] >= 1
    assert result.status == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert "paramiko" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "ddmctl: error:" in line]
    assert len(error_lines) == 1
    assert "SSH connection to host 'h2' broke during the copy phase" in error_lines[0]
    assert "the target was rolled back" in error_lines[0]
    assert "run the migration again" in error_lines[0]
    assert volumes_on(h2) == volumes_before
    for name in sources:
        assert snapshot_volume_tree(h1, name) == sources_before[name]


def test_host_down_mid_copy_then_rollback(lab: Lab, h1: LabHost, h2: LabHost,
                                          resources: LabResources, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    sources = [filled_source(h1, resources) for _ in range(2)]
    sources_before = {name: snapshot_volume_tree(h1, name) for name in sources}
    targets = [unique_name("down") for _ in sources]
    for target in targets:
        resources.add_volume(h2, target)
    volumes_before = volumes_on(h2)

    # h2 stops taking SSH connections and drops the open ones, so the rollback cannot reach it.
    stopped: list[bool] = []
    add = runner_module._ProgressCounter.add

    first_call = threading.Lock()

    def add_then_stop(counter: runner_module._ProgressCounter, count: int) -> None:
        with first_call:
            if not stopped:
                stopped.append(True)
                h2.stop_relay()
        add(counter, count)

    monkeypatch.setattr(runner_module._ProgressCounter, "add", add_then_stop)
    mappings = [argument for source, target in zip(sources, targets)
                for argument in ("--volume", f"{source}:{target}")]
    try:
        result = run_command(lab, tmp_path, "ddmctl", "migrate", "--from", "h1", "--to", "h2",
                             *mappings, "--parallel", "2", "--yes", "--json")
    finally:
        h2.start_relay()
    monkeypatch.undo()
    document = json.loads(result.stdout)
    rollback = run_command(lab, tmp_path, "ddmctl", "rollback", document["id"])

    assert stopped
    assert result.status == 3, result.stderr
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "ddmctl: error:" in line]
    assert len(error_lines) == 1
    assert "SSH connection to host 'h2' broke during the copy phase" in error_lines[0]
    assert f"'ddmctl rollback {document['id']}'" in error_lines[0]
    assert document["state"] == "interrupted"
    assert document["error"]["error"] == "ConnectionLost"
    assert document["error"]["exit_status"] == 3
    assert rollback.status == 0, rollback.stderr
    assert volumes_on(h2) == volumes_before
    for name in sources:
        assert snapshot_volume_tree(h1, name) == sources_before[name]


def test_rollback_stopped_by_used_volume(lab: Lab, h1: LabHost, h2: LabHost,
                                         resources: LabResources, tmp_path: Path) -> None:
    sources = [filled_source(h1, resources) for _ in range(2)]
    targets = [unique_name("v1c"), unique_name("v2c")]
    for target in targets:
        resources.add_volume(h2, target)
    migrated = run_command(lab, tmp_path, "ddmctl", "migrate", "--from", "h1", "--to", "h2",
                           "--volume", f"{sources[0]}:{targets[0]}",
                           "--volume", f"{sources[1]}:{targets[1]}", "--yes", "--json")
    assert migrated.status == 0, migrated.stderr
    task_id = json.loads(migrated.stdout)["id"]
    user = unique_name("user")
    resources.create_container(h2, volumes={targets[1]: "/data"}, name=user)

    stopped = run_command(lab, tmp_path, "ddmctl", "rollback", task_id)
    again = run_command(lab, tmp_path, "ddmctl", "rollback", task_id, "--json")
    resumed = run_command(lab, tmp_path, "ddmctl", "resume", task_id)
    resumed_json = run_command(lab, tmp_path, "ddmctl", "resume", task_id, "--json")

    assert stopped.status == 1, stopped.stderr
    assert stopped.stdout.splitlines() == [
        f"{sources[0]}\t{targets[0]}\tremoved",
        f"{sources[1]}\t{targets[1]}\tremaining\tDocker rejected removing it: removing volume "
        f"{targets[1]!r} from h2 failed because container {user!r} uses it; remove that "
        "container on h2 (stopping it is not enough, because Docker keeps the volumes of "
        f"stopped containers), then run 'ddmctl rollback {task_id}' again",
    ]
    error_line = stopped.stderr.strip().splitlines()[-1]
    assert targets[1] in error_line
    assert user in error_line
    assert f"ddmctl rollback {task_id}" in error_line
    assert again.status == 1, again.stderr
    outcomes = [volume["rollback"] for volume in json.loads(again.stdout)["volumes"]]
    assert [outcome["outcome"] for outcome in outcomes] == ["removed", "remaining"]
    assert outcomes[1]["reason"].startswith("Docker rejected removing it: removing volume")
    assert resumed.status == 6, resumed.stderr
    assert resumed.stdout == ""
    assert resumed.stderr.count("ddmctl: error:") == 1
    assert f"ddmctl rollback {task_id}" in resumed.stderr
    assert resumed_json.status == 6, resumed_json.stderr
    assert resumed_json.stdout == ""
    assert targets[0] not in volumes_on(h2)

    h2.stop_sshd()
    try:
        unreachable = run_command(lab, tmp_path, "ddmctl", "rollback", task_id)
    finally:
        h2.start_sshd()
    h2.docker("rm", "--force", user)
    finished = run_command(lab, tmp_path, "ddmctl", "rollback", task_id)

    assert unreachable.status == 3, unreachable.stderr
    assert f"ddmctl rollback {task_id}" in unreachable.stderr.strip().splitlines()[-1]
    assert finished.status == 0, finished.stderr
    assert f"{sources[1]}\t{targets[1]}\tremoved" in finished.stdout.splitlines()
    assert targets[1] not in volumes_on(h2)
    assert set(sources) <= set(volumes_on(h1))
