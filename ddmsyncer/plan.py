"""The plan of a task: what it would do, found with read-only checks on both hosts."""

from __future__ import annotations

from typing import Any

from ddm.config import Config
from ddm.errors import DDMError
from ddm.task import TaskItem, TaskSpec
from ddmsyncer import datapath, volumes, writers
from ddmsyncer.datapath import HostProbes

STEPS = (
    "prepare: check both engines, the source volumes, free target names and free space",
    "copy: fill a staging volume on the target (same driver, options, labels) on each "
    "volume's data path",
    "verify: compare the staging volume's manifest with the source's, then give it the "
    "real name",
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
        "data_path": spec.options.get("data_path", "auto"),
        "volumes": [],
        "conflicts": [],
        "steps": list(STEPS),
    }

    with open_engine(source_host, config) as source, open_engine(target_host, config) as target:
        plan["source_engine"] = _engine_summary(source)
        plan["target_engine"] = _engine_summary(target)
        probes = HostProbes()
        for position, volume in enumerate(spec.volumes):
            item = TaskItem(task_id="plan", position=position, source=volume.source,
                            target=volume.target)
            entry = _plan_volume(source, target, item, spec, plan["conflicts"])
            if "error" not in entry:
                entry.update(_plan_data_path(source, target, item, spec, probes, plan["conflicts"]))
            plan["volumes"].append(entry)

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


def _plan_data_path(source: Any, target: Any, item: TaskItem, spec: TaskSpec, probes: HostProbes,
                    conflicts: list[str]) -> dict[str, Any]:
    """Return the volume's data path, what it keeps and loses, and its running writers."""
    entry: dict[str, Any] = {}
    try:
        route = datapath.choose_route(source, target, source.volume_inspect(item.source),
                                      spec.options.get("data_path", "auto"), probes)
    except DDMError as error:
        conflicts.append(str(error))
        entry["error"] = str(error)
        return entry

    entry.update(
        data_path=route.data_path.value,
        data_path_reason=route.reason,
        keeps=list(datapath.keeps(route.data_path)),
        loses=list(datapath.loses(route.data_path)),
        preserves=list(datapath.verify_aspects(route.data_path,
                                               deep=spec.verify.value == "full")),
    )
    found = writers.running_writers(source, item.source)
    entry["running_writers"] = [writer.name for writer in found]
    policy = writers.WriterPolicy.from_options(spec.options)
    if found and not policy.live and policy.quiesce is None:
        try:
            writers.reject_running_writers(spec.source_host, item.source, found)
        except DDMError as error:
            conflicts.append(str(error))
    return entry
