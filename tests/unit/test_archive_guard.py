"""ArchiveGuard: members that could write outside the target volume stop the stream."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from ddmdriver.archiveguard import ArchiveGuard, HostileArchive
from ddmdriver.hostpath import EXTRACT_OPTIONS


def member(name: str, *, data: bytes | None = None, symlink: str | None = None,
           hardlink: str | None = None) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    if symlink is not None:
        info.type, info.linkname = tarfile.SYMTYPE, symlink
    elif hardlink is not None:
        info.type, info.linkname = tarfile.LNKTYPE, hardlink
    elif data is None:
        info.type = tarfile.DIRTYPE
    else:
        info.size = len(data)
    return info, data


def archive(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def feed(guard: ArchiveGuard, stream: bytes, chunk_size: int = 512) -> None:
    for start in range(0, len(stream), chunk_size):
        guard(memoryview(stream[start : start + chunk_size]))


HOSTILE = {
    "dotdot": archive(member("../escape", data=b"x")),
    "dotdot-inside": archive(member("a/../../escape", data=b"x")),
    "absolute": archive(member("/etc/escape", data=b"x")),
    "through-symlink": archive(member("l", symlink="/etc"), member("l/escape", data=b"x")),
    "through-relative-symlink": archive(member("d", data=None), member("d/l", symlink="."),
                                        member("d/l/escape", data=b"x")),
    "hardlink-dotdot": archive(member("h", hardlink="../../etc/passwd")),
    "hardlink-absolute": archive(member("h", hardlink="/etc/passwd")),
    "prefixed-dotdot": archive(member("v/../escape", data=b"x")),
    "symlink-replaced-by-dir": archive(member("r", symlink="/tmp"), member("r", data=None),
                                       member("r/escape", data=b"x")),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_guard_rejects_hostile_member(case: str) -> None:
    guard = ArchiveGuard("test", strip_prefix=b"v" if case.startswith("prefixed") else b"")

    with pytest.raises(HostileArchive):
        feed(guard, HOSTILE[case])


def test_guard_accepts_odd_but_safe_members() -> None:
    stream = archive(
        member("./", data=None),
        member("./abs-link", symlink="/etc/passwd"),
        member("./up-link", symlink="../../outside"),
        member("./dangling", symlink="no/such/file"),
        member("./dir", data=None),
        member("./dir/file..name", data=b"x"),
        member("./dir/hard", hardlink="./dir/file..name"),
    )
    guard = ArchiveGuard("test")

    feed(guard, stream, chunk_size=100)

    assert guard.members == 7


def test_guard_stops_before_the_member_is_sent() -> None:
    stream = archive(member("ok", data=b"x" * 2000), member("../escape", data=b"x"))
    guard = ArchiveGuard("test")
    sent = bytearray()

    with pytest.raises(HostileArchive):
        for start in range(0, len(stream), 512):
            chunk = stream[start : start + 512]
            guard(memoryview(chunk))
            sent += chunk

    assert b"escape" not in bytes(sent)


def test_gnu_tar_extract_options_keep_hostile_members_inside(tmp_path: Path) -> None:
    """GNU tar alone, with DDM's extract options, also writes nothing outside its directory."""
    outside = tmp_path / "outside"
    target = tmp_path / "target"
    outside.mkdir()
    target.mkdir()
    stream = archive(
        member("abs", symlink=str(outside)),
        member("abs/escape-1", data=b"x"),
        member("rel", symlink="../outside"),
        member("rel/escape-2", data=b"x"),
        member("../outside/escape-3", data=b"x"),
    )

    subprocess.run(["tar", "--extract", "--file=-", f"--directory={target}", *EXTRACT_OPTIONS],
                   input=stream, capture_output=True, check=False)

    assert list(outside.iterdir()) == []
