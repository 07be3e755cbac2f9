"""The host tar relay with a gate: both commands start at once, the source reads after it.

The tar commands run in this machine's sh and GNU tar; only the SSH channels are replaced.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import xxhash

from ddm.manifest import ManifestBuilder
from ddmdriver import buffers, hostpath
from ddmdriver.hostpath import HostAccess, gated_argv, relay_host_archive
from ddmdriver.ssh import validate_argv

pytestmark = pytest.mark.skipif(getattr(os, "geteuid", lambda: -1)() != 0,
                                reason="tar --same-owner needs uid 0")


class LocalChannel:
    """The part of an SSH exec channel that relay_host_archive uses."""

    def __init__(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)

    def sendall(self, data: bytes) -> None:
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def shutdown_write(self) -> None:
        if not self.process.stdin.closed:
            self.process.stdin.close()

    def recv(self, size: int) -> bytes:
        return self.process.stdout.read1(size)

    def recv_stderr(self, size: int) -> bytes:
        return self.process.stderr.read1(size)

    def recv_exit_status(self) -> int:
        return self.process.wait()

    def close(self) -> None:
        self.shutdown_write()
        self.process.wait()


class LocalSSH:
    def __init__(self) -> None:
        self.channels: list[LocalChannel] = []

    def open_command(self, argv: list[str]) -> LocalChannel:
        validate_argv(argv)
        channel = LocalChannel(list(argv))
        self.channels.append(channel)
        return channel


def local_engine(name: str) -> Any:
    return SimpleNamespace(host=SimpleNamespace(name=name), ssh=LocalSSH())


def access(name: str) -> HostAccess:
    return HostAccess(name, (), "tar (GNU tar) 1.34")


def test_gated_copy_reads_after_gate(tmp_path: Path) -> None:
    source_directory = tmp_path / "source"
    target_directory = tmp_path / "target"
    source_directory.mkdir()
    target_directory.mkdir()
    (source_directory / "before").write_bytes(b"written before the copy")
    source, target = local_engine("h1"), local_engine("h2")
    started_at_gate: list[int] = []

    def gate() -> None:
        started_at_gate.append(len(source.ssh.channels) + len(target.ssh.channels))
        (source_directory / "at-gate").write_bytes(b"written while the gate was closed")

    relay_host_archive(source, access("h1"), str(source_directory),
                       target, access("h2"), str(target_directory), gate=gate)

    assert started_at_gate == [2]
    assert (target_directory / "before").read_bytes() == b"written before the copy"
    assert (target_directory / "at-gate").read_bytes() == b"written while the gate was closed"


def test_gate_closed_by_end_of_file_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    channel = LocalChannel(gated_argv(["touch", str(marker)]))

    channel.shutdown_write()
    status = channel.recv_exit_status()

    assert status != 0
    assert not marker.exists()


def test_relay_receives_whole_channel_window(tmp_path: Path) -> None:
    source_directory = tmp_path / "source"
    target_directory = tmp_path / "target"
    source_directory.mkdir()
    target_directory.mkdir()
    (source_directory / "data").write_bytes(os.urandom(3 * 1024 * 1024))
    source, target = local_engine("h1"), local_engine("h2")
    receive_sizes: list[int] = []

    class RecordingSSH(LocalSSH):
        def open_command(self, argv: list[str]) -> LocalChannel:
            channel = super().open_command(argv)
            receive = channel.recv

            def recording_recv(size: int) -> bytes:
                receive_sizes.append(size)
                return receive(size)

            channel.recv = recording_recv  # type: ignore[method-assign]
            return channel

    source.ssh = RecordingSSH()
    relay_host_archive(source, access("h1"), str(source_directory),
                       target, access("h2"), str(target_directory))

    # paramiko's channel buffer holds up to one window and shifts what a smaller receive leaves.
    assert receive_sizes
    assert min(receive_sizes) >= buffers.DEFAULT_SIZES.window_size
    assert (target_directory / "data").read_bytes() == (source_directory / "data").read_bytes()



def test_relay_returns_observer_stream_digest(tmp_path: Path) -> None:
    source_directory = tmp_path / "source"
    target_directory = tmp_path / "target"
    source_directory.mkdir()
    target_directory.mkdir()
    (source_directory / "data").write_bytes(os.urandom(200_000))
    source, target = local_engine("h1"), local_engine("h2")
    builder = ManifestBuilder(hash_content=False)
    sent = bytearray()
    digest_calls: list[str] = []

    class RecordingSSH(LocalSSH):
        def open_command(self, argv: list[str]) -> LocalChannel:
            channel = super().open_command(argv)
            send = channel.sendall

            def recording_sendall(data: bytes) -> None:
                sent.extend(data)
                send(data)

            channel.sendall = recording_sendall  # type: ignore[method-assign]
            return channel

    def builder_digest() -> str:
        digest_calls.append(builder.stream_digest)
        return builder.stream_digest

    target.ssh = RecordingSSH()
    result = relay_host_archive(source, access("h1"), str(source_directory),
                                target, access("h2"), str(target_directory),
                                observers=[builder.feed], stream_digest=builder_digest)

    assert len(digest_calls) == 1
    assert result.relay.stream_digest == xxhash.xxh3_128_hexdigest(bytes(sent))
    assert builder.close().stream_digest == result.relay.stream_digest
    assert (target_directory / "data").read_bytes() == (source_directory / "data").read_bytes()


def test_relay_splits_large_receives(tmp_path: Path) -> None:
    source_directory = tmp_path / "source"
    target_directory = tmp_path / "target"
    source_directory.mkdir()
    target_directory.mkdir()
    (source_directory / "data").write_bytes(os.urandom(3 * 1024 * 1024))
    source, target = local_engine("h1"), local_engine("h2")
    observed_sizes: list[int] = []

    class WholeStreamSSH(LocalSSH):
        """Returns the whole archive from one receive, as a full paramiko buffer can."""

        def open_command(self, argv: list[str]) -> LocalChannel:
            channel = super().open_command(argv)
            channel.recv = channel.process.stdout.read  # type: ignore[method-assign]
            return channel

    source.ssh = WholeStreamSSH()
    relay_host_archive(source, access("h1"), str(source_directory),
                       target, access("h2"), str(target_directory),
                       observers=[lambda view: observed_sizes.append(len(view))])

    assert len(observed_sizes) > 1
    assert max(observed_sizes) <= hostpath.PIECE_LIMIT
    assert (target_directory / "data").read_bytes() == (source_directory / "data").read_bytes()
