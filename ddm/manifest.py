"""Per-file manifests of a volume, built from its tar stream, and their comparison.

`ManifestBuilder` reads the tar stream of a volume while DDM copies it, with memory bounded
by the manifest itself (one entry per path) and not by file sizes. `compare_manifests()`
lists the differences between the manifests of the source and the target volume.

Check levels:

* `QUICK_ASPECTS` compare metadata and sizes: presence, type, mode, owner, size, link,
  mtime (whole seconds), xattrs, acl and device. They need no content hashing.
* `DEEP_ASPECTS` add "content", the xxh3-128 digest of each file, so both manifests must
  be built with `hash_content=True`.
* "mtime_ns" and "sparse" are in no default set. Docker's archive endpoint (moby's
  pkg/archive) truncates mtimes to whole seconds and writes no sparse files, so the two
  would differ from a GNU tar archive of the same volume.

NOTE: moby's pkg/archive also copies only the security.capability xattr (and, in newer
versions, security.ima) and no ACLs. So "xattrs" and "acl" compare equal only when both
manifests come from the same archive producer.

JSON format (`Manifest.to_json()`, version 1):

    {"format": "ddm-manifest", "version": 1, "hash_content": true,
     "bytes_fed": 10240, "stream_digest": "<32 hex digits>" or null,
     "entries": [{"path": "a/b", "type": "file", "mode": 420, "uid": 0, "gid": 0,
                  "size": 5, "mtime_ns": 1700000000123456789, "digest": "<32 hex>"}, ...]}

Entries are sorted by the bytes of their path. Every entry has path, type, mode, uid, gid
and size. The other keys appear only when they carry information:

* mtime_ns, acl_access, acl_default, digest and sha256 are omitted when None;
* linkname appears for symlinks and hard links, devmajor and devminor for devices;
* xattrs, omitted when None, is a list of [name, value] pairs sorted by name;
* sparse appears only as true.

Byte strings (path, linkname, xattr names and values) and ACL texts are a JSON string when
they are valid UTF-8, and otherwise an object {"base64": "<standard base64>"}, so any path
survives the round trip.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import xxhash

from ddm.errors import DDMError
from ddm.tarstream import TarEntry, TarStreamError, TarStreamParser, display_path

__all__ = [
    "ALL_ASPECTS",
    "DEEP_ASPECTS",
    "ENTRY_TYPES",
    "QUICK_ASPECTS",
    "Difference",
    "Manifest",
    "ManifestBuilder",
    "ManifestEntry",
    "ManifestError",
    "compare_manifests",
    "display_path",
]

logger = logging.getLogger(__name__)

ENTRY_TYPES = ("file", "dir", "symlink", "hardlink", "fifo", "char", "block")

QUICK_ASPECTS = (
    "presence",
    "type",
    "mode",
    "owner",
    "size",
    "link",
    "mtime",
    "xattrs",
    "acl",
    "device",
)
DEEP_ASPECTS = (*QUICK_ASPECTS, "content")
ALL_ASPECTS = (*DEEP_ASPECTS, "mtime_ns", "sparse")

# Aspects that only make sense between entries of the same type. When the "type" aspect
# reports a difference, these are not compared for that path.
_TYPE_DEPENDENT_ASPECTS = frozenset(("size", "link", "content", "sparse", "device"))

FORMAT_NAME = "ddm-manifest"
FORMAT_VERSION = 1


class ManifestError(DDMError):
    """A tar stream or manifest that cannot be read, or a comparison that cannot run.

    `offset` is the byte offset in the tar stream when the error comes from the stream.
    """

    def __init__(self, message: str, *, offset: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.offset = offset


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One path of a volume.

    For a hard link, size, digest and sparse are those of the link target.
    """

    path: bytes  # relative to the volume root, which is b"."
    type: str  # one of ENTRY_TYPES
    mode: int  # permission bits with setuid, setgid and sticky (07777)
    uid: int
    gid: int
    size: int  # content size (the real size for sparse files), 0 for non-files
    linkname: bytes | None = None  # symlink text, or the hard-link target's path
    devmajor: int = 0
    devminor: int = 0
    mtime_ns: int | None = None  # seconds * 10**9, plus nanoseconds when the archive has them
    xattrs: dict[bytes, bytes] | None = None
    acl_access: str | None = None
    acl_default: str | None = None
    sparse: bool = False
    digest: str | None = None  # xxh3-128 hex digest of the content, None for non-files
    # SHA-256 hex digest of the content, only from a builder made with sha256=True. A host
    # with python3 can compute it without the xxhash module (ddmsyncer.hostverify).
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class Difference:
    """One aspect of one path that differs between the source and the target manifest.

    For "presence", source and target are the entry types, or None where the path is
    missing. For the other aspects they are the compared values: "owner" is (uid, gid),
    "acl" is (acl_access, acl_default), "device" is (devmajor, devminor), and "link" is the
    symlink text or the sorted tuple of paths of a hard-link group.
    """

    path: bytes
    aspect: str
    source: object
    target: object

    def describe(self) -> str:
        """Return one line for humans, with the path escaped by display_path()."""
        return (
            f"{display_path(self.path)}: {self.aspect} differs "
            f"(source {_describe_value(self.aspect, self.source)}, "
            f"target {_describe_value(self.aspect, self.target)})"
        )


@dataclass
class Manifest:
    """All entries of a volume, with the digest and length of the tar stream they came from."""

    entries: dict[bytes, ManifestEntry] = field(default_factory=dict)
    stream_digest: str | None = None  # xxh3-128 over every byte fed, trailing bytes included
    bytes_fed: int = 0
    hash_content: bool = True

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def total_file_bytes(self) -> int:
        """Sum of the sizes of regular files, counting each hard-link group once."""
        return sum(entry.size for entry in self.entries.values() if entry.type == "file")

    def counts_by_type(self) -> dict[str, int]:
        """Return the number of entries of each type in ENTRY_TYPES, zeros included."""
        counts = dict.fromkeys(ENTRY_TYPES, 0)
        for entry in self.entries.values():
            counts[entry.type] += 1
        return counts

    def to_json(self, *, indent: int | None = None) -> str:
        """Serialize the manifest in the JSON format described in the module documentation."""
        document = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "hash_content": self.hash_content,
            "bytes_fed": self.bytes_fed,
            "stream_digest": self.stream_digest,
            "entries": [_entry_to_json(self.entries[path]) for path in sorted(self.entries)],
        }
        return json.dumps(document, indent=indent, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse a manifest written by to_json() and raise ManifestError when it is invalid."""
        try:
            document = json.loads(text)
            return cls._from_document(document)
        except (ValueError, TypeError, KeyError, binascii.Error) as error:
            raise ManifestError(f"invalid manifest JSON: {error}") from error

    @classmethod
    def _from_document(cls, document: Any) -> Manifest:
        if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
            raise ValueError(f'"format" is not "{FORMAT_NAME}"')
        if document.get("version") != FORMAT_VERSION:
            raise ValueError(f"unsupported version {document.get('version')!r}")

        entries: dict[bytes, ManifestEntry] = {}
        for item in document["entries"]:
            entry = _entry_from_json(item)
            if entry.path in entries:
                raise ValueError(f"duplicate path {display_path(entry.path)}")
            entries[entry.path] = entry

        stream_digest = document.get("stream_digest")
        if stream_digest is not None and not isinstance(stream_digest, str):
            raise ValueError('"stream_digest" is not a string')
        return cls(
            entries=entries,
            stream_digest=stream_digest,
            bytes_fed=_json_int(document, "bytes_fed"),
            hash_content=_json_bool(document, "hash_content"),
        )


class ManifestBuilder:
    """Push parser that builds the manifest of a volume from its tar stream.

    `strip_prefix` removes a leading path component: Docker's archive of the container path
    /v names its members "v", "v/a" and so on, so strip_prefix=b"v" (or b"v/") maps them to
    ".", "a". A leading "./" or "/" is removed from every member path, and a trailing "/"
    too. A member outside the prefix raises ManifestError.

    `sha256` also stores the SHA-256 digest of each file's content in ManifestEntry.sha256;
    it needs `hash_content`.

    `feed()` raises ManifestError as soon as the stream is invalid. `close()` raises it when
    the stream was truncated, and otherwise returns the manifest.
    """

    def __init__(self, *, hash_content: bool = True, strip_prefix: bytes = b"",
                 sha256: bool = False) -> None:
        self.hash_content = hash_content
        self.sha256 = sha256 and hash_content
        self._content_sha256: Any = None
        self._prefix = _normalize_path(strip_prefix) if strip_prefix else b"."
        self._entries: dict[bytes, ManifestEntry] = {}
        self._stream_hash = xxhash.xxh3_128()
        self._content_hash: Any = None
        self._current_path = b""
        self._manifest: Manifest | None = None

        on_data = self._update_content_hash if hash_content else None
        self._parser = TarStreamParser(self._start_entry, on_data, self._finish_entry)

    @property
    def bytes_fed(self) -> int:
        return self._parser.bytes_fed

    @property
    def stream_digest(self) -> str:
        """xxh3-128 hex digest of every byte fed so far."""
        return self._stream_hash.hexdigest()

    @property
    def entry_count(self) -> int:
        return len(self._entries)

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        """Add the next chunk of the tar stream."""
        if self._manifest is not None:
            raise RuntimeError("ManifestBuilder.feed() called after close()")

        self._stream_hash.update(chunk)
        try:
            self._parser.feed(chunk)
        except TarStreamError as error:
            raise ManifestError(str(error), offset=error.offset) from error

    def close(self) -> Manifest:
        """Check that the stream is complete and return the manifest."""
        if self._manifest is not None:
            return self._manifest

        try:
            self._parser.close()
        except TarStreamError as error:
            raise ManifestError(str(error), offset=error.offset) from error

        self._manifest = Manifest(
            entries=self._entries,
            stream_digest=self.stream_digest,
            bytes_fed=self.bytes_fed,
            hash_content=self.hash_content,
        )
        return self._manifest

    # Parser callbacks

    def _start_entry(self, entry: TarEntry) -> None:
        self._current_path = self._volume_path(entry.path, entry.offset)
        if self.hash_content and entry.type == "file":
            self._content_hash = xxhash.xxh3_128()
        else:
            self._content_hash = None
        if self.sha256 and entry.type == "file":
            self._content_sha256 = hashlib.sha256()

    def _update_content_hash(self, data: memoryview) -> None:
        self._content_hash.update(data)
        if self._content_sha256 is not None:
            self._content_sha256.update(data)

    def _finish_entry(self, entry: TarEntry) -> None:
        path = self._current_path
        digest = self._content_hash.hexdigest() if self._content_hash is not None else None
        self._content_hash = None
        sha256 = self._content_sha256.hexdigest() if self._content_sha256 is not None else None
        self._content_sha256 = None

        size = entry.size
        sparse = entry.sparse
        linkname = entry.linkname
        if entry.type == "hardlink":
            assert linkname is not None
            linkname = self._volume_path(linkname, entry.offset)
            size, digest, sparse = self._hard_link_content(path, linkname)
            linked = self._entries.get(linkname)
            sha256 = linked.sha256 if linked is not None else None

        if path in self._entries:
            logger.debug(
                "archive member %s appears again, and the later member replaces it",
                display_path(path),
            )
        self._entries[path] = ManifestEntry(
            path=path,
            type=entry.type,
            mode=entry.mode,
            uid=entry.uid,
            gid=entry.gid,
            size=size,
            linkname=linkname,
            devmajor=entry.devmajor,
            devminor=entry.devminor,
            mtime_ns=entry.mtime_ns,
            xattrs=entry.xattrs or None,
            acl_access=entry.acl_access,
            acl_default=entry.acl_default,
            sparse=sparse,
            digest=digest,
            sha256=sha256,
        )

    def _hard_link_content(self, path: bytes, target_path: bytes) -> tuple[int, str | None, bool]:
        target = self._entries.get(target_path)
        if target is None:
            logger.warning(
                "hard link %s points to %s, which is not earlier in the archive",
                display_path(path),
                display_path(target_path),
            )
            return 0, None, False
        return target.size, target.digest, target.sparse

    def _volume_path(self, member_path: bytes, offset: int) -> bytes:
        """Map an archive member path to a path relative to the volume root."""
        path = _normalize_path(member_path)
        prefix = self._prefix
        if prefix == b".":
            return path
        if path == prefix:
            return b"."
        if path.startswith(prefix + b"/"):
            return _normalize_path(path[len(prefix) + 1 :])
        raise ManifestError(
            f"archive member {display_path(member_path)} at byte offset {offset} is outside "
            f"the prefix {display_path(prefix)}",
            offset=offset,
        )


def _normalize_path(path: bytes) -> bytes:
    """Remove leading "/" and "./" and trailing "/". An empty result becomes the root "."."""
    while True:
        if path.startswith(b"/"):
            path = path[1:]
        elif path.startswith(b"./"):
            path = path[2:]
        else:
            break
    path = path.rstrip(b"/")
    return path or b"."


# Comparison


class _InodeView:
    """A manifest seen by inode: hard-link groups and the entry that describes each inode.

    Two archives of one tree may pick different first members for a hard-link group, and
    GNU tar 1.34 writes no xattrs or ACLs on hard-link members. So every member of a group
    is compared through the group's first member, and the group's path set is compared as
    the "link" aspect.
    """

    def __init__(self, manifest: Manifest) -> None:
        self.entries = manifest.entries
        self.groups: dict[bytes, tuple[bytes, ...]] = {}
        self.inode_entries: dict[bytes, ManifestEntry] = {}

        members: dict[bytes, list[bytes]] = {}
        for path, entry in self.entries.items():
            if entry.type == "hardlink":
                root = self._resolve_root(path)
                members.setdefault(root, [root]).append(path)

        for root, paths in members.items():
            group = tuple(sorted(paths))
            root_entry = self.entries.get(root)
            for path in group:
                self.groups[path] = group
                if root_entry is not None and root_entry.type != "hardlink":
                    self.inode_entries[path] = root_entry

    def _resolve_root(self, path: bytes) -> bytes:
        seen = {path}
        entry = self.entries[path]
        while entry.type == "hardlink" and entry.linkname is not None:
            path = entry.linkname
            next_entry = self.entries.get(path)
            if next_entry is None or path in seen:
                break
            seen.add(path)
            entry = next_entry
        return path

    def inode(self, path: bytes) -> ManifestEntry:
        return self.inode_entries.get(path) or self.entries[path]


def compare_manifests(
    source: Manifest, target: Manifest, aspects: Iterable[str]
) -> list[Difference]:
    """Return the differences between two manifests, sorted by path, for the given aspects.

    Aspects are the names in ALL_ASPECTS, for example QUICK_ASPECTS or DEEP_ASPECTS.
    Raises ValueError for an unknown aspect, and ManifestError when "content" is requested
    but a manifest was built without content hashing.
    """
    selected = frozenset(aspects)
    unknown = selected - frozenset(ALL_ASPECTS)
    if unknown:
        raise ValueError(
            f"unknown manifest aspects {sorted(unknown)}; valid aspects are {list(ALL_ASPECTS)}"
        )
    if "content" in selected and not (source.hash_content and target.hash_content):
        raise ManifestError(
            "cannot compare content: a manifest was built without content hashing",
            hint="build both manifests with hash_content=True, or leave out the content aspect",
        )

    source_view = _InodeView(source)
    target_view = _InodeView(target)
    differences: list[Difference] = []
    for path in sorted(source.entries.keys() | target.entries.keys()):
        source_entry = source.entries.get(path)
        target_entry = target.entries.get(path)
        if source_entry is None or target_entry is None:
            if "presence" in selected:
                source_type = source_entry.type if source_entry else None
                target_type = target_entry.type if target_entry else None
                differences.append(Difference(path, "presence", source_type, target_type))
            continue
        differences.extend(_compare_path(path, source_view, target_view, selected))
    return differences


def _compare_path(
    path: bytes, source_view: _InodeView, target_view: _InodeView, selected: frozenset[str]
) -> list[Difference]:
    source_inode = source_view.inode(path)
    target_inode = target_view.inode(path)
    differences: list[Difference] = []

    skip_type_dependent = False
    if "type" in selected and source_inode.type != target_inode.type:
        differences.append(Difference(path, "type", source_inode.type, target_inode.type))
        skip_type_dependent = True

    for aspect, read_value in _ASPECT_VALUES:
        if aspect not in selected:
            continue
        if skip_type_dependent and aspect in _TYPE_DEPENDENT_ASPECTS:
            continue
        source_value = read_value(source_inode)
        target_value = read_value(target_inode)
        if source_value != target_value:
            differences.append(Difference(path, aspect, source_value, target_value))

    if "link" in selected and not skip_type_dependent:
        source_group = source_view.groups.get(path)
        target_group = target_view.groups.get(path)
        if source_group != target_group:
            differences.append(Difference(path, "link", source_group, target_group))
    return differences


def _symlink_text(entry: ManifestEntry) -> bytes | None:
    return entry.linkname if entry.type == "symlink" else None


def _device_numbers(entry: ManifestEntry) -> tuple[int, int] | None:
    return (entry.devmajor, entry.devminor) if entry.type in ("char", "block") else None


def _mtime_seconds(entry: ManifestEntry) -> int | None:
    return None if entry.mtime_ns is None else entry.mtime_ns // 1_000_000_000


# Aspects other than presence and type, in report order, with the value each compares.
# "link" compares the symlink text here and the hard-link group in _compare_path().
_ASPECT_VALUES: tuple[tuple[str, Callable[[ManifestEntry], object]], ...] = (
    ("mode", lambda entry: entry.mode),
    ("owner", lambda entry: (entry.uid, entry.gid)),
    ("size", lambda entry: entry.size),
    ("link", _symlink_text),
    ("content", lambda entry: entry.digest),
    ("mtime", _mtime_seconds),
    ("mtime_ns", lambda entry: entry.mtime_ns),
    ("xattrs", lambda entry: entry.xattrs or {}),
    ("acl", lambda entry: (entry.acl_access, entry.acl_default)),
    ("sparse", lambda entry: entry.sparse),
    ("device", _device_numbers),
)


def _describe_value(aspect: str, value: object) -> str:
    if value is None:
        return "none"
    if aspect == "mode" and isinstance(value, int):
        return f"{value:04o}"
    if isinstance(value, bytes):
        return display_path(value)
    if isinstance(value, tuple) and value and all(isinstance(item, bytes) for item in value):
        return "[" + ", ".join(display_path(item) for item in value) + "]"
    if isinstance(value, str):
        return value
    if aspect == "owner" and isinstance(value, tuple) and len(value) == 2:
        return f"uid {value[0]} gid {value[1]}"
    if aspect == "device" and isinstance(value, tuple) and len(value) == 2:
        return f"major {value[0]} minor {value[1]}"
    if isinstance(value, tuple):
        return "[" + ", ".join(_describe_value(aspect, item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_describe_value(aspect, key)}={_describe_value(aspect, item)}"
                               for key, item in sorted(value.items())) + "}"
    return str(value)


# JSON encoding


def _encode_bytes(value: bytes) -> str | dict[str, str]:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(value).decode("ascii")}


def _decode_bytes(value: object) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and isinstance(value.get("base64"), str):
        return base64.b64decode(value["base64"], validate=True)
    raise ValueError(f"expected a string or a base64 object, got {value!r}")


def _encode_text(value: str) -> str | dict[str, str]:
    return _encode_bytes(value.encode("utf-8", "surrogateescape"))


def _decode_text(value: object) -> str:
    return _decode_bytes(value).decode("utf-8", "surrogateescape")


def _entry_to_json(entry: ManifestEntry) -> dict[str, object]:
    item: dict[str, object] = {
        "path": _encode_bytes(entry.path),
        "type": entry.type,
        "mode": entry.mode,
        "uid": entry.uid,
        "gid": entry.gid,
        "size": entry.size,
    }
    if entry.mtime_ns is not None:
        item["mtime_ns"] = entry.mtime_ns
    if entry.linkname is not None:
        item["linkname"] = _encode_bytes(entry.linkname)
    if entry.devmajor or entry.devminor or entry.type in ("char", "block"):
        item["devmajor"] = entry.devmajor
        item["devminor"] = entry.devminor
    if entry.xattrs is not None:
        item["xattrs"] = [
            [_encode_bytes(name), _encode_bytes(entry.xattrs[name])]
            for name in sorted(entry.xattrs)
        ]
    if entry.acl_access is not None:
        item["acl_access"] = _encode_text(entry.acl_access)
    if entry.acl_default is not None:
        item["acl_default"] = _encode_text(entry.acl_default)
    if entry.sparse:
        item["sparse"] = True
    if entry.digest is not None:
        item["digest"] = entry.digest
    if entry.sha256 is not None:
        item["sha256"] = entry.sha256
    return item


def _entry_from_json(item: Any) -> ManifestEntry:
    if not isinstance(item, dict):
        raise TypeError(f"entry is not an object: {item!r}")
    entry_type = item["type"]
    if entry_type not in ENTRY_TYPES:
        raise ValueError(f"invalid entry type {entry_type!r}")

    xattrs = None
    if "xattrs" in item:
        xattrs = {_decode_bytes(name): _decode_bytes(value) for name, value in item["xattrs"]}
    linkname = _decode_bytes(item["linkname"]) if "linkname" in item else None
    acl_access = _decode_text(item["acl_access"]) if "acl_access" in item else None
    acl_default = _decode_text(item["acl_default"]) if "acl_default" in item else None
    digest = item.get("digest")
    if digest is not None and not isinstance(digest, str):
        raise ValueError(f"digest is not a string: {digest!r}")
    sha256 = item.get("sha256")
    if sha256 is not None and not isinstance(sha256, str):
        raise ValueError(f"sha256 is not a string: {sha256!r}")

    return ManifestEntry(
        path=_decode_bytes(item["path"]),
        type=entry_type,
        mode=_json_int(item, "mode"),
        uid=_json_int(item, "uid"),
        gid=_json_int(item, "gid"),
        size=_json_int(item, "size"),
        linkname=linkname,
        devmajor=_json_int(item, "devmajor", 0),
        devminor=_json_int(item, "devminor", 0),
        mtime_ns=_json_int(item, "mtime_ns", None),
        xattrs=xattrs,
        acl_access=acl_access,
        acl_default=acl_default,
        sparse=_json_bool(item, "sparse", False),
        digest=digest,
        sha256=sha256,
    )


_REQUIRED: Any = object()


def _json_int(item: dict[str, Any], key: str, default: Any = _REQUIRED) -> Any:
    if key not in item and default is not _REQUIRED:
        return default
    value = item[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{key} is not an integer: {value!r}")
    return value


def _json_bool(item: dict[str, Any], key: str, default: Any = _REQUIRED) -> Any:
    if key not in item and default is not _REQUIRED:
        return default
    value = item[key]
    if not isinstance(value, bool):
        raise TypeError(f"{key} is not a boolean: {value!r}")
    return value
