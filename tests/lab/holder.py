"""Namespace holder of one lab host: keeps its namespaces alive, starts its daemons, reaps orphans.

tests.lab.host runs this file as

    unshare --net --mount --uts --propagation private -- python3 -I holder.py SOCKET

so it uses only the standard library. It serves one JSON request per connection
on the unix socket SOCKET and sends one JSON reply:

    {"op": "ping"}                                   -> {"ok": true, "pid": PID}
    {"op": "spawn", "argv": [...], "log": PATH, "env": {...}}
        -> {"ok": true, "pid": PID, "start_time": TICKS} or {"ok": false, "error": MESSAGE}

Daemons started here run inside the host's namespaces. The holder is a child
subreaper (prctl PR_SET_CHILD_SUBREAPER), so processes orphaned inside the host,
such as containerd after dockerd is killed and every container shim, are reaped
here. Without it they would be reparented to PID 1, which in some containers
never reaps, and remain as zombies.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import subprocess
import sys
from typing import Any

PR_SET_CHILD_SUBREAPER = 36
ACCEPT_TIMEOUT_SECONDS = 0.2
MAX_REQUEST_BYTES = 1 << 20


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: holder.py SOCKET", file=sys.stderr)
        return 2

    become_subreaper()
    server = listen(sys.argv[1])
    while True:
        reap_children()
        try:
            connection, _ = server.accept()
        except TimeoutError:
            continue
        with connection:
            serve(connection)


def become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_CHILD_SUBREAPER) failed: {os.strerror(error)}")


def listen(path: str) -> socket.socket:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    os.chmod(path, 0o600)
    server.listen(16)
    server.settimeout(ACCEPT_TIMEOUT_SECONDS)
    return server


def reap_children() -> None:
    """Collect the exit status of every child that has exited."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def serve(connection: socket.socket) -> None:
    connection.settimeout(10.0)
    try:
        request = json.loads(receive_line(connection))
        reply = handle(request)
    except (OSError, ValueError, KeyError, TypeError) as error:
        reply = {"ok": False, "error": f"{type(error).__name__}: {error}"}

    try:
        connection.sendall(json.dumps(reply).encode() + b"\n")
    except OSError:
        pass


def receive_line(connection: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = connection.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST_BYTES:
            raise ValueError(f"request larger than {MAX_REQUEST_BYTES} bytes")
    return data


def handle(request: dict[str, Any]) -> dict[str, Any]:
    operation = request["op"]
    if operation == "ping":
        return {"ok": True, "pid": os.getpid()}
    if operation == "spawn":
        return spawn(request["argv"], request["log"], request["env"])
    return {"ok": False, "error": f"unknown operation {operation!r}"}


def spawn(argv: list[str], log_path: str, env: dict[str, str]) -> dict[str, Any]:
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd="/",
            start_new_session=True,
        )

    # The child is reaped only by the next reap_children() call, so its stat
    # entry still exists even if it already exited.
    return {"ok": True, "pid": process.pid, "start_time": read_start_time(process.pid)}


def read_start_time(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as stat:
        data = stat.read()
    return int(data[data.rindex(b")") + 2 :].split()[19])


if __name__ == "__main__":
    sys.exit(main())
