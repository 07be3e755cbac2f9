"""Compare a succeeded task's target volume with the manifest the task stored, before a rollback.

`ddmctl rollback` of a succeeded task removes the target volumes the task created, unless one
changed since the task finished. The target is read back through the Engine API archive and
compared with the source manifest stored by the copy:

* When the stored manifest has content digests (the copy ran with `--verify full`), the
  target's files are hashed too, and content is compared together with the metadata. A file
  rewritten with the same size and its old mtime is found this way.
* Otherwise only metadata is compared: presence, type, mode, owner, size, link target,
  device numbers and mtime in whole seconds, because the Engine API archive truncates mtimes
  to seconds. A rewrite that keeps the size and the mtime is not found.

Digests are compared like with like. Manifests built from a tar stream store the xxh3-128
digest of each file, and the target is hashed the same way. A manifest built from a
host-side scan stores SHA-256 digests instead (pieced for large files, see ddm.piecehash),
and then the target's SHA-256 digests are compared. `--route direct` with `--verify full`
stores such a manifest: the source host's scan for its verify.

Incremental updates store no manifest. A succeeded task that updated a volume incrementally
cannot be rolled back at all (incremental.check_rollback_allowed), and a volume that an
`--incremental` task copied in full stores a tar-stream manifest like any other copy.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ddm import piecehash
from ddm.errors import TargetsChanged
from ddm.manifest import Difference, Manifest, compare_manifests
from ddmsyncer import volumes
from ddmsyncer.hostverify import sha256_view

if TYPE_CHECKING:
    from ddm.task import Task

log = logging.getLogger(__name__)

# Length of an xxh3-128 hex digest. A plain SHA-256 hex digest has 64 characters.
XXH3_128_HEX_LENGTH = 32

METADATA_ASPECTS = volumes.QUICK_ASPECTS
CONTENT_ASPECTS = volumes.FULL_ASPECTS

# How many kept volumes the error of a rollback names; the rest are counted.
MAX_NAMED_VOLUMES = 5


def stored_digest_kind(manifest: Manifest) -> str | None:
    """Return "xxh3" or "sha256" for the kind of content digest a manifest stores, or None.

    None means that the manifest was built without content hashing, or has no file with a
    digest (a volume of directories and empty entries only).
    """
    if not manifest.hash_content:
        return None
    for entry in manifest.entries.iter_entries():
        if entry.type != "file" or entry.digest is None:
            continue
        if piecehash.is_pieced_digest(entry.digest) or len(entry.digest) != XXH3_128_HEX_LENGTH:
            return "sha256"
        return "xxh3"
    return None


def compared_aspects(stored: Manifest) -> tuple[str, ...]:
    """Return the manifest aspects a rollback compares against the stored manifest."""
    return CONTENT_ASPECTS if stored.hash_content else METADATA_ASPECTS


def target_differences(target: Any, volume: str, stored: Manifest, *,
                       task_id: str) -> list[Difference]:
    """Read the target volume's manifest and return its differences from the stored one.

    The target is hashed only when the stored manifest has content digests.
    """
    kind = stored_digest_kind(stored)
    hash_content = stored.hash_content
    # NOTE: a stored pieced SHA-256 made with a piece size other than PIECE_BYTES never
    # matches. Such a file counts as changed, so the rollback keeps the volume.
    current = volumes.read_manifest(target, volume, task_id=task_id, hash_content=hash_content,
                                    sha256=kind == "sha256")
    if kind == "sha256":
        view = sha256_view(current)
        if view is not None:
            current = view
    log.info("volume %s compared with the manifest of task %s: %s", volume, task_id,
             "content and metadata" if hash_content else "metadata only")
    return compare_manifests(stored, current, compared_aspects(stored))


def describe_comparison(stored: Manifest) -> str:
    """Return the words for what a rollback compared, for its messages."""
    if stored.hash_content:
        return "content and metadata compared"
    return "metadata only compared, because the task stored no content digests"


def targets_changed_error(task: Task, changed: dict[int, str],
                          absent: frozenset[int] = frozenset()) -> TargetsChanged:
    """Return the error of a rollback that keeps the changed target volumes of `task`.

    `changed` maps item positions to reasons, and `absent` contains the positions of the
    target volumes already gone, as in TargetsChanged. One changed volume gets its reason in
    the message. Several get their names (the first MAX_NAMED_VOLUMES and a count of the
    rest) and the reason of the first.
    """
    host = task.spec.target_host
    names = [item.target for item in task.items if item.position in changed]
    first_position = min(changed)
    first = next(item.target for item in task.items if item.position == first_position)
    if len(names) == 1:
        return TargetsChanged(
            f"volume {first!r} on {host} {changed[first_position]}", changed, absent=absent,
            hint=f"inspect volume {first!r} on {host}; pass --force to remove it anyway")

    return TargetsChanged(
        f"{len(names)} target volumes on {host} changed since task {task.id}, so the rollback "
        f"kept them and removed nothing: {name_list(names)}. Volume {first!r} "
        f"{changed[first_position]}", changed, absent=absent,
        hint=f"inspect them on {host} ('ddmctl rollback {task.id} --json' gives each reason); "
        "pass --force to remove them anyway")


def name_list(names: list[str]) -> str:
    """Return "'a', 'b' and 'c'", naming at most MAX_NAMED_VOLUMES and counting the rest."""
    quoted = [repr(name) for name in names[:MAX_NAMED_VOLUMES]]
    rest = len(names) - len(quoted)
    if rest:
        return f"{', '.join(quoted)} and {rest} more"
    if len(quoted) == 1:
        return quoted[0]
    return f"{', '.join(quoted[:-1])} and {quoted[-1]}"
