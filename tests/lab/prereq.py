"""Checks that the machine can run the lab: root, and the tools of the Debian packages it needs."""

from __future__ import annotations

import os
import shutil

from tests.lab.errors import LabError

# PATH for the lab's daemons and for tool lookups, so that sbin directories are
# searched even when the caller's PATH lacks them.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

SETUP_HINT = (
    "run scripts/setup.sh as root, which installs the Debian packages "
    "docker.io openssh-server openssh-client socat busybox-static iproute2"
)

# Tool name -> Debian package that installs it.
REQUIRED_TOOLS = {
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "mount": "mount",
    "umount": "mount",
    "sleep": "coreutils",
    "hostname": "hostname",
    "dockerd": "docker.io",
    "containerd": "containerd",
    "runc": "runc",
    "docker": "docker.io",
    "sshd": "openssh-server",
    "ssh-keygen": "openssh-client",
    "ssh": "openssh-client",
    "socat": "socat",
    "busybox": "busybox-static",
    "ip": "iproute2",
    "tc": "iproute2",
}


def find_tool(name: str) -> str | None:
    """Return the absolute path of a tool, searching PATH and then the system directories."""
    search_path = os.environ.get("PATH", "") + ":" + SYSTEM_PATH
    return shutil.which(name, path=search_path)


def tool(name: str) -> str:
    """Return the absolute path of a tool, or raise LabError naming its package."""
    path = find_tool(name)
    if path is None:
        package = REQUIRED_TOOLS.get(name, name)
        raise LabError(f"{name} not found (Debian package {package}); {SETUP_HINT}")
    return path


def missing_prerequisites() -> list[str]:
    """Return one line per missing prerequisite; an empty list means the lab can start."""
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append(f"the lab needs root, to create namespaces and run dockerd (euid is {os.geteuid()})")

    for name, package in REQUIRED_TOOLS.items():
        if find_tool(name) is None:
            problems.append(f"{name} not found (Debian package {package})")

    if problems:
        problems.append(SETUP_HINT)
    return problems
