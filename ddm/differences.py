"""Readable text and typed JSON for the values of a manifest difference.

`Difference.describe()`, the text of `ddmverify` and the verify errors of a migration
(`summarize_differences()`) use `describe_value()`. `ddmverify --json` and
`ddm.api.verify_volumes` use `difference_to_json()`, whose byte strings (paths, symlink
texts, xattr names and values) and ACL texts have the encoding of the manifest JSON:
a string when the bytes are valid UTF-8, otherwise {"base64": "<standard base64>"}.
docs/json-schemas.md lists the JSON value of every aspect.
"""

from __future__ import annotations

import datetime
import struct
from collections.abc import Callable, Sequence
from typing import Any

from ddm.manifest import ALL_ASPECTS, Difference, encode_bytes, encode_text
from ddm.tarstream import display_path
from ddm.text import counted

__all__ = ["brief_difference", "brief_manifest_difference", "describe_value",
           "difference_to_json", "summarize_differences", "value_to_json"]

# The text of a side that lacks the path (aspect "presence").
MISSING = "missing"
# The text of any other absent value: no symlink text or hard-link group, no mtime, no digest.
NONE = "none"

# Maximum characters of one value in a verify error's line. xattrs, ACLs, hard-link groups
# and symlink texts can be kilobytes long, and the line lists up to 20 differences.
MAX_BRIEF_VALUE_CHARS = 80
_CUT_MARK = "..."

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_NANOSECONDS = 1_000_000_000

# Linux stores a POSIX ACL in these xattrs (include/uapi/linux/posix_acl_xattr.h): a
# little-endian u32 version 2, then one (u16 tag, u16 permissions, u32 uid or gid) per entry.
_ACL_XATTRS = frozenset((b"system.posix_acl_access", b"system.posix_acl_default"))
_ACL_XATTR_VERSION = 2
_ACL_ENTRY = struct.Struct("<HHI")
_ACL_TAG_NAMES = {0x01: "user", 0x02: "user", 0x04: "group", 0x08: "group", 0x10: "mask",
                  0x20: "other"}
_ACL_QUALIFIED_TAGS = frozenset((0x02, 0x08))


def difference_to_json(difference: Difference) -> dict[str, Any]:
    """Return one difference as a JSON-ready mapping: path, aspect, source and target."""
    return {
        "path": encode_bytes(difference.path),
        "aspect": difference.aspect,
        "source": value_to_json(difference.aspect, difference.source),
        "target": value_to_json(difference.aspect, difference.target),
    }


def value_to_json(aspect: str, value: object) -> Any:
    """Return the JSON form of one side's value of `aspect`. An absent value stays None."""
    if value is None:
        return None
    return _JSON_FORMS[aspect](value)


def describe_value(aspect: str, value: object) -> str:
    """Return one side's value of `aspect` as one line of text, with byte strings escaped.

    Byte strings are escaped as display_path() escapes paths, so the text never contains a
    tab or a newline. An absent value is "missing" for "presence" and "none" otherwise.
    """
    if value is None:
        return MISSING if aspect == "presence" else NONE
    return _TEXT_FORMS[aspect](value)


def brief_difference(path: bytes, aspect: str, source: str | None = None,
                     target: str | None = None) -> str:
    """Return "PATH: ASPECT (source X, target Y)" for a one-line error message.

    `source` and `target` are value texts, each cut to MAX_BRIEF_VALUE_CHARS. Without
    them (None for both) the text is "PATH: ASPECT".
    """
    text = f"{display_path(path)}: {aspect}"
    if source is None and target is None:
        return text
    source_text = NONE if source is None else _cut(source)
    target_text = NONE if target is None else _cut(target)
    return f"{text} (source {source_text}, target {target_text})"


def brief_manifest_difference(difference: Difference) -> str:
    """Return brief_difference() of a manifest difference, its values as describe_value()."""
    return brief_difference(difference.path, difference.aspect,
                            describe_value(difference.aspect, difference.source),
                            describe_value(difference.aspect, difference.target))


# How many differences a migration's verify error lists; the line counts the rest.
MAX_REPORTED_DIFFERENCES = 20
# The next step after a failed verify of a copy: the rollback removed the copy, so there is no
# target left to inspect. A source written during the copy is the usual cause.
ROLLED_BACK_VERIFY_HINT = ("the target was rolled back; stop whatever writes the source volume "
                           "outside containers and retry, and check the target host's disk if "
                           "the same difference comes back")


def summarize_differences(count: int, listed: Sequence[str]) -> str:
    """Return "N places: A; B and M more", where `listed` are the first of `count` differences."""
    more = count - len(listed)
    suffix = f" and {more} more" if more > 0 else ""
    return f"{counted(count, 'place')}: {'; '.join(listed)}{suffix}"


def _cut(text: str) -> str:
    if len(text) <= MAX_BRIEF_VALUE_CHARS:
        return text
    return text[:MAX_BRIEF_VALUE_CHARS - len(_CUT_MARK)] + _CUT_MARK


# Text forms


def _mode_text(mode: Any) -> str:
    # A leading 0 marks octal, as chmod(1) reads it: 0640, 04755.
    return f"0{mode:03o}"


def _owner_text(owner: Any) -> str:
    uid, gid = owner
    return f"{uid}:{gid}"


def _device_text(device: Any) -> str:
    major, minor = device
    return f"{major}:{minor}"


def _link_text(link: Any) -> str:
    """Return a symlink text, or the paths of a hard-link group in brackets."""
    if isinstance(link, bytes):
        return display_path(link)
    return "[" + ", ".join(display_path(path) for path in link) + "]"


def _mtime_text(seconds: Any) -> str:
    return _utc_time(seconds, None)


def _mtime_ns_text(nanoseconds: Any) -> str:
    seconds, fraction = divmod(nanoseconds, _NANOSECONDS)
    return _utc_time(seconds, fraction)


def _utc_time(seconds: int, nanoseconds: int | None) -> str:
    """Return a Unix time as UTC ISO 8601, with nine fraction digits when nanoseconds are given."""
    try:
        moment = _EPOCH + datetime.timedelta(seconds=seconds)
    except OverflowError:
        # Outside the years 1 to 9999, which datetime cannot represent: the plain number.
        return str(seconds if nanoseconds is None else seconds * _NANOSECONDS + nanoseconds)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if nanoseconds is not None:
        text += f".{nanoseconds:09d}"
    return text + "Z"


def _xattrs_text(xattrs: Any) -> str:
    """Return "name=value; ..." sorted by name, with POSIX ACL xattrs in ACL text form.

    "; " separates the xattrs because an ACL text separates its entries with commas.
    """
    if not xattrs:
        return NONE
    return "; ".join(f"{display_path(name)}={_xattr_value_text(name, xattrs[name])}"
                     for name in sorted(xattrs))


def _xattr_value_text(name: bytes, value: bytes) -> str:
    if name in _ACL_XATTRS:
        entries = _acl_xattr_entries(value)
        if entries is not None:
            return ",".join(entries)
    return display_path(value)


def _acl_xattr_entries(value: bytes) -> list[str] | None:
    """Return the entries of a POSIX ACL xattr as "tag:id:rwx", or None when it is malformed."""
    header = 4
    if len(value) < header or (len(value) - header) % _ACL_ENTRY.size:
        return None
    if int.from_bytes(value[:header], "little") != _ACL_XATTR_VERSION:
        return None
    entries = []
    for tag, permissions, ident in _ACL_ENTRY.iter_unpack(value[header:]):
        if tag not in _ACL_TAG_NAMES:
            return None
        qualifier = str(ident) if tag in _ACL_QUALIFIED_TAGS else ""
        entries.append(f"{_ACL_TAG_NAMES[tag]}:{qualifier}:{_permission_text(permissions)}")
    return entries


def _permission_text(permissions: int) -> str:
    return "".join(letter if permissions & bit else "-"
                   for letter, bit in (("r", 4), ("w", 2), ("x", 1)))


def _acl_text(acl: Any) -> str:
    """Return the ACL entries comma-separated, default ones prefixed "default:" as in getfacl."""
    access, default = acl
    entries = _acl_entries(access)
    entries += [f"default:{entry}" for entry in _acl_entries(default)]
    return ",".join(entries) if entries else NONE


def _acl_entries(text: str | None) -> list[str]:
    # GNU tar and the host scan write one entry per line.
    if not text:
        return []
    return [display_path(line.encode("utf-8", "surrogateescape"))
            for line in text.split("\n") if line]


def _flag_text(flag: Any) -> str:
    return "yes" if flag else "no"


_TEXT_FORMS: dict[str, Callable[[Any], str]] = {
    "presence": str,
    "type": str,
    "mode": _mode_text,
    "owner": _owner_text,
    "size": str,
    "link": _link_text,
    "content": str,
    "mtime": _mtime_text,
    "mtime_ns": _mtime_ns_text,
    "xattrs": _xattrs_text,
    "acl": _acl_text,
    "sparse": _flag_text,
    "device": _device_text,
}


# JSON forms


def _same(value: Any) -> Any:
    return value


def _owner_json(owner: Any) -> dict[str, int]:
    uid, gid = owner
    return {"uid": uid, "gid": gid}


def _device_json(device: Any) -> dict[str, int]:
    major, minor = device
    return {"major": major, "minor": minor}


def _link_json(link: Any) -> Any:
    """Return a symlink text as one encoded string, a hard-link group as an array of them."""
    if isinstance(link, bytes):
        return encode_bytes(link)
    return [encode_bytes(path) for path in link]


def _xattrs_json(xattrs: Any) -> list[list[Any]]:
    # [name, value] pairs sorted by name, as in the manifest JSON: names need not be UTF-8.
    return [[encode_bytes(name), encode_bytes(xattrs[name])] for name in sorted(xattrs)]


def _acl_json(acl: Any) -> dict[str, Any]:
    access, default = acl
    return {"access": None if access is None else encode_text(access),
            "default": None if default is None else encode_text(default)}


_JSON_FORMS: dict[str, Callable[[Any], Any]] = {
    "presence": _same,
    "type": _same,
    "mode": _same,
    "owner": _owner_json,
    "size": _same,
    "link": _link_json,
    "content": _same,
    "mtime": _same,
    "mtime_ns": _same,
    "xattrs": _xattrs_json,
    "acl": _acl_json,
    "sparse": _same,
    "device": _device_json,
}

if set(_TEXT_FORMS) != set(ALL_ASPECTS) or set(_JSON_FORMS) != set(ALL_ASPECTS):
    raise ImportError("manifest aspects changed: give every aspect a text and a JSON form here")
