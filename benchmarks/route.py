"""The direct route in the suite: the same copy as DDM's relay run, streamed host to host."""

from __future__ import annotations

from benchmarks.suite import Result, Suite

DIRECT_METHOD = "ddm --route direct"
DIRECT_SCENARIOS = ("a", "b", "c")


def run_direct_copy(suite: Suite, scenario: str, source_volume: str, data_bytes: int) -> Result:
    """Copy `source_volume` with `--route direct` to a fresh target volume, then remove it.

    The controller's RSS and CPU time in this row are those of a process that only starts
    commands and compares scans: the bytes flow between the lab hosts over the lab link.
    """
    target_volume = f"{source_volume}-direct"
    suite.remove_target(target_volume)
    result = suite.ddm_migrate(scenario, [(source_volume, target_volume)], data_bytes,
                               method=DIRECT_METHOD, options=("--route", "direct"))
    suite.remove_target(target_volume)
    return result
