"""Staging volumes: an interrupted copy never leaves a volume under the real target name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.commands import run_command
from tests.lab import Lab, LabHost
from tests.lab.resources import LabResources, unique_name

POLL_SECONDS = 0.1
WAIT_SECONDS = 120


def volumes_on(host: LabHost) -> list[str]:
    return host.docker("volume", "ls", "--quiet").stdout.split()


def start_migrate(lab: Lab, tmp_path: Path, source: str, target: str,
                  data_path: str) -> subprocess.Popen[str]:
    """Start `ddmctl migrate` in a child process that uses the same HOME as run_command."""
    config = lab.write_ddm_config(tmp_path / "ddm.yaml")
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HOME": str(home), "DDM_CONFIG": str(config),
           "XDG_DATA_HOME": str(home / "data"), "XDG_CONFIG_HOME": str(home / "config")}
    return subprocess.Popen(
        [sys.executable, "-m", "ddmctl.cli", "migrate", "--from", "h1", "--to", "h2",
         "--volume", f"{source}:{target}", "--data-path", data_path, "--yes"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def source_of_48_files(h1: LabHost, resources: LabResources) -> str:
    """Create a source volume with 48 files of 1 MiB of random data; return its name."""
    source = resources.create_volume(h1)
    root = h1.volume_host_path(source)
    for index in range(48):
        (root / f"part-{index:02}.bin").write_bytes(os.urandom(1 << 20))
    return source


def kill_when_staging_fills(process: subprocess.Popen[str], h2: LabHost) -> str:
    """SIGKILL the migration once its staging volume contains data; return the staging name."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        staging = [name for name in volumes_on(h2) if name.startswith("ddm-staging-")]
        if staging and any(h2.volume_host_path(staging[0]).iterdir()):
            process.send_signal(signal.SIGKILL)
            process.wait()
            return staging[0]
        time.sleep(POLL_SECONDS)
    process.kill()
    pytest.fail(f"the copy ended before it could be interrupted: {process.communicate()}")


@pytest.mark.parametrize("data_path", ["host", "engine"])
def test_killed_copy_leaves_only_staging(lab: Lab, h1: LabHost, h2: LabHost,
                                         resources: LabResources, tmp_path: Path,
                                         data_path: str) -> None:
    source = source_of_48_files(h1, resources)
    target = unique_name("staged")
    resources.add_volume(h2, target)

    process = start_migrate(lab, tmp_path, source, target, data_path)
    staging = kill_when_staging_fills(process, h2)
    resources.add_volume(h2, staging)
    task_id = staging.split("-")[2]

    assert target not in volumes_on(h2)
    assert staging in volumes_on(h2)

    resumed = run_command(lab, tmp_path, "ddmctl", "resume", task_id)

    assert resumed.status == 0, resumed.stderr
    assert target in volumes_on(h2)
    assert staging not in volumes_on(h2)
    assert len(list(h2.volume_host_path(target).iterdir())) == 48


def test_rollback_removes_staging(lab: Lab, h1: LabHost, h2: LabHost,
                                  resources: LabResources, tmp_path: Path) -> None:
    source = source_of_48_files(h1, resources)
    target = unique_name("staged")
    resources.add_volume(h2, target)
    before = volumes_on(h2)

    process = start_migrate(lab, tmp_path, source, target, "engine")
    staging = kill_when_staging_fills(process, h2)
    resources.add_volume(h2, staging)
    rolled_back = run_command(lab, tmp_path, "ddmctl", "rollback", staging.split("-")[2])

    assert rolled_back.status == 0, rolled_back.stderr
    assert volumes_on(h2) == before


def test_rollback_names_container_using_staging(lab: Lab, h1: LabHost, h2: LabHost,
                                                resources: LabResources, tmp_path: Path) -> None:
    source = source_of_48_files(h1, resources)
    target = unique_name("pinned")
    resources.add_volume(h2, target)
    before = volumes_on(h2)

    process = start_migrate(lab, tmp_path, source, target, "engine")
    staging = kill_when_staging_fills(process, h2)
    resources.add_volume(h2, staging)
    task_id = staging.split("-")[2]
    user = unique_name("pin")
    resources.create_container(h2, volumes={staging: "/data"}, name=user)
    rejected = run_command(lab, tmp_path, "ddmctl", "rollback", task_id)

    assert rejected.status == 1
    assert rejected.stderr.splitlines()[-1] == (
        f"ddmctl: error: removing volume {staging!r} from h2 failed because container {user!r} "
        f"uses it; remove that container on h2 (stopping it is not enough, because Docker keeps "
        f"the volumes of stopped containers), then run 'ddmctl rollback {task_id}' again")
    assert staging in volumes_on(h2)

    h2.docker("rm", "-f", user)
    finished = run_command(lab, tmp_path, "ddmctl", "rollback", task_id)
    assert finished.status == 0, finished.stderr
    assert volumes_on(h2) == before
