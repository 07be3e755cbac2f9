"""Scenario (z): `--compress` on a link limited to about 100 Mbit/s and on the unlimited loopback.

Two trees, log-like text (compresses to about 40% with zstd -1) and random data (does not
compress), are each copied with baseline 1 and with `ddmctl migrate --data-path host
--compress none|lz4|zstd|auto`, first with every lab host's SSH link shaped by
Lab.limit_rate(RATE) and then without the limit. Scenario ids: z1 text and z2 random on
the limited link, z3 text and z4 random on loopback. The wire column is the compressed
bytes of the copy, read from the task's compression record; the note gives auto's choice.
"""

from __future__ import annotations

import logging
from typing import Any

from benchmarks.suite import Result, Suite
from ddm.store import TaskStore, default_store_path

log = logging.getLogger(__name__)

LIMITED_RATE = "100mbit"
CODEC_CHOICES = ("none", "lz4", "zstd", "auto")
LINKS = ((LIMITED_RATE, {"text": "z1", "random": "z2"}), (None, {"text": "z3", "random": "z4"}))


def run_compression(suite: Suite) -> list[Result]:
    """Copy both trees with every --compress choice on the limited link, then on loopback."""
    shapes = suite.shapes["z"]
    sources = {}
    for tree in ("text", "random"):
        name = f"bench-z-{tree}"
        sources[tree] = (name, suite.make_source(name, shapes[tree])["volume_bytes"])

    results: list[Result] = []
    try:
        for rate, scenarios in LINKS:
            suite.lab.limit_rate(rate)
            for tree, scenario in scenarios.items():
                name, data_bytes = sources[tree]
                results.append(suite.baseline_host_tar(scenario, name, data_bytes))
                for choice in CODEC_CHOICES:
                    results.append(_copy(suite, scenario, name, data_bytes, choice))
    finally:
        suite.lab.limit_rate(None)
        for name, _ in sources.values():
            suite.source.docker("volume", "rm", "-f", name, check=False)
    return results


def _copy(suite: Suite, scenario: str, source: str, data_bytes: int, choice: str) -> Result:
    target = f"{source}-ddm"
    suite.remove_target(target)
    result = suite.ddm_migrate(scenario, [(source, target)], data_bytes,
                               method=f"ddm --compress {choice}",
                               options=("--data-path", "host", "--compress", choice))
    suite.remove_target(target)

    record, measuring_seconds = _compression_record(suite)
    if record.get("wire_bytes") is not None:
        result.wire_bytes = int(record["wire_bytes"])
    if choice == "auto":
        chosen = f"{record['codec']}-{record['level']}" if record.get("codec") else "none"
        result.note = (f"auto chose {chosen} after {measuring_seconds:.1f} s of measuring: "
                       f"{record.get('reason', '')}")
    log.info("%s %s: %.1f s, wire %s bytes", scenario, result.method, result.usage.seconds,
             result.wire_bytes)
    return result


def _compression_record(suite: Suite) -> tuple[dict[str, Any], float]:
    """Return the compression record of the newest task in the suite's store, and the
    seconds between its data path event and its compression event (auto's measuring)."""
    store = TaskStore(default_store_path(suite.env))
    try:
        newest = max(store.list_tasks(), key=lambda task: task.created_at)
        record = store.get_extra(newest.id).get("compression", {}).get("0", {})
        events = store.get_events(newest.id)
    finally:
        store.close()
    marks = {}
    for event in events:
        marks.setdefault(event["kind"], event["at"])
    measuring = marks.get("compression", 0.0) - marks.get("data_path", 0.0)
    return record, max(measuring, 0.0)
