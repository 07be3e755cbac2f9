"""Incremental push parser for tar archive streams.

DDM copies a volume as a tar stream and reads the stream while it passes through the
controller. `TarStreamParser` takes the bytes in chunks of any size through `feed()`, calls
back for each archive member, and hands file content to the consumer as slices of the fed
chunks, so content costs no Python work per 512-byte block.

Formats read:

* ustar headers, with the prefix field, and octal or base-256 numeric fields;
* POSIX pax extended headers ('x') and global headers ('g'): path, linkpath, size, uid, gid,
  uname, gname, mtime with nanoseconds, SCHILY.xattr.*, LIBARCHIVE.xattr.*,
  RHT.security.selinux, SCHILY.acl.access, SCHILY.acl.default, SCHILY.devmajor/devminor;
* GNU long names and long link names ('L', 'K'), and GNU dump directories ('D');
* GNU sparse files in pax format 1.0, 0.1 and 0.0, and the old GNU sparse type 'S'.

Memory is bounded by `max_extension_size` (one extension header is buffered whole) plus the
sparse map of the current member, which grows with its number of data extents.
"""

from __future__ import annotations

import base64
import binascii
import logging
import struct
import urllib.parse
import zlib
from collections.abc import Callable
from dataclasses import dataclass, fields

from ddm.errors import DDMError

logger = logging.getLogger(__name__)

BLOCK_SIZE = 512

# One extension header (pax records, GNU long name) is buffered whole. Linux limits one
# xattr value to 64 KiB and PATH_MAX is 4 KiB, so 16 MiB leaves room for many xattrs.
# NOTE: a guessed bound, not taken from any tar implementation.
DEFAULT_MAX_EXTENSION_SIZE = 16 * 1024 * 1024

_ZERO_BLOCK = bytes(BLOCK_SIZE)
_HOLE_ZEROS = memoryview(bytes(1024 * 1024))

_ENTRY_TYPES: dict[bytes, str] = {
    b"0": "file",
    b"\0": "file",
    b"7": "file",  # contiguous file, which Linux tars treat as a regular file
    b"S": "file",  # old GNU sparse file
    b"1": "hardlink",
    b"2": "symlink",
    b"3": "char",
    b"4": "block",
    b"5": "dir",
    b"D": "dir",  # GNU dump directory: a directory whose data lists its contents
    b"6": "fifo",
}

# These types carry no data, whatever their size field contains (as in Python's tarfile and
# Go's archive/tar).
_HEADER_ONLY_FLAGS = frozenset((b"1", b"2", b"3", b"4", b"5", b"6"))

# pax local ('x', and 'X' as pre-POSIX Solaris tar spells it) and global ('g') headers, and
# GNU long name ('L') and long link name ('K') headers.
_EXTENSION_FLAGS = frozenset((b"x", b"X", b"g", b"L", b"K"))
_SKIPPED_FLAGS = frozenset((b"V", b"N"))  # volume label, old GNU long-name script

# pax keywords that neither describe a sparse file nor carry xattrs or ACLs. When a member's
# records use only these, the parser skips looking for the others.
_PLAIN_PAX_KEYS = frozenset(
    (b"path", b"linkpath", b"size", b"uid", b"gid", b"uname", b"gname", b"mtime", b"atime",
     b"ctime", b"charset", b"comment", b"hdrcharset")
)

_SCHILY_XATTR = b"SCHILY.xattr."
_LIBARCHIVE_XATTR = b"LIBARCHIVE.xattr."
_SELINUX_KEY = b"RHT.security.selinux"

# Old GNU sparse headers: 4 (offset, numbytes) pairs of 12-byte fields at byte 386 of the
# header, then the "isextended" flag and the real size. Each extension block holds 21 pairs
# and its own "isextended" flag at byte 504.
_OLD_GNU_SPARSE_START = 386
_OLD_GNU_SPARSE_COUNT = 4
_OLD_GNU_REALSIZE = slice(483, 495)
_EXTENSION_SPARSE_COUNT = 21


class TarStreamError(DDMError):
    """A tar stream that is truncated, corrupt or uses an unsupported feature."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"invalid tar stream: {message} (at byte offset {offset})")
        self.offset = offset


@dataclass(slots=True)
class TarEntry:
    """One archive member, after its pax and GNU extension headers were applied.

    Not frozen, because a frozen dataclass's __init__ costs several times more per member,
    and the parser creates one for every member. Callbacks must not change it.

    `path` and `linkname` are the raw bytes of the archive, not normalized. `size` is the
    size of the file content: the real size for sparse files, and 0 for types without data.
    `stored_size` is the number of data bytes after the header in the archive.
    """

    path: bytes
    type: str  # file, dir, symlink, hardlink, fifo, char or block
    typeflag: bytes
    mode: int  # permission bits with setuid, setgid and sticky (07777)
    uid: int
    gid: int
    uname: str
    gname: str
    size: int
    stored_size: int
    mtime_ns: int  # seconds * 10**9, plus the nanoseconds of a pax mtime
    linkname: bytes | None  # symlink text or hard-link target, None for other types
    devmajor: int  # 0 unless type is char or block
    devminor: int
    xattrs: dict[bytes, bytes]
    acl_access: str | None
    acl_default: str | None
    sparse: bool
    offset: int  # stream offset of the member's first header, extension headers included
    # The pax "ctime" record (GNU tar's posix format writes it), None without one.
    ctime_ns: int | None = None


_TAR_ENTRY_FIELDS = ("path", "type", "typeflag", "mode", "uid", "gid", "uname", "gname",
                     "size", "stored_size", "mtime_ns", "linkname", "devmajor", "devminor",
                     "xattrs", "acl_access", "acl_default", "sparse", "offset", "ctime_ns")
if tuple(field.name for field in fields(TarEntry)) != _TAR_ENTRY_FIELDS:
    raise ImportError("TarEntry fields changed: update _TAR_ENTRY_FIELDS and the "
                      "positional TarEntry call in TarStreamParser._build_entry")


@dataclass(slots=True)
class _Header:
    name: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    typeflag: bytes
    linkname: bytes
    uname: bytes
    gname: bytes
    devmajor: bytes  # raw fields, parsed only for device members
    devminor: bytes


EntryCallback = Callable[[TarEntry], None]
DataCallback = Callable[[memoryview], None]


class TarStreamParser:
    """Push parser over a tar byte stream.

    `on_entry(entry)` runs when a member header has been read, `on_data(view)` receives the
    member's content in order, and `on_entry_end(entry)` runs after the last content byte.
    Only members of type "file" have content. For sparse files `on_data` receives the
    expanded content, with zeros for the holes. A view passed to `on_data` is only valid
    during the call, because it points into the caller's chunk.

    `feed()` raises `TarStreamError` as soon as the stream is invalid, and every later call
    raises the same error. `close()` raises it when the stream ended before the
    end-of-archive marker (two zero blocks). Bytes after that marker are counted in
    `trailing_bytes` and otherwise ignored.
    """

    def __init__(
        self,
        on_entry: EntryCallback | None = None,
        on_data: DataCallback | None = None,
        on_entry_end: EntryCallback | None = None,
        *,
        max_extension_size: int = DEFAULT_MAX_EXTENSION_SIZE,
    ) -> None:
        self._on_entry = on_entry
        self._on_data = on_data
        self._on_entry_end = on_entry_end
        self._max_extension_size = max_extension_size

        self.bytes_fed = 0
        self.trailing_bytes = 0
        self.finished = False  # True once the end-of-archive marker was read
        self._closed = False
        self._error: Exception | None = None
        self._warned_trailing = False

        self._state: Callable[[memoryview, int], int] = self._read_header
        self._chunk_start = 0
        self._buffer = bytearray()

        # Extension headers read since the last member, and the global pax records.
        self._global_pax: dict[bytes, bytes] = {}
        self._extensions_offset: int | None = None
        self._local_pax: dict[bytes, bytes] = {}
        self._sparse_pairs: list[bytes] = []
        self._long_name: bytes | None = None
        self._long_link: bytes | None = None

        # The member whose data is being read.
        self._entry: TarEntry | None = None
        self._data_left = 0
        self._padding = 0
        self._emit_content = False
        self._skip_left = 0

        # The sparse map of the current member: data extents as (offset, length) pairs.
        self._extents: list[tuple[int, int]] | None = None
        self._extent_index = 0
        self._extent_left = 0
        self._logical_pos = 0
        self._map_numbers: list[int] = []
        self._map_partial = b""

        # Set while an extension header or old GNU sparse extension blocks are read.
        self._extension_flag = b""
        self._extension_size = 0
        self._pending_header: _Header | None = None
        self._old_gnu_real_size = 0

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        """Parse the next chunk of the stream, calling the callbacks for what it completes."""
        if self._error is not None:
            raise self._error
        if self._closed:
            raise RuntimeError("TarStreamParser.feed() called after close()")

        view = _byte_view(chunk)
        self._chunk_start = self.bytes_fed
        self.bytes_fed += len(view)

        position = 0
        try:
            while position < len(view):
                position = self._state(view, position)
        except Exception as error:
            # The state is undefined after an error, also one raised by a callback.
            self._error = error
            raise

    def close(self) -> None:
        """Raise TarStreamError unless the stream ended after the end-of-archive marker."""
        if self._error is not None:
            raise self._error
        self._closed = True
        if self.finished:
            return

        self._error = TarStreamError(self._describe_truncation(), self.bytes_fed)
        raise self._error

    # Stream offsets

    def _offset(self, position: int) -> int:
        return self._chunk_start + position

    def _describe_truncation(self) -> str:
        state = self._state
        if state == self._read_end_marker:
            return "stream ends after one zero block, but the end-of-archive marker needs two"
        if state == self._read_header and not self._buffer:
            if self._extensions_offset is not None:
                return "stream ends after an extension header, before its member header"
            return "stream ends without the end-of-archive marker (two zero blocks)"
        if self._entry is not None:
            missing = self._data_left + self._padding
            path = display_path(self._entry.path)
            return f"stream ends inside the data of {path} ({missing} bytes missing)"
        if state == self._skip:
            return f"stream ends inside the padding of a member ({self._skip_left} bytes missing)"
        if state == self._read_extension:
            return "stream ends inside an extension header"
        return "stream ends inside a header"

    # Buffering

    def _take(self, view: memoryview, position: int, size: int) -> tuple[bytes | None, int]:
        """Return `size` bytes from the buffer and the view, or None while they are incomplete."""
        if not self._buffer and len(view) - position >= size:
            end = position + size
            return bytes(view[position:end]), end

        piece = view[position : position + size - len(self._buffer)]
        self._buffer += piece
        position += len(piece)
        if len(self._buffer) < size:
            return None, position

        data = bytes(self._buffer)
        self._buffer.clear()
        return data, position

    # States. Each takes the view and a position in it and returns the new position.

    def _read_header(self, view: memoryview, position: int) -> int:
        block, position = self._take(view, position, BLOCK_SIZE)
        if block is None:
            return position

        offset = self._offset(position) - BLOCK_SIZE
        if block == _ZERO_BLOCK:
            if self._extensions_offset is not None:
                raise TarStreamError("zero block after an extension header", offset)
            self._state = self._read_end_marker
            return position

        _verify_checksum(block, offset)
        if self._extensions_offset is None:
            self._extensions_offset = offset
        self._dispatch_header(block, offset)
        return position

    def _read_end_marker(self, view: memoryview, position: int) -> int:
        block, position = self._take(view, position, BLOCK_SIZE)
        if block is None:
            return position

        if block != _ZERO_BLOCK:
            offset = self._offset(position) - BLOCK_SIZE
            raise TarStreamError("a single zero block is followed by a header", offset)
        self.finished = True
        self._state = self._read_trailing
        return position

    def _read_trailing(self, view: memoryview, position: int) -> int:
        trailing = view[position:]
        if not self._warned_trailing and trailing.tobytes().strip(b"\0"):
            logger.warning(
                "ignoring non-zero bytes after the end-of-archive marker, which ends at offset %d",
                self._offset(position) - self.trailing_bytes,
            )
            self._warned_trailing = True
        self.trailing_bytes += len(trailing)
        return len(view)

    def _read_extension(self, view: memoryview, position: int) -> int:
        data, position = self._take(view, position, self._extension_size)
        if data is None:
            return position

        self._apply_extension(self._extension_flag, data, self._offset(position) - len(data))
        self._start_skip(-self._extension_size % BLOCK_SIZE)
        return position

    def _read_data(self, view: memoryview, position: int) -> int:
        count = min(self._data_left, len(view) - position)
        if self._emit_content:
            piece = view[position : position + count]
            if self._extents is None:
                self._on_data(piece)  # type: ignore[misc]
            else:
                self._emit_sparse(piece)
        self._data_left -= count
        position += count

        if self._data_left == 0:
            self._finish_entry()
        return position

    def _skip(self, view: memoryview, position: int) -> int:
        count = min(self._skip_left, len(view) - position)
        self._skip_left -= count
        position += count
        if self._skip_left == 0:
            self._state = self._read_header
        return position

    def _read_sparse_map(self, view: memoryview, position: int) -> int:
        block, position = self._take(view, position, BLOCK_SIZE)
        if block is None:
            return position

        offset = self._offset(position) - BLOCK_SIZE
        self._data_left -= BLOCK_SIZE
        if self._data_left < 0:
            raise TarStreamError("sparse map is longer than the member data", offset)
        if self._parse_sparse_map_block(block, offset):
            self._begin_data()
        return position

    def _read_old_gnu_extension(self, view: memoryview, position: int) -> int:
        block, position = self._take(view, position, BLOCK_SIZE)
        if block is None:
            return position

        assert self._extents is not None
        offset = self._offset(position) - BLOCK_SIZE
        more = _parse_old_gnu_extents(block, 0, _EXTENSION_SPARSE_COUNT, self._extents, offset)
        if not more:
            self._start_sparse_member(offset)
        return position

    def _start_skip(self, count: int) -> None:
        self._skip_left = count
        self._state = self._skip if count else self._read_header

    # Headers

    def _dispatch_header(self, block: bytes, offset: int) -> None:
        flag = block[156:157]
        if flag in _EXTENSION_FLAGS:
            size = _cached_number(block[124:136], "size", offset)
            self._start_extension(flag, size, offset)
        elif flag in _SKIPPED_FLAGS:
            logger.debug("skipping tar member of type %r at offset %d", flag, offset)
            self._reset_extensions()
            self._start_skip(_padded(_parse_number(block[124:136], "size", offset)))
        elif flag == b"M":
            raise TarStreamError("multi-volume continuation members are not supported", offset)
        elif flag == b"S":
            self._start_old_gnu_sparse(_parse_header(block, offset), block, offset)
        else:
            self._start_member(_parse_header(block, offset), offset)

    def _start_extension(self, flag: bytes, size: int, offset: int) -> None:
        if size > self._max_extension_size:
            raise TarStreamError(
                f"extension header of {size} bytes exceeds the maximum of "
                f"{self._max_extension_size} bytes",
                offset,
            )
        self._extension_flag = flag
        self._extension_size = size
        if size == 0:
            self._apply_extension(flag, b"", offset)
            self._state = self._read_header
        else:
            self._state = self._read_extension

    def _apply_extension(self, flag: bytes, data: bytes, offset: int) -> None:
        if flag == b"L":
            self._long_name = _c_string(data)
        elif flag == b"K":
            self._long_link = _c_string(data)
        elif flag == b"g":
            self._apply_global_pax(_parse_pax_records(data, offset))
            # A global header is no part of the member that follows it.
            self._extensions_offset = None
        else:
            self._apply_local_pax(_parse_pax_records(data, offset))

    def _apply_global_pax(self, records: list[tuple[bytes, bytes]]) -> None:
        for key, value in records:
            if value:
                self._global_pax[key] = value
            else:
                self._global_pax.pop(key, None)

    def _apply_local_pax(self, records: list[tuple[bytes, bytes]]) -> None:
        # Sparse format 0.0 repeats GNU.sparse.offset and GNU.sparse.numbytes once per
        # extent, so their order matters and a dictionary would keep only the last pair.
        for key, value in records:
            if key == b"GNU.sparse.offset" or key == b"GNU.sparse.numbytes":
                self._sparse_pairs.append(value)
            else:
                self._local_pax[key] = value

    def _reset_extensions(self) -> None:
        self._extensions_offset = None
        self._local_pax = {}
        self._sparse_pairs = []
        self._long_name = None
        self._long_link = None

    def _merged_pax(self) -> dict[bytes, bytes]:
        if not self._global_pax:
            return self._local_pax

        merged = dict(self._global_pax)
        for key, value in self._local_pax.items():
            # An empty value in an 'x' header cancels the global value, except for xattrs,
            # whose value may be empty.
            if value or key.startswith((_SCHILY_XATTR, _LIBARCHIVE_XATTR)):
                merged[key] = value
            else:
                merged.pop(key, None)
        return merged

    # Members

    def _start_member(self, header: _Header, offset: int) -> None:
        pax = self._merged_pax()
        entry_offset = self._extensions_offset if self._extensions_offset is not None else offset

        sparse = None
        if pax and (self._sparse_pairs or not pax.keys() <= _PLAIN_PAX_KEYS):
            sparse = _read_pax_sparse(pax, self._sparse_pairs, offset)
        entry = self._build_entry(header, pax, entry_offset, sparse)
        self._reset_extensions()
        self._entry = entry
        self._data_left = entry.stored_size
        self._padding = -entry.stored_size % BLOCK_SIZE
        self._emit_content = self._on_data is not None and entry.type == "file"

        if self._on_entry is not None:
            self._on_entry(entry)

        if sparse is None:
            self._extents = None
            self._begin_data()
        elif sparse.extents is None:
            # Format 1.0: the map precedes the data, in whole blocks.
            self._extents = []
            self._map_numbers = []
            self._map_partial = b""
            self._state = self._read_sparse_map
        else:
            self._extents = sparse.extents
            self._validate_sparse_map(offset)
            self._begin_data()

    def _start_old_gnu_sparse(self, header: _Header, block: bytes, offset: int) -> None:
        self._pending_header = header
        self._old_gnu_real_size = _parse_number(block[_OLD_GNU_REALSIZE], "realsize", offset)
        self._extents = []
        more = _parse_old_gnu_extents(
            block, _OLD_GNU_SPARSE_START, _OLD_GNU_SPARSE_COUNT, self._extents, offset
        )
        if more:
            self._state = self._read_old_gnu_extension
        else:
            self._start_sparse_member(offset)

    def _start_sparse_member(self, offset: int) -> None:
        """Start an old GNU 'S' member once its header and extension blocks are read."""
        header = self._pending_header
        assert header is not None and self._extents is not None
        self._pending_header = None

        pax = self._merged_pax()
        sparse = _SparseInfo(self._old_gnu_real_size, None, self._extents)
        entry_offset = self._extensions_offset if self._extensions_offset is not None else offset
        entry = self._build_entry(header, pax, entry_offset, sparse)
        self._reset_extensions()

        self._entry = entry
        self._data_left = entry.stored_size
        self._padding = -entry.stored_size % BLOCK_SIZE
        self._emit_content = self._on_data is not None
        if self._on_entry is not None:
            self._on_entry(entry)
        self._validate_sparse_map(offset)
        self._begin_data()

    def _build_entry(
        self, header: _Header, pax: dict[bytes, bytes], offset: int, sparse: _SparseInfo | None
    ) -> TarEntry:
        flag = header.typeflag
        entry_type = _ENTRY_TYPES.get(flag)
        if entry_type is None:
            logger.warning(
                "unknown tar type flag %r at offset %d, read as a regular file", flag, offset
            )
            entry_type = "file"

        path = self._long_name if self._long_name is not None else header.name
        path = pax.get(b"path", path)
        if sparse is not None and sparse.name is not None:
            path = sparse.name

        linkname: bytes | None = None
        if entry_type in ("symlink", "hardlink"):
            linkname = self._long_link if self._long_link is not None else header.linkname
            linkname = pax.get(b"linkpath", linkname)

        stored_size = _pax_int(pax, b"size", header.size, offset)
        if flag in _HEADER_ONLY_FLAGS:
            stored_size = 0
        size = stored_size if entry_type == "file" else 0
        if sparse is not None:
            size = sparse.real_size

        devmajor = devminor = 0
        if entry_type in ("char", "block"):
            devmajor = _parse_number(header.devmajor, "devmajor", offset)
            devminor = _parse_number(header.devminor, "devminor", offset)
            devmajor = _pax_int(pax, b"SCHILY.devmajor", devmajor, offset)
            devminor = _pax_int(pax, b"SCHILY.devminor", devminor, offset)

        uid, gid, mtime_ns = header.uid, header.gid, header.mtime * 1_000_000_000
        uname, gname = header.uname, header.gname
        xattrs: dict[bytes, bytes] = {}
        acl_access = acl_default = None
        ctime_ns = None
        if pax:
            uid = _pax_int(pax, b"uid", uid, offset)
            gid = _pax_int(pax, b"gid", gid, offset)
            if b"mtime" in pax:
                mtime_ns = _parse_pax_time(pax[b"mtime"], offset)
            ctime_ns = _optional_pax_time(pax, b"ctime", offset)
            uname = pax.get(b"uname", uname)
            gname = pax.get(b"gname", gname)
            if not pax.keys() <= _PLAIN_PAX_KEYS:
                xattrs = _read_pax_xattrs(pax, offset)
                acl_access = _optional_text(pax.get(b"SCHILY.acl.access"))
                acl_default = _optional_text(pax.get(b"SCHILY.acl.default"))

        # Positional arguments, in the field order that _TAR_ENTRY_FIELDS pins down, cost
        # about a third of keyword arguments in a micro-benchmark (CPython 3.11.7).
        return TarEntry(
            path, entry_type, flag, header.mode & 0o7777, uid, gid, _decode_text(uname),
            _decode_text(gname), size, stored_size, mtime_ns, linkname, devmajor, devminor,
            xattrs, acl_access, acl_default, sparse is not None, offset, ctime_ns,
        )

    def _begin_data(self) -> None:
        if self._data_left > 0:
            self._state = self._read_data
        else:
            self._finish_entry()

    def _finish_entry(self) -> None:
        entry = self._entry
        assert entry is not None
        if self._extents is not None and self._emit_content:
            self._finish_sparse_content()

        self._entry = None
        self._extents = None
        if self._on_entry_end is not None:
            self._on_entry_end(entry)
        self._start_skip(self._padding)

    # Sparse files

    def _parse_sparse_map_block(self, block: bytes, offset: int) -> bool:
        """Add one block of a format 1.0 sparse map and return whether the map is complete.

        The map is decimal numbers, each ending in a newline: the number of extents, then
        the offset and length of each. Zero bytes pad it to a block boundary.
        """
        lines = (self._map_partial + block).split(b"\n")
        self._map_partial = lines.pop()
        numbers = self._map_numbers
        for line in lines:
            if not line.isdigit():
                raise TarStreamError(f"invalid number {line[:40]!r} in sparse map", offset)
            numbers.append(int(line))
            if len(numbers) == 1 + 2 * numbers[0]:
                break

        if not numbers or len(numbers) < 1 + 2 * numbers[0]:
            if len(self._map_partial) > 40:
                raise TarStreamError("invalid number in sparse map", offset)
            return False

        assert self._extents is not None
        self._extents.extend(zip(numbers[1::2], numbers[2::2], strict=True))
        self._map_numbers = []
        self._map_partial = b""
        self._validate_sparse_map(offset)
        return True

    def _validate_sparse_map(self, offset: int) -> None:
        """Check that the extents are ordered, inside the file, and match the data size."""
        assert self._entry is not None and self._extents is not None
        end = 0
        total = 0
        for extent_offset, length in self._extents:
            if extent_offset < end:
                raise TarStreamError("sparse map extents overlap or are out of order", offset)
            end = extent_offset + length
            total += length
        if end > self._entry.size:
            raise TarStreamError(
                f"sparse map reaches byte {end}, past the real size {self._entry.size}", offset
            )
        if total != self._data_left:
            raise TarStreamError(
                f"sparse map lists {total} data bytes, but the member stores {self._data_left}",
                offset,
            )

        self._extent_index = 0
        self._extent_left = 0
        self._logical_pos = 0

    def _emit_sparse(self, data: memoryview) -> None:
        while data:
            if self._extent_left == 0:
                self._next_extent()
                continue

            count = min(self._extent_left, len(data))
            self._on_data(data[:count])  # type: ignore[misc]
            self._logical_pos += count
            self._extent_left -= count
            data = data[count:]

    def _next_extent(self) -> None:
        assert self._extents is not None
        extent_offset, length = self._extents[self._extent_index]
        self._extent_index += 1
        self._emit_zeros(extent_offset - self._logical_pos)
        self._logical_pos = extent_offset
        self._extent_left = length

    def _finish_sparse_content(self) -> None:
        assert self._entry is not None
        self._emit_zeros(self._entry.size - self._logical_pos)
        self._logical_pos = self._entry.size

    def _emit_zeros(self, count: int) -> None:
        on_data = self._on_data
        assert on_data is not None
        while count > 0:
            piece = min(count, len(_HOLE_ZEROS))
            on_data(_HOLE_ZEROS[:piece])
            count -= piece


@dataclass(slots=True)
class _SparseInfo:
    real_size: int
    name: bytes | None  # the real path, when the header carries a substitute name
    extents: list[tuple[int, int]] | None  # None while the map is still in the data (1.0)


_NAMED_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def display_path(path: bytes) -> str:
    """Render a raw path for humans, with invisible and non-UTF-8 bytes escaped.

    Invalid UTF-8 bytes become `\\xff`, a newline becomes `\\n`, other non-printable
    ASCII characters become `\\xNN` and other non-printable characters `\\uNNNN` or
    `\\UNNNNNNNN`. A backslash is doubled, so the result is unambiguous and fits on one line.
    """
    text = path.decode("utf-8", "surrogateescape")
    if text.isprintable() and "\\" not in text:
        return text

    parts: list[str] = []
    for character in text:
        code = ord(character)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that surrogateescape could not decode
            parts.append(f"\\x{code - 0xDC00:02x}")
        elif character in _NAMED_ESCAPES:
            parts.append(_NAMED_ESCAPES[character])
        elif character.isprintable():
            parts.append(character)
        elif code < 0x80:
            parts.append(f"\\x{code:02x}")
        elif code < 0x10000:
            parts.append(f"\\u{code:04x}")
        else:
            parts.append(f"\\U{code:08x}")
    return "".join(parts)


def _byte_view(chunk: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(chunk)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _padded(size: int) -> int:
    return size + (-size % BLOCK_SIZE)


def _c_string(field: bytes) -> bytes:
    return field.partition(b"\0")[0]


def _decode_text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def _optional_text(value: bytes | None) -> str | None:
    return None if value is None else _decode_text(value)


def _parse_number(field: bytes, name: str, offset: int) -> int:
    """Parse a numeric header field: octal digits, or GNU base-256 when the top bit is set."""
    # Fast path for the usual form, digits filling the field up to one NUL. bytes.isdigit()
    # accepts ASCII digits only, and int() rejects 8 and 9, which the full parse reports.
    digits = field[:-1]
    if field[-1] == 0 and digits.isdigit():
        try:
            return int(digits, 8)
        except ValueError:
            pass

    first = field[0]
    if first < 0x80:
        digits = field.partition(b"\0")[0].strip(b" ")
        if not digits.strip(b"01234567"):
            return int(digits, 8) if digits else 0
    elif first == 0x80:
        return int.from_bytes(field[1:], "big")
    elif first == 0xFF:
        return int.from_bytes(field, "big", signed=True)
    raise TarStreamError(f"invalid number {field!r} in header field {name}", offset)


# Parsed numeric header fields by their raw bytes. Members of one volume often share modes,
# ids, sizes and mtime seconds, so a lookup replaces many parses. Only valid fields are
# stored, and the dictionary is emptied when it reaches _NUMBER_CACHE_MAX entries.
_NUMBER_CACHE: dict[bytes, int] = {}
_NUMBER_CACHE_MAX = 4096


def _cached_number(field: bytes, name: str, offset: int) -> int:
    """Return `_parse_number(field, name, offset)`, looked up in _NUMBER_CACHE first."""
    value = _NUMBER_CACHE.get(field)
    if value is None:
        value = _parse_number(field, name, offset)
        if len(_NUMBER_CACHE) >= _NUMBER_CACHE_MAX:
            _NUMBER_CACHE.clear()
        _NUMBER_CACHE[field] = value
    return value


def _byte_sum(block: bytes) -> int:
    """Return the sum of the bytes of a 512-byte block, computed in C.

    Adler-32 started at 0 keeps the byte sum modulo 65521 in its low 16 bits. A 256-byte
    half sums to at most 65280, so each half gives its exact sum.
    """
    return (zlib.adler32(block[:256], 0) & 0xFFFF) + (zlib.adler32(block[256:], 0) & 0xFFFF)


def _verify_checksum(block: bytes, offset: int) -> None:
    stored = _cached_number(block[148:156], "chksum", offset)
    # The checksum is computed with the checksum field itself read as eight spaces.
    unsigned = _byte_sum(block) - sum(block[148:156]) + 8 * 0x20
    if stored == unsigned:
        return

    # Some old tars summed the bytes as signed chars.
    signed = sum(struct.unpack_from("148b", block)) + sum(struct.unpack_from("356b", block, 156))
    if stored != signed + 8 * 0x20:
        raise TarStreamError(
            f"header checksum mismatch (stored {stored}, computed {unsigned})", offset
        )


# The ustar header fields, in order: name, mode, uid, gid, size, mtime, chksum, typeflag,
# linkname, magic, version, uname, gname, devmajor, devminor, prefix, and 12 unused bytes.
_USTAR_LAYOUT = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12x")


def _parse_header(block: bytes, offset: int) -> _Header:
    """Parse the fields of a header block whose checksum was verified."""
    (name, mode, uid, gid, size, mtime, _, typeflag, linkname, magic, _, uname, gname,
     devmajor, devminor, prefix) = _USTAR_LAYOUT.unpack(block)  # fmt: skip

    name = name.partition(b"\0")[0]
    # GNU headers ("ustar  \0") use the prefix bytes for other fields.
    if magic == b"ustar\0" and prefix[0]:
        name = prefix.partition(b"\0")[0] + b"/" + name

    # Positional arguments, in _Header's field order, for the reason given in _build_entry.
    return _Header(
        name,
        _cached_number(mode, "mode", offset),
        _cached_number(uid, "uid", offset),
        _cached_number(gid, "gid", offset),
        _cached_number(size, "size", offset),
        _cached_number(mtime, "mtime", offset),
        typeflag,
        linkname.partition(b"\0")[0],
        uname.partition(b"\0")[0],
        gname.partition(b"\0")[0],
        devmajor,
        devminor,
    )


def _parse_old_gnu_extents(
    block: bytes, start: int, count: int, extents: list[tuple[int, int]], offset: int
) -> bool:
    """Append the (offset, length) pairs of an old GNU sparse block and return isextended."""
    for index in range(count):
        field = start + 24 * index
        if block[field] == 0:
            break
        extent_offset = _parse_number(block[field : field + 12], "sparse offset", offset)
        length = _parse_number(block[field + 12 : field + 24], "sparse numbytes", offset)
        extents.append((extent_offset, length))
    return block[start + 24 * count] != 0


def _parse_pax_records(data: bytes, offset: int) -> list[tuple[bytes, bytes]]:
    """Split pax extended header data into (keyword, value) records, in order.

    Each record is "<length> <keyword>=<value>\\n", where the decimal length counts the
    whole record. Values are kept as raw bytes, because GNU tar stores non-UTF-8 paths and
    binary xattr values unencoded.
    """
    records = _split_pax_records(data)
    if records is not None:
        return records

    records = []
    position = 0
    while position < len(data):
        if data[position] == 0 and not data[position:].strip(b"\0"):
            break  # some writers pad the records with zero bytes

        space = data.find(b" ", position, position + 21)
        length_text = data[position:space] if space > 0 else b""
        if not length_text.isdigit():
            raise TarStreamError("invalid pax record length", offset)

        end = position + int(length_text)
        if end > len(data) or end <= space + 1 or data[end - 1] != 0x0A:
            raise TarStreamError("pax record does not end with a newline at its length", offset)
        keyword, separator, value = data[space + 1 : end - 1].partition(b"=")
        if not separator or not keyword:
            raise TarStreamError(f"pax record {keyword[:40]!r} has no keyword=value", offset)

        records.append((keyword, value))
        position = end
    return records


def _split_pax_records(data: bytes) -> list[tuple[bytes, bytes]] | None:
    """Split pax records on newlines, or return None unless every record's length matches.

    Most records contain no newline in their values, so splitting on newlines finds them
    with fewer Python steps than following the lengths. Values with newlines, zero padding
    and invalid records give None, and the caller then follows the lengths.
    """
    lines = data.split(b"\n")
    if lines.pop():  # the data does not end with a newline
        return None

    records: list[tuple[bytes, bytes]] = []
    for line in lines:
        length, space, record = line.partition(b" ")
        if not space or len(length) > 20 or not length.isdigit() or int(length) != len(line) + 1:
            return None
        keyword, separator, value = record.partition(b"=")
        if not separator or not keyword:
            return None
        records.append((keyword, value))
    return records


def _pax_int(pax: dict[bytes, bytes], key: bytes, default: int, offset: int) -> int:
    value = pax.get(key)
    if value is None:
        return default
    if not value.isdigit():
        raise TarStreamError(f"pax {key.decode()} value {value[:40]!r} is not a number", offset)
    return int(value)


# Nanoseconds per unit of a fraction with n digits, indexed by n.
_FRACTION_SCALES = tuple(10 ** (9 - digits) for digits in range(10))


def _parse_pax_time(value: bytes, offset: int) -> int:
    """Convert a pax time such as b"1700000000.123456789" or b"-1.5" to nanoseconds."""
    seconds, _, fraction = value.partition(b".")
    if seconds.isdigit() and fraction.isdigit() and len(fraction) <= 9:
        # GNU tar (1.34 here) writes times after 1970 in this form, with 1 to 9 fraction digits.
        return int(seconds) * 1_000_000_000 + int(fraction) * _FRACTION_SCALES[len(fraction)]

    negative = value.startswith(b"-")
    seconds, _, fraction = value.lstrip(b"-").partition(b".")
    if not seconds.isdigit() or (fraction and not fraction.isdigit()):
        raise TarStreamError(f"invalid pax time {value[:40]!r}", offset)

    nanoseconds = int(seconds) * 1_000_000_000 + int(fraction[:9].ljust(9, b"0"))
    return -nanoseconds if negative else nanoseconds


def _optional_pax_time(pax: dict[bytes, bytes], key: bytes, offset: int) -> int | None:
    """Return a pax time record in nanoseconds; None when it is missing or invalid.

    For records that only callbacks use (ctime), so that a damaged one does not stop the parse.
    """
    if key not in pax:
        return None
    try:
        return _parse_pax_time(pax[key], offset)
    except TarStreamError:
        return None


def _read_pax_xattrs(pax: dict[bytes, bytes], offset: int) -> dict[bytes, bytes]:
    """Collect xattrs from SCHILY.xattr.* (raw values), LIBARCHIVE.xattr.* and SELinux records.

    libarchive percent-encodes the name and base64-encodes the value.
    """
    xattrs: dict[bytes, bytes] = {}
    for key, value in pax.items():
        if key.startswith(_SCHILY_XATTR):
            xattrs[key[len(_SCHILY_XATTR) :]] = value
        elif key.startswith(_LIBARCHIVE_XATTR):
            name = urllib.parse.unquote_to_bytes(key[len(_LIBARCHIVE_XATTR) :])
            try:
                xattrs[name] = base64.b64decode(value + b"=" * (-len(value) % 4), validate=True)
            except binascii.Error as error:
                raise TarStreamError(f"invalid base64 in pax record {key!r}", offset) from error
        elif key == _SELINUX_KEY:
            xattrs[b"security.selinux"] = value
    return xattrs


def _read_pax_sparse(
    pax: dict[bytes, bytes], pairs: list[bytes], offset: int
) -> _SparseInfo | None:
    """Return the sparse-file description of the pax records, or None for a plain member."""
    major = pax.get(b"GNU.sparse.major")
    if major is not None:
        version = (major, pax.get(b"GNU.sparse.minor"))
        if version != (b"1", b"0"):
            raise TarStreamError(f"unsupported GNU sparse format version {version!r}", offset)
        real_size = _pax_int(pax, b"GNU.sparse.realsize", -1, offset)
        if real_size < 0:
            raise TarStreamError("sparse member has no GNU.sparse.realsize", offset)
        return _SparseInfo(real_size, pax.get(b"GNU.sparse.name"), None)

    if b"GNU.sparse.map" in pax:
        numbers = pax[b"GNU.sparse.map"].split(b",") if pax[b"GNU.sparse.map"] else []
    elif pairs:
        numbers = pairs
    else:
        return None

    if len(numbers) % 2 or not all(number.isdigit() for number in numbers):
        raise TarStreamError("invalid GNU sparse map in pax records", offset)
    values = [int(number) for number in numbers]
    real_size = _pax_int(pax, b"GNU.sparse.size", -1, offset)
    if real_size < 0:
        raise TarStreamError("sparse member has no GNU.sparse.size", offset)
    extents = list(zip(values[0::2], values[1::2], strict=True))
    return _SparseInfo(real_size, pax.get(b"GNU.sparse.name"), extents)
