"""The lab link: a private network among the lab hosts, for host-to-host copies.

The link is a Linux bridge inside a network namespace of its own, named
`ddm-lab-PORT-link` (created with `ip netns add`, so it needs no process to stay
alive). Each host gets one veth pair: the `hN` end is a port of the bridge and the
`link0` end sits in the host's namespace with the address 198.51.100.(10+N)/24.
198.51.100.0/24 is TEST-NET-2 (RFC 5737), which no real network routes. Neither
namespace has a default route, and no end of any veth pair is in the machine's own
namespace, so packets on the link reach the lab hosts and nothing else.
"""

from __future__ import annotations

import ipaddress
import logging
import subprocess

from tests.lab.errors import LabError
from tests.lab.prereq import tool

logger = logging.getLogger(__name__)

LINK_NETWORK = ipaddress.IPv4Network("198.51.100.0/24")
LINK_PREFIX_LENGTH = LINK_NETWORK.prefixlen
HOST_INTERFACE = "link0"
BRIDGE = "br0"


def namespace_name(port: int) -> str:
    """Return the name of the link's network namespace for the lab on `port`."""
    return f"ddm-lab-{port}-link"


def host_address(index: int) -> str:
    """Return host hN's address on the link: 198.51.100.(10+N)."""
    return str(LINK_NETWORK.network_address + 10 + index)


def check_network_unused() -> None:
    """Raise LabError when an interface of the machine already has an address in LINK_NETWORK."""
    output = _ip("-o", "-4", "addr", "show").stdout
    for line in output.splitlines():
        fields = line.split()
        if "inet" not in fields:
            continue
        address = ipaddress.IPv4Interface(fields[fields.index("inet") + 1])
        if address.ip in LINK_NETWORK:
            raise LabError(f"interface {fields[1]} already uses {address}, inside the lab link's "
                           f"network {LINK_NETWORK}; the lab cannot create its link")


def create_namespace(name: str) -> None:
    """Create the link namespace with an up bridge and no address or route."""
    if namespace_exists(name):
        raise LabError(f"network namespace {name} exists already; an earlier lab on this port "
                       f"left it: remove it with `ip netns delete {name}`")
    _ip("netns", "add", name)
    _ip("-n", name, "link", "add", BRIDGE, "type", "bridge")
    _ip("-n", name, "link", "set", BRIDGE, "up")
    logger.info("lab link namespace %s created", name)


def attach_host(name: str, host_name: str, holder_pid: int, index: int) -> str:
    """Connect a host's namespace (held by `holder_pid`) to the bridge; return its link address.

    The pair is created inside the link namespace and one end moved straight into the
    host's namespace, so neither end ever appears in the machine's own namespace.
    """
    address = host_address(index)
    _ip("-n", name, "link", "add", host_name, "type", "veth", "peer", "name", HOST_INTERFACE,
        "netns", str(holder_pid))
    _ip("-n", name, "link", "set", host_name, "master", BRIDGE)
    _ip("-n", name, "link", "set", host_name, "up")
    return address


def configure_host_end(run_in_host: object, address: str) -> None:
    """Give the host's end of the veth pair its address and bring it up (no default route)."""
    script = (f"ip addr add {address}/{LINK_PREFIX_LENGTH} dev {HOST_INTERFACE} && "
              f"ip link set {HOST_INTERFACE} up")
    run_in_host(["/bin/sh", "-c", script], timeout=30.0)  # type: ignore[operator]


def namespace_exists(name: str) -> bool:
    return name in _ip("netns", "list").stdout.split()


def remove_namespace(name: str) -> None:
    """Delete the link namespace; its bridge and the veth ends in it go with it."""
    if not namespace_exists(name):
        return
    _ip("netns", "delete", name)
    logger.info("lab link namespace %s removed", name)


def _ip(*arguments: str) -> subprocess.CompletedProcess[str]:
    completed = subprocess.run([tool("ip"), *arguments], capture_output=True, text=True)
    if completed.returncode != 0:
        raise LabError(f"ip {' '.join(arguments)} failed: {completed.stderr.strip()}")
    return completed
