"""Fetch the SSH host key of a Docker host and record it in known_hosts, for `ddminit`.

DDM never accepts an unknown host key by itself. `ddminit` records one only when the operator
confirms the fingerprint on a terminal or passes it with --accept-host-key. The two steps are
here: `scan_host_key()` runs the SSH key exchange (no login) and returns the key the server
presents, and `record_host_key()` appends it to a known_hosts file.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import paramiko

from ddm.errors import ConnectionFailed, HostKeyError
from ddmdriver import ssh
from ddmdriver.knownhosts import KnownHosts, fingerprint

logger = logging.getLogger(__name__)


def scan_host_key(target: ssh.SSHTarget) -> paramiko.PKey:
    """Return the host key that `target` presents in the key exchange, without logging in.

    The key is not checked here. Jump hosts of a ProxyJump chain are connected as usual, so
    their own keys must already be in known_hosts. Raises ConnectionFailed.
    """
    jump_transports: list[paramiko.Transport] = []
    try:
        if target.jumps:
            last = dataclasses.replace(target.jumps[-1], jumps=target.jumps[:-1])
            jump_transports = ssh._connect_chain(last)
            sock = ssh._open_tunnel(jump_transports[-1], last, target)
        else:
            sock = ssh._open_socket(target)
        return _exchange_keys(target, sock)
    finally:
        for transport in reversed(jump_transports):
            transport.close()


def _exchange_keys(target: ssh.SSHTarget, sock: object) -> paramiko.PKey:
    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = target.connect_timeout
        transport.handshake_timeout = target.connect_timeout
        transport.start_client(timeout=target.connect_timeout)
        return transport.get_remote_server_key()
    except (paramiko.SSHException, EOFError, OSError) as error:
        raise ConnectionFailed(
            f"SSH key exchange with {target.describe()} failed: {ssh.handshake_reason(error)}",
            hint=ssh.handshake_hint(error),
        ) from None
    finally:
        transport.close()


def record_host_key(path: Path, name: str, key: paramiko.PKey) -> bool:
    """Append the line `name keytype base64` to the known_hosts file `path`.

    Returns False when the key is already recorded for `name`. Raises HostKeyError when
    another key is recorded for `name`, because replacing a changed key is the operator's
    decision, made by removing the old line. A new file gets mode 0600.
    """
    recorded = [entry for entry in KnownHosts.load([path]).lookup(name) if entry.marker is None]
    if any(entry.key.asbytes() == key.asbytes() for entry in recorded):
        return False
    if recorded:
        first = recorded[0]
        raise HostKeyError(
            f"{first.location} records another host key for {name}: {first.key.get_name()} "
            f"{fingerprint(first.key)}, but the server presents {key.get_name()} {fingerprint(key)}",
            hint=f"if the host was reinstalled, remove that line (ssh-keygen -R '{name}' -f {path}) "
            "and run ddminit again",
        )

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(descriptor, "ab") as stream:
        if stream.tell() > 0 and not path.read_bytes().endswith(b"\n"):
            stream.write(b"\n")
        stream.write(f"{name} {key.get_name()} {key.get_base64()}\n".encode("ascii"))
    logger.info("recorded host key %s %s for %s in %s", key.get_name(), fingerprint(key), name, path)
    return True
