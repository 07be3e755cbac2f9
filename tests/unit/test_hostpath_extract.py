"""GNU tar with the host path's extract options writes nothing outside its directory."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

from ddmdriver.hostpath import EXTRACT_OPTIONS


def member(name: str, *, data: bytes | None = None,
           symlink: str | None = None) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    if symlink is not None:
        info.type, info.linkname = tarfile.SYMTYPE, symlink
    else:
        info.size = len(data or b"")
    return info, data


def archive(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def test_gnu_tar_keeps_hostile_members_inside(tmp_path: Path) -> None:
    """Without DDM's guard, GNU tar 1.34 alone refuses or defuses each hostile member."""
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
        member(str(outside / "escape-4"), data=b"x"),
    )

    completed = subprocess.run(
        ["tar", "--extract", "--file=-", f"--directory={target}", *EXTRACT_OPTIONS],
        input=stream, capture_output=True, check=False,
    )

    assert completed.returncode == 2
    assert list(outside.iterdir()) == []
    assert (target / str(outside).lstrip("/") / "escape-4").read_bytes() == b"x"
