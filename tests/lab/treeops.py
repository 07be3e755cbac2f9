"""Write or snapshot a directory tree; tests.lab.tree runs this inside a lab host's namespaces.

    python3 -I treeops.py write ROOT < spec.json
    python3 -I treeops.py snapshot ROOT > snapshot.json

It uses only the standard library, because it runs with -I. Paths are
hex-encoded bytes relative to ROOT ("2e" is ROOT itself), so names that are not
valid UTF-8 survive JSON. The spec format is produced by tests.lab.tree.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import stat
import sys
from collections.abc import Iterator
from typing import Any

CHUNK_BYTES = 1 << 20


def main() -> int:
    if len(sys.argv) != 3 or sys.argv[1] not in ("write", "snapshot"):
        print("usage: treeops.py write|snapshot ROOT", file=sys.stderr)
        return 2

    root = os.fsencode(sys.argv[2])
    if sys.argv[1] == "write":
        write_tree(root, json.load(sys.stdin))
    else:
        json.dump(snapshot_tree(root), sys.stdout)
    return 0


# Writing.


def write_tree(root: bytes, entries: list[dict[str, Any]]) -> None:
    """Create the entries below root, then set their owners, modes and mtimes.

    Directories are created first and hard links last. Modes of directories and
    all mtimes are applied at the end, deepest path first, because creating an
    entry changes the mtime of its parent directory.
    """
    for entry in entries:
        entry["_path"] = join_path(root, bytes.fromhex(entry["path"]))

    order = {"dir": 0, "hardlink": 2}
    for entry in sorted(entries, key=lambda item: (order.get(item["kind"], 1), item["_path"])):
        create_entry(root, entry)

    for entry in sorted(entries, key=lambda item: item["_path"].count(b"/"), reverse=True):
        finish_entry(entry)


def join_path(root: bytes, relative: bytes) -> bytes:
    parts = relative.split(b"/")
    if relative.startswith(b"/") or b".." in parts:
        raise ValueError(f"invalid tree path {relative!r}: must be relative and without '..'")
    if relative == b".":
        return root
    return os.path.join(root, relative)


def create_entry(root: bytes, entry: dict[str, Any]) -> None:
    path = entry["_path"]
    kind = entry["kind"]
    if path != root:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)

    if kind == "dir":
        os.makedirs(path, mode=0o755, exist_ok=True)
    elif kind == "file":
        write_file(path, entry)
    elif kind == "symlink":
        os.symlink(bytes.fromhex(entry["target"]), path)
    elif kind == "hardlink":
        os.link(join_path(root, bytes.fromhex(entry["target"])), path)
    elif kind == "fifo":
        os.mkfifo(path, 0o600)
    elif kind in ("char", "block"):
        file_type = stat.S_IFCHR if kind == "char" else stat.S_IFBLK
        os.mknod(path, file_type | 0o600, os.makedev(entry["major"], entry["minor"]))
    else:
        raise ValueError(f"unknown entry kind {kind!r}")

    if kind != "hardlink":
        os.chown(path, entry["uid"], entry["gid"], follow_symlinks=False)
        for name, value in entry.get("xattrs", {}).items():
            os.setxattr(path, name, base64.b64decode(value), follow_symlinks=False)
        # chown clears the setuid and setgid bits, so the mode comes after it.
        if kind not in ("symlink", "dir"):
            os.chmod(path, entry["mode"])


def write_file(path: bytes, entry: dict[str, Any]) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "wb") as output:
        if entry.get("random") is not None:
            for chunk in random_chunks(entry["random"]["size"], entry["random"]["seed"]):
                output.write(chunk)
        elif entry.get("sparse") is not None:
            for offset, data in entry["sparse"]["chunks"]:
                output.seek(offset)
                output.write(base64.b64decode(data))
            output.truncate(entry["sparse"]["size"])
        else:
            output.write(base64.b64decode(entry["content"]))


def random_chunks(size: int, seed: int) -> Iterator[bytes]:
    generator = random.Random(seed)
    remaining = size
    while remaining > 0:
        count = min(remaining, CHUNK_BYTES)
        yield generator.randbytes(count)
        remaining -= count


def finish_entry(entry: dict[str, Any]) -> None:
    path = entry["_path"]
    if entry["kind"] == "dir":
        os.chmod(path, entry["mode"])
    if entry.get("mtime_ns") is not None and entry["kind"] != "hardlink":
        mtime = entry["mtime_ns"]
        os.utime(path, ns=(mtime, mtime), follow_symlinks=False)


# Snapshots.


def snapshot_tree(root: bytes) -> list[dict[str, Any]]:
    """Describe every entry below root, root included, sorted by path."""
    entries = [describe(root, b".")]
    for directory, subdirectories, files in os.walk(root):
        for name in sorted(subdirectories + files):
            path = os.path.join(directory, name)
            entries.append(describe(path, os.path.relpath(path, root)))

    mark_hard_links(entries)
    entries.sort(key=lambda item: bytes.fromhex(item["path"]))
    return entries


def describe(path: bytes, relative: bytes) -> dict[str, Any]:
    status = os.lstat(path)
    entry: dict[str, Any] = {
        "path": relative.hex(),
        "kind": kind_of(status.st_mode),
        "mode": stat.S_IMODE(status.st_mode),
        "uid": status.st_uid,
        "gid": status.st_gid,
        "size": status.st_size if stat.S_ISREG(status.st_mode) else 0,
        "mtime_ns": status.st_mtime_ns,
        "sha256": None,
        "target": None,
        "major": None,
        "minor": None,
        "xattrs": read_xattrs(path),
        "inode": [status.st_dev, status.st_ino],
        "nlink": status.st_nlink,
    }

    if stat.S_ISREG(status.st_mode):
        entry["sha256"] = hash_file(path)
    elif stat.S_ISLNK(status.st_mode):
        entry["target"] = os.readlink(path).hex()
    elif stat.S_ISCHR(status.st_mode) or stat.S_ISBLK(status.st_mode):
        entry["major"] = os.major(status.st_rdev)
        entry["minor"] = os.minor(status.st_rdev)
    return entry


def kind_of(mode: int) -> str:
    kinds = [
        (stat.S_ISREG, "file"),
        (stat.S_ISDIR, "dir"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISCHR, "char"),
        (stat.S_ISBLK, "block"),
        (stat.S_ISSOCK, "socket"),
    ]
    for test, kind in kinds:
        if test(mode):
            return kind
    return "unknown"


def read_xattrs(path: bytes) -> dict[str, str]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    values = {name: os.getxattr(path, name, follow_symlinks=False) for name in names}
    return {name: base64.b64encode(value).decode() for name, value in sorted(values.items())}


def hash_file(path: bytes) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def mark_hard_links(entries: list[dict[str, Any]]) -> None:
    """Set "hardlink_group" of every non-directory with several links to the smallest path sharing its inode.

    The group names a path, not an inode number, so snapshots of two hosts compare
    equal when the same paths are linked together.
    """
    paths_by_inode: dict[tuple[int, int], list[str]] = {}
    for entry in entries:
        if entry["kind"] != "dir" and entry["nlink"] > 1:
            paths_by_inode.setdefault(tuple(entry["inode"]), []).append(entry["path"])

    for entry in entries:
        paths = paths_by_inode.get(tuple(entry["inode"]))
        entry["hardlink_group"] = min(paths, key=bytes.fromhex) if paths and len(paths) > 1 else None
        del entry["inode"]


if __name__ == "__main__":
    sys.exit(main())
