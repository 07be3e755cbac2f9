"""--parallel N on the lab: every volume arrives intact, and one failing worker rolls back all.

Trees are written and compared from outside the containers (tests.lab.tree), so the checks do
not depend on DDM's own manifests.
"""

from __future__ import annotations

import json
import os

import pytest

from ddm import api
from ddm.config import load_config
from ddm.errors import TransferFailed, VerificationFailed
from ddm.events import Event, ItemFinished, PhaseStarted
from ddm.store import TaskStore, default_store_path
from ddm.task import ItemState, TaskState
from ddmsyncer.staged import staging_name
from tests.integration.test_migrate_volumes import WHOLE_SECONDS, run_command
from tests.lab.tree import (
    Dir,
    File,
    HardLink,
    RandomFile,
    Symlink,
    diff_snapshots,
    snapshot_volume_tree,
    write_volume_tree,
)


def volume_tree(index: int) -> dict:
    return {
        ".": Dir(mode=0o750, uid=1000 + index, gid=1000 + index),
        f"data/v{index}.bin": RandomFile((1 << 20) + index * 4099, seed=index),
        "data/small.txt": f"volume {index}\n",
        "data/hard-1": File(b"shared inode\n"),
        "hard-2": HardLink("data/hard-1"),
        "link": Symlink(f"data/v{index}.bin"),
    }


def make_volumes(h1, h2, resources, count: int) -> list[str]:
    volumes = [resources.create_volume(h1) for _ in range(count)]
    for index, volume in enumerate(volumes):
        resources.add_volume(h2, volume)
        write_volume_tree(h1, volume, volume_tree(index))
    return volumes


def volume_names(host) -> set[str]:
    return set(host.docker("volume", "ls", "-q").stdout.split())


def task_helpers(host) -> list[str]:
    return host.docker("ps", "-aq", "--filter", "label=ddm.task").stdout.split()


def migrate_parallel(volumes: list[str], *options: str) -> dict:
    arguments = [argument for volume in volumes for argument in ("--volume", volume)]
    outcome = run_command("ddmctl", "migrate", "--from", "h1", "--to", "h2", "--yes", "--json",
                          *arguments, *options)
    assert outcome.status == 0, outcome.stderr
    return json.loads(outcome.stdout)


def assert_copied(h1, h2, volumes: list[str], resolution_ns: int) -> None:
    for volume in volumes:
        differences = diff_snapshots(snapshot_volume_tree(h1, volume),
                                     snapshot_volume_tree(h2, volume),
                                     mtime_resolution_ns=resolution_ns)
        assert differences == [], volume


@pytest.mark.parametrize("data_path", ["host", "engine"])
def test_parallel_copies_every_volume(h1, h2, isolated_env, resources, data_path):
    volumes = make_volumes(h1, h2, resources, 5)

    task = migrate_parallel(volumes, "--parallel", "3", "--data-path", data_path)

    assert task["state"] == "succeeded"
    assert [item["state"] for item in task["volumes"]] == ["verified"] * 5
    assert_copied(h1, h2, volumes, 1 if data_path == "host" else WHOLE_SECONDS)
    assert not [name for name in volume_names(h2) if name.startswith("ddm-staging-")]
    assert task_helpers(h1) == []
    assert task_helpers(h2) == []


def test_parallel_records_each_volume_time(h1, h2, isolated_env, resources):
    volumes = make_volumes(h1, h2, resources, 3)

    task = migrate_parallel(volumes, "--parallel", "3")

    store = TaskStore(default_store_path(os.environ))
    try:
        events = store.get_events(task["id"])
    finally:
        store.close()
    for kind in ("copied", "verified"):
        positions = sorted(event["data"]["position"] for event in events if event["kind"] == kind)
        assert positions == [0, 1, 2], kind
        assert all(event["data"]["seconds"] >= 0 for event in events if event["kind"] == kind)


def run_failing(h1, h2, resources, on_event_factory, error_class):
    volumes = make_volumes(h1, h2, resources, 4)
    sources_before = {volume: snapshot_volume_tree(h1, volume) for volume in volumes}
    config = load_config(environ=os.environ)
    store = TaskStore(default_store_path(os.environ))
    task = api.create_task(store, config, source="h1", target="h2", volumes=volumes,
                           options={"parallel": 3})

    with pytest.raises(error_class):
        api.run_task(config, store, task.id, on_event=on_event_factory(task.id))

    stored = store.get_task(task.id)
    store.close()
    assert stored.state is TaskState.FAILED
    # The first three volumes start at once; the fourth may not have started when the
    # failure stopped the workers, and then stays pending.
    assert [item.state for item in stored.items[:3]] == [ItemState.ROLLED_BACK] * 3
    assert stored.items[3].state in (ItemState.ROLLED_BACK, ItemState.PENDING)
    assert not set(volumes) & volume_names(h2)
    assert not [name for name in volume_names(h2) if name.startswith(f"ddm-staging-{task.id}")]
    assert task_helpers(h1) == []
    assert task_helpers(h2) == []
    for volume in volumes:
        assert snapshot_volume_tree(h1, volume) == sources_before[volume]


def test_parallel_copy_failure_rolls_back_all(h1, h2, isolated_env, resources):
    def factory(task_id: str):
        def fail_second_volume(event: Event) -> None:
            if isinstance(event, ItemFinished) and event.position == 1:
                raise TransferFailed("injected failure after the second volume's copy")
        return fail_second_volume

    run_failing(h1, h2, resources, factory, TransferFailed)


def test_parallel_verify_failure_rolls_back_all(h1, h2, isolated_env, resources):
    def factory(task_id: str):
        def corrupt_second_staging(event: Event) -> None:
            # The verify phase starts after every copy: add a file that the source lacks.
            if isinstance(event, PhaseStarted) and event.phase == "verify":
                write_volume_tree(h2, staging_name(task_id, 1), {"extra.txt": "not on the source\n"})
        return corrupt_second_staging

    run_failing(h1, h2, resources, factory, VerificationFailed)
