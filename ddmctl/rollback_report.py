"""Per-volume outcomes of `ddmctl rollback`, read from the task's items and events."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from ddm.store import TaskStore
from ddm.task import ItemState, Task, TaskItem
from ddmsyncer.undo import (ROLLBACK_ABSENT, ROLLBACK_PRESENT, ROLLBACK_REJECTED,
                            ROLLBACK_UNCHECKED, UNDONE_STATES)

# The event message the runner stores when a rollback starts (TaskRunner.rollback).
ROLLBACK_STARTED = "phase rollback started"

# Item states of a task that wrote a target volume and left its data there.
WROTE_TARGET_STATES = (ItemState.VERIFIED, ItemState.UNVERIFIED)

# The reason of a target volume that no longer existed when the rollback came to it.
ABSENT_REASON = "the volume no longer existed, so the rollback had nothing to remove"

# The reason of a removed copy that never left its staging volume: the target volume's name
# may belong to a volume that the task did not create, and the rollback left that alone.
STAGED_ONLY_REASON = ("the rollback removed only the task's staging copy; the task did not "
                      "create this target volume")

# How many tasks store.list_tasks() returns when later_writers() looks for later tasks.
LATER_TASKS_LIMIT = 1000


def rollback_outcomes(task: Task, events: list[dict[str, Any]], *,
                      rolled_back_before: Collection[int] = (),
                      later_tasks: Mapping[int, list[str]] | None = None,
                      changed: Mapping[int, str] | None = None,
                      absent_at_check: Collection[int] = (),
                      repeated: bool = False,
                      stopped: bool = False
                      ) -> dict[int, tuple[str, str]]:
    """Return (outcome, reason) by item position.

    The outcome is removed, absent (the volume no longer existed when the rollback came to it),
    restored, untouched, kept, remaining or unknown. The reason of a volume that remains
    because Docker rejected removing it is that error (see rejected_removals).

    An incremental update that a rollback undid from its backup is "restored". Only restores
    after the task's first rollback started count, because a resumed run also restores the
    backup of a crashed run before it updates the volume again.

    `rolled_back_before` lists the positions that were rolled back before this rollback
    started, for example by the automatic rollback of a failed task. When `later_tasks` (by
    position, the IDs of later tasks that wrote the same target volume) names a task for
    such a position, the volume is "kept": it contains that later task's data, not the state
    the earlier rollback left. A volume of that name that this rollback found on the target
    (a ROLLBACK_PRESENT event) is "kept" too, because it is not the task's copy.

    `repeated` is for a task whose own rollback had already finished before this one started
    (undo.ROLLED_BACK_STATES). This rollback left its undone volumes alone, so a volume the
    earlier rollback restored is "kept", and one that it removed or found gone is "absent",
    each with the earlier rollback's outcome as the reason. Such a volume is "unknown" instead
    of "absent" when this rollback could not check whether a volume of its name exists now (a
    ROLLBACK_UNCHECKED event). So is it when `stopped` (this rollback raised an error),
    because that check is the rollback's last step on the target. Otherwise, as when a
    rollback that stopped part way runs again, an earlier rollback's outcome is reported as if
    this rollback had done it, so that the report covers every volume.

    `changed` (TargetsChanged.changed) is for a rollback that the changed-volume check
    stopped before it removed anything: those volumes are "kept" with the check's reason,
    the ones in `absent_at_check` (TargetsChanged.absent) are "absent", and the task's other
    volumes that are still there are "remaining".
    """
    restored = restored_positions(events)
    removed = removed_positions(task, events)
    absent = positions_after_rollback(events, ROLLBACK_ABSENT)
    rejected = rejected_removals(events)
    present = positions_in_latest_rollback(events, ROLLBACK_PRESENT)
    unchecked = positions_in_latest_rollback(events, ROLLBACK_UNCHECKED)
    later_tasks = later_tasks or {}
    changed = changed or {}
    outcomes: dict[int, tuple[str, str]] = {}
    for item in task.items:
        later = later_tasks.get(item.position, [])
        if item.position in changed:
            outcomes[item.position] = ("kept", f"the volume {changed[item.position]}, so the "
                                               "rollback kept it; pass --force to remove it")
        elif changed and item.position in absent_at_check:
            outcomes[item.position] = ("absent", ABSENT_REASON)
        elif changed and item.target_created:
            outcomes[item.position] = ("remaining", "the rollback removed nothing, because "
                                                    "other target volumes of the task changed")
        elif item.position in rolled_back_before and item.state in UNDONE_STATES and later:
            outcomes[item.position] = _earlier_outcome(item, item.position in restored, later)
        elif repeated and item.position in rolled_back_before and item.position in restored:
            outcomes[item.position] = ("kept", f"{_earlier_undo(item, restored=True)}, and "
                                               "this rollback left it as it is")
        elif item.position in restored and item.state is ItemState.ROLLED_BACK:
            outcomes[item.position] = ("restored", "the target is as before the task")
        elif item.position in rolled_back_before and item.position in present:
            outcomes[item.position] = ("kept", f"{_earlier_undo(item, restored=False)}; the "
                                               "volume of this name that exists now is not "
                                               "the task's copy, and this rollback left it as "
                                               "it is")
        elif repeated and item.position in rolled_back_before and (
                item.position in unchecked or stopped):
            outcomes[item.position] = _unchecked_outcome(
                task, item, found_gone=item.position in absent,
                check_failed=item.position in unchecked)
        elif repeated and item.position in rolled_back_before:
            earlier = _earlier_undo(item, restored=False, found_gone=item.position in absent)
            outcomes[item.position] = ("absent", f"{earlier}, so this rollback had nothing "
                                                 "to remove")
        elif item.state is ItemState.ABSENT or (item.position in absent
                                                and item.state is ItemState.ROLLED_BACK):
            # An item stored before the absent state existed has rolled_back and the event.
            outcomes[item.position] = ("absent", ABSENT_REASON)
        elif item.state is ItemState.ROLLED_BACK and item.position in removed:
            outcomes[item.position] = ("removed", "")
        elif item.state is ItemState.ROLLED_BACK:
            outcomes[item.position] = ("removed", STAGED_ONLY_REASON)
        elif item.target_created and item.position in rejected:
            outcomes[item.position] = ("remaining", f"Docker rejected removing it: "
                                                    f"{rejected[item.position]}")
        elif item.target_created:
            outcomes[item.position] = ("remaining", "the rollback stopped before removing it")
        elif item.state is ItemState.PENDING:
            outcomes[item.position] = ("untouched", "the task never started this volume")
        else:
            outcomes[item.position] = ("kept", "the task did not create this target volume")
    return outcomes


def _earlier_outcome(item: TaskItem, restored: bool, later: list[str]) -> tuple[str, str]:
    """Return the outcome of an item that an earlier rollback undid and later tasks wrote."""
    tasks = "task" if len(later) == 1 else "tasks"
    return ("kept", f"{_earlier_undo(item, restored=restored)}; {tasks} {', '.join(later)} "
                    "wrote this target volume since, and this rollback left it as it is")


def _unchecked_outcome(task: Task, item: TaskItem, *, found_gone: bool,
                       check_failed: bool) -> tuple[str, str]:
    """Return the outcome of an item that an earlier rollback undid and this one did not check.

    `check_failed` is true when the check could not read the target. Otherwise the rollback
    stopped before it came to the check, and its error line gives what to do.
    """
    earlier = _earlier_undo(item, restored=False, found_gone=found_gone)
    host = task.spec.target_host
    if check_failed:
        return ("unknown", f"{earlier}; this rollback could not check whether a volume named "
                           f"{item.target!r} exists on {host} now: run 'ddmctl rollback "
                           f"{task.id}' again when {host} is reachable")
    return ("unknown", f"{earlier}; this rollback stopped before it checked whether a volume "
                       f"named {item.target!r} exists on {host} now")


def _earlier_undo(item: TaskItem, *, restored: bool, found_gone: bool = False) -> str:
    """Return the clause for what an earlier rollback did to the item's target volume.

    `found_gone` is for an item that the earlier rollback found gone (a ROLLBACK_ABSENT
    event) but stored as rolled_back. Such an item is an incremental update whose volume was
    gone when the rollback came to restore it, or an item stored before the absent state
    existed.
    """
    if restored:
        return "an earlier rollback restored it from the task's backup"
    if item.state is ItemState.ABSENT or found_gone:
        return "an earlier rollback found the volume already gone"
    return "an earlier rollback removed what the task wrote"


def removed_positions(task: Task, events: list[dict[str, Any]]) -> set[int]:
    """Return the positions of items whose target volume a rollback of the task removed.

    Those are the "rolled_back" events since the task's first rollback started. Events stored
    before they carried the item's position are matched by the volume name in the message.
    """
    started = next((event["id"] for event in events
                    if event["kind"] == "phase" and event["message"] == ROLLBACK_STARTED), None)
    if started is None:
        return set()
    found = set()
    for event in events:
        if event["kind"] != "rolled_back" or event["id"] <= started:
            continue
        data = event.get("data")
        if isinstance(data, dict) and "position" in data:
            found.add(int(data["position"]))
            continue
        found.update(item.position for item in task.items
                     if event["message"].startswith(f"removed volume {item.target!r} from "))
    return found


def restored_positions(events: list[dict[str, Any]]) -> set[int]:
    """Return the positions of items restored from a backup by a rollback of the task."""
    return positions_after_rollback(events, "restored")


def positions_after_rollback(events: list[dict[str, Any]], kind: str) -> set[int]:
    """Return the item positions of the `kind` events since the task's first rollback started."""
    started = next((event["id"] for event in events
                    if event["kind"] == "phase" and event["message"] == ROLLBACK_STARTED), None)
    return _positions_since(events, kind, started)


def latest_rollback_start(events: list[dict[str, Any]]) -> int | None:
    """Return the event ID of the start of the task's latest rollback, or None."""
    return max((event["id"] for event in events
                if event["kind"] == "phase" and event["message"] == ROLLBACK_STARTED),
               default=None)


def positions_in_latest_rollback(events: list[dict[str, Any]], kind: str) -> set[int]:
    """Return the item positions of the `kind` events since the task's latest rollback started."""
    return _positions_since(events, kind, latest_rollback_start(events))


def _positions_since(events: list[dict[str, Any]], kind: str, started: int | None) -> set[int]:
    """Return the item positions of the `kind` events after event ID `started` (none if None)."""
    if started is None:
        return set()
    return {
        int(event["data"]["position"]) for event in events
        if event["kind"] == kind and event["id"] > started
        and isinstance(event.get("data"), dict) and "position" in event["data"]
    }


def rejected_removals(events: list[dict[str, Any]]) -> dict[int, str]:
    """Return, by item position, why Docker rejected removing a volume in the latest rollback.

    Only the latest rollback counts, because a rejection that an earlier run met may be fixed
    by now, and that run's error is not why the volume remains.
    """
    started = latest_rollback_start(events)
    if started is None:
        return {}
    found: dict[int, str] = {}
    for event in events:
        data = event.get("data")
        if event["kind"] != ROLLBACK_REJECTED or event["id"] < started:
            continue
        if isinstance(data, dict) and "position" in data and "reason" in data:
            found[int(data["position"])] = str(data["reason"])
    return found


def later_writers(store: TaskStore, task: Task) -> dict[int, list[str]]:
    """Return, by item position, the IDs of tasks created after `task` that wrote its target.

    A task counts when it has the same target host and an item with the same target volume
    that it verified or copied unverified, so its data is in that volume (unless it was rolled
    back too). Only the newest LATER_TASKS_LIMIT tasks of the store are read.
    """
    targets = {item.target: item.position for item in task.items}
    found: dict[int, list[str]] = {}
    for other in reversed(store.list_tasks(limit=LATER_TASKS_LIMIT)):
        if other.id == task.id or other.created_at <= task.created_at:
            continue
        if other.spec.target_host != task.spec.target_host:
            continue
        for item in other.items:
            if item.target in targets and item.state in WROTE_TARGET_STATES:
                found.setdefault(targets[item.target], []).append(other.id)
    return found
