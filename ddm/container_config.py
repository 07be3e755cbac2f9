"""The create configuration of a container, rebuilt from `docker inspect` as data.

`FIELDS` has one row per field: where the value sits in the inspect output, where it goes in
the body of POST /containers/create, and how to tell a value the user set from one the image
supplied. A field that is missing from the mapping is added as one more row.

Image defaults are left out of the create body, so the target engine applies the target
image's own defaults, exactly as `docker run` did on the source:
- "image_value": dropped when equal to the same key of the image's Config.
- "image_items": list items that the image's Config also has are dropped (Env).
- "image_keys": mapping keys whose value equals the image's are dropped (Labels,
  ExposedPorts, Volumes).
- "copy": copied when present (HostConfig fields, which an image never sets).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

PREDEFINED_NETWORKS = frozenset({"bridge", "host", "none", "default"})


@dataclass(frozen=True)
class FieldRule:
    """One create-config field: its inspect path, its create-body path and its default rule."""

    inspect_path: str
    create_path: str
    rule: str


def _config(name: str, rule: str = "image_value") -> FieldRule:
    return FieldRule(f"Config.{name}", name, rule)


def _host(name: str) -> FieldRule:
    return FieldRule(f"HostConfig.{name}", f"HostConfig.{name}", "copy")


FIELDS: tuple[FieldRule, ...] = (
    _config("Env", "image_items"),
    _config("Cmd"),
    _config("Entrypoint"),
    _config("User"),
    _config("WorkingDir"),
    _config("Labels", "image_keys"),
    _config("ExposedPorts", "image_keys"),
    _config("Volumes", "image_keys"),
    _config("Healthcheck"),
    _config("StopSignal"),
    _config("StopTimeout", "copy"),
    _config("Domainname", "copy"),
    _config("Tty", "copy"),
    _config("OpenStdin", "copy"),
    _config("StdinOnce", "copy"),
    _config("AttachStdin", "copy"),
    _config("AttachStdout", "copy"),
    _config("AttachStderr", "copy"),
    _config("MacAddress", "copy"),
    _config("Shell"),
    _host("Binds"),
    _host("Mounts"),
    _host("PortBindings"),
    _host("PublishAllPorts"),
    _host("RestartPolicy"),
    _host("Tmpfs"),
    _host("CapAdd"),
    _host("CapDrop"),
    _host("Privileged"),
    _host("ReadonlyRootfs"),
    _host("Init"),
    _host("LogConfig"),
    _host("Memory"),
    _host("MemoryReservation"),
    _host("MemorySwap"),
    _host("MemorySwappiness"),
    _host("NanoCpus"),
    _host("CpuShares"),
    _host("CpuPeriod"),
    _host("CpuQuota"),
    _host("CpusetCpus"),
    _host("CpusetMems"),
    _host("PidsLimit"),
    _host("OomKillDisable"),
    _host("OomScoreAdj"),
    _host("ExtraHosts"),
    _host("Dns"),
    _host("DnsOptions"),
    _host("DnsSearch"),
    _host("Devices"),
    _host("DeviceCgroupRules"),
    _host("Ulimits"),
    _host("Sysctls"),
    _host("SecurityOpt"),
    _host("ShmSize"),
    _host("NetworkMode"),
    _host("IpcMode"),
    _host("PidMode"),
    _host("UTSMode"),
    _host("UsernsMode"),
    _host("GroupAdd"),
    _host("VolumeDriver"),
    _host("VolumesFrom"),
    _host("AutoRemove"),
    _host("Runtime"),
    _host("CgroupParent"),
    _host("StorageOpt"),
)

# Inspect fields that a comparison of source and target leaves out, because the engine
# assigns them: IDs, times, state, paths under the data root, and values derived from the
# image ID or the container ID.
ALLOWED_DIFFERENCES: tuple[str, ...] = (
    "Id", "Created", "State", "Image", "ResolvConfPath", "HostnamePath", "HostsPath",
    "LogPath", "RestartCount", "GraphDriver", "SizeRw", "SizeRootFs", "ExecIDs",
    "NetworkSettings (except each network's aliases and user-set IPAM addresses)",
    "Config.Hostname when it was the container ID's first 12 digits",
    "HostConfig.Mounts and HostConfig.Binds (compared through the Mounts list instead)",
    "host ports of ephemeral port bindings (HostPort \"\" in PortBindings)",
    "Mounts[].Source of volumes (the volume's path under the target's data root)",
)


def get_path(data: Mapping[str, Any] | None, path: str) -> Any:
    """Return the value at a dotted path such as "HostConfig.Memory", or None."""
    value: Any = data
    for key in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    keys = path.split(".")
    for key in keys[:-1]:
        data = data.setdefault(key, {})
    data[keys[-1]] = value


def user_value(rule: str, value: Any, image_value: Any) -> Any:
    """Return the part of `value` the user set, given the image's value; None when none."""
    if value is None:
        return None
    if rule == "copy":
        return value
    if rule == "image_value":
        return None if value == image_value else value
    if rule == "image_items":
        image_items = set(image_value or [])
        items = [item for item in value if item not in image_items]
        return items or None
    if rule == "image_keys":
        image_map = image_value or {}
        kept = {key: item for key, item in value.items()
                if key not in image_map or image_map[key] != item}
        return kept or None
    raise ValueError(f"unknown field rule {rule!r}")


def map_host_path(path: str, map_path: Mapping[str, str]) -> str:
    """Return `path` with the longest matching --map-path source prefix replaced."""
    for source in sorted(map_path, key=len, reverse=True):
        if path == source or path.startswith(source.rstrip("/") + "/"):
            return map_path[source] + path[len(source.rstrip("/")):]
    return path


def _map_binds(binds: Iterable[str], map_path: Mapping[str, str]) -> list[str]:
    mapped = []
    for bind in binds:
        source, separator, rest = bind.partition(":")
        if source.startswith("/"):
            source = map_host_path(source, map_path)
        mapped.append(source + separator + rest)
    return mapped


def _map_mounts(mounts: Iterable[Mapping[str, Any]], map_path: Mapping[str, str]) -> list[dict]:
    mapped = []
    for mount in mounts:
        mount = dict(mount)
        if mount.get("Type") == "bind" and mount.get("Source"):
            mount["Source"] = map_host_path(mount["Source"], map_path)
        mapped.append(mount)
    return mapped


def _covered_destinations(inspect: Mapping[str, Any]) -> set[str]:
    """Return the container paths that HostConfig.Binds and HostConfig.Mounts already name."""
    destinations = set()
    for bind in get_path(inspect, "HostConfig.Binds") or []:
        parts = bind.split(":")
        if len(parts) >= 2:
            destinations.add(parts[1])
    for mount in get_path(inspect, "HostConfig.Mounts") or []:
        destinations.add(mount.get("Target"))
    return destinations


def _anonymous_volume_mounts(inspect: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Return explicit mounts for volumes the engine created without a name in the config.

    These are the image's VOLUME paths and `-v /path` volumes. The target container gets the
    migrated volume by name at the same path instead of a new empty one.
    """
    covered = _covered_destinations(inspect)
    mounts = []
    for mount in inspect.get("Mounts") or []:
        if mount.get("Type") != "volume" or mount.get("Destination") in covered:
            continue
        mounts.append({
            "Type": "volume",
            "Source": mount["Name"],
            "Target": mount["Destination"],
            "ReadOnly": not mount.get("RW", True),
        })
    return mounts


def _links(inspect: Mapping[str, Any]) -> list[str] | None:
    """Convert inspect links ("/db:/web/db") to the create form ("db:db")."""
    links = get_path(inspect, "HostConfig.Links")
    if not links:
        return None
    converted = []
    for link in links:
        target, _, alias = link.partition(":")
        converted.append(f"{target.lstrip('/')}:{alias.rsplit('/', 1)[-1]}")
    return converted


def endpoint_config(inspect: Mapping[str, Any], network: str) -> dict[str, Any]:
    """Return the user-set endpoint settings of one network: aliases and static addresses.

    The engine adds the container's short ID as an alias on user-defined networks; that alias
    is dropped, because the target container has another ID.
    """
    endpoint = (get_path(inspect, "NetworkSettings.Networks") or {}).get(network) or {}
    short_id = str(inspect.get("Id", ""))[:12]
    config: dict[str, Any] = {}

    aliases = [alias for alias in endpoint.get("Aliases") or [] if alias != short_id]
    if aliases:
        config["Aliases"] = aliases
    ipam = {key: value for key, value in (endpoint.get("IPAMConfig") or {}).items() if value}
    if ipam:
        config["IPAMConfig"] = ipam
    if endpoint.get("Links"):
        config["Links"] = endpoint["Links"]
    # NOTE: API 1.41 reports a per-network MacAddress whether the user set it or the engine
    # generated it, so only Config.MacAddress (the user's `--mac-address`) is carried.
    return config


def user_networks(inspect: Mapping[str, Any]) -> list[str]:
    """Return the names of the container's networks, NetworkMode's first."""
    networks = list((get_path(inspect, "NetworkSettings.Networks") or {}).keys())
    mode = get_path(inspect, "HostConfig.NetworkMode")
    if mode in networks:
        networks.remove(mode)
        networks.insert(0, mode)
    return networks


def create_body(
    inspect: Mapping[str, Any],
    image_config: Mapping[str, Any] | None,
    *,
    map_path: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Return the body of POST /containers/create that recreates a container elsewhere.

    `inspect` is GET /containers/{id}/json of the source container and `image_config` the
    Config of its image. Only the first network goes into NetworkingConfig, because engines
    before API 1.44 accept one there; connect the others with `extra_networks()`.
    """
    map_path = map_path or {}
    body: dict[str, Any] = {"Image": get_path(inspect, "Config.Image")}

    for field in FIELDS:
        image_value = None
        if field.inspect_path.startswith("Config."):
            image_value = get_path(image_config, field.inspect_path.split(".", 1)[1])
        value = user_value(field.rule, copy.deepcopy(get_path(inspect, field.inspect_path)),
                           image_value)
        if value is not None:
            set_path(body, field.create_path, value)

    _keep_cmd_with_entrypoint(body, inspect)
    _set_hostname(body, inspect)

    host_config = body.setdefault("HostConfig", {})
    if host_config.get("Binds"):
        host_config["Binds"] = _map_binds(host_config["Binds"], map_path)
    mounts = _map_mounts(host_config.get("Mounts") or [], map_path)
    mounts += _anonymous_volume_mounts(inspect)
    if mounts:
        host_config["Mounts"] = mounts
    links = _links(inspect)
    if links:
        host_config["Links"] = links

    networks = user_networks(inspect)
    if networks and networks[0] not in PREDEFINED_NETWORKS:
        body["NetworkingConfig"] = {
            "EndpointsConfig": {networks[0]: endpoint_config(inspect, networks[0])}
        }
    return body


def extra_networks(inspect: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Return (network, endpoint config) of the networks to connect after create."""
    networks = user_networks(inspect)
    return [(network, endpoint_config(inspect, network)) for network in networks[1:]
            if network not in PREDEFINED_NETWORKS]


def _keep_cmd_with_entrypoint(body: dict[str, Any], inspect: Mapping[str, Any]) -> None:
    """Keep Cmd when the user set Entrypoint: the engine then ignores the image's Cmd."""
    if body.get("Entrypoint") is not None and "Cmd" not in body:
        cmd = get_path(inspect, "Config.Cmd")
        if cmd is not None:
            body["Cmd"] = cmd


def _set_hostname(body: dict[str, Any], inspect: Mapping[str, Any]) -> None:
    """Carry Config.Hostname only when the user set it (not the engine's short ID)."""
    hostname = get_path(inspect, "Config.Hostname")
    if hostname and hostname != str(inspect.get("Id", ""))[:12]:
        body["Hostname"] = hostname


def projection(inspect: Mapping[str, Any], image_config: Mapping[str, Any] | None = None
               ) -> dict[str, Any]:
    """Return the normalised view of a container that must match after migration.

    It contains every mapped field as the engine reports it (defaults included), the
    container's name, image reference, networks with their aliases and static addresses, and
    the Mounts list without engine-assigned paths. ALLOWED_DIFFERENCES lists what is left out.
    """
    view: dict[str, Any] = {
        "Name": inspect.get("Name"),
        "Config.Image": get_path(inspect, "Config.Image"),
    }
    skipped = {"HostConfig.Binds", "HostConfig.Mounts"}
    for field in FIELDS:
        if field.inspect_path not in skipped:
            view[field.inspect_path] = _normalise(field.inspect_path,
                                                  get_path(inspect, field.inspect_path))
    hostname = get_path(inspect, "Config.Hostname")
    view["Config.Hostname"] = None if hostname == str(inspect.get("Id", ""))[:12] else hostname
    view["HostConfig.Links"] = _links(inspect)

    for network in user_networks(inspect):
        view[f"Networks.{network}"] = endpoint_config(inspect, network)
    view["Mounts"] = sorted(
        (
            mount.get("Type"),
            mount.get("Name") or ("" if mount.get("Type") == "volume" else mount.get("Source")),
            mount.get("Destination"),
            bool(mount.get("RW")),
            mount.get("Driver") or "",
        )
        for mount in inspect.get("Mounts") or []
    )
    return view


def _normalise(path: str, value: Any) -> Any:
    """Turn empty lists and mappings into None, and drop ephemeral host ports."""
    if value in ([], {}, ""):
        return None
    if path == "HostConfig.PortBindings" and value:
        return {
            port: [dict(binding, HostPort=binding.get("HostPort") or "") for binding in bindings]
            for port, bindings in value.items()
        }
    return value


def compare_projections(source: Mapping[str, Any], target: Mapping[str, Any],
                        map_path: Mapping[str, str] | None = None) -> list[str]:
    """Return one line per field whose value differs between two projections."""
    expected = dict(source)
    if map_path:
        expected["Mounts"] = sorted(
            (kind, map_host_path(name, map_path) if kind == "bind" else name, *rest)
            for kind, name, *rest in source["Mounts"]
        )
    differences = []
    for key in sorted(set(expected) | set(target)):
        if expected.get(key) != target.get(key):
            differences.append(f"{key}: source {expected.get(key)!r}, target {target.get(key)!r}")
    return differences
