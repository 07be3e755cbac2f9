"""Containers and networks on an engine, for full-mode migration.

Functions take an open `Engine` and turn docker-py errors into DDMErrors the same way the
Engine methods do. Container and network names are validated by the engine itself.
"""

from __future__ import annotations

import logging
import posixpath
import shlex
import socket
from collections.abc import Mapping
from typing import Any

import docker.types
import paramiko

from ddm.errors import ConnectionFailed, MigrationFailed, UsageError
from ddmdriver.engine import HELPER_MOUNT, Engine, _NotFound, _validate_labels

logger = logging.getLogger(__name__)

PORT_CHECK_SECONDS = 5.0

# Prints the 1-based position of each argument that names no file system entry. A dangling
# symbolic link counts as an entry.
MISSING_PATHS_SCRIPT = ('position=0; for path; do position=$((position + 1)); '
                        '[ -e "$path" ] || [ -L "$path" ] || echo "$position"; done')
# Runs rmdir on each argument that exists, so one that is not empty makes it exit 1.
REMOVE_EMPTY_SCRIPT = ('status=0; for path; do if [ -e "$path" ] || [ -L "$path" ]; then '
                       'rmdir -- "$path" || status=1; fi; done; exit $status')

# Kinds of GET /containers/{id}/changes.
CHANGE_MODIFIED = 0
CHANGE_ADDED = 1
CHANGE_DELETED = 2


def container_inspect(engine: Engine, name: str) -> dict[str, Any] | None:
    """Return GET /containers/{name}/json, or None when there is no such container."""
    try:
        with engine._errors(f"inspecting container {name}"):
            return engine.api.inspect_container(name)
    except _NotFound:
        return None


def list_containers(engine: Engine, *, labels: Mapping[str, str] | None = None,
                    running_only: bool = False) -> list[dict[str, Any]]:
    """Return GET /containers/json entries, optionally filtered by labels."""
    filters = {"label": [f"{key}={value}" for key, value in (labels or {}).items()]}
    with engine._errors("listing containers"):
        return engine.api.containers(all=not running_only, filters=filters)


def container_create(engine: Engine, name: str, body: Mapping[str, Any]) -> str:
    """POST /containers/create?name=NAME with a ready body; return the container ID."""
    url = engine.api._url("/containers/create")
    with engine._errors(f"creating container {name}"):
        response = engine.api._post_json(url, data=dict(body), params={"name": name})
        created = engine.api._result(response, True)
    container_id = str(created["Id"])
    for warning in created.get("Warnings") or []:
        logger.warning("creating container %s on %s: %s", name, engine.host.name, warning)
    logger.info("created container %s (%s) on %s", name, container_id[:12], engine.host.name)
    return container_id


def network_connect(engine: Engine, network: str, container: str,
                    endpoint: Mapping[str, Any]) -> None:
    """Connect a container to a network with aliases and static addresses."""
    ipam = endpoint.get("IPAMConfig") or {}
    with engine._errors(f"connecting container {container} to network {network}"):
        engine.api.connect_container_to_network(
            container, network,
            aliases=endpoint.get("Aliases"),
            links=endpoint.get("Links"),
            ipv4_address=ipam.get("IPv4Address"),
            ipv6_address=ipam.get("IPv6Address"),
        )


def container_start(engine: Engine, container: str) -> None:
    with engine._errors(f"starting container {container}"):
        engine.api.start(container)
    logger.info("started container %s on %s", container, engine.host.name)


def container_stop(engine: Engine, container: str, timeout: int | None = None) -> None:
    """Stop a container; without `timeout` the engine uses the container's StopTimeout (else 10 s)."""
    with engine._errors(f"stopping container {container}"):
        if timeout is None:
            url = engine.api._url("/containers/{0}/stop", container)
            response = engine.api._post(url, timeout=None)
            engine.api._raise_for_status(response)
        else:
            engine.api.stop(container, timeout=timeout)
    logger.info("stopped container %s on %s", container, engine.host.name)


def container_remove(engine: Engine, container: str) -> bool:
    """Remove a container, never its volumes; return False when it was already gone."""
    try:
        with engine._errors(f"removing container {container}"):
            engine.api.remove_container(container, v=False, force=True)
    except _NotFound:
        return False
    logger.info("removed container %s on %s", container, engine.host.name)
    return True


def container_changes(engine: Engine, container: str) -> list[dict[str, Any]]:
    """Return GET /containers/{id}/changes: [{"Path": ..., "Kind": 0|1|2}, ...]."""
    with engine._errors(f"listing changes of container {container}"):
        return engine.api.diff(container) or []


def container_logs(engine: Engine, container: str) -> bytes:
    """Return the container's stdout and stderr log with timestamps, one stream tag per line.

    Each line reads "TIMESTAMP stdout|stderr TEXT". The two streams are fetched separately and
    merged by timestamp, so the stream of each line is kept.
    """
    lines: list[tuple[bytes, int, bytes]] = []
    for order, stream in enumerate((b"stdout", b"stderr")):
        with engine._errors(f"reading the log of container {container}"):
            data = engine.api.logs(container, stdout=stream == b"stdout",
                                   stderr=stream == b"stderr", timestamps=True)
        for index, line in enumerate(data.splitlines()):
            stamp, _, text = line.partition(b" ")
            lines.append((stamp, order * 10**9 + index, stamp + b" " + stream + b" " + text))
    lines.sort()
    return b"".join(line + b"\n" for _, _, line in lines)


def network_inspect(engine: Engine, name: str) -> dict[str, Any] | None:
    try:
        with engine._errors(f"inspecting network {name}"):
            return engine.api.inspect_network(name)
    except _NotFound:
        return None


def network_create(engine: Engine, name: str, source: Mapping[str, Any]) -> str:
    """Create a network like `source` (a network inspect): driver, IPAM, options, labels."""
    ipam = source.get("IPAM") or {}
    pools = [
        docker.types.IPAMPool(subnet=pool.get("Subnet"), iprange=pool.get("IPRange"),
                              gateway=pool.get("Gateway"),
                              aux_addresses=pool.get("AuxiliaryAddresses"))
        for pool in ipam.get("Config") or []
    ]
    ipam_config = docker.types.IPAMConfig(driver=ipam.get("Driver") or "default",
                                          pool_configs=pools, options=ipam.get("Options"))
    with engine._errors(f"creating network {name}"):
        created = engine.api.create_network(
            name, driver=source.get("Driver"), options=source.get("Options") or None,
            ipam=ipam_config, internal=bool(source.get("Internal")),
            labels=source.get("Labels") or None, enable_ipv6=bool(source.get("EnableIPv6")),
            attachable=bool(source.get("Attachable")), check_duplicate=True,
        )
    logger.info("created network %s on %s", name, engine.host.name)
    return str(created["Id"])


def network_remove(engine: Engine, name: str) -> bool:
    try:
        with engine._errors(f"removing network {name}"):
            engine.api.remove_network(name)
    except _NotFound:
        return False
    logger.info("removed network %s on %s", name, engine.host.name)
    return True


def create_bind_helper(engine: Engine, host_path: str, *, read_only: bool,
                       labels: Mapping[str, str]) -> str:
    """Create (never start) a helper container with the host directory `host_path` at /v.

    The engine builds and unpacks the directory's archive through this container, so no
    shell on the host is needed. A missing directory is created by the engine.
    """
    if not host_path.startswith("/"):
        raise UsageError(f"invalid bind mount source {host_path!r}: expected an absolute path")
    _validate_labels(labels)
    image_id = engine.ensure_helper_image()
    suffix = ":ro" if read_only else ""
    with engine._errors(f"creating a helper container for directory {host_path}"):
        host_config = engine.api.create_host_config(binds=[f"{host_path}:{HELPER_MOUNT}{suffix}"],
                                                    network_mode="none")
        created = engine.api.create_container(image=image_id, host_config=host_config,
                                              labels=dict(labels), network_disabled=True)
    return str(created["Id"])


def host_path_exists(engine: Engine, path: str) -> bool | None:
    """Return whether `path` exists on an ssh:// host; None when the host runs no commands."""
    if engine.ssh is None:
        return None
    result = engine.exec_command(["test", "-e", path])
    return result.exit_status == 0


def host_path_is_directory(engine: Engine, path: str) -> bool | None:
    """Return whether `path` is a directory on an ssh:// host; None when the host runs no commands."""
    if engine.ssh is None:
        return None
    result = engine.exec_command(["test", "-d", path])
    return result.exit_status == 0


def path_and_parents(path: str) -> list[str]:
    """Return each directory from the top of absolute `path` down to `path`, after normpath.

    The engine cleans a bind mount's source path the same way (path.Clean in moby's
    volume/mounts/linux_parser.go) before it creates it.
    """
    parts = [part for part in posixpath.normpath(path).split("/") if part]
    return ["/" + "/".join(parts[:count]) for count in range(1, len(parts) + 1)]


def missing_directories(engine: Engine, path: str) -> list[str] | None:
    """Return the directories of path_and_parents(path) that do not exist on an ssh:// host.

    They are the directories the engine creates, outermost first, when a helper container
    bind-mounts `path`. None when the host runs no commands.
    """
    if engine.ssh is None:
        return None
    candidates = path_and_parents(path)
    result = engine.exec_command(["sh", "-c", MISSING_PATHS_SCRIPT, "ddm-missing", *candidates])
    if result.exit_status != 0:
        raise MigrationFailed(f"checking which directories of {shlex.quote(path)} exist on "
                              f"{engine.host.name} failed: "
                              f"{result.stderr.decode('utf-8', 'replace').strip()}")
    positions = {int(line) for line in result.stdout.decode("ascii").split()}
    return [candidate for position, candidate in enumerate(candidates, 1)
            if position in positions]


def remove_empty_directories(engine: Engine, paths: list[str]) -> None:
    """Remove the empty directories `paths` on an ssh:// host, in the order given.

    A directory that is already gone is left out. One that is not empty is kept, and the
    MigrationFailed raised after the others were tried names it (rmdir's message).
    """
    for path in paths:
        if not path.startswith("/") or path.rstrip("/") == "":
            raise UsageError(f"invalid directory to remove {path!r}: expected an absolute "
                             "path below /")
    result = engine.exec_command(["sh", "-c", REMOVE_EMPTY_SCRIPT, "ddm-rmdir", *paths])
    if result.exit_status != 0:
        raise MigrationFailed(f"removing empty directories on {engine.host.name} failed: "
                              f"{result.stderr.decode('utf-8', 'replace').strip()}")


def remove_host_directory(engine: Engine, path: str) -> None:
    """Remove a directory tree on an ssh:// host (the argument is quoted with shlex.quote)."""
    if not path.startswith("/") or path.rstrip("/") == "":
        raise UsageError(f"refusing to remove {path!r}: expected an absolute path below /")
    result = engine.exec_command(["rm", "-rf", "--", path])
    if result.exit_status != 0:
        raise MigrationFailed(f"removing {shlex.quote(path)} on {engine.host.name} failed: "
                              f"{result.stderr.decode('utf-8', 'replace').strip()}")


def write_whiteouts(engine: Engine, upper_dir: str, paths: list[str]) -> None:
    """Mark `paths` deleted in an overlay2 upper directory of a container that is not running.

    overlayfs records a deletion as a character device 0:0 at the path in the upper
    directory; this is what the engine itself writes when a running container deletes a file
    of its image. Needs an ssh:// host whose user may write under the engine's data root.
    """
    for path in paths:
        destination = upper_dir.rstrip("/") + path
        parent = destination.rsplit("/", 1)[0] or "/"
        for argv in (["mkdir", "-p", parent], ["rm", "-rf", "--", destination],
                     ["mknod", destination, "c", "0", "0"]):
            result = engine.exec_command(argv)
            if result.exit_status != 0:
                raise MigrationFailed(
                    f"marking {path} deleted on {engine.host.name} failed: "
                    f"{result.stderr.decode('utf-8', 'replace').strip()}",
                    hint="the SSH user needs write access to the engine's data root",
                )


def tcp_port_open(engine: Engine, address: str, port: int) -> bool:
    """Return whether a TCP connection to address:port succeeds from the engine's host itself.

    The connection is a direct-tcpip channel of the host's SSH connection, so it starts on
    the host and never on this machine's network.
    """
    if engine.ssh is None:
        raise ConnectionFailed(f"host {engine.host.name} is not an ssh:// host; "
                               "cannot check ports from the host itself")
    try:
        channel = engine.ssh.transport.open_channel(
            "direct-tcpip", (address, port), ("127.0.0.1", 0), timeout=PORT_CHECK_SECONDS
        )
    except (paramiko.ChannelException, paramiko.SSHException, socket.error) as error:
        logger.info("port %s:%d on %s is closed: %s", address, port, engine.host.name, error)
        return False
    channel.close()
    return True
