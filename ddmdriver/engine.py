"""The Docker engine of one host, as the syncer and verify use it.

`open_engine` connects once per host: for ssh:// hosts one SSH connection carries every
Engine API call (as dial-stdio channels) and every command, for the whole task. unix:// and
tcp:// hosts use docker-py's own transports. Every docker-py and transport error leaves this
module as a DDMError with a one-line message.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import sys
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import docker
import docker.errors
import paramiko
import requests
import requests.exceptions
import urllib3.exceptions

from ddm.config import Config, HostConfig
from ddm.errors import (
    ConfigError,
    ConnectionFailed,
    DDMError,
    MigrationFailed,
    TargetExists,
    TransferFailed,
    UsageError,
    VolumeNotFound,
)
from ddm.task import DOCKER_NAME_PATTERN
from ddmdriver.ssh import CommandResult, SSHConnection, connect, resolve_target
from ddmdriver.transport import local_api_client, ssh_api_client

logger = logging.getLogger(__name__)

HELPER_REPOSITORY = "ddm/helper"
HELPER_TAG = "empty"
HELPER_IMAGE = f"{HELPER_REPOSITORY}:{HELPER_TAG}"
HELPER_LABEL = "ddm.helper"
HELPER_COMMAND = "/ddm-helper"  # never run: helper containers are created, never started
HELPER_MOUNT = "/v"
ARCHIVE_CHUNK_SIZE = 1024 * 1024
CONTAINER_ID_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")
LABEL_KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,127}$")

# Errors of the HTTP layer below docker-py: the engine or the channel to it went away.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.HTTPError,
    paramiko.SSHException,
    EOFError,
    OSError,
)


@dataclass(frozen=True)
class EngineInfo:
    """Version details of an engine (as `docker version` shows them) and one ping's round trip."""

    version: str
    api_version: str
    os: str
    arch: str
    rtt_seconds: float
    kernel_version: str = ""


@dataclass(frozen=True)
class VolumeInfo:
    """A volume as the Engine API reports it."""

    name: str
    driver: str
    options: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    mountpoint: str = ""
    scope: str = "local"

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> VolumeInfo:
        return cls(
            name=data["Name"],
            driver=data.get("Driver") or "local",
            options=dict(data.get("Options") or {}),
            labels=dict(data.get("Labels") or {}),
            mountpoint=data.get("Mountpoint") or "",
            scope=data.get("Scope") or "local",
        )


def validate_volume_name(name: str) -> str:
    """Return `name` if Docker accepts it as a volume name, else raise UsageError."""
    if not isinstance(name, str) or len(name) > 255 or not DOCKER_NAME_PATTERN.match(name):
        raise UsageError(
            f"invalid volume name {name!r}",
            hint="a volume name is letters, digits, '_', '.' and '-', starting with a letter or digit",
        )
    return name


def inspect_named_volume(engine: Any, name: str) -> VolumeInfo:
    """Return the volume that a command names; raise UsageError when the host has no such volume.

    `ddmverify` and `ddmdriver manifest` report a missing volume as a usage error (exit
    status 2), because their status 1 means that the volumes differ or that reading failed.
    """
    info = engine.volume_inspect(name)
    if info is None:
        raise UsageError(f"volume {name!r} not found on host {engine.host.name!r}",
                         hint="check the name with 'docker volume ls' on that host")
    return info


def validate_container_id(container_id: str) -> str:
    """Return `container_id` if it is a plausible container ID or name."""
    if not isinstance(container_id, str) or not CONTAINER_ID_PATTERN.match(container_id):
        raise UsageError(f"invalid container ID {container_id!r}")
    return container_id


def validate_container_path(path: str) -> str:
    """Return `path` if it is an absolute path without control characters."""
    if (
        not isinstance(path, str)
        or not path.startswith("/")
        or any(ord(character) < 0x20 for character in path)
    ):
        raise UsageError(f"invalid container path {path!r}: expected an absolute path")
    return path


def empty_tar() -> bytes:
    """Return a tar archive with no entries (two zero blocks, padded by tarfile)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT):
        pass
    return buffer.getvalue()


class ArchiveStream:
    """The tar stream of GET /containers/{id}/archive, read as it arrives.

    Iterating yields chunks of `chunk_size` bytes (the last one shorter). `stat` is the
    engine's X-Docker-Container-Path-Stat header: name, size, mode, mtime, linkTarget.
    Read errors raise TransferFailed. Close the stream to release its channel.
    """

    def __init__(
        self, response: requests.Response, description: str, chunk_size: int = ARCHIVE_CHUNK_SIZE
    ) -> None:
        self.response = response
        self.description = description
        self.chunk_size = chunk_size
        self.stat = _decode_path_stat(response.headers.get("X-Docker-Container-Path-Stat"))
        self.bytes_read = 0

    def read(self, size: int) -> bytes:
        """Return up to `size` bytes; b"" at the end of the archive."""
        try:
            data = self.response.raw.read(size, decode_content=False)
        except TRANSPORT_ERRORS as error:
            raise TransferFailed(
                f"reading {self.description} failed after {self.bytes_read} bytes: {_reason(error)}"
            ) from None
        self.bytes_read += len(data)
        return data

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(self.chunk_size):
            yield chunk

    def abort(self) -> None:
        """Stop a read blocked in another thread; the stream then ends early."""
        try:
            self.response.raw.shutdown()
        except (ValueError, RuntimeError, OSError):
            # The response has no socket shutdown, or it was already released or closed.
            pass

    def close(self) -> None:
        self.response.close()

    def __enter__(self) -> ArchiveStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _decode_path_stat(header: str | None) -> dict[str, Any] | None:
    if not header:
        return None
    try:
        return json.loads(base64.b64decode(header))
    except (ValueError, TypeError):
        logger.debug("ignoring undecodable X-Docker-Container-Path-Stat header %r", header)
        return None


class Engine:
    """The Docker engine of one host, reached over one connection for its lifetime."""

    def __init__(
        self, host: HostConfig, api: docker.APIClient, ssh: SSHConnection | None = None
    ) -> None:
        self.host = host
        self.api = api
        self.ssh = ssh

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the API client and the SSH connection."""
        self.api.close()
        if self.ssh is not None:
            self.ssh.close()

    def ping(self) -> EngineInfo:
        """Ping the engine and return its version, API version, OS, arch and round-trip time."""
        with self._errors("ping"):
            started = time.monotonic()
            self.api.ping()
            rtt = time.monotonic() - started
            version = self.api.version(api_version=False)

        return EngineInfo(
            version=str(version.get("Version", "")),
            api_version=str(version.get("ApiVersion", "")),
            os=str(version.get("Os", "")),
            arch=str(version.get("Arch", "")),
            rtt_seconds=rtt,
            kernel_version=str(version.get("KernelVersion", "")),
        )

    def volume_inspect(self, name: str) -> VolumeInfo | None:
        """Return the volume called `name`, or None if it does not exist."""
        validate_volume_name(name)
        try:
            with self._errors(f"inspecting volume {name}"):
                data = self.api.inspect_volume(name)
        except _NotFound:
            return None
        return VolumeInfo.from_api(data)

    def volume_create(
        self,
        name: str,
        driver: str = "local",
        driver_opts: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> VolumeInfo:
        """Create a volume; raise TargetExists if the name is taken.

        Docker itself returns an existing volume of that name without an error, so this
        checks first. Another client could still create the name between the two calls.
        """
        if self.volume_inspect(name) is not None:
            raise TargetExists(
                f"volume {name} already exists on {self.host.name}",
                hint="choose another target name or remove the volume first",
            )

        with self._errors(f"creating volume {name}"):
            data = self.api.create_volume(
                name=name,
                driver=driver,
                driver_opts=dict(driver_opts or {}),
                labels=dict(labels or {}),
            )
        logger.info("created volume %s on %s (driver %s)", name, self.host.name, driver)
        return VolumeInfo.from_api(data)

    def volume_remove(self, name: str) -> None:
        """Remove a volume; raise VolumeNotFound if it does not exist."""
        validate_volume_name(name)
        try:
            with self._errors(f"removing volume {name}"):
                self.api.remove_volume(name)
        except _NotFound:
            raise VolumeNotFound(f"volume {name} not found on {self.host.name}") from None
        logger.info("removed volume %s on %s", name, self.host.name)

    def volume_size(self, name: str) -> int | None:
        """Return the bytes a volume uses, from the engine's disk usage report (GET /system/df).

        None when the engine reports no size for it (-1, for example for volumes of other
        drivers) or does not list it. The engine walks every volume for this report, so it
        can take a while on hosts with much data.
        """
        validate_volume_name(name)
        with self._errors("reading disk usage"):
            usage = self.api.df()

        for volume in usage.get("Volumes") or []:
            if volume.get("Name") == name:
                size = (volume.get("UsageData") or {}).get("Size", -1)
                return int(size) if size is not None and int(size) >= 0 else None
        return None

    def volumes_root(self) -> str:
        """Return the directory that contains the engine's local volumes, DockerRootDir/volumes."""
        with self._errors("reading engine information"):
            root = str(self.api.info().get("DockerRootDir") or "/var/lib/docker")
        return root.rstrip("/") + "/volumes"

    def list_containers(self, *, labels: Mapping[str, str]) -> list[str]:
        """Return the IDs of all containers, running or not, that carry every given label."""
        _validate_labels(labels)
        filters = {"label": [f"{key}={value}" for key, value in labels.items()]}
        with self._errors("listing containers"):
            found = self.api.containers(all=True, filters=filters, quiet=True)
        return [str(container["Id"]) for container in found]

    def ensure_helper_image(self) -> str:
        """Return the image ID of the helper image, importing it first if it is missing.

        The image is `docker import` of an empty tar (POST /images/create?fromSrc=-), so no
        registry is ever contacted. Its CMD is a placeholder: helper containers are never
        started, they only give the archive API a container with the volume mounted.
        """
        existing = self._find_helper_image()
        if existing is not None:
            return existing

        changes = [f'CMD ["{HELPER_COMMAND}"]', f"LABEL {HELPER_LABEL}={HELPER_TAG}"]
        with self._errors("importing the helper image"):
            output = self.api.import_image_from_data(
                empty_tar(), repository=HELPER_REPOSITORY, tag=HELPER_TAG, changes=changes
            )
        _raise_for_stream_error(output, f"importing {HELPER_IMAGE} on {self.host.name}")

        image_id = self._find_helper_image()
        if image_id is None:
            raise MigrationFailed(f"imported {HELPER_IMAGE} on {self.host.name}, but cannot find it")
        logger.info("imported helper image %s on %s: %s", HELPER_IMAGE, self.host.name, image_id)
        return image_id

    def _find_helper_image(self) -> str | None:
        try:
            with self._errors(f"inspecting image {HELPER_IMAGE}"):
                return str(self.api.inspect_image(HELPER_IMAGE)["Id"])
        except _NotFound:
            pass

        with self._errors("listing images"):
            labelled = self.api.images(filters={"label": f"{HELPER_LABEL}={HELPER_TAG}"}, quiet=True)
        return str(labelled[0]) if labelled else None

    def create_helper(self, volume: str, *, read_only: bool, labels: Mapping[str, str]) -> str:
        """Create (never start) a helper container with `volume` at /v; return its ID.

        Raises VolumeNotFound when the volume is missing, because Docker would silently
        create an empty one for the mount. The container has no network.
        """
        validate_volume_name(volume)
        _validate_labels(labels)
        if self.volume_inspect(volume) is None:
            raise VolumeNotFound(f"volume {volume} not found on {self.host.name}")

        image_id = self.ensure_helper_image()
        mount = docker.types.Mount(
            target=HELPER_MOUNT, source=volume, type="volume", read_only=read_only, no_copy=True
        )
        with self._errors(f"creating a helper container for volume {volume}"):
            host_config = self.api.create_host_config(mounts=[mount], network_mode="none")
            created = self.api.create_container(
                image=image_id,
                host_config=host_config,
                labels=dict(labels),
                network_disabled=True,
            )

        container_id = str(created["Id"])
        logger.info(
            "created helper container %s on %s for volume %s (%s)",
            container_id[:12],
            self.host.name,
            volume,
            "read-only" if read_only else "read-write",
        )
        return container_id

    def remove_container(self, container_id: str) -> None:
        """Remove a container (never its volumes); a missing container is not an error."""
        validate_container_id(container_id)
        try:
            with self._errors(f"removing container {container_id[:12]}"):
                self.api.remove_container(container_id, v=False, force=True)
        except _NotFound:
            logger.debug("container %s on %s was already gone", container_id[:12], self.host.name)
            return
        logger.info("removed container %s on %s", container_id[:12], self.host.name)

    def get_archive(
        self, container_id: str, path: str, *, chunk_size: int = ARCHIVE_CHUNK_SIZE
    ) -> ArchiveStream:
        """Start GET /containers/{id}/archive?path=PATH and return the tar stream."""
        validate_container_id(container_id)
        validate_container_path(path)
        description = f"archive of {path} in container {container_id[:12]} on {self.host.name}"

        # docker-py's get_archive yields one HTTP chunk at a time, which was 32 KiB with
        # dockerd 20.10. Reading the raw response instead returns whole chunk_size blocks.
        # Accept-Encoding "identity" keeps the engine from compressing the stream.
        url = self.api._url("/containers/{0}/archive", container_id)
        try:
            with self._errors(f"reading the {description}"):
                response = self.api._get(
                    url, params={"path": path}, stream=True, headers={"Accept-Encoding": "identity"}
                )
                self.api._raise_for_status(response)
        except _NotFound as error:
            raise TransferFailed(f"{description}: {error.explanation}") from None

        encoding = response.headers.get("Content-Encoding", "identity")
        if encoding not in ("", "identity"):
            response.close()
            raise TransferFailed(f"{description}: unexpected Content-Encoding {encoding!r}")
        return ArchiveStream(response, description, chunk_size)

    def put_archive(self, container_id: str, path: str, chunks: Iterable[bytes]) -> None:
        """Send a tar stream to PUT /containers/{id}/archive?path=PATH (chunked encoding).

        Exceptions raised by the `chunks` iterable pass through unchanged, so a caller can
        tell a failing source from a failing target.
        """
        validate_container_id(container_id)
        validate_container_path(path)
        description = f"{path} in container {container_id[:12]} on {self.host.name}"
        try:
            with self._errors(f"writing the archive to {description}"):
                self.api.put_archive(container_id, path, chunks)
        except _NotFound as error:
            raise TransferFailed(f"writing the archive to {description}: {error.explanation}") from None

    def free_bytes(self, path: str) -> int | None:
        """Return the bytes available to unprivileged users under `path` on the host.

        ssh:// hosts run `df -P -k PATH`; unix:// hosts are this machine, so os.statvfs is
        used. tcp:// hosts give None, and so does a path that does not exist.
        """
        validate_container_path(path)
        if self.ssh is not None:
            result = self.exec_command(["df", "-P", "-k", path])
            if result.exit_status != 0:
                _log_df_failure(self.host.name, path, result, connected=self.ssh.is_active)
                return None
            return parse_df_available(result.stdout)

        if self.host.scheme == "unix":
            try:
                info = os.statvfs(path)
            except OSError:
                return None
            return info.f_bavail * info.f_frsize
        return None

    def exec_command(self, argv: list[str]) -> CommandResult:
        """Run `argv` on an ssh:// host and return (exit_status, stdout, stderr).

        Arguments are validated and quoted with shlex.quote, so the remote shell runs
        exactly `argv`.
        """
        if self.ssh is None:
            raise UsageError(f"host {self.host.name} is not an ssh:// host, so it cannot run commands")
        try:
            return self.ssh.exec_command(argv)
        except ValueError as error:
            raise UsageError(f"invalid command for {self.host.name}: {error}") from None

    def _errors(self, action: str) -> _ErrorMapper:
        return _ErrorMapper(self.host.name, action)


def _log_df_failure(host_name: str, path: str, result: CommandResult, *, connected: bool) -> None:
    """Log a failed `df`, unless it only ended because its SSH connection was closed.

    A task that fails closes its connections, which ends a free-space query still running in
    another thread with no exit status (-1) and no output. That is no fault of df, so it is
    logged at DEBUG level only.
    """
    if result.exit_status == -1 and not connected:
        logger.debug("df -P -k %s on %s stopped: its SSH connection was closed", path, host_name)
        return
    errors = " ".join(result.stderr.decode("utf-8", "replace").split())
    status = ("ended without an exit status" if result.exit_status == -1
              else f"failed with exit status {result.exit_status}")
    logger.warning("df -P -k %s on %s %s: %s",
                   path, host_name, status, errors or "no error output")


class _NotFound(Exception):
    """A 404 from the engine, for the caller to turn into the right DDMError."""

    def __init__(self, explanation: str) -> None:
        super().__init__(explanation)
        self.explanation = explanation


class _ErrorMapper:
    """Context manager that turns docker-py and transport errors into DDMErrors."""

    def __init__(self, host_name: str, action: str) -> None:
        self.host_name = host_name
        self.action = action

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        if exc is None or isinstance(exc, DDMError):
            return False
        if isinstance(exc, docker.errors.NotFound):
            raise _NotFound(_explanation(exc)) from None
        if isinstance(exc, docker.errors.APIError):
            raise MigrationFailed(
                f"Docker engine on {self.host_name} rejected {self.action}: {_explanation(exc)}"
            ) from None
        if isinstance(exc, (*TRANSPORT_ERRORS, docker.errors.DockerException)):
            # docker-py wraps a failed first request (the API version query) in a
            # DockerException whose cause contains the dial-stdio error, so only the
            # innermost error of that chain is shown.
            if isinstance(exc, TRANSPORT_ERRORS):
                reason = _reason(exc)
            else:
                reason = _innermost_reason(exc)
            reason = reason.removeprefix(f"Docker engine on {self.host_name}: ")
            raise ConnectionFailed(
                f"Docker engine on {self.host_name} not reachable while {self.action}: {reason}",
                hint=engine_hint(reason),
            ) from None
        return False


def engine_hint(reason: str) -> str:
    """Return what to do about an engine connection error, judged by its message."""
    if "permission denied" in reason:
        return ("the SSH user may not use the Docker socket; add it to the 'docker' group on "
                "that host, or connect as a user who may")
    if "not found" in reason and ("socat" in reason or "docker" in reason):
        return ("install the docker CLI on that host (DDM runs 'docker system dial-stdio' "
                "there, or socat when docker is missing)")
    if "no such file or directory" in reason:
        return "check that dockerd runs there and the host's docker_socket in the DDM config"
    if "closed connection" in reason or "Connection aborted" in reason:
        return ("the SSH connection or dockerd on that host closed the connection; check that "
                "the host is up and dockerd runs there")
    return "check that dockerd runs there and that the SSH user may use its socket"


def _explanation(error: docker.errors.APIError) -> str:
    explanation = error.explanation
    if isinstance(explanation, bytes):
        explanation = explanation.decode("utf-8", "replace")
    text = str(explanation or error)
    return " ".join(text.split())


def _reason(error: BaseException) -> str:
    """Return one line from a requests/urllib3 error chain, e.g. "Connection aborted: ...".

    urllib3 wraps the socket error in a tuple like ('Connection aborted.', error), and
    requests wraps that again, so the text of the innermost error is joined to the first
    label found on the way.
    """
    chain = _error_chain(error)
    innermost = chain[-1]
    if isinstance(innermost, OSError) and innermost.strerror:
        detail = innermost.strerror
    else:
        detail = str(innermost) or type(innermost).__name__

    labels = [
        argument for item in chain for argument in item.args[:1] if isinstance(argument, str)
    ]
    label = labels[0].rstrip(".") if labels else ""
    if not label or label == detail:
        text = detail
    elif detail in label:
        text = label
    else:
        text = f"{label}: {detail}"
    return " ".join(text.split())


def _innermost_reason(error: BaseException) -> str:
    """Return the text of the innermost error of a chain, its strerror for an OSError."""
    innermost = _error_chain(error)[-1]
    if isinstance(innermost, OSError) and innermost.strerror:
        return " ".join(innermost.strerror.split())
    return " ".join(str(innermost).split()) or type(innermost).__name__


def _error_chain(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = _inner_error(current)
    return chain


def _inner_error(error: BaseException) -> BaseException | None:
    for argument in error.args:
        if isinstance(argument, BaseException):
            return argument
        reason = getattr(argument, "reason", None)
        if isinstance(reason, BaseException):
            return reason
    reason = getattr(error, "reason", None)
    if isinstance(reason, BaseException):
        return reason
    return error.__cause__ or error.__context__


def _raise_for_stream_error(output: str, action: str) -> None:
    """Raise MigrationFailed if a JSON progress stream of the engine reports an error."""
    for line in output.splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("error"):
            raise MigrationFailed(f"{action} failed: {message['error']}")


def _validate_labels(labels: Mapping[str, str]) -> None:
    for key, value in labels.items():
        if not isinstance(key, str) or not LABEL_KEY_PATTERN.match(key):
            raise UsageError(f"invalid label key {key!r}")
        if not isinstance(value, str) or "\x00" in value:
            raise UsageError(f"invalid value for label {key!r}: {value!r}")


def parse_df_available(output: bytes) -> int | None:
    """Return the Available column of `df -P -k` output, in bytes.

    The columns are: file system, 1024-blocks, used, available, capacity, mounted on.
    Names of file systems and mount points may contain spaces, so the numbers are found
    next to the capacity column ("NN%").
    """
    lines = output.decode("utf-8", "replace").strip().splitlines()
    if len(lines) < 2:
        return None

    fields = " ".join(lines[1:]).split()
    for index, value in enumerate(fields):
        if re.fullmatch(r"\d+%|-", value) and index >= 3 and fields[index - 1].isdigit():
            return int(fields[index - 1]) * 1024
    return None


def open_engine(host: HostConfig, config: Config, *,
                on_ssh_connected: Callable[[SSHConnection], None] | None = None) -> Engine:
    """Connect to the engine of `host` and return it; use it as a context manager.

    ssh:// hosts get one SSH connection for the Engine's lifetime; unix://, tcp:// and (on
    Windows only) npipe:// hosts use docker-py's transports. Raises ConnectionFailed, HostKeyError, AuthenticationFailed
    or ConfigError. For an ssh:// host, `on_ssh_connected` gets the authenticated connection
    before the engine's first request, so that it can start host commands early; it must
    not raise.
    """
    if host.scheme == "ssh":
        return _open_ssh_engine(host, config, on_ssh_connected)
    if host.scheme in ("unix", "tcp"):
        return _open_direct_engine(host)
    if host.scheme == "npipe":
        return _open_npipe_engine(host)
    raise UsageError(
        f"host {host.name} uses {host.scheme}://, which DDM does not support",
        hint="use an ssh://, unix://, tcp:// or (on Windows) npipe:// URL",
    )


def _open_npipe_engine(host: HostConfig) -> Engine:
    """Open a local Docker Desktop engine through docker-py's named pipe transport (pywin32)."""
    if sys.platform != "win32":
        raise ConfigError(
            f"host {host.name} uses {host.url}, but npipe:// named pipes exist only on Windows",
            hint="on this system use an ssh://, unix:// or tcp:// URL",
        )
    return _open_direct_engine(host)


def _open_ssh_engine(host: HostConfig, config: Config,
                     on_ssh_connected: Callable[[SSHConnection], None] | None = None) -> Engine:
    ssh = connect(resolve_target(host, config))
    try:
        if on_ssh_connected is not None:
            on_ssh_connected(ssh)
        with _ErrorMapper(host.name, "connecting"):
            api = ssh_api_client(ssh, host.docker_socket)
    except BaseException:
        ssh.close()
        raise
    return Engine(host, api, ssh)


def _open_direct_engine(host: HostConfig) -> Engine:
    with _ErrorMapper(host.name, "connecting"):
        api = local_api_client(host.url)
    return Engine(host, api)
