"""Find the task that copied a volume's data, across re-runs that sent nothing.

A re-run that found a volume already migrated (ddmsyncer/rerun.py) succeeds with the volume
verified but sends no data. Its extra state records, under EXTRA_KEY, the task whose copy it
found: {item position: task ID} in volumes mode. `incremental.earlier_copy` returns the newest
succeeded task with the volume pair, which may be such a re-run, so messages that name the
copy's maker pass its result through `copying_task`.
"""

from __future__ import annotations

from typing import Any

EXTRA_KEY = "already_migrated"


def copying_task(store: Any, task_id: str, item: Any) -> str:
    """Return the task that copied `item`'s source volume into its target, starting at task_id.

    Follows the "already migrated" records from re-run to re-run. Returns task_id itself when
    that task copied the data, and the last task reached when a record is missing.
    """
    seen = set()
    while task_id not in seen:
        seen.add(task_id)
        record = store.get_extra(task_id).get(EXTRA_KEY)
        if not isinstance(record, dict) or "task" in record:
            return task_id  # no record, or a full-mode record, which has no volume positions
        earlier = None
        for candidate in store.get_task(task_id).items:
            if (candidate.source, candidate.target) == (item.source, item.target):
                earlier = record.get(str(candidate.position))
                break
        if not earlier:
            return task_id
        task_id = earlier
    return task_id
