"""Host key decisions of ddminit: show each new host's fingerprint, record only what is confirmed.

A host key is recorded in the host's known_hosts file (the config's known_hosts, else
UserKnownHostsFile of ~/.ssh/config, else ~/.ssh/known_hosts) in two cases only: the operator
passed `--accept-host-key NAME=SHA256:...` and the server's key has exactly that fingerprint,
or the operator confirmed on a terminal after seeing the fingerprint. A key that differs
from a recorded one is never recorded.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import paramiko

from ddm.config import Config
from ddm.errors import ConfigError, ConnectionFailed, HostKeyError, UsageError
from ddmdriver.hostkeys import record_host_key, scan_host_key
from ddmdriver.knownhosts import KnownHosts, fingerprint
from ddmdriver.ssh import SSHTarget, resolve_target

# OpenSSH's SHA256 fingerprint: "SHA256:" and 43 characters of unpadded base64.
FINGERPRINT_PATTERN = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")

Ask = Callable[[str], bool]
Inform = Callable[[str], None]


@dataclass(frozen=True)
class HostKeyRecord:
    """A host key that the operator accepted, to write to `known_hosts` under `name`."""

    host: str
    name: str
    known_hosts: Path
    key: paramiko.PKey

    def describe(self) -> str:
        return f"{self.key.get_name()} {fingerprint(self.key)}"


def parse_accept_option(value: str) -> tuple[str, str]:
    """Split a --accept-host-key NAME=SHA256:... argument."""
    name, separator, expected = value.partition("=")
    if not separator or not name or not FINGERPRINT_PATTERN.match(expected):
        raise UsageError(
            f"invalid --accept-host-key {value!r}",
            hint="use NAME=SHA256:<43 base64 characters>, the fingerprint that "
            "'ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub' prints on the host",
        )
    return name, expected


def host_keys_to_record(
    config: Config,
    accepted: dict[str, str],
    ask_hosts: Iterable[str],
    *,
    ask: Ask,
    inform: Inform,
) -> list[HostKeyRecord]:
    """Scan the hosts and return the keys to record; nothing is written here.

    `accepted` maps host names to the fingerprint the operator passed; a different key raises
    HostKeyError. For each of `ask_hosts`, an unknown key is shown and recorded only if
    `ask` returns True. A key that is already recorded is skipped; a changed one raises.
    """
    records = []
    for host_name, expected in accepted.items():
        target = _ssh_target(config, host_name)
        key = scan_host_key(target)
        actual = fingerprint(key)
        if not hmac.compare_digest(actual, expected):
            raise HostKeyError(
                f"SSH host key of {host_name} ({target.address}) is {key.get_name()} {actual}, "
                f"not the {expected} given with --accept-host-key; nothing was recorded",
                hint="check the fingerprint with the host's administrator",
            )
        if _unknown(target, key):
            records.append(_record(host_name, target, key))

    for host_name in ask_hosts:
        target = _ssh_target(config, host_name)
        try:
            key = scan_host_key(target)
        except ConnectionFailed as error:
            inform(f"warning: host key of {host_name} not recorded: {error}")
            continue
        if not _unknown(target, key):
            continue

        record = _record(host_name, target, key)
        question = (f"SSH host key of {host_name} ({target.known_hosts_name}) is "
                    f"{record.describe()}; record it in {record.known_hosts}?")
        if ask(question):
            records.append(record)
        else:
            inform(f"host key of {host_name} not recorded; DDM rejects {host_name} until it is "
                   f"in {record.known_hosts}")
    return records


def unrecorded_hosts(config: Config,
                     host_names: Iterable[str]) -> list[tuple[str, Path | None]]:
    """Return each host that has no usable key in its known_hosts files, with its first file.

    Only the files are read, and no host is contacted. A revoked key does not count as recorded.
    The file is None for a host that has no known_hosts file at all. A host that cannot be
    resolved yet (no SSH user, for example) is left out, because connecting to it reports that.
    """
    unrecorded = []
    for host_name in host_names:
        try:
            target = _ssh_target(config, host_name)
        except ConfigError:
            continue
        known = KnownHosts.load(list(target.known_hosts_files))
        entries = known.lookup(target.known_hosts_name)
        if any(entry.marker != "@revoked" for entry in entries):
            continue
        files = target.known_hosts_files
        unrecorded.append((host_name, files[0] if files else None))
    return unrecorded


def write_host_keys(records: Iterable[HostKeyRecord], inform: Inform) -> None:
    """Append each accepted key to its known_hosts file."""
    for record in records:
        if record_host_key(record.known_hosts, record.name, record.key):
            inform(f"recorded host key of {record.host} ({record.name}): {record.describe()} "
                   f"in {record.known_hosts}")


def _ssh_target(config: Config, host_name: str) -> SSHTarget:
    host = config.host(host_name)
    if host.scheme != "ssh":
        raise UsageError(f"host {host_name!r} is not an ssh:// host, so it has no host key")
    return resolve_target(host, config)


def _unknown(target: SSHTarget, key: paramiko.PKey) -> bool:
    """Return True for an unknown key, False for a recorded one; raise for a changed or revoked one."""
    known = KnownHosts.load(list(target.known_hosts_files))
    try:
        known.verify(target.known_hosts_name, key, host=target.hostname, port=target.port)
    except HostKeyError:
        if known.lookup(target.known_hosts_name):
            raise
        return True
    return False


def _record(host_name: str, target: SSHTarget, key: paramiko.PKey) -> HostKeyRecord:
    if not target.known_hosts_files:
        raise ConfigError(
            f"no known_hosts file for host {host_name!r}",
            hint="set known_hosts in the DDM config (ddminit --known-hosts PATH)",
        )
    return HostKeyRecord(host_name, target.known_hosts_name, target.known_hosts_files[0], key)
