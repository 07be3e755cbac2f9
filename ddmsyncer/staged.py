"""Per-volume copy into a staging volume, verification, and promotion to the real name.

Docker cannot rename a volume, so every copy goes into a staging volume named
`ddm-staging-TASK-POSITION` (labelled ddm.staging=TASK), recorded in the task's state before
it is created. Only a verified staging volume is promoted to the real name:

* when the target's SSH account may run host commands (root or sudo, see
  ddmdriver.hostpath) and the volume is a plain local directory, DDM creates the real volume
  and renames the staging volume's data directory onto the real one's. This is rename(2) on
  one file system, so nothing is copied;
* otherwise the target engine copies the staging volume into the real one through its
  archive API, and the staging volume is removed. This second copy stays on the target host,
  and the manifest of its stream must match the verified one.

An interrupted task therefore never leaves a half-filled volume under the real name:
rollback removes staging volumes and any real volume the task recorded as created.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any

from ddm import piecehash
from ddm.errors import DDMError, MigrationFailed, TargetExists, TransferFailed
from ddm.manifest import Manifest, ManifestBuilder, compare_manifests, display_path
from ddm.task import ItemState, TaskItem, VerifyMode
from ddm.archive_guard import ROOT, ArchiveGuard
from ddm.text import counted
from ddmsyncer import direct, hashcache, hashseed, hostverify, replacecheck, undo, volumes, writers
from ddmsyncer.compression import CompressionChooser
from ddmsyncer.datapath import DataPath, HostProbes, Route, choose_route, loses, verify_aspects

log = logging.getLogger(__name__)

# Verify method of a direct copy when a host cannot run the manifest scan.
DIRECT_METADATA_SCAN = "direct-metadata-scan"

STAGING_LABEL = "ddm.staging"
STAGING_PREFIX = "ddm-staging"
MAX_REPORTED_CHANGES = 10
VERIFY_EXTRA_KEY = "verify"

# Serializes read-modify-write of the task's verify records among --parallel worker threads.
_VERIFY_LOCK = threading.Lock()
# The same for the staging volume names and stopped writers recorded in the task's state.
_EXTRA_LOCK = threading.Lock()


class _HostCopy:
    """The manifest builder and hash cache seed of one host-path copy.

    With a pending seed, open() is the relay's gate. It waits until the seed's stat scan has
    started, because the source's tar may read only after that. Then it makes the manifest
    builder, whose member check notes the tar members' ctimes for that seed.
    """

    def __init__(self, guard: ArchiveGuard, pending: Any, hash_content: bool, sha256: bool) -> None:
        self._guard = guard
        self._pending = pending
        self._hash_content = hash_content
        self._sha256 = sha256
        self.seed: Any = None
        # With a pending seed, the builder is made by open(), before the first chunk.
        self.builder: ManifestBuilder | None = None if pending is not None else self._new_builder()

    def open(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self.seed = pending.wait()
        self.builder = self._new_builder()

    def stream_digest(self) -> str:
        """Return the builder's xxh3-128 digest of the stream, so the relay need not hash it too."""
        assert self.builder is not None
        return self.builder.stream_digest

    def close(self) -> None:
        """Discard the seed after a failed copy."""
        if self._pending is not None:
            self._pending.close()
            self._pending = None
        if self.seed is not None:
            self.seed.close()

    def _new_builder(self) -> ManifestBuilder:
        member_check = self._guard.check
        if self.seed is not None:
            member_check = self.seed.member_check(member_check)
        # The piece size is read here, not bound at import, so that tests can shrink it.
        return ManifestBuilder(hash_content=self._hash_content, sha256=self._sha256,
                               member_check=member_check, piece_bytes=piecehash.PIECE_BYTES)


def staging_name(task_id: str, position: int) -> str:
    """Return the staging volume name of one item: valid for Docker and unique per task."""
    return f"{STAGING_PREFIX}-{task_id}-{position}"


class StagedVolumes:
    """Copy, verify and promote the volumes of one TaskRunner."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.probes = HostProbes()
        self.python = hostverify.PythonProbes()
        self.routes: dict[int, Route] = {}
        self.policy = writers.WriterPolicy.from_options(runner.task.spec.options)
        self.compression = CompressionChooser(runner)
        # Hash cache rows of verified staging volumes by item position, stored on promotion.
        self.target_seeds: dict[int, hashseed.ScanSeed] = {}
        # Verify scans started during the copy, then kept for the move, by item position.
        self.scan_sessions: dict[int, hostverify.ScanSession] = {}
        # The direct route's source scans, started with the stream, by item position.
        self.source_scans: dict[int, direct.SourceScan] = {}

    @property
    def task_id(self) -> str:
        return self.runner.task.id

    # Prepare

    def start_host_probes(self, free_space_path: str | None = None) -> None:
        """Start the host probes of both hosts, which also check python3 for the host scans.

        The target gets a separate python3 probe, after its own, only when its host probe
        found no usable python3 (that probe logs why). They run in threads while prepare inspects volumes through the engines; route()
        waits for them. The source's probe also checks that its volumes' mountpoints are
        readable. With `--data-path engine` the source's host is not probed. The target's
        probe, when begin_host_probe() started it, also reads the free space under
        `free_space_path`.
        """
        runner = self.runner
        # The callbacks run in the probes' threads and use these engines, not runner.source
        # and runner.target, which would open new connections once the runner closed them.
        source, target = runner.source, runner.target
        if runner.task.spec.options.get("data_path", "auto") != "engine":
            volumes_found = (self._inspect_source(item.source) for item in runner.task.items)
            mountpoints = tuple(volume.mountpoint for volume in volumes_found
                                if volume is not None and volume.mountpoint)

            def record_source_python(probe: Any) -> None:
                if probe.access is not None and probe.python3:
                    self.python.record(source, True)

            self.probes.start(source, mountpoints, then=record_source_python)

        def start_python(probe: Any) -> None:
            if probe.access is not None and probe.python3:
                self.python.record(target, True)
            elif probe.access is not None:
                self.python.start(target, probe.access)

        self.probes.start(target, then=start_python, free_space_path=free_space_path)
        self.probes.close()  # a probe begun for a host that is not probed

    def begin_host_probe(self, host_name: str, ssh: Any) -> None:
        """Start the probe of a host that start_host_probes() will probe, on its new SSH connection.

        Called by TaskRunner.connect_hosts in the host's connecting thread (see
        ddmdriver.earlyprobe for why). The source is probed only off the engine data path.
        """
        spec = self.runner.task.spec
        engine_only = spec.options.get("data_path", "auto") == "engine"
        if host_name == spec.target_host or (host_name == spec.source_host and not engine_only):
            self.probes.begin(host_name, ssh)

    def check_writers(self, item: TaskItem) -> list[writers.Writer]:
        """Return the running writers of the item's source volume; reject them without a policy."""
        found = writers.running_writers(self.runner.source, item.source)
        if found and not self.policy.live and self.policy.quiesce is None:
            writers.reject_running_writers(self.runner.task.spec.source_host, item.source, found)
        return found

    def route(self, item: TaskItem) -> Route:
        """Choose (once per run) the data path of an item and warn about what it loses."""
        if item.position in self.routes:
            return self.routes[item.position]

        source, target = self.runner.source, self.runner.target
        volume = self._inspect_source(item.source)
        if volume is None:
            raise MigrationFailed(f"volume {item.source!r} not found on {source.host.name} any more",
                                  hint="the source volume was removed during the task; roll back")
        requested = self.runner.task.spec.options.get("data_path", "auto")
        route = choose_route(source, target, volume, requested, self.probes)
        if direct.requested(self.runner):
            direct.check_route(item, route)
        self.routes[item.position] = route

        self.runner.record("info", "data_path", f"volume {item.source!r}: data path "
                           f"{route.data_path.value} ({route.reason})", position=item.position)
        if route.target_access is not None:
            self.python.start(target, route.target_access)
        if route.data_path is DataPath.ENGINE:
            self._warn_about_sockets(item, volume)
        lost = loses(route.data_path)
        if lost:
            self.runner.warn(f"volume {item.source!r} is copied through the Engine API "
                             f"({route.reason}); it loses {', '.join(lost)}")
        self.compression.choose(item, route)
        return route

    def _inspect_source(self, name: str) -> Any:
        """Inspect a source volume, reusing the inspection of the running prepare phase if any."""
        inspections = getattr(self.runner, "source_inspections", None)
        if inspections is None:
            return self.runner.source.volume_inspect(name)
        return inspections.inspect(self.runner.source, name)

    def _warn_about_sockets(self, item: TaskItem, volume: Any) -> None:
        """Warn about sockets that the engine skips without notice, where the host lets DDM look."""
        from ddmdriver.hostpath import check_directory, find_sockets

        access = self.probes.probe(self.runner.source).access
        if access is None or not volume.mountpoint:
            return
        if not check_directory(self.runner.source, access, volume.mountpoint):
            return
        for path in find_sockets(self.runner.source, access, volume.mountpoint):
            self.runner.warn(f"volume {item.source!r}: socket ./{path} skipped (sockets cannot be "
                             "copied; the program that owns it creates it again)")

    # Copy

    def copy_item(self, item: TaskItem, check: volumes.VolumeCheck, counter: Any) -> tuple[Manifest, int, str]:
        """Copy one volume into its staging volume, handling running writers by policy."""
        route = self.route(item)
        self._start_early_scan_session(item, route, check)
        try:
            return self._copy_with_writers(item, check, route, counter)
        except BaseException:
            self.close_scan_session(item)
            raise

    def _copy_with_writers(self, item: TaskItem, check: volumes.VolumeCheck, route: Route,
                           counter: Any) -> tuple[Manifest, int, str]:
        found = self.check_writers(item)
        stopped: list[writers.Writer] = []
        if found and not self.policy.live:
            stopped = self._quiesce(found)

        # _changed_since compares the copy's manifest with the source after a live copy.
        manifest_needed = bool(found) and self.policy.live
        try:
            try:
                manifest, byte_count, digest, changed = self._copy_once(
                    item, check, route, counter, manifest_needed=manifest_needed)
            except TransferFailed as error:
                # moby's archive writer fails when a file grows or shrinks while it is read.
                if not (found and self.policy.live and self.policy.quiesce):
                    raise
                manifest, changed = Manifest(), [f"(the live copy failed: {error})"]
            if found and self.policy.live and not changed:
                changed = self._changed_since(item, route, manifest)
            if changed and not stopped:
                if self.policy.quiesce is None:
                    self._reject_changed(item, changed)
                self.runner.warn(f"volume {item.source!r}: {counted(len(changed), 'file')} changed during the "
                                 f"copy ({_first(changed)}); copying again with the writers "
                                 f"{'paused' if self.policy.quiesce == 'pause' else 'stopped'}")
                stopped = self._quiesce(writers.running_writers(self.runner.source, item.source))
                counter.done = 0
                manifest, byte_count, digest, changed = self._copy_once(item, check, route, counter)
            if changed:
                self._reject_changed(item, changed)
        finally:
            if stopped:
                self._release()
        return manifest, byte_count, digest

    def _copy_once(self, item: TaskItem, check: volumes.VolumeCheck, route: Route,
                   counter: Any, *, manifest_needed: bool = False
                   ) -> tuple[Manifest, int, str, list[str]]:
        staging = self._create_staging(item, check)
        hash_content = self.runner.task.spec.verify is VerifyMode.FULL
        if route.data_path is DataPath.HOST and direct.requested(self.runner):
            # Verify scans the source with hashes anyway and stores its manifest then, so the
            # metadata scan after the stream is needed only without verify or after a live copy.
            staging_directory = self.runner.target.volume_inspect(staging).mountpoint
            scan_source = manifest_needed or self.runner.task.spec.verify is VerifyMode.NONE
            self._start_source_scan(item, route, start=not scan_source)
            if item.position in self.scan_sessions:
                self._follow_with_scan_session(item, route, staging_directory)
            try:
                return direct.copy_item(self.runner, item, staging_directory, route, counter,
                                        scan_source=scan_source,
                                        before_stream=lambda: self._wait_scan_session(item))
            except BaseException:
                self.close_source_scan(item)
                raise

        # The SHA-256 per file costs controller CPU; it is only computed for a host-side verify.
        staging_volume = self.runner.target.volume_inspect(staging)
        sha256 = hash_content and self.scan_access(route, staging_volume) is not None
        if route.data_path is DataPath.HOST:
            return self._copy_host(item, staging, route, hash_content, counter, sha256)

        staged_item = dataclasses.replace(item, target=staging)
        manifest, byte_count, digest = volumes.copy_volume(
            self.runner.source, self.runner.target, staged_item, task_id=self.task_id,
            hash_content=hash_content, on_chunk=counter.add, sha256=sha256,
        )
        volumes.remove_volume_helpers(self.runner.source, self.task_id, item.source)
        volumes.remove_volume_helpers(self.runner.target, self.task_id, staging)
        return manifest, byte_count, digest, []

    def _copy_host(self, item: TaskItem, staging: str, route: Route, hash_content: bool,
                   counter: Any, sha256: bool) -> tuple[Manifest, int, str, list[str]]:
        from ddmdriver.hostpath import relay_host_archive

        target_directory = self.runner.target.volume_inspect(staging).mountpoint
        # The stream's SHA-256 of each file, with a stat-only scan beside the copy, seeds the
        # hash cache of incremental re-migrations (ddmsyncer.hashseed). The scan starts now,
        # and the source's tar reads the volume once the scan has written its start time.
        pending = None
        if sha256:
            pending = hashseed.PendingSourceSeed.open(self.runner.source, route.source_access,
                                                      route.source_directory)
        # The builder parses the stream once for the manifest and the guard's checks.
        guard = ArchiveGuard(ROOT, description=f"volume {item.source!r}")
        copy = _HostCopy(guard, pending, hash_content, sha256)

        def observe(chunk: memoryview) -> None:
            copy.builder.feed(chunk)
            counter.add(len(chunk))

        if sha256:
            self._follow_with_scan_session(item, route, target_directory)
        else:
            self.close_scan_session(item)
        try:
            self._wait_scan_session(item)
            result = relay_host_archive(
                self.runner.source, route.source_access, route.source_directory,
                self.runner.target, route.target_access, target_directory,
                observers=[observe],
                codec=self.compression.codec_for(item),
                gate=copy.open if pending is not None else None,
                stream_digest=copy.stream_digest,
            )
            manifest = copy.builder.close()
        except BaseException:
            copy.close()
            self.close_scan_session(item)
            raise
        seed = copy.seed
        self.compression.record_result(item, result.relay.bytes, result.wire_bytes)
        for path in result.skipped_sockets:
            self.runner.warn(f"volume {item.source!r}: socket {path} skipped (sockets cannot be "
                             "copied; the program that owns it creates it again)")
        if seed is not None:
            scope = hashcache.cache_scope(self.runner.source, route.source_directory)
            try:
                hashseed.store_rows(self.runner.store, scope, seed.rows(manifest))
            finally:
                seed.close()
        return manifest, result.relay.bytes, result.relay.stream_digest, result.changed_paths

    def _start_early_scan_session(self, item: TaskItem, route: Route, check: volumes.VolumeCheck) -> None:
        """Start the target's verify scan before the staging volume exists, when it will be scanned.

        SSH's command start and python3's start then overlap the staging volume's creation,
        and the copy names the directory once it exists. The relay route's verify hashes the
        target only with --verify full; the direct route's with quick too.
        """
        plain_local = check.source_driver == "local" and not check.source_options
        verify = self.runner.task.spec.verify
        hashed = (verify is not VerifyMode.NONE if direct.requested(self.runner)
                  else verify is VerifyMode.FULL)
        if (route.data_path is not DataPath.HOST or not hashed or not plain_local
                or route.target_access is None
                or not self.python.available(self.runner.target, route.target_access)):
            return
        self._start_scan_session(item, route, None)

    def _follow_with_scan_session(self, item: TaskItem, route: Route, directory: str) -> None:
        """Let the early verify scan follow `directory`, or start a scan of it."""
        session = self.scan_sessions.get(item.position)
        if session is not None and session.directory is None:
            try:
                session.follow(directory)
                return
            except OSError as error:
                log.info("early verify scan cannot follow %s, starting another: %s", directory, error)
        self._start_scan_session(item, route, directory)

    def _start_scan_session(self, item: TaskItem, route: Route, directory: str | None) -> None:
        """Start the target's verify scan of `directory`, to wait until the copy is done."""
        self.close_scan_session(item)
        try:
            self.scan_sessions[item.position] = hostverify.ScanSession(
                self.runner.target, route.target_access, directory, hash_content=True, keys=True,
                piece_bytes=piecehash.PIECE_BYTES)
        except DDMError as error:
            log.info("verify scan of %s not started early: %s", directory, error)

    def _wait_scan_session(self, item: TaskItem) -> None:
        """Wait until the verify scan follows the staging directory, before tar writes to it.

        The scan hashes large files while tar writes them only when it saw them created.
        """
        session = self.scan_sessions.get(item.position)
        if session is None:
            return
        started = time.monotonic()
        ready = session.wait_ready(hostverify.READY_TIMEOUT_SECONDS)
        log.info("verify scan of %s %s after %.3f s", session.name,
                 "ready" if ready else "not ready", time.monotonic() - started)

    def _start_source_scan(self, item: TaskItem, route: Route, *, start: bool) -> None:
        """Start the direct route's source scan for verify, when python3 runs on the source."""
        self.close_source_scan(item)  # a repeated copy starts a new scan
        if start and self.python.available(self.runner.source, route.source_access):
            self.source_scans[item.position] = direct.SourceScan(
                self.runner, route.source_access, route.source_directory)

    def close_source_scan(self, item: TaskItem) -> None:
        scan = self.source_scans.pop(item.position, None)
        if scan is not None:
            scan.close()

    def close_scan_session(self, item: TaskItem) -> None:
        session = self.scan_sessions.pop(item.position, None)
        if session is not None:
            session.close()

    def _create_staging(self, item: TaskItem, check: volumes.VolumeCheck) -> str:
        """Create an empty staging volume, recorded in the task's state before it exists."""
        target = self.runner.target
        name = staging_name(self.task_id, item.position)
        self._record_staging(name)
        if target.volume_inspect(name) is not None:
            volumes.remove_volume_helpers(target, self.task_id, name)
            target.volume_remove(name)

        labels = {**check.source_labels, STAGING_LABEL: self.task_id}
        target.volume_create(name, driver=check.source_driver, driver_opts=check.source_options,
                             labels=labels)
        return name

    def _record_staging(self, name: str) -> None:
        store = self.runner.store
        with _EXTRA_LOCK:
            recorded = list(store.get_extra(self.task_id).get("staging_volumes", []))
            if name not in recorded:
                store.set_extra(self.task_id, staging_volumes=[*recorded, name])

    # Live data

    def _changed_since(self, item: TaskItem, route: Route, manifest: Manifest) -> list[str]:
        """Return the paths whose type, size or mtime differ from the copied stream now."""
        if route.data_path is DataPath.HOST:
            from ddmdriver.hostpath import scan_metadata

            states = scan_metadata(self.runner.source, route.source_access, route.source_directory)
            now = {path: (state.size if state.type == "f" else 0, state.mtime_ns)
                   for path, state in states.items() if state.type != "s"}
            then = {path: (entry.size if entry.type in ("file", "hardlink") else 0, entry.mtime_ns)
                    for path, entry in manifest.entries.items()}
        else:
            # NOTE: the Engine API archive has whole-second mtimes, so a rewrite that keeps
            # the size within the same second as the copy is not seen here.
            current = volumes.read_manifest(self.runner.source, item.source, task_id=self.task_id,
                                            hash_content=False)
            now = {path: (entry.size, entry.mtime_ns) for path, entry in current.entries.items()}
            then = {path: (entry.size, entry.mtime_ns) for path, entry in manifest.entries.items()}

        changed = [path for path in sorted(now.keys() | then.keys())
                   if path != b"." and now.get(path) != then.get(path)]
        return [display_path(path) for path in changed]

    def _reject_changed(self, item: TaskItem, changed: list[str]) -> None:
        raise TransferFailed(
            f"volume {item.source!r}: {counted(len(changed), 'file')} changed while they were copied: "
            f"{_first(changed)}",
            hint="the copy was discarded; pass --stop-writers or --pause with --live to copy "
            "them again with the writers stopped",
        )

    def _quiesce(self, found: list[writers.Writer]) -> list[writers.Writer]:
        action = self.policy.quiesce or "stop"
        store = self.runner.store
        with _EXTRA_LOCK:
            recorded = store.get_extra(self.task_id).get("stopped_writers", {})
            ids = sorted(set(recorded.get("ids", [])) | {writer.id for writer in found})
            store.set_extra(self.task_id, stopped_writers={"action": action, "ids": ids})
        self.runner.record("info", "writers", f"{action} containers {writers.describe(found)} "
                           "for the copy")
        writers.quiesce(self.runner.source, found, action)
        return found

    def _release(self) -> None:
        release_writers(self.runner)

    # Verify and promote

    def verify_and_promote(self, item: TaskItem, source_manifest: Manifest) -> None:
        """Verify the staging volume, then give the data its real name."""
        mode = self.runner.task.spec.verify
        route = self.route(item)
        staging = staging_name(self.task_id, item.position)
        if self.runner.target.volume_inspect(staging) is None:
            raise MigrationFailed(f"staging volume {staging!r} of {item.target!r} is missing",
                                  hint=f"roll back with 'ddmctl rollback {self.task_id}' and retry")

        try:
            if mode is VerifyMode.NONE:
                self.runner.warn(f"volume {item.target!r} was not verified (--verify none)")
            elif direct.requested(self.runner):
                source_manifest = self.verify_direct(item, staging, route, mode)
            else:
                source_manifest = self.verify_staging(item, staging, route, source_manifest, mode)

            self.promote(item, staging, route, source_manifest, mode)
        finally:
            self.close_scan_session(item)
            self.close_source_scan(item)

    def verify_direct(self, item: TaskItem, staging: str, route: Route, mode: VerifyMode) -> Manifest:
        """Verify a volume that went host to host by scanning both hosts; return the source's manifest.

        No byte passed the controller, so both sides are always hashed on their own hosts, also
        with --verify quick. The source's scan normally started with the stream
        (direct.SourceScan), so only the target is scanned now. The manifest scan compares
        every aspect of the host data path (xattrs, ACLs and holes included). When the python3
        probe fails on a host, or the volume is not a plain local directory, the metadata
        scans of ddmsyncer.direct are the fallback. The source's manifest, without content
        digests, becomes the item's stored manifest.

        NOTE: that fallback also runs python3 on both hosts, so it only helps when the probe
        failed for a passing reason. The direct route does not check python3 before the copy.
        """
        volume = self.runner.target.volume_inspect(staging)
        source, target = self.runner.source, self.runner.target
        scannable = (hostverify.plain_local_volume(volume)
                     and self.python.available(source, route.source_access)
                     and self.python.available(target, route.target_access))
        if not scannable:
            self.close_scan_session(item)
            self._record_verify(item, DIRECT_METADATA_SCAN, 0)
            verified = direct.verify_staging(self.runner, item, route.source_directory,
                                             volume.mountpoint, mode)
            self.runner.replace_manifest(item, direct.metadata_only(verified))
            return verified

        scans: dict[str, hostverify.HostScan] = {}
        seeds = {"target": hashseed.ScanSeed()}
        early = self.source_scans.get(item.position)  # closed by verify_and_promote
        stored: list[Manifest] = []

        def scan_source() -> None:
            if early is not None:
                # Its thread stored the seed. The item's record is stored while the target
                # is scanned, because that scan takes longer.
                scans["source"] = early.result()
                stored.append(early.store_manifest(self.task_id, item.position, mode))
                return
            seeds["source"] = hashseed.ScanSeed()
            scans["source"] = hostverify.scan_manifest(source, route.source_access,
                                                       route.source_directory, hash_content=True,
                                                       on_record=seeds["source"].add)

        def scan_target() -> None:
            session = self.scan_sessions.get(item.position)
            if session is not None and session.directory == volume.mountpoint:
                scans["target"] = session.scan(on_record=seeds["target"].add)
                return
            self.close_scan_session(item)
            scans["target"] = hostverify.scan_manifest(target, route.target_access,
                                                       volume.mountpoint, hash_content=True,
                                                       on_record=seeds["target"].add)

        try:
            direct.run_both(scan_source, scan_target)
        except BaseException:
            for seed in seeds.values():
                seed.close()
            raise
        listing_bytes = scans["source"].listing_bytes + scans["target"].listing_bytes
        self._record_verify(item, hostverify.HOST_SCAN, listing_bytes,
                            followed_bytes=scans["target"].followed_bytes)
        check_manifests(scans["source"].manifest, scans["target"].manifest, item,
                        verify_aspects(DataPath.HOST, deep=True), staging)
        if early is None:
            hashseed.store_rows(self.runner.store,
                                hashcache.cache_scope(source, route.source_directory),
                                seeds["source"].rows())
            seeds["source"].close()
            self.runner.replace_manifest(item, direct.recorded_manifest(scans["source"].manifest,
                                                                        mode))
        else:
            self.runner.remember_manifest(item, stored[0])
        self.target_seeds[item.position] = seeds["target"]
        return scans["source"].manifest

    def scan_access(self, route: Route, volume: Any) -> Any:
        """Return the target's HostAccess when verify can scan `volume` on the target host, else None."""
        access = route.target_access
        if access is None or not hostverify.plain_local_volume(volume):
            return None
        return access if self.python.available(self.runner.target, access) else None

    def verify_staging(self, item: TaskItem, staging: str, route: Route, source_manifest: Manifest,
                       mode: VerifyMode) -> Manifest:
        """Compare the staging volume with the source manifest; return the manifest to promote with.

        Scans the staging volume on the target host when it can (see ddmsyncer.hostverify),
        else reads its archive back through the controller. Raises VerificationFailed.
        """
        full = mode is VerifyMode.FULL
        aspects = verify_aspects(route.data_path, deep=full)
        volume = self.runner.target.volume_inspect(staging)
        access = self.scan_access(route, volume)
        if access is not None:
            # The SHA-256 view of the source manifest is built while the target host scans. It
            # is None only when the copy computed no SHA-256, and then verify reads back.
            view = hostverify.SHA256ViewThread(source_manifest) if full else None
            seed = hashseed.ScanSeed() if full else None
            session = self.scan_sessions.get(item.position)
            try:
                if full and session is not None and session.directory == volume.mountpoint:
                    scan = session.scan(on_record=seed.add if seed is not None else None)
                else:
                    self.close_scan_session(item)
                    scan = hostverify.scan_manifest(self.runner.target, access, volume.mountpoint,
                                                    hash_content=full,
                                                    on_record=seed.add if seed is not None else None,
                                                    piece_bytes=piecehash.PIECE_BYTES)
            finally:
                if view is not None:
                    view.join()
            expected = view.result() if view is not None else source_manifest
            if expected is not None:
                self._record_verify(item, hostverify.HOST_SCAN, scan.listing_bytes,
                                    followed_bytes=scan.followed_bytes)
                check_manifests(expected, scan.manifest, item, aspects, staging)
                if seed is not None:
                    self.target_seeds[item.position] = seed
                return source_manifest

        target_manifest = self.read_staging_manifest(staging, route, mode, item)
        self._record_verify(item, hostverify.READ_BACK, target_manifest.bytes_fed)
        check_manifests(source_manifest, target_manifest, item, aspects, staging)
        return target_manifest

    def _record_verify(self, item: TaskItem, method: str, wire_bytes: int, *,
                       followed_bytes: int = 0) -> None:
        """Record how a volume was verified and how many bytes verify read over the wire.

        `followed_bytes` is the content that the target host hashed while the copy wrote it.
        """
        if method == DIRECT_METADATA_SCAN:
            description = "python3 is missing on a host, so xattrs, ACLs and holes are not compared"
        elif method == hostverify.HOST_SCAN and direct.requested(self.runner):
            description = (f"scanned on {self.runner.task.spec.source_host} and "
                           f"{self.runner.task.spec.target_host} with python3, {wire_bytes} "
                           f"bytes of listing, {followed_bytes} bytes hashed on "
                           f"{self.runner.task.spec.target_host} during the copy")
        elif method == hostverify.HOST_SCAN:
            description = (f"scanned on {self.runner.task.spec.target_host} with python3, "
                           f"{wire_bytes} bytes of listing, {followed_bytes} bytes hashed "
                           f"during the copy")
        else:
            description = f"archive read back through the controller, {wire_bytes} bytes"
        self.runner.record("info", "verify_method", f"volume {item.target!r}: verify "
                           f"{self.runner.task.spec.verify.value} by {method} ({description})",
                           position=item.position, method=method, wire_bytes=wire_bytes)
        store = self.runner.store
        with _VERIFY_LOCK:
            records = dict(store.get_extra(self.task_id).get(VERIFY_EXTRA_KEY) or {})
            records[str(item.position)] = {"method": method, "wire_bytes": wire_bytes,
                                           "followed_bytes": followed_bytes}
            store.set_extra(self.task_id, **{VERIFY_EXTRA_KEY: records})

    def read_staging_manifest(self, staging: str, route: Route, mode: VerifyMode,
                              item: TaskItem | None = None) -> Manifest:
        """Read the staging volume's manifest; on the host path, compressed like the item's copy."""
        hash_content = mode is VerifyMode.FULL
        if route.data_path is DataPath.HOST:
            from ddmdriver.hostpath import read_host_manifest

            directory = self.runner.target.volume_inspect(staging).mountpoint
            return read_host_manifest(self.runner.target, route.target_access, directory,
                                      hash_content=hash_content,
                                      codec=self.compression.codec_for(item) if item else None)
        return volumes.read_manifest(self.runner.target, staging, task_id=self.task_id,
                                     hash_content=hash_content)

    def promote(self, item: TaskItem, staging: str, route: Route, verified: Manifest,
                mode: VerifyMode) -> None:
        """Create the real target volume and move (or copy) the verified data into it."""
        target = self.runner.target
        check = self._target_settings(item)
        if target.volume_inspect(item.target) is not None:
            self._remove_replaced_target(item)

        self.runner.update_item(item, target_created=True)
        try:
            volumes.create_target_volume(target, item, check)
        except TargetExists as error:
            # Another client created the name after prepare (or after --force removed the
            # old volume): the volume is not the task's, so the rollback must keep it.
            self.runner.update_item(item, target_created=False)
            raise TargetExists(
                f"volume {item.target!r} appeared on {target.host.name} before DDM could create "
                "it, so another client created it; the task keeps it as it is",
                hint="find out which container or client created it, then remove it or choose "
                "another target name and run the migration again",
            ) from error
        if route.target_access is not None and check.source_driver == "local" and not check.source_options:
            from ddmdriver.hostpath import move_directory

            mountpoint = target.volume_inspect(item.target).mountpoint
            staging_directory = target.volume_inspect(staging).mountpoint
            # The verify scan's script, when it still runs, moves the directory it verified.
            session = self.scan_sessions.pop(item.position, None)
            if session is not None and session.directory == staging_directory:
                session.move(mountpoint)
            else:
                if session is not None:
                    session.close()
                move_directory(target, route.target_access, staging_directory, mountpoint)
            method = "renamed on the host"
            self._store_target_seed(item, route, mountpoint)
        else:
            # The engine's copy gets new inodes and ctimes, so the verify scan's keys are void.
            seed = self.target_seeds.pop(item.position, None)
            if seed is not None:
                seed.close()
            self._copy_on_target(item, staging, route, verified, mode)
            method = "copied by the target engine"

        # The local driver reports the ctime of the volume's data directory as CreatedAt,
        # and the promotion above changes it, so it is read only now.
        self.runner.remember_created_at(target, item)
        target.volume_remove(staging)
        self.runner.record("info", "promoted", f"staging volume {staging!r} {method} to "
                           f"{item.target!r}", position=item.position)

    def _remove_replaced_target(self, item: TaskItem) -> None:
        """Remove the existing target volume that --force replaces, unless a check rejects it.

        A disk may have been mounted there since prepare, so the mounts are read again first.
        A container may have been created that uses the volume since prepare. Docker then
        rejects the removal before the volume driver deletes anything (dockerd 20.10's volume
        store checks the volume's references first), and the TargetExists raised then names
        those containers.
        """
        target = self.runner.target
        replacecheck.reject_mounted_target(target, self.probes, item)
        volumes.remove_volume_helpers(target, self.task_id, item.target)
        try:
            target.volume_remove(item.target)
        except MigrationFailed:
            replacecheck.reject_used_target(target, self.probes, item)
            raise

    def _store_target_seed(self, item: TaskItem, route: Route, mountpoint: str) -> None:
        """Store the verify scan's hashes under the real volume's mountpoint, after the rename.

        Files the copy wrote within the racy margin before the scan reached them are hashed
        once more first (ScanSeed.rehash_racy). That waits up to the margin, and up to one
        second more when a file's ctime is ahead of the host's clock.
        """
        seed = self.target_seeds.pop(item.position, None)
        if seed is None:
            return
        try:
            seed.rehash_racy(self.runner.target, route.target_access, mountpoint)
            scope = hashcache.cache_scope(self.runner.target, mountpoint)
            hashseed.store_rows(self.runner.store, scope, seed.rows())
        finally:
            seed.close()

    def _target_settings(self, item: TaskItem) -> volumes.VolumeCheck:
        """Return the source volume's driver, options and labels; check the target name again.

        Another client may have created the target name since prepare. The disk usage is not
        read again (it walks every volume of the host).
        """
        source, target = self.runner.source, self.runner.target
        volume = source.volume_inspect(item.source)
        if volume is None:
            raise MigrationFailed(f"volume {item.source!r} not found on {source.host.name} any more",
                                  hint="the source volume was removed during the task; roll back")
        exists = target.volume_inspect(item.target) is not None
        if exists and not self.runner.task.spec.force and not item.target_created:
            raise TargetExists(
                f"volume {item.target!r} was created on host {target.host.name!r} during the copy",
                hint="choose another name with --volume SRC:DST, or pass --force to replace it",
            )
        return volumes.VolumeCheck(source_driver=volume.driver, source_options=dict(volume.options),
                                   source_labels=dict(volume.labels), size_bytes=None,
                                   target_exists=exists)

    def _copy_on_target(self, item: TaskItem, staging: str, route: Route, verified: Manifest,
                        mode: VerifyMode) -> None:
        from ddmdriver.relay import relay_archive

        target = self.runner.target
        labels = {volumes.TASK_LABEL: self.task_id}
        hash_content = mode is VerifyMode.FULL and verified.hash_content
        builder = ManifestBuilder(hash_content=hash_content, strip_prefix=volumes.ARCHIVE_PREFIX)
        reader = target.create_helper(staging, read_only=True, labels=labels)
        writer = target.create_helper(item.target, read_only=False, labels=labels)
        try:
            relay_archive(target, reader, volumes.HELPER_MOUNT, target, writer, "/",
                          observers=[builder.feed])
        finally:
            # Only this volume's helpers: other --parallel workers may be using theirs.
            volumes.remove_volume_helpers(target, self.task_id, staging)
            volumes.remove_volume_helpers(target, self.task_id, item.target)

        if mode is not VerifyMode.NONE:
            aspects = verify_aspects(DataPath.ENGINE, deep=hash_content)
            check_manifests(verified, builder.close(), item, aspects)


def check_manifests(source: Manifest, target: Manifest, item: TaskItem, aspects: tuple[str, ...],
                    staging: str | None = None) -> None:
    """Raise VerificationFailed listing the first differences between two manifests."""
    volumes.raise_on_differences(compare_manifests(source, target, aspects), item, staging)


def release_writers(runner: Any) -> None:
    """Restart or unpause the containers the task stopped, as recorded in its state."""
    store = runner.store
    recorded = store.get_extra(runner.task.id).get("stopped_writers")
    if not recorded or not recorded.get("ids"):
        return
    failed = writers.release(runner.source, list(recorded["ids"]), recorded.get("action", "stop"))
    store.set_extra(runner.task.id, stopped_writers={"action": recorded.get("action"), "ids": failed})
    if failed:
        runner.warn(f"could not restart containers {', '.join(i[:12] for i in failed)} on "
                    f"{runner.task.spec.source_host}; start them by hand")
    else:
        runner.record("info", "writers", "restarted the containers stopped for the copy")


def remove_staging_volumes(runner: Any) -> None:
    """Remove every staging volume the task recorded; a missing one is fine."""
    names = runner.store.get_extra(runner.task.id).get("staging_volumes", [])
    if not names:
        return
    target = runner.target
    volumes.remove_task_helpers(target, runner.task.id)
    for name in names:
        if target.volume_inspect(name) is not None:
            undo.remove_target_volume(target, name, runner.task.id)
            runner.record("info", "rolled_back", f"removed staging volume {name!r} from "
                          f"{runner.task.spec.target_host}")


def _first(paths: list[str]) -> str:
    shown = ", ".join(paths[:MAX_REPORTED_CHANGES])
    more = len(paths) - MAX_REPORTED_CHANGES
    return shown + (f" and {more} more" if more > 0 else "")


def mark_verified(runner: Any, item: TaskItem) -> None:
    runner.update_item(item, state=ItemState.VERIFIED, finished_at=time.time())
