"""One-line text of the differences between two host-side scans, for verify errors.

The direct route's fallback verify (ddmsyncer.direct.verify_staging, when the manifest scan
cannot run) and an incremental update's verify (ddmsyncer.incremental) find (path, aspect)
pairs. This module adds both sides' values of each listed pair, in the text forms of
ddm.differences that `ddmverify` prints.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

from ddm.differences import NONE, brief_difference, describe_value, summarize_differences
from ddmsyncer.scanentry import Entry

_NANOSECONDS = 1_000_000_000


def _symlink_text(entry: Entry) -> str:
    return describe_value("link", entry.link)


def _device_text(entry: Entry) -> str:
    return describe_value("device", (os.major(entry.rdev), os.minor(entry.rdev)))


def _xattrs_text(entry: Entry) -> str:
    # A scan keeps only the SHA-256 of a path's extended attributes, not the attributes.
    return NONE if entry.xattrs is None else f"SHA-256 {entry.xattrs}"


# The value text of each aspect name that the two comparisons use. Both name the same fields
# differently ("link" and "symlink text", "rdev" and "device"). "missing on target", "extra
# on target" and "hard links" have no value of their own in an entry.
_VALUE_TEXTS: dict[str, Callable[[Entry], str]] = {
    "type": lambda entry: entry.type,
    "mode": lambda entry: describe_value("mode", entry.mode),
    "uid": lambda entry: str(entry.uid),
    "gid": lambda entry: str(entry.gid),
    "size": lambda entry: str(entry.size),
    "mtime": lambda entry: describe_value("mtime", entry.mtime_ns // _NANOSECONDS),
    "mtime_ns": lambda entry: describe_value("mtime_ns", entry.mtime_ns),
    "link": _symlink_text,
    "symlink text": _symlink_text,
    "rdev": _device_text,
    "device": _device_text,
    "content": lambda entry: describe_value("content", entry.digest),
    "xattrs": _xattrs_text,
}


def summarize_scan_differences(differences: Sequence[tuple[bytes, str]], limit: int,
                               source: Mapping[bytes, Entry], target: Mapping[bytes, Entry]
                               ) -> str:
    """Return "N places: PATH: ASPECT (source X, target Y); ..." for the first `limit`."""
    listed = [_brief(path, aspect, source, target) for path, aspect in differences[:limit]]
    return summarize_differences(len(differences), listed)


def _brief(path: bytes, aspect: str, source: Mapping[bytes, Entry],
           target: Mapping[bytes, Entry]) -> str:
    text = _VALUE_TEXTS.get(aspect)
    source_entry, target_entry = source.get(path), target.get(path)
    if text is None or source_entry is None or target_entry is None:
        return brief_difference(path, aspect)
    return brief_difference(path, aspect, text(source_entry), text(target_entry))
