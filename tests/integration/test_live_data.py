"""Volumes used by running containers: rejected, quiesced, or copied live and checked.

The writer is a busybox container that appends a fixed line to /data/log in a loop, so a
copy taken while it runs reads a growing file, and every complete copy contains whole lines.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.integration.commands import run_command
from tests.lab import Lab, LabHost
from tests.lab.resources import LabResources, unique_name

LINE = b"0123456789abcdef\n"
WRITER = ("sh", "-c", "while :; do echo 0123456789abcdef >> /data/log; usleep 2000; done")


def start_writer(h1: LabHost, resources: LabResources) -> tuple[str, str, str]:
    """Create a volume with 1 MiB of data and a running writer; return volume, container, name."""
    volume = resources.create_volume(h1)
    root = h1.volume_host_path(volume)
    (root / "log").write_bytes(LINE * 1000)
    (root / "bulk.bin").write_bytes(os.urandom(1 << 20))
    name = unique_name("writer")
    container = resources.create_container(h1, volumes={volume: "/data"}, command=WRITER,
                                           start=True, name=name)
    return volume, container, name


def container_state(h1: LabHost, container: str) -> str:
    return h1.docker("inspect", "--format", "{{.State.Status}}", container).stdout.strip()


def volumes_on(host: LabHost) -> list[str]:
    return host.docker("volume", "ls", "--quiet").stdout.split()


def migrate(lab: Lab, tmp_path: Path, resources: LabResources, h2: LabHost, volume: str,
            *flags: str):
    target = unique_name("live")
    resources.add_volume(h2, target)
    result = run_command(lab, tmp_path, "ddmctl", "migrate", "--from", "h1", "--to", "h2",
                         "--volume", f"{volume}:{target}", "--yes", *flags)
    return target, result


def test_running_writer_rejected_by_default(lab: Lab, h1: LabHost, h2: LabHost,
                                            resources: LabResources, tmp_path: Path) -> None:
    volume, container, name = start_writer(h1, resources)
    before = volumes_on(h2)

    target, result = migrate(lab, tmp_path, resources, h2, volume)

    assert result.status == 1
    assert f"used by running containers: {name}" in result.stderr
    assert "--stop-writers" in result.stderr
    assert volumes_on(h2) == before
    assert container_state(h1, container) == "running"


@pytest.mark.parametrize("data_path", ["host", "engine"])
def test_live_copy_of_changing_file_fails(lab: Lab, h1: LabHost, h2: LabHost,
                                          resources: LabResources, tmp_path: Path,
                                          data_path: str) -> None:
    volume, container, _ = start_writer(h1, resources)
    before = volumes_on(h2)

    target, result = migrate(lab, tmp_path, resources, h2, volume, "--live",
                             "--data-path", data_path)

    assert result.status == 1, result.stdout
    assert "changed while" in result.stderr or "failed" in result.stderr
    assert volumes_on(h2) == before
    assert container_state(h1, container) == "running"


@pytest.mark.parametrize("flags", [("--live", "--stop-writers"), ("--stop-writers",),
                                   ("--pause",), ("--live", "--pause"),
                                   ("--live", "--stop-writers", "--data-path", "engine")])
def test_quiesced_copy_is_whole_and_verified(lab: Lab, h1: LabHost, h2: LabHost,
                                             resources: LabResources, tmp_path: Path,
                                             flags: tuple[str, ...]) -> None:
    volume, container, _ = start_writer(h1, resources)

    target, result = migrate(lab, tmp_path, resources, h2, volume, *flags, "--verify", "full")

    assert result.status == 0, result.stderr
    assert "\tverified\t" in result.stdout
    copied = (h2.volume_host_path(target) / "log").read_bytes()
    assert len(copied) >= len(LINE) * 1000
    assert copied == LINE * (len(copied) // len(LINE))
    assert container_state(h1, container) == "running"
    assert [name for name in volumes_on(h2) if name.startswith("ddm-staging-")] == []
    if flags[0] == "--live":
        assert "changed during the copy" in result.stderr


def test_plan_shows_data_path_and_writers(lab: Lab, h1: LabHost, h2: LabHost,
                                          resources: LabResources, tmp_path: Path) -> None:
    volume, _, name = start_writer(h1, resources)

    result = run_command(lab, tmp_path, "ddmctl", "migrate", "--from", "h1", "--to", "h2",
                         "--volume", volume, "--dry-run")
    engine = run_command(lab, tmp_path, "ddmctl", "migrate", "--from", "h1", "--to", "h2",
                         "--volume", volume, "--dry-run", "--data-path", "engine",
                         "--stop-writers")

    assert result.status == 1, result.stderr
    assert "data path host (both hosts run GNU tar as root)" in result.stdout
    assert "mtimes to the nanosecond" in result.stdout
    assert f"used by running containers: {name}" in result.stdout
    assert engine.status == 0, engine.stderr
    assert "loses: sub-second mtimes" in engine.stdout
    assert volume not in h2.docker("volume", "ls", "--quiet").stdout.split()
