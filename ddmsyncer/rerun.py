"""Re-runs of a finished migration: recognize them and send no data.

A re-run is the same `ddmctl migrate` command run again after a task with the same source
host, target host and selection succeeded. Nothing needs to move when the target still contains
what that task put there, so the new task sends no data and succeeds as "already migrated".
It never overwrites the target. Whenever the target or the source changed since, the usual
rules apply: a conflict is rejected, and `--incremental` or `--force` decide how to overwrite.

Volumes mode: a volume counts as already migrated when an earlier succeeded task of this store
verified a copy of the same source volume into the same target volume, the task sets neither
`--incremental` nor `--force`, and a host-side scan of both volumes (ddmsyncer/hostscan.py over
SSH, with the SHA-256 of every file, taken from the hash cache where a file's key is
unchanged) finds no difference. Only the listings cross the wire.
Hosts that are not ssh:// hosts cannot be scanned, so there the target volume is a conflict as
before.

Full mode: the containers count as already migrated when an earlier succeeded full-mode task
moved the same containers (or compose project), every target container it created still
exists with the same container ID, and every source container is either gone (removed with
`--remove-source`) or the same container, stopped, and not started again since that task began.
Volumes and writable layers are not compared, because the target containers run and change
them: their current state is the migrated application's own state.
"""

from __future__ import annotations

import calendar
import logging
import time
from types import SimpleNamespace
from typing import Any

from ddm.errors import TargetExists
from ddm.manifest import display_path
from ddm.task import ItemState, Mode, Task, TaskState
from ddm.text import counted
from ddmdriver import containers as driver
from ddmsyncer import incremental
from ddmsyncer.copyorigin import EXTRA_KEY, copying_task
from ddmsyncer.fullplan import PROJECT_LABEL
from ddmsyncer.hashcache import HashCache

log = logging.getLogger(__name__)

ALREADY_MIGRATED_ACTION = "already_migrated"  # the action of such a volume in a plan


# Volumes mode


def mark_unchanged_volumes(runner: Any) -> dict[int, str]:
    """Mark the task's volumes that an earlier task already copied, unchanged, as verified.

    Return {item position: earlier task ID}. Raise TargetExists when the target volume contains
    an earlier copy that differs from the source now, naming the options that overwrite it.
    """
    spec = runner.task.spec
    if spec.force or spec.options.get("incremental"):
        return {}
    if not (incremental.supports_host_commands(runner.source)
            and incremental.supports_host_commands(runner.target)):
        return {}

    found: dict[int, str] = {}
    for item in runner.pending_items():
        if item.target_created or runner.target.volume_inspect(item.target) is None:
            continue
        earlier = incremental.earlier_copy(runner.store, runner.task.id, spec.source_host,
                                           spec.target_host, item)
        if earlier is None:
            continue
        earlier = copying_task(runner.store, earlier, item)
        _check_volume_unchanged(runner, item, earlier)
        found[item.position] = earlier

    if found:
        runner.store.set_extra(runner.task.id, **{EXTRA_KEY: {str(position): task_id
                                                              for position, task_id in found.items()}})
    return found


def _check_volume_unchanged(runner: Any, item: Any, earlier: str) -> None:
    """Scan both volumes on their hosts; mark the item verified, or raise TargetExists."""
    spec = runner.task.spec
    source_mountpoint, target_mountpoint = incremental._mountpoints(runner, item)
    source_scan, scan_bytes = compare_volumes(runner.source, source_mountpoint, runner.target,
                                              target_mountpoint, runner.store, spec, item,
                                              earlier)
    size = sum(entry.size for entry in source_scan.values())
    now = time.time()
    runner.update_item(item, state=ItemState.VERIFIED, bytes_total=size, bytes_done=0,
                       entries=len(source_scan), started_at=now, finished_at=now)
    runner.record("info", "already_migrated",
                  f"volume {item.target!r} on {spec.target_host} already contains source volume "
                  f"{item.source!r}, copied by task {earlier}; nothing sent "
                  f"({scan_bytes} bytes of host-side listings)",
                  position=item.position, earlier_task=earlier, scan_bytes=scan_bytes)


def compare_volumes(source: Any, source_mountpoint: str, target: Any, target_mountpoint: str,
                    store: Any, spec: Any, item: Any, earlier: str) -> tuple[Any, int]:
    """Scan both volumes on their hosts; return the source's scan and the listing bytes.

    Raises TargetExists when the target volume differs from the source volume now.
    """
    source_scan, target_scan, scan_bytes = incremental.scan_both(
        source, source_mountpoint, target, target_mountpoint,
        cache=HashCache(store), hash_mode="cached")
    differences = list(incremental._differences(source_scan, target_scan))
    if differences:
        path, aspect = differences[0]
        raise TargetExists(
            f"volume {item.target!r} on {spec.target_host} contains the copy made by task "
            f"{earlier} but differs from source volume {item.source!r} now "
            f"({counted(len(differences), 'difference')}, first {display_path(path)}: {aspect})",
            hint=_overwrite_hint(spec),
        )
    return source_scan, scan_bytes


def _overwrite_hint(spec: Any) -> str:
    """Return the options that overwrite a changed earlier copy, for this task's route."""
    if spec.options.get("route") == "direct":
        # --incremental is relayed only, so it cannot be combined with --route direct.
        return ("pass --force to replace the volume, or leave out --route direct and pass "
                "--incremental to send the changes (both overwrite changes made on the target)")
    return ("pass --incremental to send the changes (this overwrites changes made on the "
            "target) or --force to replace the volume")


def plan_volume(source: Any, target: Any, item: Any, spec: Any, store: Any) -> dict[str, Any] | None:
    """Return the plan fields of a volume that a re-run would leave alone, or None.

    None means the real run would not treat the volume as already migrated, so the caller
    plans it as usual. Raises TargetExists as the real run does when the earlier copy on the
    target differs from the source now. Only listings cross the wire, and neither host changes.
    """
    if spec.force or spec.options.get("incremental"):
        return None
    if not (incremental.supports_host_commands(source)
            and incremental.supports_host_commands(target)):
        return None
    target_volume = target.volume_inspect(item.target)
    source_volume = source.volume_inspect(item.source)
    if target_volume is None or source_volume is None:
        return None
    earlier = incremental.earlier_copy(store, "", spec.source_host, spec.target_host, item)
    if earlier is None or not source_volume.mountpoint or not target_volume.mountpoint:
        return None
    earlier = copying_task(store, earlier, item)

    source_scan, _ = compare_volumes(source, source_volume.mountpoint, target,
                                     target_volume.mountpoint, store, spec, item, earlier)
    return {
        "action": ALREADY_MIGRATED_ACTION,
        "earlier_task": earlier,
        "driver": source_volume.driver,
        "size_bytes": sum(entry.size for entry in source_scan.values()),
        "data_path": "none",
    }


# Full mode


def find_finished_full(runner: Any) -> dict[str, Any] | None:
    """Return what an earlier succeeded task migrated, when this task repeats it unchanged.

    The result is stored as the task's "already_migrated" extra state: the earlier task ID, the
    source container names and the target containers ({name, id}). None means the task must
    run in full, and its prepare phase reports any conflict as usual.
    """
    spec = runner.task.spec
    for earlier in runner.store.list_tasks(state=TaskState.SUCCEEDED, limit=1000):
        if earlier.id == runner.task.id or not _same_selection(earlier, runner.task):
            continue
        record = _migrated(runner.store.get_extra(earlier.id), earlier)
        if record is None:
            continue
        if not _targets_unchanged(runner.target, record["target_containers"]):
            log.info("task %s: target containers of task %s changed; not a re-run",
                     runner.task.id, earlier.id)
            return None
        if not _sources_unchanged(runner.source, record, spec.options.get("project")):
            log.info("task %s: source containers of task %s changed; not a re-run",
                     runner.task.id, earlier.id)
            return None
        return record
    return None


def plan_full(source: Any, target: Any, spec: Any, store: Any) -> dict[str, Any] | None:
    """Return what find_finished_full would return for a task of `spec`, or None.

    Only inspects containers on both hosts, and changes neither host nor the task database.
    """
    planned = SimpleNamespace(task=Task(id="", spec=spec), store=store, source=source,
                              target=target)
    return find_finished_full(planned)


def _same_selection(earlier: Task, task: Task) -> bool:
    ours, theirs = task.spec, earlier.spec
    if theirs.mode is not Mode.FULL:
        return False
    if (theirs.source_host, theirs.target_host) != (ours.source_host, ours.target_host):
        return False
    if ours.options.get("project"):
        return theirs.options.get("project") == ours.options.get("project")
    return (not theirs.options.get("project")
            and sorted(theirs.options.get("containers") or [])
            == sorted(ours.options.get("containers") or []))


def _migrated(extra: dict[str, Any], earlier: Task) -> dict[str, Any] | None:
    """Return the containers an earlier task left on the target, from its extra state."""
    if extra.get(EXTRA_KEY):
        return dict(extra[EXTRA_KEY])

    containers = (extra.get("plan") or {}).get("containers") or []
    created = (extra.get("created") or {}).get("containers") or []
    if not containers or len(created) != len(containers):
        return None
    source_ids = extra.get("source_container_ids") or {}
    return {
        "task": earlier.id,
        "started_at": earlier.started_at,
        "source_containers": [{"name": container["name"], "id": source_ids.get(container["name"])}
                              for container in containers],
        "target_containers": [{"name": entry["name"], "id": entry.get("id")}
                              for entry in created],
    }


def _targets_unchanged(target: Any, containers: list[dict[str, Any]]) -> bool:
    for entry in containers:
        inspect = driver.container_inspect(target, entry["name"])
        if inspect is None or not entry.get("id") or inspect["Id"] != entry["id"]:
            return False
    return True


def _sources_unchanged(source: Any, record: dict[str, Any], project: str | None) -> bool:
    """Check that each source container is gone, or the same one, stopped and not started since."""
    names = set()
    for entry in record["source_containers"]:
        names.add(entry["name"])
        inspect = driver.container_inspect(source, entry["name"])
        if inspect is None:
            continue
        if entry.get("id") and inspect["Id"] != entry["id"]:
            return False
        state = inspect.get("State") or {}
        if state.get("Running") or state.get("Restarting"):
            return False
        started = _docker_time(state.get("StartedAt"))
        if started is not None and record.get("started_at") and started > record["started_at"]:
            return False

    if project:
        listed = driver.list_containers(source, labels={PROJECT_LABEL: project})
        if any(_listed_name(entry) not in names for entry in listed):
            return False  # a container joined the project since
    return True


def _listed_name(entry: dict[str, Any]) -> str:
    listed = entry.get("Names") or [""]
    return str(listed[0]).lstrip("/")


def _docker_time(value: str | None) -> float | None:
    """Parse Docker's RFC 3339 time with nanoseconds, in UTC, into seconds since the epoch."""
    if not value or value.startswith("0001-"):
        return None
    seconds, _, fraction = value.rstrip("Z").partition(".")
    try:
        parsed = time.strptime(seconds, "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None
    return calendar.timegm(parsed) + float(f"0.{fraction or '0'}")
