"""Tests of the lab itself: engines, SSH access, isolation, fault helpers and teardown."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.lab import BUSYBOX_IMAGE, Lab, LabHost, procs
from tests.lab.isolation import IsolatedEnv
from tests.lab.resources import LabResources
from tests.lab.tree import (
    Device,
    Dir,
    Fifo,
    File,
    HardLink,
    RandomFile,
    SparseFile,
    Symlink,
    diff_snapshots,
    snapshot_volume_tree,
    write_volume_tree,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_engines_have_distinct_ids(lab: Lab) -> None:
    engine_ids = set()
    for host in lab.hosts:
        info = json.loads(host.docker("info", "--format", "{{json .}}").stdout)
        assert info["Name"] == f"ddm-lab-{host.name}"
        assert info["ServerVersion"]
        assert info["Driver"] == "overlay2"
        engine_ids.add(info["ID"])

    assert len(engine_ids) == len(lab.hosts)


def test_ssh_runs_docker_remotely(lab: Lab, isolated_env: IsolatedEnv) -> None:
    for host in lab.hosts:
        argv = lab.ssh_argv(host, "hostname; docker version --format '{{.Server.APIVersion}}'")
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=60)

        assert completed.returncode == 0, completed.stderr
        hostname, api_version = completed.stdout.split()
        assert hostname == f"ddm-lab-{host.name}"
        assert api_version.startswith("1.")


def test_ssh_rejects_wrong_host_key(lab: Lab, isolated_env: IsolatedEnv, tmp_path: Path) -> None:
    h1, h2 = lab.host("h1"), lab.host("h2")
    wrong_known_hosts = tmp_path / "known_hosts"
    # h2's key listed under h1's address: h1 presents a key that does not match.
    wrong_known_hosts.write_text(h2.known_hosts_line.replace(f"[{h2.address}]", f"[{h1.address}]") + "\n")

    argv = lab.ssh_argv(h1, "true")
    argv[argv.index(f"UserKnownHostsFile={lab.known_hosts}")] = f"UserKnownHostsFile={wrong_known_hosts}"
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=60)

    assert completed.returncode == 255
    assert "host key" in completed.stderr.lower()


def test_ddm_config_names_every_host(lab: Lab, isolated_env: IsolatedEnv) -> None:
    text = isolated_env.config_path.read_text()

    assert os.environ["DDM_CONFIG"] == str(isolated_env.config_path)
    assert f"identity_file: {lab.identity_file}\n" in text
    assert f"known_hosts: {lab.known_hosts}\n" in text
    assert f"  h1:\n    url: ssh://root@127.0.0.21:{lab.port}\n" in text
    assert f"  h2:\n    url: ssh://root@127.0.0.22:{lab.port}\n" in text
    assert lab.known_hosts.read_text().count(" ssh-ed25519 ") == len(lab.hosts)


@pytest.mark.parametrize("name", ["h1", "h2"])
def test_namespace_has_no_route_out(lab: Lab, name: str) -> None:
    host = lab.host(name)
    links = host.run(["ip", "-o", "link", "show"]).stdout.splitlines()
    routes_v4 = host.run(["ip", "-4", "route", "show", "table", "all"]).stdout
    routes_v6 = host.run(["ip", "-6", "route", "show", "table", "all"]).stdout

    assert [line.split(":")[1].strip().split("@")[0] for line in links] == ["lo", "link0"]
    assert "default" not in routes_v4
    assert "default" not in routes_v6
    assert host.run(["ip", "route", "show"]).stdout.split() == [
        "198.51.100.0/24", "dev", "link0", "proto", "kernel", "scope", "link", "src", host.link_address]


def test_link_namespace_has_no_address_or_route(lab: Lab) -> None:
    namespace = lab.link_namespace
    state = json.loads(lab.state_path.read_text())
    addresses = subprocess.run(["ip", "-n", namespace, "-o", "-4", "addr", "show"],
                               capture_output=True, text=True, check=True).stdout
    routes = subprocess.run(["ip", "-n", namespace, "route", "show", "table", "all"],
                            capture_output=True, text=True, check=True).stdout

    assert state["link_namespace"] == namespace == f"ddm-lab-{lab.port}-link"
    assert addresses.strip() == ""
    assert "default" not in routes
    assert "198.51.100" not in subprocess.run(["ip", "-o", "addr", "show"], capture_output=True,
                                              text=True, check=True).stdout


def test_hosts_reach_each_other_on_link(lab: Lab) -> None:
    h1, h2 = lab.host("h1"), lab.host("h2")
    probe = ("import socket; connection = socket.create_connection((%r, 22), timeout=10); "
             "print(connection.recv(64).decode().strip())")

    banner = h1.run(["python3", "-c", probe % h2.link_address]).stdout.strip()

    assert h1.link_address == "198.51.100.11"
    assert h2.link_address == "198.51.100.12"
    assert banner.startswith("SSH-2.0-")


def test_busybox_image_runs_with_volume(h1: LabHost, resources: LabResources) -> None:
    volume = resources.create_volume(h1)
    container = h1.docker(
        "run", "--rm", "--volume", f"{volume}:/v", BUSYBOX_IMAGE, "sh", "-c", "echo written > /v/note; id -u"
    )

    assert container.stdout.strip() == "0"
    mountpoint = h1.volume_mountpoint(volume)
    assert mountpoint == f"/var/lib/docker/volumes/{volume}/_data"
    assert h1.run(["cat", f"{mountpoint}/note"]).stdout == "written\n"
    assert (h1.volume_host_path(volume) / "note").read_text() == "written\n"


def test_images_are_imported_not_pulled(lab: Lab) -> None:
    for host in lab.hosts:
        images = host.docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
        history = host.docker("history", "--format", "{{.Comment}}", BUSYBOX_IMAGE).stdout.splitlines()
        config = json.loads(host.docker("image", "inspect", "--format", "{{json .Config}}", BUSYBOX_IMAGE).stdout)

        assert BUSYBOX_IMAGE in images
        assert history == ["Imported from -"]
        assert config["Cmd"] == ["/bin/sh"]


def test_volume_tree_snapshot_round_trip(h1: LabHost, resources: LabResources) -> None:
    volume = resources.create_volume(h1)
    mtime_ns = 1_600_000_000_123_456_789
    write_volume_tree(
        h1,
        volume,
        {
            "docs/readme.txt": "hello\n",
            "docs": Dir(mode=0o750, uid=1000, gid=1000, mtime_ns=mtime_ns),
            "bin/tool": File(b"#!/bin/sh\n", mode=0o4755, uid=1000, gid=100, mtime_ns=mtime_ns),
            "random.bin": RandomFile(3 << 20, seed=7),
            "sparse.img": SparseFile(64 << 20, {0: b"head", (64 << 20) - 4: b"tail"}),
            "link": Symlink("docs/readme.txt", uid=1000, gid=1000),
            "docs/readme-again.txt": HardLink("docs/readme.txt"),
            "pipe": Fifo(mode=0o640),
            "null": Device("char", 1, 3, mode=0o666),
            "tagged": File(b"x", xattrs={"user.ddm": b"\x00\xff"}),
            b"latin1-\xe9": b"not UTF-8",
        },
    )

    snapshot = snapshot_volume_tree(h1, volume)

    assert snapshot[b"docs"].mode == 0o750
    assert (snapshot[b"docs"].uid, snapshot[b"docs"].gid) == (1000, 1000)
    assert snapshot[b"docs"].mtime_ns == mtime_ns
    assert snapshot[b"bin/tool"].mode == 0o4755
    assert snapshot[b"bin/tool"].mtime_ns == mtime_ns
    assert snapshot[b"random.bin"].size == 3 << 20
    assert snapshot[b"sparse.img"].size == 64 << 20
    assert snapshot[b"link"].kind == "symlink"
    assert snapshot[b"link"].target == b"docs/readme.txt"
    assert snapshot[b"docs/readme-again.txt"].hardlink_group == b"docs/readme-again.txt"
    assert snapshot[b"docs/readme.txt"].hardlink_group == b"docs/readme-again.txt"
    assert snapshot[b"pipe"].kind == "fifo"
    assert snapshot[b"pipe"].mode == 0o640
    assert (snapshot[b"null"].kind, snapshot[b"null"].major, snapshot[b"null"].minor) == ("char", 1, 3)
    assert dict(snapshot[b"tagged"].xattrs) == {"user.ddm": b"\x00\xff"}
    assert snapshot[b"latin1-\xe9"].size == len(b"not UTF-8")
    assert snapshot[b"."].kind == "dir"

    allocated = os.stat(h1.volume_host_path(volume) / "sparse.img").st_blocks * 512
    assert allocated < 1 << 20


def test_diff_snapshots_reports_changes(h1: LabHost, resources: LabResources) -> None:
    volume = resources.create_volume(h1)
    write_volume_tree(h1, volume, {"a.txt": "one\n", "b.txt": "two\n"})
    before = snapshot_volume_tree(h1, volume)

    data = h1.volume_host_path(volume)
    (data / "a.txt").write_text("changed\n")
    (data / "b.txt").unlink()
    (data / "c.txt").write_text("new\n")
    after = snapshot_volume_tree(h1, volume)

    differences = diff_snapshots(before, after, ignore=("mtime_ns",))
    assert any(line.startswith("b'a.txt': sha256") for line in differences)
    assert "b'b.txt': missing" in differences
    assert "b'c.txt': unexpected file" in differences
    assert diff_snapshots(before, before) == []

    whole_seconds = {
        path: dataclasses.replace(entry, mtime_ns=entry.mtime_ns // 10**9 * 10**9) for path, entry in before.items()
    }
    assert diff_snapshots(before, whole_seconds, mtime_resolution_ns=10**9) == []
    assert diff_snapshots(before, whole_seconds) != []


def wait_for_no_connections(host: LabHost, timeout: float = 10.0) -> None:
    """Wait until the SSH connections that earlier tests closed have left the relay."""
    deadline = time.monotonic() + timeout
    while host.relay_connections() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert host.relay_connections() == [], "an SSH connection of an earlier test is still open"


def test_cut_connections_ends_ssh_session(lab: Lab, h1: LabHost, isolated_env: IsolatedEnv) -> None:
    wait_for_no_connections(h1)
    session = subprocess.Popen(
        lab.ssh_argv(h1, "echo started; sleep 60"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert session.stdout is not None
    assert session.stdout.readline() == "started\n"

    cut = h1.cut_connections()
    _, stderr = session.communicate(timeout=15)

    assert cut == 1
    assert session.returncode == 255, stderr
    assert h1.read_ssh_banner() is not None


def test_stop_and_start_dockerd(h1: LabHost) -> None:
    h1.stop_dockerd()
    assert not h1.ping_engine()
    assert h1.docker("version", check=False).returncode != 0

    h1.start_dockerd()
    assert h1.ping_engine()
    assert BUSYBOX_IMAGE in h1.docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout


def test_killed_dockerd_restarts_with_container(h1: LabHost, resources: LabResources) -> None:
    container = resources.create_container(
        h1, command=["sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait"], start=True
    )

    h1.stop_dockerd(kill=True)
    assert not h1.ping_engine()
    h1.start_dockerd()

    state = h1.docker("inspect", "--format", "{{.State.Status}}", container).stdout.strip()
    assert state in ("exited", "running")


def test_stopped_sshd_rejects_then_recovers(lab: Lab, h2: LabHost, isolated_env: IsolatedEnv) -> None:
    h2.stop_sshd()
    refused = subprocess.run(lab.ssh_argv(h2, "true"), capture_output=True, text=True, timeout=60)
    h2.start_sshd()
    accepted = subprocess.run(lab.ssh_argv(h2, "true"), capture_output=True, text=True, timeout=60)

    assert refused.returncode == 255
    assert accepted.returncode == 0, accepted.stderr


def test_cli_up_status_exec_down(tmp_path: Path, lab: Lab) -> None:
    root = tmp_path / "cli-lab"
    port = lab.port + 1
    started = time.monotonic()
    up = _lab_cli("up", "--root", str(root), "--hosts", "1", "--port", str(port))
    up_seconds = time.monotonic() - started

    assert up.returncode == 0, up.stderr
    assert up.stdout.strip() == str(root / "ddm.yaml")
    assert up_seconds < 30

    state = json.loads((root / "lab-state.json").read_text())
    holder = procs.ProcessRecord.from_json(state["hosts"][0]["processes"]["holder"])
    net_namespace = state["hosts"][0]["net_namespace"]

    status = _lab_cli("status", "--root", str(root))
    exec_result = _lab_cli("exec", "--root", str(root), "h1", "--", "hostname")
    down = _lab_cli("down", "--root", str(root))

    assert status.returncode == 0, status.stdout + status.stderr
    assert exec_result.stdout.strip() == "ddm-lab-h1"
    assert down.returncode == 0, down.stderr
    assert not root.exists()
    assert not procs.is_running(holder)
    assert procs.pids_in_net_namespace(net_namespace) == set()
    assert str(root) not in Path("/proc/self/mountinfo").read_text()


def test_up_replaces_stale_lab(tmp_path: Path, lab: Lab) -> None:
    root = tmp_path / "stale-lab"
    port = lab.port + 1
    first = _lab_cli("up", "--root", str(root), "--hosts", "1", "--port", str(port))
    assert first.returncode == 0, first.stderr
    first_holder = json.loads((root / "lab-state.json").read_text())["hosts"][0]["processes"]["holder"]

    # The first `up` process has exited, as after a crash. A new lab on the same
    # root must tear the old one down instead of failing on the busy port.
    second = Lab(root, host_count=1, port=port)
    try:
        second.up()
        assert not procs.is_running(procs.ProcessRecord.from_json(first_holder))
        assert second.host("h1").ping_engine()
    finally:
        second.down()
    assert not root.exists()


def test_up_rejects_foreign_directory(tmp_path: Path) -> None:
    root = tmp_path / "not-a-lab"
    root.mkdir()
    (root / "precious.txt").write_text("keep me\n")

    result = _lab_cli("up", "--root", str(root), "--hosts", "1", "--port", "2299")

    assert result.returncode == 1
    assert "contains no lab-state.json" in result.stderr
    assert (root / "precious.txt").read_text() == "keep me\n"


def _lab_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.lab", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_ensure_running_restarts_stopped_services(h1: LabHost) -> None:
    h1.stop_dockerd(kill=True)
    h1.stop_sshd()
    h1.stop_relay()
    assert not h1.ping_engine()
    assert h1.read_ssh_banner() is None

    h1.ensure_running()

    assert h1.ping_engine()
    assert h1.read_ssh_banner() is not None
