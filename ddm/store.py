"""Task state in an embedded SQLite database.

One database file (`tasks.db` in the XDG data directory) holds every task, its per-volume
progress, its event log and the locks that keep two tasks off the same volume. The database runs
in WAL mode, so `ddmctl status` in one terminal reads while `ddmsyncer` writes in another.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ddm.config import data_dir
from ddm.errors import ConfigError, TaskConflict, TaskNotFound
from ddm.processes import process_alive
from ddm.task import ItemState, Phase, Task, TaskItem, TaskSpec, TaskState

SCHEMA_VERSION = 1
BUSY_TIMEOUT_SECONDS = 30.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    phase TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    error TEXT,
    runner_pid INTEGER,
    control TEXT,
    extra TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS items (
    task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    source TEXT NOT NULL,
    target TEXT NOT NULL,
    state TEXT NOT NULL,
    bytes_total INTEGER,
    bytes_done INTEGER NOT NULL DEFAULT 0,
    entries INTEGER,
    stream_digest TEXT,
    target_created INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    started_at REAL,
    finished_at REAL,
    manifest BLOB,
    PRIMARY KEY (task_id, position)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    at REAL NOT NULL,
    level TEXT NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT
);
CREATE TABLE IF NOT EXISTS locks (
    resource TEXT PRIMARY KEY,
    task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    acquired_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_task ON events(task_id, id);
CREATE TABLE IF NOT EXISTS manifest_chunks (
    task_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    chunk INTEGER NOT NULL,
    entries TEXT NOT NULL,
    PRIMARY KEY (task_id, position, chunk),
    FOREIGN KEY (task_id, position) REFERENCES items(task_id, position) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS file_hashes (
    scope TEXT NOT NULL,
    path BLOB NOT NULL,
    file_key TEXT NOT NULL,
    digest TEXT NOT NULL,
    checksum TEXT NOT NULL,
    PRIMARY KEY (scope, path)
);
CREATE TABLE IF NOT EXISTS volume_scans (
    scope TEXT PRIMARY KEY,
    head TEXT NOT NULL,
    checksum TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS volume_scan_chunks (
    scope TEXT NOT NULL REFERENCES volume_scans(scope) ON DELETE CASCADE,
    chunk INTEGER NOT NULL,
    records BLOB NOT NULL,
    checksum TEXT NOT NULL,
    PRIMARY KEY (scope, chunk)
);
"""

ITEM_COLUMNS = (
    "task_id",
    "position",
    "source",
    "target",
    "state",
    "bytes_total",
    "bytes_done",
    "entries",
    "stream_digest",
    "target_created",
    "error",
    "started_at",
    "finished_at",
)


def default_store_path(environ: Mapping[str, str]) -> Path:
    """Return the task database path: DDM_STATE_DB if set, else tasks.db in the data directory."""
    explicit = environ.get("DDM_STATE_DB")
    if explicit:
        return Path(explicit)
    return data_dir(environ) / "tasks.db"


class TaskStore:
    """Reads and writes tasks. One instance per process; it is not shared across threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._db = sqlite3.connect(
                str(path), timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None,
                check_same_thread=False,
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            os.chmod(path, 0o600)
        except (OSError, sqlite3.Error) as error:
            raise ConfigError(
                f"cannot open task database {path}: {error}",
                hint="check the permissions of the XDG data directory or set DDM_STATE_DB",
            ) from None

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run statements in one IMMEDIATE transaction (a write lock taken up front)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # Tasks

    def create_task(self, task: Task, *, reserved_by: int | None = None) -> Task:
        """Store a new task with one item per volume.

        `reserved_by` is the ID of the process that will run the task itself. While that
        process lives, `ddmsyncer serve` leaves the queued task alone.
        """
        task.runner_pid = reserved_by
        with self.transaction() as db:
            db.execute(
                "INSERT INTO tasks (id, spec, state, phase, created_at, runner_pid)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (task.id, json.dumps(task.spec.to_dict()), task.state.value, task.phase.value,
                 task.created_at, reserved_by),
            )
            for item in task.items:
                self._insert_item(db, item)
        return task

    def _insert_item(self, db: sqlite3.Connection, item: TaskItem) -> None:
        values = [getattr(item, column) for column in ITEM_COLUMNS]
        values[ITEM_COLUMNS.index("state")] = item.state.value
        placeholders = ", ".join("?" for _ in ITEM_COLUMNS)
        db.execute(f"INSERT INTO items ({', '.join(ITEM_COLUMNS)}) VALUES ({placeholders})", values)

    def get_task(self, task_id: str) -> Task:
        """Load a task by ID or by a unique prefix of at least 4 characters."""
        row = self._find_task_row(task_id)
        task = self._task_from_row(row)
        task.items = self.get_items(task.id)
        return task

    def _find_task_row(self, task_id: str) -> sqlite3.Row:
        shown = ascii(task_id if len(task_id) <= 64 else task_id[:61] + "...")
        if not 4 <= len(task_id) <= 64 or not all(ch in "0123456789abcdef" for ch in task_id):
            raise TaskNotFound(f"task {shown} not found: a task ID is 4 to 12 hex digits",
                               hint="list tasks with 'ddmctl list'")

        row = self._db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is not None:
            return row

        rows = self._db.execute(
            "SELECT * FROM tasks WHERE id LIKE ? LIMIT 2", (task_id + "%",)
        ).fetchall()
        if len(rows) == 1:
            return rows[0]
        if len(rows) > 1:
            raise TaskNotFound(
                f"task ID prefix {shown} is ambiguous", hint="give more digits of the ID"
            )
        raise TaskNotFound(f"task {shown} not found in {self.path}",
                           hint="list tasks with 'ddmctl list'")

    def _task_from_row(self, row: sqlite3.Row) -> Task:
        return Task(
            id=row["id"],
            spec=TaskSpec.from_dict(json.loads(row["spec"])),
            state=TaskState(row["state"]),
            phase=Phase(row["phase"]),
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            error=json.loads(row["error"]) if row["error"] else None,
            runner_pid=row["runner_pid"],
            control=row["control"],
        )

    def list_tasks(self, *, state: TaskState | None = None, limit: int = 100) -> list[Task]:
        """Return tasks, newest first, each with its items."""
        query = "SELECT * FROM tasks"
        parameters: list[Any] = []
        if state is not None:
            query += " WHERE state = ?"
            parameters.append(state.value)
        query += " ORDER BY created_at DESC LIMIT ?"
        parameters.append(limit)

        tasks = [self._task_from_row(row) for row in self._db.execute(query, parameters)]
        for task in tasks:
            task.items = self.get_items(task.id)
        return tasks

    def update_task(self, task_id: str, **fields: Any) -> None:
        """Update columns of a task: state, phase, started_at, finished_at, error, runner_pid, control."""
        allowed = {"state", "phase", "started_at", "finished_at", "error", "runner_pid", "control"}
        assignments, values = _assignments(fields, allowed)
        with self.transaction() as db:
            db.execute(f"UPDATE tasks SET {assignments} WHERE id = ?", [*values, task_id])

    def get_extra(self, task_id: str) -> dict[str, Any]:
        """Return the task's free-form state (records of what the task created, timings)."""
        row = self._db.execute("SELECT extra FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return json.loads(row["extra"]) if row else {}

    def set_extra(self, task_id: str, **values: Any) -> None:
        """Merge keys into the task's free-form state."""
        with self.transaction() as db:
            row = db.execute("SELECT extra FROM tasks WHERE id = ?", (task_id,)).fetchone()
            extra = json.loads(row["extra"]) if row else {}
            extra.update(values)
            db.execute("UPDATE tasks SET extra = ? WHERE id = ?", (json.dumps(extra), task_id))

    def claim_task(self, task_id: str, pid: int, states: tuple[TaskState, ...]) -> bool:
        """Mark a task as running by process `pid` if it is in one of `states`; return success."""
        placeholders = ", ".join("?" for _ in states)
        with self.transaction() as db:
            cursor = db.execute(
                f"UPDATE tasks SET state = ?, runner_pid = ?, started_at = COALESCE(started_at, ?)"
                f" WHERE id = ? AND state IN ({placeholders})",
                [TaskState.RUNNING.value, pid, time.time(), task_id,
                 *[state.value for state in states]],
            )
            return cursor.rowcount == 1

    # Items

    def get_items(self, task_id: str) -> list[TaskItem]:
        rows = self._db.execute(
            f"SELECT {', '.join(ITEM_COLUMNS)} FROM items WHERE task_id = ? ORDER BY position",
            (task_id,),
        ).fetchall()
        items = []
        for row in rows:
            values = dict(row)
            values["state"] = ItemState(values["state"])
            values["target_created"] = bool(values["target_created"])
            items.append(TaskItem(**values))
        return items

    def update_item(self, task_id: str, position: int, **fields: Any) -> None:
        allowed = set(ITEM_COLUMNS) - {"task_id", "position", "source", "target"}
        assignments, values = _assignments(fields, allowed)
        with self.transaction() as db:
            db.execute(
                f"UPDATE items SET {assignments} WHERE task_id = ? AND position = ?",
                [*values, task_id, position],
            )

    def save_manifest(self, task_id: str, position: int, manifest_json: bytes) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE items SET manifest = ? WHERE task_id = ? AND position = ?",
                (manifest_json, task_id, position),
            )

    def load_manifest(self, task_id: str, position: int) -> bytes | None:
        row = self._db.execute(
            "SELECT manifest FROM items WHERE task_id = ? AND position = ?", (task_id, position)
        ).fetchone()
        return bytes(row["manifest"]) if row and row["manifest"] is not None else None

    def save_manifest_chunks(
        self, task_id: str, position: int, header: bytes, chunks: Iterable[str]
    ) -> int:
        """Store a manifest as a header and entry chunks, one row each; return the chunk count.

        `chunks` is read lazily inside one transaction, so a manifest of any size is never
        held whole. The header goes where save_manifest() puts a whole manifest, and the
        chunks of an earlier manifest of the item are replaced.
        """
        with self.transaction() as db:
            db.execute("DELETE FROM manifest_chunks WHERE task_id = ? AND position = ?",
                       (task_id, position))
            count = 0
            for index, text in enumerate(chunks):
                db.execute(
                    "INSERT INTO manifest_chunks (task_id, position, chunk, entries)"
                    " VALUES (?, ?, ?, ?)", (task_id, position, index, text),
                )
                count = index + 1
            db.execute(
                "UPDATE items SET manifest = ? WHERE task_id = ? AND position = ?",
                (header, task_id, position),
            )
        return count

    def iter_manifest_chunks(self, task_id: str, position: int) -> Iterator[str]:
        """Yield the entry chunks stored by save_manifest_chunks(), in order."""
        cursor = self._db.execute(
            "SELECT entries FROM manifest_chunks WHERE task_id = ? AND position = ? ORDER BY chunk",
            (task_id, position),
        )
        for (text,) in cursor:
            yield text

    # Events

    def add_event(
        self, task_id: str, level: str, kind: str, message: str, data: dict[str, Any] | None = None
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO events (task_id, at, level, kind, message, data) VALUES (?, ?, ?, ?, ?, ?)",
                (task_id, time.time(), level, kind, message, json.dumps(data) if data else None),
            )

    def has_event(self, task_id: str, kind: str, message: str) -> bool:
        """Return whether the task has an event of this kind with exactly this message."""
        row = self._db.execute(
            "SELECT 1 FROM events WHERE task_id = ? AND kind = ? AND message = ? LIMIT 1",
            (task_id, kind, message),
        ).fetchone()
        return row is not None

    def get_events(self, task_id: str, after_id: int = 0) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT * FROM events WHERE task_id = ? AND id > ? ORDER BY id", (task_id, after_id)
        ).fetchall()
        return [
            {**dict(row), "data": json.loads(row["data"]) if row["data"] else None}
            for row in rows
        ]

    # File hashes (the controller's cache of host-side content hashes, see ddmsyncer.hashcache)

    def load_file_hashes(self, scope: str) -> list[tuple[bytes, str, str, str]]:
        """Return the (path, file_key, digest, checksum) rows stored for a scope."""
        rows = self._db.execute(
            "SELECT path, file_key, digest, checksum FROM file_hashes WHERE scope = ?", (scope,)
        ).fetchall()
        return [(bytes(row["path"]), row["file_key"], row["digest"], row["checksum"])
                for row in rows]

    def iter_file_hashes(self, scope: str, batch_rows: int = 1000
                         ) -> Iterator[tuple[bytes, str, str, str]]:
        """Yield the (path, file_key, digest, checksum) rows stored for a scope.

        Rows are fetched `batch_rows` at a time, so a large scope is never held as one list.
        """
        # Plain tuples: a scan reads every row of its volume, and sqlite3.Row costs more.
        cursor = self._db.cursor()
        cursor.row_factory = None
        cursor.execute(
            "SELECT path, file_key, digest, checksum FROM file_hashes WHERE scope = ?", (scope,)
        )
        while rows := cursor.fetchmany(batch_rows):
            for path, file_key, digest, checksum in rows:
                yield bytes(path), file_key, digest, checksum

    def save_file_hashes(self, scope: str, rows: list[tuple[bytes, str, str, str]],
                         removed: list[bytes]) -> None:
        """Insert or replace (path, file_key, digest, checksum) rows and delete removed paths."""
        with self.transaction() as db:
            db.executemany("DELETE FROM file_hashes WHERE scope = ? AND path = ?",
                           [(scope, path) for path in removed])
            db.executemany(
                "INSERT OR REPLACE INTO file_hashes (scope, path, file_key, digest, checksum) "
                "VALUES (?, ?, ?, ?, ?)", [(scope, *row) for row in rows])

    def replace_file_hashes(self, scope: str,
                            batches: Iterable[list[tuple[bytes, str, str, str]]]) -> None:
        """Replace a scope's rows with (path, file_key, digest, checksum) rows, batch by batch.

        One transaction, so a failure keeps the old rows.
        """
        with self.transaction() as db:
            db.execute("DELETE FROM file_hashes WHERE scope = ?", (scope,))
            for batch in batches:
                db.executemany(
                    "INSERT OR REPLACE INTO file_hashes (scope, path, file_key, digest, checksum) "
                    "VALUES (?, ?, ?, ?, ?)", [(scope, *row) for row in batch])

    # Verified volume scans (ddmsyncer.scanstore)

    def replace_volume_scan(self, scope: str, chunks: Iterable[tuple[bytes, str]],
                            head_of: Callable[[int], tuple[str, str]]) -> None:
        """Replace a scope's stored scan with (records, checksum) chunks and a head.

        Chunks are written as `chunks` yields them, so a large scan is never held whole.
        head_of(chunk count) returns the (head, checksum) stored last. One transaction, so a
        failure keeps the old scan.
        """
        with self.transaction() as db:
            db.execute("DELETE FROM volume_scans WHERE scope = ?", (scope,))
            # Chunks whose head was deleted without foreign keys enabled (the sqlite3 shell).
            db.execute("DELETE FROM volume_scan_chunks WHERE scope = ?", (scope,))
            db.execute("INSERT INTO volume_scans (scope, head, checksum) VALUES (?, '', '')",
                       (scope,))
            count = 0
            for records, chunk_checksum in chunks:
                db.execute("INSERT INTO volume_scan_chunks (scope, chunk, records, checksum) "
                           "VALUES (?, ?, ?, ?)", (scope, count, records, chunk_checksum))
                count += 1
            head, checksum = head_of(count)
            db.execute("UPDATE volume_scans SET head = ?, checksum = ? WHERE scope = ?",
                       (head, checksum, scope))

    def forget_volume(self, scope: str) -> int:
        """Delete a scope's hash cache rows and stored scan; return how many rows went."""
        with self.transaction() as db:
            removed = db.execute("DELETE FROM file_hashes WHERE scope = ?", (scope,)).rowcount
            db.execute("DELETE FROM volume_scan_chunks WHERE scope = ?", (scope,))
            removed += db.execute("DELETE FROM volume_scans WHERE scope = ?", (scope,)).rowcount
        return removed

    def has_volume_scan(self, scope: str) -> bool:
        row = self._db.execute("SELECT 1 FROM volume_scans WHERE scope = ?", (scope,)).fetchone()
        return row is not None

    def get_volume_scan_head(self, scope: str) -> tuple[str, str] | None:
        """Return the (head, checksum) of a scope's stored scan, or None without one."""
        row = self._db.execute("SELECT head, checksum FROM volume_scans WHERE scope = ?",
                               (scope,)).fetchone()
        return None if row is None else (row["head"], row["checksum"])

    def iter_volume_scan_chunks(self, scope: str) -> Iterator[tuple[int, Any, Any]]:
        """Yield the (chunk number, records, checksum) of a scope's stored scan in order.

        The values are as stored, unchecked: records is bytes and checksum text unless the
        database was changed outside DDM.
        """
        cursor = self._db.cursor()
        cursor.row_factory = None
        cursor.execute("SELECT chunk, records, checksum FROM volume_scan_chunks "
                       "WHERE scope = ? ORDER BY chunk", (scope,))
        yield from cursor

    # Locks

    def acquire_locks(self, task_id: str, resources: list[str]) -> list[str]:
        """Take every lock for the task, or none: raise TaskConflict naming the holder.

        Returns the resources newly locked, leaving out those the task held already. A lock
        stays until its task releases it, also when the task's runner process is gone: an
        interrupted task keeps its locks until it is resumed or rolled back.
        """
        newly_locked = []
        with self.transaction() as db:
            for resource in resources:
                row = db.execute(
                    "SELECT task_id FROM locks WHERE resource = ?", (resource,)
                ).fetchone()
                if row is not None and row["task_id"] != task_id:
                    raise _lock_conflict(db, resource, row["task_id"])
                cursor = db.execute(
                    "INSERT OR IGNORE INTO locks (resource, task_id, acquired_at) VALUES (?, ?, ?)",
                    (resource, task_id, time.time()),
                )
                if cursor.rowcount == 1:
                    newly_locked.append(resource)
        return newly_locked

    def lock_conflicts(self, resources: list[str]) -> list[tuple[str, TaskConflict]]:
        """Return, without taking any lock, each resource that a task holds with its error.

        A plan belongs to no task yet, so any holder is a conflict.
        """
        conflicts = []
        for resource in resources:
            row = self._db.execute("SELECT task_id FROM locks WHERE resource = ?",
                                   (resource,)).fetchone()
            if row is not None:
                conflicts.append((resource, _lock_conflict(self._db, resource, row["task_id"])))
        return conflicts

    def release_locks(self, task_id: str, resources: list[str] | None = None) -> None:
        """Release the task's locks on `resources`, or all of its locks when it is None."""
        with self.transaction() as db:
            if resources is None:
                db.execute("DELETE FROM locks WHERE task_id = ?", (task_id,))
                return
            db.executemany("DELETE FROM locks WHERE task_id = ? AND resource = ?",
                           [(task_id, resource) for resource in resources])


def _lock_conflict(db: sqlite3.Connection, resource: str, holder: str) -> TaskConflict:
    """Return the error for a lock held by task `holder`, with a next step that works in its state.

    `ddmctl rollback` rejects a running task, so it is offered only for a task whose runner
    has ended.
    """
    resource = _lock_subject(resource)
    row = db.execute("SELECT state, phase, runner_pid, control FROM tasks WHERE id = ?",
                     (holder,)).fetchone()
    state = row["state"] if row is not None else None
    running = state == TaskState.RUNNING.value and process_alive(row["runner_pid"])
    if running and row["control"] == "pause":
        # A paused task waits for the operator, so waiting for it to end does not help.
        return TaskConflict(
            f"{resource} is held by task {holder}, which is paused",
            hint=f"continue it with 'ddmctl resume {holder}' or cancel it with 'ddmctl cancel "
            f"{holder}', then try again once it has ended",
        )
    if running and row["phase"] == Phase.ROLLBACK.value:
        return TaskConflict(f"{resource} is held by task {holder}, which is rolling back",
                            hint="wait for its rollback to end, then try again")
    if running:
        return TaskConflict(
            f"{resource} is held by task {holder}, which is running",
            hint=f"wait for it to end or cancel it ('ddmctl cancel {holder}' stops it and rolls "
            "it back), then try again",
        )
    if state in (TaskState.RUNNING.value, TaskState.INTERRUPTED.value):
        # A running task whose process is gone is marked interrupted by the next look at it.
        return TaskConflict(
            f"{resource} is held by task {holder}, which was interrupted",
            hint=f"finish it with 'ddmctl resume {holder}' or undo it with 'ddmctl rollback "
            f"{holder}', then try again",
        )
    return TaskConflict(f"{resource} is held by task {holder}, which is {state}",
                        hint=f"see 'ddmctl status {holder}'")


# The host part of a lock name by Docker engine ID (ddmsyncer.volumes.engine_lock_names).
ENGINE_LOCK_PREFIX = "engine "


def _lock_subject(resource: str) -> str:
    """Return how a conflict names a lock: "HOST/KIND/NAME" as it is, one by engine ID in words.

    A task takes a lock by engine ID after its lock by host name, so such a conflict means that
    the holder reached the same Docker engine under another host name.
    """
    if not resource.startswith(ENGINE_LOCK_PREFIX):
        return resource
    host, _, rest = resource.partition("/")
    kind, _, name = rest.partition("/")
    return (f"{kind} {name!r} on Docker engine {host[len(ENGINE_LOCK_PREFIX):]} (also reached "
            "under another host name)")


def _assignments(fields: Mapping[str, Any], allowed: set[str]) -> tuple[str, list[Any]]:
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"unknown columns: {sorted(unknown)}")

    values = []
    for key, value in fields.items():
        if hasattr(value, "value"):
            value = value.value
        elif key == "error" and isinstance(value, dict):
            value = json.dumps(value)
        values.append(value)
    return ", ".join(f"{key} = ?" for key in fields), values
