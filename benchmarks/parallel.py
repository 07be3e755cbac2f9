"""Scenarios (p) and (q): several volumes in one task, one after another and with `--parallel`.

(p) copies three equal volumes of random data, where one volume already keeps both CPUs of
the lab machine busy. (q) copies volumes whose time goes mostly to fixed costs per volume
rather than to bytes: helper containers or host probes, SSH commands, the verify scan and the
staging rename. q1 is eight small volumes, q2 one large volume and six small ones.

Each run's `phase_seconds` also contain "slowest volume" and "sum of volumes": a volume's
time is its copy plus its verify, from the task's `copied` and `verified` events. The sum is
about what one worker spends in the copy and verify phases, and the slowest volume is the
least that any number of workers can reach. format_parallel_table() sets them side by side.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.measure import format_seconds
from benchmarks.suite import MIB, Result, Suite
from ddm.store import TaskStore, default_store_path

log = logging.getLogger(__name__)

SMALL_VOLUME = {"kind": "small-files", "files": 256, "dirs": 8, "file_bytes": 16 * 1024}
SMALL_VOLUME_SMALL_SIZE = {"kind": "small-files", "files": 64, "dirs": 4, "file_bytes": 16 * 1024}

# Scenario (q) per suite size: sub-scenario -> (volume shapes, worker counts to compare).
Q_SHAPES: dict[str, dict[str, tuple[list[dict[str, Any]], tuple[int, ...]]]] = {
    "full": {
        "q1": ([SMALL_VOLUME] * 8, (1, 4)),
        "q2": ([{"kind": "single", "bytes": 256 * MIB}, *[SMALL_VOLUME] * 6], (1, 4)),
    },
    "small": {
        "q1": ([SMALL_VOLUME_SMALL_SIZE] * 8, (1, 4)),
        "q2": ([{"kind": "single", "bytes": 32 * MIB}, *[SMALL_VOLUME_SMALL_SIZE] * 6], (1, 4)),
    },
}
SLOWEST_VOLUME = "slowest volume"
SUM_OF_VOLUMES = "sum of volumes"


@dataclass(frozen=True)
class VolumeTimes:
    """Per-volume seconds of one task: copy plus verify of each volume."""

    seconds: dict[int, float]

    @property
    def slowest(self) -> float:
        return max(self.seconds.values(), default=0.0)

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def run_parallel(suite: Suite) -> list[Result]:
    """Scenario (p): three equal volumes, one after another and then with --parallel 3."""
    shape = suite.shapes["p"]
    shapes = [shape] * shape["volumes"]
    return run_volumes(suite, "p", shapes, (1, len(shapes)))


def run_latency_bound(suite: Suite) -> list[Result]:
    """Scenario (q): many small volumes, and one large among small ones, with 1 and 4 workers."""
    results = []
    for scenario, (shapes, worker_counts) in Q_SHAPES[suite.size].items():
        results += run_volumes(suite, scenario, shapes, worker_counts)
    return results


def run_volumes(suite: Suite, scenario: str, shapes: Sequence[dict[str, Any]],
                worker_counts: Sequence[int]) -> list[Result]:
    """Write one source volume per shape, then move them all in one task per worker count."""
    names = [f"bench-{scenario}-{index}" for index in range(len(shapes))]
    data_bytes = sum(suite.make_source(name, shape)["volume_bytes"]
                     for name, shape in zip(names, shapes))
    pairs = [(name, f"{name}-ddm") for name in names]

    results = []
    try:
        for workers in worker_counts:
            for _, target in pairs:
                suite.remove_target(target)
            result = suite.ddm_migrate(scenario, pairs, data_bytes,
                                       method=f"ddm --parallel {workers}",
                                       options=("--parallel", str(workers)))
            times = newest_volume_times(suite)
            result.phase_seconds[SLOWEST_VOLUME] = times.slowest
            result.phase_seconds[SUM_OF_VOLUMES] = times.total
            log.info("%s %s: copy+verify %.1f s, slowest volume %.1f s, sum of volumes %.1f s",
                     scenario, result.method, copy_and_verify(result), times.slowest, times.total)
            results.append(result)
    finally:
        for _, target in pairs:
            suite.remove_target(target)
        for name in names:
            suite.source.docker("volume", "rm", "-f", name, check=False)
    return results


def newest_volume_times(suite: Suite) -> VolumeTimes:
    """Return the per-volume copy and verify seconds of the newest task in the suite's store."""
    store = TaskStore(default_store_path(suite.env))
    try:
        newest = max(store.list_tasks(), key=lambda task: task.created_at)
        events = store.get_events(newest.id)
    finally:
        store.close()
    seconds: dict[int, float] = {}
    for event in events:
        data = event["data"] or {}
        if event["kind"] in ("copied", "verified") and "seconds" in data:
            position = int(data["position"])
            seconds[position] = seconds.get(position, 0.0) + float(data["seconds"])
    return VolumeTimes(seconds)


def copy_and_verify(result: Result) -> float:
    """Return the seconds of a run's copy and verify phases together."""
    return result.phase_seconds.get("copy", 0.0) + result.phase_seconds.get("verify", 0.0)


def format_parallel_table(results: Sequence[Result]) -> str:
    """Return the runs of (p) and (q) as a Markdown table: total against slowest and sum."""
    header = ["scenario", "method", "MiB", "wall s", "prepare s", "copy s", "verify s",
              "copy+verify s", "slowest volume s", "sum of volumes s", "peak RSS MiB", "CPU s",
              "machine CPU s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for result in results:
        phases = result.phase_seconds
        if SLOWEST_VOLUME not in phases:
            continue
        lines.append("| " + " | ".join([
            result.scenario,
            result.method,
            f"{result.data_bytes / MIB:.0f}",
            f"{result.usage.seconds:.1f}",
            f"{phases.get('prepare', 0.0):.1f}",
            f"{phases.get('copy', 0.0):.1f}",
            f"{phases.get('verify', 0.0):.1f}",
            f"{copy_and_verify(result):.1f}",
            f"{phases[SLOWEST_VOLUME]:.1f}",
            f"{phases[SUM_OF_VOLUMES]:.1f}",
            f"{result.usage.max_rss_bytes / MIB:.0f}",
            f"{result.usage.cpu_seconds:.1f}",
            format_seconds(result.usage.machine_cpu_seconds),
        ]) + " |")
    return "\n".join(lines)
