"""Unit tests of the rollback's changed-target check (ddmsyncer.rollbackcheck)."""

from __future__ import annotations

import io
import tarfile

import pytest

from ddm.manifest import Manifest, ManifestBuilder
from ddmsyncer import rollbackcheck, volumes
from ddmsyncer.hostverify import sha256_view

MTIME = 1_700_000_000


def tar_of(files: dict[str, bytes], *, mode: int = 0o644) -> bytes:
    """Return a tar archive of `files` under v/, as Docker's archive of /v names them."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        root = tarfile.TarInfo("v")
        root.type, root.mode, root.mtime = tarfile.DIRTYPE, 0o755, MTIME
        archive.addfile(root)
        for name, data in files.items():
            info = tarfile.TarInfo(f"v/{name}")
            info.size, info.mode, info.mtime = len(data), mode, MTIME
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def manifest_of(files: dict[str, bytes], *, hash_content: bool, sha256: bool = False,
                mode: int = 0o644) -> Manifest:
    builder = ManifestBuilder(hash_content=hash_content, strip_prefix=volumes.ARCHIVE_PREFIX,
                              sha256=sha256)
    builder.feed(tar_of(files, mode=mode))
    return builder.close()


@pytest.fixture
def target_files(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """Files of the fake target volume that volumes.read_manifest() returns."""
    files: dict[str, bytes] = {}

    def read_manifest(engine: object, volume: str, *, task_id: str, hash_content: bool,
                      sha256: bool = False) -> Manifest:
        return manifest_of(files, hash_content=hash_content, sha256=sha256)

    monkeypatch.setattr(volumes, "read_manifest", read_manifest)
    return files


def test_digest_kind_of_each_manifest() -> None:
    files = {"a.txt": b"one\n"}

    assert rollbackcheck.stored_digest_kind(manifest_of(files, hash_content=False)) is None
    assert rollbackcheck.stored_digest_kind(manifest_of({}, hash_content=True)) is None
    assert rollbackcheck.stored_digest_kind(manifest_of(files, hash_content=True)) == "xxh3"
    stored = sha256_view(manifest_of(files, hash_content=True, sha256=True))
    assert stored is not None
    assert rollbackcheck.stored_digest_kind(stored) == "sha256"


def test_same_size_rewrite_found_by_xxh3(target_files: dict[str, bytes]) -> None:
    stored = manifest_of({"a.txt": b"before\n"}, hash_content=True)
    target_files["a.txt"] = b"AFTER!\n"

    differences = rollbackcheck.target_differences(None, "vol", stored, task_id="t")

    assert [(difference.path, difference.aspect) for difference in differences] == [
        (b"a.txt", "content")]


def test_same_size_rewrite_found_by_sha256(target_files: dict[str, bytes]) -> None:
    stored = sha256_view(manifest_of({"a.txt": b"before\n"}, hash_content=True, sha256=True))
    assert stored is not None
    target_files["a.txt"] = b"AFTER!\n"

    differences = rollbackcheck.target_differences(None, "vol", stored, task_id="t")

    assert [(difference.path, difference.aspect) for difference in differences] == [
        (b"a.txt", "content")]


@pytest.mark.parametrize("sha256", [False, True])
def test_unchanged_target_has_no_differences(target_files: dict[str, bytes],
                                             sha256: bool) -> None:
    stored = manifest_of({"a.txt": b"before\n"}, hash_content=True, sha256=sha256)
    if sha256:
        stored = sha256_view(stored)
    target_files["a.txt"] = b"before\n"

    assert rollbackcheck.target_differences(None, "vol", stored, task_id="t") == []


def test_metadata_only_misses_same_size_rewrite(target_files: dict[str, bytes]) -> None:
    stored = manifest_of({"a.txt": b"before\n"}, hash_content=False)
    target_files["a.txt"] = b"AFTER!\n"

    assert rollbackcheck.target_differences(None, "vol", stored, task_id="t") == []
    assert "metadata only" in rollbackcheck.describe_comparison(stored)
