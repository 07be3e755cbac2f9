"""The DDM configuration file: hosts, how to reach them, and defaults.

The file is YAML (written by `ddminit`)::

    version: 1
    identity_file: ~/.ssh/id_ed25519      # optional, default key for ssh:// hosts
    known_hosts: ~/.ssh/known_hosts       # optional
    ssh_config: ~/.ssh/config             # optional
    hosts:
      old:
        url: ssh://root@old.example:22
        docker_socket: /var/run/docker.sock   # optional, the remote engine's socket
        identity_file: ~/.ssh/old_key         # optional per-host override
        known_hosts: ~/.ssh/known_hosts_old   # optional per-host override
        direct_address: 10.0.0.12             # optional, where other hosts reach this one
        direct_port: 22                       # optional, sshd port at direct_address
        authorized_keys: /root/.ssh/authorized_keys  # optional, for --route direct
    defaults:
      verify: full                          # none | quick | full
      on_success: /usr/local/bin/notify-ok  # optional command, split with shlex, no shell
      on_failure: /usr/local/bin/page-me    # optional command, split with shlex, no shell
      notify: https://hooks.example/ddm     # optional URL or list of URLs (http/https)

Home and XDG directories always come from the environment mapping passed in, never from the
password database, so that tests and scripts can point DDM at temporary directories.
"""

from __future__ import annotations

import ipaddress
import os
import re
import reprlib
import stat
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from ddm.errors import ConfigError

CONFIG_VERSION = 1
LOCAL_HOST = "local"
DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"
# The named pipe of Docker Desktop's engine on Windows.
WINDOWS_ENGINE_URL = "npipe:////./pipe/docker_engine"
VERIFY_MODES = ("none", "quick", "full")

HOST_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
SOCKET_PATH_PATTERN = re.compile(r"^/[A-Za-z0-9_./-]{1,254}$")
USER_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$")
# A DNS name: RFC 1123 labels, plus '_' because Host aliases in ~/.ssh/config may contain it.
# A name starting with '-' would read as an option to ssh, so each label starts with a letter,
# digit or '_'.
HOSTNAME_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
HOSTNAME_PATTERN = re.compile(rf"^{HOSTNAME_LABEL}(?:\.{HOSTNAME_LABEL})*\.?$")
MAX_HOSTNAME = 253
URL_SCHEMES = ("ssh", "unix", "tcp", "npipe")

TOP_LEVEL_KEYS = {"version", "identity_file", "known_hosts", "ssh_config", "hosts", "defaults"}
HOST_KEYS = {"url", "docker_socket", "identity_file", "known_hosts", "direct_address",
             "direct_port", "authorized_keys"}
DEFAULTS_KEYS = {"verify", "on_success", "on_failure", "notify"}

# Error messages quote values from the config file, which may be megabytes long or a YAML
# alias bomb whose full repr would never finish. reprlib keeps at most 80 characters of a
# string and one level of a list or mapping, with 4 items.
_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel = 1
_SHORT_REPR.maxstring = 80
_SHORT_REPR.maxother = 80
_SHORT_REPR.maxlong = 40
for _attribute in ("maxlist", "maxtuple", "maxdict", "maxset", "maxfrozenset", "maxdeque"):
    setattr(_SHORT_REPR, _attribute, 4)


def short_repr(value: object) -> str:
    """Return repr(value) shortened for an error message, in bounded time for any YAML value."""
    return _SHORT_REPR.repr(value)


@dataclass(frozen=True)
class HostConfig:
    """One Docker host: its name in DDM and the URL of its engine."""

    name: str
    url: str
    scheme: str
    user: str | None = None
    hostname: str | None = None
    port: int | None = None
    socket_path: str | None = None
    docker_socket: str = DEFAULT_DOCKER_SOCKET
    identity_file: Path | None = None
    known_hosts: Path | None = None
    # How other hosts reach this host's sshd for --route direct (see ddm.direct_config).
    direct_address: str | None = None
    direct_port: int = 22
    authorized_keys: str | None = None  # path on this host; default ~/.ssh/authorized_keys

    def to_dict(self) -> dict[str, Any]:
        """Return the YAML form of this host, leaving out values equal to the defaults."""
        data: dict[str, Any] = {"url": self.url}
        if self.docker_socket != DEFAULT_DOCKER_SOCKET:
            data["docker_socket"] = self.docker_socket
        if self.identity_file is not None:
            data["identity_file"] = str(self.identity_file)
        if self.known_hosts is not None:
            data["known_hosts"] = str(self.known_hosts)
        from ddm.direct_config import direct_settings_to_dict

        data.update(direct_settings_to_dict(self))
        return data


@dataclass(frozen=True)
class Defaults:
    """Defaults for options that the commands also take on the command line."""

    verify: str = "full"
    on_success: str | None = None
    on_failure: str | None = None
    notify: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    """A loaded configuration. The host named `local` always exists."""

    path: Path | None
    hosts: dict[str, HostConfig]
    identity_file: Path | None = None
    known_hosts: Path | None = None
    ssh_config: Path | None = None
    defaults: Defaults = field(default_factory=Defaults)
    environ: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    def host(self, name: str) -> HostConfig:
        """Return the host called `name`, or raise ConfigError listing the known names."""
        try:
            return self.hosts[name]
        except KeyError:
            known = ", ".join(sorted(self.hosts))
            where = f" in {self.path}" if self.path else ""
            raise ConfigError(
                f"unknown host {short_repr(name)}{where}",
                hint=f"known hosts: {known}; {self._unknown_host_advice(name)}",
            ) from None

    def _unknown_host_advice(self, name: str) -> str:
        """Return what to do about an unknown host name, never a ddminit call that rejects it.

        ddminit rejects `local` in any letter case and a new name that differs from a
        configured one only in letter case, so those names get the configured name instead.
        """
        if name.casefold() == LOCAL_HOST:
            return f"host names are case-sensitive, and the local Docker engine is {LOCAL_HOST!r}"
        for configured in sorted(self.hosts):
            if configured.casefold() == name.casefold():
                return f"host names are case-sensitive, so use {configured!r}"
        suggested = name if HOST_NAME_PATTERN.fullmatch(name) else "NAME"
        return f"add one with 'ddminit --host {suggested}=URL'"

    def to_dict(self) -> dict[str, Any]:
        """Return the YAML form of this configuration (the `local` host is implicit)."""
        data: dict[str, Any] = {"version": CONFIG_VERSION}
        for key in ("identity_file", "known_hosts", "ssh_config"):
            value = getattr(self, key)
            if value is not None:
                data[key] = str(value)
        data["hosts"] = {
            name: host.to_dict() for name, host in self.hosts.items() if name != LOCAL_HOST
        }
        data["defaults"] = {"verify": self.defaults.verify}
        for key in ("on_success", "on_failure"):
            if getattr(self.defaults, key) is not None:
                data["defaults"][key] = getattr(self.defaults, key)
        if self.defaults.notify:
            data["defaults"]["notify"] = list(self.defaults.notify)
        return data


def home_dir(environ: Mapping[str, str]) -> Path:
    """Return the home directory named by HOME in `environ`."""
    home = environ.get("HOME") or environ.get("USERPROFILE")
    if not home:
        raise ConfigError("HOME is not set", hint="set HOME or pass --config PATH")
    return Path(home)


def config_dir(environ: Mapping[str, str]) -> Path:
    """Return DDM's configuration directory under XDG_CONFIG_HOME (default ~/.config/ddm)."""
    base = environ.get("XDG_CONFIG_HOME") or str(home_dir(environ) / ".config")
    return Path(base) / "ddm"


def data_dir(environ: Mapping[str, str]) -> Path:
    """Return DDM's data directory (task state) under XDG_DATA_HOME (default ~/.local/share/ddm)."""
    base = environ.get("XDG_DATA_HOME") or str(home_dir(environ) / ".local" / "share")
    return Path(base) / "ddm"


def default_config_path(environ: Mapping[str, str]) -> Path:
    """Return the config path: DDM_CONFIG if set, else config.yaml in the XDG config directory."""
    explicit = environ.get("DDM_CONFIG")
    if explicit:
        return Path(explicit)
    return config_dir(environ) / "config.yaml"


def expand_path(value: str, environ: Mapping[str, str]) -> Path:
    """Expand a leading `~` against HOME from `environ` (not from the password database).

    `~\\` is expanded too on Windows, where os.sep is a backslash.
    """
    if value == "~" or value.startswith(("~/", "~" + os.sep)):
        return home_dir(environ) / value[2:]
    return Path(value)


def parse_host_url(name: str, url: str, **extra: Any) -> HostConfig:
    """Parse and validate a host URL into a HostConfig.

    Accepted forms: ssh://[user@]host[:port], unix:///path/to/docker.sock, tcp://host:port and
    npipe:////./pipe/docker_engine (a local Docker Desktop engine on Windows).
    """
    validate_host_name(name)
    if not isinstance(url, str) or not url or len(url) > 1024:
        raise ConfigError(f"invalid URL for host {name!r}", hint="use ssh://[user@]host[:port]")
    shown = redact_password(url)
    if shown != url:
        # Before urlsplit, which reads a password with '/', '?' or '#' in it as a path.
        raise _password_error(name)
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in url):
        raise ConfigError(
            f"invalid URL for host {name!r}: {shown!r} contains spaces or control characters",
            hint="use ssh://[user@]host[:port]",
        )

    try:
        parts = urlsplit(url)
    except ValueError as error:
        # urlsplit raises ValueError for an unbalanced '['. Python 3.11.7 also raises it for a
        # bracketed host that is not an IP address, and older releases may not.
        raise ConfigError(
            f"invalid URL {shown!r} for host {name!r}: {error}",
            hint="write an IPv6 address in brackets, as in ssh://user@[2001:db8::1]:22",
        ) from None
    scheme = parts.scheme.lower()
    if scheme not in URL_SCHEMES:
        raise ConfigError(
            f"unsupported URL scheme {parts.scheme!r} for host {name!r} in {shown!r}",
            hint="use ssh://[user@]host[:port], unix:///path, tcp://host:port or npipe://",
        )

    if scheme in ("unix", "npipe"):
        return _parse_socket_url(name, url, shown, scheme, parts, extra)
    return _parse_network_url(name, url, shown, scheme, parts, extra)


def _password_error(name: str) -> ConfigError:
    return ConfigError(
        f"URL for host {name!r} contains a password",
        hint="DDM never stores passwords; use a key file (identity_file) or an SSH agent",
    )


def redact_password(url: str) -> str:
    """Return the URL with the password of its user part, if any, replaced by '***'.

    The password is everything from the first ':' after the user name to the last '@'. That
    covers a password with '/', '?', '#' or '@' in it, which urlsplit would read as part of the
    path, and it may hide more than a password but never shows less.
    """
    scheme, separator, rest = url.partition("://")
    user_part, at, host_part = rest.rpartition("@")
    if not separator or not at or ":" not in user_part:
        return url
    user = user_part.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host_part}"


def _parse_socket_url(
    name: str, url: str, shown: str, scheme: str, parts: Any, extra: dict[str, Any]
) -> HostConfig:
    path = parts.path or parts.netloc
    if not path:
        raise ConfigError(
            f"missing socket path in URL {shown!r} for host {name!r}",
            hint="use unix:///var/run/docker.sock",
        )
    if parts.query or parts.fragment:
        raise ConfigError(
            f"unexpected query or fragment in URL {shown!r} for host {name!r}",
            hint="use unix:///var/run/docker.sock",
        )
    if scheme == "unix" and (parts.netloc or not path.startswith("/")):
        raise ConfigError(
            f"relative socket path in URL {shown!r} for host {name!r}",
            hint="give an absolute path after three slashes, as in unix:///var/run/docker.sock",
        )
    return HostConfig(name=name, url=url, scheme=scheme, socket_path=path, **extra)


def _parse_network_url(
    name: str, url: str, shown: str, scheme: str, parts: Any, extra: dict[str, Any]
) -> HostConfig:
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(
            f"unexpected path or query in URL {shown!r} for host {name!r}",
            hint=f"use {scheme}://[user@]host[:port]",
        )

    try:
        port = parts.port
    except ValueError:
        raise ConfigError(
            f"invalid port in URL {shown!r} for host {name!r}",
            hint="a port is a number from 1 to 65535",
        ) from None
    if port == 0:
        raise ConfigError(
            f"invalid port 0 in URL {shown!r} for host {name!r}",
            hint="a port is a number from 1 to 65535",
        )

    hostname = parts.hostname
    if not hostname:
        raise ConfigError(f"missing host in URL {shown!r} for host {name!r}")
    _validate_hostname(name, shown, hostname, bracketed="[" in parts.netloc)
    if parts.password is not None:
        raise _password_error(name)
    if scheme == "tcp" and port is None:
        raise ConfigError(
            f"missing port in URL {shown!r} for host {name!r}", hint="use tcp://host:2376"
        )

    user = parts.username
    if user is not None and not USER_PATTERN.fullmatch(user):
        raise ConfigError(f"invalid user name {user!r} in URL for host {name!r}")
    return HostConfig(
        name=name, url=url, scheme=scheme, user=user, hostname=hostname, port=port, **extra
    )


def _validate_hostname(name: str, shown: str, hostname: str, *, bracketed: bool) -> None:
    """Check the host part of an ssh:// or tcp:// URL: a DNS name or an IP address."""
    if bracketed or ":" in hostname:
        try:
            ipaddress.IPv6Address(hostname)
        except ValueError:
            raise ConfigError(
                f"invalid IPv6 address {hostname!r} in URL {shown!r} for host {name!r}"
            ) from None
        return

    if len(hostname) > MAX_HOSTNAME or not HOSTNAME_PATTERN.fullmatch(hostname):
        raise ConfigError(
            f"invalid host {hostname!r} in URL {shown!r} for host {name!r}",
            hint="use a DNS name (letters, digits, '-', '_' and '.') or an IP address",
        )


def validate_host_name(name: object) -> str:
    """Check that a host name is short, printable and safe to use in file names and logs."""
    if not isinstance(name, str) or not HOST_NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"invalid host name {short_repr(name)}",
            hint="use letters, digits, '.', '_' and '-', starting with a letter or digit, at most 63 characters",
        )
    return name


def local_host(environ: Mapping[str, str]) -> HostConfig:
    """Return the implicit `local` host: DOCKER_HOST if set, else the default local engine.

    The default is the Docker socket on POSIX systems and Docker Desktop's named pipe on Windows.
    """
    docker_host = environ.get("DOCKER_HOST")
    if not docker_host:
        return parse_host_url(LOCAL_HOST, default_local_url())

    try:
        return parse_host_url(LOCAL_HOST, docker_host)
    except ConfigError as error:
        raise ConfigError(f"invalid DOCKER_HOST: {error.message}", hint=error.hint) from None


def default_local_url() -> str:
    """Return the URL of the local engine when DOCKER_HOST is not set."""
    if sys.platform == "win32":
        return WINDOWS_ENGINE_URL
    return f"unix://{DEFAULT_DOCKER_SOCKET}"


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load and validate the configuration file.

    With `path` None, DDM_CONFIG or the XDG default is used, and a missing default file gives a
    configuration with only the `local` host. A file named explicitly must exist.
    """
    environ = dict(os.environ if environ is None else environ)
    explicit = path is not None or bool(environ.get("DDM_CONFIG"))
    config_path = path if path is not None else default_config_path(environ)

    if not config_path.exists():
        if explicit:
            raise ConfigError(
                f"config file not found: {config_path}",
                hint="create it with 'ddminit --host NAME=URL --yes' or check --config/DDM_CONFIG",
            )
        return Config(path=None, hosts={LOCAL_HOST: local_host(environ)}, environ=environ)

    if not config_path.is_file():
        # Reading a FIFO would wait for a writer, and a device could be endless.
        raise ConfigError(f"config file {config_path} is not a regular file",
                          hint="point --config or DDM_CONFIG at a YAML file")
    raw = _read_yaml(config_path)
    return config_from_dict(raw, config_path, environ)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"invalid config file {path}: not UTF-8 at byte {error.start}",
            hint="save the file as UTF-8",
        ) from None

    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        # A ReaderError (a control character in the text) has a reason but no problem.
        problem = (
            getattr(error, "problem", None) or getattr(error, "reason", None) or "malformed YAML"
        )
        context = getattr(error, "context", None)
        if context:
            # For example "while scanning a quoted scalar, found unexpected end of stream".
            problem = f"{context}, {problem}"
        raise ConfigError(f"invalid YAML in config file {path}{where}: {problem}",
                          hint="fix the file there, or write a new one with 'ddminit'") from None
    except RecursionError:
        raise ConfigError(f"invalid YAML in config file {path}: nested too deeply") from None
    except (ValueError, TypeError, AttributeError, OverflowError):
        # PyYAML 6.0.3's safe constructors raise these instead of a YAMLError for scalars that
        # match a type but cannot be converted: `2001-13-45`, `!!int abc`, `!!timestamp x`, or an
        # integer longer than Python's limit for int() of a string (4300 digits).
        raise ConfigError(
            f"invalid YAML in config file {path}: a value cannot be converted to its type",
            hint="check dates, numbers and values with explicit tags such as !!int",
        ) from None

    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"invalid config file {path}: the top level must be a mapping, not {type(loaded).__name__}"
        )
    return loaded


def config_from_dict(
    raw: Mapping[str, Any], path: Path | None, environ: Mapping[str, str]
) -> Config:
    """Validate a parsed YAML document and build a Config from it."""
    where = str(path) if path else "config"
    _reject_unknown_keys(raw, TOP_LEVEL_KEYS, where)

    version = raw.get("version", CONFIG_VERSION)
    if version != CONFIG_VERSION or isinstance(version, bool):
        raise ConfigError(
            f"unsupported config version {short_repr(version)} in {where}",
            hint=f"this DDM reads version {CONFIG_VERSION}",
        )

    hosts = {LOCAL_HOST: local_host(environ)}
    raw_hosts = raw.get("hosts")
    if raw_hosts is None:
        raw_hosts = {}
    if not isinstance(raw_hosts, dict):
        raise ConfigError(f"invalid 'hosts' in {where}: expected a mapping of names to hosts")
    for name, raw_host in raw_hosts.items():
        hosts[validate_host_name(name)] = _host_from_dict(name, raw_host, where, environ)

    return Config(
        path=path,
        hosts=hosts,
        identity_file=_optional_path(raw, "identity_file", where, environ),
        known_hosts=_optional_path(raw, "known_hosts", where, environ),
        ssh_config=_optional_path(raw, "ssh_config", where, environ),
        defaults=_defaults_from_dict(raw.get("defaults"), where),
        environ=environ,
    )


def _host_from_dict(
    name: str, raw_host: Any, where: str, environ: Mapping[str, str]
) -> HostConfig:
    if isinstance(raw_host, str):
        raw_host = {"url": raw_host}
    if not isinstance(raw_host, dict):
        raise ConfigError(f"invalid host {name!r} in {where}: expected a mapping with 'url'")
    _reject_unknown_keys(raw_host, HOST_KEYS, f"host {name!r} in {where}")
    if "url" not in raw_host:
        raise ConfigError(f"missing 'url' for host {name!r} in {where}")

    docker_socket = raw_host.get("docker_socket", DEFAULT_DOCKER_SOCKET)
    if not isinstance(docker_socket, str) or not SOCKET_PATH_PATTERN.fullmatch(docker_socket):
        raise ConfigError(
            f"invalid docker_socket {short_repr(docker_socket)} for host {name!r} in {where}",
            hint="use an absolute path of letters, digits, '.', '_', '-' and '/'",
        )

    from ddm.direct_config import parse_direct_settings

    return parse_host_url(
        name,
        raw_host["url"],
        docker_socket=docker_socket,
        identity_file=_optional_path(raw_host, "identity_file", where, environ),
        known_hosts=_optional_path(raw_host, "known_hosts", where, environ),
        **parse_direct_settings(name, raw_host, where),
    )


def _defaults_from_dict(raw: Any, where: str) -> Defaults:
    if raw is None:
        return Defaults()
    if not isinstance(raw, dict):
        raise ConfigError(f"invalid 'defaults' in {where}: expected a mapping")
    _reject_unknown_keys(raw, DEFAULTS_KEYS, f"defaults in {where}")

    verify = raw.get("verify", "full")
    if verify not in VERIFY_MODES:
        raise ConfigError(
            f"invalid defaults.verify {short_repr(verify)} in {where}",
            hint=f"use one of: {', '.join(VERIFY_MODES)}",
        )
    from ddm.callbacks import CallbackError, validate_command, validate_url

    values: dict[str, Any] = {}
    try:
        for key in ("on_success", "on_failure"):
            if raw.get(key) is not None:
                values[key] = validate_command(raw[key], f"defaults.{key}")
        notify = raw.get("notify")
        if isinstance(notify, str):
            notify = [notify]
        if notify is not None and not isinstance(notify, list):
            raise CallbackError(f"invalid defaults.notify {short_repr(notify)}",
                                hint="give a URL or a list of URLs")
        values["notify"] = tuple(validate_url(url, "defaults.notify") for url in notify or [])
    except CallbackError as error:
        raise ConfigError(f"{error.message} in {where}", hint=error.hint) from None
    return Defaults(verify=verify, **values)


def _optional_path(
    raw: Mapping[str, Any], key: str, where: str, environ: Mapping[str, str]
) -> Path | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or "\x00" in value or len(value) > 4096:
        raise ConfigError(f"invalid {key} {short_repr(value)} in {where}: expected a file path")
    return expand_path(value, environ)


def _reject_unknown_keys(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = [key for key in raw if key not in allowed]
    if unknown:
        raise ConfigError(
            f"unknown key {short_repr(unknown[0])} in {where}",
            hint=f"allowed keys: {', '.join(sorted(allowed))}",
        )


def comment_lines(text: str) -> list[int]:
    """Return the 1-based numbers of the lines of a YAML document that have a comment.

    PyYAML's scanner skips comments, so a `#` that lies outside every token it returns starts
    a comment. A `#` inside a quoted, plain or block scalar belongs to that token.
    Raises yaml.YAMLError for text that does not scan.
    """
    lines: set[int] = set()
    gap_start = 0
    for token in yaml.scan(text):
        lines.update(_comment_lines_between(text, gap_start, token.start_mark.index))
        gap_start = max(gap_start, token.end_mark.index)
    lines.update(_comment_lines_between(text, gap_start, len(text)))
    return sorted(lines)


def _comment_lines_between(text: str, start: int, end: int) -> set[int]:
    lines = set()
    position = text.find("#", start, end)
    while position != -1:
        lines.add(text.count("\n", 0, position) + 1)
        position = text.find("#", position + 1, end)
    return lines


def save_config(config: Config, path: Path) -> Path:
    """Write the configuration atomically with mode 0600 (it names key files and hosts).

    When `path` is a symbolic link, the file it points to is replaced and the link is kept,
    as text editors do. Returns the path of the file written.

    Raises ConfigError when the file exists but is not a regular file (a device such as
    /dev/null would otherwise be replaced), or when the file cannot be written.
    """
    target = _link_target(path)
    _reject_special_file(target)
    text = yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False)

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(target, text)
    except OSError as error:
        raise ConfigError(
            f"cannot write config file {target}: {error.strerror or error}",
            hint="check the directory's permissions and free space, or choose another --config",
        ) from None
    return target


def _link_target(path: Path) -> Path:
    """Return the file that `path` points to after all symbolic links, or `path` itself."""
    if not path.is_symlink():
        return path
    target = Path(os.path.realpath(path))
    # realpath (strict=False) stops at a link that is part of a loop and returns that link.
    if target.is_symlink():
        raise ConfigError(
            f"not writing config file {path}: its symbolic links form a loop",
            hint="fix the link or choose another path with --config",
        )
    return target


def _reject_special_file(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode):
        raise ConfigError(
            f"not writing config file {path}: it exists and is not a regular file",
            hint="choose another path with --config",
        )


def _write_atomically(path: Path, text: str) -> None:
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".config-", suffix=".yaml")
    try:
        os.chmod(temporary, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
