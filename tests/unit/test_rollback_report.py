"""What `ddmctl rollback` reports per volume: removed, restored, untouched or kept."""

from __future__ import annotations

import json
from typing import Any

from ddm.api import create_task
from ddm.config import load_config
from ddm.store import TaskStore, default_store_path
from ddm.task import ItemState, Task, TaskItem, TaskSpec
from ddmctl.rollback_report import later_writers, rollback_outcomes
from tests.unit.cli_support import invoke


def event(event_id: int, kind: str, message: str, data: dict[str, Any] | None = None) -> dict:
    return {"id": event_id, "kind": kind, "message": message, "data": data}


def task_with(*states: ItemState) -> Task:
    task = Task(id="a" * 12, spec=TaskSpec(source_host="old", target_host="new"))
    task.items = [TaskItem(task_id=task.id, position=position, source=f"v{position}",
                           target=f"t{position}", state=state)
                  for position, state in enumerate(states)]
    return task


def test_outcome_per_item_state() -> None:
    task = task_with(ItemState.ROLLED_BACK, ItemState.ROLLED_BACK, ItemState.PENDING,
                     ItemState.VERIFIED)
    events = [
        event(1, "phase", "phase copy started"),
        event(2, "phase", "phase rollback started"),
        event(3, "restored", "restored volume 't1' on new to its state before the task",
              {"position": 1}),
        event(4, "rolled_back", "removed volume 't0' from new"),
    ]

    outcomes = rollback_outcomes(task, events)

    assert outcomes[0] == ("removed", "")
    assert outcomes[1] == ("restored", "the target is as before the task")
    assert outcomes[2] == ("untouched", "the task never started this volume")
    assert outcomes[3] == ("kept", "the task did not create this target volume")


def test_volume_gone_before_rollback_is_absent() -> None:
    task = task_with(ItemState.ROLLED_BACK, ItemState.ROLLED_BACK)
    events = [
        event(1, "phase", "phase rollback started"),
        event(2, "rollback_absent", "volume 't0' was already gone from new", {"position": 0}),
        event(3, "rolled_back", "removed volume 't1' from new"),
    ]

    outcomes = rollback_outcomes(task, events)

    assert outcomes[0] == ("absent", "the volume no longer existed, so the rollback had "
                                     "nothing to remove")
    assert outcomes[1] == ("removed", "")


def test_absent_item_reports_absent() -> None:
    task = task_with(ItemState.ABSENT, ItemState.ABSENT)

    outcomes = rollback_outcomes(task, [], rolled_back_before={1}, later_tasks={1: ["c" * 12]})

    assert outcomes[0] == ("absent", "the volume no longer existed, so the rollback had "
                                     "nothing to remove")
    assert outcomes[1] == ("kept", f"an earlier rollback found the volume already gone; task "
                                   f"{'c' * 12} wrote this target volume since, and this "
                                   "rollback left it as it is")


def test_restore_before_rollback_is_not_counted() -> None:
    # A resumed run restores a crashed run's backup before it updates the volume again.
    task = task_with(ItemState.ROLLED_BACK)
    events = [
        event(1, "restored", "restored volume 't0' on new to its state before the task",
              {"position": 0}),
        event(2, "phase", "phase rollback started"),
        event(3, "rolled_back", "removed volume 't0' from new", {"position": 0}),
    ]

    assert rollback_outcomes(task, events)[0] == ("removed", "")


def events_of_two_rollbacks() -> list[dict[str, Any]]:
    """Return the events of a rollback that restored item 0, then of a second rollback."""
    return [
        event(1, "phase", "phase rollback started"),
        event(2, "restored", "restored volume 't0' on new to its state before the task",
              {"position": 0}),
        event(3, "phase", "phase rollback started"),
    ]


def test_earlier_restore_is_kept_now() -> None:
    task = task_with(ItemState.ROLLED_BACK, ItemState.ROLLED_BACK)
    events = events_of_two_rollbacks()

    outcomes = rollback_outcomes(task, events, rolled_back_before={0, 1},
                                 later_tasks={0: ["b" * 12], 1: ["c" * 12, "d" * 12]})

    assert outcomes[0] == ("kept", "an earlier rollback restored it from the task's backup; "
                                   f"task {'b' * 12} wrote this target volume since, and this "
                                   "rollback left it as it is")
    assert outcomes[1] == ("kept", "an earlier rollback removed what the task wrote; tasks "
                                   f"{'c' * 12}, {'d' * 12} wrote this target volume since, and "
                                   "this rollback left it as it is")


def test_stopped_rollback_run_again_repeats_outcomes() -> None:
    # An interrupted rollback run again reports what its earlier run did, so every volume
    # has its outcome.
    task = task_with(ItemState.ROLLED_BACK, ItemState.ROLLED_BACK)
    events = events_of_two_rollbacks()

    events.insert(2, event(9, "rolled_back", "removed volume 't1' from new", {"position": 1}))

    outcomes = rollback_outcomes(task, events, rolled_back_before={0, 1}, later_tasks={})

    assert outcomes[0] == ("restored", "the target is as before the task")
    assert outcomes[1] == ("removed", "")


def test_repeated_rollback_removes_nothing() -> None:
    task = task_with(ItemState.ROLLED_BACK, ItemState.ROLLED_BACK, ItemState.ABSENT,
                     ItemState.ROLLED_BACK, ItemState.PENDING)
    events = [
        *events_of_two_rollbacks()[:2],
        event(3, "rollback_absent", "volume 't3' no longer exists on new, so the rollback "
              "could not restore it", {"position": 3}),
        event(4, "rolled_back", "removed volume 't1' from new"),
        event(5, "phase", "phase rollback started"),
    ]

    outcomes = rollback_outcomes(task, events, rolled_back_before={0, 1, 2, 3}, later_tasks={},
                                 repeated=True)

    assert outcomes[0] == ("kept", "an earlier rollback restored it from the task's backup, "
                                   "and this rollback left it as it is")
    assert outcomes[1] == ("absent", "an earlier rollback removed what the task wrote, so "
                                     "this rollback had nothing to remove")
    assert outcomes[2] == ("absent", "an earlier rollback found the volume already gone, so "
                                     "this rollback had nothing to remove")
    assert outcomes[3] == ("absent", "an earlier rollback found the volume already gone, so "
                                     "this rollback had nothing to remove")
    assert outcomes[4] == ("untouched", "the task never started this volume")


def test_repeated_rollback_keeps_later_data() -> None:
    task = task_with(ItemState.ROLLED_BACK, ItemState.ROLLED_BACK, ItemState.ROLLED_BACK)
    events = [
        event(1, "phase", "phase rollback started"),
        event(2, "phase", "phase rollback started"),
        event(3, "rollback_present", "volume 't1' exists on new again", {"position": 1}),
    ]

    outcomes = rollback_outcomes(task, events, rolled_back_before={0, 1, 2},
                                 later_tasks={0: ["b" * 12]}, repeated=True)

    assert outcomes[0] == ("kept", f"an earlier rollback removed what the task wrote; task "
                                   f"{'b' * 12} wrote this target volume since, and this "
                                   "rollback left it as it is")
    assert outcomes[1] == ("kept", "an earlier rollback removed what the task wrote; the volume "
                                   "of this name that exists now is not the task's copy, and "
                                   "this rollback left it as it is")
    assert outcomes[2] == ("absent", "an earlier rollback removed what the task wrote, so "
                                     "this rollback had nothing to remove")


def test_repeated_rollback_reports_new_removal() -> None:
    # A volume still recorded as created was not undone before, so its removal is this
    # rollback's own.
    task = task_with(ItemState.ROLLED_BACK, ItemState.ROLLED_BACK)
    events = [
        event(1, "phase", "phase rollback started"),
        event(2, "phase", "phase rollback started"),
        event(3, "rolled_back", "removed volume 't1' from new"),
    ]

    outcomes = rollback_outcomes(task, events, rolled_back_before={0}, repeated=True)

    assert outcomes[0][0] == "absent"
    assert outcomes[1] == ("removed", "")


def test_unchecked_volume_is_unknown() -> None:
    task = task_with(ItemState.ROLLED_BACK, ItemState.ABSENT, ItemState.ROLLED_BACK,
                     ItemState.ROLLED_BACK)
    events = [
        *events_of_two_rollbacks()[:2],
        event(3, "rollback_unchecked", "could not check whether volume 't3' exists on new now",
              {"position": 3}),
        event(4, "phase", "phase rollback started"),
        event(5, "rollback_unchecked", "could not check whether volume 't0' exists on new now",
              {"position": 0}),
        event(6, "rollback_unchecked", "could not check whether volume 't1' exists on new now",
              {"position": 1}),
    ]

    outcomes = rollback_outcomes(task, events, rolled_back_before={0, 1, 2, 3}, later_tasks={},
                                 repeated=True)

    # Item 0 was restored, and a restored volume is kept whether or not it was checked.
    assert outcomes[0] == ("kept", "an earlier rollback restored it from the task's backup, "
                                   "and this rollback left it as it is")
    assert outcomes[1] == ("unknown", "an earlier rollback found the volume already gone; this "
                                      "rollback could not check whether a volume named 't1' "
                                      f"exists on new now: run 'ddmctl rollback {'a' * 12}' "
                                      "again when new is reachable")
    assert outcomes[2] == ("absent", "an earlier rollback removed what the task wrote, so "
                                     "this rollback had nothing to remove")
    # Only the latest rollback's check counts: item 3 was not checked in an earlier one.
    assert outcomes[3] == ("absent", "an earlier rollback removed what the task wrote, so "
                                     "this rollback had nothing to remove")


def test_stopped_repeated_rollback_is_unknown() -> None:
    task = task_with(ItemState.ROLLED_BACK, ItemState.ROLLED_BACK, ItemState.PENDING)
    events = [
        event(1, "phase", "phase rollback started"),
        event(2, "phase", "phase rollback started"),
        event(3, "rollback_present", "volume 't1' exists on new again", {"position": 1}),
    ]

    outcomes = rollback_outcomes(task, events, rolled_back_before={0, 1}, later_tasks={},
                                 repeated=True, stopped=True)

    assert outcomes[0] == ("unknown", "an earlier rollback removed what the task wrote; this "
                                      "rollback stopped before it checked whether a volume "
                                      "named 't0' exists on new now")
    assert outcomes[1][0] == "kept"
    assert outcomes[2] == ("untouched", "the task never started this volume")


def test_volume_present_again_is_kept() -> None:
    task = task_with(ItemState.ROLLED_BACK, ItemState.ABSENT, ItemState.ROLLED_BACK)
    events = [
        event(1, "phase", "phase rollback started"),
        event(2, "rollback_present", "volume 't2' exists on new again", {"position": 2}),
        event(3, "phase", "phase rollback started"),
        event(4, "rollback_present", "volume 't0' exists on new again", {"position": 0}),
        event(5, "rollback_present", "volume 't1' exists on new again", {"position": 1}),
        event(6, "rolled_back", "removed volume 't2' from new", {"position": 2}),
    ]

    outcomes = rollback_outcomes(task, events, rolled_back_before={0, 1, 2}, later_tasks={})

    assert outcomes[0] == ("kept", "an earlier rollback removed what the task wrote; the volume "
                                   "of this name that exists now is not the task's copy, and "
                                   "this rollback left it as it is")
    assert outcomes[1] == ("kept", "an earlier rollback found the volume already gone; the "
                                   "volume of this name that exists now is not the task's "
                                   "copy, and this rollback left it as it is")
    # Only the latest rollback's check counts: item 2's volume was there in the first one.
    assert outcomes[2] == ("removed", "")


def test_changed_volumes_are_kept() -> None:
    task = task_with(ItemState.VERIFIED, ItemState.VERIFIED, ItemState.ROLLED_BACK)
    for item in task.items[:2]:
        item.target_created = True

    events = [event(1, "phase", "phase rollback started"),
              event(2, "rolled_back", "removed volume 't2' from new", {"position": 2})]

    outcomes = rollback_outcomes(task, events,
                                 changed={0: "was replaced after task X created it"})

    assert outcomes[0] == ("kept", "the volume was replaced after task X created it, so the "
                                   "rollback kept it; pass --force to remove it")
    assert outcomes[1] == ("remaining", "the rollback removed nothing, because other target "
                                        "volumes of the task changed")
    assert outcomes[2] == ("removed", "")


def test_volume_gone_at_check_is_absent() -> None:
    task = task_with(ItemState.VERIFIED, ItemState.VERIFIED, ItemState.VERIFIED)
    for item in task.items:
        item.target_created = True

    outcomes = rollback_outcomes(task, [], changed={1: "was replaced after task X created it"},
                                 absent_at_check={0})

    assert outcomes[0] == ("absent", "the volume no longer existed, so the rollback had "
                                     "nothing to remove")
    assert outcomes[1][0] == "kept"
    assert outcomes[2][0] == "remaining"


def test_later_writers_by_target(environ: dict[str, str]) -> None:
    config = load_config(None, environ)
    store = TaskStore(default_store_path(environ))
    try:
        first = create_task(store, config, source="local", target="local",
                            volumes=("va:vb", "vc:vd"), verify="full", force=False)
        wrote = create_task(store, config, source="local", target="local",
                            volumes=("vx:vb",), verify="full", force=False)
        failed = create_task(store, config, source="local", target="local",
                             volumes=("vc:vd",), verify="full", force=False)
        store.update_item(wrote.id, 0, state=ItemState.VERIFIED)
        store.update_item(failed.id, 0, state=ItemState.ROLLED_BACK)

        later = later_writers(store, store.get_task(first.id))
        earlier = later_writers(store, store.get_task(wrote.id))
    finally:
        store.close()

    assert later == {0: [wrote.id]}
    assert earlier == {}


def test_rollback_of_queued_task_says_untouched(environ: dict[str, str]) -> None:
    config = load_config(None, environ)
    store = TaskStore(default_store_path(environ))
    try:
        task = create_task(store, config, source="local", target="local",
                           volumes=("va:vb",), verify="full", force=False)
    finally:
        store.close()

    outcome = invoke("ddmctl", ["rollback", task.id], environ)

    assert outcome.status == 0, outcome.stderr
    assert outcome.stdout == "va\tvb\tuntouched\tthe task never started this volume\n"


def test_rollback_json_has_outcome(environ: dict[str, str]) -> None:
    config = load_config(None, environ)
    store = TaskStore(default_store_path(environ))
    try:
        task = create_task(store, config, source="local", target="local",
                           volumes=("va:vb",), verify="full", force=False)
    finally:
        store.close()

    outcome = invoke("ddmctl", ["rollback", task.id, "--json"], environ)

    assert outcome.status == 0, outcome.stderr
    volume = json.loads(outcome.stdout)["volumes"][0]
    assert volume["rollback"] == {"outcome": "untouched",
                                  "reason": "the task never started this volume"}


def test_rejected_removal_gives_reason() -> None:
    task = task_with(ItemState.VERIFIED, ItemState.VERIFIED)
    for item in task.items:
        item.target_created = True
    reason = "removing volume 't0' from new failed because container 'web' uses it"
    first = [
        event(1, "phase", "phase rollback started"),
        event(2, "rollback_rejected", f"removing volume 't0' from new was rejected: {reason}",
              {"position": 0, "reason": reason}),
    ]
    second = [*first, event(3, "phase", "phase rollback started")]

    outcomes = rollback_outcomes(task, first)
    later = rollback_outcomes(task, second)

    assert outcomes[0] == ("remaining", f"Docker rejected removing it: {reason}")
    assert outcomes[1] == ("remaining", "the rollback stopped before removing it")
    assert later[0] == ("remaining", "the rollback stopped before removing it")


def test_staged_only_volume_says_so() -> None:
    """A copy that never left its staging volume: the rollback removed only the staging copy."""
    task = task_with(ItemState.ROLLED_BACK, ItemState.ROLLED_BACK)
    events = [
        event(1, "phase", "phase rollback started"),
        event(2, "rolled_back", "removed volume 't1' from new"),  # stored without a position
    ]

    outcomes = rollback_outcomes(task, events)

    assert outcomes[0] == ("removed", "the rollback removed only the task's staging copy; the "
                                      "task did not create this target volume")
    assert outcomes[1] == ("removed", "")
