"""Pieced SHA-256 of large files: the controller's stream hasher against both host scripts.

The host scripts run as local python3 processes. Their pieced_sha256() is also called with a
small piece size, so that a few MiB have many pieces.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ddm import piecehash
from ddm.manifest import ManifestBuilder, compare_manifests
from ddm.piecehash import PiecedSHA256, content_hasher, digest_fits_size
from ddm.store import TaskStore
from ddmsyncer import hostverify
from ddmsyncer.hashcache import CachedHash, HashCache

PIECE = 256 * 1024
SCRIPTS = Path(hostverify.__file__).parent


# Returns the pieced digest of a file, opened here, as the script computes it.
DIGEST_FUNCTION = """
def file_pieced_digest(path, size, piece_bytes):
    descriptor = os.open(path, os.O_RDONLY)
    try:
        return pieced_sha256(descriptor, size, piece_bytes)
    finally:
        os.close(descriptor)
"""


def script_constant(name: str, constant: str) -> Any:
    source = (SCRIPTS / name).read_text()
    prefix = f"\n{constant} = "
    line = source[source.index(prefix) + len(prefix):].splitlines()[0]
    return eval(line, {})


def stream_digest(data: bytes, piece_bytes: int = PIECE, chunk: int = 70_001) -> str:
    hasher = content_hasher(len(data), piece_bytes)
    for offset in range(0, len(data), chunk):
        hasher.update(data[offset:offset + chunk])
    return hasher.hexdigest()


def host_digest(name: str, path: Path, size: int | None = None, piece_bytes: int = PIECE) -> str:
    """Return the pieced digest that host script `name` computes for the file at `path`."""
    source = (SCRIPTS / name).read_text().rstrip()
    assert source.endswith("\nmain()")
    program = source[:-len("main()")] + DIGEST_FUNCTION + (
        "print(file_pieced_digest(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))\n")
    size = path.stat().st_size if size is None else size
    output = subprocess.run([sys.executable, "-c", program, str(path), str(size), str(piece_bytes)],
                            check=True, capture_output=True, text=True).stdout
    return output.strip()


def scan_file_digest(root: Path, piece_bytes: int = PIECE) -> str:
    output = subprocess.run([sys.executable, "-c", hostverify.LOADER, hostverify.HOST_SCRIPT,
                             str(root), f"pieces:{piece_bytes}"],
                            check=True, capture_output=True).stdout
    records = [json.loads(line) for line in output.splitlines()]
    files = [record for record in records if record[1] == "file"]
    assert len(files) == 1
    return files[0][16]


@pytest.mark.parametrize("size", [4 * PIECE, 4 * PIECE + 1, 7 * PIECE - 1, 12 * PIECE])
def test_host_scripts_match_stream(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "large"
    path.write_bytes(data)
    expected = stream_digest(data)

    assert expected.startswith(f"sha256-pieces-{PIECE}:")
    assert host_digest("hostmanifest.py", path) == expected
    assert host_digest("hostscan.py", path) == expected
    assert scan_file_digest(tmp_path) == expected


def test_small_file_keeps_plain_sha256(tmp_path: Path) -> None:
    data = os.urandom(4 * PIECE - 1)
    (tmp_path / "small").write_bytes(data)

    assert stream_digest(data) == hashlib.sha256(data).hexdigest()
    assert scan_file_digest(tmp_path) == hashlib.sha256(data).hexdigest()


def test_digest_depends_on_piece_size() -> None:
    data = os.urandom(8 * PIECE)

    small_pieces = stream_digest(data, PIECE).split(":")[1]
    large_pieces = stream_digest(data, 2 * PIECE).split(":")[1]

    assert small_pieces != large_pieces


def test_pieced_digest_detects_corrupted_byte(tmp_path: Path) -> None:
    data = bytearray(os.urandom(3 * 1024 * 1024 + 5))
    expected = stream_digest(bytes(data))
    path = tmp_path / "large"

    for offset in (0, 5 * PIECE + 17, len(data) - 1):
        corrupted = bytearray(data)
        corrupted[offset] ^= 0x01
        path.write_bytes(corrupted)
        assert host_digest("hostmanifest.py", path) != expected, offset


def test_pieced_digest_detects_truncated_file(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024)
    expected = stream_digest(data)
    path = tmp_path / "large"

    for length in (len(data) - 1, len(data) - PIECE, 6 * PIECE):
        path.write_bytes(data[:length])
        assert host_digest("hostmanifest.py", path) != expected, length
        assert host_digest("hostscan.py", path) != expected, length


def test_host_digest_covers_bytes_appended_after_lstat(tmp_path: Path) -> None:
    data = os.urandom(6 * PIECE + 100)
    path = tmp_path / "large"
    path.write_bytes(data + b"appended")
    digest = host_digest("hostmanifest.py", path, size=len(data))

    hasher = PiecedSHA256(PIECE)
    hasher.update(data + b"appended")
    assert digest == hasher.hexdigest()


def test_verify_detects_corrupted_large_file(tmp_path: Path) -> None:
    root = tmp_path / "volume"
    root.mkdir()
    data = bytearray(os.urandom(2 * 1024 * 1024 + 3))
    (root / "large").write_bytes(data)
    archive = subprocess.run(["tar", "--create", "--file=-", f"--directory={root}", "."],
                             check=True, capture_output=True).stdout
    builder = ManifestBuilder(sha256=True, piece_bytes=PIECE)
    builder.feed(archive)
    source = hostverify.sha256_view(builder.close())
    assert source is not None

    def target() -> Any:
        argv = [sys.executable, "-c", hostverify.LOADER, hostverify.HOST_SCRIPT, str(root),
                f"pieces:{PIECE}"]
        output = subprocess.run(argv, check=True, capture_output=True).stdout
        records = [json.loads(line) for line in output.splitlines()]
        return hostverify.manifest_from_records(records, hash_content=True)

    assert compare_manifests(source, target(), ["content"]) == []
    stat_before = (root / "large").stat()
    data[PIECE * 3 + 9] ^= 0x80
    (root / "large").write_bytes(data)
    os.utime(root / "large", ns=(stat_before.st_atime_ns, stat_before.st_mtime_ns))

    differences = compare_manifests(source, target(), ["content"])
    assert [difference.path for difference in differences] == [b"large"]


def test_host_script_constants_match_controller() -> None:
    for name in ("hostmanifest.py", "hostscan.py"):
        assert script_constant(name, "MIN_PIECES") == piecehash.MIN_PIECES, name
        assert script_constant(name, "PIECES_HEADER") == piecehash.HEADER, name
        assert script_constant(name, "PIECES_PREFIX") == piecehash.PREFIX, name
    assert script_constant("hostscan.py", "PIECE_BYTES") == piecehash.PIECE_BYTES


def test_digest_fits_size() -> None:
    large = piecehash.MIN_PIECES * piecehash.PIECE_BYTES
    plain = "ab" * 32
    pieced = f"sha256-pieces-{piecehash.PIECE_BYTES}:" + "cd" * 32

    assert digest_fits_size(plain, large - 1)
    assert not digest_fits_size(plain, large)
    assert digest_fits_size(pieced, large)
    assert not digest_fits_size(pieced, large - 1)
    assert not digest_fits_size("sha256-pieces-1024:" + "cd" * 32, large)


def test_hash_cache_drops_plain_digest_of_large_file(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "tasks.db")
    try:
        cache = HashCache(store)
        large = piecehash.MIN_PIECES * piecehash.PIECE_BYTES
        rows = {
            b"old-large": CachedHash((1, 2, large, 3, 4), "ab" * 32),
            b"new-large": CachedHash((1, 5, large, 3, 4),
                                     f"sha256-pieces-{piecehash.PIECE_BYTES}:" + "cd" * 32),
            b"small": CachedHash((1, 6, 10, 3, 4), "ef" * 32),
        }
        cache.save("scope", rows, [])

        loaded = cache.load("scope")
    finally:
        store.close()

    assert sorted(loaded) == [b"new-large", b"small"]
    assert loaded[b"new-large"] == rows[b"new-large"]
