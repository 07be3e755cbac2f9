"""The busybox image that every lab host gets with `docker import`, never pulled."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import tarfile
from pathlib import Path

from tests.lab.errors import LabError

BUSYBOX_IMAGE = "ddm-lab/busybox:latest"
BUSYBOX_IMAGE_CMD = 'CMD ["/bin/sh"]'

_ELF_MAGIC = b"\x7fELF"
_PT_INTERP = 3


def find_static_busybox() -> Path:
    """Return the path of a statically linked busybox, as Debian's busybox-static installs it.

    Raises LabError when busybox is missing or dynamically linked, because a
    dynamically linked binary cannot run in an image that has no libc.
    """
    found = shutil.which("busybox", path="/usr/bin:/bin:/usr/local/bin:/usr/sbin:/sbin")
    if found is None:
        raise LabError("busybox not found; install the Debian package busybox-static")

    path = Path(found).resolve()
    if not is_static_elf(path):
        raise LabError(f"{path} is dynamically linked; install the Debian package busybox-static")
    return path


def is_static_elf(path: Path) -> bool:
    """Return whether path is an ELF executable without a PT_INTERP program header."""
    with path.open("rb") as binary:
        header = binary.read(64)
        if len(header) < 64 or header[:4] != _ELF_MAGIC:
            return False

        is_64_bit = header[4] == 2
        byte_order = "<" if header[5] == 1 else ">"
        if is_64_bit:
            program_header_offset = struct.unpack_from(byte_order + "Q", header, 0x20)[0]
            entry_size, entry_count = struct.unpack_from(byte_order + "HH", header, 0x36)
        else:
            program_header_offset = struct.unpack_from(byte_order + "I", header, 0x1C)[0]
            entry_size, entry_count = struct.unpack_from(byte_order + "HH", header, 0x2A)

        binary.seek(program_header_offset)
        table = binary.read(entry_size * entry_count)

    for index in range(entry_count):
        segment_type = struct.unpack_from(byte_order + "I", table, index * entry_size)[0]
        if segment_type == _PT_INTERP:
            return False
    return True


def list_applets(busybox: Path) -> list[str]:
    """Return the applet names that `busybox --list` prints."""
    listing = subprocess.run([str(busybox), "--list"], check=True, capture_output=True, text=True)
    return [name for name in listing.stdout.split() if name and name != "busybox" and "/" not in name]


def build_busybox_tar(destination: Path, busybox: Path | None = None) -> Path:
    """Write a root filesystem tar with /bin/busybox, one /bin symlink per applet and /tmp."""
    if busybox is None:
        busybox = find_static_busybox()
    applets = list_applets(busybox)

    with tarfile.open(destination, "w", format=tarfile.GNU_FORMAT) as archive:
        archive.addfile(_directory_member("bin", 0o755))
        archive.addfile(_directory_member("tmp", 0o1777))

        binary = busybox.read_bytes()
        member = tarfile.TarInfo("bin/busybox")
        member.size = len(binary)
        member.mode = 0o755
        archive.addfile(member, io.BytesIO(binary))

        for applet in applets:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            link.mode = 0o777
            archive.addfile(link)

    return destination


def _directory_member(name: str, mode: int) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type = tarfile.DIRTYPE
    member.mode = mode
    return member
