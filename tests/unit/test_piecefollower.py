"""The verify scan's PieceFollower: pieces hashed while tar writes a file, and what voids them.

The follower class of ddmsyncer/hostmanifest.py is loaded from the script's source and driven
step by step (no thread), so each test decides when the follower reads its events. The session
tests run the whole script as a local python3 process and extract with the machine's GNU tar.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ddm.piecehash import content_hasher
from ddmdriver.hostpath import CREATE_OPTIONS, EXTRACT_OPTIONS
from ddmsyncer import hostverify

# The host script runs on Linux Docker hosts and imports grp, so these tests need POSIX. The
# Windows simulation of tests/unit/test_windows_portability.py blocks grp and skips them.
pytest.importorskip("grp")

PIECE = 256 * 1024
FILE_BYTES = 6 * PIECE + 1000
SCRIPT = Path(hostverify.__file__).with_name("hostmanifest.py")


def load_script() -> dict[str, Any]:
    """Return the globals of hostmanifest.py without running its main()."""
    source = SCRIPT.read_text().rstrip()
    assert source.endswith("\nmain()")
    namespace: dict[str, Any] = {"__name__": "hostmanifest"}
    exec(compile(source[:-len("main()")], str(SCRIPT), "exec"), namespace)
    return namespace


def expected_digest(data: bytes) -> str:
    hasher = content_hasher(len(data), PIECE)
    hasher.update(data)
    return hasher.hexdigest()


def step(follower: Any) -> None:
    """Do what one wake-up of the follower's thread does."""
    follower.read_events()
    follower.check_candidates()
    follower.hash_followed()


def write_like_tar(follower: Any, path: Path, data: bytes) -> None:
    """Create, write, chmod and close `path` as GNU tar does, with follower steps in between."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    step(follower)
    for offset in range(0, len(data), 2 * PIECE):
        os.write(descriptor, data[offset:offset + 2 * PIECE])
        step(follower)
    os.fchmod(descriptor, 0o644)
    os.close(descriptor)
    step(follower)


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 1]))


@pytest.fixture
def script() -> dict[str, Any]:
    return load_script()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    directory = tmp_path / "volume"
    directory.mkdir()
    return directory


def followed_digest(script: dict[str, Any], follower: Any, path: Path) -> tuple[str, Any]:
    """Return the scan's digest of `path` after the follower took in every event, and its pieces."""
    follower.read_events()
    info = os.lstat(path)
    followed = follower.piece_digests(info)
    return script["file_sha256"](os.fsencode(path), info.st_size, PIECE, followed), followed


def test_follower_hashes_written_pieces(script: dict[str, Any], root: Path) -> None:
    data = os.urandom(FILE_BYTES)
    follower = script["PieceFollower"](os.fsencode(root), PIECE)

    write_like_tar(follower, root / "big", data)
    digest, followed = followed_digest(script, follower, root / "big")

    assert followed is not None
    assert len(followed[1]) == 6
    assert digest == expected_digest(data)


def test_follower_follows_new_directory(script: dict[str, Any], root: Path) -> None:
    data = os.urandom(FILE_BYTES)
    follower = script["PieceFollower"](os.fsencode(root), PIECE)
    (root / "sub").mkdir()
    step(follower)

    write_like_tar(follower, root / "sub" / "big", data)
    digest, followed = followed_digest(script, follower, root / "sub" / "big")

    assert followed is not None
    assert digest == expected_digest(data)


@pytest.mark.parametrize("offset", [PIECE + 5, 3 * PIECE, FILE_BYTES - 1])
def test_write_after_close_voids_pieces(script: dict[str, Any], root: Path, offset: int) -> None:
    data = os.urandom(FILE_BYTES)
    follower = script["PieceFollower"](os.fsencode(root), PIECE)
    write_like_tar(follower, root / "big", data)

    flip_byte(root / "big", offset)
    digest, followed = followed_digest(script, follower, root / "big")

    assert followed is None
    assert digest != expected_digest(data)


def test_second_writer_voids_pieces(script: dict[str, Any], root: Path) -> None:
    data = os.urandom(FILE_BYTES)
    follower = script["PieceFollower"](os.fsencode(root), PIECE)
    path = root / "big"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(descriptor, data[:3 * PIECE])
    step(follower)

    # Another process rewrites the first piece, already hashed, while tar still writes.
    flip_byte(path, 10)
    flip_byte(path, 10)
    os.write(descriptor, data[3 * PIECE:])
    os.close(descriptor)
    _, followed = followed_digest(script, follower, path)

    assert followed is None


def test_truncate_while_writing_voids_pieces(script: dict[str, Any], root: Path) -> None:
    data = os.urandom(FILE_BYTES)
    follower = script["PieceFollower"](os.fsencode(root), PIECE)
    path = root / "big"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(descriptor, data[:3 * PIECE])
    step(follower)

    # tar writes on at its own offset, so the cut part of the file becomes a hole.
    os.truncate(path, PIECE)
    os.write(descriptor, data[3 * PIECE:])
    os.close(descriptor)
    _, followed = followed_digest(script, follower, path)

    assert followed is None


def test_file_present_before_watch_not_followed(script: dict[str, Any], root: Path) -> None:
    data = os.urandom(FILE_BYTES)
    (root / "big").write_bytes(data)
    follower = script["PieceFollower"](os.fsencode(root), PIECE)
    step(follower)

    digest, followed = followed_digest(script, follower, root / "big")

    assert followed is None
    assert digest == expected_digest(data)


def test_hard_linked_file_not_trusted(script: dict[str, Any], root: Path) -> None:
    data = os.urandom(FILE_BYTES)
    follower = script["PieceFollower"](os.fsencode(root), PIECE)
    write_like_tar(follower, root / "big", data)
    os.link(root / "big", root / "other")

    _, followed = followed_digest(script, follower, root / "big")

    assert followed is None


def test_failed_event_handling_trusts_nothing(script: dict[str, Any], root: Path) -> None:
    data = os.urandom(FILE_BYTES)
    follower = script["PieceFollower"](os.fsencode(root), PIECE)
    write_like_tar(follower, root / "big", data)
    follower.start()

    def fail(*arguments: Any) -> None:
        raise ValueError("invalid event")

    follower.handle_event = fail
    flip_byte(root / "big", PIECE + 5)
    follower.stop()

    assert follower.broken is True
    assert follower.piece_digests(os.lstat(root / "big")) is None


def test_known_pieces_skip_reading(script: dict[str, Any], root: Path) -> None:
    # Known digests stand for the first pieces: wrong ones give a wrong digest, which shows
    # that pieced_sha256 uses them instead of reading those pieces.
    data = os.urandom(FILE_BYTES)
    path = root / "big"
    path.write_bytes(data)
    descriptor = os.open(path, os.O_RDONLY)
    try:
        with_wrong_piece = script["pieced_sha256"](descriptor, FILE_BYTES, PIECE, [b"\0" * 32])
        with_no_piece = script["pieced_sha256"](descriptor, FILE_BYTES, PIECE, [])
    finally:
        os.close(descriptor)

    assert with_no_piece == expected_digest(data)
    assert with_wrong_piece != expected_digest(data)


def run_session(root: Path, archive: bytes, change: Any = None, *,
                root_on_stdin: bool = False) -> tuple[list[list[Any]], dict[str, Any]]:
    """Start the script's session on `root`, extract `archive` with GNU tar, apply `change`, scan."""
    process = subprocess.Popen([sys.executable, "-c", hostverify.LOADER, hostverify.HOST_SCRIPT,
                                "-" if root_on_stdin else str(root), f"pieces:{PIECE}", "session"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None
    try:
        if root_on_stdin:
            process.stdin.write(json.dumps({"root": str(root)}).encode() + b"\n")
            process.stdin.flush()
        ready = json.loads(process.stdout.readline())
        assert ready == {"ready": True, "following": True}
        subprocess.run(["tar", "--extract", "--file=-", f"--directory={root}", *EXTRACT_OPTIONS],
                       input=archive, check=True)
        if change is not None:
            change(root)
        process.stdin.write(b"scan\n")
        process.stdin.flush()
        records = []
        for line in process.stdout:
            if line.startswith(hostverify.SESSION_END):
                return records, json.loads(line)
            records.append(json.loads(line))
        raise AssertionError("the session ended without its end line")
    finally:
        process.stdin.close()
        process.wait()


def make_archive(tmp_path: Path, data: bytes) -> bytes:
    source = tmp_path / "source"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "big").write_bytes(data)
    return subprocess.run(["tar", "--create", "--file=-", f"--directory={source}",
                           *CREATE_OPTIONS, "."], check=True, capture_output=True).stdout


def big_file_digest(records: list[list[Any]]) -> str:
    files = [record for record in records if record[1] == "file"]
    assert len(files) == 1
    return files[0][16]


def test_session_scan_matches_stream(tmp_path: Path, root: Path) -> None:
    data = os.urandom(FILE_BYTES)

    records, end = run_session(root, make_archive(tmp_path, data))

    assert big_file_digest(records) == expected_digest(data)
    assert end["end"] is True
    assert end["followed_bytes"] % PIECE == 0


@pytest.mark.parametrize("offset", [3 * PIECE + 7, FILE_BYTES - 1])
def test_session_scan_catches_change_after_copy(tmp_path: Path, root: Path, offset: int) -> None:
    data = os.urandom(FILE_BYTES)

    records, _ = run_session(root, make_archive(tmp_path, data),
                             change=lambda directory: flip_byte(directory / "sub" / "big", offset))

    assert big_file_digest(records) != expected_digest(data)


def test_session_takes_root_from_stdin(tmp_path: Path, root: Path) -> None:
    data = os.urandom(FILE_BYTES)

    records, end = run_session(root, make_archive(tmp_path, data), root_on_stdin=True)

    assert big_file_digest(records) == expected_digest(data)
    assert end["end"] is True


def test_session_without_root_line_exits(root: Path) -> None:
    completed = subprocess.run([sys.executable, "-c", hostverify.LOADER, hostverify.HOST_SCRIPT,
                                "-", f"pieces:{PIECE}", "session"],
                               input=b"", capture_output=True, check=True)

    assert completed.stdout == b""
