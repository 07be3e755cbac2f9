"""SSH connections to Docker hosts, made with paramiko and resolved like OpenSSH.

DDM owns the connection instead of letting docker-py open it, because docker-py 7.1's
paramiko adapter ignores Port, ProxyJump and UserKnownHostsFile from ~/.ssh/config. Here
the destination is resolved from the DDM config and from ~/.ssh/config (HostName, Port,
User, IdentityFile, IdentitiesOnly, UserKnownHostsFile, HostKeyAlias, ConnectTimeout and
ProxyJump). The host key is checked against known_hosts and never accepted blindly. Every
channel of a task (Docker API calls, commands) shares one SSH connection per host.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import socket
import stat
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import paramiko
from paramiko.agent import AgentSSH

from ddm.config import Config, HostConfig, home_dir
from ddm.errors import AuthenticationFailed, ConfigError, ConnectionFailed, HostKeyError
from ddmdriver import buffers
from ddmdriver.knownhosts import KnownHosts, known_hosts_name
from ddmdriver.sshconfig import local_user, lookup_ssh_config

logger = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT = 15.0
DEFAULT_COMMAND_TIMEOUT = 120.0
KEEPALIVE_SECONDS = 30
MAX_JUMP_HOPS = 8
DEFAULT_IDENTITY_NAMES = ("id_rsa", "id_ecdsa", "id_ed25519")
DEFAULT_KNOWN_HOSTS_NAMES = ("known_hosts", "known_hosts2")

# The environment variable that contains the passphrase of encrypted key files. DDM never asks
# for it on a terminal, never stores it, and never puts it in a message or log line.
PASSPHRASE_VARIABLE = "DDM_SSH_PASSPHRASE"

# Flow control of every channel that DDM opens. The window is how many bytes the server may
# send before DDM acknowledges, and the packet size caps each SSH data packet it sends
# (paramiko's defaults: 2 MiB and 32 KiB). In a 1 GiB relay on the loopback lab a 16 MiB
# window was no faster than 4 MiB but raised the peak memory from 90 to 177 MiB, because
# paramiko's receive buffer copies its contents. 4 MiB still fills a 50 ms path at about
# 80 MiB/s. Connections of --parallel workers use a share of it (ddmdriver.buffers).
WINDOW_SIZE = buffers.DEFAULT_SIZES.window_size
MAX_PACKET_SIZE = 256 * 1024

# paramiko rekeys after 2**29 bytes (512 MiB). AES-GCM and AES-CTR keep their security
# margin far beyond that (RFC 4344 suggests 2**32 blocks, 64 GiB, for 128-bit ciphers),
# and each rekey stalls the stream for a round trip, so rekey every 4 GiB.
REKEY_BYTES = 4 * 1024**3
REKEY_PACKETS = 2**31

# AES-GCM needs no separate MAC pass, so it is the cheapest cipher for paramiko.
PREFERRED_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)

COMMAND_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_./+-]+$")
HOSTNAME_PATTERN = re.compile(r"^[A-Za-z0-9_.:%-]+$")


@dataclass(frozen=True)
class SSHTarget:
    """A destination resolved from the DDM config and ~/.ssh/config, ready to connect."""

    name: str
    hostname: str
    port: int
    user: str
    identity_files: tuple[Path, ...]
    identity_files_explicit: bool
    known_hosts_files: tuple[Path, ...]
    host_key_alias: str | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    agent_socket: str | None = None
    jumps: tuple[SSHTarget, ...] = field(default=())
    key_passphrase: str | None = field(default=None, repr=False, compare=False)

    @property
    def known_hosts_name(self) -> str:
        """Name looked up in known_hosts: HostKeyAlias, or `host` / `[host]:port`."""
        if self.host_key_alias:
            return self.host_key_alias
        return known_hosts_name(self.hostname, self.port)

    @property
    def address(self) -> str:
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        return f"{host}:{self.port}"

    def describe(self) -> str:
        """Return `name (user@host:port)` for messages."""
        return f"{self.name} ({self.user}@{self.address})"


class CommandResult(NamedTuple):
    """Exit status and output of a command run over SSH."""

    exit_status: int
    stdout: bytes
    stderr: bytes


@dataclass
class _Identity:
    source: str
    key: paramiko.PKey


def resolve_target(host: HostConfig, config: Config) -> SSHTarget:
    """Resolve an ssh:// host into an SSHTarget.

    The URL's user and port win over ~/.ssh/config, as on the ssh command line. The DDM
    config's identity_file and known_hosts (the host's own, else the global ones) win over
    IdentityFile and UserKnownHostsFile, also for the host's ProxyJump hops. A key file named
    in the DDM config is the only key tried, so the SSH agent is not used for that host.
    """
    if host.scheme != "ssh" or not host.hostname:
        raise ConfigError(f"host {host.name!r} is not an ssh:// host: {host.url}")

    environ = _environ(config)
    ssh_config = config.ssh_config or home_dir(environ) / ".ssh" / "config"
    identity_file = host.identity_file or config.identity_file
    known_hosts = host.known_hosts or config.known_hosts
    return _resolve(
        alias=host.hostname,
        name=host.name,
        user=host.user,
        port=host.port,
        ssh_config=ssh_config,
        environ=environ,
        identity_file=identity_file,
        known_hosts=known_hosts,
        follow_jumps=True,
        depth=0,
    )


def _environ(config: Config) -> Mapping[str, str]:
    return config.environ if config.environ else os.environ


def _resolve(
    *,
    alias: str,
    name: str,
    user: str | None,
    port: int | None,
    ssh_config: Path,
    environ: Mapping[str, str],
    identity_file: Path | None,
    known_hosts: Path | None,
    follow_jumps: bool,
    depth: int,
) -> SSHTarget:
    if depth > MAX_JUMP_HOPS:
        raise ConfigError(
            f"ProxyJump chain for {name!r} has more than {MAX_JUMP_HOPS} hops",
            hint=f"check {ssh_config} for a ProxyJump loop",
        )

    options = lookup_ssh_config(ssh_config, alias, environ, user=user, port=port)
    hostname = _validated_hostname(options["hostname"][0], name)
    resolved_port = port or _parse_port(options.get("port", ["22"])[0], name, ssh_config)
    resolved_user = user or options.get("user", [None])[0] or local_user(environ)
    if not resolved_user:
        raise ConfigError(
            f"no SSH user for host {name!r}",
            hint="put it in the URL (ssh://USER@HOST) or set User in ~/.ssh/config or USER",
        )

    if options.get("proxycommand", ["none"])[0].lower() != "none":
        raise ConfigError(
            f"host {name!r} uses ProxyCommand in {ssh_config}, which DDM does not run",
            hint="use ProxyJump for jump hosts",
        )

    identities_only = options.get("identitiesonly", ["no"])[0].lower() == "yes"
    identity_files, explicit = _identity_files(options, environ, identity_file)
    jumps: tuple[SSHTarget, ...] = ()
    if follow_jumps:
        jumps = _resolve_jumps(options, name, ssh_config, environ, identity_file, known_hosts, depth)

    return SSHTarget(
        name=name,
        hostname=hostname,
        port=resolved_port,
        user=resolved_user,
        identity_files=identity_files,
        identity_files_explicit=explicit,
        known_hosts_files=_known_hosts_files(options, environ, known_hosts),
        host_key_alias=options.get("hostkeyalias", [None])[0],
        connect_timeout=_parse_timeout(options.get("connecttimeout", [None])[0], name),
        agent_socket=_agent_socket(options, environ, explicit or identities_only),
        key_passphrase=environ.get(PASSPHRASE_VARIABLE) or None,
        jumps=jumps,
    )


def _validated_hostname(hostname: str, name: str) -> str:
    if not HOSTNAME_PATTERN.match(hostname):
        raise ConfigError(f"invalid HostName {hostname!r} for host {name!r}")
    return hostname


def _parse_port(value: str, name: str, ssh_config: Path) -> int:
    if value.isdigit() and 0 < int(value) < 65536:
        return int(value)
    raise ConfigError(f"invalid Port {value!r} for host {name!r} in {ssh_config}")


def _parse_timeout(value: str | None, name: str) -> float:
    if value is None:
        return DEFAULT_CONNECT_TIMEOUT
    if value.isdigit() and int(value) > 0:
        return float(value)
    raise ConfigError(f"invalid ConnectTimeout {value!r} for host {name!r}: expected seconds")


def _identity_files(
    options: Mapping[str, list[str]], environ: Mapping[str, str], identity_file: Path | None
) -> tuple[tuple[Path, ...], bool]:
    if identity_file is not None:
        return (identity_file,), True

    configured = [Path(value) for value in options.get("identityfile", []) if value.lower() != "none"]
    if configured:
        return tuple(configured), False

    ssh_dir = home_dir(environ) / ".ssh"
    return tuple(ssh_dir / name for name in DEFAULT_IDENTITY_NAMES), False


def _known_hosts_files(
    options: Mapping[str, list[str]], environ: Mapping[str, str], known_hosts: Path | None
) -> tuple[Path, ...]:
    if known_hosts is not None:
        return (known_hosts,)

    ssh_dir = home_dir(environ) / ".ssh"
    user_files = options.get("userknownhostsfile") or [
        str(ssh_dir / name) for name in DEFAULT_KNOWN_HOSTS_NAMES
    ]
    # NOTE: /etc/ssh/ssh_known_hosts is read only when GlobalKnownHostsFile names it, unlike
    # OpenSSH, so that tests and scripts depend on no file outside HOME.
    global_files = options.get("globalknownhostsfile", [])
    paths = [value for value in [*user_files, *global_files] if value.lower() != "none"]
    return tuple(Path(value) for value in paths)


def _agent_socket(
    options: Mapping[str, list[str]], environ: Mapping[str, str], keys_only: bool
) -> str | None:
    if keys_only:
        return None
    if options.get("identityagent", [""])[0].lower() == "none":
        return None
    return environ.get("SSH_AUTH_SOCK") or None


def _resolve_jumps(
    options: Mapping[str, list[str]],
    name: str,
    ssh_config: Path,
    environ: Mapping[str, str],
    identity_file: Path | None,
    known_hosts: Path | None,
    depth: int,
) -> tuple[SSHTarget, ...]:
    value = options.get("proxyjump", ["none"])[0]
    if value.lower() == "none":
        return ()

    hops = []
    for index, spec in enumerate(value.split(",")):
        user, alias, port = _parse_jump_spec(spec, name)
        # As in OpenSSH (-J a,b): only the first hop follows its own ProxyJump, because
        # every later hop is reached through the hop before it.
        hops.append(
            _resolve(
                alias=alias,
                name=alias,
                user=user,
                port=port,
                ssh_config=ssh_config,
                environ=environ,
                identity_file=identity_file,
                known_hosts=known_hosts,
                follow_jumps=index == 0,
                depth=depth + 1,
            )
        )
    return tuple(hops)


def _parse_jump_spec(spec: str, name: str) -> tuple[str | None, str, int | None]:
    """Split `[user@]host[:port]` or `ssh://[user@]host[:port]` of a ProxyJump value."""
    text = spec.strip().removeprefix("ssh://")
    user, _, hostport = text.rpartition("@")

    host, port_text, valid = hostport, "", True
    if hostport.startswith("["):
        host, bracket, rest = hostport[1:].partition("]")
        port_text = rest.removeprefix(":")
        valid = bool(bracket) and (not rest or rest.startswith(":"))
    elif hostport.count(":") == 1:
        host, port_text = hostport.split(":")

    valid = valid and bool(host) and not (port_text and not port_text.isdigit())
    if not valid or (port_text and not 0 < int(port_text) < 65536):
        raise ConfigError(f"invalid ProxyJump entry {spec!r} for host {name!r}")
    return user or None, host, int(port_text) if port_text else None


class SSHConnection:
    """One authenticated SSH connection, plus the jump-host connections it runs through."""

    def __init__(self, target: SSHTarget, transports: list[paramiko.Transport]) -> None:
        self.target = target
        self.transport = transports[-1]
        self._transports = transports

    def __enter__(self) -> SSHConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def is_active(self) -> bool:
        return self.transport.is_active()

    def open_session(self, timeout: float | None = None) -> paramiko.Channel:
        """Open a session channel, or raise ConnectionFailed."""
        try:
            return self.transport.open_session(timeout=timeout or self.target.connect_timeout)
        except (paramiko.SSHException, EOFError, OSError) as error:
            if not self.transport.is_active():
                raise ConnectionFailed(
                    f"cannot open an SSH channel to {self.target.describe()}: the SSH "
                    "connection was closed",
                    hint="check that the host is up and that sshd runs there",
                ) from None
            raise ConnectionFailed(
                f"cannot open an SSH channel to {self.target.describe()}: {_reason(error)}",
                hint="the server may allow no more sessions on one connection (MaxSessions in "
                "sshd_config)",
            ) from None

    def open_command(self, argv: Sequence[str], timeout: float | None = None) -> paramiko.Channel:
        """Start `argv` on the host and return its channel for streaming stdin and stdout.

        Every argument is checked and quoted with shlex.quote, so the remote shell runs
        exactly `argv`. The caller reads the exit status and closes the channel.
        """
        command = quote_command(argv)
        channel = self.open_session(timeout)
        try:
            channel.exec_command(command)
        except (paramiko.SSHException, EOFError, OSError) as error:
            channel.close()
            raise ConnectionFailed(
                f"cannot start {argv[0]!r} on {self.target.describe()}: {_reason(error)}"
            ) from None
        logger.debug("started on %s: %s", self.target.name, command)
        return channel

    def exec_command(
        self, argv: Sequence[str], *, timeout: float = DEFAULT_COMMAND_TIMEOUT
    ) -> CommandResult:
        """Run `argv` on the host and return its exit status, stdout and stderr.

        Meant for commands with small output (df, stat); stream large output with
        open_command. The exit status is -1 when the server reports none (a killed command).
        """
        channel = self.open_command(argv)
        try:
            channel.settimeout(timeout)
            channel.shutdown_write()
            return _collect_output(channel, time.monotonic() + timeout)
        except TimeoutError:
            raise ConnectionFailed(
                f"command {argv[0]!r} on {self.target.describe()} timed out after {timeout:g} s"
            ) from None
        finally:
            channel.close()

    def close(self) -> None:
        """Close this connection and then its jump-host connections."""
        for transport in reversed(self._transports):
            transport.close()
        logger.debug("closed SSH connection to %s", self.target.describe())


def collect_output(channel: paramiko.Channel, timeout: float) -> CommandResult:
    """Wait for a started command's stdout, stderr and exit status, and return them.

    The command was started with SSHConnection.open_command, and the caller has closed its
    stdin. Raises TimeoutError when the command has not ended after `timeout` seconds.
    """
    channel.settimeout(timeout)
    return _collect_output(channel, time.monotonic() + timeout)


def _collect_output(channel: paramiko.Channel, deadline: float) -> CommandResult:
    # stdout and stderr share one flow-control window, so stderr is read in its own
    # thread. Reading only stdout would stall a command that writes much to stderr.
    stderr_parts: list[bytes] = []
    reader = threading.Thread(target=_read_stderr, args=(channel, stderr_parts), daemon=True)
    reader.start()

    stdout_parts = []
    while chunk := channel.recv(1024 * 1024):
        stdout_parts.append(chunk)

    reader.join(max(0.0, deadline - time.monotonic()))

    # A command can close its stdout and still run, so the wait for its exit status has
    # the same deadline as the reads.
    while not channel.exit_status_ready():
        if time.monotonic() > deadline:
            raise TimeoutError("no exit status")
        time.sleep(0.01)
    status = channel.recv_exit_status()
    return CommandResult(status, b"".join(stdout_parts), b"".join(stderr_parts))


def _read_stderr(channel: paramiko.Channel, parts: list[bytes]) -> None:
    try:
        while chunk := channel.recv_stderr(1024 * 1024):
            parts.append(chunk)
    except (TimeoutError, OSError):
        pass


def validate_argv(argv: Sequence[str]) -> None:
    """Check a command line before it is quoted for a remote shell.

    The command name must be a plain name or path, and no argument may contain control
    characters: shlex.quote protects them only from POSIX shells, and the remote login
    shell may be another one.
    """
    if not argv:
        raise ValueError("empty command line")
    if not all(isinstance(argument, str) for argument in argv):
        raise ValueError(f"command arguments must be strings: {argv!r}")
    if not COMMAND_NAME_PATTERN.match(argv[0]):
        raise ValueError(f"invalid command name {argv[0]!r}")
    for argument in argv:
        if any(ord(character) < 0x20 or ord(character) == 0x7F for character in argument):
            raise ValueError(f"control character in command argument {argument!r}")


def quote_command(argv: Sequence[str]) -> str:
    """Return `argv` as one command string for the remote shell, every argument quoted."""
    validate_argv(argv)
    return " ".join(shlex.quote(argument) for argument in argv)


def connect(target: SSHTarget) -> SSHConnection:
    """Connect and authenticate to `target`, through its ProxyJump hops if any.

    Raises ConnectionFailed when a host cannot be reached, HostKeyError when a host key is
    unknown, changed or revoked, and AuthenticationFailed when no key is accepted.
    """
    logging.getLogger("paramiko").setLevel(logging.WARNING)
    transports = _connect_chain(target)
    logger.info("connected to %s", target.describe())
    return SSHConnection(target, transports)


def _connect_chain(target: SSHTarget) -> list[paramiko.Transport]:
    if not target.jumps:
        return [_start_transport(target, _open_socket(target))]

    transports = _connect_chain(target.jumps[0])
    try:
        hops = [*target.jumps[1:], target]
        for previous, hop in zip(target.jumps, hops):
            channel = _open_tunnel(transports[-1], previous, hop)
            transports.append(_start_transport(hop, channel))
    except BaseException:
        for transport in reversed(transports):
            transport.close()
        raise
    return transports


def _open_socket(target: SSHTarget) -> socket.socket:
    try:
        sock = socket.create_connection((target.hostname, target.port), timeout=target.connect_timeout)
    except TimeoutError:
        raise ConnectionFailed(
            f"connection to {target.describe()} timed out after {target.connect_timeout:g} s",
            hint="check the host name, port and firewall",
        ) from None
    except OSError as error:
        raise ConnectionFailed(
            f"cannot connect to {target.describe()}: {_reason(error)}",
            hint="check that sshd runs there and the host name and port are right",
        ) from None

    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _open_tunnel(
    transport: paramiko.Transport, jump: SSHTarget, destination: SSHTarget
) -> paramiko.Channel:
    try:
        return transport.open_channel(
            "direct-tcpip",
            dest_addr=(destination.hostname, destination.port),
            src_addr=("127.0.0.1", 0),
            window_size=buffers.current().window_size,
            max_packet_size=MAX_PACKET_SIZE,
            timeout=destination.connect_timeout,
        )
    except (paramiko.SSHException, EOFError, OSError) as error:
        raise ConnectionFailed(
            f"jump host {jump.describe()} cannot connect to {destination.address}: {_reason(error)}",
            hint="check ProxyJump and HostName, and that the jump host allows TCP forwarding",
        ) from None


def _start_transport(target: SSHTarget, sock: socket.socket | paramiko.Channel) -> paramiko.Transport:
    identities = _load_identities(target)
    known_hosts = KnownHosts.load(list(target.known_hosts_files))

    transport = paramiko.Transport(
        sock, default_window_size=buffers.current().window_size,
        default_max_packet_size=MAX_PACKET_SIZE,
    )
    try:
        _configure(transport, target, known_hosts)
        _handshake(transport, target, known_hosts)
        _authenticate(transport, target, identities)
    except BaseException:
        transport.close()
        raise

    transport.set_keepalive(KEEPALIVE_SECONDS)
    return transport


def _configure(transport: paramiko.Transport, target: SSHTarget, known_hosts: KnownHosts) -> None:
    transport.banner_timeout = target.connect_timeout
    transport.handshake_timeout = target.connect_timeout
    transport.auth_timeout = target.connect_timeout
    transport.packetizer.REKEY_BYTES = REKEY_BYTES
    transport.packetizer.REKEY_PACKETS = REKEY_PACKETS

    options = transport.get_security_options()
    available = list(options.ciphers)
    preferred = [name for name in PREFERRED_CIPHERS if name in available]
    options.ciphers = preferred + [name for name in available if name not in preferred]

    # Offer only the recorded key types, so the server presents the key known_hosts has.
    recorded = known_hosts.host_key_algorithms(target.known_hosts_name)
    usable = [name for name in recorded if name in options.key_types]
    if usable:
        options.key_types = usable


def _handshake(transport: paramiko.Transport, target: SSHTarget, known_hosts: KnownHosts) -> None:
    try:
        transport.start_client(timeout=target.connect_timeout)
    except paramiko.IncompatiblePeer as error:
        if "host key" in str(error):
            recorded = ", ".join(known_hosts.host_key_algorithms(target.known_hosts_name))
            raise HostKeyError(
                f"SSH host key for {target.known_hosts_name} has changed: the server offers no "
                f"key of the recorded types ({recorded})",
                hint=f"ask the host's administrator; see its current keys with "
                f"'ssh-keyscan -p {target.port} {target.hostname}'",
            ) from None
        raise _handshake_error(target, error) from None
    except (paramiko.SSHException, EOFError, OSError) as error:
        raise _handshake_error(target, error) from None

    server_key = transport.get_remote_server_key()
    known_hosts.verify(target.known_hosts_name, server_key, host=target.hostname, port=target.port,
                       host_name=target.name)
    logger.debug(
        "SSH %s: cipher %s, host key %s",
        target.describe(),
        transport.remote_cipher,
        server_key.get_name(),
    )


def _handshake_error(target: SSHTarget, error: BaseException) -> ConnectionFailed:
    return ConnectionFailed(f"SSH handshake with {target.describe()} failed: "
                            f"{handshake_reason(error)}", hint=handshake_hint(error))


# paramiko (Transport._check_banner, read in 5.1) starts its error with this text and appends the
# text of the read error, which is empty when the server closed the connection.
BANNER_ERROR = "Error reading SSH protocol banner"


def handshake_reason(error: BaseException) -> str:
    """Return what went wrong in an SSH handshake, naming a connection closed before the banner."""
    text = str(error).strip()
    if text.startswith(BANNER_ERROR):
        detail = text.removeprefix(BANNER_ERROR).strip()
        if not detail or "reset" in detail.lower() or isinstance(error, EOFError):
            return "the server closed the connection before it sent an SSH banner"
        return f"no SSH banner received: {detail}"
    if isinstance(error, EOFError) or not text:
        return "the server closed the connection"
    return _reason(error)


def handshake_hint(error: BaseException) -> str:
    """Return what to do about a failed SSH handshake."""
    if handshake_reason(error).startswith("the server closed the connection"):
        return ("check that sshd runs on that host: a proxy or port forward in front of it "
                "accepts connections even while sshd is stopped")
    return "check that the port belongs to an SSH server"


def _load_identities(target: SSHTarget) -> list[_Identity]:
    identities = []
    for path in target.identity_files:
        key = _load_key(path, required=target.identity_files_explicit,
                        passphrase=target.key_passphrase)
        if key is not None:
            identities.append(_Identity(str(path), key))
    return identities


def _load_key(path: Path, *, required: bool, passphrase: str | None = None) -> paramiko.PKey | None:
    """Load a private key file; a missing default file gives None unless `required`.

    An encrypted key is decrypted with `passphrase` (from DDM_SSH_PASSPHRASE). Error
    messages name the file and the variable, never the passphrase or the key's content.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if required:
            raise AuthenticationFailed(
                f"SSH key file not found: {path}", hint="check identity_file in the DDM config"
            ) from None
        logger.debug("SSH key file %s does not exist, skipped", path)
        return None
    except OSError as error:
        raise AuthenticationFailed(f"cannot read SSH key file {path}: {error.strerror}") from None

    # Windows reports no group or other permission bits (st_mode is 0o666 or 0o444).
    if os.name == "posix" and stat.S_IMODE(mode) & 0o077:
        logger.warning(
            "SSH key file %s is readable by group or others (mode %o); run 'chmod 600 %s'",
            path,
            stat.S_IMODE(mode),
            path,
        )

    secret = passphrase.encode("utf-8") if passphrase else None
    try:
        # Positional: paramiko 5 renamed the keyword from passphrase to password.
        return paramiko.PKey.from_path(path, secret)
    except OSError as error:
        raise AuthenticationFailed(f"cannot read SSH key file {path}: {error.strerror}") from None
    except TypeError:
        # cryptography raises TypeError when a key is encrypted and no password is given.
        raise AuthenticationFailed(
            f"SSH key file {path} is encrypted, and DDM does not ask for passphrases",
            hint=f"load it into ssh-agent with 'ssh-add {path}' and set SSH_AUTH_SOCK, or put "
            f"the passphrase in the environment variable {PASSPHRASE_VARIABLE}",
        ) from None
    except (ValueError, paramiko.SSHException, paramiko.UnknownKeyType):
        if secret is not None and _is_encrypted(path):
            raise AuthenticationFailed(
                f"cannot decrypt SSH key file {path} with the passphrase in {PASSPHRASE_VARIABLE}",
                hint=f"check the passphrase, or unset {PASSPHRASE_VARIABLE} and use ssh-agent",
            ) from None
        raise AuthenticationFailed(
            f"invalid or unsupported SSH private key file {path}",
            hint="use an OpenSSH or PEM private key (ed25519, ECDSA or RSA)",
        ) from None


def _is_encrypted(path: Path) -> bool:
    """Tell whether a private key file is encrypted, by loading it without a passphrase."""
    try:
        paramiko.PKey.from_path(path)
    except TypeError:
        return True
    except (OSError, ValueError, paramiko.SSHException, paramiko.UnknownKeyType):
        return False
    return False


def _authenticate(transport: paramiko.Transport, target: SSHTarget, identities: list[_Identity]) -> None:
    agent = _open_agent(target.agent_socket)
    try:
        candidates = identities + [_Identity("ssh-agent", key) for key in agent.get_keys()]
        if not candidates:
            raise AuthenticationFailed(
                f"no SSH key to log in to {target.describe()}; none of "
                f"{', '.join(str(path) for path in target.identity_files)} exists",
                hint="set identity_file in the DDM config or IdentityFile in ~/.ssh/config",
            )

        for identity in candidates:
            if _try_key(transport, target, identity):
                logger.debug("authenticated to %s with %s", target.describe(), identity.source)
                return
    finally:
        agent._close()

    sources = ", ".join(identity.source for identity in candidates)
    raise AuthenticationFailed(
        f"SSH server {target.address} rejected user {target.user!r} with key {sources}",
        hint="check the user name and that the public key is in the server's authorized_keys",
    )


def _try_key(transport: paramiko.Transport, target: SSHTarget, identity: _Identity) -> bool:
    try:
        remaining = transport.auth_publickey(target.user, identity.key)
    except paramiko.BadAuthenticationType as error:
        raise AuthenticationFailed(
            f"SSH server {target.address} does not accept public keys for user {target.user!r} "
            f"(it allows: {', '.join(error.allowed_types) or 'nothing'})",
            hint="DDM logs in with keys only; enable PubkeyAuthentication on the server",
        ) from None
    except paramiko.AuthenticationException:
        return False
    except (paramiko.SSHException, EOFError, OSError) as error:
        raise ConnectionFailed(
            f"connection to {target.describe()} lost during login: {_reason(error)}"
        ) from None

    if transport.is_authenticated():
        return True
    raise AuthenticationFailed(
        f"SSH server {target.address} wants more than a key for user {target.user!r} "
        f"(next: {', '.join(remaining)})",
        hint="DDM supports key-only logins; use a user without a second factor",
    )


def _open_agent(socket_path: str | None) -> AgentSSH:
    if socket_path is not None and not hasattr(socket, "AF_UNIX"):
        # Windows: paramiko's Agent talks to Pageant or to the OpenSSH agent's named pipe.
        return paramiko.Agent()
    agent = AgentSSH()
    if socket_path is None:
        return agent

    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(5.0)
        conn.connect(socket_path)
        # paramiko.Agent() reads SSH_AUTH_SOCK from os.environ; AgentSSH._connect lets DDM
        # use the socket named in its own environ mapping instead.
        agent._connect(conn)
    except (OSError, paramiko.SSHException) as error:
        conn.close()
        logger.warning("SSH agent at %s not usable, ignored: %s", socket_path, _reason(error))
    return agent


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error).strip()
    return text or type(error).__name__


def exit_detail(status: int | tuple[int, int], errors: str) -> str:
    """Return "exit status 2: ERRORS", leaving out empty error output.

    paramiko reports -1 when the SSH server sent no exit status: the command was killed by a
    signal or the connection closed.
    """
    statuses = status if isinstance(status, tuple) else (status,)
    label = "exit status" if len(statuses) == 1 else "exit statuses"
    text = f"{label} {', '.join(str(value) for value in statuses)}"
    if -1 in statuses:
        text += " (none received: the command was killed or the SSH connection closed)"
    errors = " ".join(errors.split())
    return f"{text}: {errors}" if errors else text
