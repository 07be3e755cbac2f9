"""benchmarks.goals: each goal of the suite judged from one run's results, with the gap's reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

# The suite measures its children with the POSIX module resource and runs only on Linux.
pytest.importorskip("resource")

from benchmarks.__main__ import main  # noqa: E402
from benchmarks.goals import Verdict, evaluate, format_goals  # noqa: E402
from benchmarks.measure import ProcessUsage  # noqa: E402
from benchmarks.parallel import SLOWEST_VOLUME, SUM_OF_VOLUMES  # noqa: E402
from benchmarks.report import BASELINE_1, BASELINE_2, read_json, write_json  # noqa: E402
from benchmarks.suite import MIB, Result  # noqa: E402


def measured(scenario: str, method: str, seconds: float, *, machine_cpu: float | None = None,
             rss_mib: int = 60, data_bytes: int = 1024 * MIB, **fields: object) -> Result:
    usage = ProcessUsage(seconds=seconds, cpu_seconds=1.0, max_rss_bytes=rss_mib * MIB,
                         exit_statuses=(0,), machine_cpu_seconds=machine_cpu)
    return Result(scenario, method, data_bytes, usage, **fields)  # type: ignore[arg-type]


def verdict(results: list[Result], goal_start: str, cpus: int = 2) -> Verdict:
    return next(item for item in evaluate(results, cpus) if item.goal.startswith(goal_start))


def test_rate_goal_met() -> None:
    results = [measured("a", BASELINE_1, 10.0), measured("a", "ddm", 11.0)]

    found = verdict(results, "(a) >= 0.9 x baseline 1")

    assert found.met is True
    assert found.measured == "0.91 x (11.0 s against 10.0 s)"
    assert found.gap == ""


def test_rate_goal_cpu_bound_gap() -> None:
    results = [measured("b", BASELINE_1, 7.0, machine_cpu=12.0),
               measured("b", "ddm", 16.0, machine_cpu=30.0)]

    found = verdict(results, "(b) >= 0.7 x baseline 1")

    assert found.met is False
    assert found.gap == ("needs 10.0 s or less, took 16.0 s; CPU-bound: the machine's CPUs were "
                         "busy for 30.0 s, against 12.0 s for baseline 1, at least 15.0 s of "
                         "wall time on 2 CPUs")


def test_rate_goal_gap_with_idle_cpus() -> None:
    results = [measured("b", BASELINE_1, 7.0, machine_cpu=12.0),
               measured("b", "ddm", 16.0, machine_cpu=8.0)]

    found = verdict(results, "(b) >= 0.7 x baseline 1", cpus=4)

    assert found.met is False
    assert "not CPU-bound" in found.gap
    assert "2.0 s of wall time on 4 CPUs" in found.gap


def test_direct_route_is_shown_beside_the_relay() -> None:
    results = [measured("a", BASELINE_2, 40.0), measured("a", "ddm", 10.0),
               measured("a", "ddm --route direct", 5.0)]

    found = verdict(results, "(a) >= 4 x baseline 2")

    assert found.met is True
    assert found.measured == ("4.00 x (10.0 s against 40.0 s); --route direct 8.00 x (5.0 s "
                              "against 40.0 s)")


def test_goal_without_its_rows_is_not_measured() -> None:
    found = verdict([measured("a", "ddm", 10.0)], "(a) >= 0.9 x baseline 1")

    assert found.met is None
    assert found.status == "not measured"


def test_memory_goal_names_the_largest_run() -> None:
    results = [measured("a", "ddm", 10.0, rss_mib=80), measured("b", "ddm", 10.0, rss_mib=151),
               measured("b", BASELINE_1, 5.0, rss_mib=400)]

    found = verdict(results, "controller peak RSS")

    assert found.met is False
    assert found.measured == "80 to 151 MiB over 2 DDM runs"
    assert found.gap == "b ddm peaked at 151 MiB"


def test_incremental_goals() -> None:
    results = [measured("c", "ddm", 20.0),
               measured("d", "ddm --incremental", 3.2, data_bytes=1000 * MIB,
                        wire_bytes=31 * MIB)]

    wire = verdict(results, "(d) <= 3%")
    time = verdict(results, "(d) <= 15%")

    assert (wire.met, wire.measured) == (False, "3.10% (31.0 of 1000 MiB)")
    assert (time.met, time.measured) == (False, "16.0% (3.2 s against (c)'s 20.0 s)")


def test_warm_downtime_goal() -> None:
    results = [measured("e", "ddm full (cold)", 20.0, downtime_seconds=20.0),
               measured("e", "ddm full --warm", 16.0, downtime_seconds=0.8)]

    found = verdict(results, "(e)")

    assert (found.met, found.measured) == (True, "4.0% (0.80 s against 20.00 s)")


def parallel_run(workers: int, seconds: float, copy: float, verify: float,
                 slowest: float, total: float, machine_cpu: float) -> Result:
    phases = {"copy": copy, "verify": verify, SLOWEST_VOLUME: slowest, SUM_OF_VOLUMES: total}
    return measured("q1", f"ddm --parallel {workers}", seconds, machine_cpu=machine_cpu,
                    phase_seconds=phases)


def test_parallel_goal_compares_with_slowest_volume_alone() -> None:
    results = [parallel_run(1, 5.0, 3.0, 1.2, 0.6, 4.2, 2.5),
               parallel_run(4, 3.4, 1.8, 0.5, 1.3, 8.7, 4.9)]

    found = verdict(results, "--parallel N")

    assert found.met is False
    assert found.measured == "q1: 2.3 s (--parallel 4), slowest 0.6 s, sum 4.2 s"
    # 1.5 x 0.6 s for copy and verify leaves the run 3.4 - 2.3 + 0.9 = 2.0 s.
    assert found.gap.startswith("q1: copy and verify may take 0.9 s, the whole run 2.0 s; "
                                "CPU-bound")


def test_parallel_goal_met() -> None:
    results = [parallel_run(1, 5.0, 3.0, 1.2, 0.6, 4.2, 2.5),
               parallel_run(4, 2.0, 0.6, 0.2, 0.7, 2.0, 3.0)]

    assert verdict(results, "--parallel N").met is True


@pytest.mark.parametrize(("choice", "met"), [("zstd", True), ("lz4", False), ("none", False)])
def test_compress_auto_goal(choice: str, met: bool) -> None:
    results = [measured("z1", "ddm --compress none", 24.0),
               measured("z1", "ddm --compress lz4", 23.0),
               measured("z1", "ddm --compress zstd", 10.0),
               measured("z1", "ddm --compress auto", 11.0,
                        note=f"auto chose {choice}-3 after 1.0 s of measuring: ratio")]

    found = verdict(results, "--compress auto")

    assert found.met is met
    assert found.measured == f"z1: chose {choice}, faster than none: zstd"


def test_results_survive_the_json_file(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    results = [measured("a", BASELINE_1, 10.0, machine_cpu=20.0),
               measured("a", "ddm", 11.0, wire_bytes=MIB, phase_seconds={"copy": 9.0})]
    write_json(path, "full", results, [evaluate(results)[0].to_dict()])

    document, read = read_json(path)

    assert read == results
    assert document["goals"][0]["status"] == "met"


def test_goals_command_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "results.json"
    results = [measured("a", BASELINE_1, 10.0), measured("a", "ddm", 20.0)]
    write_json(path, "full", results)

    status = main(["goals", str(path)])

    assert status == 0
    output = capsys.readouterr().out
    assert output.splitlines()[0] == "| goal | measured | status | gap and reason |"
    assert "| (a) >= 0.9 x baseline 1 | 0.50 x (20.0 s against 10.0 s) | not met |" in output


def test_goals_command_rejects_other_files(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "other.json"
    path.write_text('{"size": "full"}')

    assert main(["goals", str(path)]) == 2
    assert capsys.readouterr().err.startswith(f"cannot read benchmark results {path}: ")


def test_table_has_one_row_per_goal() -> None:
    table = format_goals(evaluate([]))

    assert len(table.splitlines()) == 2 + len(evaluate([]))
    assert "| not measured | - |" in table


def test_unknown_keys_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    write_json(path, "full", [measured("a", BASELINE_1, 10.0)])
    document = json.loads(path.read_text())
    document["results"][0]["added_later"] = 1
    document["results"][0]["usage"]["added_later"] = 2
    path.write_text(json.dumps(document))

    _, read = read_json(path)

    assert read == [measured("a", BASELINE_1, 10.0)]


@pytest.mark.parametrize(("change", "message"), [
    (lambda document: document["hardware"].update(cpus=0),
     "hardware.cpus is 0, not a positive whole number"),
    (lambda document: document.update(hardware=None),
     "hardware.cpus is None, not a positive whole number"),
    (lambda document: document["results"][0]["usage"].update(seconds=float("nan")),
     "result 0 usage.seconds is nan, not a finite number of at least 0"),
    (lambda document: document["results"].append("row"),
     "result 1 is not an object with a usage object"),
    (lambda document: document.update(results={}), "no list of results"),
])
def test_goals_command_names_the_invalid_field(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               change: Any, message: str) -> None:
    path = tmp_path / "results.json"
    write_json(path, "full", [measured("a", BASELINE_1, 10.0)])
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))

    assert main(["goals", str(path)]) == 2
    assert capsys.readouterr().err == (f"cannot read benchmark results {path}: {message}; pass "
                                       "a file that 'python -m benchmarks run' wrote\n")
