"""Full mode with an application that writes to its volume as soon as it starts.

Many do, for example a database with its pid file and journal. The volume must be compared with the
source before the target container starts, or the application's first writes look like a
bad copy and the task rolls back a migration that was correct.
"""

from __future__ import annotations

from typing import Any

from ddm import api
from ddmctl.cli import cli
from ddmctl.common import run_main
from tests.lab import Lab
from tests.lab.image import BUSYBOX_IMAGE
from tests.lab.resources import LabResources, unique_name

# Writes one file at every start and appends a line to another every 0.2 s.
WRITER_COMMAND = ("echo started >> /data/starts; "
                  "while :; do date >> /data/log; sleep 0.2; done")


def start_writer(lab: Lab, resources: LabResources, image: str) -> tuple[str, str]:
    """Start the writing container on h1 and track it and its volume on both hosts.

    The image is committed on h1 only: each lab host imported its own busybox, so a
    container of the lab's busybox tag would meet the same tag with another image ID on h2.
    """
    name, volume = unique_name("ddmwriter"), unique_name("ddmwritervol")
    for host in ("h1", "h2"):
        resources.add_volume(host, volume)
        resources.add_container(host, name)

    h1 = lab.host("h1")
    builder = unique_name("ddmwriterbuild")
    h1.docker("create", "--name", builder, BUSYBOX_IMAGE, "true")
    try:
        h1.docker("commit", "--change", "LABEL ddmtest=writer", builder, image)
    finally:
        h1.docker("rm", "-f", builder)
    h1.docker("volume", "create", volume)
    h1.docker("run", "--detach", "--name", name, "--stop-timeout", "1",
              "--volume", f"{volume}:/data", image, "sh", "-c", WRITER_COMMAND)
    h1.docker("exec", name, "sh", "-c", "sleep 1; echo kept > /data/kept.txt")
    return name, volume


def read_volume_file(lab: Lab, host: str, volume: str, name: str) -> bytes:
    lab_host = lab.host(host)
    path = f"{lab_host.volume_mountpoint(volume)}/{name}"
    return lab_host.run(["cat", path], text=False).stdout


def remove_task_leftovers(lab: Lab, image: str) -> None:
    """Remove the logs volume DDM made on h2 and the image tag on both hosts."""
    h2 = lab.host("h2")
    for volume in h2.docker("volume", "ls", "-q").stdout.split():
        if volume.startswith("ddm-logs-"):
            h2.docker("volume", "rm", "-f", volume, check=False)
    for host in ("h1", "h2"):
        lab.host(host).docker("image", "rm", image, check=False)


def test_container_writing_at_start_migrates(lab: Lab, isolated_env: Any,
                                             resources: LabResources) -> None:
    image = f"ddmtest/writer-{unique_name('t')}:1"
    name, volume = start_writer(lab, resources, image)
    try:
        status = run_main(cli, ["migrate", "--from", "h1", "--to", "h2", "--yes",
                                "--mode", "full", "--container", name], prog_name="ddmctl")
        task = api.open_store().list_tasks(limit=1)[0]
        events = [(event["kind"], event["message"])
                  for event in api.open_store().get_events(task.id)]
        kinds = [kind for kind, _ in events]
        container_started = next(position for position, (kind, message) in enumerate(events)
                                 if kind == "started" and message.startswith("started container"))

        assert status == 0
        assert task.state.value == "succeeded"
        assert kinds.index("data_verified") < container_started

        # The source stopped with its log as it was; the target's log goes on from there.
        source_log = read_volume_file(lab, "h1", volume, "log")
        target_log = read_volume_file(lab, "h2", volume, "log")
        assert source_log and target_log.startswith(source_log)
        assert read_volume_file(lab, "h2", volume, "kept.txt") == b"kept\n"
        assert read_volume_file(lab, "h1", volume, "starts") == b"started\n"
        assert read_volume_file(lab, "h2", volume, "starts").startswith(b"started\n")
    finally:
        for host in ("h1", "h2"):
            lab.host(host).docker("rm", "-f", name, check=False)
        remove_task_leftovers(lab, image)
