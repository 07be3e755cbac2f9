"""Scenario (i): image transfer in full mode, and a re-run of a finished migration.

An image is made on h1 with `docker import` (never pulled): busybox and one file of random
bytes, so its layer compresses to nothing and exists on no other host. Two containers on h1
run it, each with a small volume. Measured, each as a `ddmctl migrate --mode full` child
process:

1. the first container: the image is missing on h2 and is sent whole;
2. the second container with the same image: the image is on h2 now and costs no bytes;
3. the first migration again (a re-run): it finishes as already migrated and sends nothing;
4. a third container whose image adds one small layer to the first image (`docker commit`):
   only that layer is sent, because h2 has the rest.

A baseline copies the image by hand first (`docker save` piped into `docker load`, both over
ssh); the copy it made is removed before DDM runs. Its stream is the same `docker save`
stream that DDM relays, so it is not counted again. The "image MiB" column is the task's
image_bytes_sent; "wire MiB" adds volume, bind-mount and writable-layer bytes.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tarfile
import uuid
from pathlib import Path
from typing import Any

from benchmarks.measure import run_command, run_pipeline
from benchmarks.suite import MIB, Result, Suite, _last_json
from ddm.store import TaskStore, default_store_path
from tests.lab.image import build_busybox_tar

log = logging.getLogger(__name__)

APP_COMMAND = "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"
RANDOM_CHUNK = 4 * MIB


def run_images(suite: Suite) -> list[Result]:
    """Measure the image bytes of a first migration, a second container, a re-run and a derived image."""
    shape = suite.shapes["i"]
    token = uuid.uuid4().hex[:8]
    image = f"ddm-bench/i-{token}:1"
    derived = f"ddm-bench/i-{token}-derived:1"
    containers = [f"bench-i-{token}-{index}" for index in (1, 2, 3)]
    image_bytes = _import_image(suite, image, shape["image_bytes"])
    _commit_layer(suite, image, derived)
    volume_bytes = 0
    for name, name_image in zip(containers, (image, image, derived)):
        suite.make_source(name, shape["volume"])
        volume_bytes = suite.volume_bytes(suite.source, name)
        suite.source.docker("run", "-d", "--name", name, "--network", "none", "--stop-timeout",
                            "10", "-v", f"{name}:/data", name_image, "sh", "-c", APP_COMMAND)

    try:
        results = [_baseline_save_load(suite, image, image_bytes)]
        suite.target.docker("image", "rm", "-f", image, check=False)
        results.append(_migrate(suite, containers[0], image_bytes + volume_bytes,
                                "ddm full, image missing on target"))
        results.append(_migrate(suite, containers[1], image_bytes + volume_bytes,
                                "ddm full, second container, same image"))
        results.append(_migrate(suite, containers[0], image_bytes + volume_bytes,
                                "ddm full, re-run of the first"))
        results.append(_migrate(suite, containers[2], image_bytes + volume_bytes,
                                "ddm full, derived image, base on target"))
    finally:
        _remove(suite, [derived, image], containers)
    return results


def _commit_layer(suite: Suite, image: str, tag: str) -> None:
    """Commit a container of `image` with one added file of 64 KiB as a new image `tag`."""
    builder = f"bench-i-build-{uuid.uuid4().hex[:8]}"
    added = suite.work_dir / "added.bin"
    _write_random(added, 64 * 1024)
    suite.source.docker("create", "--name", builder, "--network", "none", image, "true")
    try:
        suite.source.docker("cp", str(added), f"{builder}:/added.bin")
        suite.source.docker("commit", builder, tag)
    finally:
        suite.source.docker("rm", "-f", builder, check=False)
        added.unlink()


def _import_image(suite: Suite, tag: str, image_bytes: int) -> int:
    """Import a busybox root file system with `image_bytes` of random data; return the image size."""
    archive = suite.work_dir / f"image-{uuid.uuid4().hex[:8]}.tar"
    payload = suite.work_dir / "payload.bin"
    build_busybox_tar(archive)
    busybox_bytes = archive.stat().st_size
    _write_random(payload, max(image_bytes - busybox_bytes, 0))
    with tarfile.open(archive, "a") as tar:
        tar.add(payload, arcname="payload.bin")
    payload.unlink()

    suite.source.docker("import", "--change", 'CMD ["/bin/sh"]', str(archive), tag, timeout=600)
    archive.unlink()
    size = int(suite.source.docker("image", "inspect", "-f", "{{.Size}}", tag).stdout.strip())
    log.info("image %s: %d bytes", tag, size)
    return size


def _write_random(path: Path, count: int) -> None:
    with path.open("wb") as output:
        while count > 0:
            chunk = os.urandom(min(RANDOM_CHUNK, count))
            output.write(chunk)
            count -= len(chunk)


def _baseline_save_load(suite: Suite, image: str, image_bytes: int) -> Result:
    """Copy the image by hand: `docker save` on h1 piped into `docker load` on h2, both over ssh."""
    producer = suite.lab.ssh_argv(suite.source, "docker", "save", image)
    consumer = suite.lab.ssh_argv(suite.target, "docker", "load", "-q")
    usage, errors = run_pipeline(producer, consumer, env=suite.env)
    if any(usage.exit_statuses):
        raise RuntimeError(f"docker save | docker load failed with exit statuses "
                           f"{usage.exit_statuses}: {errors.strip()[-2000:]}")
    result = Result("i", "baseline: ssh docker save, ssh docker load", image_bytes, usage)
    result.note = "sends the whole docker save stream on every run"
    return result


def _migrate(suite: Suite, container: str, data_bytes: int, method: str) -> Result:
    argv = [sys.executable, "-m", "ddmctl.cli", "--config", str(suite.config_path), "migrate",
            "--mode", "full", "--container", container, "--from", suite.source.name,
            "--to", suite.target.name, "--yes", "--json"]
    output_path = suite.work_dir / "ddmctl.out"
    usage, errors = run_command(argv, env=suite.env, stdout_path=str(output_path))
    task = _last_json(output_path.read_text())
    if usage.exit_statuses != (0,) or task is None or task.get("state") != "succeeded":
        raise RuntimeError(f"ddmctl migrate --mode full failed in scenario i "
                           f"(exit status {usage.exit_statuses}): {errors.strip()[-2000:]}")

    extra = _task_extra(suite, task["id"])
    sent = {kind: int(extra.get(f"{kind}_bytes_sent") or 0)
            for kind in ("image", "volume", "layer")}
    result = Result("i", method, data_bytes, usage, wire_bytes=sum(sent.values()),
                    phase_seconds=suite.phase_seconds(task["id"]), image_bytes=sent["image"])
    earlier = (extra.get("already_migrated") or {}).get("task")
    result.note = f"already migrated by task {earlier}" if earlier else ""
    log.info("scenario i, %s: %s", method, json.dumps(sent))
    return result


def _task_extra(suite: Suite, task_id: str) -> dict[str, Any]:
    store = TaskStore(default_store_path(suite.env))
    try:
        return store.get_extra(task_id)
    finally:
        store.close()


def _remove(suite: Suite, images: list[str], containers: list[str]) -> None:
    for host in (suite.source, suite.target):
        for name in containers:
            host.docker("rm", "-f", name, check=False)
            host.docker("volume", "rm", "-f", name, check=False)
        for volume in host.docker("volume", "ls", "-q").stdout.split():
            if volume.startswith("ddm-logs-"):
                host.docker("volume", "rm", "-f", volume, check=False)
        for image in images:
            host.docker("image", "rm", "-f", image, check=False)
