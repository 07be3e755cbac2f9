"""Verify by a scan on the target host: it passes a good copy and catches changed data.

The staging volume is changed from outside the lab host in the callback of the verify
phase's PhaseStarted event, after the copy phase and before the scan. Verify then finds what
a fault on the target would leave behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ddm import api, piecehash
from ddm.config import load_config
from ddm.errors import VerificationFailed
from ddm.events import Event, PhaseStarted
from ddm.task import TaskState
from ddmdriver import hostpath
from ddmsyncer import hostverify
from ddmsyncer.staged import staging_name
from tests.integration.commands import run_command
from tests.lab import Lab, LabHost
from tests.lab.resources import LabResources, unique_name
from tests.lab.tree import File, RandomFile, write_volume_tree

pytestmark = pytest.mark.usefixtures("isolated_env")

FILE_BYTES = 2 * 1024 * 1024
OLD_MTIME_NS = 1_600_000_000_123_456_789
TREE = {
    "data/flip.bin": RandomFile(FILE_BYTES, seed=5, mtime_ns=OLD_MTIME_NS),
    "data/small.txt": File(b"hello\n", mode=0o640, uid=1000, gid=1000, mtime_ns=OLD_MTIME_NS),
}
# The listing of this tree is a few hundred bytes, far less than the file's content.
MAX_LISTING_BYTES = 16 * 1024
# A piece size that gives flip.bin a pieced digest of eight pieces.
SMALL_PIECE_BYTES = 256 * 1024

Change = Callable[[Path], None]


def flip_byte(root: Path, offset: int = FILE_BYTES // 2) -> None:
    path = root / "data" / "flip.bin"
    before = os.stat(path)
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 1]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def change_mode(root: Path) -> None:
    os.chmod(root / "data" / "small.txt", 0o600)


def change_owner(root: Path) -> None:
    os.chown(root / "data" / "small.txt", 1001, 1000)


def change_mtime(root: Path) -> None:
    os.utime(root / "data" / "small.txt", ns=(OLD_MTIME_NS + 10**9, OLD_MTIME_NS + 10**9))


def source_volume(h1: LabHost, resources: LabResources) -> str:
    volume = resources.create_volume(h1)
    write_volume_tree(h1, volume, TREE)
    return volume


def run_migration(h2: LabHost, resources: LabResources, volume: str, data_path: str,
                  change: Change | None = None, verify: str = "full") -> tuple[str, str]:
    """Migrate `volume` to a new name on h2; apply `change` to the staging volume before verify."""
    target = unique_name("hostverify")
    resources.add_volume(h2, target)
    config = load_config()
    store = api.open_store()
    task = api.create_task(store, config, source="h1", target="h2",
                           volumes=[f"{volume}:{target}"], verify=verify,
                           options={"data_path": data_path})
    resources.add_volume(h2, staging_name(task.id, 0))

    def on_event(event: Event) -> None:
        if change is not None and isinstance(event, PhaseStarted) and event.phase == "verify":
            change(h2.volume_host_path(staging_name(task.id, 0)))

    api.run_task(config, store, task.id, on_event=on_event)
    return task.id, target


def verify_events(task_id: str) -> list[dict[str, Any]]:
    return [event for event in api.open_store().get_events(task_id)
            if event["kind"] == "verify_method"]


@pytest.mark.parametrize("data_path", ["host", "engine"])
def test_host_scan_passes_good_copy(h1: LabHost, h2: LabHost, resources: LabResources,
                                    data_path: str) -> None:
    volume = source_volume(h1, resources)
    task_id, target = run_migration(h2, resources, volume, data_path)

    store = api.open_store()
    assert store.get_task(task_id).state is TaskState.SUCCEEDED
    record = store.get_extra(task_id)["verify"]["0"]
    assert record["method"] == hostverify.HOST_SCAN
    assert 0 < record["wire_bytes"] < MAX_LISTING_BYTES
    events = verify_events(task_id)
    assert len(events) == 1
    assert "by host-scan" in events[0]["message"]
    assert (h2.volume_host_path(target) / "data" / "flip.bin").stat().st_size == FILE_BYTES


@pytest.mark.parametrize("data_path", ["host", "engine"])
def test_host_scan_catches_flipped_byte(h1: LabHost, h2: LabHost, resources: LabResources,
                                        data_path: str) -> None:
    volume = source_volume(h1, resources)

    with pytest.raises(VerificationFailed) as failure:
        run_migration(h2, resources, volume, data_path, change=flip_byte)

    assert "data/flip.bin: content" in str(failure.value)
    assert "1 places" in str(failure.value)


def test_pieced_scan_passes_good_copy(h1: LabHost, h2: LabHost, resources: LabResources,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(piecehash, "PIECE_BYTES", SMALL_PIECE_BYTES)
    volume = source_volume(h1, resources)
    task_id, target = run_migration(h2, resources, volume, "host")

    store = api.open_store()
    assert store.get_task(task_id).state is TaskState.SUCCEEDED
    assert store.get_extra(task_id)["verify"]["0"]["method"] == hostverify.HOST_SCAN
    assert (h2.volume_host_path(target) / "data" / "flip.bin").stat().st_size == FILE_BYTES


# The target host may hash the middle piece while tar writes the file, but the scan hashes
# the last piece. A byte changed after the copy must fail verify in either piece.
@pytest.mark.parametrize("offset", [FILE_BYTES // 2 + 3, FILE_BYTES - 1])
def test_pieced_scan_catches_flipped_byte(h1: LabHost, h2: LabHost, resources: LabResources,
                                          monkeypatch: pytest.MonkeyPatch, offset: int) -> None:
    monkeypatch.setattr(piecehash, "PIECE_BYTES", SMALL_PIECE_BYTES)
    volume = source_volume(h1, resources)

    with pytest.raises(VerificationFailed) as failure:
        run_migration(h2, resources, volume, "host", change=lambda root: flip_byte(root, offset))

    assert "data/flip.bin: content" in str(failure.value)


@pytest.mark.parametrize("change, aspect", [
    (change_mode, "mode"), (change_owner, "owner"), (change_mtime, "mtime"),
])
def test_host_scan_catches_changed_metadata(h1: LabHost, h2: LabHost, resources: LabResources,
                                            change: Change, aspect: str) -> None:
    volume = source_volume(h1, resources)

    with pytest.raises(VerificationFailed) as failure:
        run_migration(h2, resources, volume, "host", change=change)

    assert f"data/small.txt: {aspect}" in str(failure.value)


def test_quick_verify_scans_without_hashing(h1: LabHost, h2: LabHost,
                                            resources: LabResources) -> None:
    volume = source_volume(h1, resources)
    task_id, _ = run_migration(h2, resources, volume, "host", verify="quick")

    record = api.open_store().get_extra(task_id)["verify"]["0"]
    assert record["method"] == hostverify.HOST_SCAN
    assert record["wire_bytes"] < MAX_LISTING_BYTES


def test_without_python_verify_reads_back(h1: LabHost, h2: LabHost, resources: LabResources,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    missing = "import ddm_module_that_does_not_exist"
    monkeypatch.setattr(hostverify, "PROBE_COMMAND", missing)
    monkeypatch.setattr(hostpath, "PROBE_SCRIPT",
                        hostpath.PROBE_SCRIPT.replace(hostpath.PYTHON_CHECK, missing))
    volume = source_volume(h1, resources)

    with pytest.raises(VerificationFailed) as failure:
        run_migration(h2, resources, volume, "host", change=flip_byte)
    assert "data/flip.bin: content" in str(failure.value)

    task_id, _ = run_migration(h2, resources, volume, "host")
    record = api.open_store().get_extra(task_id)["verify"]["0"]
    assert record["method"] == hostverify.READ_BACK
    assert record["wire_bytes"] > FILE_BYTES
    assert "by read-back" in verify_events(task_id)[0]["message"]


def test_ddmverify_scans_both_hosts(lab: Lab, h1: LabHost, h2: LabHost, resources: LabResources,
                                    tmp_path: Path) -> None:
    volume = source_volume(h1, resources)
    _, target = run_migration(h2, resources, volume, "host")

    matching = run_command(lab, tmp_path, "ddmverify", "--from", "h1", "--to", "h2",
                           "--volume", f"{volume}:{target}", "--deep", "--json")
    assert matching.status == 0, matching.stderr
    report = json.loads(matching.stdout)["volumes"][0]
    assert report["method"] == hostverify.HOST_SCAN
    assert report["differences"] == []

    flip_byte(h2.volume_host_path(target))
    differing = run_command(lab, tmp_path, "ddmverify", "--from", "h1", "--to", "h2",
                            "--volume", f"{volume}:{target}", "--deep", "--json")
    assert differing.status == 1, differing.stderr
    differences = json.loads(differing.stdout)["volumes"][0]["differences"]
    assert [(item["path"], item["aspect"]) for item in differences] == [("data/flip.bin", "content")]
