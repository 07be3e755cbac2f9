"""Engine API requests of the prepare phase on the lab: each fact is requested once per host."""

from __future__ import annotations

import re
import threading
from collections import Counter

from ddmdriver.transport import RemoteAPIClient
from ddmsyncer.runner import TaskRunner
from tests.integration.test_migrate_volumes import run_command


def record_prepare_requests(monkeypatch) -> dict[int, Counter]:
    """Count the requests of each API client (one per host) while TaskRunner.prepare runs."""
    counts: dict[int, Counter] = {}
    lock = threading.Lock()
    recording = threading.Event()
    send = RemoteAPIClient.send
    prepare = TaskRunner.prepare

    def counting_send(self, request, **kwargs):
        if recording.is_set():
            # The API version prefix (/v1.41) depends on the lab's engine, so it is dropped.
            path = re.sub(r"^/v[0-9.]+/", "/", request.path_url.split("?")[0])
            with lock:
                counts.setdefault(id(self), Counter())[f"{request.method} {path}"] += 1
        return send(self, request, **kwargs)

    def recorded_prepare(self):
        recording.set()
        try:
            return prepare(self)
        finally:
            recording.clear()

    monkeypatch.setattr(RemoteAPIClient, "send", counting_send)
    monkeypatch.setattr(TaskRunner, "prepare", recorded_prepare)
    return counts


def test_prepare_requests_each_fact_once(h1, h2, isolated_env, resources, monkeypatch):
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    counts = record_prepare_requests(monkeypatch)

    outcome = run_command("ddmctl", "migrate", "--from", "h1", "--to", "h2", "--volume", volume,
                          "--yes")

    assert outcome.status == 0, outcome.stderr
    assert len(counts) == 2, counts
    for host_counts in counts.values():
        assert host_counts["GET /version"] == 1, host_counts
        assert host_counts["GET /_ping"] == 1, host_counts
        assert host_counts["GET /info"] == 1, host_counts
    source_counts = [c for c in counts.values() if c["GET /system/df"]]
    assert len(source_counts) == 1, counts
    assert source_counts[0][f"GET /volumes/{volume}"] == 1, source_counts[0]
