"""Print the results table and write the results as JSON."""

from __future__ import annotations

import json
import math
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
    """Return the document written by write_json() and its results as Result objects.

    Keys that this version does not know are ignored. Raises ValueError naming the first
    field that is missing or not a finite number where one is needed.
    """
    document = json.loads(path.read_text())
    if not isinstance(document, dict) or not isinstance(document.get("results"), list):
        raise ValueError("no list of results")
    results = []
    for index, data in enumerate(document["results"]):
        if not isinstance(data, dict) or not isinstance(data.get("usage"), dict):
            raise ValueError(f"result {index} is not an object with a usage object")
        fields = {name: data[name] for name in RESULT_FIELDS if name in data}
        usage = {name: data["usage"].get(name) for name in USAGE_FIELDS}
        for name in ("seconds", "cpu_seconds", "max_rss_bytes"):
            _require_number(usage[name], f"result {index} usage.{name}")
        if usage["machine_cpu_seconds"] is not None:
            _require_number(usage["machine_cpu_seconds"], f"result {index} usage.machine_cpu_seconds")
        usage["exit_statuses"] = tuple(usage["exit_statuses"] or ())
        fields["phase_seconds"] = fields.get("phase_seconds") or {}
        results.append(Result(usage=ProcessUsage(**usage), **fields))
    return document, results


def recorded_cpus(document: dict[str, Any]) -> int:
    """Return the CPU count that a results document records; raise ValueError without one."""
    hardware_facts = document.get("hardware")
    cpus = hardware_facts.get("cpus") if isinstance(hardware_facts, dict) else None
    if not isinstance(cpus, int) or isinstance(cpus, bool) or cpus < 1:
        raise ValueError(f"hardware.cpus is {cpus!r}, not a positive whole number")
    return cpus


def _require_number(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0:
        raise ValueError(f"{name} is {value!r}, not a finite number of at least 0")


# The fields of a result and of its usage that write_json() writes and read_json() reads.
RESULT_FIELDS = ("scenario", "method", "data_bytes", "wire_bytes", "phase_seconds", "note",
                 "downtime_seconds", "image_bytes")
USAGE_FIELDS = ("seconds", "cpu_seconds", "max_rss_bytes", "exit_statuses",
                "machine_cpu_seconds")
