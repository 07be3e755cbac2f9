"""Print the results table and write the results as JSON."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.measure import ProcessUsage, format_seconds
from benchmarks.suite import MIB, TITLES, Result

BASELINE_1 = "baseline 1: ssh tar, ssh tar -x"
BASELINE_2 = "baseline 2: docker run tar"


def baseline_rate(results: Sequence[Result], scenario: str, method: str) -> float | None:
    for result in results:
        if result.scenario == scenario and result.method == method:
            return result.mib_per_second
    return None


def copy_phase_rate(result: Result) -> float | None:
    """MiB/s of DDM's copy phase alone (stream hashed and manifest built on the way)."""
    seconds = result.phase_seconds.get("copy")
    return result.data_bytes / MIB / seconds if seconds else None


def format_rate(mib_per_second: float) -> str:
    """Format a rate in MiB/s: one decimal below 100 MiB/s, whole numbers above."""
    if round(mib_per_second, 1) < 100:
        return f"{mib_per_second:.1f}"
    return f"{mib_per_second:.0f}"


def table_rows(results: Sequence[Result]) -> list[list[str]]:
    rows = []
    for result in results:
        rate = result.mib_per_second
        first = baseline_rate(results, result.scenario, BASELINE_1)
        second = baseline_rate(results, result.scenario, BASELINE_2)
        copy_rate = copy_phase_rate(result)
        rows.append([
            result.scenario,
            result.method,
            f"{result.data_bytes / MIB:.0f}",
            f"{result.usage.seconds:.1f}",
            format_rate(rate),
            f"{rate / first:.2f}" if first else "-",
            f"{rate / second:.2f}" if second else "-",
            f"{format_rate(copy_rate)} ({copy_rate / first:.2f})" if copy_rate and first else "-",
            f"{result.wire_bytes / MIB:.1f}" if result.wire_bytes is not None else "-",
            f"{result.usage.max_rss_bytes / MIB:.0f}",
            f"{result.usage.cpu_seconds:.1f}",
            format_seconds(result.usage.machine_cpu_seconds),
            f"{result.downtime_seconds:.2f}" if result.downtime_seconds is not None else "-",
            f"{result.image_bytes / MIB:.1f}" if result.image_bytes is not None else "-",
        ])
    return rows


HEADER = ["scenario", "method", "MiB", "wall s", "MiB/s", "x b1", "x b2",
          "copy phase MiB/s (x b1)", "wire MiB", "peak RSS MiB", "CPU s", "machine CPU s",
          "downtime s", "image MiB"]


def format_table(results: Sequence[Result]) -> str:
    """Return the results as a Markdown table, ready for docs/benchmarks.md."""
    rows = table_rows(results)
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def hardware() -> dict[str, Any]:
    """Describe the machine the numbers came from."""
    model = ""
    try:
        output = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((line.split(":", 1)[1].strip() for line in output.splitlines()
                      if line.startswith("Model name")), "")
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
    }


def write_json(path: Path, size: str, results: Sequence[Result],
               goals: Sequence[dict[str, Any]] = ()) -> None:
    document = {
        "size": size,
        "hardware": hardware(),
        "titles": TITLES,
        "results": [result.to_dict() for result in results],
        "goals": list(goals),
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


def read_json(path: Path) -> tuple[dict[str, Any], list[Result]]:
    """Return the document written by write_json() and its results as Result objects."""
    document = json.loads(path.read_text())
    results = []
    for data in document["results"]:
        fields = {name: value for name, value in data.items() if name != "mib_per_second"}
        usage = fields.pop("usage")
        usage["exit_statuses"] = tuple(usage["exit_statuses"])
        results.append(Result(usage=ProcessUsage(**usage), **fields))
    return document, results
