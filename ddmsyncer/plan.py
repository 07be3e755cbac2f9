"""The plan of a task: what it would do, found with read-only checks on both hosts.

The plan document (schema in docs/json-schemas.md) lists objects, each with a `kind`. Volumes
mode plans only objects of kind "volume". Full mode adds containers, images, bind mounts and
networks to the same list, with their own data paths and steps
(ddmsyncer/fullplan_document.py).

Nothing on either host changes: the checks inspect volumes, read the engines' disk usage and
free space, and the link probe reads /dev/zero and writes /dev/null over SSH.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ddm.config import Config
from ddm.errors import DDMError, UsageError
from ddm.store import TaskStore
from ddm.task import Mode, TaskItem, TaskSpec, VerifyMode
from ddmsyncer import (compression, datapath, direct, hostverify, incremental, replacecheck, rerun,
                       volumes, writers)
from ddmsyncer.copyorigin import copying_task
from ddmsyncer.datapath import DataPath, HostProbes
from ddmsyncer.linkprobe import LinkRate, measure_link

PLAN_VERSION = 1
DEFAULT_PROBE_BYTES = 4 * 1024 * 1024
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
        # Measured first, so that --compress auto decides with the rate the estimate uses.
        links = {"source": measure_link(source, probe_bytes),
                 "target": measure_link(target, probe_bytes)}
        measured = PlanMeasurements(copy_rate(links), python=hostverify.PythonProbes(),
                                enabled=probe_bytes > 0)
        probes = HostProbes()
        engine_ids = {spec.source_host: volumes.engine_id(source),
                      spec.target_host: volumes.engine_id(target)}
        sources = {volume.source for volume in spec.volumes}
        for position, volume in enumerate(spec.volumes):
            item = TaskItem(task_id="plan", position=position, source=volume.source,
                            target=volume.target)
            entry = _plan_volume(source, target, item, spec, plan["conflicts"], store)
            overlap = volumes.overlap_error(source, target, item, sources,
                                            (engine_ids[spec.source_host],
                                             engine_ids[spec.target_host]))
            if overlap is not None:
                # Prepare rejects it, also with --force.
                plan["conflicts"].append(_conflict(entry, overlap))
            if store is not None:
                _plan_locks(store, spec, engine_ids, item, entry, plan["conflicts"])
            if entry.get("action") == "replace":
                _plan_replacement(target, probes, item, entry, plan["conflicts"])
            # A volume with a conflict still gets the data path its copy would take once the
            # conflict is resolved, unless its source volume is missing.
            missing = entry.get("action") == "none" and source.volume_inspect(item.source) is None
            if not missing and entry.get("action") not in (INCREMENTAL_ACTION,
                                                           rerun.ALREADY_MIGRATED_ACTION):
                _plan_data_path(source, target, item, spec, probes, entry, plan["conflicts"],
                                measured)
            elif entry.get("action") == INCREMENTAL_ACTION:
                # An update reads the source like a full copy, so running writers conflict too.
                _plan_writers(source, item, spec, entry, plan["conflicts"])
            plan["objects"].append(entry)

        plan["bytes_total"] = sum(_bytes_to_copy(entry) for entry in plan["objects"])
        _check_space(target, plan)

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
        # A re-run of a finished migration takes no locks worth checking.
        engine_ids = ({} if store is None or record is not None
                      else {spec.source_host: volumes.engine_id(source),
                            spec.target_host: volumes.engine_id(target)})

    objects = full_plan_objects(full_plan, spec)
    if record is not None:
        objects = mark_already_migrated(objects, record)
        full_plan.conflicts.clear()
    elif store is not None:
        _plan_full_locks(store, spec, full_plan, engine_ids)
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


def _plan_full_locks(store: TaskStore, spec: TaskSpec, full_plan: Any,
                     engine_ids: dict[str, str]) -> None:
    """Add a conflict for each lock of the full-mode task that another task holds.

    The names are those that FullTaskRunner locks: its containers or project, and each
    volume on both hosts, by host name and by engine ID (`engine_ids`, see
    volumes.engine_lock_names).
    """
    from ddm.errors import TaskConflict

    source, target = spec.source_host, spec.target_host
    objects = {f"{source}/container/{name}": ("container", name)
               for name in [*(spec.options.get("containers") or []),
                            *(container.name for container in full_plan.containers)]}
    if spec.options.get("project"):
        objects[f"{source}/project/{spec.options['project']}"] = ("project", spec.options["project"])
    for volume in full_plan.volumes:
        for host in (source, target):
            objects[f"{host}/volume/{volume.name}"] = ("volume", volume.name)
    for resource, lock_object in list(objects.items()):
        for engine_name in volumes.engine_lock_names([resource], engine_ids):
            objects[engine_name] = lock_object

    for resource, error in store.lock_conflicts(sorted(objects)):
        kind, name = objects[resource]
        full_plan.conflict(kind, name, TaskConflict, str(error))


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


def _incremental_aspects(verify: VerifyMode) -> dict[str, list[str]]:
    """Return the plan's aspect lists for an incremental update, which scans on the hosts.

    Its scans compare xattrs (POSIX ACLs are xattrs) and hard-link groups too, but mtimes in
    whole seconds only, and not sparseness. tar on the host path keeps all of them.
    """
    scanned = ("xattrs", "acl")
    verified = [] if verify is VerifyMode.NONE else [*volumes.aspects_for(verify), *scanned]
    return {"preserves": [*VOLUME_METADATA, *datapath.verify_aspects(DataPath.HOST, deep=True)[1:]],
            "verified": verified, "not_verified": ["mtime_ns", "sparse"]}


def _plan_volume(source: Any, target: Any, item: TaskItem, spec: TaskSpec,
                 conflicts: list[dict[str, Any]], store: TaskStore | None = None
                 ) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "kind": "volume",
        "source": item.source,
        "target": item.target,
        "driver": None,
        "data_path": None,  # chosen by _plan_data_path
        "verify_method": None,
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
                entry.update(update, verify_method=(None if spec.verify is VerifyMode.NONE
                                                    else hostverify.HOST_SCAN))
                entry.update(_incremental_aspects(spec.verify))
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


def _plan_locks(store: TaskStore, spec: TaskSpec, engine_ids: dict[str, str], item: TaskItem,
                entry: dict[str, Any], conflicts: list[dict[str, Any]]) -> None:
    """Add a conflict for each of the volume's locks that a task holds, as the run would meet it.

    The locks are by host name and by engine ID (`engine_ids`, see volumes.engine_lock_names).
    A full-mode plan reads its own locks (_plan_full_locks).
    """
    resources = [f"{spec.source_host}/volume/{item.source}",
                 f"{spec.target_host}/volume/{item.target}"]
    resources += volumes.engine_lock_names(resources, engine_ids)
    for _, error in store.lock_conflicts(resources):
        conflicts.append(_conflict(entry, error))


def _plan_replacement(target: Any, probes: HostProbes, item: TaskItem, entry: dict[str, Any],
                      conflicts: list[dict[str, Any]]) -> None:
    """Add a conflict for each prepare check that rejects removing the target volume (--force).

    The plan lists every problem, where prepare stops at the first.
    """
    for check in replacecheck.REPLACE_CHECKS:
        try:
            check(target, probes, item)
        except DDMError as error:
            conflicts.append(_conflict(entry, error))


@dataclass
class PlanMeasurements:
    """The plan's copy rate and the probes that the volumes of one plan share."""

    copy_rate: float | None  # bytes per second; None when not measured
    python: hostverify.PythonProbes
    enabled: bool = True  # False with --probe-size 0: nothing is measured or sampled


def _plan_data_path(source: Any, target: Any, item: TaskItem, spec: TaskSpec, probes: HostProbes,
                    entry: dict[str, Any], conflicts: list[dict[str, Any]],
                    measured: PlanMeasurements) -> None:
    """Add the volume's data path, what it keeps, loses and verifies, and its running writers.

    Without `measured.enabled` (`--probe-size 0`), `--compress auto` is not decided by
    measuring.
    """
    source_volume = source.volume_inspect(item.source)
    try:
        route = datapath.choose_route(source, target, source_volume,
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
    entry["size_bytes"] = volumes.size_on_route(source, route, entry.get("size_bytes"))
    if spec.options.get("route") == "direct":
        entry.update(route="direct", **direct.plan_aspects(spec.verify))
    entry["verify_method"] = _verify_method(target, route, source_volume, spec, measured)

    try:
        entry["compression"] = compression.plan_compression(
            source, target, route, spec.options, item.source, measure=measured.enabled,
            link_rate=measured.copy_rate)
    except DDMError as error:
        conflicts.append(_conflict(entry, error))

    _plan_writers(source, item, spec, entry, conflicts)


def _plan_writers(source: Any, item: TaskItem, spec: TaskSpec, entry: dict[str, Any],
                  conflicts: list[dict[str, Any]]) -> None:
    """Add the source volume's running writers, and a conflict when the task would reject them."""
    found = writers.running_writers(source, item.source)
    entry["running_writers"] = [writer.name for writer in found]
    policy = writers.WriterPolicy.from_options(spec.options)
    if found and not policy.live and policy.quiesce is None:
        try:
            writers.reject_running_writers(spec.source_host, item.source, found)
        except DDMError as error:
            conflicts.append(_conflict(entry, error))


def _verify_method(target: Any, route: Any, volume: Any, spec: TaskSpec,
                   measured: PlanMeasurements) -> str | None:
    """Return how verify would read the target volume: host-scan, read-back, or None (no verify).

    Follows ddmsyncer.staged: the direct route always scans on the hosts, and a relayed copy
    scans on the target when it has root access, python3 and a plain local volume.
    """
    if spec.verify is VerifyMode.NONE:
        return None
    if spec.options.get("route") == "direct":
        return hostverify.HOST_SCAN
    access = route.target_access
    if access is None or not hostverify.plain_local_volume(volume):
        return hostverify.READ_BACK
    return hostverify.HOST_SCAN if measured.python.available(target, access) else hostverify.READ_BACK


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
        add("copy", "create a staging volume with the source's driver, options and labels",
            name)
        if direct_route:
            add("copy", f"install a one-task key in {spec.target_host}'s authorized_keys, "
                f"restricted to unpacking into the staging volume, and stream the volume from "
                f"{spec.source_host} to {spec.target_host} over their own link", name)
        else:
            path = f" on the {entry['data_path']} data path" if entry.get("data_path") else ""
            add("copy", f"relay the volume's archive into the staging volume{path}", name)
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
        if entry.get("action") == "replace":
            # Promote removes the old volume only after the copy is verified.
            add("verify", f"remove the existing target volume {entry['target']} (--force)", name)
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


def copy_rate(links: dict[str, LinkRate]) -> float | None:
    """Return the rate of a relayed copy: the slower of the source's read and the target's write."""
    return _slowest(links["source"].read_bytes_per_second, links["target"].write_bytes_per_second)


def estimate_duration(objects: list[dict[str, Any]], links: dict[str, LinkRate],
                      verify: VerifyMode) -> dict[str, Any]:
    """Estimate the copy and verify time from the object sizes and the measured link rates.

    The copy streams source -> controller -> target, so its rate is the slower of the two
    links. A volume with a codec and a measured sample moves at the rate the auto decision
    predicts: the lower of the sample's compression rate and the link rate divided by its
    ratio. Verify reads the archives of volumes and bind mounts back from the target, except
    where it scans the target on its host (`verify_method` host-scan), which sends only a
    listing and is left out. An incremental update sends its changed files only and verifies
    by host-side scans. An object's `bytes_to_send` (full mode) replaces its size when
    present, because an image that the target has, a network or a remote-backed volume sends
    nothing. The downtime of a full-mode cutover is the copy time of the objects sent while
    the source containers are stopped (`during_cutover`) plus the longest wait for `docker
    stop` (_stop_timeouts), without the container starts and health checks. Engine and disk
    time are not included, and the copy overlaps reading and writing, so real runs can be
    longer or shorter.
    """
    sizes = [_bytes_to_send(entry) for entry in objects if _carries_data(entry)]
    known = [size for size in sizes if isinstance(size, int)]
    verified = [entry.get("size_bytes") or 0 for entry in objects
                if entry.get("kind", "volume") in ("volume", "bind_mount") and _carries_data(entry)
                and entry.get("verify_method") != hostverify.HOST_SCAN
                and entry.get("action") != INCREMENTAL_ACTION]
    cutover = [entry.get("bytes_to_send") or 0 for entry in objects
               if entry.get("during_cutover")]
    rate = copy_rate(links)
    verify_rate = links["target"].read_bytes_per_second
    estimate: dict[str, Any] = {
        "bytes_total": sum(known),
        "wire_bytes_total": None,
        "sizes_unknown": len(sizes) - len(known),
        "copy_bytes_per_second": rate,
        "compression": _compression_basis(objects),
        "copy_seconds": None,
        "verify_seconds": None,
        "seconds": None,
        "downtime_seconds": None,
        "downtime_copy_seconds": None,
        "stop_timeout_seconds": None,
        "stop_unbounded": [],
        "basis": "object sizes from the engines (disk usage report, image and layer sizes, du "
                 "of bind-mounted directories) and SSH link rates measured with /dev/zero; "
                 "engine and disk time are not included",
    }
    if rate is None:
        estimate["basis"] = "no estimate: the link rate was not measured (" + "; ".join(
            f"{link.host}: {link.note}" for link in links.values() if link.note) + ")"
        return estimate

    copies = [_copy_estimate(entry, rate) for entry in objects if _carries_data(entry)]
    estimate["wire_bytes_total"] = round(sum(wire for wire, _ in copies))
    estimate["copy_seconds"] = sum(seconds for _, seconds in copies)
    estimate["verify_seconds"] = 0.0
    if verify is not VerifyMode.NONE and verify_rate:
        estimate["verify_seconds"] = sum(verified) / verify_rate
    estimate["seconds"] = estimate["copy_seconds"] + estimate["verify_seconds"]
    if any(entry.get("during_cutover") for entry in objects):
        estimate.update(_stop_timeouts(objects))
        estimate["downtime_copy_seconds"] = sum(cutover) / rate
        estimate["downtime_seconds"] = (estimate["downtime_copy_seconds"]
                                        + estimate["stop_timeout_seconds"])
    return estimate


def _stop_timeouts(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the sum of the StopTimeouts of the running source containers, which count as downtime.

    DDM stops them one after the other once the downtime has started, and `docker stop` waits
    up to each one's StopTimeout for it to exit before it kills it, so the sum is the longest
    wait. A container with no limit (a negative StopTimeout) is listed under `stop_unbounded`.
    """
    stopped = [entry for entry in objects if entry.get("kind") == "container"
               and entry.get("running") and entry.get("action") != rerun.ALREADY_MIGRATED_ACTION]
    return {
        "stop_timeout_seconds": sum(entry.get("stop_timeout_seconds") or 0 for entry in stopped),
        "stop_unbounded": [entry["source"] for entry in stopped
                           if "stop_timeout_seconds" in entry
                           and entry["stop_timeout_seconds"] is None],
    }


def _copy_estimate(entry: dict[str, Any], rate: float) -> tuple[float, float]:
    """Return an object's estimated bytes on the wire and copy seconds at the link `rate`."""
    size = _bytes_to_send(entry)
    if not isinstance(size, int):
        return 0.0, 0.0
    sample = _chosen_sample(entry)
    if sample is None:
        return float(size), size / rate
    ratio = sample["output_bytes"] / sample["input_bytes"]
    volume_rate = min(sample["compress_bytes_per_second"], rate / max(ratio, 1e-3))
    return size * ratio, size / volume_rate


def _chosen_sample(entry: dict[str, Any]) -> dict[str, Any] | None:
    """Return the measured sample of the codec chosen for the object, or None."""
    chosen = entry.get("compression") or {}
    if not chosen.get("codec"):
        return None
    for sample in chosen.get("samples") or []:
        if (sample["codec"], sample["level"]) == (chosen["codec"], chosen["level"]) \
                and sample["input_bytes"] > 0 and sample["output_bytes"] > 0:
            return sample
    return None


def _compression_basis(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return, per compressed object, its codec and whether the estimate has a measured ratio.

    An object with a codec but no sample is estimated as if uncompressed, which overestimates
    its copy time.
    """
    basis = []
    for entry in objects:
        chosen = entry.get("compression") or {}
        if not chosen.get("codec") or not _carries_data(entry):
            continue
        sample = _chosen_sample(entry)
        basis.append({
            "object": entry["source"],
            "codec": chosen["codec"],
            "level": chosen["level"],
            "ratio": None if sample is None else sample["output_bytes"] / sample["input_bytes"],
            "sample_bytes": None if sample is None else sample["input_bytes"],
        })
    return basis


def _bytes_to_send(entry: dict[str, Any]) -> int | None:
    """Return the bytes an object sends: an incremental update's changed files, else its size."""
    if entry.get("action") == INCREMENTAL_ACTION:
        return entry["incremental"]["send_bytes"]
    return entry.get("bytes_to_send", entry.get("size_bytes"))


def _carries_data(entry: dict[str, Any]) -> bool:
    return entry.get("data_path") != "none"


def _slowest(*rates: float | None) -> float | None:
    if any(rate is None for rate in rates):
        return None
    return min(rate for rate in rates if rate is not None)
