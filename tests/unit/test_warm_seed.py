"""How a warm cutover's delta pass scans a volume after the digests of the pre-copy are stored."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from ddmsyncer import incremental, warm
from ddmsyncer.scanentry import Entry


@dataclass
class FakeTask:
    id: str = "task1"


@dataclass
class FakeStore:
    """A task store with the extra state in a dict, merged as TaskStore.set_extra merges it."""

    extra: dict[str, Any] = field(default_factory=dict)

    def set_extra(self, task_id: str, **values: Any) -> None:
        self.extra.update(values)


@dataclass
class FakeRunner:
    store: FakeStore = field(default_factory=FakeStore)
    task: FakeTask = field(default_factory=FakeTask)
    source: Any = None
    target: Any = None

    def extra(self) -> dict[str, Any]:
        return self.store.extra


def make_scan(count: int) -> incremental.Scan:
    scan = incremental.Scan()
    for index in range(count):
        path = f"f{index}".encode()
        scan[path] = Entry(path, "file", 0o644, 0, 0, 1, 0, None, 0, index, 1, "d", 1, 0, None)
    return scan


def seeded_runner(monkeypatch: pytest.MonkeyPatch, sizes: dict[str, int]) -> FakeRunner:
    """Run seed_digests for volumes whose scans have `sizes` entries on each host."""
    runner = FakeRunner()
    for name in sizes:
        runner.store.extra.setdefault("warm", {})[name] = {
            "precopy_started_at": 1_700_000_000.0, "source_mountpoint": f"/s/{name}",
            "target_mountpoint": f"/t/{name}"}

    def fake_scan_both(source: Any, source_mountpoint: str, *args: Any,
                       **kwargs: Any) -> tuple[incremental.Scan, incremental.Scan, int]:
        assert kwargs["hash_mode"] == "cached"
        count = sizes[source_mountpoint.rsplit("/", 1)[1]]
        return make_scan(count), make_scan(count), 0

    monkeypatch.setattr(incremental, "scan_both", fake_scan_both)
    monkeypatch.setattr(warm, "HashCache", lambda store: None)
    for name in sizes:
        warm.seed_digests(runner, name, precopy_finished=0.0)  # long past: no wait
    return runner


def test_seeded_volume_rescans(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = seeded_runner(monkeypatch, {"data": 3})

    assert warm._delta_hash_mode(runner, "data") == "rescan"
    assert runner.extra()["warm"]["data"]["seeded"] is True
    assert runner.extra()["warm"]["data"]["seed_hashed_files"] == {"source": 0, "target": 0}


def test_seed_over_limit_scans_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(warm, "SEED_SCANS_MAX_ENTRIES", 10)
    runner = seeded_runner(monkeypatch, {"small": 2, "large": 4})

    # 2 + 2 entries are kept; 4 + 4 more would pass the limit of 10.
    assert warm._delta_hash_mode(runner, "small") == "rescan"
    assert warm._delta_hash_mode(runner, "large") == "cached"
    assert set(runner._warm_seed_scans) == {"small"}


def test_other_process_scans_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = seeded_runner(monkeypatch, {"data": 3})
    resumed = FakeRunner(store=runner.store)

    assert warm._delta_hash_mode(resumed, "data") == "cached"


def test_unseeded_volume_uses_mtime_test() -> None:
    runner = FakeRunner()
    runner.store.extra["warm"] = {"data": {"precopy_started_at": 1_700_000_000.5}}

    mode = warm._delta_hash_mode(runner, "data")

    assert mode == f"newer:{(1_700_000_000 - warm.PRECOPY_MTIME_MARGIN_SECONDS) * 10**9}"
