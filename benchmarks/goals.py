"""Judge one run's results against the speed, memory and downtime goals; state each gap.

Every goal is a ratio within one run, so a slow machine moves both sides alike. A goal whose
rows the run did not measure (a scenario left out, a failed scenario) is "not measured".
For a time goal that is missed, the reason states whether the machine's CPUs could have
reached it. The busy CPU time of the whole machine during DDM's run, divided by its CPUs,
is the least wall time that work can take. When that bound is above the time the goal
allows, the run was CPU-bound: doing the same work faster needs less CPU time or more CPUs.
Otherwise CPU time alone does not explain the gap, and the reason says so.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.parallel import SLOWEST_VOLUME, SUM_OF_VOLUMES, copy_and_verify
from benchmarks.report import BASELINE_1, BASELINE_2
from benchmarks.route import DIRECT_METHOD
from benchmarks.suite import MIB, Result

DDM = "ddm"
INCREMENTAL = "ddm --incremental"
MAX_PEAK_RSS_BYTES = 150 * MIB
# --parallel: "the total time approaches the slowest volume's, not the sum". The suite counts
# it as met when the copy and verify phases with the most workers take at most this many
# times the slowest volume's copy and verify when it ran alone (one worker).
PARALLEL_SLOWEST_FACTOR = 1.5
# --compress auto: a codec counts as making the transfer faster when its copy took at most
# this share of the uncompressed copy's wall time.
COMPRESS_FASTER_SHARE = 0.9
AUTO_CHOICE = re.compile(r"auto chose (\w+)")


@dataclass(frozen=True)
class Verdict:
    """One goal of the run: what was measured, whether it was met, and the gap when not."""

    goal: str
    measured: str
    met: bool | None  # None: the run did not measure the goal
    gap: str = ""

    @property
    def status(self) -> str:
        return {True: "met", False: "not met", None: "not measured"}[self.met]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status}


def evaluate(results: Sequence[Result], cpus: int | None = None) -> list[Verdict]:
    """Return a Verdict for every goal, always in the same order."""
    run = _Run(results, cpus or os.cpu_count() or 1)
    checks: list[Callable[[_Run], Verdict]] = [
        _against_baseline("a", 0.9, BASELINE_1, "baseline 1"),
        _against_baseline("a", 4.0, BASELINE_2, "baseline 2"),
        _against_baseline("b", 0.7, BASELINE_1, "baseline 1"), _peak_memory, _incremental_wire,
        _incremental_time, _warm_downtime, _parallel, _image_bytes, _compress_auto,
        _direct_compared,
    ]
    return [check(run) for check in checks]


def format_goals(verdicts: Sequence[Verdict]) -> str:
    """Return the verdicts as a Markdown table."""
    lines = ["| goal | measured | status | gap and reason |", "|---|---|---|---|"]
    for verdict in verdicts:
        lines.append(f"| {verdict.goal} | {verdict.measured} | {verdict.status} | "
                     f"{verdict.gap or '-'} |")
    return "\n".join(lines)


class _Run:
    """Results of one run, looked up by scenario and method, and the machine's CPU count."""

    def __init__(self, results: Sequence[Result], cpus: int) -> None:
        self.results = list(results)
        self.cpus = cpus

    def find(self, scenario: str, method: str) -> Result | None:
        return next((result for result in self.results
                     if result.scenario == scenario and result.method == method), None)

    def cpu_reason(self, result: Result, allowed_seconds: float,
                   baseline: Result | None = None) -> str:
        """Say whether the machine's CPU time during `result` explains a whole run slower than
        `allowed_seconds`."""
        busy = result.usage.machine_cpu_seconds
        if busy is None:
            return "the machine's CPU time was not measured (no /proc/stat)"
        bound = busy / self.cpus
        compared = ""
        if baseline is not None and baseline.usage.machine_cpu_seconds is not None:
            compared = (f", against {baseline.usage.machine_cpu_seconds:.1f} s for "
                        f"{baseline.method.split(':')[0]}")
        busy_text = f"the machine's CPUs were busy for {busy:.1f} s{compared}"
        if bound > allowed_seconds:
            return f"CPU-bound: {busy_text}, at least {bound:.1f} s of wall time on {self.cpus} CPUs"
        return (f"not CPU-bound: {busy_text}, {bound:.1f} s of wall time on {self.cpus} CPUs, "
                "so CPU time alone does not explain the gap")


def _ratio_text(result: Result, baseline: Result) -> str:
    ratio = result.mib_per_second / baseline.mib_per_second
    return f"{ratio:.2f} x ({result.usage.seconds:.1f} s against {baseline.usage.seconds:.1f} s)"


def _against_baseline(scenario: str, factor: float, baseline_method: str, label: str
                      ) -> Callable[[_Run], Verdict]:
    goal = f"({scenario}) >= {factor:g} x {label}"

    def check(run: _Run) -> Verdict:
        result, baseline = run.find(scenario, DDM), run.find(scenario, baseline_method)
        if result is None or baseline is None or not baseline.mib_per_second:
            return Verdict(goal, "-", None)
        measured = _ratio_text(result, baseline)
        direct = run.find(scenario, DIRECT_METHOD)
        if direct is not None:
            measured += f"; --route direct {_ratio_text(direct, baseline)}"
        if result.mib_per_second >= factor * baseline.mib_per_second:
            return Verdict(goal, measured, True)
        allowed = baseline.usage.seconds / factor
        gap = (f"needs {allowed:.1f} s or less, took {result.usage.seconds:.1f} s; "
               f"{run.cpu_reason(result, allowed, baseline)}")
        return Verdict(goal, measured, False, gap)

    return check


def _peak_memory(run: _Run) -> Verdict:
    goal = f"controller peak RSS <= {MAX_PEAK_RSS_BYTES // MIB} MiB"
    rows = [result for result in run.results if result.method.startswith(DDM)]
    if not rows:
        return Verdict(goal, "-", None)
    peak = max(rows, key=lambda result: result.usage.max_rss_bytes)
    low = min(result.usage.max_rss_bytes for result in rows)
    measured = (f"{low / MIB:.0f} to {peak.usage.max_rss_bytes / MIB:.0f} MiB over "
                f"{len(rows)} DDM runs")
    if peak.usage.max_rss_bytes <= MAX_PEAK_RSS_BYTES:
        return Verdict(goal, measured, True)
    return Verdict(goal, measured, False,
                   f"{peak.scenario} {peak.method} peaked at {peak.usage.max_rss_bytes / MIB:.0f} MiB")


def _incremental_wire(run: _Run) -> Verdict:
    goal = "(d) <= 3% of the volume's bytes on the wire"
    result = run.find("d", INCREMENTAL)
    if result is None or result.wire_bytes is None or not result.data_bytes:
        return Verdict(goal, "-", None)
    share = result.wire_bytes / result.data_bytes
    measured = f"{share:.2%} ({result.wire_bytes / MIB:.1f} of {result.data_bytes / MIB:.0f} MiB)"
    if share <= 0.03:
        return Verdict(goal, measured, True)
    return Verdict(goal, measured, False, f"{share - 0.03:.2%} of the volume over the goal")


def _incremental_time(run: _Run) -> Verdict:
    goal = "(d) <= 15% of the full copy's time"
    result, full = run.find("d", INCREMENTAL), run.find("c", DDM)
    if result is None or full is None or not full.usage.seconds:
        return Verdict(goal, "-", None)
    share = result.usage.seconds / full.usage.seconds
    measured = f"{share:.1%} ({result.usage.seconds:.1f} s against (c)'s {full.usage.seconds:.1f} s)"
    if share <= 0.15:
        return Verdict(goal, measured, True)
    allowed = 0.15 * full.usage.seconds
    return Verdict(goal, measured, False,
                   f"needs {allowed:.1f} s or less; {run.cpu_reason(result, allowed)}")


def _warm_downtime(run: _Run) -> Verdict:
    goal = "(e) warm cutover downtime <= 10% of cold"
    cold, warm = run.find("e", "ddm full (cold)"), run.find("e", "ddm full --warm")
    if (cold is None or warm is None or not cold.downtime_seconds
            or warm.downtime_seconds is None):
        return Verdict(goal, "-", None)
    share = warm.downtime_seconds / cold.downtime_seconds
    measured = f"{share:.1%} ({warm.downtime_seconds:.2f} s against {cold.downtime_seconds:.2f} s)"
    if share <= 0.10:
        return Verdict(goal, measured, True)
    return Verdict(goal, measured, False,
                   f"{warm.downtime_seconds - 0.1 * cold.downtime_seconds:.2f} s over")


def _parallel(run: _Run) -> Verdict:
    goal = (f"--parallel N: copy and verify <= {PARALLEL_SLOWEST_FACTOR:g} x the slowest "
            "volume alone")
    parts, gaps = [], []
    for scenario in ("p", "q1", "q2"):
        rows = [result for result in run.results
                if result.scenario == scenario and SLOWEST_VOLUME in result.phase_seconds]
        serial = next((row for row in rows if row.method == "ddm --parallel 1"), None)
        widest = max(rows, key=lambda row: int(row.method.rsplit(" ", 1)[-1]), default=None)
        if serial is None or widest is None or widest is serial:
            continue
        slowest, total = serial.phase_seconds[SLOWEST_VOLUME], serial.phase_seconds[SUM_OF_VOLUMES]
        allowed = PARALLEL_SLOWEST_FACTOR * slowest
        spent = copy_and_verify(widest)
        parts.append(f"{scenario}: {spent:.1f} s ({widest.method.removeprefix('ddm ')}), slowest "
                     f"{slowest:.1f} s, sum {total:.1f} s")
        if spent > allowed:
            # The CPU bound covers the whole run, so it is set against the whole run with
            # its copy and verify shortened to what the goal allows.
            whole = widest.usage.seconds - spent + allowed
            gaps.append(f"{scenario}: copy and verify may take {allowed:.1f} s, the whole run "
                        f"{whole:.1f} s; {run.cpu_reason(widest, whole)}")
    if not parts:
        return Verdict(goal, "-", None)
    return Verdict(goal, "; ".join(parts), not gaps, "; ".join(gaps))


def _image_bytes(run: _Run) -> Verdict:
    goal = "image on the target costs no image bytes; a re-run sends nothing"
    second = run.find("i", "ddm full, second container, same image")
    rerun = run.find("i", "ddm full, re-run of the first")
    if second is None or rerun is None:
        return Verdict(goal, "-", None)
    image_bytes, wire_bytes = second.image_bytes or 0, rerun.wire_bytes or 0
    measured = (f"second container {image_bytes / MIB:.1f} image MiB; re-run "
                f"{wire_bytes / MIB:.1f} MiB on the wire")
    if image_bytes == 0 and wire_bytes == 0:
        return Verdict(goal, measured, True)
    return Verdict(goal, measured, False, "bytes were sent that the target already had")


def _compress_auto(run: _Run) -> Verdict:
    goal = "--compress auto compresses only when that is faster"
    parts, gaps = [], []
    for scenario in ("z1", "z2", "z3", "z4"):
        auto, plain = run.find(scenario, "ddm --compress auto"), run.find(scenario, "ddm --compress none")
        match = AUTO_CHOICE.search(auto.note) if auto is not None else None
        if auto is None or plain is None or match is None:
            continue
        chosen = match.group(1)
        faster = [codec for codec in ("lz4", "zstd")
                  if (row := run.find(scenario, f"ddm --compress {codec}")) is not None
                  and row.usage.seconds <= COMPRESS_FASTER_SHARE * plain.usage.seconds]
        parts.append(f"{scenario}: chose {chosen}, faster than none: {', '.join(faster) or 'no codec'}")
        if chosen != "none" and chosen not in faster:
            gaps.append(f"{scenario}: auto chose {chosen}, which was not faster than none")
        elif chosen == "none" and faster:
            gaps.append(f"{scenario}: auto sent uncompressed, but {', '.join(faster)} was faster")
    if not parts:
        return Verdict(goal, "-", None)
    return Verdict(goal, "; ".join(parts), not gaps, "; ".join(gaps))


def _direct_compared(run: _Run) -> Verdict:
    goal = "--route direct compared against relay"
    pairs = [(scenario, run.find(scenario, DDM), run.find(scenario, DIRECT_METHOD))
             for scenario in ("a", "b", "c")]
    parts = [f"{scenario}: {direct.usage.seconds:.1f} s against {relay.usage.seconds:.1f} s"
             for scenario, relay, direct in pairs if relay is not None and direct is not None]
    if not parts:
        return Verdict(goal, "-", None)
    return Verdict(goal, "; ".join(parts), True)
