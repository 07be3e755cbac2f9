"""The plan of a task: what it would do, found with read-only checks on both hosts.

The plan document (schema in docs/json-schemas.md) lists objects, each with a `kind`. Volumes
mode plans only objects of kind "volume". Full mode adds containers, images, bind mounts and
networks to the same list, with their own data paths and steps
(ddmsyncer/fullplan_document.py).

Nothing on either host changes: the checks inspect volumes, read the engines' disk usage and
free space, and the link probe reads /dev/zero and writes /dev/null over SSH.
"""

from __future__ import annotations

from typing import Any

from ddm.config import Config
from ddm.errors import DDMError, UsageError
from ddm.store import TaskStore
from ddm.task import Mode, TaskItem, TaskSpec, VerifyMode
from ddmsyncer import compression, datapath, direct, incremental, rerun, volumes, writers
from ddmsyncer.copyorigin import copying_task
from ddmsyncer.datapath import HostProbes
from ddmsyncer.linkprobe import LinkRate, measure_link

PLAN_VERSION = 1
DEFAULT_PROBE_BYTES = 4 * 1024 * 1024
DATA_PATH_ENGINE_API = "engine-api"
INCREMENTAL_ACTION = "incremental"

# Volume metadata that the copy recreates on the target, besides the files.
VOLUME_METADATA = ("driver", "driver_opts", "labels")
# Aspects the Engine API archive does not carry or the manifests do not compare.
NOT_VERIFIED = ("mtime_ns", "xattrs", "acl", "sparse")


def build_plan(config: Config, spec: TaskSpec, *, probe_bytes: int = DEFAULT_PROBE_BYTES,
               store: TaskStore | None = None) -> dict[str, Any]:
    """Return the plan document of a task in either mode. Nothing on either host changes.

    With the task database (`store`) and `--incremental`, a target volume that contains an earlier
    copy is planned as an incremental update, with the entries it would send and delete.
    """
    from ddmdriver.engine import open_engine

    if spec.mode is Mode.FULL:
        return build_full_mode_plan(config, spec, probe_bytes=probe_bytes, store=store)

    plan: dict[str, Any] = {
        "plan_version": PLAN_VERSION,
        "mode": spec.mode.value,
        "source_host": spec.source_host,
        "target_host": spec.target_host,
        "verify": spec.verify.value,
        "force": spec.force,
        "objects": [],
        "conflicts": [],
    }

    source_host = config.host(spec.source_host)
    target_host = config.host(spec.target_host)
    with open_engine(source_host, config) as source, open_engine(target_host, config) as target:
        plan["engines"] = {"source": _engine_summary(source), "target": _engine_summary(target)}
        probes = HostProbes()
        for position, volume in enumerate(spec.volumes):
            item = TaskItem(task_id="plan", position=position, source=volume.source,
                            target=volume.target)
            entry = _plan_volume(source, target, item, spec, plan["conflicts"], store)
            if entry.get("action") not in ("none", INCREMENTAL_ACTION,
                                           rerun.ALREADY_MIGRATED_ACTION):
                _plan_data_path(source, target, item, spec, probes, entry, plan["conflicts"],
                                measure=probe_bytes > 0)
            plan["objects"].append(entry)

        plan["bytes_total"] = sum(_bytes_to_copy(entry) for entry in plan["objects"])
        _check_space(target, plan)
        links = {"source": measure_link(source, probe_bytes),
                 "target": measure_link(target, probe_bytes)}

    plan["steps"] = plan_steps(spec, plan["objects"])
    plan["link"] = {role: rate.to_dict() for role, rate in links.items()}
    plan["estimate"] = estimate_duration(plan["objects"], links, spec.verify)
    plan["ok"] = not plan["conflicts"]
    return plan


def build_full_mode_plan(config: Config, spec: TaskSpec, *,
                         probe_bytes: int = DEFAULT_PROBE_BYTES,
                         store: TaskStore | None = None) -> dict[str, Any]:
    """Return the plan document of a full-mode task. Nothing on either host changes.

    With the task database (`store`), a re-run that the task would finish as already migrated
    (rerun.find_finished_full) is planned as such: no conflicts, and nothing to send.
    """
    from ddmdriver.engine import open_engine
    from ddmsyncer.fullplan import FullPlan, build_full_plan
    from ddmsyncer.fullplan_document import (
        already_migrated_steps,
        full_plan_objects,
        full_plan_steps,
        mark_already_migrated,
    )

    with open_engine(config.host(spec.source_host), config) as source, \
            open_engine(config.host(spec.target_host), config) as target:
        engines = {"source": _engine_summary(source), "target": _engine_summary(target)}
        record = None if store is None else rerun.plan_full(source, target, spec, store)
        try:
            full_plan = build_full_plan(source, target, spec)
        except UsageError:  # a source container not found
            if record is None:
                raise
            # The source containers were removed with --remove-source, so only the record
            # of the earlier task names what is on the target.
            full_plan = FullPlan()
        links = {"source": measure_link(source, probe_bytes),
                 "target": measure_link(target, probe_bytes)}

    objects = full_plan_objects(full_plan, spec)
    if record is not None:
        objects = mark_already_migrated(objects, record)
        full_plan.conflicts.clear()
    return {
        "plan_version": PLAN_VERSION,
        "mode": spec.mode.value,
        "source_host": spec.source_host,
        "target_host": spec.target_host,
        "verify": spec.verify.value,
        "force": spec.force,
        "engines": engines,
        "objects": objects,
        "conflicts": [conflict.to_dict() for conflict in full_plan.conflicts],
        "bytes_total": sum(entry.get("size_bytes") or 0 for entry in objects),
        "steps": (full_plan_steps(full_plan, spec) if record is None
                  else already_migrated_steps(record)),
        "link": {role: rate.to_dict() for role, rate in links.items()},
        "estimate": estimate_duration(objects, links, spec.verify),
        "ok": not full_plan.conflicts,
    }


def _engine_summary(engine: Any) -> dict[str, Any]:
    info = engine.ping()
    return {"host": engine.host.name, "version": info.version, "api_version": info.api_version,
            "os": info.os, "arch": info.arch, "rtt_seconds": info.rtt_seconds}


def _bytes_to_copy(entry: dict[str, Any]) -> int:
    if entry.get("action") == rerun.ALREADY_MIGRATED_ACTION:
        return 0
    if entry.get("action") == INCREMENTAL_ACTION:
        return entry["incremental"]["send_bytes"]
    return entry.get("size_bytes") or 0


def _plan_volume(source: Any, target: Any, item: TaskItem, spec: TaskSpec,
                 conflicts: list[dict[str, Any]], store: TaskStore | None = None
                 ) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "kind": "volume",
        "source": item.source,
        "target": item.target,
        "driver": None,
        "data_path": DATA_PATH_ENGINE_API,
        "preserves": [*VOLUME_METADATA, *volumes.aspects_for(VerifyMode.FULL)[1:]],
        "verified": [] if spec.verify is VerifyMode.NONE else list(volumes.aspects_for(spec.verify)),
        "not_verified": list(NOT_VERIFIED),
    }
    try:
        if store is not None:
            unchanged = rerun.plan_volume(source, target, item, spec, store)
            if unchanged is not None:
                entry.update(unchanged, verified=[], preserves=[])
                return entry
        if store is not None and spec.options.get("incremental"):
            update = incremental.plan_dry_run(
                source, target, item, spec, store,
                lambda: volumes.check_volume(source, target, item, force=True))
            if update is not None:
                entry.update(update)
                if update.get("earlier_task"):
                    entry["earlier_task"] = copying_task(store, update["earlier_task"], item)
                return entry
        check = volumes.check_volume(source, target, item, force=spec.force)
    except DDMError as error:
        entry.update(action="none", size_bytes=None)
        conflicts.append(_conflict(entry, error))
        return entry

    entry.update(
        action="replace" if check.target_exists else "create",
        driver=check.source_driver,
        size_bytes=check.size_bytes,
    )
    return entry


def _plan_data_path(source: Any, target: Any, item: TaskItem, spec: TaskSpec, probes: HostProbes,
                    entry: dict[str, Any], conflicts: list[dict[str, Any]], *,
                    measure: bool = True) -> None:
    """Add the volume's data path, what it keeps, loses and verifies, and its running writers.

    Without `measure` (`--probe-size 0`), `--compress auto` is not decided by measuring.
    """
    try:
        route = datapath.choose_route(source, target, source.volume_inspect(item.source),
                                      spec.options.get("data_path", "auto"), probes)
        if spec.options.get("route") == "direct":
            direct.check_route(item, route)
    except DDMError as error:
        conflicts.append(_conflict(entry, error))
        return

    deep = spec.verify is VerifyMode.FULL
    entry.update(
        data_path=route.data_path.value,
        data_path_reason=route.reason,
        keeps=list(datapath.keeps(route.data_path)),
        loses=list(datapath.loses(route.data_path)),
        preserves=[*VOLUME_METADATA, *datapath.verify_aspects(route.data_path, deep=True)[1:]],
        verified=([] if spec.verify is VerifyMode.NONE
                  else list(datapath.verify_aspects(route.data_path, deep=deep))),
        not_verified=list(datapath.not_checked(route.data_path, deep=True)),
    )
    if spec.options.get("route") == "direct":
        entry.update(route="direct", **direct.plan_aspects(spec.verify))

    try:
        entry["compression"] = compression.plan_compression(source, target, route, spec.options,
                                                            item.source, measure=measure)
    except DDMError as error:
        conflicts.append(_conflict(entry, error))

    found = writers.running_writers(source, item.source)
    entry["running_writers"] = [writer.name for writer in found]
    policy = writers.WriterPolicy.from_options(spec.options)
    if found and not policy.live and policy.quiesce is None:
        try:
            writers.reject_running_writers(spec.source_host, item.source, found)
        except DDMError as error:
            conflicts.append(_conflict(entry, error))


def _check_space(target: Any, plan: dict[str, Any]) -> None:
    names = ", ".join(entry["target"] for entry in plan["objects"])
    try:
        volumes.check_space(target, plan["bytes_total"], names)
    except DDMError as error:
        plan["conflicts"].append({"kind": "host", "object": target.host.name,
                                  "error": type(error).__name__, "message": str(error)})


def _conflict(entry: dict[str, Any], error: DDMError) -> dict[str, Any]:
    return {"kind": entry["kind"], "object": entry["source"], "error": type(error).__name__,
            "message": str(error)}


def plan_steps(spec: TaskSpec, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the ordered steps of the task, one per phase and object."""
    steps: list[dict[str, Any]] = []

    def add(phase: str, action: str, target: str | None = None) -> None:
        steps.append({"order": len(steps) + 1, "phase": phase, "object": target,
                      "action": action})

    direct_route = spec.options.get("route") == "direct"
    add("prepare", "check both engines, the source volumes, free target names and free space")
    for entry in objects:
        name = f"{entry['source']} -> {entry['target']}"
        if entry.get("action") == INCREMENTAL_ACTION:
            _add_incremental_steps(add, entry, name, spec)
            continue
        if entry.get("action") == rerun.ALREADY_MIGRATED_ACTION:
            add("copy", f"nothing to send: the target volume {entry['target']} holds the copy "
                f"of task {entry['earlier_task']}, unchanged (compared by host-side scans)", name)
            continue
        if entry.get("action") == "replace":
            add("copy", f"remove the existing target volume {entry['target']} (--force)", name)
        add("copy", "create a staging volume with the source's driver, options and labels",
            name)
        if direct_route:
            add("copy", f"install a one-task key in {spec.target_host}'s authorized_keys, "
                f"restricted to unpacking into the staging volume, and stream the volume from "
                f"{spec.source_host} to {spec.target_host} over their own link", name)
        else:
            add("copy", f"relay the volume's archive into the staging volume on the "
                f"{entry.get('data_path', DATA_PATH_ENGINE_API)} data path", name)
    add("migrate", "nothing to switch over in volumes mode")
    for entry in objects:
        name = f"{entry['source']} -> {entry['target']}"
        if entry.get("action") in (INCREMENTAL_ACTION, rerun.ALREADY_MIGRATED_ACTION):
            continue
        if spec.verify is VerifyMode.NONE:
            add("verify", "skipped (--verify none)", name)
        elif direct_route:
            add("verify", "scan the source and the staging volume on their own hosts, hash "
                "every file there and compare (with --verify quick too)", name)
        else:
            add("verify", f"compare the staging volume's manifest with the source's "
                f"({spec.verify.value})", name)
        add("verify", "create the target volume and move the staging volume's data into it", name)
    if direct_route:
        add("cleanup", f"remove the task key from {spec.target_host}'s authorized_keys and its "
            f"work directory on {spec.source_host}")
    add("cleanup", "remove helper containers on both hosts")
    return steps


def _add_incremental_steps(add: Any, entry: dict[str, Any], name: str, spec: TaskSpec) -> None:
    update = entry["incremental"]
    add("copy", f"update the existing target volume {entry['target']} incrementally (it holds "
        f"the copy of task {entry['earlier_task']}): move the entries to replace or delete into "
        "a backup beside the volume", name)
    add("copy", f"send {update['send_entries']} entries ({update['send_bytes']} bytes of files) "
        f"and delete {update['delete_entries']}", name)
    if spec.verify is VerifyMode.NONE:
        add("verify", "skipped (--verify none)", name)
    else:
        add("verify", f"compare host-side scans of both volumes ({spec.verify.value}), then "
            "remove the backup", name)


def estimate_duration(objects: list[dict[str, Any]], links: dict[str, LinkRate],
                      verify: VerifyMode) -> dict[str, Any]:
    """Estimate the copy and verify time from the object sizes and the measured link rates.

    The copy streams source -> controller -> target, so its rate is the slower of the two
    links; verify reads the archives of volumes and bind mounts back from the target. An
    object's `bytes_to_send` (full mode) replaces its size when present, because an image
    that the target has, a network or a remote-backed volume sends nothing. The downtime of a
    full-mode cutover is the copy time of the objects sent while the source containers are
    stopped (`during_cutover`), without the container starts and health checks. Engine and
    disk time are not included, and the copy overlaps reading and writing, so real runs can
    be longer or shorter.
    """
    sizes = [entry.get("bytes_to_send", entry.get("size_bytes")) for entry in objects
             if _carries_data(entry)]
    known = [size for size in sizes if isinstance(size, int)]
    verified = [entry.get("size_bytes") or 0 for entry in objects
                if entry.get("kind", "volume") in ("volume", "bind_mount") and _carries_data(entry)]
    cutover = [entry.get("bytes_to_send") or 0 for entry in objects
               if entry.get("during_cutover")]
    copy_rate = _slowest(links["source"].read_bytes_per_second,
                         links["target"].write_bytes_per_second)
    verify_rate = links["target"].read_bytes_per_second
    estimate: dict[str, Any] = {
        "bytes_total": sum(known),
        "sizes_unknown": len(sizes) - len(known),
        "copy_bytes_per_second": copy_rate,
        "copy_seconds": None,
        "verify_seconds": None,
        "seconds": None,
        "downtime_seconds": None,
        "basis": "object sizes from the engines (disk usage report, image and layer sizes, du "
                 "of bind-mounted directories) and SSH link rates measured with /dev/zero; "
                 "engine and disk time are not included",
    }
    if copy_rate is None:
        estimate["basis"] = "no estimate: the link rate was not measured (" + "; ".join(
            f"{rate.host}: {rate.note}" for rate in links.values() if rate.note) + ")"
        return estimate

    estimate["copy_seconds"] = estimate["bytes_total"] / copy_rate
    estimate["verify_seconds"] = 0.0
    if verify is not VerifyMode.NONE and verify_rate:
        estimate["verify_seconds"] = sum(verified) / verify_rate
    estimate["seconds"] = estimate["copy_seconds"] + estimate["verify_seconds"]
    if any(entry.get("during_cutover") for entry in objects):
        estimate["downtime_seconds"] = sum(cutover) / copy_rate
    return estimate


def _carries_data(entry: dict[str, Any]) -> bool:
    return entry.get("data_path") != "none"


def _slowest(*rates: float | None) -> float | None:
    if any(rate is None for rate in rates):
        return None
    return min(rate for rate in rates if rate is not None)
