"""Read OpenSSH known_hosts files and check a server's host key against them.

DDM reads known_hosts itself instead of using `paramiko.HostKeys`, because paramiko skips
`@revoked` lines (so a revoked key would pass as unknown only by luck) and does not match
wildcard or negated host patterns. DDM never accepts an unknown key: the operator adds keys
with `ddminit --accept-host-key NAME=FINGERPRINT` (ddmdriver.hostkeys) or `ssh-keyscan`.

File format (sshd(8), section SSH_KNOWN_HOSTS FILE FORMAT): one key per line,
`[@marker] patterns keytype base64 [comment]`. Patterns are comma-separated host names,
`[host]:port` for ports other than 22, wildcards `*` and `?`, `!` to negate, or a single
hashed name `|1|salt|hmac-sha1` as written by `ssh-keygen -H`.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import hmac
import logging
from dataclasses import dataclass
from pathlib import Path

import paramiko

from ddm.errors import HostKeyError

logger = logging.getLogger(__name__)

MARKERS = ("@revoked", "@cert-authority")

# Host key algorithms that each key type allows, in paramiko's order of preference.
RSA_ALGORITHMS = ("rsa-sha2-512", "rsa-sha2-256")


@dataclass(frozen=True)
class KnownHostEntry:
    """One key line of a known_hosts file."""

    marker: str | None
    patterns: tuple[str, ...]
    key: paramiko.PKey
    path: Path
    line_number: int

    @property
    def location(self) -> str:
        return f"{self.path}:{self.line_number}"

    def matches(self, name: str) -> bool:
        """Tell whether this line applies to `name` (a host or `[host]:port`)."""
        matched = False
        for pattern in self.patterns:
            negated = pattern.startswith("!")
            if negated and _name_matches(pattern[1:], name):
                return False
            if not negated and _name_matches(pattern, name):
                matched = True
        return matched


def _name_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("|1|"):
        return _hashed_name_matches(pattern, name)
    escaped = pattern.replace("[", "[[]")
    return fnmatch.fnmatchcase(name.lower(), escaped.lower())


def _hashed_name_matches(pattern: str, name: str) -> bool:
    parts = pattern.split("|")
    if len(parts) != 4:
        return False

    try:
        salt = base64.b64decode(parts[2], validate=True)
        expected = base64.b64decode(parts[3], validate=True)
    except binascii.Error:
        return False

    actual = hmac.new(salt, name.encode("utf-8"), hashlib.sha1).digest()
    return hmac.compare_digest(actual, expected)


def known_hosts_name(hostname: str, port: int) -> str:
    """Return the name that known_hosts records for `hostname`:`port`."""
    if port == 22:
        return hostname
    return f"[{hostname}]:{port}"


def fingerprint(key: paramiko.PKey) -> str:
    """Return the OpenSSH SHA256 fingerprint of `key`, e.g. `SHA256:nThbg6k...`."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


class KnownHosts:
    """The entries of one or more known_hosts files, in file order."""

    def __init__(self, entries: list[KnownHostEntry] | None = None) -> None:
        self.entries: list[KnownHostEntry] = entries or []
        self.paths: list[Path] = []

    @classmethod
    def load(cls, paths: list[Path]) -> KnownHosts:
        """Read every existing file of `paths`; missing files count as empty."""
        known = cls()
        for path in paths:
            known.paths.append(path)
            known.entries.extend(_read_file(path))
        return known

    def lookup(self, name: str) -> list[KnownHostEntry]:
        """Return the entries whose patterns match `name`."""
        return [entry for entry in self.entries if entry.matches(name)]

    def host_key_algorithms(self, name: str) -> list[str]:
        """Return the host key algorithms of the keys recorded for `name`, none if unknown.

        The transport offers only these, so a server that also has keys of other types
        presents the recorded one. RSA keys allow rsa-sha2-512 and rsa-sha2-256.
        """
        algorithms: list[str] = []
        for entry in self.lookup(name):
            if entry.marker is not None:
                continue
            names = RSA_ALGORITHMS if entry.key.get_name() == "ssh-rsa" else (entry.key.get_name(),)
            algorithms.extend(item for item in names if item not in algorithms)
        return algorithms

    def verify(
        self, name: str, key: paramiko.PKey, *, host: str, port: int, host_name: str | None = None
    ) -> None:
        """Raise HostKeyError unless `key` is recorded for `name` and not revoked.

        `host_name` is the DDM name of the host, shown in the fix for an unknown key.
        """
        entries = self.lookup(name)
        for entry in entries:
            if entry.marker == "@revoked" and _same_key(entry.key, key):
                raise HostKeyError(
                    f"SSH host key of {name} is revoked in {entry.location}: "
                    f"{key.get_name()} {fingerprint(key)}",
                    hint="the server presents a key that its owner has withdrawn; "
                    "do not connect until the administrator replaces it",
                )

        recorded = [entry for entry in entries if entry.marker is None]
        if any(_same_key(entry.key, key) for entry in recorded):
            return

        if recorded:
            raise self._changed_error(name, key, recorded, host=host, port=port)
        raise self._unknown_error(name, key, host=host, port=port, host_name=host_name)

    def _unknown_error(
        self, name: str, key: paramiko.PKey, *, host: str, port: int, host_name: str | None
    ) -> HostKeyError:
        files = ", ".join(str(path) for path in self.paths) or "no known_hosts file"
        return HostKeyError(
            f"unknown SSH host key for {name} ({host} port {port}): "
            f"{key.get_name()} {fingerprint(key)}, not in {files}",
            hint="check this fingerprint with the host's administrator, then record the key with "
            f"'ddminit --accept-host-key {host_name or 'NAME'}={fingerprint(key)}' or "
            f"'ssh-keyscan -p {port} {host} >> KNOWN_HOSTS_FILE'",
        )

    def _changed_error(
        self,
        name: str,
        key: paramiko.PKey,
        recorded: list[KnownHostEntry],
        *,
        host: str,
        port: int,
    ) -> HostKeyError:
        first = recorded[0]
        return HostKeyError(
            f"SSH host key for {name} ({host} port {port}) has changed: the server presents "
            f"{key.get_name()} {fingerprint(key)}, but {first.location} records "
            f"{first.key.get_name()} {fingerprint(first.key)}",
            hint="this can be a man-in-the-middle attack or a reinstalled host; ask the host's "
            f"administrator, and only if the new key is right, replace line {first.location}",
        )


def _same_key(recorded: paramiko.PKey, presented: paramiko.PKey) -> bool:
    return hmac.compare_digest(recorded.asbytes(), presented.asbytes())


def _read_file(path: Path) -> list[KnownHostEntry]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        logger.debug("known_hosts file %s does not exist", path)
        return []
    except OSError as error:
        raise HostKeyError(
            f"cannot read known_hosts file {path}: {error.strerror}",
            hint="check the path and its permissions",
        ) from None

    entries = []
    for line_number, line in enumerate(text.splitlines(), 1):
        entry = _parse_line(line, path, line_number)
        if entry is not None:
            entries.append(entry)
    return entries


def _parse_line(line: str, path: Path, line_number: int) -> KnownHostEntry | None:
    fields = line.split()
    if not fields or fields[0].startswith("#"):
        return None

    marker = None
    if fields[0].startswith("@"):
        marker = fields[0]
        fields = fields[1:]
        if marker not in MARKERS:
            logger.warning("%s:%d: unknown marker %s, line skipped", path, line_number, marker)
            return None
    if len(fields) < 3:
        logger.warning("%s:%d: expected 'hosts keytype key', line skipped", path, line_number)
        return None

    patterns, key_type, key_text = fields[0], fields[1], fields[2]
    key = _parse_key(key_type, key_text, path, line_number)
    if key is None:
        return None
    return KnownHostEntry(marker, tuple(patterns.split(",")), key, path, line_number)


def _parse_key(key_type: str, key_text: str, path: Path, line_number: int) -> paramiko.PKey | None:
    try:
        key_bytes = base64.b64decode(key_text, validate=True)
    except binascii.Error:
        logger.warning("%s:%d: key is not valid base64, line skipped", path, line_number)
        return None

    try:
        return paramiko.PKey.from_type_string(key_type, key_bytes)
    except paramiko.UnknownKeyType:
        # For example security-key (sk-*) or DSA keys, which paramiko 4 and later cannot use.
        logger.debug("%s:%d: key type %s not supported, line skipped", path, line_number, key_type)
        return None
    except (paramiko.SSHException, ValueError) as error:
        logger.warning("%s:%d: invalid %s key (%s), line skipped", path, line_number, key_type, error)
        return None
