"""Verify by a scan on the target host: it passes a good copy and catches changed data.

The staging volume is changed from outside the lab host in the callback of the verify
phase's PhaseStarted event, after the copy phase and before the scan. Verify then finds what
a fault on the target would leave behind.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ddm import api, piecehash
from ddm.config import load_config
from ddm.errors import VerificationFailed
from ddm.events import Event, PhaseStarted
from ddm.task import TaskState
from ddmdriver import direct, hostpath
from ddmsyncer import hostverify
from ddmsyncer.staged import staging_name
from tests.integration.commands import run_command
from tests.lab import Lab, LabHost
from tests.lab.resources import LabResources, unique_name
from tests.lab.tree import File, HardLink, RandomFile, write_volume_tree

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
                  change: Change | None = None, verify: str = "full",
                  route: str = "relay") -> tuple[str, str]:
    """Migrate `volume` to a new name on h2; apply `change` to the staging volume before verify."""
    target = unique_name("hostverify")
    resources.add_volume(h2, target)
    config = load_config()
    store = api.open_store()
    options = {"data_path": data_path, **({"route": route} if route != "relay" else {})}
    task = api.create_task(store, config, source="h1", target="h2",
                           volumes=[f"{volume}:{target}"], verify=verify, options=options)
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

    assert "in 1 place: data/flip.bin: content (source " in str(failure.value)


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
# the last piece. A byte changed after the copy must fail verify in either piece, on both
# routes.
@pytest.mark.parametrize("route", ["relay", "direct"])
@pytest.mark.parametrize("offset", [FILE_BYTES // 2 + 3, FILE_BYTES - 1])
def test_pieced_scan_catches_flipped_byte(h1: LabHost, h2: LabHost, resources: LabResources,
                                          monkeypatch: pytest.MonkeyPatch, offset: int,
                                          route: str) -> None:
    monkeypatch.setattr(piecehash, "PIECE_BYTES", SMALL_PIECE_BYTES)
    volume = source_volume(h1, resources)

    with pytest.raises(VerificationFailed) as failure:
        run_migration(h2, resources, volume, "host", route=route,
                      change=lambda root: flip_byte(root, offset))

    assert "data/flip.bin: content" in str(failure.value)


def test_direct_route_follows_target_before_the_stream(h1: LabHost, h2: LabHost,
                                                       resources: LabResources,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # The direct route's target scan starts before the stream and follows the staging
    # directory before tar writes, as the relay route's does, so that it can hash pieces
    # while tar writes them. Whether it does depends on timing, so only the order is checked.
    steps: list[object] = []
    original_ready, original_stream = hostverify.ScanSession.wait_ready, direct.stream_direct

    def recorded_ready(session: hostverify.ScanSession, timeout_seconds: float) -> bool:
        ready = original_ready(session, timeout_seconds)
        steps.append(("ready", session.directory, ready))
        return ready

    def recorded_stream(*args: Any, **options: Any) -> Any:
        steps.append("stream")
        return original_stream(*args, **options)

    monkeypatch.setattr(hostverify.ScanSession, "wait_ready", recorded_ready)
    monkeypatch.setattr(direct, "stream_direct", recorded_stream)
    volume = source_volume(h1, resources)
    task_id, target = run_migration(h2, resources, volume, "host", route="direct")

    store = api.open_store()
    assert store.get_task(task_id).state is TaskState.SUCCEEDED
    staging_directory = f"/var/lib/docker/volumes/{staging_name(task_id, 0)}/_data"
    assert steps == [("ready", staging_directory, True), "stream"]
    assert store.get_extra(task_id)["verify"]["0"]["method"] == hostverify.HOST_SCAN
    assert (h2.volume_host_path(target) / "data" / "flip.bin").stat().st_size == FILE_BYTES


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


# One file per changed aspect, for the exact report of ddmverify.
REPORT_TREE = {
    "acl.txt": File(b"a\n", mode=0o640, mtime_ns=OLD_MTIME_NS),
    "gone.txt": File(b"g\n", mtime_ns=OLD_MTIME_NS),
    "linked.txt": File(b"l\n", mtime_ns=OLD_MTIME_NS),
    "linked-2.txt": HardLink("linked.txt"),
    "mode.txt": File(b"m\n", mode=0o640, mtime_ns=OLD_MTIME_NS),
    "mtime.txt": File(b"t\n", mtime_ns=OLD_MTIME_NS),
    "owner.txt": File(b"o\n", uid=1000, gid=1000, mtime_ns=OLD_MTIME_NS),
    "subsec.txt": File(b"s\n", mtime_ns=OLD_MTIME_NS),
    "xattr.txt": File(b"x\n", mtime_ns=OLD_MTIME_NS, xattrs={"user.k": b"v"}),
}
# A uid that no lab host names, so the ACL text carries the number.
ACL_UID = 54321
ACL_TEXT = f"user::rw-\nuser:{ACL_UID}:r--\ngroup::r--\nmask::r--\nother::---\n"


def acl_xattr_value() -> bytes:
    """Return the system.posix_acl_access value of ACL_TEXT, as Linux stores it."""
    no_id = 0xFFFFFFFF
    entries = [(0x01, 6, no_id), (0x02, 4, ACL_UID), (0x04, 4, no_id), (0x10, 4, no_id),
               (0x20, 0, no_id)]
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *entry) for entry in entries)


def corrupt_report_tree(root: Path) -> None:
    """Change one aspect of each file of REPORT_TREE, keeping the root directory's mtime."""
    root_stat = os.stat(root)
    subprocess.run(["setfacl", "-m", f"u:{ACL_UID}:r", str(root / "acl.txt")], check=True)
    os.unlink(root / "gone.txt")
    os.unlink(root / "linked-2.txt")
    (root / "linked-2.txt").write_bytes(b"l\n")
    os.chmod(root / "linked-2.txt", 0o644)
    os.utime(root / "linked-2.txt", ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    os.chmod(root / "mode.txt", 0o4755)
    os.utime(root / "mtime.txt", ns=(OLD_MTIME_NS + 10**9, OLD_MTIME_NS + 10**9))
    os.chown(root / "owner.txt", 1001, 1000)
    os.utime(root / "subsec.txt", ns=(OLD_MTIME_NS + 1, OLD_MTIME_NS + 1))
    os.setxattr(root / "xattr.txt", "user.k", b"w")
    os.utime(root, ns=(root_stat.st_atime_ns, root_stat.st_mtime_ns))


def test_ddmverify_reports_readable_values(lab: Lab, h1: LabHost, h2: LabHost,
                                           resources: LabResources, tmp_path: Path) -> None:
    volume = resources.create_volume(h1)
    write_volume_tree(h1, volume, REPORT_TREE)
    _, target = run_migration(h2, resources, volume, "host")
    corrupt_report_tree(h2.volume_host_path(target))
    arguments = ("ddmverify", "--from", "h1", "--to", "h2", "--volume", f"{volume}:{target}")

    text = run_command(lab, tmp_path, *arguments)
    report = run_command(lab, tmp_path, *arguments, "--json")

    acl_entries = ACL_TEXT.strip().replace("\n", ",")
    assert text.status == 1, text.stderr
    assert text.stdout.splitlines() == [
        f"{volume} -> {target}: 10 differences (data path host, host-scan)",
        f"  acl.txt\txattrs\tsource=none\ttarget=system.posix_acl_access={acl_entries}",
        f"  acl.txt\tacl\tsource=none\ttarget={acl_entries}",
        "  gone.txt\tpresence\tsource=file\ttarget=missing",
        "  linked-2.txt\tlink\tsource=[linked-2.txt, linked.txt]\ttarget=none",
        "  linked.txt\tlink\tsource=[linked-2.txt, linked.txt]\ttarget=none",
        "  mode.txt\tmode\tsource=0640\ttarget=04755",
        "  mtime.txt\tmtime\tsource=2020-09-13T12:26:40Z\ttarget=2020-09-13T12:26:41Z",
        "  owner.txt\towner\tsource=1000:1000\ttarget=1001:1000",
        "  subsec.txt\tmtime_ns\tsource=2020-09-13T12:26:40.123456789Z"
        "\ttarget=2020-09-13T12:26:40.123456790Z",
        "  xattr.txt\txattrs\tsource=user.k=v\ttarget=user.k=w",
    ]

    assert report.status == 1, report.stderr
    document = json.loads(report.stdout)
    assert document["match"] is False
    acl_value = {"base64": base64.b64encode(acl_xattr_value()).decode("ascii")}
    group = ["linked-2.txt", "linked.txt"]
    assert document["volumes"][0]["differences"] == [
        {"path": "acl.txt", "aspect": "xattrs", "source": [],
         "target": [["system.posix_acl_access", acl_value]]},
        {"path": "acl.txt", "aspect": "acl", "source": {"access": None, "default": None},
         "target": {"access": ACL_TEXT, "default": None}},
        {"path": "gone.txt", "aspect": "presence", "source": "file", "target": None},
        {"path": "linked-2.txt", "aspect": "link", "source": group, "target": None},
        {"path": "linked.txt", "aspect": "link", "source": group, "target": None},
        {"path": "mode.txt", "aspect": "mode", "source": 0o640, "target": 0o4755},
        {"path": "mtime.txt", "aspect": "mtime", "source": OLD_MTIME_NS // 10**9,
         "target": OLD_MTIME_NS // 10**9 + 1},
        {"path": "owner.txt", "aspect": "owner", "source": {"uid": 1000, "gid": 1000},
         "target": {"uid": 1001, "gid": 1000}},
        {"path": "subsec.txt", "aspect": "mtime_ns", "source": OLD_MTIME_NS,
         "target": OLD_MTIME_NS + 1},
        {"path": "xattr.txt", "aspect": "xattrs", "source": [["user.k", "v"]],
         "target": [["user.k", "w"]]},
    ]
