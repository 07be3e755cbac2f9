"""hostverify.ScanSession: the verify scan started ahead, then the move, with the real script.

The host script runs as a local subprocess behind a fake SSH channel, on temporary trees.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ddm.errors import MigrationFailed
from ddmsyncer import hostverify


class LocalChannel:
    """The part of an SSH exec channel that ScanSession uses, over a local process."""

    def __init__(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, bufsize=0)

    def sendall(self, data: bytes) -> None:
        self.process.stdin.write(data)

    def shutdown_write(self) -> None:
        self.process.stdin.close()

    def recv(self, size: int) -> bytes:
        return self.process.stdout.read(size)

    def settimeout(self, timeout: float | None) -> None:
        # Reads of the local pipe block without a timeout; the tests never let one expire.
        self.timeout = timeout

    def recv_stderr(self, size: int) -> bytes:
        return self.process.stderr.read(size)

    def recv_exit_status(self) -> int:
        return self.process.wait()

    def close(self) -> None:
        if not self.process.stdin.closed:
            self.process.stdin.close()  # as the SSH server does when a channel closes
        self.process.wait()


class LocalSSH:
    def __init__(self) -> None:
        self.channels: list[LocalChannel] = []

    def open_command(self, argv: list[str]) -> LocalChannel:
        channel = LocalChannel(argv)
        self.channels.append(channel)
        return channel


@dataclass(frozen=True)
class LocalHost:
    name: str


class LocalEngine:
    def __init__(self) -> None:
        self.host = LocalHost("h2")
        self.ssh = LocalSSH()


class LocalAccess:
    def argv(self, *command: str) -> list[str]:
        assert command[0] == "python3"
        return [sys.executable, *command[1:]]


def make_tree(root: Path) -> None:
    (root / "dir").mkdir(parents=True)
    (root / "dir" / "data.bin").write_bytes(os.urandom(100_000))
    (root / "small").write_bytes(b"small\n")


def start(root: Path, engine: LocalEngine | None = None) -> hostverify.ScanSession:
    return hostverify.ScanSession(engine or LocalEngine(), LocalAccess(), str(root),
                                  hash_content=True, keys=True)


def test_session_scan_matches_scan(tmp_path: Path) -> None:
    root = tmp_path / "staging"
    make_tree(root)
    session = start(root)
    records: list[list[object]] = []

    scan = session.scan(on_record=records.append)
    session.close()
    plain_records: list[list[object]] = []
    plain = hostverify.scan_manifest(LocalEngine(), LocalAccess(), str(root), hash_content=True,
                                     on_record=plain_records.append)

    assert sorted(scan.manifest.entries) == [b".", b"dir", b"dir/data.bin", b"small"]
    for path in scan.manifest.entries:
        assert scan.manifest.entries[path] == plain.manifest.entries[path], path
    assert scan.listing_bytes == plain.listing_bytes
    assert [len(record) for record in records] == [len(record) for record in plain_records]


def test_session_moves_scanned_directory(tmp_path: Path) -> None:
    root = tmp_path / "staging"
    target = tmp_path / "target"
    make_tree(root)
    target.mkdir()
    before = (root / "dir" / "data.bin").read_bytes()
    session = start(root)

    session.scan()
    session.move(str(target))

    assert (target / "dir" / "data.bin").read_bytes() == before
    assert root.is_dir()
    assert list(root.iterdir()) == []


def test_session_move_rejects_full_target(tmp_path: Path) -> None:
    root = tmp_path / "staging"
    target = tmp_path / "target"
    make_tree(root)
    target.mkdir()
    (target / "other").write_bytes(b"x")
    session = start(root)
    session.scan()

    with pytest.raises(MigrationFailed, match="mv failed"):
        session.move(str(target))
    assert (root / "small").read_bytes() == b"small\n"
    assert (target / "other").read_bytes() == b"x"


def test_session_move_before_scan_moves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "staging"
    target = tmp_path / "target"
    make_tree(root)
    target.mkdir()
    session = start(root)

    with pytest.raises(MigrationFailed, match="exit status 2"):
        session.move(str(target))
    assert (root / "small").read_bytes() == b"small\n"
    assert list(target.iterdir()) == []


def test_session_closed_before_scan_lists_nothing(tmp_path: Path) -> None:
    root = tmp_path / "staging"
    make_tree(root)
    engine = LocalEngine()
    session = start(root, engine)

    session.close()

    channel = engine.ssh.channels[0]
    assert channel.process.returncode == 0
    lines = channel.process.stdout.read().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(hostverify.SESSION_READY)


def test_session_scan_failure_raises(tmp_path: Path) -> None:
    session = start(tmp_path / "missing")

    with pytest.raises(MigrationFailed, match="failed with exit status 1"):
        session.scan()


def test_early_session_follows_named_directory(tmp_path: Path) -> None:
    root = tmp_path / "staging"
    session = hostverify.ScanSession(LocalEngine(), LocalAccess(), None, hash_content=True,
                                     keys=False)
    root.mkdir()

    session.follow(str(root))
    ready = session.wait_ready(30.0)
    make_tree(root)
    scan = session.scan()
    session.close()

    assert ready is True
    assert session.directory == str(root)
    assert sorted(scan.manifest.entries) == [b".", b"dir", b"dir/data.bin", b"small"]


def test_scan_skips_unread_ready_line(tmp_path: Path) -> None:
    root = tmp_path / "staging"
    make_tree(root)
    session = start(root)

    scan = session.scan()
    session.close()

    assert sorted(scan.manifest.entries) == [b".", b"dir", b"dir/data.bin", b"small"]
