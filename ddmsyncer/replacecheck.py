"""Reject a --force replacement of a target volume that containers use or that contains a mount.

Promote removes the existing target volume through the Engine API before it creates the new
one. The volume's data directory may be a mount of its own, such as a disk mounted onto
/var/lib/docker/volumes/NAME/_data. The local driver's removal then deletes every file on
that mount and only then fails with EBUSY on the mount point, as the lab's dockerd does in
tests/integration/test_separate_mount.py. The task would fail with the old content gone, so
DDM looks for mount points before it changes anything. Prepare and promote run the checks,
and the plan (ddmctl plan, migrate --dry-run) reports what they would reject.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from typing import Any

from ddm.errors import MigrationFailed, TargetExists
from ddm.task import TaskItem
from ddmsyncer.datapath import HostProbes

# Containers named in an error line; the rest are counted.
MAX_NAMED_CONTAINERS = 5

# Print the mount points of the shell's mount namespace that are the directory $1 or lie
# below it. $1 and the output are escaped as /proc/self/mountinfo escapes them.
MOUNTS_SCRIPT = " ".join((
    'while read -r mount_id parent_id devices root mount_point rest; do',
    'case "$mount_point" in "$1"|"$1"/*) printf "%s\\n" "$mount_point";; esac;',
    'done < /proc/self/mountinfo',
))

# /proc/self/mountinfo writes space, tab, newline and backslash as a backslash and three
# octal digits: a tmpfs mounted on "a b\c" is listed as "a\040b\134c" (seen on Linux 6.18).
_ESCAPED = {" ": "\\040", "\t": "\\011", "\n": "\\012", "\\": "\\134"}


def escape_mountinfo(path: str) -> str:
    return "".join(_ESCAPED.get(character, character) for character in path)


def unescape_mountinfo(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), text)


def mounts_at_or_below(engine: Any, access: Any, directory: str) -> list[str]:
    """Return the mount points on the host that are `directory` or lie below it."""
    result = engine.exec_command(access.argv("sh", "-c", MOUNTS_SCRIPT, "ddm-mounts",
                                             escape_mountinfo(directory)))
    if result.exit_status != 0:
        stderr = result.stderr.decode("utf-8", "replace").strip()
        raise MigrationFailed(
            f"reading the mount points below {directory} on host {engine.host.name!r} failed: "
            f"exit status {result.exit_status} ({stderr or 'no error output'})",
            hint="check that /proc is mounted on the host, then run the migration again")
    lines = result.stdout.decode("utf-8", "surrogateescape").splitlines()
    return sorted({unescape_mountinfo(line) for line in lines if line})


def reject_mounted_target(target: Any, probes: HostProbes, item: TaskItem) -> None:
    """Raise TargetExists when removing the item's existing target volume would hit a mount point.

    Only volumes of the local driver are checked, because another driver's plugin removes
    its volumes in its own way.
    NOTE: without host access on the target (the Engine API only), DDM cannot see the host's
    mounts, so a mounted data directory still loses its files when promote removes the volume.
    NOTE: the check reads the mount namespace of the SSH account's shell. A Docker engine that
    runs in a mount namespace of its own may see other mounts.
    """
    volume = target.volume_inspect(item.target)
    if volume is None or volume.driver != "local" or not volume.mountpoint:
        return
    access = probes.probe(target).access
    if access is None:
        return

    volume_directory = posixpath.dirname(volume.mountpoint)
    mounts = mounts_at_or_below(target, access, volume_directory)
    if not mounts:
        return
    raise TargetExists(
        f"volume {item.target!r} on host {target.host.name!r} has a mount point at {mounts[0]}, "
        f"so --force cannot replace it (Docker's removal of the volume would delete the files "
        f"on that mount and then fail); the volume is unchanged",
        hint=f"choose another target name with --volume {item.source}:NEW_NAME, or unmount "
        f"{mounts[0]} (its files stay on that file system) and run the migration again",
    )


def containers_using(engine: Any, volume: str) -> list[str]:
    """Return the names of the containers on `engine`, running or not, that mount `volume`."""
    found = engine.api.containers(all=True, filters={"volume": volume})
    names = []
    for container in found:
        # The engine's volume filter also matches a mount's destination path, so the mounts
        # are checked by name.
        if not any(mount.get("Type") == "volume" and mount.get("Name") == volume
                   for mount in container.get("Mounts") or []):
            continue
        listed = container.get("Names") or [container["Id"][:12]]
        names.append(listed[0].lstrip("/"))
    return sorted(names)


def reject_used_target(target: Any, probes: HostProbes, item: TaskItem) -> None:
    """Raise TargetExists when containers on the target mount the existing volume that --force replaces.

    Docker rejects the removal of a volume that any container uses, running or not, and
    promote would meet that only after the copy and verify. `probes` is unused, so that
    every check in REPLACE_CHECKS takes the same arguments.
    """
    names = containers_using(target, item.target)
    if not names:
        return
    named = ", ".join(names[:MAX_NAMED_CONTAINERS])
    if len(names) > MAX_NAMED_CONTAINERS:
        named += f" and {len(names) - MAX_NAMED_CONTAINERS} more"
    raise TargetExists(
        f"volume {item.target!r} on host {target.host.name!r} is used by containers: {named}, "
        f"so --force cannot replace it (Docker does not remove a volume in use); the volume "
        f"is unchanged",
        hint=f"remove those containers on {target.host.name} (stop running ones first), or "
        f"choose another target name with --volume {item.source}:NEW_NAME, then run the "
        f"migration again",
    )


# The checks before --force removes an existing target volume, in the order prepare runs them.
REPLACE_CHECKS: tuple[Callable[[Any, HostProbes, TaskItem], None], ...] = (
    reject_used_target,
    reject_mounted_target,
)


def reject_replacement(target: Any, probes: HostProbes, item: TaskItem) -> None:
    """Raise the first check's TargetExists when --force cannot remove the item's target volume."""
    for check in REPLACE_CHECKS:
        check(target, probes, item)
