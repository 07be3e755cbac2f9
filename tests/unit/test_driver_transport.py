"""Tests of the dial-stdio command line, run by a local sh against a local unix socket."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from pathlib import Path

from ddmdriver.transport import dial_stdio_command


def bin_dir(tmp_path: Path, *tools: str) -> Path:
    """Return a directory with links to only the given tools, for use as PATH."""
    directory = tmp_path / "bin"
    directory.mkdir()
    for tool in tools:
        found = shutil.which(tool)
        assert found, f"{tool} is not installed"
        (directory / tool).symlink_to(found)
    return directory


def run_command(command: str, path: Path, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    argv = ["sh", "-c", command]
    return subprocess.run(
        argv, input=stdin, capture_output=True, timeout=30, env={"PATH": str(path)}, check=False
    )


def test_dial_stdio_runs_docker_when_present(tmp_path: Path) -> None:
    directory = bin_dir(tmp_path, "sh")
    fake_docker = directory / "docker"
    fake_docker.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    fake_docker.chmod(0o755)

    completed = run_command(dial_stdio_command("/run/user/7/docker.sock"), directory, b"")

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.decode().splitlines() == [
        "-H",
        "unix:///run/user/7/docker.sock",
        "system",
        "dial-stdio",
    ]


def test_dial_stdio_falls_back_to_socat(tmp_path: Path) -> None:
    directory = bin_dir(tmp_path, "sh", "socat")
    socket_path = tmp_path / "engine.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(socket_path))
    server.listen(1)
    received = bytearray()

    def answer() -> None:
        connection, _ = server.accept()
        with connection:
            while chunk := connection.recv(65536):
                received.extend(chunk)
            connection.sendall(b"HTTP/1.1 200 OK\r\n\r\nOK")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        completed = run_command(dial_stdio_command(str(socket_path)), directory, b"GET /_ping HTTP/1.1\r\n\r\n")
    finally:
        thread.join(timeout=10)
        server.close()

    assert completed.returncode == 0, completed.stderr
    assert bytes(received) == b"GET /_ping HTTP/1.1\r\n\r\n"
    assert completed.stdout == b"HTTP/1.1 200 OK\r\n\r\nOK"


def test_dial_stdio_without_either_tool_fails(tmp_path: Path) -> None:
    directory = bin_dir(tmp_path, "sh")

    completed = run_command(dial_stdio_command(str(tmp_path / "engine.sock")), directory, b"")

    assert completed.returncode != 0
    assert b"socat" in completed.stderr
