"""Text and JSON forms of manifest difference values (ddm.differences) and ddmverify's output."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest

from ddm.differences import describe_value, difference_to_json, value_to_json
from ddm.manifest import ALL_ASPECTS, Difference
from ddmverify.cli import difference_line, result_to_json

ACL_TEXT = "user::rw-\nuser:x:rw-\ngroup::r--\nmask::rw-\nother::r--\n"


def acl_xattr(*entries: tuple[int, int, int]) -> bytes:
    """Return a Linux POSIX ACL xattr value (version 2) with (tag, permissions, id) entries."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *entry) for entry in entries)


NO_ID = 0xFFFFFFFF
ACL_XATTR = acl_xattr((0x01, 6, NO_ID), (0x02, 6, 1001), (0x04, 4, NO_ID), (0x10, 6, NO_ID),
                      (0x20, 4, NO_ID))

# aspect, value, text, JSON
CASES: list[tuple[str, Any, str, Any]] = [
    ("presence", "file", "file", "file"),
    ("presence", None, "missing", None),
    ("type", "dir", "dir", "dir"),
    ("mode", 0o640, "0640", 416),
    ("mode", 0o4755, "04755", 2541),
    ("mode", 0o7, "0007", 7),
    ("owner", (1000, 1000), "1000:1000", {"uid": 1000, "gid": 1000}),
    ("size", 5, "5", 5),
    ("link", b"../b\ttarget", "../b\\ttarget", "../b\ttarget"),
    ("link", b"\xff", "\\xff", {"base64": "/w=="}),
    ("link", (b"a.txt", b"hard"), "[a.txt, hard]", ["a.txt", "hard"]),
    ("link", None, "none", None),
    ("content", "ab" * 16, "ab" * 16, "ab" * 16),
    ("mtime", 1_600_000_000, "2020-09-13T12:26:40Z", 1_600_000_000),
    ("mtime", None, "none", None),
    ("mtime_ns", 1_600_000_000_000_000_001, "2020-09-13T12:26:40.000000001Z",
     1_600_000_000_000_000_001),
    ("mtime_ns", -1, "1969-12-31T23:59:59.999999999Z", -1),
    ("mtime", 10**12, "1000000000000", 10**12),
    ("xattrs", {b"user.k": b"v"}, "user.k=v", [["user.k", "v"]]),
    ("xattrs", {}, "none", []),
    ("xattrs", {b"user.z": b"a\nb", b"user.a": b"\x00"}, "user.a=\\x00; user.z=a\\nb",
     [["user.a", "\x00"], ["user.z", "a\nb"]]),
    ("xattrs", {b"system.posix_acl_access": ACL_XATTR},
     "system.posix_acl_access=user::rw-,user:1001:rw-,group::r--,mask::rw-,other::r--",
     [["system.posix_acl_access",
       {"base64": "AgAAAAEABgD/////AgAGAOkDAAAEAAQA/////xAABgD/////IAAEAP////8="}]]),
    ("xattrs", {b"system.posix_acl_access": b"\x02\x00"},
     "system.posix_acl_access=\\x02\\x00", [["system.posix_acl_access", "\x02\x00"]]),
    ("acl", (ACL_TEXT, None), "user::rw-,user:x:rw-,group::r--,mask::rw-,other::r--",
     {"access": ACL_TEXT, "default": None}),
    ("acl", ("user::rwx\n", "user::rwx\ngroup::r-x\n"),
     "user::rwx,default:user::rwx,default:group::r-x",
     {"access": "user::rwx\n", "default": "user::rwx\ngroup::r-x\n"}),
    ("acl", (None, None), "none", {"access": None, "default": None}),
    ("sparse", True, "yes", True),
    ("sparse", False, "no", False),
    ("device", (4, 1), "4:1", {"major": 4, "minor": 1}),
    ("device", None, "none", None),
]


@pytest.mark.parametrize("aspect, value, text, _", CASES)
def test_describe_value(aspect: str, value: Any, text: str, _: Any) -> None:
    assert describe_value(aspect, value) == text


@pytest.mark.parametrize("aspect, value, _, expected", CASES)
def test_value_to_json(aspect: str, value: Any, _: str, expected: Any) -> None:
    encoded = value_to_json(aspect, value)

    assert encoded == expected
    assert json.loads(json.dumps(encoded)) == expected


def test_every_aspect_has_cases() -> None:
    assert {case[0] for case in CASES} == set(ALL_ASPECTS)


def test_difference_to_json_encodes_path() -> None:
    difference = Difference(b"bad\xff", "owner", (1000, 1000), (0, 0))

    assert difference_to_json(difference) == {
        "path": {"base64": "YmFk/w=="},
        "aspect": "owner",
        "source": {"uid": 1000, "gid": 1000},
        "target": {"uid": 0, "gid": 0},
    }


def test_difference_line_escapes_path_and_values() -> None:
    mode = Difference(b"a\tb", "mode", 0o640, 0o4755)
    links = Difference(b"a.txt", "link", (b"a.txt", b"hard"), None)
    missing = Difference(b"gone", "presence", "file", None)

    assert difference_line(mode) == "  a\\tb\tmode\tsource=0640\ttarget=04755"
    assert difference_line(links) == "  a.txt\tlink\tsource=[a.txt, hard]\ttarget=none"
    assert difference_line(missing) == "  gone\tpresence\tsource=file\ttarget=missing"


def test_result_to_json_types_differences() -> None:
    result = {"source": "a", "target": "b", "entries": 3,
              "differences": [Difference(b"x", "mtime_ns", 1, None)]}

    document = json.loads(json.dumps(result_to_json(result)))

    assert document == {"source": "a", "target": "b", "entries": 3, "differences": [
        {"path": "x", "aspect": "mtime_ns", "source": 1, "target": None}]}
    assert isinstance(result["differences"][0], Difference)
