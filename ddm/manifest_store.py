"""Source manifests in the task database, stored in chunks of entries.

A task keeps the manifest of each copied volume for the verify phase of a later run
(resume) and for the changed-since-finished check of `ddmctl rollback`. It is stored as a
header, the manifest's JSON document without its entries, in the item's `manifest` column,
and one row of table `manifest_chunks` per MANIFEST_CHUNK_ENTRIES entries. Writing and
reading stream the rows, so neither keeps the whole manifest in memory. Tasks stored before
the chunked format keep their whole JSON document in the `manifest` column, and
load_task_manifest() reads both.
"""

from __future__ import annotations

import logging

from ddm.manifest import Manifest, ManifestError
from ddm.store import TaskStore

log = logging.getLogger(__name__)

MANIFEST_CHUNK_ENTRIES = 1000


def save_task_manifest(store: TaskStore, task_id: str, position: int, manifest: Manifest) -> None:
    """Store `manifest` as the source manifest of item `position` of the task."""
    entry_count = len(manifest.entries)
    chunk_count = -(-entry_count // MANIFEST_CHUNK_ENTRIES)
    header = manifest.json_header(chunk_count).encode()
    written = store.save_manifest_chunks(
        task_id, position, header, manifest.json_chunks(MANIFEST_CHUNK_ENTRIES)
    )
    if written != chunk_count:
        raise ManifestError(
            f"manifest of item {position} of task {task_id} was stored in {written} chunks, "
            f"not {chunk_count}: it changed while it was stored"
        )
    log.debug("stored the manifest of item %d of task %s: %d entries in %d chunks",
              position, task_id, entry_count, written)


def load_task_manifest(store: TaskStore, task_id: str, position: int) -> Manifest | None:
    """Return the stored source manifest of item `position`, or None when there is none.

    Raises ManifestError when the stored manifest is invalid or incomplete.
    """
    header = store.load_manifest(task_id, position)
    if header is None:
        return None
    # A whole document carries its entries, and its chunk generator is never started.
    return Manifest.from_json_chunks(header, store.iter_manifest_chunks(task_id, position))
