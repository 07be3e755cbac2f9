"""The task runner: executes a stored task phase by phase and rolls back on failure.

Phases of a volumes-mode task: prepare (both engines respond, source volumes exist, target names
are free, the target has room) -> copy (relay each volume's archive, building the source
manifest on the fly) -> migrate (nothing to switch over in volumes mode) -> verify (compare the
target's manifest with the source's) -> cleanup (remove helper containers on both hosts).

Safety rules the runner keeps:
- The source is only read: its helper containers mount volumes read-only and are never started.
- A target volume is recorded as created by the task before it is created, so a rollback (also
  after a crash) removes exactly what the task created and nothing that was there before.
- Bytes that were not verified are never trusted: a resumed task copies again every volume that
  had not passed verification.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from ddm.config import Config
from ddm.errors import (
    Cancelled,
    ConnectionFailed,
    ConnectionLost,
    DDMError,
    Interrupted,
    MigrationFailed,
    TaskConflict,
    TaskNotStarted,
)
from ddm.events import (
    WARNING_EVENT_MARK,
    Event,
    EventCallback,
    ItemFinished,
    ItemStarted,
    PhaseFinished,
    PhaseStarted,
    Progress,
    TaskFinished,
    Warning,
    ignore_event,
)
from ddm.manifest import Manifest, display_path
from ddm.manifest_store import load_task_manifest, save_task_manifest
from ddm.processes import process_alive
from ddm.store import TaskStore
from ddm.task import ItemState, Phase, Task, TaskItem, TaskState, VerifyMode
from ddm.text import counted
from ddmsyncer import (connect, connlost, direct, hashcache, hostquery, incremental, parallel,
                       replacecheck, rerun, rollbackcheck, undo, volumes)
from ddmsyncer.control import wait_while_paused
from ddmsyncer.staged import StagedVolumes, mark_verified, release_writers, remove_staging_volumes

log = logging.getLogger(__name__)

# Serializes read-modify-write of a task's extra state among --parallel worker threads.
_EXTRA_LOCK = threading.Lock()

PROGRESS_EVENT_SECONDS = 0.2
PROGRESS_STORE_SECONDS = 1.0
CONTROL_POLL_SECONDS = 1.0
# Task extra key: an operator's rollback of this task started when it had succeeded.
ROLLBACK_OF_SUCCEEDED = "rollback_of_succeeded"

EngineFactory = Callable[[Any, Config], Any]
Result = TypeVar("Result")


def default_engine_factory(host: Any, config: Config, **options: Any) -> Any:
    """Open the host's engine; `options` are keyword arguments of ddmdriver.engine.open_engine."""
    from ddmdriver.engine import open_engine

    return open_engine(host, config, **options)


def mark_stale_running(store: TaskStore, task: Task) -> Task:
    """Mark a RUNNING task whose runner process is gone as INTERRUPTED, and return it."""
    if task.state is TaskState.RUNNING and not process_alive(task.runner_pid):
        store.update_task(task.id, state=TaskState.INTERRUPTED)
        store.add_event(task.id, "warning", "interrupted",
                        f"runner process {task.runner_pid} is gone; task marked interrupted")
        return store.get_task(task.id)
    return task


def lock_resources(task: Task) -> list[str]:
    """Return the lock names of every volume a task reads or writes."""
    spec = task.spec
    names = []
    for item in task.items:
        names.append(f"{spec.source_host}/volume/{item.source}")
        names.append(f"{spec.target_host}/volume/{item.target}")
    return sorted(set(names))


class TaskRunner:
    """Runs one task to its end: succeeded, or failed and rolled back."""

    def __init__(
        self,
        config: Config,
        store: TaskStore,
        task_id: str,
        on_event: EventCallback = ignore_event,
        engine_factory: EngineFactory = default_engine_factory,
    ) -> None:
        self.config = config
        self._local = threading.local()  # per worker thread of --parallel: engines and store
        self._emit_lock = threading.Lock()
        self.store = store
        self.task = store.get_task(task_id)
        self.on_event = on_event
        self.engine_factory = engine_factory
        self._stack = contextlib.ExitStack()
        self._engines: dict[str, Any] = {}
        self._manifests: dict[int, Manifest] = {}
        self._last_control_poll = 0.0
        self._incremental: dict[int, str] = {}  # item position -> earlier task that copied it
        self._volume_sizes = volumes.VolumeSizes()
        # Set only while prepare() runs. Outside it, every check inspects the source again.
        self.source_inspections: volumes.SourceInspections | None = None
        self.staged = StagedVolumes(self)
        # Target volumes of incremental updates that this process's rollback found gone.
        self.targets_gone_at_restore: list[str] = []

    @property
    def store(self) -> TaskStore:
        """The task database; a worker thread of --parallel has a connection of its own."""
        return getattr(self._local, "store", None) or self._store

    @store.setter
    def store(self, store: TaskStore) -> None:
        self._store = store

    @property
    def store_path(self) -> Any:
        return self._store.path

    @contextlib.contextmanager
    def worker(self, slot: parallel.WorkerSlot) -> Iterator[None]:
        """Let the calling thread use a --parallel slot's engines and task database connection."""
        self._local.engines, self._local.stack, self._local.store = slot.engines, slot.stack, slot.store
        try:
            yield
        finally:
            self._local.engines = self._local.stack = self._local.store = None

    # Engines

    def engine(self, host_name: str) -> Any:
        """Return the open engine of a host, connecting once per host per task (and per worker)."""
        engines = getattr(self._local, "engines", None)
        if engines is not None:
            if host_name not in engines:
                host = self.config.host(host_name)
                engines[host_name] = self._local.stack.enter_context(
                    self.engine_factory(host, self.config)
                )
            return engines[host_name]

        if host_name not in self._engines:
            host = self.config.host(host_name)
            self._engines[host_name] = self._stack.enter_context(
                self.engine_factory(host, self.config)
            )
        return self._engines[host_name]

    def connect_hosts(self, on_ssh_connected: Callable[[str, Any], None] | None = None) -> None:
        """Open the source's and the target's engine at once (see ddmsyncer.connect).

        `on_ssh_connected(host_name, ssh)` runs in each host's connecting thread as soon as
        its SSH connection is authenticated; only the default engine factory calls it.
        """
        spec = self.task.spec
        missing = [name for name in dict.fromkeys([spec.source_host, spec.target_host])
                   if name not in self._engines]
        if len(missing) < 2 or getattr(self._local, "engines", None) is not None:
            return
        opened, error = connect.open_engines(
            lambda name: self._open_engine(name, on_ssh_connected), missing)
        for name, engine in opened.items():
            self._engines[name] = self._stack.enter_context(engine)
        if error is not None:
            raise error

    def _open_engine(self, host_name: str,
                     on_ssh_connected: Callable[[str, Any], None] | None) -> Any:
        host = self.config.host(host_name)
        if on_ssh_connected is None or self.engine_factory is not default_engine_factory:
            return self.engine_factory(host, self.config)
        return default_engine_factory(
            host, self.config, on_ssh_connected=lambda ssh: on_ssh_connected(host_name, ssh))

    def reconnect(self, host_name: str) -> Any:
        """Close the engine of a host and connect to it again; return the new engine."""
        engine = self._engines.pop(host_name, None)
        if engine is not None:
            with contextlib.suppress(Exception):
                engine.close()
        return self.engine(host_name)

    def on_host(self, host_name: str, action: Callable[[Any], Result]) -> Result:
        """Run `action(engine)`; if the open connection to the host was lost, reconnect once and retry.

        Meant for idempotent steps of cleanup and rollback, which must still run after a fault
        broke the connection that the copy used. A host this runner could not connect to at
        all is not tried again, and a second ConnectionFailed is raised.
        """
        connected = host_name in self._engines
        try:
            return action(self.engine(host_name))
        except ConnectionFailed as error:
            if not connected:
                raise
            # A retry, not a fault yet: logged at INFO, so the default output shows only the
            # error of the second attempt if that fails too.
            self.record("info", "reconnect", f"connection to {host_name} lost ({error.message}); "
                        "connecting once more")
            return action(self.reconnect(host_name))

    @property
    def source(self) -> Any:
        return self.engine(self.task.spec.source_host)

    @property
    def target(self) -> Any:
        return self.engine(self.task.spec.target_host)

    # Events and state

    def emit(self, event: Event) -> None:
        """Send an event to the callback. An exception it raises aborts the task, which rolls back."""
        with self._emit_lock:
            self.on_event(event)

    def emit_safely(self, event: Event) -> None:
        """Send an event during rollback or at the end: a failing callback is logged, not raised."""
        try:
            with self._emit_lock:
                self.on_event(event)
        except Exception:  # noqa: BLE001 - the rollback must run to its end
            log.exception("event callback failed on %s during rollback", event.kind)

    def record(self, level: str, kind: str, message: str, **data: Any) -> None:
        log.log(logging.WARNING if level == "warning" else logging.INFO, "task %s: %s",
                self.task.id, message)
        self.store.add_event(self.task.id, level, kind, message, data or None)

    def warn(self, message: str) -> None:
        # The mark lets a command that shows Warning events leave this log record out.
        log.warning("task %s: %s", self.task.id, message, extra={WARNING_EVENT_MARK: True})
        self.store.add_event(self.task.id, "warning", "warning", message, None)
        self.emit_safely(Warning(self.task.id, message=message))

    def warn_once(self, message: str) -> None:
        """Warn, unless an earlier run of this task gave the same warning.

        A resumed full-mode task runs every step again, so its warnings about one object
        would repeat what the operator has already read.
        """
        if self.store.has_event(self.task.id, "warning", message):
            log.debug("task %s: warning given by an earlier run, not repeated: %s",
                      self.task.id, message)
            return
        self.warn(message)

    def set_phase(self, phase: Phase) -> None:
        self.task.phase = phase
        self.store.update_task(self.task.id, phase=phase)
        self.record("info", "phase", f"phase {phase.value} started")
        self.emit(PhaseStarted(self.task.id, phase=phase.value))

    def update_item(self, item: TaskItem, **fields: Any) -> None:
        for key, value in fields.items():
            setattr(item, key, value)
        self.store.update_item(self.task.id, item.position, **fields)

    @contextlib.contextmanager
    def phase(self, phase: Phase) -> Iterator[None]:
        started = time.monotonic()
        self.set_phase(phase)
        yield
        self.emit(PhaseFinished(self.task.id, phase=phase.value,
                                seconds=time.monotonic() - started))

    def check_control(self, force: bool = False) -> None:
        """Raise Cancelled when `ddmctl cancel` asked this task to stop, and block while paused.

        Polled about once a second; see ddmsyncer.control for why the safe points are safe.
        """
        now = time.monotonic()
        if not force and now - self._last_control_poll < CONTROL_POLL_SECONDS:
            return
        self._last_control_poll = now
        control = self.store.get_task(self.task.id).control
        if control == "cancel":
            raise Cancelled(f"task {self.task.id} was cancelled", hint="the target was rolled back")
        if control == "pause":
            wait_while_paused(self)

    # Running

    def lock_names(self) -> list[str]:
        """Return the names of the locks this task holds while it runs."""
        return lock_resources(self.task)

    def rollback_lock_names(self) -> list[str]:
        """Return the names of the locks that `ddmctl rollback` of this task holds, targets first.

        A rollback removes or restores the target volumes. It locks the source volumes only
        when it will start containers that --stop-writers stopped, because those write them.
        A lock conflict names the first lock taken, so a target volume comes first.
        """
        spec = self.task.spec
        targets = sorted({f"{spec.target_host}/volume/{item.target}" for item in self.task.items})
        stopped = self.store.get_extra(self.task.id).get("stopped_writers") or {}
        if not stopped.get("ids"):
            return targets
        sources = {f"{spec.source_host}/volume/{item.source}" for item in self.task.items}
        return targets + sorted(sources - set(targets))

    def rollback_engine_lock_names(self) -> list[str]:
        """Return rollback_lock_names() by Docker engine ID, for each host that can be reached.

        A task that reached the same engine through another host name locked its volumes by
        engine ID (see volumes.engine_lock_names). A host that cannot be reached is left out,
        because the rollback meets that error itself and reports it.
        """
        spec = self.task.spec
        engine_ids: dict[str, str] = {}
        for host_name in dict.fromkeys([spec.target_host, spec.source_host]):
            try:
                engine_ids[host_name] = volumes.engine_id(self.engine(host_name))
            except DDMError as error:
                log.info("no engine ID of %s for the rollback's locks: %s", host_name, error)
        return volumes.engine_lock_names(self.rollback_lock_names(), engine_ids)

    def run(self) -> Task:
        """Run the task's phases; on any failure roll back, then re-raise the error."""
        self.task = before = mark_stale_running(self.store, self.task)
        undo.reject_resume_of_rollback(self.store, self.task)
        claimable = (TaskState.QUEUED, TaskState.INTERRUPTED)
        if not self.store.claim_task(self.task.id, os.getpid(), claimable):
            raise TaskNotStarted(
                f"task {self.task.id} is {self.task.state.value}, not queued or interrupted",
                hint="only queued or interrupted tasks can run; see 'ddmctl status "
                f"{self.task.id}'",
            )
        if before.state is TaskState.INTERRUPTED:
            self._lock_before_resume(before)
        self.task = self.store.get_task(self.task.id)
        self.record("info", "started", f"task started by process {os.getpid()}")

        try:
            self.store.acquire_locks(self.task.id, self.lock_names())
            self._run_phases()
        except BaseException as error:
            replacement = connlost.as_task_error(self, error)
            self._finish_failed(replacement or error)
            take_rollback_failure(replacement or error, self.task)
            if replacement is None:
                raise
            raise replacement from error
        finally:
            self._close()

        self._finish(TaskState.SUCCEEDED, None)
        return self.task

    def _lock_before_resume(self, before: Task) -> None:
        """Take an interrupted task's locks before its resume undoes or repeats anything.

        A task whose rollback failed has released its locks, so another task may hold one of
        its volumes now. The resume then stops here and leaves the task interrupted as it
        was: undoing the earlier run (a failure's rollback, or full mode's restart) could
        change a volume that the other task uses.
        """
        names = sorted(set(self.lock_names()) | set(self.rollback_lock_names()))
        try:
            self.store.acquire_locks(self.task.id, names)
        except TaskConflict as conflict:
            _unclaim(self.store, before, [])
            raise TaskNotStarted(conflict.message, hint=conflict.hint) from conflict

    def _run_phases(self) -> None:
        with self.phase(Phase.PREPARE):
            checks = self.prepare()
        with self.phase(Phase.COPY):
            self.copy(checks)
        with self.phase(Phase.MIGRATE):
            pass  # NOTE: volumes mode switches nothing over; full mode stops and starts containers here.
        with self.phase(Phase.VERIFY):
            self.verify()
        with self.phase(Phase.CLEANUP):
            self.cleanup()
            # Containers that an interrupted earlier run stopped are started again here.
            release_writers(self)

    def pending_items(self) -> list[TaskItem]:
        """Return the volumes still to copy: every one that has not passed verification.

        This is where a resumed task decides what to trust. Only VERIFIED volumes are kept.
        A volume that an earlier run copied in full (COPIED) or in part (COPYING) is copied
        again from the start, because bytes that were never verified may be torn or stale.
        """
        done = (ItemState.VERIFIED, ItemState.UNVERIFIED)
        return [item for item in self.task.items if item.state not in done]

    def prepare(self) -> dict[int, volumes.VolumeCheck]:
        """Check both hosts and every volume; change nothing but this task's own leftovers.

        The only change is removing helper containers that an earlier run of this task left
        behind (a runner killed mid-copy cannot remove them), so that a resumed task can
        replace the target volumes that those helpers still mount.
        """
        self.source_inspections = volumes.SourceInspections()
        try:
            return self._prepare()
        finally:
            self.source_inspections = None

    def _prepare(self) -> dict[int, volumes.VolumeCheck]:
        self.connect_hosts(self.staged.begin_host_probe)
        source_facts, target_facts = hostquery.query_hosts([self.source, self.target], self.task.id)
        free_space_path = target_facts.volumes_root
        self.staged.start_host_probes(free_space_path)
        free_space = volumes.FreeSpaceQuery(self.target, free_space_path, self.staged.probes)
        volumes.reject_overlap(self.source, self.target, self.task.items,
                               engine_ids=(source_facts.engine_id, target_facts.engine_id))
        # Before anything on either host changes, so that a conflict changes nothing.
        engine_ids = {self.task.spec.source_host: source_facts.engine_id,
                      self.task.spec.target_host: target_facts.engine_id}
        self.store.acquire_locks(self.task.id,
                                 volumes.engine_lock_names(self.lock_names(), engine_ids))
        for engine, facts in {id(self.source): (self.source, source_facts),
                              id(self.target): (self.target, target_facts)}.values():
            if facts.helpers_removed:
                self.record("info", "helpers_removed",
                            f"removed {counted(facts.helpers_removed, 'helper container')} "
                            f"of an earlier run on {engine.host.name}")

        self._incremental = incremental.select_items(self)
        rerun.mark_unchanged_volumes(self)  # a re-run of a finished task sends nothing
        checks: dict[int, volumes.VolumeCheck] = {}
        pending = self.pending_items()
        if parallel.worker_count(self, pending) > 1:
            parallel.run_items(self, pending, lambda item: self._check_item(item, checks), "checking")
        else:
            for item in pending:
                checks[item.position] = self._check_volume(item)
            for item in pending:
                self._check_route(item)

        # NOTE: an incremental update needs room for changed files only; it is not checked,
        # and its volume is not measured (see _check_volume).
        for item in pending:
            if item.position not in self._incremental:
                check = checks[item.position]
                check.size_bytes = volumes.size_on_route(self.source, self.staged.route(item),
                                                         check.size_bytes)
        full_copies = [check for position, check in checks.items()
                       if position not in self._incremental]
        needed = sum(check.size_bytes or 0 for check in full_copies)
        if checks and all(check.size_bytes is not None for check in full_copies):
            volumes.check_space(self.target, needed, ", ".join(i.target for i in self.pending_items()),
                                free_space)

        for item in self.pending_items():
            replaced = item.position not in self._incremental and not item.target_created
            if checks[item.position].target_exists and self.task.spec.force and replaced:
                replacecheck.reject_replacement(self.target, self.staged.probes, item)
                self.warn(f"volume {item.target!r} exists on {self.task.spec.target_host} and "
                          "will be replaced (--force); rollback cannot restore its old content")
        return checks

    def _check_item(self, item: TaskItem, checks: dict[int, volumes.VolumeCheck]) -> None:
        checks[item.position] = self._check_volume(item)
        self._check_route(item)

    def _check_volume(self, item: TaskItem) -> volumes.VolumeCheck:
        # The space check leaves out incremental updates, so their size is not needed
        # before the copy; _update_item takes it from the update's source scan.
        incremental_update = item.position in self._incremental
        return volumes.check_volume(self.source, self.target, item,
                                    force=self.task.spec.force or incremental_update,
                                    sizes=self._volume_sizes, measure=not incremental_update,
                                    inspections=self.source_inspections)

    def _check_route(self, item: TaskItem) -> None:
        self.staged.check_writers(item)
        if item.position not in self._incremental:
            self.staged.route(item)

    def copy(self, checks: dict[int, volumes.VolumeCheck]) -> None:
        items = self.pending_items()
        if parallel.worker_count(self, items) > 1:
            parallel.run_items(self, items, lambda item: self._copy_item(item, checks[item.position]),
                               "copying")
            return

        for item in items:
            self.check_control(force=True)
            self._copy_item(item, checks[item.position])

    def _copy_item(self, item: TaskItem, check: volumes.VolumeCheck) -> None:
        started = time.monotonic()
        if item.position in self._incremental:
            self._update_item(item, check)
        else:
            self._copy_staged(item, check)
        self.record("info", "copied", f"volume {item.source!r} copied", position=item.position,
                    seconds=round(time.monotonic() - started, 3))

    def _copy_staged(self, item: TaskItem, check: volumes.VolumeCheck) -> None:

        self.update_item(item, state=ItemState.COPYING, started_at=time.time(), bytes_done=0,
                         bytes_total=check.size_bytes)
        self.emit(ItemStarted(self.task.id, position=item.position, source=item.source,
                              target=item.target, bytes_total=check.size_bytes))

        # The data goes into a staging volume; verify() gives it the real name.
        counter = _ProgressCounter(self, item)
        manifest, byte_count, digest = self.staged.copy_item(item, check, counter)
        counter.flush()

        self._manifests[item.position] = manifest
        save_task_manifest(self.store, self.task.id, item.position, manifest)
        self.update_item(item, state=ItemState.COPIED, bytes_done=byte_count,
                         entries=len(manifest.entries), stream_digest=digest)
        self.emit(ItemFinished(self.task.id, position=item.position, state=item.state.value,
                               bytes_done=byte_count))

    def _update_item(self, item: TaskItem, check: volumes.VolumeCheck) -> None:
        """Update a target volume that contains an earlier copy; see ddmsyncer.incremental."""
        self.update_item(item, state=ItemState.COPYING, started_at=time.time(), bytes_done=0,
                         bytes_total=check.size_bytes)
        self.emit(ItemStarted(self.task.id, position=item.position, source=item.source,
                              target=item.target, bytes_total=check.size_bytes))
        counter = _ProgressCounter(self, item)
        result = incremental.copy_item(self, item, counter.add)
        counter.flush()
        self.update_item(item, state=ItemState.COPIED, bytes_done=result.archive_bytes,
                         bytes_total=incremental.volume_data_bytes(result.source_scan),
                         stream_digest=result.stream_digest)
        self.emit(ItemFinished(self.task.id, position=item.position, state=item.state.value,
                               bytes_done=result.archive_bytes))

    def verify(self) -> None:
        """Verify each staging volume and promote it to its real name."""
        mode = self.task.spec.verify
        # NOTE: incremental updates are verified one after another; their scans and backups
        # were not reviewed for running side by side.
        staged = [item for item in self.pending_items() if item.position not in self._incremental]
        if parallel.worker_count(self, staged) > 1:
            parallel.run_items(self, staged, self._verify_item, "verifying")
        for item in self.pending_items():  # the volumes the workers did not verify
            self.check_control(force=True)
            self._verify_item(item)

    def _verify_item(self, item: TaskItem) -> None:
        mode = self.task.spec.verify
        started = time.monotonic()
        if item.position in self._incremental and mode is not VerifyMode.NONE:
            incremental.verify_item(self, item)
            self.update_item(item, state=ItemState.VERIFIED, finished_at=time.time())
            self.record("info", "verified", f"volume {item.target!r} verified ({mode.value}, "
                        "host-side scans)", position=item.position,
                        seconds=round(time.monotonic() - started, 3))
            return

        if item.position not in self._incremental:
            self.staged.verify_and_promote(item, self._source_manifest(item))
        if mode is VerifyMode.NONE:
            self.warn(f"volume {item.target!r} was not verified (--verify none)")
            self.update_item(item, state=ItemState.UNVERIFIED, finished_at=time.time())
            return

        mark_verified(self, item)
        self.record("info", "verified", f"volume {item.target!r} verified ({mode.value})",
                    position=item.position, seconds=round(time.monotonic() - started, 3))

    def replace_manifest(self, item: TaskItem, manifest: Manifest) -> None:
        """Store a new source manifest for the item, as the copy stores its own."""
        save_task_manifest(self.store, self.task.id, item.position, manifest)
        self.remember_manifest(item, manifest)

    def remember_manifest(self, item: TaskItem, manifest: Manifest) -> None:
        """Use `manifest`, which another connection already stored, as the item's source manifest."""
        self._manifests[item.position] = manifest
        self.update_item(item, entries=len(manifest.entries))

    def _source_manifest(self, item: TaskItem) -> Manifest:
        manifest = self._manifests.get(item.position)
        if manifest is None:
            manifest = load_task_manifest(self.store, self.task.id, item.position)
            if manifest is None:
                raise MigrationFailed(f"no source manifest for volume {item.source!r}",
                                      hint="roll the task back and run it again")
        return manifest

    def remember_created_at(self, target: Any, item: TaskItem) -> None:
        """Record the target volume's CreatedAt, so a later rollback can tell it is still ours."""
        created_at = target.api.inspect_volume(item.target).get("CreatedAt")
        with _EXTRA_LOCK:
            recorded = dict(self.store.get_extra(self.task.id).get("volume_created_at") or {})
            recorded[item.target] = created_at
            self.store.set_extra(self.task.id, volume_created_at=recorded)

    force_rollback = False

    def check_rollback_allowed(self) -> None:
        """Raise TaskConflict when a finished task's target volume changed since it finished.

        `ddmctl rollback` of a succeeded task removes the volumes it created. A volume that was
        replaced since (another task with --force, or by hand) or whose files changed contains
        data that the task did not put there, so it is kept unless the operator forces it.
        The same check runs again when such a rollback stopped part way and runs once more.
        ddmsyncer.rollbackcheck lists which changes are found. A succeeded task that updated
        a volume incrementally raises UsageError, --force or not.
        """
        incremental.check_rollback_allowed(self)
        if self.force_rollback:
            return

        # A rollback of a succeeded task that stopped part way (a volume in use) leaves the
        # task interrupted. Running it again must check the volumes it has not removed yet.
        extra = self.store.get_extra(self.task.id)
        if self.task.state is TaskState.SUCCEEDED:
            self.store.set_extra(self.task.id, **{ROLLBACK_OF_SUCCEEDED: True})
        elif not extra.get(ROLLBACK_OF_SUCCEEDED):
            return

        recorded = extra.get("volume_created_at") or {}
        changed: dict[int, str] = {}
        absent: set[int] = set()
        try:
            for item in self.task.items:
                if not item.target_created:
                    continue
                # A volume already gone has nothing to compare. The rollback's report names
                # it when another volume's change stops the rollback.
                if self.target.volume_inspect(item.target) is None:
                    absent.add(item.position)
                    continue
                reason = self._target_change(item, recorded.get(item.target))
                if reason is not None:
                    changed[item.position] = reason
        except DDMError as error:
            # When a check cannot run (a host down) during an unfinished rollback, the error
            # gives the command that finishes it, as the rollback's own errors do.
            if self.task.state is not TaskState.SUCCEEDED and not isinstance(error, TaskConflict):
                undo.add_rollback_next_step(error, self.task.id)
            raise
        if changed:
            raise rollbackcheck.targets_changed_error(self.task, changed, frozenset(absent))

    def _target_change(self, item: TaskItem, created_at: str | None) -> str | None:
        """Return why the item's existing target volume counts as changed since the task, or None.

        The reason is a phrase that follows "volume 'NAME' on HOST".
        """
        target = self.target
        stored = load_task_manifest(self.store, self.task.id, item.position)
        if stored is not None:
            differences = rollbackcheck.target_differences(target, item.target, stored,
                                                           task_id=self.task.id)
            if differences:
                first = differences[0]
                return (f"changed since task {self.task.id} finished "
                        f"({counted(len(differences), 'difference')}, first "
                        f"{display_path(first.path)}: {first.aspect}), with "
                        f"{rollbackcheck.describe_comparison(stored)}")

        # The local driver reports the ctime of the volume's data directory as CreatedAt, in
        # whole seconds, so it also moves when an entry at the top of the volume changes.
        current = target.api.inspect_volume(item.target).get("CreatedAt")
        if created_at is not None and current != created_at:
            return (f"was replaced, or its top directory changed, after task {self.task.id} "
                    f"created it (CreatedAt {created_at} then, {current} now)")
        return None

    def cleanup(self, *, every_host: bool = False) -> None:
        """Remove helper containers of this task on the hosts it connected to (also after failures).

        With `every_host`, the source and target host are visited even when this process has
        not connected to them yet, so `ddmctl rollback` of a killed run removes the helpers
        that run left behind.
        """
        spec = self.task.spec
        hosts = [spec.source_host, spec.target_host] if every_host else list(self._engines)
        for host_name in dict.fromkeys(hosts):
            try:
                self.on_host(host_name,
                             lambda engine: volumes.remove_task_helpers(engine, self.task.id))
            except DDMError as error:
                self.warn(f"could not remove helper containers on {host_name}: {error}")
        try:
            direct.remove_leftovers(self)
        except DDMError as error:
            self.warn(f"could not remove the task's direct-route keys: {error}")
        if self.task.phase is Phase.CLEANUP:
            incremental.discard_backups(self)

    def _open_engines(self) -> list[Any]:
        return list({id(engine): engine for engine in self._engines.values()}.values())

    # Failure and rollback

    def _finish_failed(self, error: BaseException) -> None:
        self.record("error", "failed", f"task failed: {_describe(error)}")
        try:
            self.rollback()
        except BaseException as rollback_error:  # noqa: BLE001 - report both, keep the first
            self.record("error", "rollback_failed", f"rollback failed: {_describe(rollback_error)}")
            self._finish(TaskState.INTERRUPTED, _rollback_failed_dict(self.task.id, error,
                                                                      rollback_error))
            return

        state = TaskState.CANCELLED if isinstance(error, Cancelled) else TaskState.FAILED
        if isinstance(error, ConnectionLost):
            error.hint = connlost.rolled_back_hint(error)
        incremental.replace_restore_hint(self, error)
        self._finish(state, _error_dict(error))

    def rollback(self, *, every_host: bool = False) -> None:
        """Remove what this task created on the target; the source was only read.

        `every_host` is for a rollback in a new process: see cleanup().
        """
        self.task.phase = Phase.ROLLBACK
        self.store.update_task(self.task.id, phase=Phase.ROLLBACK)
        self.record("info", "phase", "phase rollback started")
        self.emit_safely(PhaseStarted(self.task.id, phase=Phase.ROLLBACK.value))
        # The items an earlier rollback undid, read before this rollback changes any state.
        undone = undo.undone_items(self.task)

        incremental.restore_backups(self)
        self.cleanup(every_host=every_host)
        release_writers(self)
        # A task that failed before it created anything (its target down at prepare) has
        # nothing to undo there, so the target is not connected to.
        if self.store.get_extra(self.task.id).get("staging_volumes"):
            self.on_host(self.task.spec.target_host, lambda target: remove_staging_volumes(self))
        created = [item for item in self.task.items if item.target_created]
        if created:
            self.on_host(self.task.spec.target_host,
                         lambda target: self._remove_created(target, created))
        if undone:
            undo.record_present_again(self, undone)

        # Items that only reached their staging volume, removed above, are rolled back too.
        for item in self.task.items:
            if item.state in (ItemState.COPYING, ItemState.COPIED, ItemState.FAILED):
                self.update_item(item, state=ItemState.ROLLED_BACK)

    def _remove_created(self, target: Any, created: list[TaskItem]) -> None:
        """Remove the target volumes this task created; safe to run again after a failure."""
        for item in created:
            if not item.target_created:
                continue
            volumes.remove_task_helpers(target, self.task.id)
            if target.volume_inspect(item.target) is None:
                # NOTE: a rollback that removed the volume and stopped before it stored the
                # item's new state finds it absent when it runs again, and marks it so.
                self.update_item(item, state=ItemState.ABSENT, target_created=False)
                self.record("info", undo.ROLLBACK_ABSENT, f"volume {item.target!r} was already "
                            f"gone from {self.task.spec.target_host}", position=item.position)
                continue
            mountpoint = target.volume_inspect(item.target).mountpoint
            try:
                undo.remove_target_volume(target, item.target, self.task.id)
            except MigrationFailed as error:
                undo.add_rollback_next_step(error, self.task.id)
                self.record("error", undo.ROLLBACK_REJECTED, f"removing volume {item.target!r} "
                            f"from {self.task.spec.target_host} was rejected: {error}",
                            position=item.position, reason=str(error))
                raise
            # Recorded before the state, so a report never lists a removed volume as kept.
            self.record("info", "rolled_back", f"removed volume {item.target!r} from "
                        f"{self.task.spec.target_host}", position=item.position)
            self.update_item(item, state=ItemState.ROLLED_BACK, target_created=False)
            # The removed volume's hash cache rows and stored scan are stale: a volume
            # created later under its name gets new inodes and ctimes.
            forgotten = self.store.forget_volume(hashcache.cache_scope(target, mountpoint))
            log.info("forgot %d hash cache and stored scan rows of volume %s", forgotten,
                     item.target)

    def _finish(self, state: TaskState, error: dict[str, Any] | None, *,
                finished_at: float | None = None) -> None:
        """Store the task's end state; `finished_at` defaults to now."""
        self.task.state = state
        self.task.error = error
        phase = Phase.DONE if state is TaskState.SUCCEEDED else self.task.phase
        self.store.update_task(self.task.id, state=state, phase=phase, error=error,
                               finished_at=finished_at or time.time(), runner_pid=None)
        self.store.release_locks(self.task.id)
        self.task = self.store.get_task(self.task.id)
        self.record("info", "finished", f"task {state.value}")
        self.emit_safely(TaskFinished(self.task.id, state=state.value, error=error))

    def _close(self) -> None:
        parallel.close_pool(self)
        with contextlib.suppress(Exception):
            self._stack.close()
        self._engines.clear()


class _ProgressCounter:
    """Counts relayed bytes, emits Progress events and stores progress at a low rate."""

    def __init__(self, runner: TaskRunner, item: TaskItem) -> None:
        self.runner = runner
        self.item = item
        self.done = 0
        self._last_event = 0.0
        self._last_store = 0.0

    def add(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self._last_event >= PROGRESS_EVENT_SECONDS:
            self._last_event = now
            self.runner.emit(Progress(self.runner.task.id, position=self.item.position,
                                      bytes_done=self.done, bytes_total=self.total()))
            self.runner.check_control()
        if now - self._last_store >= PROGRESS_STORE_SECONDS:
            self._last_store = now
            self.runner.store.update_item(self.runner.task.id, self.item.position,
                                          bytes_done=self.done)

    def total(self) -> int | None:
        """Return the expected archive size: the volume's size is an estimate that tar headers exceed."""
        if self.item.bytes_total is None:
            return None
        return max(self.item.bytes_total, self.done)

    def flush(self) -> None:
        self.runner.emit(Progress(self.runner.task.id, position=self.item.position,
                                  bytes_done=self.done, bytes_total=self.total()))


def _describe(error: BaseException) -> str:
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    return str(error) or type(error).__name__


def _error_dict(error: BaseException) -> dict[str, Any]:
    if isinstance(error, DDMError):
        return error.to_dict()
    if isinstance(error, KeyboardInterrupt):
        return Interrupted("interrupted").to_dict()
    return {"error": type(error).__name__, "message": str(error), "exit_status": 1}


def create_runner(
    config: Config,
    store: TaskStore,
    task_id: str,
    on_event: EventCallback = ignore_event,
    engine_factory: EngineFactory = default_engine_factory,
) -> TaskRunner:
    """Return the runner for a stored task's mode: TaskRunner, or FullTaskRunner for full mode."""
    from ddm.task import Mode

    runner_class: type[TaskRunner] = TaskRunner
    if store.get_task(task_id).spec.mode is Mode.FULL:
        from ddmsyncer.containers import FullTaskRunner

        runner_class = FullTaskRunner
    return runner_class(config, store, task_id, on_event=on_event, engine_factory=engine_factory)


def _rollback_failed_dict(task_id: str, error: BaseException,
                         rollback_error: BaseException) -> dict[str, Any]:
    """Return the stored error of a task whose rollback failed: the cause and the rollback's error.

    The cause's hint is left out, because it was written before the rollback ran and may
    state that the target was rolled back.
    """
    stored = _error_dict(error)
    cause = " ".join(error.message.split()) if isinstance(error, DDMError) else _describe(error)
    stored["message"] = (
        f"{cause}; rollback failed too: {_describe(rollback_error)}; the target may still hold "
        f"what the task created: fix what stopped the rollback, then run 'ddmctl rollback "
        f"{task_id}', or 'ddmctl resume {task_id}' to finish the task"
    )
    stored["rollback_error"] = _error_dict(rollback_error)
    return stored


def take_rollback_failure(error: BaseException, task: Task) -> None:
    """Give the raised error the stored message when the task's rollback failed too.

    The command prints the raised error, whose hint may state that the target was rolled back.
    """
    stored = task.error or {}
    if not isinstance(error, DDMError) or task.state is not TaskState.INTERRUPTED:
        return
    if "rollback_error" in stored and stored.get("message"):
        error.message, error.hint = stored["message"], None


def rollback_task(runner: TaskRunner) -> Task:
    """Roll back a task that is not running: remove what it created on the target.

    The rollback holds the locks of the volumes it changes (TaskRunner.rollback_lock_names)
    from before check_rollback_allowed() until it ends. So no running task writes a volume
    between that check and the removal, and a volume locked by another task stops the
    rollback with TaskConflict before anything changes.
    """
    store, task = runner.store, mark_stale_running(runner.store, runner.task)
    runner.task = task
    if task.state is TaskState.RUNNING:
        raise TaskConflict(
            f"task {task.id} is running in process {task.runner_pid}",
            hint=f"stop it with 'ddmctl cancel {task.id}'; a cancelled task rolls back",
        )
    if task.state is TaskState.QUEUED:
        store.update_task(task.id, state=TaskState.CANCELLED, finished_at=time.time())
        return store.get_task(task.id)

    states = (TaskState.SUCCEEDED, TaskState.INTERRUPTED, TaskState.FAILED,
              TaskState.CANCELLED, TaskState.ROLLED_BACK)
    if not store.claim_task(task.id, os.getpid(), states):
        raise TaskConflict(f"task {task.id} changed state while rolling back; try again")
    try:
        newly_locked = store.acquire_locks(task.id, runner.rollback_lock_names())
    except BaseException:
        _unclaim(store, task, [])
        raise
    try:
        newly_locked += store.acquire_locks(task.id, runner.rollback_engine_lock_names())
        # The check reads runner.task, which still has the state from before the claim.
        runner.check_rollback_allowed()
    except BaseException:
        _unclaim(store, task, newly_locked)
        raise
    return _roll_back_claimed(runner, task)


def _unclaim(store: TaskStore, before: Task, newly_locked: list[str]) -> None:
    """Restore the earlier state of a task claimed for a rollback that did not start.

    Only `newly_locked`, the locks this rollback took, are released: an interrupted task
    keeps the locks it held before.
    """
    store.release_locks(before.id, newly_locked)
    store.update_task(before.id, state=before.state, runner_pid=before.runner_pid)


def _roll_back_claimed(runner: TaskRunner, before: Task) -> Task:
    """Run the rollback of a task that rollback_task() claimed and locked, and finish it.

    `before` is the task as it was before the claim. A task whose own rollback had already
    finished (undo.ROLLED_BACK_STATES) ends in its earlier state with its earlier error, so
    a failed task stays listed as failed with the error that stopped it, whether this rollback
    finishes or fails. A failed rollback's error is stored as undo.ROLLBACK_ERROR and raised.
    """
    store = runner.store
    task = runner.task = store.get_task(runner.task.id)
    repeated = before.state in undo.ROLLED_BACK_STATES
    # The task keeps the finish time of its migration, so its duration stays that of the
    # migration. A task that never stored one (its runner was killed) gets the rollback's.
    migration_finished_at = runner.task.finished_at
    undo.mark_rollback_requested(store, task.id)
    try:
        runner.rollback(every_host=True)
    except BaseException as error:
        undo.add_rollback_next_step(error, task.id)
        # The earlier rollback of a repeated one removed the task's copies, so the task keeps
        # its state. Any other task is interrupted until a rollback of it finishes.
        state = before.state if repeated else TaskState.INTERRUPTED
        _finish_failed_rollback(runner, before, error, state, migration_finished_at)
        raise
    finally:
        runner._close()
    store.set_extra(task.id, **{undo.ROLLBACK_FINISHED_AT: time.time(), undo.ROLLBACK_ERROR: None})
    if repeated:
        runner._finish(before.state, before.error, finished_at=migration_finished_at)
    else:
        runner._finish(TaskState.ROLLED_BACK, None, finished_at=migration_finished_at)
    return runner.task


def _finish_failed_rollback(runner: TaskRunner, before: Task, error: BaseException,
                            state: TaskState, migration_finished_at: float | None) -> None:
    """Finish a task whose rollback failed in `state`, the rollback's error as undo.ROLLBACK_ERROR.

    The task keeps its own error, the reason its migration stopped, or none (a succeeded task,
    or a runner that was killed), so that `ddmctl status` does not show the rollback's error as
    that reason. It shows the rollback's error on its own line.
    """
    runner.record("error", "rollback_failed", f"rollback failed: {_describe(error)}")
    runner.store.set_extra(before.id, **{undo.ROLLBACK_FINISHED_AT: time.time(),
                                         undo.ROLLBACK_ERROR: _error_dict(error)})
    runner._finish(state, before.error, finished_at=migration_finished_at)
