"""Image bytes of full-mode tasks, and re-runs of finished migrations, on the lab.

Every check reads the byte counters that the tasks recorded in the task database: an image the
target already has costs no image bytes, and a re-run of a finished migration sends no image,
volume or layer bytes at all.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ddm.store import TaskStore, default_store_path
from ddm.task import ItemState, TaskState
from tests.integration.test_full_plan import schema_errors
from tests.integration.test_migrate_volumes import run_command
from tests.lab.image import BUSYBOX_IMAGE, build_busybox_tar
from tests.lab.resources import unique_name
from tests.lab.tree import RandomFile, write_volume_tree

PAYLOAD_BYTES = 3 * 1024 * 1024


def open_store() -> TaskStore:
    return TaskStore(default_store_path(os.environ))


def newest_task_id() -> str:
    store = open_store()
    try:
        return store.list_tasks(limit=1)[0].id
    finally:
        store.close()


def task_extra(task_id: str) -> dict:
    store = open_store()
    try:
        return store.get_extra(task_id)
    finally:
        store.close()


def migrate(*args: str) -> tuple[int, str]:
    """Run `ddmctl migrate` from h1 to h2; return its exit status and the new task's ID."""
    outcome = run_command("ddmctl", "migrate", "--from", "h1", "--to", "h2", "--yes", *args)
    print(outcome.stderr)  # shown by pytest when the test fails
    return outcome.status, newest_task_id()


def status_json(task_id: str) -> dict:
    outcome = run_command("ddmctl", "status", task_id, "--json")
    assert outcome.status == 0, outcome.stderr
    return json.loads(outcome.stdout)


def write_image_tar(path: Path, payload_bytes: int) -> None:
    """Write a root file system: busybox and a file of random bytes, so the image is unique."""
    build_busybox_tar(path)
    payload = os.urandom(payload_bytes)
    with tarfile.open(path, "a") as archive:
        member = tarfile.TarInfo("payload.bin")
        member.size = len(payload)
        archive.addfile(member, io.BytesIO(payload))


@pytest.fixture
def test_image(lab, h1, h2, tmp_path: Path) -> Iterator[str]:
    """Import a new image of a few MiB on h1 (never pulled); remove it from both hosts afterwards."""
    tag = f"ddmtest/image-{uuid.uuid4().hex[:8]}:1"
    archive = tmp_path / "rootfs.tar"
    write_image_tar(archive, PAYLOAD_BYTES)
    h1.docker("import", "--change", 'CMD ["/bin/sh"]', str(archive), tag)
    yield tag
    for host in (h1, h2):
        host.docker("image", "rm", "-f", tag, check=False)


def image_id(host, tag: str) -> str:
    return host.docker("image", "inspect", "-f", "{{.Id}}", tag).stdout.strip()


def container_id(host, name: str) -> str:
    return host.docker("inspect", "-f", "{{.Id}}", name).stdout.strip()


def run_source_container(h1, h2, resources, image: str, volume: str) -> str:
    name = unique_name()
    resources.create_container(h1, name=name, image=image, volumes={volume: "/data"}, start=True,
                               command=("sleep", "3600"))
    resources.add_container(h2, name)
    return name


def test_image_sent_once_per_target(h1, h2, isolated_env, test_image, resources):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, {"data.bin": RandomFile(256 * 1024, seed=7)})
    first = run_source_container(h1, h2, resources, test_image, volume)
    second = run_source_container(h1, h2, resources, test_image, resources.create_volume(h1))
    the_image = image_id(h1, test_image)

    # First migration: the image is missing on h2, so all of it is sent.
    status, first_task = migrate("--mode", "full", "--container", first)
    assert status == 0
    resources.add_volume(h2, f"ddm-logs-{first_task}")
    extra = task_extra(first_task)
    assert extra["image_bytes_sent"] >= PAYLOAD_BYTES
    assert extra["images"][the_image]["bytes_sent"] == extra["image_bytes_sent"]
    assert extra["images"][the_image]["present_on_target"] is False
    assert image_id(h2, test_image) == the_image
    assert status_json(first_task)["image_bytes_sent"] == extra["image_bytes_sent"]

    # Second container with the same image: the image is on h2 now and costs no bytes.
    resources.add_volume(h2, task_extra(first_task)["plan"]["volumes"][0]["name"])
    status, second_task = migrate("--mode", "full", "--container", second)
    assert status == 0
    resources.add_volume(h2, f"ddm-logs-{second_task}")
    extra = task_extra(second_task)
    assert extra["image_bytes_sent"] == 0
    assert extra["images"][the_image]["bytes_sent"] == 0
    assert extra["images"][the_image]["present_on_target"] is True
    for volume_plan in extra["plan"]["volumes"]:
        resources.add_volume(h2, volume_plan["name"])


def test_full_rerun_sends_nothing(h1, h2, isolated_env, test_image, resources):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, {"data.bin": RandomFile(512 * 1024, seed=8)})
    name = run_source_container(h1, h2, resources, test_image, volume)

    status, first_task = migrate("--mode", "full", "--container", name)
    assert status == 0
    resources.add_volume(h2, f"ddm-logs-{first_task}")
    assert task_extra(first_task)["volume_bytes_sent"] > 0
    target_id = container_id(h2, name)

    status, rerun_task = migrate("--mode", "full", "--container", name)
    assert status == 0
    assert rerun_task != first_task
    extra = task_extra(rerun_task)
    assert extra["already_migrated"]["task"] == first_task
    assert extra["image_bytes_sent"] == 0
    assert extra["volume_bytes_sent"] == 0
    assert extra["layer_bytes_sent"] == 0
    assert extra["images"] == {}
    assert container_id(h2, name) == target_id

    status_data = status_json(rerun_task)
    assert status_data["state"] == TaskState.SUCCEEDED.value
    assert status_data["already_migrated"]["task"] == first_task

    # A second re-run refers to the same first task.
    status, third_task = migrate("--mode", "full", "--container", name)
    assert status == 0
    assert task_extra(third_task)["already_migrated"]["task"] == first_task

    # The plan of another re-run reports it as already migrated, without conflicts.
    outcome = run_command("ddmctl", "plan", "--from", "h1", "--to", "h2", "--mode", "full",
                          "--container", name, "--json")
    assert outcome.status == 0, outcome.stderr
    plan = json.loads(outcome.stdout)
    assert plan["conflicts"] == []
    assert plan["ok"] is True
    assert {entry["action"] for entry in plan["objects"]} == {"already_migrated"}
    assert {entry["earlier_task"] for entry in plan["objects"]} == {first_task}
    assert schema_errors(plan) == []

    # Rolling a re-run back removes nothing: it created nothing.
    outcome = run_command("ddmctl", "rollback", third_task)
    assert outcome.status == 0, outcome.stderr
    assert container_id(h2, name) == target_id


def test_full_rerun_after_source_restart_refused(h1, h2, isolated_env, test_image, resources):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    name = run_source_container(h1, h2, resources, test_image, volume)
    status, first_task = migrate("--mode", "full", "--container", name)
    assert status == 0
    resources.add_volume(h2, f"ddm-logs-{first_task}")
    target_id = container_id(h2, name)

    # The source runs again, so its data may have moved on; the target is not overwritten.
    h1.docker("start", name)
    status, rerun_task = migrate("--mode", "full", "--container", name)
    assert status != 0
    assert "already_migrated" not in task_extra(rerun_task)
    assert container_id(h2, name) == target_id


def test_volume_rerun_sends_nothing(h1, h2, isolated_env, resources):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, {
        "a.bin": RandomFile(256 * 1024, seed=1),
        "dir/b.txt": "b\n",
    })
    status, first_task = migrate("--volume", volume)
    assert status == 0

    status, rerun_task = migrate("--volume", volume)
    assert status == 0
    store = open_store()
    try:
        rerun = store.get_task(rerun_task)
    finally:
        store.close()
    assert rerun.state is TaskState.SUCCEEDED
    assert rerun.items[0].state is ItemState.VERIFIED
    assert rerun.items[0].bytes_done == 0
    assert rerun.items[0].target_created is False
    assert task_extra(rerun_task)["already_migrated"] == {"0": first_task}

    # Rolling the re-run back keeps the target volume and its data.
    outcome = run_command("ddmctl", "rollback", rerun_task)
    assert outcome.status == 0, outcome.stderr
    assert outcome.stdout == (f"{volume}\t{volume}\tkept\t"
                              "the task did not create this target volume\n")
    assert (h2.volume_host_path(volume) / "dir" / "b.txt").read_text() == "b\n"


def test_volume_rerun_keeps_changed_target(h1, h2, isolated_env, resources):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, {"a.txt": "source\n"})
    status, first_task = migrate("--volume", volume)
    assert status == 0
    status, rerun_task = migrate("--volume", volume)
    assert status == 0

    # The operator changes the target copy; a plain re-run must not overwrite it.
    write_volume_tree(h2, volume, {"a.txt": "changed on the target\n"})
    outcome = run_command("ddmctl", "migrate", "--from", "h1", "--to", "h2", "--yes",
                          "--volume", volume)
    assert outcome.status != 0
    assert "differs from source volume" in outcome.stderr
    # The re-run in between sent nothing, so the copy is the first task's.
    assert f"contains the copy made by task {first_task} " in outcome.stderr
    assert rerun_task not in outcome.stderr
    target_file = h2.volume_host_path(volume) / "a.txt"
    assert target_file.read_text() == "changed on the target\n"


def plan_document(volume: str) -> dict:
    outcome = run_command("ddmctl", "plan", "--from", "h1", "--to", "h2", "--volume", volume,
                          "--json")
    return {"status": outcome.status, **json.loads(outcome.stdout)}


def test_plan_shows_volume_rerun(h1, h2, isolated_env, resources):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, {"a.txt": "source\n"})
    status, first_task = migrate("--volume", volume)
    assert status == 0

    unchanged = plan_document(volume)

    assert unchanged["status"] == 0
    assert unchanged["ok"] is True
    assert unchanged["conflicts"] == []
    assert unchanged["objects"][0]["action"] == "already_migrated"
    assert unchanged["objects"][0]["earlier_task"] == first_task
    assert unchanged["bytes_total"] == 0

    write_volume_tree(h2, volume, {"a.txt": "changed on the target\n"})

    changed = plan_document(volume)

    assert changed["status"] != 0
    assert changed["objects"][0]["action"] == "none"
    assert "differs from source volume" in changed["conflicts"][0]["message"]
    target_file = h2.volume_host_path(volume) / "a.txt"
    assert target_file.read_text() == "changed on the target\n"


@pytest.fixture
def derived_image(lab, h1, h2) -> Iterator[str]:
    """Commit a small layer on top of the lab's busybox image on h1; h2 has the busybox layer."""
    tag = f"ddmtest/derived-{uuid.uuid4().hex[:8]}:1"
    builder = unique_name()
    h1.docker("create", "--name", builder, "--network", "none", BUSYBOX_IMAGE, "sh")
    try:
        h1.docker("cp", "/etc/hostname", f"{builder}:/added.txt")
        h1.docker("commit", builder, tag)
    finally:
        h1.docker("rm", "-f", builder, check=False)
    yield tag
    for host in (h1, h2):
        host.docker("image", "rm", "-f", tag, check=False)


def test_only_missing_layers_sent(h1, h2, isolated_env, derived_image, resources):
    layers = h1.docker("image", "inspect", "-f", "{{json .RootFS.Layers}}",
                       derived_image).stdout
    base_layer = json.loads(layers)[0]
    target_layers = h2.docker("image", "inspect", "-f", "{{json .RootFS.Layers}}",
                              BUSYBOX_IMAGE).stdout
    assert json.loads(target_layers) == [base_layer]
    base_bytes = int(h1.docker("image", "inspect", "-f", "{{.Size}}", BUSYBOX_IMAGE).stdout)

    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    name = run_source_container(h1, h2, resources, derived_image, volume)
    status, task_id = migrate("--mode", "full", "--container", name)
    assert status == 0
    resources.add_volume(h2, f"ddm-logs-{task_id}")

    record = task_extra(task_id)["images"][image_id(h1, derived_image)]
    assert record["layers_left_out"] == 1
    assert record["bytes_sent"] < 64 * 1024
    assert record["bytes_read"] > base_bytes
    assert task_extra(task_id)["image_bytes_sent"] == record["bytes_sent"]
    assert image_id(h2, derived_image) == image_id(h1, derived_image)
    added = h2.docker("exec", name, "cat", "/added.txt").stdout
    assert added == Path("/etc/hostname").read_text()
