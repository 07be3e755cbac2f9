"""Tests of the ddmdriver command against the lab."""

from __future__ import annotations

import io
import json
from pathlib import Path

from ddm.env import Environment
from ddm.manifest import Manifest
from ddmctl.common import run_main
from ddmdriver.cli import cli
from tests.lab import Lab, LabHost
from tests.lab.resources import LabResources, unique_name
from tests.lab.tree import File, Symlink, write_volume_tree


def run(lab: Lab, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    config = lab.write_ddm_config(tmp_path / "ddm.yaml")
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    stdout, stderr = io.StringIO(), io.StringIO()
    env = Environment(
        stdout=stdout,
        stderr=stderr,
        environ={"HOME": str(home), "USER": "root", "DDM_CONFIG": str(config)},
    )
    status = run_main(cli, list(args), env=env, prog_name="ddmdriver")
    return status, stdout.getvalue(), stderr.getvalue()


def test_ping_text(lab: Lab, tmp_path: Path) -> None:
    status, stdout, stderr = run(lab, tmp_path, "ping", "h1")

    assert status == 0, stderr
    assert stdout.startswith("h1: Docker ")
    assert "(API 1." in stdout
    assert "linux/" in stdout
    assert stdout.rstrip().endswith(" ms")


def test_ping_json(lab: Lab, tmp_path: Path) -> None:
    status, stdout, stderr = run(lab, tmp_path, "ping", "h2", "--json")

    assert status == 0, stderr
    document = json.loads(stdout)
    assert document["host"] == "h2"
    assert document["api_version"].startswith("1.")
    assert document["os"] == "linux"
    assert document["rtt_seconds"] > 0


def test_ping_unknown_host_is_usage_error(lab: Lab, tmp_path: Path) -> None:
    status, stdout, stderr = run(lab, tmp_path, "ping", "h9")

    assert status == 2
    assert stdout == ""
    assert stderr.startswith("ddmdriver: error: unknown host 'h9'")


def test_manifest_json_and_text(lab: Lab, h1: LabHost, resources: LabResources, tmp_path: Path) -> None:
    volume = resources.create_volume(h1)
    write_volume_tree(
        h1, volume, {"etc/app.conf": File(b"x=1\n", mode=0o600, uid=70, gid=71), "link": Symlink("etc")}
    )

    status, stdout, stderr = run(lab, tmp_path, "manifest", "h1", volume, "--json")
    text_status, text, _ = run(lab, tmp_path, "manifest", "h1", volume)

    assert status == 0, stderr
    manifest = Manifest.from_json(stdout)
    assert set(manifest.entries) == {b".", b"etc", b"etc/app.conf", b"link"}
    conf = manifest.entries[b"etc/app.conf"]
    assert (conf.type, conf.mode, conf.uid, conf.gid, conf.size) == ("file", 0o600, 70, 71, 4)
    assert conf.digest is not None
    assert manifest.entries[b"link"].linkname == b"etc"
    assert text_status == 0
    assert "file     0600 70:71            4 etc/app.conf" in text
    assert "link -> etc" in text
    tasks = h1.docker("ps", "--all", "--format", '{{.Label "ddm.task"}}').stdout.split()
    assert not [task for task in tasks if task.startswith("ddmdriver-")]


def test_manifest_missing_volume(lab: Lab, tmp_path: Path) -> None:
    name = unique_name()

    status, stdout, stderr = run(lab, tmp_path, "manifest", "h1", name)

    assert status == 2
    assert stdout == ""
    assert f"volume '{name}' not found on host 'h1'" in stderr
