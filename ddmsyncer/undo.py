"""Helpers of a task's rollback: explain a target volume that cannot be removed, guard resume.

A rollback that `ddmctl rollback` started and that stopped part way keeps the task
interrupted, so that running `ddmctl rollback` again finishes it. Such a task must not be
resumed: a resume would copy again the volumes the rollback already removed.
"""

from __future__ import annotations

import logging
from typing import Any

from ddm.errors import ConnectionFailed, DDMError, MigrationFailed, TaskNotStarted
from ddm.store import TaskStore
from ddm.task import ItemState, Task, TaskItem, TaskState

log = logging.getLogger(__name__)

# Key of the task's extra state, set when `ddmctl rollback` (or cancel of an interrupted task)
# starts a rollback in a new process.
ROLLBACK_REQUESTED = "rollback_requested"

# Key of the task's extra state: when the latest `ddmctl rollback` of the task ended (seconds
# since the epoch), whether it finished or stopped part way. The task's own finished_at stays
# the end of its migration.
ROLLBACK_FINISHED_AT = "rollback_finished_at"

# Event kind of a target volume that a rollback found already gone, so it removed nothing.
# The event's data has the item's position.
ROLLBACK_ABSENT = "rollback_absent"

# Event kind of a target volume whose removal Docker rejected, for example because a
# container uses it. The event's data has the item's position and the error as "reason".
ROLLBACK_REJECTED = "rollback_rejected"

# Event kind of an item that an earlier rollback of the task undid, whose target volume name
# exists on the target again. That volume is not the task's copy, so the rollback leaves it.
# The event's data has the item's position.
ROLLBACK_PRESENT = "rollback_present"

# Event kind of an item that an earlier rollback of the task undid, when this rollback could
# not read the target to check whether a volume of that name exists now. The event's data has
# the item's position.
ROLLBACK_UNCHECKED = "rollback_unchecked"

# Key of the task's extra state: the error (error, message, exit_status) of the latest
# `ddmctl rollback` of the task when that rollback failed, else None. The task's own error
# stays the error that stopped it, when it had one.
ROLLBACK_ERROR = "rollback_error"

# Item states that a rollback of the task leaves: removed (or restored), or found already gone.
UNDONE_STATES = (ItemState.ROLLED_BACK, ItemState.ABSENT)

# Task states that a finished rollback of the task leaves. A failed or cancelled task was
# rolled back when it stopped, because a failed rollback leaves it interrupted, and a task
# cancelled while queued had nothing to undo. A rolled_back task was rolled back on request.
# Another rollback of such a task keeps its state and error.
ROLLED_BACK_STATES = (TaskState.FAILED, TaskState.CANCELLED, TaskState.ROLLED_BACK)


def undone_items(task: Task) -> list[TaskItem]:
    """Return the items that an earlier rollback of the task undid."""
    return [item for item in task.items
            if item.state in UNDONE_STATES and not item.target_created]


def record_present_again(runner: Any, undone: list[TaskItem]) -> None:
    """Record a ROLLBACK_PRESENT event for each of `undone` whose target volume exists now.

    A rollback never removes such a volume, because the task no longer records it as created.
    The rollback's report reads these events and reports the volume kept, as not the task's
    copy, in place of the earlier rollback's outcome. When the target cannot be read, a
    warning and a ROLLBACK_UNCHECKED event per item are recorded, and the report states that
    it could not check those volumes.
    """
    host = runner.task.spec.target_host
    try:
        present = runner.on_host(host, lambda target: [
            item for item in undone if target.volume_inspect(item.target) is not None])
    except DDMError as error:
        names = ", ".join(repr(item.target) for item in undone)
        runner.warn(f"could not check on {host} whether the volumes that an earlier rollback "
                    f"of the task undid exist now ({names}): {error}")
        for item in undone:
            runner.record("info", ROLLBACK_UNCHECKED, f"could not check whether volume "
                          f"{item.target!r} exists on {host} now", position=item.position)
        return
    for item in present:
        runner.record("info", ROLLBACK_PRESENT, f"volume {item.target!r} exists on {host} "
                      "again, after an earlier rollback of the task undid it; it is not the "
                      "task's copy, so this rollback left it as it is", position=item.position)


def remove_target_volume(target: Any, name: str, task_id: str) -> None:
    """Remove a target volume; when a container uses it, raise an error naming that container."""
    try:
        target.volume_remove(name)
    except MigrationFailed as error:
        users = containers_using(target, name)
        if not users and "in use" in str(error):
            # The lookup found no container, but Docker's error names the one that uses it.
            error.hint = (f"remove the container that Docker names in its error on "
                          f"{target.host.name}, then run 'ddmctl rollback {task_id}' again")
            raise
        if not users:
            raise
        host = target.host.name
        raise MigrationFailed(
            f"removing volume {name!r} from {host} failed because container "
            f"{', '.join(repr(user) for user in users)} uses it",
            hint=f"remove that container on {host} (stopping it is not enough, because Docker "
            f"keeps the volumes of stopped containers), then run 'ddmctl rollback {task_id}' again",
        ) from error


def containers_using(target: Any, volume: str) -> list[str]:
    """Return the names of the containers (running or not) that mount a volume; [] if unknown."""
    from ddmsyncer.replacecheck import containers_using as lookup

    try:
        return lookup(target, volume)
    except Exception as error:  # noqa: BLE001 - the lookup only improves an error message
        log.debug("listing the containers using volume %s failed: %s", volume, error)
        return []


def mark_rollback_requested(store: TaskStore, task_id: str) -> None:
    """Record that the operator requested this task's rollback."""
    store.set_extra(task_id, **{ROLLBACK_REQUESTED: True})


def reject_resume_of_rollback(store: TaskStore, task: Task) -> None:
    """Raise TaskNotStarted when an interrupted task stopped during a rollback the operator requested."""
    if task.state is not TaskState.INTERRUPTED:
        return
    if not store.get_extra(task.id).get(ROLLBACK_REQUESTED):
        return
    raise TaskNotStarted(
        f"task {task.id} was being rolled back when it stopped, so it cannot be resumed",
        hint=f"run 'ddmctl rollback {task.id}' to finish the rollback",
    )


def add_rollback_next_step(error: BaseException, task_id: str) -> None:
    """Append 'run ddmctl rollback again' to a rollback's error when it has no next step yet."""
    if not isinstance(error, DDMError):
        return
    if f"ddmctl rollback {task_id}" in str(error):
        return
    if isinstance(error, ConnectionFailed):
        step = f"when the host is reachable again, run 'ddmctl rollback {task_id}' to finish"
    else:
        step = f"then run 'ddmctl rollback {task_id}' again to finish"
    error.hint = f"{error.hint}; {step}" if error.hint else step
