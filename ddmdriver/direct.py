"""The direct route: the source host streams a volume to the target host over SSH of its own.

On the relay route every byte passes this process. On the direct route the source host runs

    tar --create ... | ssh -i ONE_TASK_KEY ... TARGET

and the target's sshd runs the matching `tar --extract` as the forced command of that key.
The steps, each undone in cleanup_source() and remove_task_keys():

1. generate_task_key() makes an ed25519 key pair for one volume of one task.
2. install_task_key() appends the public key to the target login user's authorized_keys with
   `restrict` (no pty, no forwarding, no agent, no X11, no ~/.ssh/rc) and a forced command
   that unpacks stdin into one directory. sshd runs the forced command whatever command the
   client requests. The line's comment carries the task ID, so leftovers of a crashed run
   can be found and removed.
3. prepare_source() creates a 0700 directory on the source host holding the private key
   (sent on the command's stdin, never in an argument) and a known_hosts file with the host
   key that this process verified when it connected to the target. The source's ssh runs
   with StrictHostKeyChecking=yes, so a host that presents another key is rejected.
4. stream_direct() runs the pipeline and maps ssh's failures to DDM's errors.

The target directory is checked against a strict pattern and every remote argument is
quoted with shlex.quote. The private key is never logged, stored or put in an error.
"""

from __future__ import annotations

import logging
import re
import shlex
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ddm.errors import (
    AuthenticationFailed,
    ConnectionFailed,
    HostKeyError,
    MigrationFailed,
    TransferFailed,
    UsageError,
)
from ddmdriver.hostpath import CHANGED_WHILE_READ, SOCKET_IGNORED, HostAccess, _paths_with, _tail
from ddmdriver.hostpath import create_argv, extract_argv
from ddmdriver.ssh import CommandResult, _collect_output

logger = logging.getLogger(__name__)

COMMAND_TIMEOUT_SECONDS = 60.0
# A volume copy has no upper bound on its duration; this only ends a hung pipeline.
STREAM_TIMEOUT_SECONDS = 7 * 24 * 3600.0
WORK_DIRECTORY_PARENT = "/tmp"
SAFE_DIRECTORY = re.compile(r"^/[A-Za-z0-9_./-]{1,4000}$")
TASK_ID_PATTERN = re.compile(r"^[A-Za-z0-9-]{1,64}$")
TOTALS_PATTERN = re.compile(rb"^Total bytes written: (\d+)", re.MULTILINE)
STATUS_PATTERN = re.compile(rb"ddm-direct-status source-tar=(\d+|missing) ssh=(\d+)")

# Host key algorithms that ssh accepts for each key type that paramiko reports.
HOST_KEY_ALGORITHMS = {
    "ssh-rsa": "rsa-sha2-512,rsa-sha2-256",
}

# Appends stdin to the file "$1" as one line, after a newline if the file lacks a final one.
INSTALL_SCRIPT = "; ".join((
    'set -e',
    'umask 077',
    'mkdir -p -- "$(dirname -- "$1")"',
    'if [ -s "$1" ] && [ -n "$(tail -c 1 -- "$1")" ]; then echo >> "$1"; fi',
    'cat >> "$1"',
))
# Removes the lines of "$1" that contain "$2", keeping the file's inode, owner and mode.
REMOVE_SCRIPT = "; ".join((
    'set -e',
    '[ -f "$1" ] || exit 0',
    'grep -q -F -e "$2" -- "$1" || exit 0',
    'kept=$(mktemp "$1.ddm-XXXXXX")',
    'grep -v -F -e "$2" -- "$1" > "$kept" || [ $? -eq 1 ]',
    'cat -- "$kept" > "$1"',
    'rm -f -- "$kept"',
))
# Checks for an ssh client (exit status 127 without one), creates the work directory "$1"
# (removing this task's own leftover first), stores stdin as the private key and "$2" as
# known_hosts.
MISSING_SSH_STATUS = 127
PREPARE_SCRIPT = "; ".join((
    f'command -v ssh > /dev/null || exit {MISSING_SSH_STATUS}',
    'set -e',
    'umask 077',
    'rm -rf -- "$1"',
    'mkdir -m 0700 -- "$1"',
    'cat > "$1/key"',
    'printf "%s\\n" "$2" > "$1/known_hosts"',
))
# Stops the ssh client of a pipeline that outlived its controller, then removes the directory.
# The PID is trusted only while that process's command line still names the directory.
CLEANUP_SCRIPT = "; ".join((
    '[ -d "$1" ] || exit 0',
    'pid=$(cat -- "$1/ssh.pid" 2>/dev/null || true)',
    'if [ -n "$pid" ] && grep -q -F -e "$1/key" "/proc/$pid/cmdline" 2>/dev/null; then kill "$pid" || true; fi',
    'rm -rf -- "$1"',
))
# Runs as the pipeline's second command: records its PID, then becomes the ssh client.
SSH_WRAPPER = 'echo $$ > "$1/ssh.pid"; shift; exec "$@"'


@dataclass(frozen=True)
class TaskKey:
    """A one-task SSH key pair; the private half is kept out of repr()."""

    private_openssh: bytes = field(repr=False)
    public_openssh: str


@dataclass(frozen=True)
class DirectTarget:
    """The target's direct address, port and login user, and the host key it must present."""

    address: str
    port: int
    user: str
    host_key_type: str
    host_key_base64: str


@dataclass
class DirectResult:
    """Outcome of a direct stream: archive bytes from tar --totals, and tar's warnings."""

    bytes: int
    seconds: float
    changed_paths: list[str]
    skipped_sockets: list[str]


def generate_task_key(comment: str) -> TaskKey:
    """Create an ed25519 key pair in OpenSSH formats, unencrypted (it lives for one copy)."""
    private_key = Ed25519PrivateKey.generate()
    private_openssh = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public_openssh = private_key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode("ascii")
    return TaskKey(private_openssh, f"{public_openssh} {comment}")


def key_comment(task_id: str, position: int) -> str:
    """Return the authorized_keys comment of one item's key: `ddm-direct:TASK:POSITION:key`."""
    return item_marker(task_id, position).lstrip()


def item_marker(task_id: str, position: int) -> str:
    """Return the text that only the authorized_keys line of one item's key contains."""
    return f"{task_marker(task_id)}{position}:key"


def task_marker(task_id: str) -> str:
    """Return the text that every authorized_keys line of a task's keys contains."""
    if not TASK_ID_PATTERN.fullmatch(task_id):
        raise ValueError(f"invalid task ID {task_id!r}")
    return f" ddm-direct:{task_id}:"


def work_directory(task_id: str, position: int) -> str:
    """Return the source host's temporary directory of one item's key and known_hosts."""
    task_marker(task_id)
    return f"{WORK_DIRECTORY_PARENT}/ddm-direct-{task_id}-{position}"


def direct_target(engine: Any) -> DirectTarget:
    """Return the target's direct address, login user and the host key this process verified."""
    host = engine.host
    if not host.direct_address:
        raise UsageError(f"host {host.name!r} has no direct_address for --route direct",
                         hint=f"set hosts.{host.name}.direct_address in the config, or use --route relay")
    if engine.ssh is None:
        raise UsageError(f"host {host.name!r} is not reached over SSH; --route direct needs ssh://",
                         hint="use --route relay")
    server_key = engine.ssh.transport.get_remote_server_key()
    return DirectTarget(host.direct_address, host.direct_port, engine.ssh.target.user,
                        server_key.get_name(), server_key.get_base64())


def forced_command(access: HostAccess, directory: str) -> str:
    """Return the forced command that unpacks stdin into `directory` and does nothing else."""
    if not SAFE_DIRECTORY.fullmatch(directory) or "/../" in f"{directory}/":
        raise MigrationFailed(f"target directory {directory!r} is not safe for a forced command",
                              hint="use --route relay for this volume")
    command = shlex.join(extract_argv(access, directory))
    if '"' in command or "\\" in command:
        raise MigrationFailed(f"forced command for {directory!r} would need escaping",
                              hint="use --route relay for this volume")
    return command


def authorized_keys_line(key: TaskKey, command: str) -> str:
    return f'restrict,command="{command}" {key.public_openssh}'


def authorized_keys_path(engine: Any) -> str:
    """Return the target login user's authorized_keys: the config's, or ~/.ssh/authorized_keys."""
    if engine.host.authorized_keys:
        return str(engine.host.authorized_keys)
    # NOTE: the lab sets authorized_keys for every host, so this default never ran there.
    result = engine.ssh.exec_command(["sh", "-c", 'printf "%s" "$HOME"'], timeout=COMMAND_TIMEOUT_SECONDS)
    home = result.stdout.decode("utf-8", "replace")
    if result.exit_status != 0 or not SAFE_DIRECTORY.fullmatch(home):
        raise MigrationFailed(f"cannot find the home directory of the SSH user on {engine.host.name}",
                              hint=f"set hosts.{engine.host.name}.authorized_keys in the config")
    return f"{home.rstrip('/')}/.ssh/authorized_keys"


def install_task_key(engine: Any, path: str, line: str) -> None:
    """Append `line` to authorized_keys `path` as the SSH login user, who owns that file."""
    result = run_with_input(engine, ["sh", "-c", INSTALL_SCRIPT, "ddm-direct", path],
                            (line + "\n").encode("ascii"))
    if result.exit_status != 0:
        raise MigrationFailed(f"adding the task key to {engine.host.name}:{path} failed: "
                              f"{_tail(result.stderr)}",
                              hint="check that the SSH user may write its authorized_keys")
    logger.info("installed a one-task key in %s:%s", engine.host.name, path)


def remove_task_keys(engine: Any, path: str, marker: str) -> None:
    """Remove the authorized_keys lines that contain `marker` (task_marker or item_marker)."""
    result = engine.ssh.exec_command(["sh", "-c", REMOVE_SCRIPT, "ddm-direct", path, marker],
                                     timeout=COMMAND_TIMEOUT_SECONDS)
    if result.exit_status != 0:
        raise MigrationFailed(f"removing the task keys marked {marker.strip()!r} from "
                              f"{engine.host.name}:{path} failed: {_tail(result.stderr)}",
                              hint=f"remove the lines that contain '{marker.strip()}' by hand")
    logger.info("removed the task keys marked %r from %s:%s", marker.strip(), engine.host.name, path)


def prepare_source(engine: Any, access: HostAccess, directory: str, key: TaskKey,
                   target: DirectTarget, alias: str) -> None:
    """Create the 0700 work directory with the private key and known_hosts on the source host."""
    known_hosts = f"{alias} {target.host_key_type} {target.host_key_base64}"
    result = run_with_input(engine, access.argv("sh", "-c", PREPARE_SCRIPT, "ddm-direct", directory,
                                                known_hosts), key.private_openssh)
    if result.exit_status == MISSING_SSH_STATUS:
        raise UsageError(f"host {engine.host.name!r} has no ssh client for --route direct",
                         hint="install openssh-client there, or use --route relay")
    if result.exit_status != 0:
        raise MigrationFailed(f"creating {directory} on {engine.host.name} failed: {_tail(result.stderr)}",
                              hint="check that the source host's /tmp is writable")


def cleanup_source(engine: Any, access_prefix: tuple[str, ...], directory: str) -> None:
    """Stop a leftover ssh client of the work directory and remove the directory and key."""
    result = engine.ssh.exec_command([*access_prefix, "sh", "-c", CLEANUP_SCRIPT, "ddm-direct", directory],
                                     timeout=COMMAND_TIMEOUT_SECONDS)
    if result.exit_status != 0:
        raise MigrationFailed(f"removing {directory} on {engine.host.name} failed: {_tail(result.stderr)}",
                              hint=f"remove {directory} on {engine.host.name} by hand")


def ssh_argv(directory: str, target: DirectTarget, alias: str) -> list[str]:
    """Return the source host's ssh command line: only the task key, only the verified host key."""
    algorithms = HOST_KEY_ALGORITHMS.get(target.host_key_type, target.host_key_type)
    options = {
        "IdentitiesOnly": "yes",
        "IdentityAgent": "none",
        "BatchMode": "yes",
        "StrictHostKeyChecking": "yes",
        "UserKnownHostsFile": f"{directory}/known_hosts",
        "GlobalKnownHostsFile": "/dev/null",
        "HostKeyAlias": alias,
        "HostKeyAlgorithms": algorithms,
        "UpdateHostKeys": "no",
        "CheckHostIP": "no",
        "ClearAllForwardings": "yes",
        # AES-GCM first, as the relay negotiates: with AES-NI it costs less CPU than
        # OpenSSH's default first choice, chacha20-poly1305.
        "Ciphers": "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com",
        "ConnectTimeout": "30",
        "ServerAliveInterval": "15",
        "ServerAliveCountMax": "4",
        "LogLevel": "ERROR",
    }
    argv = ["ssh", "-F", "/dev/null", "-T", "-i", f"{directory}/key"]
    for name, value in options.items():
        argv += ["-o", f"{name}={value}"]
    return [*argv, "-p", str(target.port), "-l", target.user, "--", target.address, "ddm-receive"]


def pipeline_script(access: HostAccess, source_directory: str, directory: str, target: DirectTarget,
                    alias: str) -> str:
    """Return the sh script that streams tar into ssh and prints both exit statuses."""
    # The whole script runs with the access prefix (see stream_direct), so tar goes without it.
    tar_argv = create_argv(access, source_directory)[len(access.prefix):]
    tar = shlex.join([*tar_argv[:-1], "--totals", "."])
    ssh = shlex.join(["sh", "-c", SSH_WRAPPER, "ddm-ssh", directory, *ssh_argv(directory, target, alias)])
    status_file = shlex.quote(f"{directory}/tar.status")
    return "; ".join((
        f"{{ {tar}; echo $? > {status_file}; }} | {ssh} >&2",
        "ssh_status=$?",
        f"printf 'ddm-direct-status source-tar=%s ssh=%s\\n' \"$(cat {status_file} 2>/dev/null "
        "|| echo missing)\" \"$ssh_status\"",
    ))


def stream_direct(source: Any, access: HostAccess, source_directory: str, directory: str,
                  target: DirectTarget, alias: str, description: str) -> DirectResult:
    """Run the pipeline on the source host and wait for it; raise the error ssh's output shows."""
    started = time.monotonic()
    script = pipeline_script(access, source_directory, directory, target, alias)
    # The whole pipeline runs with the access prefix (sudo -n for a sudoer): tar reads the
    # volume as root, and ssh reads the 0700 directory that prepare_source() made as root.
    argv = [*access.prefix, "sh", "-c", script]
    channel = source.ssh.open_command(argv)
    try:
        channel.shutdown_write()
        result = _collect_output(channel, time.monotonic() + STREAM_TIMEOUT_SECONDS)
    finally:
        channel.close()

    _raise_for_failure(result, source.host.name, target, description)
    totals = TOTALS_PATTERN.search(result.stderr)
    seconds = time.monotonic() - started
    byte_count = int(totals.group(1)) if totals else 0
    logger.info("streamed %d bytes directly from %s to %s:%d in %.2f s", byte_count,
                source.host.name, target.address, target.port, seconds)
    return DirectResult(
        bytes=byte_count,
        seconds=seconds,
        changed_paths=_paths_with(result.stderr, CHANGED_WHILE_READ),
        skipped_sockets=_paths_with(result.stderr, SOCKET_IGNORED),
    )


def _raise_for_failure(result: CommandResult, source_name: str, target: DirectTarget,
                       description: str) -> None:
    endpoint = f"{target.address}:{target.port}"
    status = STATUS_PATTERN.search(result.stdout)
    errors = result.stderr
    if status is None:
        raise TransferFailed(f"direct copy of {description} from {source_name} to {endpoint} ended "
                             f"without a status (exit status {result.exit_status}): {_tail(errors)}")

    tar_status, ssh_status = status.group(1), int(status.group(2))
    if ssh_status == 255:
        _raise_ssh_error(errors, source_name, endpoint)
    if ssh_status != 0:
        raise TransferFailed(f"tar on target {endpoint} failed for {description} with exit status "
                             f"{ssh_status}: {_tail(errors)}")
    if tar_status not in (b"0", b"1"):
        raise TransferFailed(f"tar on source {source_name} failed for {description} with exit status "
                             f"{tar_status.decode()}: {_tail(errors)}")


def _raise_ssh_error(errors: bytes, source_name: str, endpoint: str) -> None:
    text = _tail(errors)
    if b"Host key verification failed" in errors or b"HOST IDENTIFICATION HAS CHANGED" in errors:
        raise HostKeyError(
            f"host key at {endpoint}, seen from {source_name}, is not the key this controller "
            f"verified for the target: {text}",
            hint="check that direct_address belongs to the target host; the copy was rolled back",
        )
    if b"Permission denied" in errors:
        raise AuthenticationFailed(f"the target at {endpoint} rejected the task key from "
                                   f"{source_name}: {text}",
                                   hint="check authorized_keys in the target's config entry")
    raise ConnectionFailed(f"ssh from {source_name} to {endpoint} failed: {text}",
                           hint="check that the source host can reach direct_address and direct_port")


def run_with_input(engine: Any, argv: list[str], data: bytes) -> CommandResult:
    """Run `argv` on the host with `data` on its stdin; for small outputs only."""
    channel = engine.ssh.open_command(argv)
    try:
        channel.settimeout(COMMAND_TIMEOUT_SECONDS)
        channel.sendall(data)
        channel.shutdown_write()
        return _collect_output(channel, time.monotonic() + COMMAND_TIMEOUT_SECONDS)
    except TimeoutError:
        raise ConnectionFailed(f"command {argv[0]!r} on {engine.host.name} timed out") from None
    finally:
        channel.close()

