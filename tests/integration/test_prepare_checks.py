"""Checks of the prepare phase that depend on the data path or on the target's containers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.integration.test_migrate_volumes import run_command, volumes_on
from tests.lab.resources import unique_name
from tests.lab.tree import snapshot_volume_tree, write_volume_tree

MIB = 1 << 20


def file_facts(host, path: str) -> tuple[str, int, int]:
    """Return the SHA-256, apparent size and allocated bytes of a file on a lab host."""
    digest = host.run(["sha256sum", "--", path]).stdout.split()[0]
    size, blocks = host.run(["stat", "--format=%s %b", "--", path]).stdout.split()
    return digest, int(size), int(blocks) * 512


def test_sparse_file_needs_allocated_space(h1, h2, isolated_env, resources, monkeypatch):
    from ddmsyncer import volumes as volume_steps

    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    path = f"{h1.volume_mountpoint(volume)}/sparse.img"
    # 256 MiB apparent, with 4 KiB of data at 100 MiB and the rest holes.
    h1.run(["sh", "-c", 'printf "data in a sparse file" | dd of="$1" bs=4096 seek=25600 '
            'conv=notrunc,sync status=none && truncate -s 256M "$1"', "sh", path])
    source_digest, source_size, source_allocated = file_facts(h1, path)
    assert source_size == 256 * MIB
    assert source_allocated < MIB
    # The target reports 64 MiB free beyond the margin: less than the apparent size, more
    # than the allocated size.
    monkeypatch.setattr(volume_steps.FreeSpaceQuery, "result",
                        lambda query: 64 * MIB + volume_steps.SPACE_MARGIN_BYTES)

    planned = run_command("ddmctl", "plan", "--from", "h1", "--to", "h2", "--volume", volume,
                          "--probe-size", "0", "--json")
    assert planned.status == 0, planned.stderr
    plan = json.loads(planned.stdout)
    assert plan["objects"][0]["data_path"] == "host"
    assert plan["objects"][0]["size_bytes"] < MIB
    assert plan["conflicts"] == []

    outcome = run_command("ddmctl", "migrate", "--from", "h1", "--to", "h2", "--volume", volume,
                          "--data-path", "host", "--yes", "--json")

    assert outcome.status == 0, outcome.stderr
    assert json.loads(outcome.stdout)["volumes"][0]["state"] == "verified"
    target_digest, target_size, target_allocated = file_facts(
        h2, f"{h2.volume_mountpoint(volume)}/sparse.img")
    assert target_digest == source_digest
    assert target_size == source_size
    assert target_allocated < MIB


def error_line(stderr: str) -> str:
    (line,) = [line for line in stderr.splitlines() if line.startswith("ddmctl: error: ")]
    return line


def used_target_line(volume: str, user: str) -> str:
    """Return the error line of a --force replacement of `volume` on h2, which `user` uses."""
    return (f"ddmctl: error: volume {volume!r} on host 'h2' is used by containers: {user}, so "
            "--force cannot replace it (Docker does not remove a volume in use); the volume is "
            "unchanged; remove those containers on h2 (stop running ones first), or choose "
            f"another target name with --volume {volume}:NEW_NAME, then run the migration again")


def force_plan_conflict(volume: str) -> dict[str, Any]:
    """Plan and dry-run replacing `volume` from h1 on h2 with --force; return the one conflict.

    Both commands must exit 1, and the plan must still list the volume as replaced.
    """
    request = ("--from", "h1", "--to", "h2", "--volume", volume, "--force")
    planned = run_command("ddmctl", "plan", *request, "--probe-size", "0", "--json")
    dry_run = run_command("ddmctl", "migrate", *request, "--dry-run")

    assert planned.status == 1, planned.stderr
    assert dry_run.status == 1, dry_run.stderr
    plan = json.loads(planned.stdout)
    assert plan["ok"] is False
    assert plan["objects"][0]["action"] == "replace"
    (conflict,) = plan["conflicts"]
    assert conflict["kind"] == "volume"
    assert conflict["object"] == volume
    assert conflict["error"] == "TargetExists"
    assert f"  volume {volume}: {conflict['message']}" in dry_run.stdout.splitlines()
    return conflict


def test_force_rejects_target_used_by_container(h1, h2, isolated_env, resources):
    volume = resources.create_volume(h1)
    resources.create_volume(h2, volume)
    write_volume_tree(h1, volume, {"new.txt": "from the source\n"})
    write_volume_tree(h2, volume, {"old.txt": "already on the target\n"})
    # A created container that never ran uses the volume as much as a running one.
    user = unique_name("user")
    resources.create_container(h2, volumes={volume: "/data"}, name=user)
    target_before = snapshot_volume_tree(h2, volume)
    volumes_before = volumes_on(h2)

    outcome = run_command("ddmctl", "migrate", "--from", "h1", "--to", "h2", "--volume", volume,
                          "--force", "--yes")

    assert outcome.status == 1
    assert error_line(outcome.stderr) == used_target_line(volume, user)
    assert volumes_on(h2) == volumes_before
    assert not [name for name in volumes_on(h2) if name.startswith("ddm-staging-")]
    assert snapshot_volume_tree(h2, volume) == target_before


def test_plan_reports_used_force_target(h1, h2, isolated_env, resources):
    # plan and migrate --dry-run run the prepare phase's in-use check too, with its wording.
    volume = resources.create_volume(h1)
    resources.create_volume(h2, volume)
    write_volume_tree(h2, volume, {"old.txt": "already on the target\n"})
    user = unique_name("user")
    resources.create_container(h2, volumes={volume: "/data"}, name=user)
    target_before = snapshot_volume_tree(h2, volume)

    conflict = force_plan_conflict(volume)
    outcome = run_command("ddmctl", "migrate", "--from", "h1", "--to", "h2", "--volume", volume,
                          "--force", "--yes")

    assert f"ddmctl: error: {conflict['message']}" == used_target_line(volume, user)
    assert outcome.status == 1
    assert error_line(outcome.stderr) == used_target_line(volume, user)
    assert snapshot_volume_tree(h2, volume) == target_before


# The container appears after prepare: before promote starts, or only after promote's mount
# check, just before it removes the old volume.
@pytest.mark.parametrize("created_before", ["promote", "removal"])
def test_promote_rejects_late_target_user(h1, h2, isolated_env, resources,
                                          monkeypatch, created_before):
    from ddmdriver.engine import Engine
    from ddmsyncer.staged import StagedVolumes

    volume = resources.create_volume(h1)
    resources.create_volume(h2, volume)
    write_volume_tree(h1, volume, {"new.txt": "from the source\n"})
    write_volume_tree(h2, volume, {"old.txt": "already on the target\n"})
    source_before = snapshot_volume_tree(h1, volume)
    target_before = snapshot_volume_tree(h2, volume)
    volumes_before = volumes_on(h2)
    user = unique_name("late-user")

    def add_user() -> None:
        resources.create_container(h2, volumes={volume: "/data"}, name=user)

    if created_before == "promote":
        original_promote = StagedVolumes.promote

        def promote(staged, *args, **kwargs):
            add_user()
            return original_promote(staged, *args, **kwargs)

        monkeypatch.setattr(StagedVolumes, "promote", promote)
    else:
        original_remove = Engine.volume_remove

        def volume_remove(engine, name):
            if engine.host.name == "h2" and name == volume:
                add_user()
            return original_remove(engine, name)

        monkeypatch.setattr(Engine, "volume_remove", volume_remove)

    outcome = run_command("ddmctl", "migrate", "--from", "h1", "--to", "h2", "--volume", volume,
                          "--force", "--yes", "--json")

    assert outcome.status == 1
    task = json.loads(outcome.stdout)
    assert task["state"] == "failed"
    assert task["error"]["error"] == "TargetExists"
    assert error_line(outcome.stderr) == used_target_line(volume, user)
    assert error_line(outcome.stderr) == f"ddmctl: error: {task['error']['message']}"
    assert volumes_on(h2) == volumes_before
    assert snapshot_volume_tree(h2, volume) == target_before
    assert snapshot_volume_tree(h1, volume) == source_before


def test_rollback_keeps_foreign_target(h1, h2, isolated_env, resources, monkeypatch):
    """A volume of the target name created between prepare and promote is not the task's."""
    from ddmsyncer import volumes as volume_steps

    volume = resources.create_volume(h1)
    write_volume_tree(h1, volume, {"new.txt": "from the source\n"})
    source_before = snapshot_volume_tree(h1, volume)
    original_create = volume_steps.create_target_volume
    other_client: list = []

    def create_target_volume(target, item, check):
        resources.create_volume(h2, volume)
        write_volume_tree(h2, volume, {"other.txt": "another client's data\n"})
        other_client.append(snapshot_volume_tree(h2, volume))
        return original_create(target, item, check)

    monkeypatch.setattr(volume_steps, "create_target_volume", create_target_volume)

    outcome = run_command("ddmctl", "migrate", "--from", "h1", "--to", "h2", "--volume", volume,
                          "--yes", "--json")

    assert outcome.status == 1
    # The rollback kept the other client's volume and its data.
    assert snapshot_volume_tree(h2, volume) == other_client[0]
    task = json.loads(outcome.stdout)
    assert task["state"] == "failed"
    assert task["error"]["error"] == "TargetExists"
    assert f"volume {volume!r} appeared on h2 before DDM could create it" in task["error"]["message"]
    assert snapshot_volume_tree(h1, volume) == source_before


def test_plan_reports_locked_volume(h1, h2, isolated_env, resources):
    """plan and migrate --dry-run list the lock conflict that the real run exits 6 with."""
    from tests.integration.operator_support import hold_lock

    volume = resources.create_volume(h1)
    holder = "c" * 12
    hold_lock(f"h2/volume/{volume}", holder)
    line = (f"h2/volume/{volume} is held by task {holder}, which is running; wait for it to "
            f"end or cancel it ('ddmctl cancel {holder}' stops it and rolls it back), then "
            "try again")

    request = ("--from", "h1", "--to", "h2", "--volume", volume)
    planned = run_command("ddmctl", "plan", *request, "--probe-size", "0", "--json")
    dry_run = run_command("ddmctl", "migrate", *request, "--dry-run")
    real = run_command("ddmctl", "migrate", *request, "--yes")

    assert planned.status == 1, planned.stderr
    (conflict,) = json.loads(planned.stdout)["conflicts"]
    assert (conflict["object"], conflict["error"], conflict["message"]) == (
        volume, "TaskConflict", line)
    assert dry_run.status == 1
    assert f"  volume {volume}: {line}" in dry_run.stdout.splitlines()
    assert real.status == 6
    assert error_line(real.stderr) == f"ddmctl: error: {line}"


def test_engine_lock_covers_other_host_name(h1, h2, isolated_env, resources):
    """A lock on the target engine's volume, taken through another host name, stops the task."""
    from tests.integration.operator_support import hold_engine_lock

    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, {"a.txt": "a\n"})
    source_before = snapshot_volume_tree(h1, volume)
    holder = "e" * 12
    engine_id = hold_engine_lock(h2, volume, holder)

    line = (f"volume {volume!r} on Docker engine {engine_id} (also reached under another host "
            f"name) is held by task {holder}, which is running; "
            f"wait for it to end or cancel it ('ddmctl cancel {holder}' stops it and rolls it "
            "back), then try again")

    planned = run_command("ddmctl", "plan", "--from", "h1", "--to", "h2", "--volume", volume,
                          "--probe-size", "0", "--json")
    outcome = run_command("ddmctl", "migrate", "--from", "h1", "--to", "h2", "--volume", volume,
                          "--yes")

    assert planned.status == 1, planned.stderr
    assert [conflict["message"] for conflict in json.loads(planned.stdout)["conflicts"]] == [line]
    assert outcome.status == 6, outcome.stderr
    assert error_line(outcome.stderr) == f"ddmctl: error: {line}"
    assert volume not in volumes_on(h2)
    assert snapshot_volume_tree(h1, volume) == source_before


# A probe thread that connected again after the runner closed its engines failed here.
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_plan_rejects_source_as_target_on_one_engine(h2, isolated_env, resources):
    """Two host names for one engine: plan reports what prepare rejects, also with --force."""
    import yaml

    config = yaml.safe_load(isolated_env.config_path.read_text())
    config["hosts"]["h2alias"] = dict(config["hosts"]["h2"])
    isolated_env.config_path.write_text(yaml.safe_dump(config))
    volume = resources.create_volume(h2)

    request = ("--from", "h2alias", "--to", "h2", "--volume", volume, "--force")
    planned = run_command("ddmctl", "plan", *request, "--probe-size", "0", "--json")
    real = run_command("ddmctl", "migrate", *request, "--yes")

    assert planned.status == 1, planned.stderr
    (conflict,) = json.loads(planned.stdout)["conflicts"]
    assert conflict["error"] == "UsageError"
    assert conflict["message"].startswith(
        f"volume {volume!r} is both a source and a target: hosts 'h2alias' and 'h2' are the "
        "same Docker engine")
    assert real.status == 2
    assert error_line(real.stderr).startswith(
        f"ddmctl: error: volume {volume!r} is both a source and a target")
    assert volume in volumes_on(h2)
