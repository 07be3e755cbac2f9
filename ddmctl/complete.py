"""Shell completion of host names and task IDs, for click's `shell_complete` callbacks.

Completion runs at every Tab, so these functions read only what exists: a configuration that
cannot be loaded or a missing task database gives no candidates, never an error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import click
from click.shell_completion import CompletionItem

from ddm.config import load_config
from ddm.env import Environment
from ddm.errors import DDMError
from ddm.store import TaskStore, default_store_path

MAX_TASK_CANDIDATES = 50


def _environ(ctx: click.Context) -> Mapping[str, str]:
    root = ctx.find_root()
    if isinstance(root.obj, Environment):
        return root.obj.environ
    return dict(os.environ)


def _config_path(ctx: click.Context) -> Path | None:
    value = ctx.find_root().params.get("config_path")
    return Path(value) if value else None


def complete_host(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Return the configured host names that start with `incomplete`."""
    try:
        config = load_config(_config_path(ctx), _environ(ctx))
    except DDMError:
        return []
    return [CompletionItem(name, help=config.hosts[name].url)
            for name in sorted(config.hosts) if name.startswith(incomplete)]


def complete_task(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Return the IDs of stored tasks, newest first, that start with `incomplete`."""
    path = default_store_path(_environ(ctx))
    if not path.is_file():
        return []
    try:
        store = TaskStore(path)
    except DDMError:
        return []

    try:
        tasks = store.list_tasks(limit=MAX_TASK_CANDIDATES)
    finally:
        store.close()
    return [CompletionItem(task.id, help=f"{task.state.value} {task.spec.source_host}->"
                                         f"{task.spec.target_host}")
            for task in tasks if task.id.startswith(incomplete)]
