"""Read the OpenSSH client configuration (~/.ssh/config) for one destination host.

DDM reads the file itself instead of using `paramiko.SSHConfig`, because paramiko expands
`~`, `%d` and `%u` from the process environment and the password database, does not follow
`Include`, and runs `Match exec` commands. This reader takes HOME and USER from the environ
mapping that DDM passes around, follows `Include`, and never runs a command.

The rules follow ssh_config(5) of OpenSSH 9. Keywords are case-insensitive, and the first
value obtained for a keyword wins, except that IdentityFile and CertificateFile accumulate.
`Host` and `Match` lines start a new section, and an `Include` inside a section applies
only when that section matches.
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
import shlex
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ddm.config import home_dir
from ddm.errors import ConfigError

logger = logging.getLogger(__name__)

MAX_INCLUDE_DEPTH = 16
ACCUMULATING_KEYWORDS = frozenset({"identityfile", "certificatefile"})

# Tokens each keyword expands (ssh_config(5), section TOKENS); "~" only at the start.
TOKEN_KEYWORDS = frozenset(
    {"identityfile", "certificatefile", "userknownhostsfile", "globalknownhostsfile",
     "hostname", "identityagent"}
)
TILDE_KEYWORDS = frozenset(
    {"identityfile", "certificatefile", "userknownhostsfile", "globalknownhostsfile",
     "identityagent", "include"}
)


@dataclass
class _ParseState:
    """State of one lookup: the destination, the URL's user and the options found so far."""

    original_host: str
    user: str | None
    environ: Mapping[str, str]
    options: dict[str, list[str]] = field(default_factory=dict)


def local_user(environ: Mapping[str, str]) -> str | None:
    """Return the local user name from USER or LOGNAME in `environ`."""
    return environ.get("USER") or environ.get("LOGNAME") or None


def lookup_ssh_config(
    path: Path,
    host: str,
    environ: Mapping[str, str],
    *,
    user: str | None = None,
    port: int | None = None,
) -> dict[str, list[str]]:
    """Return the options that `path` sets for destination `host`, tokens expanded.

    Keys are lowercase keywords and values are argument lists, so `options["port"]` is
    `["2222"]` and `options["identityfile"]` lists every IdentityFile in file order. A missing
    file gives an empty mapping. `user` and `port` are the ones given in the URL: they win
    over `User` and `Port` lines, so `Match user` and the tokens %r and %p use them.
    """
    state = _ParseState(original_host=host, user=user, environ=environ)
    if path.exists():
        _read_file(path, state, active=True, depth=0)

    options = state.options
    hostname = options.get("hostname", [host])[0]
    options["hostname"] = [_expand_tokens(hostname, "hostname", {"h": host, "%": "%"}, environ)]

    remote_user = user or options.get("user", [local_user(environ) or ""])[0]
    remote_port = str(port) if port else options.get("port", ["22"])[0]
    tokens = _token_values(host, options["hostname"][0], remote_user, remote_port, environ)
    for keyword in TOKEN_KEYWORDS - {"hostname"}:
        if keyword in options:
            options[keyword] = [
                _expand_tokens(value, keyword, tokens, environ) for value in options[keyword]
            ]
    return options


def _read_file(path: Path, state: _ParseState, *, active: bool, depth: int) -> None:
    if depth > MAX_INCLUDE_DEPTH:
        raise ConfigError(f"SSH config {path}: Include nested more than {MAX_INCLUDE_DEPTH} deep")

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read SSH config {path}: {error}") from None

    for line_number, line in enumerate(text.splitlines(), 1):
        words = _split_line(line, path, line_number)
        if not words:
            continue

        keyword, arguments = words[0].lower(), words[1:]
        where = f"{path}:{line_number}"
        if keyword == "host":
            active = _host_patterns_match(arguments, state.original_host)
        elif keyword == "match":
            active = _match_criteria(arguments, state, where)
        elif keyword == "include":
            if active:
                _include(arguments, path, state, depth, where)
        elif active:
            _store_option(state.options, keyword, arguments, where)


def _split_line(line: str, path: Path, line_number: int) -> list[str]:
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return []

    # "Keyword=value" and "Keyword = value" are both valid.
    keyword, separator, rest = stripped.partition("=")
    if separator and " " not in keyword.strip() and "\t" not in keyword.strip():
        stripped = f"{keyword.strip()} {rest.strip()}"

    try:
        return shlex.split(stripped, comments=True, posix=True)
    except ValueError as error:
        raise ConfigError(f"invalid line in SSH config {path}:{line_number}: {error}") from None


def _store_option(options: dict[str, list[str]], keyword: str, arguments: list[str], where: str) -> None:
    if not arguments:
        raise ConfigError(f"missing value for {keyword!r} in SSH config {where}")

    if keyword in ACCUMULATING_KEYWORDS:
        options.setdefault(keyword, []).extend(arguments)
    elif keyword not in options:
        options[keyword] = list(arguments)


def _include(arguments: list[str], path: Path, state: _ParseState, depth: int, where: str) -> None:
    for pattern in arguments:
        pattern = _expand_tilde(pattern, state.environ)
        if not os.path.isabs(pattern):
            # ssh_config(5): relative paths of a user's config are relative to ~/.ssh.
            pattern = str(home_dir(state.environ) / ".ssh" / pattern)

        for included in sorted(glob.glob(pattern)):
            logger.debug("reading SSH config %s included from %s", included, where)
            _read_file(Path(included), state, active=True, depth=depth + 1)


def _host_patterns_match(patterns: list[str], host: str) -> bool:
    """Apply `Host` rules: some pattern matches and no negated pattern matches."""
    matched = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if negated and _pattern_matches(pattern[1:], host):
            return False
        if not negated and _pattern_matches(pattern, host):
            matched = True
    return matched


def _pattern_list_matches(pattern_list: str, value: str) -> bool:
    return _host_patterns_match(pattern_list.split(","), value)


def _pattern_matches(pattern: str, value: str) -> bool:
    # OpenSSH patterns know only "*" and "?"; escape "[" so fnmatch treats it literally.
    escaped = pattern.replace("[", "[[]")
    return fnmatch.fnmatchcase(value.lower(), escaped.lower())


def _match_criteria(arguments: list[str], state: _ParseState, where: str) -> bool:
    if not arguments:
        raise ConfigError(f"missing criteria after 'Match' in SSH config {where}")

    index = 0
    result = True
    while index < len(arguments):
        criterion = arguments[index].lower()
        negated = criterion.startswith("!")
        criterion = criterion.lstrip("!")

        if criterion in ("all", "canonical", "final"):
            # This reader never canonicalizes host names, so it runs one pass, the final one.
            matched = criterion != "canonical"
            index += 1
        else:
            if index + 1 >= len(arguments):
                raise ConfigError(f"missing argument for 'Match {criterion}' in SSH config {where}")
            matched = _match_one(criterion, arguments[index + 1], state, where)
            index += 2

        if matched == negated:
            result = False
    return result


def _match_one(criterion: str, argument: str, state: _ParseState, where: str) -> bool:
    hostname = state.options.get("hostname", [state.original_host])[0]
    user = state.user or state.options.get("user", [None])[0] or local_user(state.environ) or ""

    if criterion == "host":
        return _pattern_list_matches(argument, hostname)
    if criterion == "originalhost":
        return _pattern_list_matches(argument, state.original_host)
    if criterion == "user":
        return _pattern_list_matches(argument, user)
    if criterion == "localuser":
        return _pattern_list_matches(argument, local_user(state.environ) or "")
    if criterion == "exec":
        logger.warning("SSH config %s: DDM never runs 'Match exec' commands; treating it as false", where)
        return False
    raise ConfigError(f"unsupported 'Match {criterion}' in SSH config {where}")


def _expand_tilde(value: str, environ: Mapping[str, str]) -> str:
    if value == "~" or value.startswith("~/"):
        return str(home_dir(environ)) + value[1:]
    return value


def _expand_tokens(
    value: str, keyword: str, replacements: Mapping[str, str], environ: Mapping[str, str]
) -> str:
    if keyword in TILDE_KEYWORDS:
        value = _expand_tilde(value, environ)
    if "%" not in value:
        return value

    expanded: list[str] = []
    index = 0
    while index < len(value):
        character = value[index]
        if character != "%":
            expanded.append(character)
            index += 1
            continue

        token = value[index + 1 : index + 2]
        if token not in replacements:
            supported = ", ".join(f"%{name}" for name in replacements)
            raise ConfigError(
                f"unsupported token %{token} in {keyword} {value!r} in the SSH config",
                hint=f"DDM expands {supported} there",
            )
        expanded.append(replacements[token])
        index += 2
    return "".join(expanded)


def _token_values(
    original_host: str, hostname: str, remote_user: str, port: str, environ: Mapping[str, str]
) -> dict[str, str]:
    local_name = socket.gethostname()
    return {
        "%": "%",
        "d": str(home_dir(environ)),
        "h": hostname,
        # Windows has no numeric user ID, so %i expands to an empty string there.
        "i": str(os.getuid()) if hasattr(os, "getuid") else "",
        "L": local_name.split(".")[0],
        "l": local_name,
        "n": original_host,
        "p": port,
        "r": remote_user,
        "u": local_user(environ) or "",
    }
