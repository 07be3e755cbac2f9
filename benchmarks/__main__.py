"""python -m benchmarks run [--size small|full] [--scenarios a,b,...] [--json PATH]

Brings up a lab of two Docker hosts, runs the baselines and DDM on every chosen scenario,
prints a Markdown table and writes every number as JSON. Needs root and the lab's tools.
The JSON goes to a new file in the temporary directory unless --json names one, so a run
from the checkout leaves the tracked benchmark-results.json alone.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.parallel import format_parallel_table
from benchmarks.report import format_table, hardware, write_json
from benchmarks.run import run_scenarios
from benchmarks.suite import SCENARIOS, SIZES, Suite, new_work_dir
from tests.lab import Lab
from tests.lab.lab import DEFAULT_PORT


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="Run the benchmark suite on a lab of its own.")
    run.add_argument("--size", choices=sorted(SIZES), default="full",
                     help="Data size: full (the size the goals are stated for) or small.")
    run.add_argument("--scenarios", default=",".join(SCENARIOS),
                     help=f"Comma-separated scenarios to run (default {','.join(SCENARIOS)}). "
                     "Scenario d updates the copy that c makes, so d without c runs c first.")
    run.add_argument("--json", type=Path, default=None, metavar="PATH",
                     help="File for the results as JSON, rewritten after each scenario "
                     "(default: a new file TMPDIR/ddm-benchmarks-UTCTIME.json, named on "
                     "stderr).")
    run.add_argument("--port", type=int, default=int(os.environ.get("DDM_LAB_PORT", DEFAULT_PORT)),
                     help="SSH port of the lab hosts (default DDM_LAB_PORT, else 2222).")
    run.add_argument("--root", type=Path, default=None, metavar="DIR",
                     help="Lab directory (default /var/tmp/ddm-bench-PORT).")
    return parser.parse_args(argv)


def default_json_path() -> Path:
    """Return a new results path in the temporary directory, named by the UTC start time."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return Path(tempfile.gettempdir()) / f"ddm-benchmarks-{stamp}.json"


def scenario_notes(scenarios: list[str]) -> list[str]:
    """Return one stderr line per scenario that the run adds to the chosen ones."""
    if "d" in scenarios and "c" not in scenarios[:scenarios.index("d")]:
        return ["scenario d updates the copy that scenario c makes, so c runs first "
                "(its rows appear in the results)"]
    return []


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("paramiko").setLevel(logging.WARNING)

    scenarios = [name.strip() for name in arguments.scenarios.split(",") if name.strip()]
    unknown = [name for name in scenarios if name not in SCENARIOS]
    if unknown:
        print(f"unknown scenario {', '.join(unknown)}; choose from {','.join(SCENARIOS)}", file=sys.stderr)
        return 2

    for note in scenario_notes(scenarios):
        print(note, file=sys.stderr)
    json_path = arguments.json or default_json_path()
    print(f"results will be written to {json_path}", file=sys.stderr)

    root = arguments.root or Path(f"/var/tmp/ddm-bench-{arguments.port}")
    work_dir = new_work_dir()
    try:
        with Lab(root, host_count=2, port=arguments.port) as lab:
            suite = Suite(lab, arguments.size, work_dir)
            results, failed = run_scenarios(
                suite, scenarios, lambda so_far: write_json(json_path, arguments.size, so_far)
            )
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    print(format_table(results))
    if any(result.scenario[0] in "pq" for result in results):
        print("\n" + format_parallel_table(results))
    machine = hardware()
    print(f"\n{machine['cpus']} CPUs ({machine['cpu_model']}), size {arguments.size}, "
          f"load average at the end {machine['load_average'][0]:.1f}")
    write_json(json_path, arguments.size, results)
    print(f"results written to {json_path}", file=sys.stderr)
    if failed:
        print(f"scenarios failed: {', '.join(failed)}; see the log above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
