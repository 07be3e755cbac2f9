"""The host probe started on a fresh SSH connection, with its directories sent later on stdin.

The probe script runs in this machine's sh; only the SSH channel is replaced by a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ddmdriver import engine as engine_module
from ddmdriver.earlyprobe import StartedProbe
from ddmdriver.ssh import validate_argv
from ddmsyncer import volumes
from ddmsyncer.datapath import HostProbes
from ddmsyncer.staged import StagedVolumes

needs_root = pytest.mark.skipif(getattr(os, "geteuid", lambda: -1)() != 0,
                                reason="the probe's root branch needs uid 0")


class LocalChannel:
    """The part of an SSH exec channel that StartedProbe and ssh.collect_output use."""

    def __init__(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)
        self.sent = b""

    def sendall(self, data: bytes) -> None:
        self.sent += data
        self.process.stdin.write(data)

    def shutdown_write(self) -> None:
        self.process.stdin.close()

    def settimeout(self, timeout: float | None) -> None:
        pass

    def recv(self, size: int) -> bytes:
        return self.process.stdout.read1(size)

    def recv_stderr(self, size: int) -> bytes:
        return self.process.stderr.read1(size)

    def exit_status_ready(self) -> bool:
        return self.process.poll() is not None

    def recv_exit_status(self) -> int:
        return self.process.wait()

    def close(self) -> None:
        if not self.process.stdin.closed:
            self.process.stdin.close()
        self.process.wait()


class LocalSSH:
    """Starts commands as local processes; exec_command must not be used once a probe began."""

    def __init__(self) -> None:
        self.started: list[list[str]] = []
        self.channels: list[LocalChannel] = []
        self.exec_commands: list[list[str]] = []

    def open_command(self, argv: list[str]) -> LocalChannel:
        validate_argv(argv)
        self.started.append(list(argv))
        channel = LocalChannel(argv)
        self.channels.append(channel)
        return channel

    def exec_command(self, argv: list[str], timeout: float = 60.0) -> Any:
        self.exec_commands.append(list(argv))
        raise AssertionError("the probe ran a second command")


def engine_on(name: str, ssh: LocalSSH) -> Any:
    return SimpleNamespace(host=SimpleNamespace(name=name), ssh=ssh)


@needs_root
def test_started_probe_checks_stdin_directories(tmp_path: Path) -> None:
    readable = tmp_path / "volume"
    readable.mkdir()
    missing = tmp_path / "missing"
    with_newline = f"{tmp_path}/new\nline"
    ssh = LocalSSH()

    started = StartedProbe(ssh, "h1")
    probe = started.finish([str(readable), str(missing), with_newline])

    assert probe.access is not None
    assert probe.readable == frozenset({str(readable)})
    assert probe.checked == frozenset({str(readable), str(missing)})
    assert probe.free_bytes is None
    assert ssh.started[0][-1] == "--"
    assert ssh.channels[0].sent == f"readable {readable}\nreadable {missing}\n".encode()


@needs_root
def test_started_probe_reads_free_space(tmp_path: Path) -> None:
    ssh = LocalSSH()

    probe = StartedProbe(ssh, "h1").finish((), str(tmp_path))

    statistics = os.statvfs(tmp_path)
    available = statistics.f_bavail * statistics.f_frsize
    assert probe.free_bytes is not None
    # Other processes write to the same file system meanwhile.
    assert abs(probe.free_bytes - available) < 256 * 1024 * 1024
    assert ssh.channels[0].sent == f"free {tmp_path}\n".encode()


@needs_root
def test_free_space_query_uses_probe(tmp_path: Path) -> None:
    ssh = LocalSSH()
    probes = HostProbes()
    probes.begin("h2", ssh)
    target = engine_on("h2", ssh)
    target.free_bytes = lambda path: pytest.fail("df ran although the probe reported the space")
    probes.start(target, free_space_path=str(tmp_path))

    free = volumes.FreeSpaceQuery(target, str(tmp_path), probes).result()

    assert free == probes.probe(target).free_bytes
    assert free is not None


def test_free_space_query_without_probe_figure_runs_df() -> None:
    probes = SimpleNamespace(probe=lambda engine: SimpleNamespace(free_bytes=None))
    paths: list[str] = []
    target = SimpleNamespace(host=SimpleNamespace(name="h2"),
                             free_bytes=lambda path: paths.append(path) or 12345)

    free = volumes.FreeSpaceQuery(target, "/var/lib/docker/volumes", probes).result()

    assert free == 12345
    assert paths == ["/var/lib/docker/volumes"]


@needs_root
def test_host_probes_use_begun_command(tmp_path: Path) -> None:
    readable = tmp_path / "volume"
    readable.mkdir()
    ssh = LocalSSH()
    probes = HostProbes()

    probes.begin("h1", ssh)
    engine = engine_on("h1", ssh)
    probes.start(engine, (str(readable),))
    probe = probes.probe(engine)

    assert probe.readable == frozenset({str(readable)})
    assert len(ssh.started) == 1
    assert ssh.exec_commands == []


class SlowSSH(LocalSSH):
    """LocalSSH whose open_command waits until `release` is set, like a slow round trip."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def open_command(self, argv: list[str]) -> LocalChannel:
        assert self.release.wait(5), "the test never released open_command"
        return super().open_command(argv)


@needs_root
def test_host_probes_begin_does_not_block(tmp_path: Path) -> None:
    readable = tmp_path / "volume"
    readable.mkdir()
    ssh = SlowSSH()
    probes = HostProbes()

    probes.begin("h1", ssh)
    started_before_release = list(ssh.started)
    ssh.release.set()
    engine = engine_on("h1", ssh)
    probes.start(engine, (str(readable),))
    probe = probes.probe(engine)

    assert started_before_release == []
    assert probe.readable == frozenset({str(readable)})
    assert len(ssh.started) == 1
    assert ssh.exec_commands == []


def test_host_probes_close_stops_unused_command() -> None:
    ssh = LocalSSH()
    probes = HostProbes()

    probes.begin("h1", ssh)
    probes.close()

    assert ssh.channels[0].process.returncode is not None
    assert ssh.channels[0].sent == b""


def test_ssh_engine_calls_hook_before_first_request(monkeypatch: pytest.MonkeyPatch) -> None:
    steps: list[str] = []
    connection = SimpleNamespace(close=lambda: steps.append("closed"))
    monkeypatch.setattr(engine_module, "resolve_target", lambda host, config: "target")
    monkeypatch.setattr(engine_module, "connect", lambda target: connection)

    def api_client(ssh: Any, socket_path: str) -> Any:
        steps.append("api client")
        return SimpleNamespace(close=lambda: None)

    monkeypatch.setattr(engine_module, "ssh_api_client", api_client)
    host = SimpleNamespace(name="h1", scheme="ssh", docker_socket="/var/run/docker.sock")

    opened = engine_module.open_engine(
        host, SimpleNamespace(), on_ssh_connected=lambda ssh: steps.append(f"hook {ssh is connection}"))

    assert steps == ["hook True", "api client"]
    assert opened.ssh is connection


@pytest.mark.parametrize(("data_path", "expected"), [
    ("auto", ["source", "target"]),
    ("host", ["source", "target"]),
    ("engine", ["target"]),
])
def test_staged_begins_probes_of_probed_hosts(data_path: str, expected: list[str]) -> None:
    spec = SimpleNamespace(source_host="source", target_host="target",
                           options={"data_path": data_path, "compress": "none"})
    staged = StagedVolumes(SimpleNamespace(task=SimpleNamespace(spec=spec, id="0123456789ab")))
    begun: list[str] = []
    staged.probes.begin = lambda host_name, ssh: begun.append(host_name)

    for host_name in ("source", "target"):
        staged.begin_host_probe(host_name, object())

    assert begun == expected
