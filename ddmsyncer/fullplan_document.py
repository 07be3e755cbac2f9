"""The plan document of a full-mode task: objects, conflicts and ordered steps.

ddmsyncer/plan.py adds the engines, the measured links and the estimate, so both modes print
one document (docs/json-schemas.md). Every object has the keys of a volumes-mode object
(`kind`, `source`, `target`, `action`, `size_bytes`, `data_path`, `preserves`, `verified`,
`not_verified`) and a few of its own kind. `bytes_to_send` is what crosses the link (0 for an
image the target has), `phase` the phase in which its data moves, and `during_cutover` is
true when that happens while the source containers are stopped.
"""

from __future__ import annotations

from typing import Any

from ddm.task import TaskSpec, VerifyMode
from ddmsyncer import datapath
from ddmsyncer.datapath import DataPath
from ddmsyncer.fullplan import ContainerPlan, FullPlan, _subnets
from ddmsyncer.rerun import ALREADY_MIGRATED_ACTION

# Data paths of full-mode objects, besides the volumes-mode names.
DATA_PATH_ENGINE_API = "engine-api"
DATA_PATH_IMAGE_ARCHIVE = "image-archive"  # GET /images/get relayed into POST /images/load
DATA_PATH_WARM = "engine-api+host-delta"  # pre-copy while running, then a host-level tar delta
DATA_PATH_NONE = "none"  # only the configuration is recreated, no data travels

VOLUME_METADATA = ("driver", "driver_opts", "labels")
CONTAINER_PRESERVES = ("config", "image_reference", "networks", "aliases", "static_addresses",
                       "port_bindings", "mounts", "writable_layer", "deleted_files", "logs")
CONTAINER_VERIFIED = ("running", "healthy", "published_ports", "image_id", "config",
                      "networks", "mounts", "writable_layer")
# Docker API 1.41 reports a generated MAC address in the same field as a user-set one, and
# the engine's own log of the target container starts empty (the source's is archived).
CONTAINER_NOT_VERIFIED = ("network_mac_addresses", "engine_log")
IMAGE_PRESERVES = ("id", "layers", "config", "tags")
# Seconds `docker stop` waits for a container without its own StopTimeout before it kills it
# (`-t, --time=10` in the docker-stop(1) page of Debian's and Ubuntu's docker.io 20.10).
DEFAULT_STOP_TIMEOUT_SECONDS = 10
NETWORK_PRESERVES = ("driver", "ipam", "options", "labels", "internal", "attachable",
                     "enable_ipv6")


def full_plan_objects(plan: FullPlan, spec: TaskSpec) -> list[dict[str, Any]]:
    """Return the plan's objects: images, networks, volumes, bind mounts, then containers."""
    conflicted = {(conflict.kind, conflict.object) for conflict in plan.conflicts}
    objects = [_image_object(image, conflicted) for image in plan.images]
    objects += [_network_object(network, conflicted) for network in plan.networks]
    running = {container.name for container in plan.containers if container.running}
    warm = bool(spec.options.get("warm"))
    objects += [_volume_object(volume, running, warm, spec.verify, conflicted)
                for volume in plan.volumes]
    # Bind mounts and writable layers move after the stops, which start the downtime when any
    # source container runs.
    cutover = bool(running)
    objects += [_bind_object(bind, spec.verify, cutover, conflicted) for bind in plan.binds]
    objects += [_container_object(container, plan, cutover, conflicted)
                for container in plan.containers]
    return objects


def _action(kind: str, name: str, conflicted: set[tuple[str, str]], default: str) -> str:
    return "none" if (kind, name) in conflicted else default


def _file_aspects(verify: VerifyMode) -> dict[str, list[str]]:
    """Return what an Engine API copy of files keeps, what verify compares and what it skips."""
    deep = verify is VerifyMode.FULL
    return {
        "preserves": [*datapath.verify_aspects(DataPath.ENGINE, deep=True)[1:]],
        "verified": ([] if verify is VerifyMode.NONE
                     else list(datapath.verify_aspects(DataPath.ENGINE, deep=deep))),
        "not_verified": list(datapath.not_checked(DataPath.ENGINE, deep=True)),
    }


def _image_object(image: Any, conflicted: set[tuple[str, str]]) -> dict[str, Any]:
    name = image.tags[0] if image.tags else image.id
    if image.present_on_target:
        default = "tag" if image.missing_tags else "present"
    else:
        default = "send"
    action = "none" if any(("image", tag) in conflicted for tag in [name, *image.tags]) else default
    return {
        "kind": "image", "source": name, "target": name, "action": action,
        "id": image.id, "tags": list(image.tags), "missing_tags": list(image.missing_tags),
        "architecture": image.architecture, "present_on_target": image.present_on_target,
        "size_bytes": image.size_bytes,
        "bytes_to_send": 0 if image.present_on_target else image.size_bytes,
        "phase": "copy", "during_cutover": False,
        "data_path": DATA_PATH_NONE if image.present_on_target else DATA_PATH_IMAGE_ARCHIVE,
        "preserves": list(IMAGE_PRESERVES),
        "verified": ["id"],
        "not_verified": [],
    }


def _network_object(network: Any, conflicted: set[tuple[str, str]]) -> dict[str, Any]:
    return {
        "kind": "network", "source": network.name, "target": network.name,
        "action": _action("network", network.name, conflicted,
                          "use" if network.exists_on_target else "create"),
        "driver": network.inspect.get("Driver"), "subnets": _subnets(network.inspect),
        "exists_on_target": network.exists_on_target,
        "size_bytes": None, "bytes_to_send": 0, "phase": "copy", "during_cutover": False,
        "data_path": DATA_PATH_NONE,
        "preserves": list(NETWORK_PRESERVES),
        "verified": [],
        "not_verified": list(NETWORK_PRESERVES),
    }


def _volume_object(volume: Any, running: set[str], warm: bool, verify: VerifyMode,
                   conflicted: set[tuple[str, str]]) -> dict[str, Any]:
    used_by_running = bool(running & set(volume.containers))
    entry: dict[str, Any] = {
        "kind": "volume", "source": volume.name, "target": volume.name,
        "action": _action("volume", volume.name, conflicted, "create"),
        "driver": volume.driver, "anonymous": volume.anonymous, "remote": volume.remote,
        "containers": list(volume.containers), "size_bytes": volume.size_bytes,
    }
    if volume.remote:
        entry.update(bytes_to_send=0, phase="copy", during_cutover=False,
                     data_path=DATA_PATH_NONE, preserves=list(VOLUME_METADATA), verified=[],
                     not_verified=_file_aspects(verify)["preserves"])
        return entry

    aspects = _file_aspects(verify)
    data_path = DATA_PATH_WARM if (warm and used_by_running) else DATA_PATH_ENGINE_API
    entry.update(
        bytes_to_send=volume.size_bytes,
        phase="migrate" if used_by_running else "copy",
        during_cutover=used_by_running,
        data_path=data_path,
        preserves=[*VOLUME_METADATA, *aspects["preserves"]],
        verified=aspects["verified"],
        not_verified=aspects["not_verified"],
    )
    return entry


def _bind_object(bind: Any, verify: VerifyMode, cutover: bool,
                 conflicted: set[tuple[str, str]]) -> dict[str, Any]:
    return {
        "kind": "bind_mount", "source": bind.source_path, "target": bind.target_path,
        "action": _action("bind_mount", bind.source_path, conflicted, "create"),
        "containers": list(bind.containers), "size_bytes": bind.size_bytes,
        "bytes_to_send": bind.size_bytes, "phase": "migrate", "during_cutover": cutover,
        "data_path": DATA_PATH_ENGINE_API,
        **_file_aspects(verify),
    }


def _container_object(container: ContainerPlan, plan: FullPlan, cutover: bool,
                      conflicted: set[tuple[str, str]]) -> dict[str, Any]:
    deleted = plan.deleted_paths.get(container.name) or []
    return {
        "kind": "container", "source": container.name, "target": container.name,
        "action": _action("container", container.name, conflicted, "create"),
        "image": container.image_reference, "image_id": container.image_id,
        "running": container.running, "depends_on": list(container.depends_on),
        "deleted_paths": len(deleted),
        "stop_timeout_seconds": stop_timeout(container.inspect),
        "size_bytes": container.layer_bytes, "bytes_to_send": container.layer_bytes,
        "phase": "migrate", "during_cutover": cutover,
        "data_path": DATA_PATH_ENGINE_API,
        "preserves": list(CONTAINER_PRESERVES),
        "verified": list(CONTAINER_VERIFIED),
        "not_verified": list(CONTAINER_NOT_VERIFIED),
    }


def stop_timeout(inspect: dict[str, Any]) -> int | None:
    """Return the seconds `docker stop` waits for the container before SIGKILL, None for no limit.

    DDM stops source containers without a timeout of its own, so the engine applies the
    container's Config.StopTimeout, else DEFAULT_STOP_TIMEOUT_SECONDS.
    NOTE: a negative StopTimeout is read as no limit, as `docker stop --time -1` means in
    recent Docker releases; no lab test stops such a container.
    """
    value = (inspect.get("Config") or {}).get("StopTimeout")
    if not isinstance(value, int):
        return DEFAULT_STOP_TIMEOUT_SECONDS
    return None if value < 0 else value


def mark_already_migrated(objects: list[dict[str, Any]],
                          record: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the objects of a re-run plan: each one already migrated, nothing sent.

    `record` is rerun.find_finished_full's result. When the source containers are gone
    (--remove-source), `objects` is empty and the containers come from the record, with the
    keys that every object has only.
    """
    if not objects:
        objects = [{"kind": "container", "source": source["name"], "target": target["name"],
                    "size_bytes": None, "stop_timeout_seconds": None, "preserves": [],
                    "verified": [], "not_verified": []}
                   for source, target in zip(record["source_containers"],
                                             record["target_containers"])]
    marked = []
    for entry in objects:
        entry = dict(entry, action=ALREADY_MIGRATED_ACTION, earlier_task=record["task"],
                     data_path="none")
        if "bytes_to_send" in entry:
            entry["bytes_to_send"] = 0
        marked.append(entry)
    return marked


def already_migrated_steps(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the single step of a re-run that the task finishes as already migrated."""
    names = ", ".join(entry["name"] for entry in record["target_containers"])
    return [{"order": 1, "phase": "prepare", "kind": None, "object": None,
             "action": f"check that containers {names} on the target are the ones task "
                       f"{record['task']} created and the source containers are unchanged; "
                       "send nothing"}]


def full_plan_steps(plan: FullPlan, spec: TaskSpec) -> list[dict[str, Any]]:
    """Return the ordered steps of a full-mode task, one per phase and object."""
    steps: list[dict[str, Any]] = []

    def add(phase: str, action: str, kind: str | None = None, source: str | None = None,
            target: str | None = None) -> None:
        label = None if source is None else f"{source} -> {target or source}"
        steps.append({"order": len(steps) + 1, "phase": phase, "kind": kind, "object": label,
                      "action": action})

    add("prepare", "inspect the containers, images, volumes, bind mounts and networks; check "
        "target names, published host ports, networks, image tags, free space and CPU "
        "architecture")
    _copy_steps(plan, spec, add)
    _migrate_steps(plan, spec, add)
    _verify_steps(plan, spec, add)
    add("cleanup", "remove helper containers on both hosts")
    if spec.options.get("remove_source"):
        for container in plan.containers:
            add("cleanup", "remove the stopped source container (--remove-source)", "container",
                container.name)
    else:
        add("cleanup", "keep the stopped source containers until 'ddmctl finalize TASK'")
    return steps


def _copy_steps(plan: FullPlan, spec: TaskSpec, add: Any) -> None:
    for image in plan.images:
        name = image.tags[0] if image.tags else image.id
        if not image.present_on_target:
            add("copy", "send the image with its tags (docker save relayed into docker load)",
                "image", name)
        elif image.missing_tags:
            add("copy", f"tag the image already on the target: {', '.join(image.missing_tags)}",
                "image", name)
    for network in plan.networks:
        if not network.exists_on_target:
            add("copy", "create the network with the source's driver, IPAM and options",
                "network", network.name)
    running = {container.name for container in plan.containers if container.running}
    for volume in plan.volumes:
        add("copy", "create the volume with the source's driver, options and labels", "volume",
            volume.name)
        if volume.remote:
            continue
        if not running & set(volume.containers):
            add("copy", "copy the volume's data (no running container uses it)", "volume",
                volume.name)
        elif spec.options.get("warm"):
            add("copy", "pre-copy the volume's data while its containers run (--warm)", "volume",
                volume.name)


def _migrate_steps(plan: FullPlan, spec: TaskSpec, add: Any) -> None:
    for container in reversed(plan.containers):
        if container.running:
            add("migrate", "stop the source container (downtime starts at the first stop)",
                "container", container.name)
    running = {container.name for container in plan.containers if container.running}
    for volume in plan.volumes:
        if volume.remote or not running & set(volume.containers):
            continue
        action = ("send what changed since the pre-copy" if spec.options.get("warm")
                  else "copy the volume's data")
        add("migrate", action, "volume", volume.name)
    for bind in plan.binds:
        add("migrate", "copy the bind-mounted directory", "bind_mount", bind.source_path,
            bind.target_path)
    for container in plan.containers:
        deleted = len(plan.deleted_paths.get(container.name) or [])
        extra = f", and mark {deleted} deleted paths" if deleted else ""
        add("migrate", f"create the container and copy its writable layer{extra}", "container",
            container.name)
    for container in plan.containers:
        add("migrate", "start the container", "container", container.name)


def _verify_steps(plan: FullPlan, spec: TaskSpec, add: Any) -> None:
    for container in plan.containers:
        add("verify", "wait until it runs (and is healthy, with a healthcheck) and its "
            "published TCP ports accept connections; downtime ends here", "container",
            container.name)
    add("verify", "archive each source container's log in the volume ddm-logs-TASK on the "
        "target")
    for container in plan.containers:
        add("verify", "compare the image ID, inspect projection and writable layer with the "
            "source's", "container", container.name)
    for volume in plan.volumes:
        if volume.remote:
            continue
        if spec.verify is VerifyMode.NONE:
            add("verify", "skipped (--verify none)", "volume", volume.name)
        else:
            add("verify", f"compare the volume's manifest with the source's ({spec.verify.value})",
                "volume", volume.name)
    for bind in plan.binds:
        if spec.verify is not VerifyMode.NONE:
            add("verify", f"compare the directory's manifest with the source's "
                f"({spec.verify.value})", "bind_mount", bind.source_path, bind.target_path)
