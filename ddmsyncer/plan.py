"""The plan of a task: what it would do, found with read-only checks on both hosts."""

from __future__ import annotations

from typing import Any

from ddm.config import Config
from ddm.errors import DDMError
from ddm.task import TaskItem, TaskSpec
from ddmsyncer import volumes

STEPS = (
    "prepare: check both engines, the source volumes, free target names and free space",
    "copy: create each target volume (same driver, options, labels) and relay its archive",
    "verify: compare the target's manifest with the source's",
    "cleanup: remove helper containers on both hosts",
)


def build_plan(config: Config, spec: TaskSpec) -> dict[str, Any]:
    """Return the plan of a volumes-mode task; nothing on either host changes."""
    from ddmdriver.engine import open_engine

    source_host = config.host(spec.source_host)
    target_host = config.host(spec.target_host)
    plan: dict[str, Any] = {
        "source_host": spec.source_host,
        "target_host": spec.target_host,
        "mode": spec.mode.value,
        "verify": spec.verify.value,
        "data_path": "engine-api",
        "volumes": [],
        "conflicts": [],
        "steps": list(STEPS),
    }

    with open_engine(source_host, config) as source, open_engine(target_host, config) as target:
        plan["source_engine"] = _engine_summary(source)
        plan["target_engine"] = _engine_summary(target)
        for position, volume in enumerate(spec.volumes):
            item = TaskItem(task_id="plan", position=position, source=volume.source,
                            target=volume.target)
            plan["volumes"].append(_plan_volume(source, target, item, spec, plan["conflicts"]))

        needed = sum(entry.get("size_bytes") or 0 for entry in plan["volumes"])
        plan["bytes_total"] = needed
        try:
            volumes.check_space(target, needed, ", ".join(v.target for v in spec.volumes))
        except DDMError as error:
            plan["conflicts"].append(str(error))

    plan["ok"] = not plan["conflicts"]
    return plan


def _engine_summary(engine: Any) -> dict[str, Any]:
    info = engine.ping()
    return {"version": info.version, "api_version": info.api_version, "os": info.os,
            "arch": info.arch}


def _plan_volume(source: Any, target: Any, item: TaskItem, spec: TaskSpec,
                 conflicts: list[str]) -> dict[str, Any]:
    entry: dict[str, Any] = {"source": item.source, "target": item.target}
    try:
        check = volumes.check_volume(source, target, item, force=spec.force)
    except DDMError as error:
        conflicts.append(str(error))
        entry["error"] = str(error)
        return entry

    entry.update(
        driver=check.source_driver,
        size_bytes=check.size_bytes,
        replaces_existing=check.target_exists,
        preserves=list(volumes.aspects_for(spec.verify)),
    )
    return entry
