"""Fidelity: a tree holding every aspect DDM must keep, migrated on each data path.

The tree is written into the source volume's directory from outside the lab host (the
host's /var/lib/docker is a directory of this machine), and both trees are read the same
way with os.lstat, os.readlink and os.getxattr, not with DDM's manifest.

The host path (GNU tar) must keep every aspect. The Engine API path must differ in
exactly the documented losses: sub-second mtimes, xattrs other than security.capability
(POSIX ACLs are xattrs too) and sparseness.

The 8 GiB file is sparse: two 4 KiB data blocks and holes, so it costs no disk on the host
path. It is left out of the Engine API run, because that path writes the holes as 8 GiB of
zeros. A 16 MiB sparse file shows the loss of sparseness there.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from tests.integration.commands import run_command
from tests.lab import Lab, LabHost
from tests.lab.resources import LabResources, unique_name

BIG_ID = 3_000_000  # above 2097151, the largest id that fits in an octal ustar header
BIG_GID = 4_000_123
EIGHT_GIB = 8 << 30
BLOCK = 1 << 20

# struct vfs_cap_data, revision 2: effective flag, CAP_NET_BIND_SERVICE (bit 10) permitted.
CAPABILITY = (0x02000001).to_bytes(4, "little") + (1 << 10).to_bytes(4, "little") + bytes(12)

NAMES = (
    b"latin1-\xe9\xff",
    b"with space",
    b"new\nline",
    b"-leading-dash",
    b"back\\slash",
    b".dotfile",
    b"n" * 255,
)


@dataclass(frozen=True)
class Node:
    """One path of a tree as read from the filesystem."""

    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    content: str | None = None  # digest of the non-zero 1 MiB blocks, independent of holes
    allocated: int | None = None  # bytes allocated on disk, for regular files
    link: bytes | None = None
    rdev: int | None = None
    xattrs: tuple[tuple[bytes, bytes], ...] = ()
    inode_group: tuple[bytes, ...] = ()


def build_tree(root: Path, *, big_sparse_size: int) -> None:
    """Write every aspect of the fidelity list under `root`, mtimes last."""
    top = bytes(root)

    def path(relative: bytes) -> bytes:
        return os.path.join(top, relative)

    os.makedirs(path(b"dir/nested/deeper"))
    os.makedirs(path(b"empty"))
    with open(path(b"dir/data.bin"), "wb") as handle:
        handle.write(os.urandom(3 * BLOCK + 17))
    with open(path(b"small.txt"), "wb") as handle:
        handle.write(b"hello\n")

    for name in NAMES:
        with open(path(b"dir/" + name), "wb") as handle:
            handle.write(name + b"\n")

    long_dir = path(b"/".join([b"L" * 100, b"M" * 100, b"N" * 100]))
    os.makedirs(long_dir)
    with open(os.path.join(long_dir, b"file-in-a-path-over-255-bytes"), "wb") as handle:
        handle.write(b"deep\n")

    os.symlink(b"small.txt", path(b"link-relative"))
    os.symlink(b"/etc/passwd", path(b"link-absolute"))
    os.symlink(b"does/not/exist", path(b"link-dangling"))
    os.link(path(b"dir/data.bin"), path(b"hardlink-1"))
    os.link(path(b"dir/data.bin"), path(b"dir/nested/hardlink-2"))
    os.mkfifo(path(b"fifo"))
    os.mknod(path(b"char-device"), 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(path(b"block-device"), 0o600 | stat.S_IFBLK, os.makedev(7, 0))

    with open(path(b"sparse"), "wb") as handle:
        handle.truncate(big_sparse_size)
        handle.seek(0)
        handle.write(b"A" * 4096)
        handle.seek(big_sparse_size // 2)
        handle.write(b"B" * 4096)

    with open(path(b"setuid"), "wb") as handle:
        handle.write(b"#!/bin/sh\n")
    os.chmod(path(b"setuid"), 0o4755)
    os.chmod(path(b"dir/nested"), 0o2775)
    os.makedirs(path(b"sticky"))
    os.chmod(path(b"sticky"), 0o1777)
    os.chown(path(b"small.txt"), BIG_ID, BIG_GID)
    os.chown(path(b"link-dangling"), 1234, 5678, follow_symlinks=False)

    os.setxattr(path(b"small.txt"), b"user.comment", b"kept by the host path")
    os.setxattr(path(b"dir"), b"user.binary", b"\x00\xff\x01")
    os.setxattr(path(b"setuid"), b"security.capability", CAPABILITY)
    subprocess.run(["setfacl", "-m", "u:1234:rwx,g:555:r", path(b"small.txt")], check=True)
    subprocess.run(["setfacl", "-d", "-m", "g:555:rx", path(b"dir")], check=True)

    with socket.socket(socket.AF_UNIX) as unix_socket:
        unix_socket.bind(path(b"socket"))

    os.chown(top, 999, 999)
    os.chmod(top, 0o700)
    set_mtimes(top)


def set_mtimes(top: bytes) -> None:
    """Give every path a distinct mtime with nanoseconds, children before their directory."""
    stamp = 1_600_000_000_123_456_789
    for directory, dirnames, filenames in os.walk(top, topdown=False):
        for name in [*filenames, *dirnames]:
            stamp += 1_000_000_007
            os.utime(os.path.join(directory, name), ns=(stamp, stamp), follow_symlinks=False)
    os.utime(top, ns=(stamp + 5, stamp + 5))


def content_digest(path: bytes, size: int) -> str:
    """Digest the non-zero 1 MiB blocks with their index, reading only data extents."""
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        descriptor = handle.fileno()
        offset = 0
        while offset < size:
            try:
                offset = os.lseek(descriptor, offset, os.SEEK_DATA)
            except OSError:
                break
            hole = os.lseek(descriptor, offset, os.SEEK_HOLE)
            block_start = offset - offset % BLOCK
            handle.seek(block_start)
            while block_start < hole:
                block = handle.read(BLOCK)
                if block.strip(b"\0"):
                    digest.update(block_start.to_bytes(8, "little") + hashlib.sha256(block).digest())
                block_start += BLOCK
            offset = block_start
    return digest.hexdigest()


def snapshot(root: Path) -> dict[bytes, Node]:
    """Read every path under `root` (the root is b".") with the standard library."""
    top = bytes(root)
    nodes: dict[bytes, Node] = {}
    inodes: dict[int, list[bytes]] = {}
    for directory, dirnames, filenames in os.walk(top):
        for name in [b"", *dirnames, *filenames]:
            if name == b"" and directory != top:
                continue
            full = os.path.join(directory, name) if name else directory
            relative = os.path.relpath(full, top)
            info = os.lstat(full)
            nodes[relative] = read_node(full, info)
            if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
                inodes.setdefault(info.st_ino, []).append(relative)

    for paths in inodes.values():
        group = tuple(sorted(paths))
        for relative in group:
            nodes[relative] = replace(nodes[relative], inode_group=group)
    return nodes


def read_node(full: bytes, info: os.stat_result) -> Node:
    kinds = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
             stat.S_IFIFO: "fifo", stat.S_IFCHR: "char", stat.S_IFBLK: "block",
             stat.S_IFSOCK: "socket"}
    kind = kinds[stat.S_IFMT(info.st_mode)]
    names = os.listxattr(full, follow_symlinks=False) if kind != "socket" else []
    xattrs = tuple(sorted((name.encode(), os.getxattr(full, name, follow_symlinks=False))
                          for name in names))
    return Node(
        kind=kind,
        mode=stat.S_IMODE(info.st_mode),
        uid=info.st_uid,
        gid=info.st_gid,
        size=info.st_size if kind == "file" else 0,
        mtime_ns=info.st_mtime_ns,
        content=content_digest(full, info.st_size) if kind == "file" else None,
        allocated=info.st_blocks * 512 if kind == "file" else None,
        link=os.readlink(full) if kind == "symlink" else None,
        rdev=info.st_rdev if kind in ("char", "block") else None,
        xattrs=xattrs,
    )


def differences(source: dict[bytes, Node], target: dict[bytes, Node]) -> list[str]:
    """Return "path: aspect source -> target" for every differing aspect."""
    found = []
    for path in sorted(source.keys() | target.keys()):
        if path not in source or path not in target:
            found.append(f"{path!r}: presence {path in source} -> {path in target}")
            continue
        for aspect in Node.__dataclass_fields__:
            if aspect == "allocated":
                continue
            before, after = getattr(source[path], aspect), getattr(target[path], aspect)
            if before != after:
                found.append(f"{path!r}: {aspect} {before!r} -> {after!r}")
    return found


def apply_engine_losses(nodes: dict[bytes, Node]) -> dict[bytes, Node]:
    """Return what the Engine API path is documented to deliver for a source tree."""
    delivered = {}
    for path, node in nodes.items():
        kept_xattrs = tuple((name, value) for name, value in node.xattrs
                            if name == b"security.capability")
        delivered[path] = replace(node, mtime_ns=node.mtime_ns // 10**9 * 10**9, xattrs=kept_xattrs)
    return delivered


def make_source(h1: LabHost, resources: LabResources, *, big_sparse_size: int) -> tuple[str, Path]:
    volume = resources.create_volume(h1)
    root = h1.volume_host_path(volume)
    build_tree(root, big_sparse_size=big_sparse_size)
    return volume, root


def migrate(lab: Lab, tmp_path: Path, resources: LabResources, h2: LabHost, volume: str,
            data_path: str) -> tuple[str, str]:
    target = unique_name("fidelity")
    resources.add_volume(h2, target)
    result = run_command(lab, tmp_path, "ddmctl", "migrate", "--from", "h1", "--to", "h2",
                         "--volume", f"{volume}:{target}", "--data-path", data_path, "--yes")
    assert result.status == 0, result.stderr
    return target, result.stderr


def check_tree_written(source: dict[bytes, Node], big_sparse_size: int) -> None:
    """Guard against a tree that lacks the aspects the test is about."""
    assert source[b"small.txt"].uid == BIG_ID
    assert source[b"sparse"].size == big_sparse_size
    assert source[b"sparse"].allocated < BLOCK
    assert source[b"socket"].kind == "socket"
    assert any(name == b"system.posix_acl_access" for name, _ in source[b"small.txt"].xattrs)
    assert any(name == b"system.posix_acl_default" for name, _ in source[b"dir"].xattrs)
    assert any(name == b"security.capability" for name, _ in source[b"setuid"].xattrs)
    assert source[b"."].mtime_ns % 10**9 != 0
    assert len(b"/".join([b"L" * 100, b"M" * 100, b"N" * 100, b"file-in-a-path-over-255-bytes"])) > 255


def test_host_path_keeps_every_aspect(lab: Lab, h1: LabHost, h2: LabHost,
                                      resources: LabResources, tmp_path: Path) -> None:
    volume, source_root = make_source(h1, resources, big_sparse_size=EIGHT_GIB)
    source = snapshot(source_root)
    check_tree_written(source, EIGHT_GIB)

    target_volume, stderr = migrate(lab, tmp_path, resources, h2, volume, "host")
    target = snapshot(h2.volume_host_path(target_volume))

    expected = {path: node for path, node in source.items() if node.kind != "socket"}
    assert differences(expected, target) == []
    assert b"socket" not in target
    assert "socket ./socket skipped" in stderr
    assert target[b"sparse"].allocated < BLOCK
    assert target[b"hardlink-1"].inode_group == (b"dir/data.bin", b"dir/nested/hardlink-2",
                                                 b"hardlink-1")
    assert os.stat(h2.volume_host_path(target_volume) / "hardlink-1").st_nlink == 3
    assert differences(source, snapshot(source_root)) == []

    verify = run_command(lab, tmp_path, "ddmverify", "--from", "h1", "--to", "h2",
                         "--volume", f"{volume}:{target_volume}", "--deep")
    assert verify.status == 0, verify.stdout + verify.stderr
    assert "data path host" in verify.stdout


def test_engine_path_loses_documented_aspects(lab: Lab, h1: LabHost, h2: LabHost,
                                              resources: LabResources, tmp_path: Path) -> None:
    sparse_size = 16 * BLOCK
    volume, source_root = make_source(h1, resources, big_sparse_size=sparse_size)
    source = snapshot(source_root)
    check_tree_written(source, sparse_size)

    target_volume, stderr = migrate(lab, tmp_path, resources, h2, volume, "engine")
    target = snapshot(h2.volume_host_path(target_volume))

    expected = apply_engine_losses({path: node for path, node in source.items()
                                    if node.kind != "socket"})
    assert differences(expected, target) == []
    assert target[b"sparse"].allocated >= sparse_size
    assert "it loses sub-second mtimes" in stderr
    assert "socket ./socket skipped" in stderr
    assert differences(source, snapshot(source_root)) == []

    verify = run_command(lab, tmp_path, "ddmverify", "--from", "h1", "--to", "h2",
                         "--volume", f"{volume}:{target_volume}", "--data-path", "engine")
    assert verify.status == 0, verify.stdout + verify.stderr
    not_checked = verify.stdout.split("not checked ", 1)[1]
    for aspect in ("mtime_ns", "xattrs", "acl", "sparse"):
        assert aspect in not_checked


@pytest.mark.parametrize("data_path", ["host", "engine"])
def test_verify_reports_changed_aspect(lab: Lab, h1: LabHost, h2: LabHost, resources: LabResources,
                                       tmp_path: Path, data_path: str) -> None:
    volume, _ = make_source(h1, resources, big_sparse_size=BLOCK)
    target_volume, _ = migrate(lab, tmp_path, resources, h2, volume, data_path)
    target_file = h2.volume_host_path(target_volume) / "small.txt"
    os.setxattr(target_file, "user.comment", b"changed on the target")

    verify = run_command(lab, tmp_path, "ddmverify", "--from", "h1", "--to", "h2",
                         "--volume", f"{volume}:{target_volume}", "--data-path", data_path)

    if data_path == "host":
        assert verify.status == 1, verify.stdout
        assert "small.txt\txattrs" in verify.stdout
    else:
        assert verify.status == 0, verify.stdout
        assert "not checked" in verify.stdout


def make_deep_directories(root: Path, levels: int) -> None:
    """Nest `levels` directories of 250-byte names under `root`, with a file in the deepest."""
    descriptor = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir(b"L" * 250, dir_fd=descriptor)
            inner = os.open(b"L" * 250, os.O_RDONLY | os.O_DIRECTORY, dir_fd=descriptor)
            os.close(descriptor)
            descriptor = inner
        file_descriptor = os.open(b"deepest", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=descriptor)
        os.write(file_descriptor, b"deepest\n")
        os.close(file_descriptor)
    finally:
        os.close(descriptor)


def deep_listing(root: Path) -> list[tuple[bytes, bytes]]:
    """Return (relative path, content or b"dir") of every entry, walked by directory descriptors."""
    listing = []
    for directory, dirnames, filenames, descriptor in os.fwalk(bytes(root)):
        relative = os.path.relpath(directory, bytes(root))
        listing += [(os.path.join(relative, name), b"dir") for name in dirnames]
        for name in filenames:
            file_descriptor = os.open(name, os.O_RDONLY, dir_fd=descriptor)
            with os.fdopen(file_descriptor, "rb") as stream:
                listing.append((os.path.join(relative, name), stream.read()))
    return sorted(listing)


def test_engine_path_rejects_paths_near_path_max(lab: Lab, h1: LabHost, h2: LabHost,
                                                  resources: LabResources,
                                                  tmp_path: Path) -> None:
    # Docker's archive leaves out paths longer than PATH_MAX without an error, so a copy
    # with directories that deep must fail instead of verifying what arrived.
    volume = resources.create_volume(h1)
    make_deep_directories(h1.volume_host_path(volume), 17)
    source_before = deep_listing(h1.volume_host_path(volume))
    assert len(source_before) == 18
    target = unique_name("deep")
    resources.add_volume(h2, target)

    result = run_command(lab, tmp_path, "ddmctl", "migrate", "--from", "h1", "--to", "h2",
                         "--volume", f"{volume}:{target}", "--data-path", "engine", "--yes")

    assert result.status == 1, result.stderr
    assert "directories whose paths are within 255 bytes of the 4096-byte limit" in result.stderr
    assert target not in h2.docker("volume", "ls", "-q").stdout.split()
    assert not any(name.startswith("ddm-staging-")
                   for name in h2.docker("volume", "ls", "-q").stdout.split())
    assert deep_listing(h1.volume_host_path(volume)) == source_before
