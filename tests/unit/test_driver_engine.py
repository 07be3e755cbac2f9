"""Tests of ddmdriver.engine and ddmdriver.transport parts that need no Docker engine."""

from __future__ import annotations

import base64
import http.client
import io
import json
import shlex
import tarfile

import docker.errors
import pytest
import requests
import requests.exceptions
import urllib3

from ddm.errors import ConnectionFailed, MigrationFailed, TransferFailed, UsageError
from ddmdriver.engine import (
    ArchiveStream,
    VolumeInfo,
    _ErrorMapper,
    _NotFound,
    _raise_for_stream_error,
    _reason,
    empty_tar,
    parse_df_available,
    validate_container_id,
    validate_container_path,
    validate_volume_name,
)
from ddmdriver.transport import dial_stdio_command, validate_docker_socket


def test_dial_stdio_command_quotes_socket() -> None:
    command = dial_stdio_command("/run/user/1000/docker.sock")

    outer = shlex.split(command)
    assert outer[:2] == ["sh", "-c"]
    assert len(outer) == 3
    lexer = shlex.shlex(outer[2], posix=True, punctuation_chars=";")
    lexer.whitespace_split = True
    script = list(lexer)
    start = script.index("exec") + 1
    assert script[start : start + 5] == [
        "docker",
        "-H",
        "unix:///run/user/1000/docker.sock",
        "system",
        "dial-stdio",
    ]
    assert "UNIX-CONNECT:/run/user/1000/docker.sock" in script


@pytest.mark.parametrize(
    "path",
    ["relative.sock", "/a b.sock", "/x;rm -rf /", "/x$(id)", "/a/../b.sock", "/a\nb", ""],
)
def test_validate_docker_socket_rejects(path: str) -> None:
    with pytest.raises(ValueError):
        validate_docker_socket(path)


def test_validate_docker_socket_accepts_default() -> None:
    assert validate_docker_socket("/var/run/docker.sock") == "/var/run/docker.sock"


def test_parse_df_available_gnu() -> None:
    output = (
        b"Filesystem     1024-blocks     Used Available Capacity Mounted on\n"
        b"/dev/sda1        102400000 51200000  46080000      53% /var/lib/docker\n"
    )

    assert parse_df_available(output) == 46080000 * 1024


def test_parse_df_available_spaces_and_wrapped() -> None:
    spaced = b"Filesystem 1024-blocks Used Available Capacity Mounted on\nmy fs 100 40 60 40% /mnt/with space\n"
    wrapped = b"Filesystem 1024-blocks Used Available Capacity Mounted on\n/dev/mapper/very-long-name\n 100 40 60 40% /\n"

    assert parse_df_available(spaced) == 60 * 1024
    assert parse_df_available(wrapped) == 60 * 1024


def test_parse_df_available_garbage() -> None:
    assert parse_df_available(b"") is None
    assert parse_df_available(b"df: /nope: No such file or directory\n") is None
    assert parse_df_available(b"header\nno numbers here\n") is None


def test_empty_tar_has_no_members() -> None:
    data = empty_tar()

    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        assert archive.getmembers() == []
    assert len(data) % 512 == 0
    assert set(data) == {0}


@pytest.mark.parametrize("name", ["a", "-x", ".x", "a/b", "a b", "../x", "x" * 256, ""])
def test_validate_volume_name_rejects(name: str) -> None:
    with pytest.raises(UsageError):
        validate_volume_name(name)


@pytest.mark.parametrize("name", ["db", "my_vol.2", "A-1", "f" * 64])
def test_validate_volume_name_accepts(name: str) -> None:
    assert validate_volume_name(name) == name


def test_validate_container_id_and_path() -> None:
    assert validate_container_id("a" * 64) == "a" * 64
    with pytest.raises(UsageError):
        validate_container_id("../../images")
    assert validate_container_path("/v") == "/v"
    with pytest.raises(UsageError):
        validate_container_path("v")
    with pytest.raises(UsageError):
        validate_container_path("/v\n")


def test_volume_info_from_api_nulls() -> None:
    info = VolumeInfo.from_api(
        {"Name": "db", "Driver": "local", "Options": None, "Labels": None,
         "Mountpoint": "/var/lib/docker/volumes/db/_data", "Scope": "local"}
    )

    assert info == VolumeInfo("db", "local", {}, {}, "/var/lib/docker/volumes/db/_data", "local")


def test_stream_error_raised() -> None:
    output = '{"status":"sha256:abc"}\n{"error":"no space left","errorDetail":{"message":"x"}}\n'

    with pytest.raises(MigrationFailed, match="no space left"):
        _raise_for_stream_error(output, "importing")
    _raise_for_stream_error('{"status":"sha256:abc"}\n', "importing")


def api_error(status: int, explanation: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    cls = docker.errors.NotFound if status == 404 else docker.errors.APIError
    return cls("request failed", response=response, explanation=explanation)


def test_error_mapper_not_found() -> None:
    with pytest.raises(_NotFound, match="no such volume"):
        with _ErrorMapper("h1", "inspecting"):
            raise api_error(404, "no such volume")


def test_error_mapper_api_error_one_line() -> None:
    with pytest.raises(MigrationFailed) as raised:
        with _ErrorMapper("h1", "removing volume db"):
            raise api_error(409, "volume is in use -\n [abc]")

    message = str(raised.value)
    assert message.startswith("Docker engine on h1 rejected removing volume db")
    assert "in use" in message
    assert "\n" not in message


def test_error_mapper_transport_error() -> None:
    inner = ConnectionResetError(104, "Docker engine on h1: permission denied")
    error = requests.exceptions.ConnectionError(
        urllib3.exceptions.ProtocolError("Connection aborted.", inner)
    )

    with pytest.raises(ConnectionFailed) as raised:
        with _ErrorMapper("h1", "ping"):
            raise error

    assert "permission denied" in str(raised.value)
    assert "h1" in str(raised.value)


def test_error_mapper_leaves_other_errors() -> None:
    with pytest.raises(KeyError):
        with _ErrorMapper("h1", "ping"):
            raise KeyError("x")


def make_response(body: bytes, headers: dict[str, str] | None = None) -> requests.Response:
    response = requests.Response()
    response.status_code = 200
    response.headers.update(headers or {})
    response.raw = urllib3.HTTPResponse(body=io.BytesIO(body), preload_content=False)
    return response


def test_archive_stream_chunks_and_stat() -> None:
    stat = {"name": "v", "size": 4096, "mode": 2147484141}
    header = base64.b64encode(json.dumps(stat).encode()).decode()
    body = bytes(range(256)) * 40

    stream = ArchiveStream(make_response(body, {"X-Docker-Container-Path-Stat": header}), "x", 4096)
    chunks = list(stream)

    assert stream.stat == stat
    assert b"".join(chunks) == body
    assert [len(chunk) for chunk in chunks] == [4096, 4096, 2048]
    assert stream.bytes_read == len(body)


class BrokenBody(io.RawIOBase):
    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:
        raise ConnectionResetError(104, "Connection reset by peer")


def test_archive_stream_read_error_is_transfer_failed() -> None:
    response = requests.Response()
    response.status_code = 200
    response.raw = urllib3.HTTPResponse(body=io.BufferedReader(BrokenBody()), preload_content=False)
    stream = ArchiveStream(response, "archive of /v in container abc on h1")

    with pytest.raises(TransferFailed, match="archive of /v in container abc on h1"):
        stream.read(1024)


def test_reason_joins_label_and_cause() -> None:
    aborted = requests.exceptions.ConnectionError(
        urllib3.exceptions.ProtocolError(
            "Connection aborted.", http.client.RemoteDisconnected("Remote end closed connection")
        )
    )
    broken = urllib3.exceptions.ProtocolError(
        "Connection broken: IncompleteRead(10 bytes read)", http.client.IncompleteRead(b"x" * 10)
    )

    assert _reason(aborted) == "Connection aborted: Remote end closed connection"
    assert _reason(broken) == "Connection broken: IncompleteRead(10 bytes read)"
    assert _reason(ConnectionRefusedError(111, "Connection refused")) == "Connection refused"
    assert _reason(EOFError()) == "EOFError"
