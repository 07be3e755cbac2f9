"""Scenario (e): full-mode cutover of a running container, cold and then with --warm.

The container runs on h1 with one named volume. Each cutover runs in this process through
ddm.api, because the volume must change at a fixed point inside the task: when the copy
phase ends, which for --warm is right after the pre-copy and before the source container is
stopped. gentree.py's "change" kind then rewrites, adds and removes 1% of the files. Both
cutovers see the same change at the same point. Each is rolled back afterwards, so the
second starts from the same hosts as the first.

Downtime is the task's downtime_seconds: from the first source container stop until the
target containers pass their state check.
"""

from __future__ import annotations

import logging
import resource
import time
import uuid
from typing import Any

from benchmarks.measure import ProcessUsage, machine_busy_seconds, machine_cpu_since
from benchmarks.suite import BUSYBOX_IMAGE, Result, Suite
from ddm import api
from ddm.config import load_config
from ddm.events import Event, PhaseFinished
from ddm.store import TaskStore, default_store_path

log = logging.getLogger(__name__)

# Exits on SIGTERM as a well-behaved service does, so `docker stop` takes no stop timeout.
APP_COMMAND = "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"


def run_cutover(suite: Suite) -> list[Result]:
    """Measure the downtime of a cold and a warm cutover of the same container."""
    shape = suite.shapes["e"]
    token = uuid.uuid4().hex[:8]
    container, volume, image = f"bench-e-{token}", f"bench-e-{token}", f"ddm-bench/e-{token}:1"
    data_bytes = suite.make_source(volume, shape["tree"])["volume_bytes"]
    _build_image(suite, image)
    suite.source.docker("run", "-d", "--name", container, "--network", "none",
                        "--stop-timeout", "10", "-v", f"{volume}:/data", image, "sh", "-c",
                        APP_COMMAND)
    try:
        results = [_measure(suite, container, volume, data_bytes, warm=warm)
                   for warm in (False, True)]
    finally:
        for host in (suite.source, suite.target):
            host.docker("rm", "-f", container, check=False)
            host.docker("volume", "rm", "-f", volume, check=False)
            host.docker("image", "rm", "-f", image, check=False)

    cold, warm = results
    if cold.downtime_seconds and warm.downtime_seconds is not None:
        warm.note += f"; downtime {warm.downtime_seconds / cold.downtime_seconds:.2f} x cold"
    return results


def _build_image(suite: Suite, tag: str) -> None:
    """Commit a copy of the lab's busybox image on h1, because its ID differs on each lab host."""
    builder = f"bench-e-build-{uuid.uuid4().hex[:8]}"
    suite.source.docker("create", "--name", builder, "--network", "none", BUSYBOX_IMAGE, "true")
    try:
        suite.source.docker("commit", builder, tag)
    finally:
        suite.source.docker("rm", "-f", builder, check=False)


def _measure(suite: Suite, container: str, volume: str, data_bytes: int, *,
             warm: bool) -> Result:
    config = load_config(suite.config_path, environ=suite.env)
    store = TaskStore(default_store_path(suite.env))
    changed: dict[str, Any] = {}

    def on_event(event: Event) -> None:
        if isinstance(event, PhaseFinished) and event.phase == "copy":
            changed.update(suite.generate(volume, suite.shapes["e"]["change"]))

    try:
        task = api.create_full_task(store, config, source=suite.source.name,
                                    target=suite.target.name, containers=[container],
                                    options={"warm": warm})
        suite.settle()
        usage = _run_measured(lambda: api.run_task(config, store, task.id, on_event=on_event))
        extra = store.get_extra(task.id)
        _log_downtime_steps(store, task.id, extra.get("source_stopped_at"))
        api.rollback_task(config, store, task.id)
    finally:
        store.close()

    method = "ddm full --warm" if warm else "ddm full (cold)"
    result = Result("e", method, data_bytes, usage,
                    wire_bytes=int(extra.get("volume_bytes_sent") or 0),
                    downtime_seconds=extra.get("downtime_seconds"))
    result.note = (f"{changed.get('files')} files written ({changed.get('bytes')} bytes), "
                   f"{changed.get('removed')} removed after the copy phase")
    log.info("scenario e, %s: downtime %.2f s, %d volume bytes sent, delta pass %s", method,
             result.downtime_seconds or 0.0, result.wire_bytes or 0, extra.get("warm"))
    return result


def _log_downtime_steps(store: TaskStore, task_id: str, stopped_at: float | None) -> None:
    """Log each task event from the first source stop on, with seconds since that stop."""
    if stopped_at is None:
        return
    for event in store.get_events(task_id):
        if event["at"] >= stopped_at - 0.001:
            log.info("  +%.2f s %s: %s", event["at"] - stopped_at, event["kind"], event["message"])


def _run_measured(call: Any) -> ProcessUsage:
    """Run call in this process; CPU time is this process's, peak RSS its peak so far."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    busy_before = machine_busy_seconds()
    started = time.monotonic()
    call()
    after = resource.getrusage(resource.RUSAGE_SELF)
    machine_cpu = machine_cpu_since(busy_before)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    # NOTE: ru_maxrss is the benchmark process's peak since it started, not this task's alone.
    return ProcessUsage(seconds=time.monotonic() - started, cpu_seconds=cpu,
                        max_rss_bytes=after.ru_maxrss * 1024, exit_statuses=(0,),
                        machine_cpu_seconds=machine_cpu)
