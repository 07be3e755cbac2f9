"""Per-host settings of the direct route: how other Docker hosts reach this host's sshd.

`--route direct` makes the source host open an SSH connection of its own to the target
host. So the target needs an address that the source can reach (`direct_address`, often a
private address that the operator's machine cannot reach) and the sshd port there
(`direct_port`, default 22). DDM installs a one-task key in the target login user's
`authorized_keys` (default `~/.ssh/authorized_keys` of that user, resolved on the host).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from ddm.errors import ConfigError

# A DNS name of letters, digits, '-' and '.'; IP addresses are checked with ipaddress first.
ADDRESS_PATTERN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
REMOTE_PATH_PATTERN = re.compile(r"^/[A-Za-z0-9_./+@%=-]{1,254}$")
DEFAULT_DIRECT_PORT = 22


def parse_direct_settings(name: str, raw_host: dict[str, Any], where: str) -> dict[str, Any]:
    """Validate direct_address, direct_port and authorized_keys of one host entry."""
    settings: dict[str, Any] = {}
    address = raw_host.get("direct_address")
    if address is not None:
        settings["direct_address"] = validate_address(address, f"host {name!r} in {where}")

    port = raw_host.get("direct_port", DEFAULT_DIRECT_PORT)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"invalid direct_port {port!r} for host {name!r} in {where}",
                          hint="use a TCP port number from 1 to 65535")
    settings["direct_port"] = port

    path = raw_host.get("authorized_keys")
    if path is not None:
        if not isinstance(path, str) or not REMOTE_PATH_PATTERN.fullmatch(path) or "/../" in f"{path}/":
            raise ConfigError(f"invalid authorized_keys {path!r} for host {name!r} in {where}",
                              hint="give an absolute path on that host, without '..'")
        settings["authorized_keys"] = path
    return settings


def validate_address(address: Any, where: str) -> str:
    """Return `address` when it is an IP address or a host name; raise ConfigError otherwise."""
    if not isinstance(address, str):
        raise ConfigError(f"invalid direct_address {address!r} for {where}",
                          hint="give an IP address or a host name")
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        pass
    if not ADDRESS_PATTERN.fullmatch(address) or ".." in address:
        raise ConfigError(f"invalid direct_address {address!r} for {where}",
                          hint="give an IP address or a host name")
    return address


def direct_settings_to_dict(host: Any) -> dict[str, Any]:
    """Return the YAML form of a HostConfig's direct-route settings, defaults left out."""
    data: dict[str, Any] = {}
    if host.direct_address is not None:
        data["direct_address"] = host.direct_address
    if host.direct_port != DEFAULT_DIRECT_PORT:
        data["direct_port"] = host.direct_port
    if host.authorized_keys is not None:
        data["authorized_keys"] = host.authorized_keys
    return data


ROUTE_CHOICES = ("relay", "direct")


def validate_route(config: Any, target_host: str, options: dict[str, Any]) -> None:
    """Raise UsageError when the task options ask for a route that cannot work.

    Only the config and the options are checked here. The run checks the rest: the volume
    must take the host data path, and the source host needs an ssh client.
    """
    from ddm.errors import UsageError

    route = options.get("route", "relay")
    if route not in ROUTE_CHOICES:
        raise UsageError(f"invalid route {route!r}", hint="use relay or direct")
    if route != "direct":
        return

    if options.get("data_path") == "engine":
        raise UsageError("--route direct does not work with --data-path engine",
                         hint="use --data-path host or auto, or --route relay")
    if options.get("incremental"):
        raise UsageError("--route direct does not work with --incremental",
                         hint="incremental updates are relayed; leave out --route direct")
    host = config.host(target_host)
    if host.scheme != "ssh":
        raise UsageError(f"--route direct needs an ssh:// target, but host {target_host!r} is "
                         f"{host.scheme}://", hint="use --route relay")
    if not host.direct_address:
        raise UsageError(f"target host {target_host!r} has no direct_address for --route direct",
                         hint=f"set hosts.{target_host}.direct_address in the config, or use "
                         "--route relay")
