"""Per-volume steps of a volumes-mode task: check, copy, verify and undo.

A volume is copied through the Docker Engine API. A helper container that mounts the volume and
is never started lets the daemon build (GET) and unpack (PUT) the volume's tar archive. The
controller relays the stream between the hosts and builds the source manifest on the fly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ddm.errors import (
    DDMError,
    InsufficientSpace,
    MigrationFailed,
    TargetExists,
    UsageError,
    VerificationFailed,
    VolumeNotFound,
)
from ddm.differences import (MAX_REPORTED_DIFFERENCES, ROLLED_BACK_VERIFY_HINT,
                             brief_manifest_difference, summarize_differences)
from ddm.manifest import Difference, Manifest, ManifestBuilder, compare_manifests, display_path
from ddm.store import ENGINE_LOCK_PREFIX
from ddm.task import TaskItem, VerifyMode
from ddmsyncer.datapath import DataPath, Route

if TYPE_CHECKING:
    from ddm.tarstream import TarEntry
    from ddmdriver.engine import VolumeInfo

log = logging.getLogger(__name__)

HELPER_MOUNT = "/v"
ARCHIVE_PREFIX = b"v/"
TASK_LABEL = "ddm.task"

# Linux's PATH_MAX (with the terminating NUL) and NAME_MAX, in bytes. The engine's archive
# leaves out, without an error, every entry whose path in the helper container does not fit
# in PATH_MAX (seen with Docker 20.10: a path of 4,269 bytes was missing, one of 4,018 kept).
PATH_MAX = 4096
NAME_MAX = 255

QUICK_ASPECTS = ("presence", "type", "mode", "owner", "size", "link", "device", "mtime")
FULL_ASPECTS = (*QUICK_ASPECTS, "content")

# Free space the target must keep beyond the volume's size, in bytes.
SPACE_MARGIN_BYTES = 64 * 1024 * 1024


@dataclass
class VolumeCheck:
    """Facts about one volume that the prepare phase collects."""

    source_driver: str
    source_options: dict[str, str]
    source_labels: dict[str, str]
    size_bytes: int | None
    target_exists: bool


def engine_id(engine) -> str:
    """Return the engine's ID (GET /info), which is the same under every host name and URL."""
    return str(engine.api.info().get("ID") or "")


def engine_lock_names(names: Iterable[str], engine_ids: Mapping[str, str]) -> list[str]:
    """Return the lock names "HOST/KIND/NAME" with each host name replaced by its engine's ID.

    Two host names in the config can reach one engine, and the locks by host name do not
    see that. Locks by engine ID do, because the engine reports the same ID under both names.
    `engine_ids` maps host names to engine IDs; a name of a host without an ID is left out.
    """
    converted = set()
    for name in names:
        host_name, _, rest = name.partition("/")
        if engine_ids.get(host_name):
            converted.add(f"{ENGINE_LOCK_PREFIX}{engine_ids[host_name]}/{rest}")
    return sorted(converted)


def reject_overlap(source, target, items, *, engine_ids: tuple[str, str] | None = None) -> None:
    """Raise UsageError when one volume of the task would be both read and written.

    Two host names can reach one engine (two config entries, or `local` pointed at a remote
    engine), so the engines are compared by ID, not by name. On one engine a target that is
    also a source would be overwritten while it is read: the copy would destroy the source.
    `engine_ids` gives the source's and the target's ID when the caller has read them;
    otherwise both engines are asked (GET /info).
    """
    source_id, target_id = engine_ids if engine_ids is not None else (engine_id(source),
                                                                      engine_id(target))
    sources = {item.source for item in items}
    for item in items:
        error = overlap_error(source, target, item, sources, (source_id, target_id))
        if error is not None:
            raise error


def overlap_error(source, target, item, sources: set[str], engine_ids: tuple[str, str]
                  ) -> UsageError | None:
    """Return the UsageError of reject_overlap() for one item, or None when it has no overlap.

    `sources` are the source volume names of the whole task.
    """
    source_id, target_id = engine_ids
    if not source_id or source_id != target_id or item.target not in sources:
        return None
    return UsageError(
        f"volume {item.target!r} is both a source and a target: hosts "
        f"{source.host.name!r} and {target.host.name!r} are the same Docker engine "
        f"(ID {source_id[:12]})",
        hint="give the copy a new name with --volume SRC:NEWNAME",
    )


def aspects_for(mode: VerifyMode) -> tuple[str, ...]:
    """Return the manifest aspects a verify mode compares."""
    return FULL_ASPECTS if mode is VerifyMode.FULL else QUICK_ASPECTS


def check_volume(source, target, item: TaskItem, *, force: bool, sizes: VolumeSizes | None = None,
                 measure: bool = True, inspections: SourceInspections | None = None) -> VolumeCheck:
    """Check that the source volume exists and the target name is free (or forced).

    The size comes from `sizes`, shared by the task's volumes, or else from a disk usage
    report of its own. Without `measure` it is left None. With `inspections`, the source
    volume's inspection from earlier in the same prepare phase is reused.
    """
    if inspections is not None:
        volume = inspections.inspect(source, item.source)
    else:
        volume = source.volume_inspect(item.source)
    if volume is None:
        raise VolumeNotFound(
            f"volume {item.source!r} not found on host {source.host.name!r}",
            hint=f"list volumes with 'docker volume ls' on {source.host.name}",
        )

    # The target is inspected here on every run and never taken from a cache, because this
    # check guards the data of a volume that another client may have created meanwhile.
    existing = target.volume_inspect(item.target)
    if existing is not None and not force and not item.target_created:
        raise TargetExists(
            f"volume {item.target!r} already exists on host {target.host.name!r}",
            hint="choose another name with --volume SRC:DST, or pass --force to replace it",
        )

    return VolumeCheck(
        source_driver=volume.driver,
        source_options=dict(volume.options or {}),
        source_labels=dict(volume.labels or {}),
        size_bytes=_measured_size(source, item.source, sizes) if measure else None,
        target_exists=existing is not None,
    )


class SourceInspections:
    """Source volume inspections (GET /volumes/NAME) shared by the checks of one prepare phase.

    The host probe, the existence check and the data path choice each need the source
    volume within one prepare phase. Reusing one inspection opens no race that matters,
    because DDM only reads the source and the copy phase inspects the source volume again
    before it creates anything on the target. The --parallel workers share one instance.
    """

    def __init__(self) -> None:
        self._volumes: dict[str, VolumeInfo | None] = {}
        self._lock = threading.Lock()

    def inspect(self, engine, name: str) -> VolumeInfo | None:
        """Return the source volume `name` (None when missing), inspecting it on first use."""
        with self._lock:
            if name in self._volumes:
                return self._volumes[name]
        volume = engine.volume_inspect(name)
        with self._lock:
            self._volumes[name] = volume
        return volume


def _measured_size(source, name: str, sizes: VolumeSizes | None) -> int | None:
    if sizes is None:
        return volume_size(source, name)
    return sizes.size(source, name)


def volume_size(engine, name: str) -> int | None:
    """Return the volume's size in bytes from the engine's disk usage report, or None.

    The report (GET /system/df) walks every volume on the host, so it can take seconds on a
    host with large volumes; None when the engine does not report a size (remote drivers).
    """
    try:
        usage = engine.api.df()
    except Exception as error:  # noqa: BLE001 - the size is an estimate for display and checks
        log.warning("disk usage of host %s is unknown: %s", engine.host.name, error)
        return None
    for volume in usage.get("Volumes") or []:
        if volume.get("Name") == name:
            size = (volume.get("UsageData") or {}).get("Size")
            return size if isinstance(size, int) and size >= 0 else None
    return None


def allocated_size(engine, access, directory: str) -> int | None:
    """Return the bytes allocated below a host directory, from `du -s -k`, or None when unknown.

    GNU tar's --sparse on the host data path sends only a sparse file's data, so the target
    needs the allocated size there. The engine's disk usage report counts apparent sizes.
    """
    try:
        result = engine.exec_command(access.argv("du", "-s", "-k", "--", directory))
    except Exception as error:  # noqa: BLE001 - the caller keeps the apparent size
        log.info("du of %s on host %s failed: %s", directory, engine.host.name, error)
        return None
    first = result.stdout.split(maxsplit=1)[:1]
    if result.exit_status != 0 or not first or not first[0].isdigit():
        log.info("du of %s on host %s failed: exit status %s", directory, engine.host.name,
                 result.exit_status)
        return None
    return int(first[0]) * 1024


def size_on_route(source, route: Route, apparent_bytes: int | None) -> int | None:
    """Return the bytes that a copy on `route` needs on the target, for checks and estimates.

    The host data path keeps holes, so it needs the allocated size, read with `du` on the
    source host. The Engine API path writes holes as zeros, so it needs the apparent size. The
    apparent size is kept when it is unknown or when `du` fails.
    """
    if apparent_bytes is None or route.data_path is not DataPath.HOST or route.source_access is None:
        return apparent_bytes
    allocated = allocated_size(source, route.source_access, route.source_directory)
    return apparent_bytes if allocated is None else allocated


class VolumeSizes:
    """Volume sizes from one disk usage report (GET /system/df) per host, shared by a task's volumes.

    The report covers every volume of the host and costs the engine a walk of all of them,
    so a task with several volumes requests it once per host. The --parallel workers share
    one instance, so a lock guards it.
    """

    def __init__(self) -> None:
        self._reports: dict[str, dict[str, int | None] | None] = {}
        self._lock = threading.Lock()

    def size(self, engine, name: str) -> int | None:
        """Return the size of volume `name` on `engine`'s host, or None when it is unknown."""
        with self._lock:
            if engine.host.name not in self._reports:
                self._reports[engine.host.name] = _usage_sizes(engine)
            report = self._reports[engine.host.name]
        return None if report is None else report.get(name)


def _usage_sizes(engine) -> dict[str, int | None] | None:
    try:
        usage = engine.api.df()
    except Exception as error:  # noqa: BLE001 - the size is an estimate for display and checks
        log.warning("disk usage of host %s is unknown: %s", engine.host.name, error)
        return None
    sizes: dict[str, int | None] = {}
    for volume in usage.get("Volumes") or []:
        size = (volume.get("UsageData") or {}).get("Size")
        sizes[volume.get("Name")] = size if isinstance(size, int) and size >= 0 else None
    return sizes


def volumes_root(engine) -> str:
    """Return the directory under which the engine keeps local volumes."""
    return volumes_root_of(engine.api.info())


def volumes_root_of(info) -> str:
    """Return the local volumes directory named by an engine's GET /info response."""
    root = info.get("DockerRootDir") or "/var/lib/docker"
    return f"{root}/volumes"


class FreeSpaceQuery:
    """Reads the free space of the target's volume storage in a thread.

    On an ssh:// host Engine.free_bytes runs `df` over SSH, so starting it early lets that
    command overlap other prepare steps. The storage path is read through the engine API in
    the calling thread, because the engine's API client is not shared between threads.
    With `probes` (a ddmsyncer.datapath.HostProbes that was given `path` for the target),
    the target's host probe reports the figure, and `df` runs only when it did not.
    """

    def __init__(self, target, path: str | None = None, probes=None) -> None:
        self._free: int | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run,
                                        args=(target, path or volumes_root(target), probes),
                                        name="ddm-free-space", daemon=True)
        self._thread.start()

    def _run(self, target, path: str, probes) -> None:
        try:
            self._free = _probed_free_bytes(target, probes)
            if self._free is None:
                self._free = target.free_bytes(path)
        except BaseException as error:  # noqa: BLE001 - raised again by result()
            self._error = error

    def result(self) -> int | None:
        """Wait for the query; return the free bytes, or None when unknown."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._free


def _probed_free_bytes(target, probes) -> int | None:
    if probes is None:
        return None
    try:
        return probes.probe(target).free_bytes
    except DDMError as error:
        log.info("host probe of %s failed (%s); reading its free space with df", target.host.name,
                 error)
        return None


def check_space(target, needed_bytes: int | None, volume: str,
                free_space: FreeSpaceQuery | None = None) -> None:
    """Raise InsufficientSpace when the target's volume storage has less room than needed.

    `free_space` is a query started earlier; without it the free space is read now.
    """
    if needed_bytes is None:
        return
    free = free_space.result() if free_space is not None else target.free_bytes(volumes_root(target))
    if free is None:
        log.warning("free space on host %s is unknown; not checked", target.host.name)
        return
    if free < needed_bytes + SPACE_MARGIN_BYTES:
        raise InsufficientSpace(
            f"not enough space on host {target.host.name!r} for volume {volume!r}: "
            f"{needed_bytes} bytes needed, {free} bytes free",
            hint="free space on the target or choose another target host",
        )


def create_target_volume(target, item: TaskItem, check: VolumeCheck) -> None:
    """Create the target volume with the source's driver, driver options and labels."""
    target.volume_create(
        item.target,
        driver=check.source_driver,
        driver_opts=check.source_options,
        labels=check.source_labels,
    )


class DeepDirectories:
    """Directory members of an engine archive so deep that the engine may have left out entries.

    A child with a name of NAME_MAX bytes of such a directory would not fit in PATH_MAX, so the
    archive would lack it, and the copy's manifest and verify could not tell. Real volumes
    rarely come close, so a copy that meets one fails rather than risk a silent loss.
    """

    def __init__(self) -> None:
        self.first: bytes | None = None
        self.count = 0

    def check(self, entry: TarEntry) -> None:
        if entry.type != "dir":
            return
        path = entry.path.rstrip(b"/")
        # "/" + the member path + "/" + the child's name, and the NUL, must fit in PATH_MAX.
        if 1 + len(path) + 1 + NAME_MAX + 1 > PATH_MAX:
            self.count += 1
            if self.first is None:
                self.first = path

    def raise_if_found(self, volume: str) -> None:
        """Raise MigrationFailed when a directory was too deep to trust the archive below it."""
        if self.first is None:
            return
        path_text = display_path(self.first)
        if len(path_text) > 100:
            path_text = f"{path_text[:50]}...{path_text[-40:]}"
        raise MigrationFailed(
            f"volume {volume!r} has {self.count} directories whose paths are within {NAME_MAX} "
            f"bytes of the {PATH_MAX}-byte limit of the Engine API archive, which leaves out "
            f"longer paths without an error, so entries below them may be missing (first: "
            f"{path_text}, {len(self.first)} bytes)",
            hint="copy the volume on the host data path (--data-path host), which rejects "
            "paths it cannot copy, or shorten those paths",
        )


def copy_volume(
    source,
    target,
    item: TaskItem,
    *,
    task_id: str,
    hash_content: bool,
    on_chunk: Callable[[int], None],
    sha256: bool = False,
) -> tuple[Manifest, int, str]:
    """Relay the volume's archive from source to target; return (manifest, bytes, digest).

    The source helper mounts the volume read-only, so the copy cannot change the source.
    Every archive member is checked by an ArchiveGuard before the target unpacks it.
    `sha256` also stores each file's SHA-256 in the manifest (see ddmsyncer.hostverify).

    The manifest, and so verify, covers only what the engine's archive contains. The engine
    leaves out paths longer than PATH_MAX without an error, so a copy with a directory that
    deep fails (DeepDirectories).
    """
    from ddm.archive_guard import ArchiveGuard
    from ddmdriver.relay import archive_root, relay_archive

    labels = {TASK_LABEL: task_id}
    source_helper = source.create_helper(item.source, read_only=True, labels=labels)
    target_helper = target.create_helper(item.target, read_only=False, labels=labels)
    # The builder parses the stream once for the manifest and the guard's checks, so the
    # relay gets no guard of its own.
    guard = ArchiveGuard(archive_root(HELPER_MOUNT), description=f"volume {item.source!r}")
    deep = DeepDirectories()

    def check_member(entry: TarEntry) -> None:
        guard.check(entry)
        deep.check(entry)

    builder = ManifestBuilder(hash_content=hash_content, strip_prefix=ARCHIVE_PREFIX,
                              sha256=sha256, member_check=check_member)

    def observe(chunk: memoryview) -> None:
        builder.feed(chunk)
        on_chunk(len(chunk))

    started = time.monotonic()
    result = relay_archive(
        source, source_helper, HELPER_MOUNT, target, target_helper, "/",
        observers=[observe],
    )
    manifest = builder.close()
    deep.raise_if_found(item.source)
    log.info(
        "copied volume %s to %s: %d bytes in %.1f s",
        item.source, item.target, result.bytes, time.monotonic() - started,
    )
    return manifest, result.bytes, result.stream_digest


def read_manifest(engine, volume: str, *, task_id: str, hash_content: bool,
                  sha256: bool = False) -> Manifest:
    """Read a volume's manifest from its archive (GET through a never-started helper).

    `sha256` also stores each file's SHA-256, in the pieced form of ddm.piecehash for large
    files.
    """
    helper = engine.create_helper(volume, read_only=True, labels={TASK_LABEL: task_id})
    try:
        builder = ManifestBuilder(hash_content=hash_content, strip_prefix=ARCHIVE_PREFIX,
                                  sha256=sha256)
        stream = engine.get_archive(helper, HELPER_MOUNT)
        try:
            for chunk in stream:
                builder.feed(chunk)
        finally:
            close = getattr(stream, "close", None)
            if close:
                close()
        return builder.close()
    finally:
        engine.remove_container(helper)


def verify_volume(
    source_manifest: Manifest, target_manifest: Manifest, item: TaskItem, mode: VerifyMode
) -> None:
    """Compare manifests and raise VerificationFailed listing the first differences."""
    raise_on_differences(compare_manifests(source_manifest, target_manifest, aspects_for(mode)),
                         item)


def raise_on_differences(differences: list[Difference], item: TaskItem,
                         staging: str | None = None) -> None:
    """Raise VerificationFailed with the first MAX_REPORTED_DIFFERENCES and their values.

    `staging` names the staging volume that was compared, when it was not the target itself.
    """
    if not differences:
        return
    listed = [brief_manifest_difference(difference)
             for difference in differences[:MAX_REPORTED_DIFFERENCES]]
    staging_note = f" (copied into staging volume {staging!r})" if staging else ""
    raise VerificationFailed(
        f"volume {item.target!r}{staging_note} differs from source {item.source!r} in "
        f"{summarize_differences(len(differences), listed)}",
        hint=ROLLED_BACK_VERIFY_HINT,
    )


def remove_volume_helpers(engine, task_id: str, volume: str) -> int:
    """Remove the task's helper containers that mount `volume`; return how many were removed.

    Parallel copies use this instead of remove_task_helpers, which would also remove the
    helpers of the other volumes still being copied.
    """
    removed = 0
    filters = {"label": [f"{TASK_LABEL}={task_id}"], "volume": [volume]}
    for container in engine.api.containers(all=True, filters=filters):
        engine.remove_container(container["Id"])
        removed += 1
    return removed


def remove_task_helpers(engine, task_id: str) -> int:
    """Remove every helper container of the task on a host; return how many were removed."""
    # Engine.list_containers raises ConnectionFailed for a lost connection, and the
    # runner's rollback then connects once more.
    removed = 0
    for container_id in engine.list_containers(labels={TASK_LABEL: task_id}):
        engine.remove_container(container_id)
        removed += 1
    return removed
