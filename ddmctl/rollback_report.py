"""Per-volume outcomes of `ddmctl rollback`, read from the task's items and events."""

from __future__ import annotations

from typing import Any

from ddm.task import ItemState, Task

# The event message the runner stores when a rollback starts (TaskRunner.rollback).
ROLLBACK_STARTED = "phase rollback started"


def rollback_outcomes(task: Task, events: list[dict[str, Any]]) -> dict[int, tuple[str, str]]:
    """Return (outcome, reason) by item position: removed, restored, untouched, kept or remaining.

    An incremental update that a rollback undid from its backup is "restored". Only restores
    after the task's first rollback started count, because a resumed run also restores the
    backup of a crashed run before it updates the volume again.
    """
    restored = restored_positions(events)
    outcomes: dict[int, tuple[str, str]] = {}
    for item in task.items:
        if item.position in restored and item.state is ItemState.ROLLED_BACK:
            outcomes[item.position] = ("restored", "the target is as before the task")
        elif item.state is ItemState.ROLLED_BACK:
            outcomes[item.position] = ("removed", "")
        elif item.target_created:
            outcomes[item.position] = ("remaining", "the rollback stopped before removing it")
        elif item.state is ItemState.PENDING:
            outcomes[item.position] = ("untouched", "the task never started this volume")
        else:
            outcomes[item.position] = ("kept", "the task did not create this target volume")
    return outcomes


def restored_positions(events: list[dict[str, Any]]) -> set[int]:
    """Return the positions of items restored from a backup by a rollback of the task."""
    started = next((event["id"] for event in events
                    if event["kind"] == "phase" and event["message"] == ROLLBACK_STARTED), None)
    if started is None:
        return set()
    return {
        int(event["data"]["position"]) for event in events
        if event["kind"] == "restored" and event["id"] > started
        and isinstance(event.get("data"), dict) and "position" in event["data"]
    }
