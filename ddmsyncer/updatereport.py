"""Task events with the counts of an incremental update: what it sent, removed and hashed.

`ddmctl logs` and `ddmctl status --events --json` show these events, so the counts need no
-vv log.
"""

from __future__ import annotations

from typing import Any

from ddm.task import TaskItem
from ddm.text import counted


def record_update(runner: Any, item: TaskItem, result: Any) -> None:
    """Store an "updated" event with the counts of `result` (an incremental.UpdateResult).

    The entries written leave out the volume root, and the file data counts a hard-linked
    file once, as the tar stream carries it.
    """
    hashed = {"source": result.source_scan.hashed_files, "target": result.target_scan.hashed_files}
    cache_hits = {"source": result.source_scan.cache_hits, "target": result.target_scan.cache_hits}
    reused = {"source": result.source_scan.reused_entries,
              "target": result.target_scan.reused_entries}
    if result.stored_scans:
        # Rescans against the scans stored by the last verification (ddmsyncer.scanstore).
        origin = (f"{reused['source']} source and {reused['target']} target entries unchanged "
                  f"since the last verified scans")
    else:
        origin = f"{cache_hits['source'] + cache_hits['target']} digests from the hash cache"
    message = (
        f"volume {item.target!r} updated: {counted(result.sent_entries, 'entry', 'entries')} "
        f"written ({result.plan.send_bytes} bytes of file data, {result.archive_bytes} bytes "
        f"of tar stream), {counted(result.deleted_entries, 'entry', 'entries')} removed; hashed "
        f"{hashed['source']} source and {hashed['target']} target files, {origin}"
    )
    runner.record("info", "updated", message, position=item.position,
                  entries_written=result.sent_entries, entries_removed=result.deleted_entries,
                  file_bytes_sent=result.plan.send_bytes, archive_bytes=result.archive_bytes,
                  hashed_files=hashed, cache_hits=cache_hits, reused_entries=reused)


def record_update_verified(runner: Any, item: TaskItem, verified: Any) -> None:
    """Store an "update_verified" event with the files hashed by the host-side verification."""
    hashed = dict(verified.hashed_files)
    message = (f"volume {item.target!r} verified after its update: hashed "
               f"{hashed.get('source', 0)} source and {hashed.get('target', 0)} target files, "
               f"{verified.reused_entries} source and {verified.target_reused_entries} target "
               f"entries unchanged since the update's scans")
    runner.record("info", "update_verified", message, position=item.position,
                  hashed_files=hashed, cache_hits=dict(verified.cache_hits),
                  reused_entries=verified.reused_entries,
                  target_reused_entries=verified.target_reused_entries)
