"""Run the chosen scenarios in order and collect their Results."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from benchmarks.compression import run_compression
from benchmarks.cutover import run_cutover
from benchmarks.images import run_images
from benchmarks.parallel import run_latency_bound, run_parallel
from benchmarks.route import DIRECT_SCENARIOS, run_direct_copy
from benchmarks.suite import Result, Suite

log = logging.getLogger(__name__)


def run_full_copy(suite: Suite, scenario: str, *, keep_ddm_target: bool = False) -> list[Result]:
    """Copy one scenario's volume with both baselines and with DDM, side by side."""
    shape = suite.shapes[scenario]
    source_volume = f"bench-{scenario}"
    written = suite.make_source(source_volume, shape)
    data_bytes = written["volume_bytes"]

    results = [
        suite.baseline_host_tar(scenario, source_volume, data_bytes),
        suite.baseline_docker_run(scenario, source_volume, data_bytes),
    ]
    target_volume = f"{source_volume}-ddm"
    suite.remove_target(target_volume)
    results.append(suite.ddm_migrate(scenario, [(source_volume, target_volume)], data_bytes))
    if scenario in DIRECT_SCENARIOS:
        results.append(run_direct_copy(suite, scenario, source_volume, data_bytes))
    if not keep_ddm_target:
        suite.remove_target(target_volume)
        suite.source.docker("volume", "rm", "-f", source_volume, check=False)
    return results


def run_incremental(suite: Suite, results: list[Result]) -> list[Result]:
    """Scenario (d): change 1% of (c)'s files, then migrate onto the earlier copy again."""
    full_copy: list[Result] = []
    if not any(result.scenario == "c" and result.method == "ddm" for result in results):
        log.info("scenario d: running scenario c first, because d updates the copy c makes")
        full_copy = run_full_copy(suite, "c", keep_ddm_target=True)

    source_volume, target_volume = "bench-c", "bench-c-ddm"
    changed = suite.generate(source_volume, suite.shapes["d"])
    data_bytes = changed["volume_bytes"]

    measured = [
        suite.baseline_host_tar("d", source_volume, data_bytes),
        suite.baseline_docker_run("d", source_volume, data_bytes),
        suite.ddm_migrate("d", [(source_volume, target_volume)], data_bytes,
                          method="ddm --incremental", options=("--incremental",)),
    ]
    measured[-1].note = (f"{changed['files']} files written ({changed['bytes']} bytes), "
                         f"{changed['removed']} removed")

    # A second re-migration after another 1% change. The run above verified with --verify
    # full and stored both volumes' scans (ddmsyncer.scanstore), so this one rescans them: the
    # hosts report and hash only the entries changed since.
    changed_again = suite.generate(source_volume, suite.shapes["d"])
    measured.append(suite.ddm_migrate("d", [(source_volume, target_volume)],
                                      changed_again["volume_bytes"],
                                      method="ddm --incremental, second update",
                                      options=("--incremental",)))
    measured[-1].note = (f"{changed_again['files']} files written ({changed_again['bytes']} "
                         f"bytes), {changed_again['removed']} removed")
    suite.remove_target(target_volume)
    suite.source.docker("volume", "rm", "-f", source_volume, check=False)
    return full_copy + measured


def run_scenarios(
    suite: Suite, scenarios: Sequence[str], on_results: Callable[[list[Result]], None]
) -> tuple[list[Result], list[str]]:
    """Run every chosen scenario; return the results and the scenarios that failed.

    A failing scenario is logged and the others still run. on_results is called with all
    results so far after each scenario, so a long run leaves its numbers even when cut short.
    """
    results: list[Result] = []
    failed: list[str] = []
    steps: dict[str, Callable[[], list[Result]]] = {
        "a": lambda: run_full_copy(suite, "a"),
        "b": lambda: run_full_copy(suite, "b"),
        "c": lambda: run_full_copy(suite, "c", keep_ddm_target="d" in scenarios),
        "d": lambda: run_incremental(suite, results),
        "e": lambda: run_cutover(suite),
        "p": lambda: run_parallel(suite),
        "q": lambda: run_latency_bound(suite),
        "i": lambda: run_images(suite),
        "z": lambda: run_compression(suite),
    }
    for scenario in scenarios:
        if scenario not in steps:
            log.warning("scenario %s is not implemented; skipped", scenario)
            continue
        log.info("scenario %s started", scenario)
        try:
            results.extend(steps[scenario]())
        except RuntimeError as error:
            log.error("scenario %s failed: %s", scenario, error)
            failed.append(scenario)
        suite.remove_leftovers()
        on_results(results)
    return results, failed
