"""The host path's probe and move scripts, run by this machine's sh instead of over SSH.

Only the SSH transport is replaced: each test runs the exact argv that DDM would send, with
PATH pointing at small stand-ins for `id`, `sudo` and `tar` where a test needs another host.
"""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ddm.errors import MigrationFailed, TransferFailed
from ddmdriver.hostpath import (
    SUDO_PREFIX,
    HostAccess,
    _ChunkSender,
    move_directory,
    parse_probe_output,
    probe_host_access,
)
from ddmdriver import hostpath
from ddmdriver.ssh import CommandResult, validate_argv


class LocalSSH:
    """Runs command lines locally with an optional directory of stand-in commands first on PATH."""

    def __init__(self, bin_directory: Path | None = None) -> None:
        self.environment = dict(os.environ)
        if bin_directory is not None:
            self.environment["PATH"] = f"{bin_directory}{os.pathsep}{os.environ['PATH']}"
        self.commands: list[list[str]] = []

    def exec_command(self, argv: list[str], timeout: float = 60.0) -> CommandResult:
        validate_argv(argv)
        self.commands.append(list(argv))
        completed = subprocess.run(argv, capture_output=True, env=self.environment, timeout=timeout,
                                   check=False)
        return CommandResult(completed.returncode, completed.stdout, completed.stderr)


def engine_with(ssh: LocalSSH) -> Any:
    return SimpleNamespace(ssh=ssh, host=SimpleNamespace(name="h9"))


def stand_in(directory: Path, name: str, script: str) -> None:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


@pytest.fixture
def bin_directory(tmp_path: Path) -> Path:
    directory = tmp_path / "bin"
    directory.mkdir()
    return directory


@pytest.mark.skipif(getattr(os, "geteuid", lambda: -1)() != 0, reason="the probe's root branch needs uid 0")
def test_probe_as_root_in_one_command(tmp_path: Path) -> None:
    readable = tmp_path / "volume"
    readable.mkdir()
    ssh = LocalSSH()

    probe = probe_host_access(engine_with(ssh), (str(readable), str(tmp_path / "missing")))

    assert len(ssh.commands) == 1
    assert probe.access is not None
    assert probe.access.prefix == ()
    assert probe.python3 is True
    assert "GNU tar" in probe.access.tar_version
    assert probe.readable == {str(readable)}
    assert probe.checked == {str(readable), str(tmp_path / "missing")}


def test_probe_rejects_account_without_sudo(bin_directory: Path) -> None:
    stand_in(bin_directory, "id", "echo 1000")
    stand_in(bin_directory, "sudo", "exit 1")

    probe = probe_host_access(engine_with(LocalSSH(bin_directory)))

    assert probe.access is None
    assert probe.reason == "the SSH account on h9 is not root and has no passwordless sudo"


def test_probe_uses_sudo_for_sudoer(bin_directory: Path, tmp_path: Path) -> None:
    stand_in(bin_directory, "id", "echo 1000")
    # The stand-in sudo logs its calls, drops "-n --" and runs the rest.
    log = tmp_path / "sudo.log"
    stand_in(bin_directory, "sudo", f'echo "$*" >> {log}; shift 2; exec "$@"')

    probe = probe_host_access(engine_with(LocalSSH(bin_directory)), (str(tmp_path),))

    assert probe.access is not None
    assert probe.access.prefix == SUDO_PREFIX
    assert "GNU tar" in probe.access.tar_version
    assert probe.readable == {str(tmp_path)}
    calls = log.read_text().splitlines()
    assert calls[0] == "-n -- true"
    assert calls[1] == "-n -- tar --version"
    assert calls[2].startswith("-n -- python3 -c ")
    assert calls[3].startswith("-n -- sh -c ")
    assert probe.python3 is True


def test_probe_rejects_other_tar(bin_directory: Path) -> None:
    stand_in(bin_directory, "id", "echo 0")
    stand_in(bin_directory, "tar", "echo 'bsdtar 3.6.2 - libarchive 3.6.2'")

    probe = probe_host_access(engine_with(LocalSSH(bin_directory)))

    assert probe.access is None
    assert probe.reason == "host h9 has no GNU tar"


def test_probe_output_of_failed_command() -> None:
    probe = parse_probe_output("h9", 127, b"", b"sh: not found\n")

    assert probe.access is None
    assert probe.reason == "probing h9 failed with exit status 127: sh: not found"


def test_probe_output_lists_codecs_and_directories() -> None:
    stdout = b"access root\ntar tar (GNU tar) 1.34\ncodec zstd\nreadable /a b\nreadable /other\n"

    probe = parse_probe_output("h9", 0, stdout, b"", ("/a b", "/c"))

    assert probe.access is not None
    assert probe.access.tar_version == "tar (GNU tar) 1.34"
    assert probe.access.codecs == {"zstd"}
    assert probe.readable == {"/a b"}
    assert probe.checked == {"/a b", "/c"}
    assert probe.python3 is False


def test_probe_output_reports_python3() -> None:
    stdout = b"access sudo\ntar tar (GNU tar) 1.34\npython3 yes\n"

    probe = parse_probe_output("h9", 0, stdout, b"")

    assert probe.access is not None
    assert probe.python3 is True


ROOT_ACCESS = HostAccess("h9", (), "tar (GNU tar) 1.34")


def test_move_directory_in_one_command(tmp_path: Path) -> None:
    staging = tmp_path / "staging" / "_data"
    real = tmp_path / "real" / "_data"
    staging.mkdir(parents=True)
    real.mkdir(parents=True)
    (staging / "file").write_bytes(b"content")
    ssh = LocalSSH()

    move_directory(engine_with(ssh), ROOT_ACCESS, str(staging), str(real))

    assert len(ssh.commands) == 1
    assert (real / "file").read_bytes() == b"content"
    assert staging.is_dir()
    assert list(staging.iterdir()) == []


def test_move_directory_onto_nonempty_target(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    real = tmp_path / "real"
    staging.mkdir()
    real.mkdir()
    (staging / "new").write_bytes(b"new")
    (real / "old").write_bytes(b"old")

    with pytest.raises(MigrationFailed) as raised:
        move_directory(engine_with(LocalSSH()), ROOT_ACCESS, str(staging), str(real))

    assert "mv failed" in str(raised.value)
    assert "\n" not in str(raised.value)
    assert (staging / "new").read_bytes() == b"new"
    assert (real / "old").read_bytes() == b"old"


def test_move_directory_missing_source(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()

    with pytest.raises(MigrationFailed) as raised:
        move_directory(engine_with(LocalSSH()), ROOT_ACCESS, str(tmp_path / "gone"), str(real))

    assert "not one file system" in str(raised.value)
    assert real.is_dir()


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs a second file system at /dev/shm")
def test_move_directory_across_file_systems(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "file").write_bytes(b"x")
    if os.stat(staging).st_dev == os.stat("/dev/shm").st_dev:
        pytest.skip("/dev/shm is on the same file system as the temporary directory")

    with pytest.raises(MigrationFailed) as raised:
        move_directory(engine_with(LocalSSH()), ROOT_ACCESS, str(staging), "/dev/shm")

    assert "not one file system" in str(raised.value)
    assert (staging / "file").read_bytes() == b"x"


class RecordingChannel:
    """Stand-in for the target's SSH channel: keeps what was sent, fails after `fail_after` bytes."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.received = bytearray()
        self.fail_after = fail_after

    def sendall(self, chunk: bytes) -> None:
        if self.fail_after is not None and len(self.received) + len(chunk) > self.fail_after:
            raise OSError("Socket is closed")
        self.received += chunk

    def recv_stderr(self, size: int) -> bytes:
        return b""


def writer_with(channel: RecordingChannel) -> Any:
    stderr = SimpleNamespace(text=lambda: b"tar: write error\n")
    return SimpleNamespace(channel=channel, stderr=stderr)


def test_sender_keeps_chunk_order() -> None:
    channel = RecordingChannel()
    sender = _ChunkSender(writer_with(channel), "h9:/v")
    sender.start()
    chunks = [bytes([index]) * (1000 + index) for index in range(50)]

    for chunk in chunks:
        sender.put(chunk)
    sender.finish()

    assert bytes(channel.received) == b"".join(chunks)
    assert sender.sent == len(channel.received)


def test_sender_failure_raised_to_relay() -> None:
    channel = RecordingChannel(fail_after=2500)
    sender = _ChunkSender(writer_with(channel), "h9:/v")
    sender.start()

    with pytest.raises(TransferFailed) as raised:
        for _ in range(100):
            sender.put(b"x" * 1000)
        sender.finish()

    assert "sending to tar on target h9:/v failed after 2000 bytes" in str(raised.value)
    assert bytes(channel.received) == b"x" * 2000
    sender.stop()
    assert not sender.is_alive()


def test_sender_stop_ends_blocked_thread() -> None:
    sending = threading.Event()
    release = threading.Event()

    class BlockingChannel(RecordingChannel):
        def sendall(self, chunk: bytes) -> None:
            sending.set()
            release.wait(10)
            raise OSError("Socket is closed")

    sender = _ChunkSender(writer_with(BlockingChannel()), "h9:/v")
    sender.start()
    for _ in range(3):
        sender.put(b"y")
    assert sending.wait(10)

    release.set()  # stands for closing the channel, which wakes a blocked sendall
    sender.stop()

    assert not sender.is_alive()
    assert isinstance(sender.error, TransferFailed)


def test_sender_limits_queued_bytes() -> None:
    channel = RecordingChannel()
    sender = _ChunkSender(writer_with(channel), "h9:/v", limit_bytes=3000)
    queued_at_send: list[int] = []
    record = channel.sendall

    def recording_sendall(chunk: bytes) -> None:
        queued_at_send.append(sender.queued_bytes)
        record(chunk)

    channel.sendall = recording_sendall  # type: ignore[method-assign]
    sender.start()
    chunks = [bytes([index]) * 1000 for index in range(40)] + [b"z" * 5000]

    for chunk in chunks:
        sender.put(chunk)
    sender.finish()

    assert bytes(channel.received) == b"".join(chunks)
    assert max(queued_at_send[:-1]) <= 3000
    # A chunk larger than the limit is sent alone.
    assert queued_at_send[-1] == 5000
    assert sender.queued_bytes == 0


def test_sender_passes_memoryview_to_sendall() -> None:
    sent_types: list[type] = []

    class TypeRecordingChannel(RecordingChannel):
        def sendall(self, chunk: bytes) -> None:
            sent_types.append(type(chunk))
            super().sendall(chunk)

    channel = TypeRecordingChannel()
    sender = _ChunkSender(writer_with(channel), "h9:/v")
    sender.start()
    sender.put(b"a" * 3000)
    sender.put(b"b" * 10)
    sender.finish()

    # paramiko's sendall() slices the rest after each packet, which copies bytes but not a view.
    assert sent_types == [memoryview, memoryview]
    assert bytes(channel.received) == b"a" * 3000 + b"b" * 10


class ClosedChannel:
    """An SSH channel whose connection closed: paramiko raises EOFError with no text."""

    def sendall(self, chunk: bytes) -> None:
        raise EOFError()


class SilentStderr:
    def text(self) -> bytes:
        return b""


def test_send_on_closed_connection_message() -> None:
    writer = SimpleNamespace(channel=ClosedChannel(), stderr=SilentStderr())

    with pytest.raises(TransferFailed) as raised:
        hostpath._send(writer, b"data", "h2:/v", 319168512)

    message = str(raised.value)
    assert message == ("sending to tar on target h2:/v failed after 319168512 bytes: "
                       "the SSH connection was closed")


def test_long_tar_error_lines_are_shortened() -> None:
    deep = "/".join(["L" * 250] * 20)
    stderr = (f"tar: ./{deep}/f: Cannot open: File name too long\n"
              "tar: Exiting with failure status due to previous errors\n").encode()

    text = hostpath._tail_or_empty(stderr)

    first, second = text.split(" / ")
    assert len(first) == hostpath.MAX_QUOTED_LINE_CHARS
    assert first.startswith("tar: ./LLL")
    assert first.endswith("/f: Cannot open: File name too long")
    assert " ... " in first
    assert second == "tar: Exiting with failure status due to previous errors"
