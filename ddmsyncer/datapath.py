"""Data paths of a volume copy, what each keeps, and the per-volume choice between them.

* "engine": the Engine API archive (GET and PUT /containers/{id}/archive through helper
  containers that are never started). Works on every host DDM can reach. moby's archive
  code (pkg/archive, docker.io 20.10) keeps content, file types, permission bits with
  setuid, setgid and sticky, numeric ids, hard links, symlink text, devices, FIFOs and raw
  names, but writes whole-second mtimes, only the security.capability xattr, no ACLs and
  no holes.
* "host": the host's own GNU tar over SSH (ddmdriver.hostpath). Needs root or
  passwordless sudo and GNU tar on both hosts, and a local volume without driver options
  (such a volume's data is a plain directory under the engine's root). Keeps everything
  the engine path keeps plus nanosecond mtimes, all xattrs, POSIX ACLs and sparseness.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ddm.errors import UsageError
from ddm.manifest import ALL_ASPECTS

log = logging.getLogger(__name__)

DATA_PATH_CHOICES = ("auto", "engine", "host")


class DataPath(str, enum.Enum):
    """How a volume's data travels."""

    ENGINE = "engine"
    HOST = "host"


# Human-readable aspects, for the plan and the documentation.
ENGINE_KEEPS = (
    "content",
    "file types (regular, directory, symlink, hard link, FIFO, devices)",
    "permission bits with setuid, setgid and sticky",
    "numeric uid and gid",
    "volume root owner and mode",
    "hard-link groups",
    "symlink text",
    "raw-byte names",
    "mtimes in whole seconds",
    "security.capability xattr",
)
ENGINE_LOSES = (
    "sub-second mtimes",
    "xattrs other than security.capability",
    "POSIX ACLs",
    "sparseness (holes are written as zeros)",
)
HOST_KEEPS = (*ENGINE_KEEPS[:-2], "mtimes to the nanosecond", "all xattrs", "POSIX ACLs",
              "sparseness")

# Manifest aspects that verify compares on each path, without and with content hashes.
ENGINE_ASPECTS = ("presence", "type", "mode", "owner", "size", "link", "device", "mtime")
HOST_ASPECTS = (*ENGINE_ASPECTS, "mtime_ns", "xattrs", "acl", "sparse")


def verify_aspects(data_path: DataPath, *, deep: bool) -> tuple[str, ...]:
    """Return the manifest aspects that verify compares for volumes copied on `data_path`."""
    aspects = HOST_ASPECTS if data_path is DataPath.HOST else ENGINE_ASPECTS
    return (*aspects, "content") if deep else aspects


def not_checked(data_path: DataPath, *, deep: bool) -> tuple[str, ...]:
    """Return the manifest aspects that verify does not compare, reported as "not checked"."""
    checked = set(verify_aspects(data_path, deep=deep))
    return tuple(aspect for aspect in ALL_ASPECTS if aspect not in checked)


def keeps(data_path: DataPath) -> tuple[str, ...]:
    return HOST_KEEPS if data_path is DataPath.HOST else ENGINE_KEEPS


def loses(data_path: DataPath) -> tuple[str, ...]:
    return () if data_path is DataPath.HOST else ENGINE_LOSES


def reject_full_mode_data_path(requested: str | None) -> None:
    """Raise UsageError for --data-path host in full mode.

    Full mode (ddmsyncer/containers.py) copies every volume through the Engine API, so a
    request for the host path would otherwise be dropped without a word.
    """
    if requested == DataPath.HOST.value:
        raise UsageError("--data-path host is for volumes mode",
                         hint="full mode copies volumes only through the Engine API; leave out "
                         "--data-path in full mode")


@dataclass(frozen=True)
class Route:
    """The data path chosen for one volume, and the host access it needs."""

    data_path: DataPath
    reason: str
    source_access: Any = None  # ddmdriver.hostpath.HostAccess on the host path
    target_access: Any = None  # also set on the engine path when the target allows it
    source_directory: str = ""


class HostProbes:
    """Probes each host once per task and remembers the result.

    start() runs the probe in a thread, so that its SSH command overlaps other work of the
    prepare phase; probe() waits for it. Results are keyed by host name, so the engines of
    --parallel workers reuse the probe that prepare started with every volume's mountpoint.
    begin() starts the probe's command even earlier, on the host's SSH connection before its
    engine is open; start() then only sends it the directories.
    """

    def __init__(self) -> None:
        self._results: dict[str, Any] = {}
        self._errors: dict[str, BaseException] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._started: dict[str, Any] = {}  # host name -> ddmdriver.earlyprobe.StartedProbe
        self._beginning: dict[str, threading.Thread] = {}  # host name -> thread of begin()
        self._lock = threading.Lock()

    def begin(self, host_name: str, ssh: Any) -> None:
        """Start the probe command of `host_name` on `ssh`, its authenticated SSH connection.

        Called from the thread that opens the host's engine, before the engine's own
        dial-stdio command, so that the two commands' login shells start at once. When the
        command cannot start, start() later probes the host with a command of its own.
        """
        # Opening the probe's channel and starting its command take two round trips, which
        # would delay the dial-stdio command of the engine if this thread waited for them.
        thread = threading.Thread(target=self._begin, args=(host_name, ssh),
                                  name=f"ddm-probe-begin-{host_name}", daemon=True)
        with self._lock:
            self._beginning[host_name] = thread
        thread.start()

    def _begin(self, host_name: str, ssh: Any) -> None:
        from ddmdriver.earlyprobe import start_probe

        started = start_probe(ssh, host_name)
        if started is None:
            return
        with self._lock:
            if host_name in self._threads or host_name in self._started:
                started.close()
                return
            self._started[host_name] = started

    def _wait_for_begin(self, host_name: str | None = None) -> None:
        """Wait until begin() has started the probe of `host_name`, or of every host if None."""
        with self._lock:
            names = [host_name] if host_name is not None else list(self._beginning)
            threads = [self._beginning.pop(name) for name in names if name in self._beginning]
        for thread in threads:
            thread.join()

    def start(self, engine: Any, directories: tuple[str, ...] = (),
              then: Callable[[Any], None] | None = None, free_space_path: str | None = None) -> None:
        """Start probing `engine`'s host; `then` gets the HostProbe in the probing thread.

        The probe also checks that the account can read `directories` (HostProbe.readable).
        A probe that begin() started also reads the free space under `free_space_path`
        (HostProbe.free_bytes); other probes leave it None.
        """
        key = engine.host.name
        self._wait_for_begin(key)
        with self._lock:
            if key in self._threads:
                return
            started = self._started.pop(key, None)
            thread = threading.Thread(target=self._run,
                                      args=(engine, directories, then, started, free_space_path),
                                      name="ddm-host-probe", daemon=True)
            self._threads[key] = thread
        thread.start()

    def probe(self, engine: Any) -> Any:
        self.start(engine)
        key = engine.host.name
        self._threads[key].join()
        if key in self._errors:
            raise self._errors[key]
        return self._results[key]

    def close(self) -> None:
        """Stop the probe commands that begin() started and start() never used."""
        self._wait_for_begin()
        with self._lock:
            unused = list(self._started.values())
            self._started.clear()
        for started in unused:
            started.close()

    def _run(self, engine: Any, directories: tuple[str, ...],
             then: Callable[[Any], None] | None, started: Any = None,
             free_space_path: str | None = None) -> None:
        from ddmdriver.hostpath import probe_host_access

        key = engine.host.name
        try:
            if started is not None:
                result = started.finish(directories, free_space_path)
            else:
                result = probe_host_access(engine, directories)
        except BaseException as error:  # noqa: BLE001 - raised again by probe() in the caller
            self._errors[key] = error
            return
        self._results[key] = result
        if result.access is None:
            log.info("host data path unavailable on %s: %s", engine.host.name, result.reason)
        if then is not None:
            then(result)


def validate_choice(requested: str) -> str:
    if requested not in DATA_PATH_CHOICES:
        raise UsageError(f"invalid data path {requested!r}", hint="use auto, engine or host")
    return requested


def choose_route(source: Any, target: Any, volume: Any, requested: str, probes: HostProbes) -> Route:
    """Choose the data path of one volume; `volume` is the source's VolumeInfo.

    "auto" picks the host path when it is possible and the engine path otherwise;
    "host" raises UsageError with the reason when it is not possible.
    """
    validate_choice(requested)
    target_probe = probes.probe(target)
    target_access = target_probe.access

    if requested == "engine":
        return Route(DataPath.ENGINE, "requested with --data-path engine", target_access=target_access)

    reason = _host_path_obstacle(source, volume, probes, target_probe)
    if reason is None:
        source_access = probes.probe(source).access
        return Route(DataPath.HOST, "both hosts run GNU tar as root", source_access, target_access,
                     volume.mountpoint)

    if requested == "host":
        raise UsageError(f"the host data path is not possible for volume {volume.name!r}: {reason}",
                         hint="use --data-path auto or engine")
    return Route(DataPath.ENGINE, reason, target_access=target_access)


def _host_path_obstacle(source: Any, volume: Any, probes: HostProbes, target_probe: Any) -> str | None:
    from ddmdriver.hostpath import check_directory

    if volume.driver != "local" or volume.options:
        return f"volume {volume.name!r} uses driver {volume.driver!r} with options, not a plain directory"
    source_probe = probes.probe(source)
    if source_probe.access is None:
        return source_probe.reason
    if target_probe.access is None:
        return target_probe.reason
    if volume.mountpoint in source_probe.checked:
        readable = volume.mountpoint in source_probe.readable
    else:
        readable = bool(volume.mountpoint) and check_directory(source, source_probe.access,
                                                               volume.mountpoint)
    if not readable:
        return f"mountpoint {volume.mountpoint!r} of volume {volume.name!r} is not readable on the host"
    return None
