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

import collections
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
from ddmdriver.codec import (
    CODEC_NAMES,
    Codec,
    StreamDecompressor,
    compressing_argv,
    decompressing_argv,
)
from ddmdriver.relay import RelayResult
from ddmdriver.ssh import exit_detail

logger = logging.getLogger(__name__)

# Maximum bytes that one receive from the source's channel returns. paramiko 5.1's channel
# buffer keeps at most one flow-control window (ddmdriver.buffers, 4 MiB by default). A
# receive of fewer bytes than it contains shifts the rest to the buffer's start, a copy of up
# to 3 MiB per 1 MiB received, so the limit is above every window DDM opens.
RECEIVE_LIMIT = 16 * 1024 * 1024
# Maximum bytes of one piece of a receive, which the observers check and the sender sends.
PIECE_LIMIT = 1024 * 1024
# Bytes received but not yet sent to the target, the chunk being sent included.
SEND_QUEUE_BYTES = 4 * 1024 * 1024
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
    checked: frozenset[str] = frozenset()  # directories the probe checked
    readable: frozenset[str] = frozenset()  # checked directories the account can enter and read
    python3: bool = False  # python3 runs PYTHON_CHECK with the account's access
    free_bytes: int | None = None  # available under the "free" path, from `df -P -k`


@dataclass
class HostTarResult:
    """Outcome of a host tar relay: the stream's size and digest, and the paths tar warned about."""

    relay: RelayResult
    changed_paths: list[str] = field(default_factory=list)
    skipped_sockets: list[str] = field(default_factory=list)
    wire_bytes: int = 0  # bytes that crossed the SSH links: compressed, or the tar stream


# The modules and functions that the host scripts of verify and incremental scans
# (ddmsyncer/hostmanifest.py, ddmsyncer/hostscan.py) need from the host's python3.
PYTHON_CHECK = ("import base64, grp, hashlib, json, os, pwd, stat, struct, threading; "
                "os.listxattr; os.preadv")
# One command finds the account's access, GNU tar's version, the codec commands on PATH,
# whether python3 can run the host scripts, and which of the given directories the account
# can enter and read. One command, because every SSH command costs the host a login shell
# start. It prints "access root|sudo|none", "tar FIRST-LINE", "python3 yes", "codec NAME" and
# "readable DIRECTORY" lines. Its arguments are the codec names, "--" and the directories.
# Then it reads requests from stdin, one per line, so that the command can start before the
# controller has their paths (ddmdriver.earlyprobe). "readable DIRECTORY" is checked like a
# directory argument, and "free PATH" prints the `df -P -k PATH` output as "df LINE" lines.
# The other commands read /dev/null, so that only that loop reads stdin.
# The checks after the first line run with sudo for a sudoer, as the copy's commands will.
# Arguments may hold no newline (ssh.validate_argv), so the script is one line.
PROBE_SCRIPT = " ".join((
    'if [ "$(id -u)" = 0 ]; then prefix=""; echo "access root";',
    'elif sudo -n -- true </dev/null 2>/dev/null; then prefix="sudo -n --"; echo "access sudo";',
    'else echo "access none"; exit 0; fi;',
    "version=$($prefix tar --version </dev/null 2>/dev/null) && printf 'tar %s\\n' \"$version\" | head -n 1;",
    f"$prefix python3 -c '{PYTHON_CHECK}' </dev/null >/dev/null 2>&1 && echo 'python3 yes';",
    "$prefix sh -c 'check() { if [ -d \"$1\" ] && [ -r \"$1\" ] && [ -x \"$1\" ]; then",
    "printf \"readable %s\\n\" \"$1\"; fi; }; codecs=1; for arg in \"$@\"; do",
    "if [ \"$arg\" = -- ]; then codecs=;",
    "elif [ -n \"$codecs\" ]; then command -v \"$arg\" >/dev/null 2>&1 && echo \"codec $arg\";",
    "else check \"$arg\"; fi; done; while IFS= read -r line; do case \"$line\" in",
    "\"readable \"*) check \"${line#readable }\";;",
    "\"free \"*) df -P -k \"${line#free }\" </dev/null 2>/dev/null |",
    "while IFS= read -r out; do printf \"df %s\\n\" \"$out\"; done;;",
    "esac; done' ddm-probe \"$@\";",
    "exit 0",
))
# Codec commands the probe looks for; a test sets it to () to simulate a host without them.
PROBED_CODECS: tuple[str, ...] = CODEC_NAMES


def probe_host_access(engine: Any, directories: Sequence[str] = ()) -> HostProbe:
    """Check whether `engine`'s SSH account can run GNU tar as root on its host.

    Also checks which of `directories` that account can enter and read (HostProbe.readable).
    """
    if engine.ssh is None:
        return HostProbe(None, f"host {engine.host.name} is not reached over SSH")

    argv = ["sh", "-c", PROBE_SCRIPT, "ddm-probe", *PROBED_CODECS, "--", *directories]
    try:
        result = engine.ssh.exec_command(argv, timeout=PROBE_TIMEOUT_SECONDS)
    except (DDMError, ValueError) as error:
        return HostProbe(None, f"probing {engine.host.name} failed: {error}")
    return parse_probe_output(engine.host.name, result.exit_status, result.stdout, result.stderr,
                              directories)


def parse_probe_output(host_name: str, exit_status: int, stdout: bytes, stderr: bytes,
                       directories: Sequence[str] = ()) -> HostProbe:
    """Return the HostProbe that PROBE_SCRIPT's output on `host_name` describes."""
    values: dict[str, list[str]] = {}
    for line in stdout.decode("utf-8", "surrogateescape").splitlines():
        key, _, value = line.partition(" ")
        values.setdefault(key, []).append(value)

    access = (values.get("access") or [""])[0]
    if exit_status != 0 or access not in ("root", "sudo", "none"):
        return HostProbe(None, f"probing {host_name} failed with exit status {exit_status}: "
                         f"{_tail(stderr)}")
    if access == "none":
        return HostProbe(None, f"the SSH account on {host_name} is not root and "
                         "has no passwordless sudo")

    version = (values.get("tar") or [""])[0].strip()
    if "GNU tar" not in version:
        return HostProbe(None, f"host {host_name} has no GNU tar")
    prefix = SUDO_PREFIX if access == "sudo" else ()
    codecs = frozenset(values.get("codec", [])) & set(CODEC_NAMES)
    readable = frozenset(values.get("readable", [])) & set(directories)
    return HostProbe(HostAccess(host_name, prefix, version, codecs), checked=frozenset(directories),
                     readable=readable, python3="yes" in values.get("python3", []),
                     free_bytes=_free_bytes(values.get("df", [])))


def _free_bytes(df_lines: list[str]) -> int | None:
    from ddmdriver.engine import parse_df_available

    if not df_lines:
        return None
    return parse_df_available("\n".join(df_lines).encode("utf-8", "surrogateescape"))


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


# Runs its arguments only after reading one line from stdin, so that a command's login shell
# can start on the host while the controller still waits before letting it run. End of file
# instead of the line ends it with status 1 and runs nothing.
GATE_SCRIPT = 'read -r line && exec "$@"'


def gated_argv(argv: Sequence[str]) -> list[str]:
    """Return `argv` behind GATE_SCRIPT; send it a line to let it run."""
    return ["sh", "-c", GATE_SCRIPT, "ddm-gate", *argv]


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
    gate: Callable[[], None] | None = None,
    stream_digest: Callable[[], str] | None = None,
) -> HostTarResult:
    """Stream `source_directory` with GNU tar into `target_directory`, through this process.

    Observers see each chunk before it is sent, so an observer that raises (ArchiveGuard, a
    failing manifest builder) stops the chunk from reaching the target. With a `codec`, the
    hosts compress and decompress the stream (ddmdriver.codec), and hasher and observers see
    the tar bytes decoded here. With a `gate`, both hosts' commands start at once, and the
    source's tar reads the volume only after `gate()` has returned. With `stream_digest`, an
    observer already hashes every byte with xxh3-128 (ManifestBuilder.stream_digest), and
    the relay returns that digest instead of hashing the stream a second time. Raises
    TransferFailed naming the side that failed. GNU tar's exit status 1 on the source ("file
    changed as we read it") is not an error here: the changed paths are returned.
    """
    started = time.monotonic()
    source_name = f"{source.host.name}:{source_directory}"
    target_name = f"{target.host.name}:{target_directory}"
    hasher = xxhash.xxh3_128() if stream_digest is None else None
    byte_count = 0

    reader_argv = create_argv(source_access, source_directory)
    writer_argv = extract_argv(target_access, target_directory)
    decoder = None
    if codec is not None:
        reader_argv = compressing_argv(source_access.prefix, reader_argv, codec)
        writer_argv = decompressing_argv(target_access.prefix, writer_argv, codec)
        decoder = StreamDecompressor(codec, source_name)
    if gate is not None:
        reader_argv = gated_argv(reader_argv)

    reader = _RemoteTar(source, reader_argv, source_name)
    try:
        writer = _RemoteTar(target, writer_argv, target_name)
    except BaseException:
        reader.close()
        raise

    wire_bytes = 0
    sender = _ChunkSender(writer, target_name)
    sender.start()
    try:
        if gate is not None:
            gate()
            _open_gate(reader, source_name)
        while received := _receive(reader, source_name):
            for chunk in _pieces(received, decoder is None):
                data = chunk if decoder is None else decoder.decode(chunk)
                if hasher is not None:
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
        reader.close()
        writer.close()
        sender.stop()

    if source_status not in (0, 1):
        raise TransferFailed(f"tar on source {source_name} failed with "
                             f"{exit_detail(source_status, _tail_or_empty(source_errors))}")
    if target_status != 0:
        raise TransferFailed(f"tar on target {target_name} failed after {byte_count} bytes with "
                             f"{exit_detail(target_status, _tail_or_empty(target_errors))}")

    seconds = time.monotonic() - started
    digest = hasher.hexdigest() if hasher is not None else stream_digest()  # type: ignore[misc]
    result = HostTarResult(
        relay=RelayResult(bytes=byte_count, stream_digest=digest, seconds=seconds),
        changed_paths=_paths_with(source_errors, CHANGED_WHILE_READ),
        skipped_sockets=_paths_with(source_errors, SOCKET_IGNORED),
        wire_bytes=wire_bytes,
    )
    logger.info("relayed %d bytes (%d on the wire) with host tar from %s to %s in %.2f s",
                byte_count, wire_bytes, source_name, target_name, seconds)
    return result


def _open_gate(reader: _RemoteTar, name: str) -> None:
    """Let a command started with gated_argv run; its stdin then ends."""
    try:
        reader.channel.sendall(b"go\n")
        reader.channel.shutdown_write()
    except (OSError, EOFError, paramiko.SSHException) as error:
        raise TransferFailed(f"starting tar on source {name} failed: "
                             f"{channel_error_reason(error)}") from None


def _pieces(received: bytes, split: bool) -> list[bytes] | list[memoryview]:
    """Return `received` as views of at most PIECE_LIMIT bytes, or whole unless `split`.

    Smaller pieces reach the target sooner: each is sent once the observers have checked it,
    while the next one is parsed. Compressed input stays whole, because the observers check
    the decoded bytes of a compressed chunk before that chunk is sent.
    """
    if not split or len(received) <= PIECE_LIMIT:
        return [received]
    view = memoryview(received)
    return [view[start : start + PIECE_LIMIT] for start in range(0, len(view), PIECE_LIMIT)]


def _receive(reader: _RemoteTar, name: str) -> bytes:
    try:
        return reader.channel.recv(RECEIVE_LIMIT)
    except (OSError, EOFError, paramiko.SSHException) as error:
        raise TransferFailed(f"reading tar output from source {name} failed: {error}") from None


class _ChunkSender(threading.Thread):
    """Thread that sends the relayed chunks to the target, so that sending overlaps receiving.

    The relay loop hashes and parses a chunk while this thread encrypts and sends the one
    before it. The chunks queued or being sent add up to at most `limit_bytes` (one chunk
    larger than that is let through alone), so a slow target still slows the source down.
    After a failed send the thread discards the chunks still queued, and put() and finish()
    raise the send's TransferFailed.
    """

    def __init__(self, writer: _RemoteTar, name: str, limit_bytes: int = SEND_QUEUE_BYTES) -> None:
        super().__init__(name="ddm-host-send", daemon=True)
        self.writer = writer
        self.target_name = name
        self.limit_bytes = limit_bytes
        self.error: TransferFailed | None = None
        self.sent = 0
        # Bytes of the queued chunks and of the chunk being sent.
        self.queued_bytes = 0
        self._chunks: collections.deque[bytes | memoryview | None] = collections.deque()
        self._condition = threading.Condition()

    def run(self) -> None:
        while (chunk := self._next_chunk()) is not None:
            if self.error is None:
                try:
                    _send(self.writer, chunk, self.target_name, self.sent)
                except TransferFailed as error:
                    self.error = error
                else:
                    self.sent += len(chunk)
            with self._condition:
                self.queued_bytes -= len(chunk)
                self._condition.notify_all()

    def _next_chunk(self) -> bytes | memoryview | None:
        with self._condition:
            while not self._chunks:
                self._condition.wait()
            return self._chunks.popleft()

    def put(self, chunk: bytes | memoryview) -> None:
        """Queue a chunk for sending; raise the TransferFailed of an earlier failed send."""
        if self.error is not None:
            raise self.error
        with self._condition:
            while self.queued_bytes > 0 and self.queued_bytes + len(chunk) > self.limit_bytes:
                self._condition.wait()
            self.queued_bytes += len(chunk)
            self._chunks.append(chunk)
            self._condition.notify_all()

    def finish(self) -> None:
        """Wait until every queued chunk is sent; raise TransferFailed if a send failed."""
        self._end_queue()
        self.join()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """End the thread after a failure. Call it after closing the target's channel."""
        if not self.is_alive():
            return
        with self._condition:
            while self._chunks:
                chunk = self._chunks.popleft()
                self.queued_bytes -= len(chunk) if chunk is not None else 0
        self._end_queue()
        self.join(timeout=10)

    def _end_queue(self) -> None:
        with self._condition:
            self._chunks.append(None)
            self._condition.notify_all()


def _send(writer: _RemoteTar, chunk: bytes | memoryview, name: str, offset: int) -> None:
    # paramiko's sendall() slices what is left after each packet. A memoryview's slices share
    # the chunk's memory, where slices of bytes would copy the rest of the chunk each time.
    try:
        writer.channel.sendall(memoryview(chunk))
    except (OSError, EOFError, paramiko.SSHException) as error:
        parts = [channel_error_reason(error)]
        errors = writer.stderr.text()
        if errors.strip():
            parts.append(f"tar wrote: {_tail(errors)}")
        raise TransferFailed(f"sending to tar on target {name} failed after {offset} bytes: "
                             f"{'; '.join(parts)}") from None


def channel_error_reason(error: BaseException) -> str:
    """Return why sending on an SSH channel failed, in words, never an empty string.

    paramiko raises EOFError (with no text) or OSError("Socket is closed") when the SSH
    connection is gone.
    """
    text = str(error).strip()
    if isinstance(error, EOFError) or not text or text == "Socket is closed":
        return "the SSH connection was closed"
    return text


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
        raise TransferFailed(f"tar on {name} failed with {exit_detail(status, _tail_or_empty(errors))}")
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
        raise MigrationFailed(f"find on {engine.host.name}:{directory} failed with "
                              f"{exit_detail(result.exit_status, _tail_or_empty(result.stderr))}")

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


# Moves "$1" onto the empty directory "$2" in one SSH command. The exit status names the
# failed step (MOVE_STEPS), and the step's stderr gives the reason.
MOVE_SCRIPT = " ".join((
    'source_device=$(stat --format=%d -- "$1") && target_device=$(stat --format=%d -- "$2") || exit 3;',
    'if [ "$source_device" != "$target_device" ]; then',
    'echo "$1 is on device $source_device, $2 on device $target_device" >&2; exit 3; fi;',
    'mv --no-target-directory -- "$1" "$2" || exit 4;',
    'mkdir -- "$1" || exit 5',
))
MOVE_STEPS = {3: "not one file system (or stat failed)", 4: "mv failed", 5: "mkdir failed"}


def move_directory(engine: Any, access: HostAccess, source_directory: str, target_directory: str) -> None:
    """Replace the empty `target_directory` with `source_directory` by rename(2).

    Both must be on one file system, which is checked first, so the move is a single
    rename of the directory inode and copies nothing. An empty directory is left at
    `source_directory`, so the engine can still remove the volume it belongs to. The check,
    the move and the new directory are one SSH command (MOVE_SCRIPT).
    """
    result = engine.ssh.exec_command(
        access.argv("sh", "-c", MOVE_SCRIPT, "ddm-move", source_directory, target_directory))
    if result.exit_status != 0:
        step = MOVE_STEPS.get(result.exit_status, f"exit status {result.exit_status}")
        raise MigrationFailed(f"cannot move {source_directory} to {target_directory} on "
                              f"{engine.host.name}: {step} ({_tail(result.stderr)})",
                              hint="the target was rolled back; check the host's volume "
                              "directory and retry")
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
    return _tail_or_empty(stderr) or "no error output"


# The maximum length of a stderr line that an error message quotes whole. Tar's lines name
# whole paths, which can be several KiB long.
MAX_QUOTED_LINE_CHARS = 300


def _tail_or_empty(stderr: bytes) -> str:
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    return " / ".join(shorten_line(line) for line in lines[-3:])


def shorten_line(line: str, limit: int = MAX_QUOTED_LINE_CHARS) -> str:
    """Return `line`, or its start and end around " ... " when it is longer than `limit`."""
    if len(line) <= limit:
        return line
    head = limit * 2 // 3
    return f"{line[:head]} ... {line[-(limit - head - 5):]}"
