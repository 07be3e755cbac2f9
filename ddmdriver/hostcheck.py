"""The state checker behind `ddmctl hosts check`: can DDM use this host, and how.

For each host it connects (SSH host key and authentication included), reads the engine's
version, storage driver, architecture, root directory and clock, measures the free space where
volumes live, and on ssh:// hosts runs a few read-only commands: `tar --version`, `test -r` and
`test -x` on DockerRootDir/volumes, `id` and `sudo -n true`. Nothing on the host changes.
"""

from __future__ import annotations

import datetime
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ddm.config import Config, HostConfig
from ddm.errors import (
    AuthenticationFailed,
    ConnectionFailed,
    DDMError,
    ExitStatus,
    HostKeyError,
)

log = logging.getLogger(__name__)

# Clock skew above this many seconds is reported as a problem: task timestamps and logs of the
# two hosts then disagree visibly. It does not make the host unusable.
MAX_CLOCK_SKEW_SECONDS = 5.0


@dataclass
class HostCheck:
    """Findings of `hosts check` on one host; `exit_status` is 0 when the host is usable."""

    host: str
    url: str
    usable: bool = False
    exit_status: int = int(ExitStatus.OK)
    reachable: bool = False
    host_key: str = "not checked"  # ok | unknown | changed | revoked | not checked | not used
    error: str | None = None
    engine_version: str | None = None
    api_version: str | None = None
    os: str | None = None
    arch: str | None = None
    storage_driver: str | None = None
    docker_root_dir: str | None = None
    volumes_free_bytes: int | None = None
    clock_skew_seconds: float | None = None
    host_tar: dict[str, Any] = field(default_factory=dict)
    rights: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_host(config: Config, host: HostConfig) -> HostCheck:
    """Check one host. Connection, host key, authentication and engine errors are recorded in
    the result (error, exit_status), not raised."""
    from ddmdriver.engine import open_engine

    result = HostCheck(host=host.name, url=host.url)
    result.host_key = "not used" if host.scheme != "ssh" else "not checked"
    try:
        with open_engine(host, config) as engine:
            result.reachable = True
            if host.scheme == "ssh":
                result.host_key = "ok"
            _check_engine(engine, result)
            if engine.ssh is not None:
                _check_host_commands(engine, result)
    except HostKeyError as error:
        result.host_key = _host_key_state(str(error))
        _fail(result, error)
    except (ConnectionFailed, AuthenticationFailed, DDMError) as error:
        _fail(result, error)

    result.usable = result.exit_status == int(ExitStatus.OK)
    return result


def _fail(result: HostCheck, error: DDMError) -> None:
    result.error = str(error)
    result.exit_status = int(error.exit_status)
    result.problems.append(str(error))


def _host_key_state(message: str) -> str:
    if "revoked" in message:
        return "revoked"
    if "has changed" in message:
        return "changed"
    return "unknown"


def _check_engine(engine: Any, result: HostCheck) -> None:
    info = engine.ping()
    result.engine_version = info.version
    result.api_version = info.api_version
    result.os = info.os
    result.arch = info.arch

    with engine._errors("reading engine information"):
        system = engine.api.info()
    received = time.time()
    result.storage_driver = system.get("Driver")
    result.docker_root_dir = system.get("DockerRootDir")
    result.clock_skew_seconds = clock_skew(system.get("SystemTime"), received, info.rtt_seconds)
    if result.clock_skew_seconds is not None and abs(result.clock_skew_seconds) > MAX_CLOCK_SKEW_SECONDS:
        result.problems.append(
            f"clock differs from this machine's by {result.clock_skew_seconds:+.1f} s; "
            "synchronise it with NTP"
        )

    volumes_dir = engine.volumes_root()
    result.volumes_free_bytes = engine.free_bytes(volumes_dir)


def clock_skew(system_time: str | None, received: float, rtt_seconds: float) -> float | None:
    """Return the engine's clock minus this machine's, in seconds, or None when unknown.

    The engine read its clock about half a round trip before the response arrived, so that
    half is subtracted from the local time of arrival. The result is accurate to about rtt / 2.
    """
    if not system_time:
        return None
    moment = parse_rfc3339(system_time)
    if moment is None:
        return None
    return moment - (received - rtt_seconds / 2)


def parse_rfc3339(text: str) -> float | None:
    """Parse Docker's SystemTime (RFC 3339 with up to 9 fraction digits) into Unix time."""
    value = text.strip().replace("Z", "+00:00")
    main, dot, rest = value.partition(".")
    if dot:
        digits = ""
        while rest and rest[0].isdigit():
            digits, rest = digits + rest[0], rest[1:]
        value = f"{main}.{digits[:6].ljust(6, '0')}{rest}"
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def _check_host_commands(engine: Any, result: HostCheck) -> None:
    volumes_dir = (result.docker_root_dir or "/var/lib/docker").rstrip("/") + "/volumes"
    tar = _run(engine, ["tar", "--version"])
    gnu_tar = None
    if tar is not None and tar.exit_status == 0:
        first_line = tar.stdout.decode("utf-8", "replace").splitlines()[:1]
        gnu_tar = first_line[0] if first_line and "GNU tar" in first_line[0] else None
    readable = _succeeds(engine, ["test", "-r", volumes_dir]) and \
        _succeeds(engine, ["test", "-x", volumes_dir])
    result.host_tar = {"available": bool(gnu_tar) and readable, "gnu_tar": gnu_tar,
                       "volumes_dir": volumes_dir, "volumes_dir_readable": readable}

    result.rights = user_rights(engine)


def user_rights(engine: Any) -> dict[str, Any]:
    """Return the SSH user's name, uid, groups, and whether it is root, in group docker, or
    may run sudo without a password."""
    user = _output(engine, ["id", "-un"])
    uid_text = _output(engine, ["id", "-u"])
    groups = (_output(engine, ["id", "-Gn"]) or "").split()
    uid = int(uid_text) if uid_text and uid_text.isdigit() else None
    return {
        "user": user,
        "uid": uid,
        "groups": groups,
        "root": uid == 0,
        "docker_group": "docker" in groups,
        "sudo": _succeeds(engine, ["sudo", "-n", "true"]),
    }


def _run(engine: Any, argv: list[str]) -> Any:
    try:
        return engine.exec_command(argv)
    except DDMError as error:
        log.warning("host %s: %s failed: %s", engine.host.name, argv[0], error)
        return None


def _succeeds(engine: Any, argv: list[str]) -> bool:
    result = _run(engine, argv)
    return result is not None and result.exit_status == 0


def _output(engine: Any, argv: list[str]) -> str | None:
    result = _run(engine, argv)
    if result is None or result.exit_status != 0:
        return None
    return result.stdout.decode("utf-8", "replace").strip()


def worst_exit_status(results: list[HostCheck]) -> int:
    """Return the highest exit status of the checks: 5 authentication, 4 host key, 3 connection."""
    return max((result.exit_status for result in results), default=int(ExitStatus.OK))
