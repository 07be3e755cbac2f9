"""Run the complete example of docs/python-api.md on the lab, and the API's rollback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from ddm import api
from ddm.task import TaskState
from tests.integration.operator_support import volume_names
from tests.lab import LabHost
from tests.lab.isolation import IsolatedEnv
from tests.lab.resources import LabResources
from tests.lab.tree import File, RandomFile, diff_snapshots, snapshot_volume_tree, write_volume_tree

REPOSITORY = Path(__file__).resolve().parents[2]
DOC = REPOSITORY / "docs" / "python-api.md"

# The Engine API archive keeps whole-second mtimes, so snapshots are compared at that resolution.
WHOLE_SECONDS = 1_000_000_000


def example_code() -> str:
    """Return the first python code block after the 'Complete example' heading."""
    text = DOC.read_text()
    section = text[text.index("## Complete example"):]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, f"no python code block in {DOC}"
    return match.group(1)


def run_example(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "migrate_volume.py"
    script.write_text(example_code())
    environ = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          env=environ, timeout=600, check=False)


def test_doc_example_migrates_volume(h1: LabHost, h2: LabHost, isolated_env: IsolatedEnv,
                                     resources: LabResources, tmp_path: Path) -> None:
    volume = resources.create_volume(h1)
    write_volume_tree(h1, volume, {"data.bin": RandomFile(256 * 1024, seed=5),
                                   "conf/app.ini": File(b"[app]\n", mode=0o600, uid=999)})
    resources.add_volume(h2, volume)

    completed = run_example(tmp_path, "h1", "h2", volume)

    assert completed.returncode == 0, completed.stderr
    assert "phase copy" in completed.stdout
    assert re.search(r"task [0-9a-f]{12} succeeded; 0 differences", completed.stdout)
    assert not diff_snapshots(
        snapshot_volume_tree(h1, volume), snapshot_volume_tree(h2, volume),
        mtime_resolution_ns=WHOLE_SECONDS,
    )


def test_doc_example_stops_on_conflict(h1: LabHost, h2: LabHost, isolated_env: IsolatedEnv,
                                       resources: LabResources, tmp_path: Path) -> None:
    volume = resources.create_volume(h1)
    resources.create_volume(h2, volume)
    before = volume_names(h2)

    completed = run_example(tmp_path, "h1", "h2", volume)

    assert completed.returncode == 1
    assert f"conflict: volume '{volume}' already exists on host 'h2'" in completed.stderr
    assert volume_names(h2) == before
    assert api.open_store().list_tasks() == []


def test_api_rollback_removes_target(h1: LabHost, h2: LabHost, isolated_env: IsolatedEnv,
                                     resources: LabResources) -> None:
    volume = resources.create_volume(h1)
    write_volume_tree(h1, volume, {"a": File(b"a")})
    target = f"{volume}-r"
    resources.add_volume(h2, target)
    config, store = api.load_config(), api.open_store()
    task = api.create_task(store, config, source="h1", target="h2",
                           volumes=[f"{volume}:{target}"], verify="quick")
    task = api.run_task(config, store, task.id)
    assert target in volume_names(h2)

    rolled_back = api.rollback_task(config, store, task.id)

    assert rolled_back.state is TaskState.ROLLED_BACK
    assert target not in volume_names(h2)
    assert volume in volume_names(h1)
