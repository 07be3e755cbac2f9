"""The directories a full-mode bind mount creates on the target, found and removed by shell.

The scripts run in this machine's sh instead of over SSH; the command line is checked as
for a remote host.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ddm import api
from ddm.config import load_config
from ddm.errors import MigrationFailed, TargetExists
from ddm.store import TaskStore, default_store_path
from ddmdriver.containers import missing_directories, path_and_parents, remove_empty_directories
from ddmdriver.ssh import CommandResult, validate_argv
from ddmsyncer.containers import FullTaskRunner

pytestmark = pytest.mark.usefixtures("no_network")


class LocalEngine:
    """The part of an ssh:// Engine that the directory functions use, run on this machine."""

    def __init__(self) -> None:
        self.host = SimpleNamespace(name="h9")
        self.ssh = object()
        self.commands: list[list[str]] = []

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def exec_command(self, argv: list[str]) -> CommandResult:
        validate_argv(argv)
        self.commands.append(list(argv))
        done = subprocess.run(argv, capture_output=True, check=False)
        return CommandResult(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def runner(configured: dict[str, str]) -> Iterator[FullTaskRunner]:
    """Return the runner of a stored full-mode task whose hosts are this machine."""
    config = load_config(None, configured)
    store = TaskStore(default_store_path(configured))
    task = api.create_full_task(store, config, source="a", target="b", containers=["web"])
    engine = LocalEngine()
    try:
        yield FullTaskRunner(config, store, task.id, engine_factory=lambda host, config: engine)
    finally:
        store.close()


def created(runner: FullTaskRunner, kind: str) -> list[str]:
    return (runner.extra().get("created") or {}).get(kind) or []


@pytest.mark.parametrize(("path", "expected"), [
    ("/data/shop/site", ["/data", "/data/shop", "/data/shop/site"]),
    ("//data//shop/./site/", ["/data", "/data/shop", "/data/shop/site"]),
    ("/data/old/../shop", ["/data", "/data/shop"]),
    ("/", []),
])
def test_path_and_parents_normalizes(path: str, expected: list[str]) -> None:
    assert path_and_parents(path) == expected


def test_missing_directories_below_existing(tmp_path: Path) -> None:
    (tmp_path / "existing").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    engine = LocalEngine()

    below_directory = missing_directories(engine, f"{tmp_path}/existing/new/site")
    below_link = missing_directories(engine, f"{tmp_path}/link/site")
    present = missing_directories(engine, f"{tmp_path}/existing")

    assert below_directory == [f"{tmp_path}/existing/new", f"{tmp_path}/existing/new/site"]
    # A dangling symbolic link exists as an entry, so only what lies below it is missing.
    assert below_link == [f"{tmp_path}/link/site"]
    assert present == []
    assert len(engine.commands) == 3


def test_missing_directories_without_commands() -> None:
    engine: Any = SimpleNamespace(ssh=None, host=SimpleNamespace(name="local"))

    assert missing_directories(engine, "/data/site") is None


def test_remove_empty_directories_keeps_full(tmp_path: Path) -> None:
    (tmp_path / "made" / "inner").mkdir(parents=True)
    (tmp_path / "kept" / "inner").mkdir(parents=True)
    (tmp_path / "kept" / "file.txt").write_text("not the task's\n")
    engine = LocalEngine()
    innermost_first = [f"{tmp_path}/made/inner", f"{tmp_path}/made", f"{tmp_path}/kept/inner",
                       f"{tmp_path}/kept", f"{tmp_path}/already-gone"]

    with pytest.raises(MigrationFailed, match="kept") as raised:
        remove_empty_directories(engine, innermost_first)

    assert "removing empty directories on h9 failed" in str(raised.value)
    assert not (tmp_path / "made").exists()
    assert not (tmp_path / "kept" / "inner").exists()
    assert (tmp_path / "kept" / "file.txt").read_text() == "not the task's\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["kept"]


def test_remove_empty_directories_all_gone(tmp_path: Path) -> None:
    engine = LocalEngine()

    remove_empty_directories(engine, [f"{tmp_path}/never-made/inner", f"{tmp_path}/never-made"])

    assert list(tmp_path.iterdir()) == []
    assert len(engine.commands) == 1


def test_bind_records_missing_parents(runner: FullTaskRunner, tmp_path: Path) -> None:
    (tmp_path / "existing").mkdir()
    target = f"{tmp_path}/existing/new/deeper/site"

    runner._remember_bind_directories("/srv/site", target)

    assert created(runner, "parent_directories") == [f"{tmp_path}/existing/new",
                                                     f"{tmp_path}/existing/new/deeper"]
    assert created(runner, "directories") == [target]


def test_bind_rejects_directory_made_since_prepare(runner: FullTaskRunner,
                                                   tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()

    with pytest.raises(TargetExists, match="already exists on host 'b'"):
        runner._remember_bind_directories("/srv/site", f"{tmp_path}/site")

    assert created(runner, "directories") == []
    assert created(runner, "parent_directories") == []


def test_bind_inside_task_directory_accepted(runner: FullTaskRunner, tmp_path: Path) -> None:
    # The second bind mount's directory lies inside the first one's, whose copy made it.
    runner._remember_bind_directories("/srv/site", f"{tmp_path}/site")
    (tmp_path / "site" / "uploads").mkdir(parents=True)

    runner._remember_bind_directories("/srv/site/uploads", f"{tmp_path}/site/uploads")

    assert created(runner, "directories") == [f"{tmp_path}/site"]
    assert created(runner, "parent_directories") == []


def test_bind_in_task_parent_becomes_directory(runner: FullTaskRunner, tmp_path: Path) -> None:
    # The first bind mount made its parent, which is the second bind mount's directory.
    runner._remember_bind_directories("/srv/uploads", f"{tmp_path}/site/uploads")
    (tmp_path / "site" / "uploads").mkdir(parents=True)

    runner._remember_bind_directories("/srv/site", f"{tmp_path}/site")

    assert created(runner, "parent_directories") == [f"{tmp_path}/site"]
    assert created(runner, "directories") == [f"{tmp_path}/site/uploads", f"{tmp_path}/site"]
