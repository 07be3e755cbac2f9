"""The host-level data path: volumes read and written with the host's own GNU tar over SSH.

When the SSH account may read a volume's mountpoint (it is root, or passwordless sudo
works) and the host has GNU tar, DDM streams the volume with

    tar --create --format=posix --xattrs --xattrs-include=* --acls --sparse --numeric-owner

run in the mountpoint, relays the stream through this process (hashing it and building the
manifest on the way), and unpacks it on the target with the matching extract options. Unlike
the Engine API archive, this keeps nanosecond mtimes (pax "mtime" records), every extended
attribute, POSIX ACLs and holes in sparse files.

Every remote command is an argv list of fixed options and paths that came from the engine's
volume inspect, quoted with shlex.quote by SSHConnection.open_command. Extraction never uses
-P (--absolute-names), and ArchiveGuard rejects unsafe members before they reach the target.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import paramiko
import xxhash

from ddm.errors import DDMError, MigrationFailed, TransferFailed
from ddm.manifest import Manifest, ManifestBuilder
from ddmdriver.codec import Codec, StreamDecompressor, compressing_argv, decompressing_argv, probe_codecs
from ddmdriver.relay import RelayResult
from ddmdriver.sendqueue import ChannelSender

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024
PROBE_TIMEOUT_SECONDS = 30.0
SCAN_TIMEOUT_SECONDS = 3600.0
STDERR_LIMIT_BYTES = 256 * 1024

SUDO_PREFIX = ("sudo", "-n", "--")

# GNU tar 1.34 options. --sparse finds holes with SEEK_HOLE and writes pax sparse 1.0
# members; --numeric-owner stores ids only, so the target's user database plays no part.
CREATE_OPTIONS = (
    "--format=posix",
    "--xattrs",
    "--xattrs-include=*",
    "--acls",
    "--sparse",
    "--numeric-owner",
)
# --same-owner and --same-permissions (-p) restore ids and the mode as stored (also setuid,
# setgid and sticky bits, with umask 0). --xattrs-include=* also restores namespaces other
# than user.*, such as security.capability and the system.posix_acl_* xattrs that hold the
# ACLs, so --acls is a second route to the same result. Sparse members are written with holes without
# an option. Directory metadata, mtimes included, is set after the directory's contents.
EXTRACT_OPTIONS = (
    "--numeric-owner",
    "--same-owner",
    "--same-permissions",
    "--xattrs",
    "--xattrs-include=*",
    "--acls",
    "--delay-directory-restore",
)

CHANGED_WHILE_READ = b"file changed as we read it"
SOCKET_IGNORED = b"socket ignored"

Observer = Callable[[memoryview], None]


@dataclass(frozen=True)
class HostAccess:
    """Command prefix for host commands on one host: empty for root, sudo -n for a sudoer."""

    host_name: str
    prefix: tuple[str, ...]
    tar_version: str
    codecs: frozenset[str] = frozenset()  # compression commands on PATH (ddmdriver.codec)

    def argv(self, *command: str) -> list[str]:
        return [*self.prefix, *command]


@dataclass(frozen=True)
class HostProbe:
    """Result of probing a host for the host data path, with the reason when it is unavailable."""

    access: HostAccess | None
    reason: str = ""


@dataclass
class HostTarResult:
    """Outcome of a host tar relay: the stream's size and digest, and the paths tar warned about."""

    relay: RelayResult
    changed_paths: list[str] = field(default_factory=list)
    skipped_sockets: list[str] = field(default_factory=list)
    wire_bytes: int = 0  # bytes that crossed the SSH links: compressed, or the tar stream


def probe_host_access(engine: Any) -> HostProbe:
    """Check whether `engine`'s SSH account can run GNU tar as root on its host."""
    if engine.ssh is None:
        return HostProbe(None, f"host {engine.host.name} is not reached over SSH")

    try:
        user = engine.ssh.exec_command(["id", "-u"], timeout=PROBE_TIMEOUT_SECONDS)
        prefix: tuple[str, ...] = ()
        if user.exit_status != 0 or user.stdout.strip() != b"0":
            sudo = engine.ssh.exec_command([*SUDO_PREFIX, "true"], timeout=PROBE_TIMEOUT_SECONDS)
            if sudo.exit_status != 0:
                return HostProbe(None, f"the SSH account on {engine.host.name} is not root and "
                                 "has no passwordless sudo")
            prefix = SUDO_PREFIX

        version = engine.ssh.exec_command([*prefix, "tar", "--version"], timeout=PROBE_TIMEOUT_SECONDS)
    except (DDMError, ValueError) as error:
        return HostProbe(None, f"probing {engine.host.name} failed: {error}")

    first_line = version.stdout.split(b"\n", 1)[0].decode("utf-8", "replace").strip()
    if version.exit_status != 0 or "GNU tar" not in first_line:
        return HostProbe(None, f"host {engine.host.name} has no GNU tar")
    return HostProbe(HostAccess(engine.host.name, prefix, first_line,
                                probe_codecs(engine.ssh, prefix)))


def check_directory(engine: Any, access: HostAccess, directory: str) -> bool:
    """Return True when `directory` exists on the host and the account can enter and read it."""
    result = engine.ssh.exec_command(
        access.argv("test", "-d", directory, "-a", "-r", directory, "-a", "-x", directory),
        timeout=PROBE_TIMEOUT_SECONDS,
    )
    return result.exit_status == 0


class StderrCollector(threading.Thread):
    """Thread that keeps the first STDERR_LIMIT_BYTES of a channel's stderr."""

    def __init__(self, channel: paramiko.Channel) -> None:
        super().__init__(name="ddm-host-stderr", daemon=True)
        self.channel = channel
        self.parts: list[bytes] = []
        self.size = 0

    def run(self) -> None:
        try:
            while chunk := self.channel.recv_stderr(64 * 1024):
                if self.size < STDERR_LIMIT_BYTES:
                    self.parts.append(chunk)
                    self.size += len(chunk)
        except (OSError, EOFError):
            pass

    def text(self) -> bytes:
        self.join(timeout=10)
        return b"".join(self.parts)


class _RemoteTar:
    """One tar process on a host, with its channel and stderr reader."""

    def __init__(self, engine: Any, argv: Sequence[str], description: str) -> None:
        self.description = description
        self.channel: paramiko.Channel = engine.ssh.open_command(list(argv))
        self.stderr = StderrCollector(self.channel)
        self.stderr.start()

    def finish(self) -> tuple[int, bytes]:
        """Wait for the process to end and return its exit status and stderr."""
        status = self.channel.recv_exit_status()
        return status, self.stderr.text()

    def close(self) -> None:
        self.channel.close()


def create_argv(access: HostAccess, directory: str) -> list[str]:
    return access.argv("tar", "--create", "--file=-", f"--directory={directory}", *CREATE_OPTIONS, ".")


def extract_argv(access: HostAccess, directory: str) -> list[str]:
    return access.argv("tar", "--extract", "--file=-", f"--directory={directory}", *EXTRACT_OPTIONS)


def relay_host_archive(
    source: Any,
    source_access: HostAccess,
    source_directory: str,
    target: Any,
    target_access: HostAccess,
    target_directory: str,
    *,
    observers: Sequence[Observer] = (),
    codec: Codec | None = None,
) -> HostTarResult:
    """Stream `source_directory` with GNU tar into `target_directory`, through this process.

    Observers see each chunk before it is sent, so an observer that raises (ArchiveGuard, a
    failing manifest builder) stops the chunk from reaching the target. With a `codec`, the
    hosts compress and decompress the stream (ddmdriver.codec), and hasher and observers see
    the tar bytes decoded here. Raises
    TransferFailed naming the side that failed. GNU tar's exit status 1 on the source ("file
    changed as we read it") is not an error here: the changed paths are returned.
    """
    started = time.monotonic()
    source_name = f"{source.host.name}:{source_directory}"
    target_name = f"{target.host.name}:{target_directory}"
    hasher = xxhash.xxh3_128()
    byte_count = 0

    reader_argv = create_argv(source_access, source_directory)
    writer_argv = extract_argv(target_access, target_directory)
    decoder = None
    if codec is not None:
        reader_argv = compressing_argv(source_access.prefix, reader_argv, codec)
        writer_argv = decompressing_argv(target_access.prefix, writer_argv, codec)
        decoder = StreamDecompressor(codec, source_name)

    reader = _RemoteTar(source, reader_argv, source_name)
    try:
        writer = _RemoteTar(target, writer_argv, target_name)
    except BaseException:
        reader.close()
        raise

    wire_bytes = 0
    # Chunks are sent from another thread, so parsing the next chunk overlaps the wait for
    # the target's window. A chunk is queued only after the observers have checked it.
    sender = ChannelSender(lambda chunk, offset: _send(writer, chunk, target_name, offset))
    sender.start()
    try:
        while chunk := _receive(reader, source_name):
            data = chunk if decoder is None else decoder.decode(chunk)
            hasher.update(data)
            view = memoryview(data)
            for observer in observers:
                observer(view)
            sender.put(chunk)
            byte_count += len(data)
            wire_bytes += len(chunk)
        if decoder is not None:
            decoder.finish()
        sender.finish()
        writer.channel.shutdown_write()

        source_status, source_errors = reader.finish()
        target_status, target_errors = writer.finish()
    finally:
        sender.stop()
        reader.close()
        writer.close()
        sender.join(timeout=10)

    if source_status not in (0, 1):
        raise TransferFailed(f"tar on source {source_name} failed with exit status "
                             f"{source_status}: {_tail(source_errors)}")
    if target_status != 0:
        raise TransferFailed(f"tar on target {target_name} failed with exit status "
                             f"{target_status} after {byte_count} bytes: {_tail(target_errors)}")

    seconds = time.monotonic() - started
    result = HostTarResult(
        relay=RelayResult(bytes=byte_count, stream_digest=hasher.hexdigest(), seconds=seconds),
        changed_paths=_paths_with(source_errors, CHANGED_WHILE_READ),
        skipped_sockets=_paths_with(source_errors, SOCKET_IGNORED),
        wire_bytes=wire_bytes,
    )
    logger.info("relayed %d bytes (%d on the wire) with host tar from %s to %s in %.2f s",
                byte_count, wire_bytes, source_name, target_name, seconds)
    return result


def _receive(reader: _RemoteTar, name: str) -> bytes:
    try:
        return reader.channel.recv(CHUNK_SIZE)
    except (OSError, EOFError, paramiko.SSHException) as error:
        raise TransferFailed(f"reading tar output from source {name} failed: {error}") from None


def _send(writer: _RemoteTar, chunk: bytes, name: str, offset: int) -> None:
    try:
        writer.channel.sendall(chunk)
    except (OSError, EOFError, paramiko.SSHException) as error:
        raise TransferFailed(f"sending to tar on target {name} failed after {offset} bytes: "
                             f"{error}; {_tail(writer.stderr.text())}") from None


def read_host_manifest(engine: Any, access: HostAccess, directory: str, *, hash_content: bool,
                       codec: Codec | None = None) -> Manifest:
    """Build the manifest of `directory` from a GNU tar archive made on its host.

    With a `codec`, the host compresses the archive and this process decodes it. Raises
    MigrationFailed when tar reports a file that changed while it was read, because such a
    manifest describes no single state of the volume.
    """
    name = f"{engine.host.name}:{directory}"
    builder = ManifestBuilder(hash_content=hash_content)
    argv = create_argv(access, directory)
    decoder = None
    if codec is not None:
        argv = compressing_argv(access.prefix, argv, codec)
        decoder = StreamDecompressor(codec, name)
    reader = _RemoteTar(engine, argv, name)
    try:
        while chunk := _receive(reader, name):
            builder.feed(chunk if decoder is None else decoder.decode(chunk))
        if decoder is not None:
            decoder.finish()
        status, errors = reader.finish()
    finally:
        reader.close()

    if status == 1 and CHANGED_WHILE_READ in errors:
        raise MigrationFailed(f"files in {name} changed while they were read: "
                              f"{', '.join(_paths_with(errors, CHANGED_WHILE_READ)[:5])}",
                              hint="stop the containers that write to the volume and check again")
    if status != 0:
        raise TransferFailed(f"tar on {name} failed with exit status {status}: {_tail(errors)}")
    return builder.close()


@dataclass(frozen=True)
class FileState:
    """Type, size and mtime of one path, as `find -printf` reports them."""

    type: str
    size: int
    mtime_ns: int


def scan_metadata(engine: Any, access: HostAccess, directory: str) -> dict[bytes, FileState]:
    """Return type, size and mtime of every path under `directory`, keyed like manifest paths.

    Reads only metadata (GNU find), so it is cheap next to reading the content again.
    """
    argv = access.argv("find", directory, "-printf", "%y %s %T@ %P\\0")
    result = engine.ssh.exec_command(argv, timeout=SCAN_TIMEOUT_SECONDS)
    if result.exit_status != 0:
        raise MigrationFailed(f"find on {engine.host.name}:{directory} failed with exit status "
                              f"{result.exit_status}: {_tail(result.stderr)}")

    states: dict[bytes, FileState] = {}
    for record in result.stdout.split(b"\0"):
        if not record:
            continue
        kind, size, mtime, path = record.split(b" ", 3)
        states[path or b"."] = FileState(kind.decode(), int(size), _decimal_ns(mtime))
    return states


def find_sockets(engine: Any, access: HostAccess, directory: str) -> list[str]:
    """Return the paths of the sockets under `directory`, which no tar archive can carry."""
    argv = access.argv("find", directory, "-type", "s", "-printf", "%P\\0")
    result = engine.ssh.exec_command(argv, timeout=SCAN_TIMEOUT_SECONDS)
    if result.exit_status != 0:
        logger.warning("finding sockets in %s:%s failed: %s", engine.host.name, directory,
                       _tail(result.stderr))
        return []
    return [path.decode("utf-8", "backslashreplace") for path in result.stdout.split(b"\0") if path]


def move_directory(engine: Any, access: HostAccess, source_directory: str, target_directory: str) -> None:
    """Replace the empty `target_directory` with `source_directory` by rename(2).

    Both must be on one file system, which is checked first, so the move is a single
    rename of the directory inode and copies nothing. An empty directory is left at
    `source_directory`, so the engine can still remove the volume it belongs to.
    """
    devices = engine.ssh.exec_command(access.argv("stat", "--format=%d", source_directory, target_directory))
    lines = devices.stdout.split()
    if devices.exit_status != 0 or len(lines) != 2 or lines[0] != lines[1]:
        raise MigrationFailed(f"cannot move {source_directory} to {target_directory} on "
                              f"{engine.host.name}: not one file system ({_tail(devices.stderr)})")

    for argv in (access.argv("mv", "--no-target-directory", "--", source_directory, target_directory),
                 access.argv("mkdir", "--", source_directory)):
        result = engine.ssh.exec_command(argv)
        if result.exit_status != 0:
            raise MigrationFailed(f"{argv[len(access.prefix)]} on {engine.host.name} failed: "
                                  f"{_tail(result.stderr)}")
    logger.info("moved %s to %s on %s", source_directory, target_directory, engine.host.name)


def _decimal_ns(text: bytes) -> int:
    whole, _, fraction = text.partition(b".")
    return int(whole) * 1_000_000_000 + int((fraction + b"000000000")[:9] or b"0")


def _paths_with(stderr: bytes, marker: bytes) -> list[str]:
    """Return the paths of GNU tar's warnings "tar: PATH: MARKER"."""
    paths = []
    for line in stderr.splitlines():
        if line.endswith(marker) and line.startswith(b"tar: "):
            paths.append(line[5 : -len(marker)].removesuffix(b": ").decode("utf-8", "backslashreplace"))
    return paths


def _tail(stderr: bytes) -> str:
    text = stderr.decode("utf-8", "replace").strip()
    lines = text.splitlines()
    return " / ".join(lines[-3:]) if lines else "no error output"
