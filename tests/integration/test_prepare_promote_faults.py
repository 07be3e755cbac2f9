"""Faults in the concurrent prepare and in the one-command promote still roll the task back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import ddmdriver.hostpath
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
    # The move command fails on the target host as a failed mv would.
    monkeypatch.setattr(ddmdriver.hostpath, "MOVE_SCRIPT",
                        'echo "mv: cannot move $1: Device or resource busy" >&2; exit 4')
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
    assert "Device or resource busy" in error_lines[0]
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

    # NOTE: paramiko's own logger also prints the failed handshake's traceback to stderr, as it
    # did before the engines connected at once. The command's error is the last line.
    last_line = result.stderr.strip().splitlines()[-1]
    assert result.status == 3, result.stderr
    assert down in last_line
    assert "SSH" in last_line
    assert volumes_on(h2) == volumes_before
