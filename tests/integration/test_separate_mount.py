"""Target volumes whose data directory, or a directory in it, is a mount of its own on h2.

An operator may mount a disk onto /var/lib/docker/volumes/NAME/_data. rename(2) cannot move
entries between mounts (EXDEV), and DDM renames in two places: the incremental update moves
changed entries into a backup directory beside _data, and a full copy renames the staging
volume's directory onto the new volume's. The mounts are made in h2's mount namespace only.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator

import pytest

from tests.integration.test_incremental import TREE, backups_on, change_source
from tests.integration.test_migrate_volumes import run_command, volumes_on
from tests.integration.test_prepare_checks import force_plan_conflict
from tests.lab.tree import diff_snapshots, snapshot_volume_tree, write_volume_tree


@contextlib.contextmanager
def separate_mount(host, directory: str, kind: str) -> Iterator[None]:
    """Move the content of `directory` onto a mount of its own on `host`, until the end.

    kind "tmpfs" mounts a new tmpfs. kind "bind" bind-mounts a directory of the lab's
    /var/lib/docker, which is the file system of the volumes, so both sides have one st_dev.
    """
    token = uuid.uuid4().hex[:10]
    if kind == "tmpfs":
        holder = f"/run/ddm-mount-{token}"
        host.run(["sh", "-c", 'mkdir "$1" && mount -t tmpfs tmpfs "$1" && cp -a "$2/." "$1/" '
                 '&& mount --move "$1" "$2" && rmdir "$1"', "sh", holder, directory])
    elif kind == "bind":
        holder = f"/var/lib/docker/ddm-bind-{token}"
        host.run(["sh", "-c", 'mkdir "$1" && cp -a "$2/." "$1/" && mount --bind "$1" "$2"',
                  "sh", holder, directory])
        devices = host.run(["stat", "--format=%d", directory, f"{directory}/.."]).stdout.split()
        assert devices[0] == devices[1]
    else:
        raise ValueError(f"unknown mount kind {kind!r}")
    try:
        yield
    finally:
        host.run(["umount", directory])
        if kind == "bind":
            host.run(["rm", "-r", "--", holder])


def migrate(volume: str, *options: str):
    return run_command("ddmctl", "migrate", "--from", "h1", "--to", "h2", "--volume", volume,
                       "--yes", "--json", *options)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("ddmctl: error: ")]


# "/data" is a directory whose changed files move, and "/old" a directory that the update
# deletes, so it would move itself.
@pytest.mark.parametrize("kind, below", [("tmpfs", ""), ("bind", ""), ("tmpfs", "/data"),
                                         ("bind", "/old")])
def test_incremental_rejects_separate_mount(h1, h2, isolated_env, resources, kind, below):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, TREE)
    assert migrate(volume).status == 0
    mountpoint = h2.volume_mountpoint(volume)

    with separate_mount(h2, mountpoint + below, kind):
        target_before = snapshot_volume_tree(h2, volume)
        change_source(h1, volume)
        outcome = migrate(volume, "--incremental")

        assert outcome.status == 1
        task = json.loads(outcome.stdout)
        assert task["state"] == "failed"
        (line,) = error_lines(outcome.stderr)
        assert f"cannot update volume {volume!r} incrementally: {mountpoint}{below} is on " \
               f"another mount than /var/lib/docker/volumes/{volume} on host h2" in line
        assert "the volume is unchanged" in line
        assert f"--volume {volume}:NEW_NAME" in line
        assert diff_snapshots(target_before, snapshot_volume_tree(h2, volume)) == []
        assert backups_on(h2, volume) == []


@pytest.mark.parametrize("kind, reason", [("tmpfs", "not one file system"),
                                          ("bind", "mv failed")])
def test_full_copy_not_moved_onto_mount(h1, h2, isolated_env, resources, kind, reason):
    # The volume does not exist on h2 yet, but its data directory is a mount, as when an
    # operator mounts a disk there before the volume is created. The engine adopts it.
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, TREE)
    source_before = snapshot_volume_tree(h1, volume)
    mountpoint = f"/var/lib/docker/volumes/{volume}/_data"
    h2.run(["mkdir", "-p", mountpoint])

    with separate_mount(h2, mountpoint, kind):
        outcome = migrate(volume)

        assert outcome.status == 1
        (line,) = error_lines(outcome.stderr)
        assert "cannot move /var/lib/docker/volumes/ddm-staging-" in line
        assert f"to {mountpoint} on h2: {reason}" in line
        assert h2.run(["ls", "-A", mountpoint]).stdout == ""
        assert not any(name.startswith("ddm-staging-") for name in volumes_on(h2))
        # Docker cannot remove the mount point, so the rollback keeps the new volume.
        task = json.loads(outcome.stdout)
        assert task["state"] == "interrupted"
        assert "device or resource busy" in task["error"]["rollback_error"]["message"]
        assert volume in volumes_on(h2)
    assert diff_snapshots(source_before, snapshot_volume_tree(h1, volume)) == []


def test_failed_rollback_line_says_so(h1, h2, isolated_env, resources):
    # The move onto the mount fails, and so does the rollback's removal of the new volume,
    # so the error line must not claim that the target was rolled back.
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, TREE)
    mountpoint = f"/var/lib/docker/volumes/{volume}/_data"
    h2.run(["mkdir", "-p", mountpoint])

    with separate_mount(h2, mountpoint, "tmpfs"):
        outcome = migrate(volume)

        assert outcome.status == 1
        task = json.loads(outcome.stdout)
        assert task["state"] == "interrupted"
        (line,) = error_lines(outcome.stderr)
        assert "was rolled back" not in line
        assert "; rollback failed too: " in line
        assert "device or resource busy" in line
        assert f"run 'ddmctl rollback {task['id']}'" in line
        assert "was rolled back" not in task["error"]["message"]
        assert line == f"ddmctl: error: {task['error']['message']}"


def mounted_target_line(volume: str, mount: str) -> str:
    """Return the error line of a --force replacement of `volume` on h2, which has a mount at `mount`."""
    return (f"ddmctl: error: volume {volume!r} on host 'h2' has a mount point at {mount}, so "
            "--force cannot replace it (Docker's removal of the volume would delete the files on "
            f"that mount and then fail); the volume is unchanged; choose another target name with "
            f"--volume {volume}:NEW_NAME, or unmount {mount} (its files stay on that file system) "
            "and run the migration again")


@pytest.mark.parametrize("kind, below", [("tmpfs", ""), ("bind", ""), ("tmpfs", "/data")])
def test_force_rejects_mounted_target(h1, h2, isolated_env, resources, kind, below):
    # Docker's volume removal deletes every file on a mount below the volume's directory and
    # then fails with EBUSY, so prepare rejects the replacement before anything is copied.
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, TREE)
    h2.docker("volume", "create", volume)
    mountpoint = h2.volume_mountpoint(volume)
    h2.run(["sh", "-c", 'mkdir "$1/data" && echo old > "$1/old.txt" && echo kept > "$1/data/kept.txt"',
            "sh", mountpoint])

    with separate_mount(h2, mountpoint + below, kind):
        target_before = snapshot_volume_tree(h2, volume)
        outcome = migrate(volume, "--force")

        assert outcome.status == 1
        task = json.loads(outcome.stdout)
        assert task["state"] == "failed"
        assert task["error"]["error"] == "TargetExists"
        (line,) = error_lines(outcome.stderr)
        assert line == mounted_target_line(volume, mountpoint + below)
        assert diff_snapshots(target_before, snapshot_volume_tree(h2, volume)) == []
        assert h2.run(["cat", f"{mountpoint}/old.txt"]).stdout == "old\n"
        assert not any(name.startswith("ddm-staging-") for name in volumes_on(h2))


def test_plan_reports_mounted_force_target(h1, h2, isolated_env, resources):
    # plan and migrate --dry-run run the prepare phase's mount check too, with its wording.
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    h2.docker("volume", "create", volume)
    mountpoint = h2.volume_mountpoint(volume)
    h2.run(["sh", "-c", 'echo old > "$1/old.txt"', "sh", mountpoint])

    with separate_mount(h2, mountpoint, "tmpfs"):
        target_before = snapshot_volume_tree(h2, volume)
        conflict = force_plan_conflict(volume)

        assert f"ddmctl: error: {conflict['message']}" == mounted_target_line(volume, mountpoint)
        assert diff_snapshots(target_before, snapshot_volume_tree(h2, volume)) == []
