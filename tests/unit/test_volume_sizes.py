"""Prepare's volume sizes: one disk usage report per host, none for incremental updates."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from ddm.api import create_task
from ddm.config import load_config
from ddm.store import TaskStore, default_store_path
from ddmsyncer import volumes
from ddmsyncer.runner import TaskRunner


class FakeEngine:
    """One host whose source volumes exist and whose target names are free."""

    def __init__(self, name: str, sizes: dict[str, int]) -> None:
        self.host = SimpleNamespace(name=name)
        self.sizes = sizes
        self.df_requests = 0
        self.api = SimpleNamespace(df=self._df)

    def _df(self) -> dict[str, Any]:
        self.df_requests += 1
        return {"Volumes": [{"Name": name, "UsageData": {"Size": size}}
                            for name, size in self.sizes.items()]}

    def volume_inspect(self, name: str) -> Any:
        if name not in self.sizes:
            return None
        return SimpleNamespace(name=name, driver="local", options={}, labels={})


def item(source: str, target: str) -> Any:
    return SimpleNamespace(source=source, target=target, target_created=False)


def test_volume_sizes_one_report_per_host() -> None:
    source = FakeEngine("h1", {"va": 100, "vb": 200})
    sizes = volumes.VolumeSizes()

    target = FakeEngine("h2", {})
    first = volumes.check_volume(source, target, item("va", "x"), force=False, sizes=sizes)
    second = volumes.check_volume(source, target, item("vb", "y"), force=False, sizes=sizes)

    assert first.size_bytes == 100
    assert second.size_bytes == 200
    assert source.df_requests == 1


def test_volume_sizes_unknown_without_report() -> None:
    source = FakeEngine("h1", {"va": 100})

    def failing_df() -> dict[str, Any]:
        raise RuntimeError("engine down")

    source.api.df = failing_df

    assert volumes.VolumeSizes().size(source, "va") is None


def test_check_volume_without_measure_sends_no_report() -> None:
    source = FakeEngine("h1", {"va": 100})

    check = volumes.check_volume(source, FakeEngine("h2", {}), item("va", "x"), force=False,
                                 measure=False)

    assert check.size_bytes is None
    assert source.df_requests == 0


def test_runner_measures_full_copies_only(environ: dict[str, str]) -> None:
    config = load_config(None, environ)
    store = TaskStore(default_store_path(environ))
    task = create_task(store, config, source="local", target="local", volumes=("va:vb", "vc:vd"),
                       verify="full", force=False)
    runner = TaskRunner(config, store, task.id)
    engine = FakeEngine("local", {"va": 100, "vc": 300})
    runner._engines["local"] = engine
    runner._incremental = {1: "0123456789ab"}

    full_copy = runner._check_volume(runner.task.items[0])
    update = runner._check_volume(runner.task.items[1])
    runner._engines.clear()
    store.close()

    assert full_copy.size_bytes == 100
    assert update.size_bytes is None
    assert engine.df_requests == 1
