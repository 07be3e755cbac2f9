"""Data path aspects, writer policies and the parsing of GNU tar and find output."""

from __future__ import annotations

import pytest

from ddm.errors import UsageError
from ddm.manifest import ALL_ASPECTS
from ddmdriver.hostpath import (
    CHANGED_WHILE_READ,
    SOCKET_IGNORED,
    HostAccess,
    _decimal_ns,
    _paths_with,
    create_argv,
    extract_argv,
)
from ddmsyncer.datapath import DataPath, not_checked, validate_choice, verify_aspects
from ddmsyncer.staged import staging_name
from ddmsyncer.writers import WriterPolicy
from ddm.task import validate_docker_name


def test_engine_path_reports_lost_aspects_unchecked() -> None:
    assert set(not_checked(DataPath.ENGINE, deep=True)) == {"mtime_ns", "xattrs", "acl", "sparse"}
    assert "content" in verify_aspects(DataPath.ENGINE, deep=True)


def test_host_path_checks_every_aspect_when_deep() -> None:
    assert set(verify_aspects(DataPath.HOST, deep=True)) == set(ALL_ASPECTS)
    assert not_checked(DataPath.HOST, deep=True) == ()
    assert not_checked(DataPath.HOST, deep=False) == ("content",)


def test_invalid_data_path_rejected() -> None:
    with pytest.raises(UsageError):
        validate_choice("rsync")


def test_writer_policy_from_options() -> None:
    assert WriterPolicy.from_options({}) == WriterPolicy(quiesce=None, live=False)
    assert WriterPolicy.from_options({"stop_writers": True}).quiesce == "stop"
    assert WriterPolicy.from_options({"pause": True, "live": True}) == WriterPolicy("pause", True)
    with pytest.raises(UsageError):
        WriterPolicy.from_options({"stop_writers": True, "pause": True})


def test_tar_argv_never_absolute_names() -> None:
    access = HostAccess("h1", ("sudo", "-n", "--"), "tar (GNU tar) 1.34")
    create = create_argv(access, "/var/lib/docker/volumes/a/_data")
    extract = extract_argv(access, "/var/lib/docker/volumes/b/_data")

    assert create[:3] == ["sudo", "-n", "--"]
    assert "--directory=/var/lib/docker/volumes/a/_data" in create
    assert create[-1] == "."
    for argv in (create, extract):
        assert "-P" not in argv
        assert "--absolute-names" not in argv
    assert "--same-owner" in extract
    assert "--xattrs-include=*" in extract


def test_tar_warnings_parsed_into_paths() -> None:
    stderr = (b"tar: ./log: file changed as we read it\n"
              b"tar: ./run/app.sock: socket ignored\n"
              b"tar: ./name with: colon: file changed as we read it\n")

    assert _paths_with(stderr, CHANGED_WHILE_READ) == ["./log", "./name with: colon"]
    assert _paths_with(stderr, SOCKET_IGNORED) == ["./run/app.sock"]


def test_find_mtime_parsed_to_nanoseconds() -> None:
    assert _decimal_ns(b"1600000000.1234567890") == 1_600_000_000_123_456_789
    assert _decimal_ns(b"5.5") == 5_500_000_000
    assert _decimal_ns(b"7") == 7_000_000_000


def test_staging_name_is_valid_docker_name() -> None:
    name = staging_name("0123456789ab", 3)

    assert name == "ddm-staging-0123456789ab-3"
    assert validate_docker_name(name) == name
