"""HTTP transport that lets docker-py's APIClient reach a remote Docker engine over SSH.

Each HTTP connection of the pool is one SSH session channel that runs
`docker -H unix://SOCKET system dial-stdio` on the remote host (or `socat` when the docker
CLI is missing), so the channel's stdin and stdout carry the Engine API's HTTP/1.1 stream.
All channels share the one SSH connection of the host. Large bodies stream both ways:
responses are read from the channel as they arrive, and generator bodies go out with
chunked transfer encoding.
"""

from __future__ import annotations

import errno
import io
import logging
import shlex
import socket
import time
from typing import Any

import docker
import paramiko
import requests.adapters
import urllib3
import urllib3.connection
import urllib3.connectionpool
from docker.constants import MINIMUM_DOCKER_API_VERSION

from ddm.config import SOCKET_PATH_PATTERN
from ddmdriver.ssh import SSHConnection, WINDOW_SIZE

logger = logging.getLogger(__name__)

DEFAULT_API_TIMEOUT = 60.0
MAX_POOL_SIZE = 8  # below OpenSSH's default MaxSessions of 10, with room for commands
READ_BUFFER_SIZE = 256 * 1024

# A socket path that never exists: docker-py builds a unix adapter for it in
# RemoteAPIClient.__init__, and the adapter is replaced before any request is sent.
UNUSED_SOCKET_PATH = "/nonexistent/ddm-placeholder.sock"


def validate_docker_socket(path: str) -> str:
    """Return `path` if it is an absolute socket path safe to put in a command line."""
    if not isinstance(path, str) or not SOCKET_PATH_PATTERN.match(path) or "/../" in f"{path}/":
        raise ValueError(f"invalid Docker socket path {path!r}")
    return path


def dial_stdio_command(docker_socket: str) -> str:
    """Return the remote command that connects its stdin and stdout to `docker_socket`.

    It runs `docker system dial-stdio` when the docker CLI exists, else `socat`. The script
    goes through `sh -c`, so it works whatever the login shell of the remote user is.
    """
    path = validate_docker_socket(docker_socket)
    script = (
        "if command -v docker >/dev/null 2>&1; "
        f"then exec docker -H {shlex.quote('unix://' + path)} system dial-stdio; "
        f"else exec socat - {shlex.quote('UNIX-CONNECT:' + path)}; fi"
    )
    return f"sh -c {shlex.quote(script)}"


class _ChannelReader(io.RawIOBase):
    """Raw, readable stream over a channel's stdout.

    paramiko's Channel.recv(n) moves the rest of its receive buffer forward whenever n is
    smaller than what is buffered, which costs up to the window size per call. This reader
    always takes everything buffered (up to the window) and hands it out from its own
    buffer, so each byte is copied once.
    """

    def __init__(self, channel_socket: ChannelSocket) -> None:
        super().__init__()
        self._socket = channel_socket
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._pending:
            self._pending = memoryview(self._socket.recv(WINDOW_SIZE))
            if not self._pending:
                return 0

        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count


class ChannelSocket:
    """The socket interface that http.client and urllib3 use, over a paramiko channel."""

    def __init__(self, channel: paramiko.Channel, description: str) -> None:
        self.channel = channel
        self.description = description
        self.aborted = False

    @property
    def closed(self) -> bool:
        return self.channel.closed or self.channel.eof_received

    def settimeout(self, timeout: float | None) -> None:
        self.channel.settimeout(timeout)

    def gettimeout(self) -> float | None:
        return self.channel.gettimeout()

    def setsockopt(self, *args: Any) -> None:
        """Accept and ignore socket options: a channel has none."""

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        # paramiko's own sendall copies the whole unsent rest after every packet. Handing
        # it one packet's worth at a time copies each byte once. paramiko reserves 64 bytes
        # of the peer's max packet size for the SSH header.
        slice_size = max(1024, getattr(self.channel, "out_max_packet_size", 32768) - 64)
        offset = 0
        try:
            while offset < len(view):
                offset += self.channel.send(bytes(view[offset : offset + slice_size]))
        except TimeoutError:
            raise
        except (OSError, EOFError, paramiko.SSHException) as error:
            # paramiko raises EOFError when the SSH connection itself is gone. urllib3 reads
            # the response after a BrokenPipeError, so an error that the engine sent before
            # closing still reaches the caller.
            raise BrokenPipeError(
                errno.EPIPE, f"{self.description} closed the connection ({type(error).__name__})"
            ) from error

    def send(self, data: bytes) -> int:
        return self.channel.send(data)

    def recv(self, size: int) -> bytes:
        data = self.channel.recv(size)
        if not data and not self.aborted:
            self._raise_if_failed()
        return data

    def _raise_if_failed(self) -> None:
        """Turn the end of a failed dial-stdio command into an error that names the cause."""
        transport = self.channel.get_transport()
        if transport is None or not transport.is_active():
            return

        deadline = time.monotonic() + 2.0
        while not self.channel.exit_status_ready() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.channel.exit_status_ready():
            return

        status = self.channel.recv_exit_status()
        if status == 0:
            return
        stderr = b""
        while self.channel.recv_stderr_ready():
            stderr += self.channel.recv_stderr(65536)
        message = stderr.decode("utf-8", "replace").strip().splitlines()
        detail = message[-1] if message else f"exit status {status}"
        raise ConnectionResetError(errno.ECONNRESET, f"{self.description}: {detail}")

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        if "r" not in mode or "w" in mode:
            raise ValueError(f"unsupported makefile mode {mode!r}")
        return io.BufferedReader(_ChannelReader(self), buffer_size=READ_BUFFER_SIZE)

    def shutdown(self, how: int) -> None:
        """Shut down one direction; shutting down reading closes the channel.

        urllib3's HTTPResponse.shutdown() uses SHUT_RD to abort a read blocked in another
        thread. paramiko's shutdown(SHUT_RD) only marks the channel, but close() wakes the
        blocked reader, whose recv then returns b"" (end of stream).
        """
        if how in (socket.SHUT_RD, socket.SHUT_RDWR):
            self.aborted = True
            self.channel.close()
        else:
            self.channel.shutdown(how)

    def close(self) -> None:
        self.channel.close()


class SSHChannelConnection(urllib3.connection.HTTPConnection):
    """An HTTP connection whose socket is a dial-stdio channel."""

    def __init__(self, ssh: SSHConnection, command: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout, blocksize=READ_BUFFER_SIZE)
        self.ssh = ssh
        self.command = command

    def connect(self) -> None:
        channel = self.ssh.open_session()
        try:
            channel.exec_command(self.command)
        except (paramiko.SSHException, OSError) as error:
            channel.close()
            raise ConnectionRefusedError(
                errno.ECONNREFUSED, f"cannot start dial-stdio on {self.ssh.target.name}: {error}"
            ) from None
        channel.settimeout(self.timeout)
        self.sock = ChannelSocket(channel, f"Docker engine on {self.ssh.target.name}")

    @property
    def is_connected(self) -> bool:
        # urllib3 would poll the socket's file descriptor, and paramiko creates a pipe for
        # every channel asked for one. The channel's closed and EOF flags show the same.
        return self.sock is not None and not self.sock.closed


class SSHChannelConnectionPool(urllib3.connectionpool.HTTPConnectionPool):
    """Pool of dial-stdio channels on one SSH connection."""

    def __init__(self, ssh: SSHConnection, command: str, timeout: float | None, maxsize: int) -> None:
        super().__init__("localhost", timeout=timeout, maxsize=maxsize)
        self.ssh = ssh
        self.command = command

    def _new_conn(self) -> SSHChannelConnection:
        logger.debug("opening a dial-stdio channel to %s", self.ssh.target.name)
        return SSHChannelConnection(self.ssh, self.command, self.timeout.connect_timeout)


class SSHChannelAdapter(requests.adapters.HTTPAdapter):
    """requests adapter that sends every request over dial-stdio channels of `ssh`."""

    def __init__(
        self,
        ssh: SSHConnection,
        docker_socket: str,
        *,
        timeout: float = DEFAULT_API_TIMEOUT,
        max_pool_size: int = MAX_POOL_SIZE,
    ) -> None:
        super().__init__()
        self.ssh = ssh
        self.pool = SSHChannelConnectionPool(
            ssh, dial_stdio_command(docker_socket), timeout, max_pool_size
        )

    def get_connection(self, url: Any, proxies: Any = None) -> SSHChannelConnectionPool:
        return self.pool

    def get_connection_with_tls_context(
        self, request: Any, verify: Any, proxies: Any = None, cert: Any = None
    ) -> SSHChannelConnectionPool:
        return self.pool

    def request_url(self, request: Any, proxies: Any) -> str:
        # Only the path and query go on the request line, as for a unix socket.
        return request.path_url

    def close(self) -> None:
        self.pool.close()
        super().close()


class RemoteAPIClient(docker.APIClient):
    """A docker.APIClient whose requests all go through `adapter`.

    With `version` None, the engine's API version is asked for, as docker-py does for
    version="auto".
    """

    def __init__(
        self,
        adapter: requests.adapters.HTTPAdapter,
        *,
        timeout: float = DEFAULT_API_TIMEOUT,
        version: str | None = None,
    ) -> None:
        # docker-py picks an adapter from base_url. For a unix:// URL it builds one that
        # connects only when a request is sent, and that adapter is replaced below before
        # any request. Passing a version keeps the constructor from sending a request.
        super().__init__(
            base_url=f"unix://{UNUSED_SOCKET_PATH}",
            version=version or MINIMUM_DOCKER_API_VERSION,
            timeout=timeout,
        )
        self._custom_adapter.close()
        self._custom_adapter = adapter
        self.mount("http+docker://", adapter)
        self._server_version: dict[str, Any] | None = None
        if version is None:
            self._version = self._retrieve_server_version()

    def version(self, api_version: bool = True) -> dict[str, Any]:
        """Return the engine's GET /version response, sent once per client.

        The response (engine, API and kernel versions, OS, arch) changes only when the
        engine is upgraded and restarted, and the client keeps the API version of the
        first response anyway. Opening the client requests it to pick the API version,
        so Engine.ping() reuses that response instead of a second request. With
        `api_version` the versioned URL is requested every time, as in docker-py.
        """
        if api_version:
            return super().version(api_version=True)
        if self._server_version is None:
            self._server_version = super().version(api_version=False)
        return dict(self._server_version)


def ssh_api_client(
    ssh: SSHConnection, docker_socket: str, *, timeout: float = DEFAULT_API_TIMEOUT
) -> RemoteAPIClient:
    """Return an APIClient for the engine behind `docker_socket` on the host of `ssh`."""
    adapter = SSHChannelAdapter(ssh, docker_socket, timeout=timeout)
    return RemoteAPIClient(adapter, timeout=timeout)


def local_api_client(url: str, *, timeout: float = DEFAULT_API_TIMEOUT) -> docker.APIClient:
    """Return docker-py's own APIClient for a unix:// or tcp:// URL."""
    return docker.APIClient(base_url=url, version="auto", timeout=timeout)
