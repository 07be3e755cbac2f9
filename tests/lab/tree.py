"""Build and inspect file trees in volumes of lab hosts, without containers.

write_volume_tree() and snapshot_volume_tree() run treeops.py inside the host's
namespaces on the volume's mountpoint, so test data is written and read by a
path independent of Docker's archive API, which DDM itself uses.

    write_volume_tree(h1, "data", {
        "docs/readme.txt": "hello\\n",
        "bin/tool": File(b"#!/bin/sh\\n", mode=0o755, uid=1000, gid=1000),
        "big.bin": RandomFile(64 << 20, seed=1),
        "link": Symlink("docs/readme.txt"),
        b"latin1-\\xe9": b"a name that is not UTF-8",
    })
    assert not diff_snapshots(snapshot_volume_tree(h1, "data"), snapshot_volume_tree(h2, "data"))
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from tests.lab.host import LabHost

_TREEOPS_SCRIPT = Path(__file__).with_name("treeops.py")


@dataclass(frozen=True)
class File:
    """A regular file with the given content."""

    content: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime_ns: int | None = None
    xattrs: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class RandomFile:
    """A regular file of size bytes of pseudo-random data, generated inside the host from seed."""

    size: int
    seed: int = 0
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime_ns: int | None = None


@dataclass(frozen=True)
class SparseFile:
    """A regular file of size bytes with data only at the given offsets; the rest are holes."""

    size: int
    chunks: Mapping[int, bytes] = field(default_factory=dict)
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime_ns: int | None = None


@dataclass(frozen=True)
class Dir:
    """A directory; parents of other entries are created with mode 0755 even when not listed."""

    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    mtime_ns: int | None = None


@dataclass(frozen=True)
class Symlink:
    """A symbolic link; the target is stored as given and need not exist."""

    target: str | bytes
    uid: int = 0
    gid: int = 0
    mtime_ns: int | None = None


@dataclass(frozen=True)
class HardLink:
    """A second name for another regular file of the same tree, given by its tree path."""

    target: str | bytes


@dataclass(frozen=True)
class Fifo:
    """A named pipe."""

    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime_ns: int | None = None


@dataclass(frozen=True)
class Device:
    """A character or block device node."""

    kind: Literal["char", "block"]
    major: int
    minor: int
    mode: int = 0o600
    uid: int = 0
    gid: int = 0
    mtime_ns: int | None = None


TreeEntry = File | RandomFile | SparseFile | Dir | Symlink | HardLink | Fifo | Device

# Tree paths are relative to the volume root ("." is the root itself). A str or
# bytes value is shorthand for File(content).
Tree = Mapping[str | bytes, TreeEntry | str | bytes]


@dataclass(frozen=True)
class SnapshotEntry:
    """One entry of a volume as lstat() and a content hash describe it."""

    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    sha256: str | None
    target: bytes | None
    major: int | None
    minor: int | None
    xattrs: tuple[tuple[str, bytes], ...]
    hardlink_group: bytes | None


Snapshot = dict[bytes, SnapshotEntry]


def write_volume_tree(host: LabHost, volume: str, tree: Tree) -> str:
    """Create the tree's entries in an existing volume on host; return the volume's mountpoint.

    Entries are written as root from outside any container. Raises
    LabCommandError when the volume does not exist or an entry cannot be created.
    """
    mountpoint = host.volume_mountpoint(volume)
    spec = [_entry_spec(_encode_path(path), entry) for path, entry in tree.items()]
    host.run(
        [sys.executable, "-I", str(_TREEOPS_SCRIPT), "write", mountpoint],
        input=json.dumps(spec),
        timeout=1800.0,
    )
    return mountpoint


def snapshot_volume_tree(host: LabHost, volume: str) -> Snapshot:
    """Describe every entry of a volume on host, keyed by path relative to the volume root (b"." is the root)."""
    mountpoint = host.volume_mountpoint(volume)
    output = host.run([sys.executable, "-I", str(_TREEOPS_SCRIPT), "snapshot", mountpoint], timeout=1800.0).stdout
    return {bytes.fromhex(item["path"]): _snapshot_entry(item) for item in json.loads(output)}


def diff_snapshots(
    expected: Snapshot,
    actual: Snapshot,
    *,
    ignore: Iterable[str] = (),
    mtime_resolution_ns: int = 1,
) -> list[str]:
    """Return one line per difference between two snapshots; an empty list means they are equal.

    ignore names SnapshotEntry fields to skip, e.g. ("mtime_ns",) or ("xattrs",).
    mtimes are compared after truncation to mtime_resolution_ns; pass
    1_000_000_000 when a copy went through a tar format that keeps whole seconds.
    """
    if mtime_resolution_ns < 1:
        raise ValueError(f"invalid mtime_resolution_ns {mtime_resolution_ns}: expected 1 or more")

    skipped = set(ignore)
    unknown = skipped - {item.name for item in fields(SnapshotEntry)}
    if unknown:
        raise ValueError(f"unknown snapshot fields {sorted(unknown)}")

    differences: list[str] = []
    for path in sorted(expected.keys() | actual.keys()):
        if path not in actual:
            differences.append(f"{path!r}: missing")
            continue
        if path not in expected:
            differences.append(f"{path!r}: unexpected {actual[path].kind}")
            continue

        for item in fields(SnapshotEntry):
            if item.name in skipped:
                continue
            want = getattr(expected[path], item.name)
            got = getattr(actual[path], item.name)
            if item.name == "mtime_ns":
                want, got = want // mtime_resolution_ns, got // mtime_resolution_ns
            if want != got:
                differences.append(f"{path!r}: {item.name} is {got!r}, expected {want!r}")
    return differences


def _encode_path(path: str | bytes) -> bytes:
    return path if isinstance(path, bytes) else path.encode("utf-8", "surrogateescape")


def _entry_spec(path: bytes, entry: TreeEntry | str | bytes) -> dict[str, Any]:
    if isinstance(entry, str):
        entry = File(entry.encode())
    elif isinstance(entry, bytes):
        entry = File(entry)

    spec: dict[str, Any] = {"path": path.hex()}
    if isinstance(entry, HardLink):
        spec.update(kind="hardlink", target=_encode_path(entry.target).hex())
        return spec

    spec.update(mode=getattr(entry, "mode", 0o777), uid=entry.uid, gid=entry.gid, mtime_ns=entry.mtime_ns)
    if isinstance(entry, File):
        spec.update(
            kind="file",
            content=base64.b64encode(entry.content).decode(),
            xattrs={name: base64.b64encode(value).decode() for name, value in entry.xattrs.items()},
        )
    elif isinstance(entry, RandomFile):
        spec.update(kind="file", random={"size": entry.size, "seed": entry.seed})
    elif isinstance(entry, SparseFile):
        chunks = [[offset, base64.b64encode(data).decode()] for offset, data in sorted(entry.chunks.items())]
        spec.update(kind="file", sparse={"size": entry.size, "chunks": chunks})
    elif isinstance(entry, Dir):
        spec.update(kind="dir")
    elif isinstance(entry, Symlink):
        spec.update(kind="symlink", target=_encode_path(entry.target).hex())
    elif isinstance(entry, Fifo):
        spec.update(kind="fifo")
    elif isinstance(entry, Device):
        spec.update(kind=entry.kind, major=entry.major, minor=entry.minor)
    else:
        raise TypeError(f"unsupported tree entry {entry!r} at {path!r}")
    return spec


def _snapshot_entry(item: Mapping[str, Any]) -> SnapshotEntry:
    target = item["target"]
    group = item["hardlink_group"]
    return SnapshotEntry(
        kind=item["kind"],
        mode=item["mode"],
        uid=item["uid"],
        gid=item["gid"],
        size=item["size"],
        mtime_ns=item["mtime_ns"],
        sha256=item["sha256"],
        target=bytes.fromhex(target) if target is not None else None,
        major=item["major"],
        minor=item["minor"],
        xattrs=tuple((name, base64.b64decode(value)) for name, value in item["xattrs"].items()),
        hardlink_group=bytes.fromhex(group) if group is not None else None,
    )
