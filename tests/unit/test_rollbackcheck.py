"""Unit tests of the rollback's changed-target check (ddmsyncer.rollbackcheck)."""

from __future__ import annotations

import io
import tarfile

import pytest

from ddm.errors import ExitStatus, TargetsChanged
from ddm.manifest import Manifest, ManifestBuilder
from ddm.task import Task, TaskItem, TaskSpec
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


def task_of_volumes(count: int) -> Task:
    task = Task(id="a" * 12, spec=TaskSpec(source_host="old", target_host="new"))
    task.items = [TaskItem(task_id=task.id, position=position, source=f"v{position}",
                           target=f"t{position}") for position in range(count)]
    return task


def test_changed_error_names_one_volume() -> None:
    error = rollbackcheck.targets_changed_error(task_of_volumes(2), {1: "was replaced"})

    assert isinstance(error, TargetsChanged)
    assert error.exit_status is ExitStatus.CONFLICT
    assert error.changed == {1: "was replaced"}
    assert str(error) == ("volume 't1' on new was replaced; inspect volume 't1' on new; pass "
                          "--force to remove it anyway")


def test_changed_error_names_several_volumes() -> None:
    changed = {0: "was replaced", 2: "changed since task X finished"}

    error = rollbackcheck.targets_changed_error(task_of_volumes(3), changed)

    assert str(error).startswith(f"2 target volumes on new changed since task {'a' * 12}, so "
                                 "the rollback kept them and removed nothing: 't0' and 't2'. "
                                 "Volume 't0' was replaced; inspect them on new")
    assert error.changed == changed


def test_changed_error_counts_long_list() -> None:
    changed = {position: "was replaced" for position in range(8)}

    error = rollbackcheck.targets_changed_error(task_of_volumes(8), changed)

    assert "8 target volumes on new" in str(error)
    assert "'t0', 't1', 't2', 't3', 't4' and 3 more." in str(error)
    assert "'t5'" not in str(error)
