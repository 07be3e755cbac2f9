"""`ddmctl plan` shows the path `ddmctl migrate` would take: onto a DDM-made copy, and with conflicts."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.commands import run_command
from tests.lab import Lab, LabHost
from tests.lab.resources import LabResources, unique_name
from tests.lab.tree import File, RandomFile, write_volume_tree


def plan_json(lab: Lab, tmp_path: Path, volume: str, *options: str) -> tuple[int, dict, str]:
    result = run_command(lab, tmp_path, "ddmctl", "plan", "--from", "h1", "--to", "h2",
                         "--volume", volume, "--json", *options)
    document = json.loads(result.stdout) if result.stdout.strip().startswith("{") else {}
    return result.status, document, result.stderr


def copied_and_changed(lab: Lab, h1: LabHost, h2: LabHost, resources: LabResources,
                       tmp_path: Path) -> str:
    """Migrate a small volume from h1 to h2, then change the source; return SRC:DST."""
    source = resources.create_volume(h1)
    write_volume_tree(h1, source, {"a.bin": RandomFile(64 * 1024, seed=1),
                                   "b.txt": File(b"first\n")})
    target = unique_name("copy")
    resources.add_volume(h2, target)
    migrated = run_command(lab, tmp_path, "ddmctl", "migrate", "--from", "h1", "--to", "h2",
                           "--volume", f"{source}:{target}", "--yes")
    assert migrated.status == 0, migrated.stderr
    write_volume_tree(h1, source, {"c.txt": File(b"added after the copy\n")})
    return f"{source}:{target}"


def test_plan_incremental_onto_earlier_copy(lab: Lab, h1: LabHost, h2: LabHost,
                                            resources: LabResources, tmp_path: Path) -> None:
    volume = copied_and_changed(lab, h1, h2, resources, tmp_path)

    status, plan, stderr = plan_json(lab, tmp_path, volume, "--incremental")

    assert status == 0, stderr
    entry = plan["objects"][0]
    assert entry["action"] == "incremental"
    assert entry["data_path"] == "host"
    assert entry["verify_method"] == "host-scan"
    assert entry["incremental"]["delete_entries"] == 0
    assert "c.txt" in entry["incremental"]["send"]
    assert plan["estimate"]["bytes_total"] == entry["incremental"]["send_bytes"]


def test_plan_matches_migrate_dry_run(lab: Lab, h1: LabHost, h2: LabHost,
                                      resources: LabResources, tmp_path: Path) -> None:
    volume = copied_and_changed(lab, h1, h2, resources, tmp_path)

    _, plan, _ = plan_json(lab, tmp_path, volume, "--incremental")
    dry_run = run_command(lab, tmp_path, "ddmctl", "migrate", "--from", "h1", "--to", "h2",
                          "--volume", volume, "--incremental", "--dry-run", "--json")

    assert dry_run.status == 0, dry_run.stderr
    planned, dry = plan["objects"][0], json.loads(dry_run.stdout)["objects"][0]
    for key in ("action", "data_path", "earlier_task", "verify_method"):
        assert planned[key] == dry[key], key
    assert planned["incremental"]["send"] == dry["incremental"]["send"]


def test_plan_conflict_shows_real_path(lab: Lab, h1: LabHost, h2: LabHost,
                                       resources: LabResources, tmp_path: Path) -> None:
    volume = copied_and_changed(lab, h1, h2, resources, tmp_path)

    status, plan, _ = plan_json(lab, tmp_path, volume)
    text = run_command(lab, tmp_path, "ddmctl", "plan", "--from", "h1", "--to", "h2",
                       "--volume", volume)

    assert status == 1
    entry = plan["objects"][0]
    assert entry["action"] == "none"
    assert entry["data_path"] == "host"
    [conflict] = plan["conflicts"]
    assert conflict["error"] == "TargetExists"
    assert "pass --incremental" in conflict["message"]
    assert "data path host" in text.stdout
    assert "engine-api" not in text.stdout


def test_plan_missing_source_has_no_path(lab: Lab, tmp_path: Path) -> None:
    status, plan, _ = plan_json(lab, tmp_path, f"{unique_name('missing')}:{unique_name('t')}")

    assert status == 1
    assert plan["objects"][0]["data_path"] is None
    assert plan["conflicts"][0]["error"] == "VolumeNotFound"


def test_plan_incremental_shows_running_writer(lab: Lab, h1: LabHost, h2: LabHost,
                                               resources: LabResources, tmp_path: Path) -> None:
    volume = copied_and_changed(lab, h1, h2, resources, tmp_path)
    resources.create_container(h1, volumes={volume.split(":")[0]: "/data"}, start=True,
                               name=unique_name("writer"))

    status, plan, _ = plan_json(lab, tmp_path, volume, "--incremental")

    assert status == 1
    entry = plan["objects"][0]
    assert entry["action"] == "incremental"
    assert len(entry["running_writers"]) == 1
    [conflict] = plan["conflicts"]
    assert "is used by running containers" in conflict["message"]
