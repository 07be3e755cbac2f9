"""The plan of a full-mode task: every object to move and every conflict, found read-only.

The prepare phase and `--dry-run` both build this plan. Nothing on either host changes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ddm.container_config import (
    PREDEFINED_NETWORKS,
    get_path,
    map_host_path,
    user_networks,
)
from ddm.errors import DDMError, InsufficientSpace, MigrationFailed, TargetExists, UsageError
from ddm.task import TaskSpec
from ddm.text import counted
from ddmdriver import containers as driver
from ddmdriver import images as image_driver
from ddmsyncer import volumes

log = logging.getLogger(__name__)

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
DEPENDS_ON_LABEL = "com.docker.compose.depends_on"
REMOTE_VOLUME_TYPES = frozenset({"nfs", "nfs4", "cifs", "smb"})
ARCHITECTURE_NAMES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}

STEPS = (
    "prepare: inspect containers, images, volumes, bind mounts and networks; check target "
    "names, published host ports, networks, image tags, free space and CPU architecture",
    "copy: send images the target lacks, create networks and volumes, copy data of volumes "
    "that no running container uses",
    "migrate: stop the source containers in reverse dependency order, copy the remaining "
    "volumes, bind-mounted directories, logs and writable layers, then create and start the "
    "target containers in dependency order",
    "verify: target containers run (and are healthy), published TCP ports accept connections "
    "on the target host, volume manifests and inspect projections match",
    "cleanup: remove helper containers; the source containers stay stopped until finalize",
)


@dataclass(frozen=True)
class PlanConflict:
    """One problem that stops a full-mode task: the object's kind and name, the error class."""

    kind: str
    object: str
    error: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class ContainerPlan:
    """One container to move."""

    name: str
    id: str
    image_id: str
    image_reference: str
    running: bool
    inspect: dict[str, Any]
    image_config: dict[str, Any]
    depends_on: list[str] = field(default_factory=list)
    layer_bytes: int | None = None  # SizeRw: the files the container added or changed


@dataclass
class ImagePlan:
    """One image to move, with the tags that come with it."""

    id: str
    tags: list[str]
    size_bytes: int
    architecture: str
    present_on_target: bool = False
    missing_tags: list[str] = field(default_factory=list)


@dataclass
class VolumePlan:
    """One volume to recreate on the target, and copy unless it is remote-backed."""

    name: str
    driver: str
    options: dict[str, str]
    labels: dict[str, str]
    size_bytes: int | None
    anonymous: bool
    remote: bool
    containers: list[str] = field(default_factory=list)


@dataclass
class BindPlan:
    """One bind-mounted host directory to copy."""

    source_path: str
    target_path: str
    containers: list[str] = field(default_factory=list)
    size_bytes: int | None = None  # disk usage from `du -sk`, None when unknown


@dataclass
class NetworkPlan:
    """One user-defined network the containers use."""

    name: str
    inspect: dict[str, Any]
    exists_on_target: bool = False


@dataclass
class FullPlan:
    """Everything a full-mode task moves, in order, and the conflicts that stop it."""

    containers: list[ContainerPlan] = field(default_factory=list)
    images: list[ImagePlan] = field(default_factory=list)
    volumes: list[VolumePlan] = field(default_factory=list)
    binds: list[BindPlan] = field(default_factory=list)
    networks: list[NetworkPlan] = field(default_factory=list)
    conflicts: list[PlanConflict] = field(default_factory=list)
    deleted_paths: dict[str, list[str]] = field(default_factory=dict)

    def container(self, name: str) -> ContainerPlan:
        return next(plan for plan in self.containers if plan.name == name)

    def conflict(self, kind: str, name: str, error: type[DDMError], message: str) -> None:
        """Record a conflict on the object `name` of `kind`; `error` is the class it would raise."""
        self.conflicts.append(PlanConflict(kind, name, error.__name__, message))

    def conflict_messages(self) -> list[str]:
        return [conflict.message for conflict in self.conflicts]

    def to_dict(self) -> dict[str, Any]:
        """Return the plan without the raw inspect data, for --dry-run and the task record."""
        return {
            "containers": [
                {"name": plan.name, "image": plan.image_reference, "running": plan.running,
                 "depends_on": plan.depends_on}
                for plan in self.containers
            ],
            "images": [asdict(image) for image in self.images],
            "volumes": [asdict(volume) for volume in self.volumes],
            "binds": [asdict(bind) for bind in self.binds],
            "networks": [{"name": net.name, "driver": net.inspect.get("Driver"),
                          "subnets": _subnets(net.inspect),
                          "exists_on_target": net.exists_on_target}
                         for net in self.networks],
            "conflicts": self.conflict_messages(),
            "steps": list(STEPS),
        }


def select_containers(source: Any, spec: TaskSpec) -> list[dict[str, Any]]:
    """Return the inspect data of the containers a full-mode spec names."""
    options = spec.options
    found = []
    if options.get("project"):
        entries = driver.list_containers(source, labels={PROJECT_LABEL: options["project"]})
        if not entries:
            raise UsageError(f"no container of compose project {options['project']!r} on host "
                             f"{source.host.name!r}",
                             hint=f"check the label {PROJECT_LABEL} with 'docker ps -a'")
        names = [entry["Names"][0].lstrip("/") for entry in entries]
    else:
        names = list(options.get("containers") or [])

    for name in names:
        inspect = driver.container_inspect(source, name)
        if inspect is None:
            raise UsageError(f"container {name!r} not found on host {source.host.name!r}",
                             hint="list containers with 'docker ps -a'")
        found.append(inspect)
    return found


def build_full_plan(source: Any, target: Any, spec: TaskSpec) -> FullPlan:
    """Inspect everything the task moves and collect every conflict on the target."""
    plan = FullPlan()
    map_path = dict(spec.options.get("map_path") or {})
    for inspect in select_containers(source, spec):
        image = image_driver.image_inspect(source, inspect["Image"]) or {}
        plan.containers.append(ContainerPlan(
            name=inspect["Name"].lstrip("/"), id=inspect["Id"], image_id=inspect["Image"],
            image_reference=get_path(inspect, "Config.Image") or inspect["Image"],
            running=bool(get_path(inspect, "State.Running")), inspect=inspect,
            image_config=image.get("Config") or {},
            layer_bytes=layer_size(source, inspect["Id"]),
        ))

    plan.containers = order_by_dependencies(plan.containers)
    _plan_images(source, target, plan)
    _plan_volumes(source, target, plan, spec)
    _plan_binds(source, target, plan, map_path)
    _plan_networks(source, target, plan, spec)
    _check_names(target, plan)
    _check_ports(target, plan)
    _check_layers(source, target, plan)
    _check_architecture(target, plan)
    _check_space(target, plan)
    return plan


def layer_size(source: Any, container_id: str) -> int | None:
    """Return the size of a container's writable layer (SizeRw), or None when unknown."""
    try:
        with source._errors("reading the size of a container's writable layer"):
            listed = source.api.containers(all=True, size=True, filters={"id": container_id})
    except DDMError as error:
        log.warning("writable layer size of container %s is unknown: %s", container_id[:12], error)
        return None
    size = listed[0].get("SizeRw") if listed else None
    return size if isinstance(size, int) and size >= 0 else None


def directory_size(engine: Any, path: str) -> int | None:
    """Return the disk usage of a host directory from `du -sk` over SSH, or None when unknown."""
    if engine.ssh is None:
        return None
    result = engine.exec_command(["du", "-s", "-k", "--", path])
    if result.exit_status != 0:
        return None
    first = result.stdout.split(maxsplit=1)[:1]
    return int(first[0]) * 1024 if first and first[0].isdigit() else None


def order_by_dependencies(containers: list[ContainerPlan]) -> list[ContainerPlan]:
    """Sort containers so each one comes after those it depends on.

    Dependencies are the compose depends_on label (service names, mapped to containers of
    the same project) and then links. A cycle keeps the remaining containers in name order.
    """
    by_service = {}
    for plan in containers:
        service = (get_path(plan.inspect, "Config.Labels") or {}).get(SERVICE_LABEL)
        if service:
            by_service[service] = plan.name
    names = {plan.name for plan in containers}

    for plan in containers:
        labels = get_path(plan.inspect, "Config.Labels") or {}
        for entry in filter(None, (labels.get(DEPENDS_ON_LABEL) or "").split(",")):
            dependency = by_service.get(entry.split(":", 1)[0])
            if dependency and dependency != plan.name:
                plan.depends_on.append(dependency)
        for link in get_path(plan.inspect, "HostConfig.Links") or []:
            dependency = link.split(":", 1)[0].lstrip("/")
            if dependency in names and dependency not in plan.depends_on:
                plan.depends_on.append(dependency)

    ordered: list[ContainerPlan] = []
    remaining = sorted(containers, key=lambda plan: plan.name)
    while remaining:
        done = {plan.name for plan in ordered}
        ready = [plan for plan in remaining if set(plan.depends_on) <= done]
        if not ready:
            log.warning("dependency cycle among %s; using name order",
                        ", ".join(plan.name for plan in remaining))
            ready = remaining
        ordered.extend(ready)
        remaining = [plan for plan in remaining if plan not in ready]
    return ordered


def _plan_images(source: Any, target: Any, plan: FullPlan) -> None:
    seen: dict[str, ImagePlan] = {}
    for container in plan.containers:
        if container.image_id in seen:
            continue
        image = image_driver.image_inspect(source, container.image_id) or {}
        tags = [tag for tag in image.get("RepoTags") or [] if tag != "<none>:<none>"]
        image_plan = ImagePlan(id=container.image_id, tags=tags,
                               size_bytes=int(image.get("Size") or 0),
                               architecture=str(image.get("Architecture") or ""))
        seen[container.image_id] = image_plan
        plan.images.append(image_plan)

        image_plan.present_on_target = image_driver.image_inspect(target, image_plan.id) is not None
        for tag in tags:
            existing = image_driver.image_inspect(target, tag)
            if existing is None:
                image_plan.missing_tags.append(tag)
            elif existing["Id"] != image_plan.id:
                plan.conflict(
                    "image", tag, TargetExists,
                    f"image tag {tag!r} on host {target.host.name!r} points at "
                    f"{existing['Id'][:19]}, not at {image_plan.id[:19]}; remove that tag on "
                    f"{target.host.name!r} ('docker image rm {tag}'), or tag the image there "
                    "under another name first")

        reference = normalise_reference(container.image_reference)
        if "@" in reference:
            plan.conflict(
                "container", container.name, MigrationFailed,
                f"container {container.name!r} refers to its image by digest ({reference}); "
                "docker load does not restore digests, so the target could not resolve it")
        elif reference not in tags and not reference.startswith("sha256:"):
            plan.conflict(
                "container", container.name, MigrationFailed,
                f"image reference {reference!r} of container {container.name!r} no longer "
                f"points at its image {container.image_id[:19]} on host {source.host.name!r}")


def normalise_reference(reference: str) -> str:
    """Return an image reference with the tag "latest" added when it has no tag or digest."""
    if reference.startswith("sha256:") or "@" in reference:
        return reference
    repository, tag = image_driver.split_reference(reference)
    return f"{repository}:{tag}"


def sorted_mounts(inspect: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Return a container's mounts by destination; the engine lists them in no fixed order."""
    return sorted(inspect.get("Mounts") or [], key=lambda mount: str(mount.get("Destination")))


def _plan_volumes(source: Any, target: Any, plan: FullPlan, spec: TaskSpec) -> None:
    by_name: dict[str, VolumePlan] = {}
    for container in plan.containers:
        for mount in sorted_mounts(container.inspect):
            if mount.get("Type") == "volume":
                _add_volume(source, mount["Name"], by_name, plan).containers.append(container.name)

    project = spec.options.get("project")
    if project:
        with source._errors("listing volumes"):
            listed = source.api.volumes(filters={"label": f"{PROJECT_LABEL}={project}"})
        for volume in listed.get("Volumes") or []:
            _add_volume(source, volume["Name"], by_name, plan)

    for volume in plan.volumes:
        if target.volume_inspect(volume.name) is not None:
            plan.conflict("volume", volume.name, TargetExists,
                          f"volume {volume.name!r} already exists on host {target.host.name!r}")


def _add_volume(source: Any, name: str, by_name: dict[str, VolumePlan],
                plan: FullPlan) -> VolumePlan:
    if name in by_name:
        return by_name[name]
    info = source.volume_inspect(name)
    if info is None:
        raise UsageError(f"volume {name!r} not found on host {source.host.name!r}")
    remote = info.driver != "local" or str(info.options.get("type", "")).lower() in REMOTE_VOLUME_TYPES
    volume = VolumePlan(
        name=name, driver=info.driver, options=dict(info.options), labels=dict(info.labels),
        size_bytes=None if remote else volumes.volume_size(source, name),
        anonymous=len(name) == 64 and all(ch in "0123456789abcdef" for ch in name),
        remote=remote,
    )
    by_name[name] = volume
    plan.volumes.append(volume)
    return volume


def _plan_binds(source: Any, target: Any, plan: FullPlan, map_path: Mapping[str, str]) -> None:
    by_path: dict[str, BindPlan] = {}
    for container in plan.containers:
        for mount in sorted_mounts(container.inspect):
            if mount.get("Type") != "bind":
                continue
            source_path = mount["Source"]
            if source_path not in by_path:
                by_path[source_path] = BindPlan(source_path, map_host_path(source_path, map_path))
                plan.binds.append(by_path[source_path])
            by_path[source_path].containers.append(container.name)

    for bind in plan.binds:
        bind.size_bytes = directory_size(source, bind.source_path)
        if driver.host_path_is_directory(source, bind.source_path) is False:
            plan.conflict(
                "bind_mount", bind.source_path, UsageError,
                f"bind mount source {bind.source_path!r} on host {source.host.name!r} is not a "
                "directory; only bind-mounted directories can be copied")
        exists = driver.host_path_exists(target, bind.target_path)
        if exists:
            plan.conflict(
                "bind_mount", bind.source_path, TargetExists,
                f"bind mount directory {bind.target_path!r} already exists on host "
                f"{target.host.name!r}; pass --map-path {bind.source_path}=NEW_PATH")


def _plan_networks(source: Any, target: Any, plan: FullPlan, spec: TaskSpec) -> None:
    names: list[str] = []
    for container in plan.containers:
        names += [net for net in user_networks(container.inspect) if net not in PREDEFINED_NETWORKS]
    project = spec.options.get("project")
    if project:
        with source._errors("listing networks"):
            listed = source.api.networks(filters={"label": f"{PROJECT_LABEL}={project}"})
        names += [network["Name"] for network in listed]

    for name in dict.fromkeys(names):
        inspect = driver.network_inspect(source, name)
        if inspect is None:
            raise UsageError(f"network {name!r} not found on host {source.host.name!r}")
        network = NetworkPlan(name=name, inspect=inspect)
        existing = driver.network_inspect(target, name)
        if existing is not None:
            network.exists_on_target = True
            if _subnets(existing) != _subnets(inspect) or existing.get("Driver") != inspect.get("Driver"):
                plan.conflict(
                    "network", name, TargetExists,
                    f"network {name!r} on host {target.host.name!r} has driver "
                    f"{existing.get('Driver')} and subnets {_subnets(existing)}, the source has "
                    f"{inspect.get('Driver')} and {_subnets(inspect)}")
        plan.networks.append(network)


def _subnets(network: Mapping[str, Any]) -> list[str]:
    return sorted(str(pool.get("Subnet")) for pool in (network.get("IPAM") or {}).get("Config") or [])


def _check_names(target: Any, plan: FullPlan) -> None:
    for container in plan.containers:
        if driver.container_inspect(target, container.name) is not None:
            plan.conflict("container", container.name, TargetExists,
                          f"container name {container.name!r} is taken on host "
                          f"{target.host.name!r}")


def _check_ports(target: Any, plan: FullPlan) -> None:
    """Report published host ports that running target containers already use."""
    used = set()
    for entry in driver.list_containers(target, running_only=True):
        for port in entry.get("Ports") or []:
            if port.get("PublicPort"):
                used.add((str(port.get("IP") or "0.0.0.0"), int(port["PublicPort"]),
                          port.get("Type", "tcp")))

    for container in plan.containers:
        bindings = get_path(container.inspect, "HostConfig.PortBindings") or {}
        for container_port, entries in bindings.items():
            protocol = container_port.partition("/")[2] or "tcp"
            for binding in entries or []:
                if not binding.get("HostPort"):
                    continue
                address, port = binding.get("HostIp") or "0.0.0.0", int(binding["HostPort"])
                for used_address, used_port, used_protocol in used:
                    wildcard = "0.0.0.0" in (address, used_address) or "::" in (address, used_address)
                    if used_port == port and used_protocol == protocol and (
                            wildcard or used_address == address):
                        plan.conflict(
                            "container", container.name, TargetExists,
                            f"host port {address}:{port}/{protocol} of container "
                            f"{container.name!r} is in use on host {target.host.name!r}")


def _check_layers(source: Any, target: Any, plan: FullPlan) -> None:
    """Collect deleted paths; deletions need an overlay2 target reachable over SSH."""
    driver_name = None
    for container in plan.containers:
        changes = driver.container_changes(source, container.name)
        deleted = deleted_paths(changes)
        if not deleted:
            continue
        plan.deleted_paths[container.name] = deleted
        if driver_name is None:
            with target._errors("reading engine information"):
                driver_name = str(target.api.info().get("Driver") or "")
        if driver_name != "overlay2" or target.ssh is None:
            plan.conflict(
                "container", container.name, MigrationFailed,
                f"container {container.name!r} deleted {counted(len(deleted), 'file')} of its image; "
                f"carrying deletions needs the overlay2 storage driver on an ssh:// target, "
                f"host {target.host.name!r} has {driver_name or 'unknown'}")


def deleted_paths(changes: list[dict[str, Any]]) -> list[str]:
    """Return deleted paths whose parent directories were not deleted too."""
    deleted = sorted(change["Path"] for change in changes if change["Kind"] == driver.CHANGE_DELETED)
    top = []
    for path in deleted:
        if not any(path.startswith(parent.rstrip("/") + "/") for parent in top):
            top.append(path)
    return top


def _check_architecture(target: Any, plan: FullPlan) -> None:
    arch = ARCHITECTURE_NAMES.get(target.ping().arch, target.ping().arch)
    for image in plan.images:
        if image.architecture and arch and image.architecture != arch:
            plan.conflict("image", image.tags[0] if image.tags else image.id, MigrationFailed,
                          f"image {image.id[:19]} is for {image.architecture}, host "
                          f"{target.host.name!r} runs {arch}")


def _check_space(target: Any, plan: FullPlan) -> None:
    needed = sum(volume.size_bytes or 0 for volume in plan.volumes)
    needed += sum(image.size_bytes for image in plan.images if not image.present_on_target)
    try:
        volumes.check_space(target, needed, ", ".join(volume.name for volume in plan.volumes)
                            or "images")
    except DDMError as error:
        plan.conflict("host", target.host.name, InsufficientSpace, str(error))
