"""python -m benchmarks run [--size small|full] [--scenarios a,b,...] [--json PATH]
python -m benchmarks goals PATH

`run` brings up a lab of two Docker hosts, runs the baselines and DDM on every chosen
scenario, prints Markdown tables of the results and of the goals (met, or the gap and its
reason; see benchmarks/goals.py) and writes every number as JSON. Needs root and the lab's
tools. The JSON goes to a new file in the temporary directory unless --json names one, so a
run from the checkout leaves the tracked benchmark-results.json alone. `goals` judges the
results file of an earlier run again, on the CPU count recorded in it.
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

from benchmarks.goals import evaluate, format_goals
from benchmarks.parallel import format_parallel_table
from benchmarks.report import format_table, hardware, read_json, recorded_cpus, write_json
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
    goals = commands.add_parser("goals", help="Judge the results file of an earlier run "
                                "against the goals.")
    goals.add_argument("path", type=Path, metavar="PATH", help="Results JSON written by run.")
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


def judge_file(path: Path) -> int:
    """Print the goals table of a results file; return the exit status."""
    try:
        document, results = read_json(path)
        table = format_goals(evaluate(results, recorded_cpus(document)))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        print(f"cannot read benchmark results {path}: {error}; pass a file that "
              "'python -m benchmarks run' wrote", file=sys.stderr)
        return 2
    print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    if arguments.command == "goals":
        return judge_file(arguments.path)
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
    verdicts = evaluate(results, machine["cpus"])
    print("\n" + format_goals(verdicts))
    print(f"\n{machine['cpus']} CPUs ({machine['cpu_model']}), size {arguments.size}, "
          f"load average at the end {machine['load_average'][0]:.1f}")
    if arguments.size != "full":
        print("the goals are stated for --size full; at this size the verdicts only show "
              "that the suite works", file=sys.stderr)
    write_json(json_path, arguments.size, results, [verdict.to_dict() for verdict in verdicts])
    print(f"results written to {json_path}", file=sys.stderr)
    if failed:
        print(f"scenarios failed: {', '.join(failed)}; see the log above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
