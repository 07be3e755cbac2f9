"""The mountinfo escaping of the --force replacement check (ddmsyncer.replacecheck)."""

from __future__ import annotations

import pytest

from ddmsyncer.replacecheck import escape_mountinfo, unescape_mountinfo


@pytest.mark.parametrize("path, escaped", [
    ("/var/lib/docker/volumes/pgdata/_data", "/var/lib/docker/volumes/pgdata/_data"),
    ("/srv/docker root/volumes", "/srv/docker\\040root/volumes"),
    ("/a\tb\nc\\d", "/a\\011b\\012c\\134d"),
])
def test_mountinfo_escape_round_trip(path, escaped):
    assert escape_mountinfo(path) == escaped
    assert unescape_mountinfo(escaped) == path
