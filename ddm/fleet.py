"""Fleet plans: many migrations across many host pairs, described in one YAML file.

Format (docs/fleet-plans.md has the full reference)::

    version: 1
    concurrency:
      total: 4          # items running at once, overall
      per_host: 2       # items running at once that use one host, as source or target
    defaults:           # optional values for every item
      verify: full
    items:
      - name: postgres  # optional; default item-1, item-2, ...
        from: old
        to: new
        volumes: [pgdata, "pgwal:pgwal-15"]
        verify: quick   # optional: none | quick | full
        force: false    # optional
        on_success: notify-send done   # optional callbacks, as on the command line
        on_failure: page-oncall
        notify: [https://hooks.example/ddm]

Each item becomes one task. Validation errors raise UsageError (exit status 2) with one line
naming the file and the item.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ddm.config import Config, VERIFY_MODES, short_repr
from ddm.errors import DDMError, UsageError
from ddm.task import TaskSpec

FLEET_VERSION = 1
DEFAULT_TOTAL = 4
DEFAULT_PER_HOST = 2
MAX_CONCURRENCY = 64
MAX_ITEMS = 10000
MAX_FILE_BYTES = 4 * 1024 * 1024
TOP_KEYS = {"version", "concurrency", "defaults", "items"}
CONCURRENCY_KEYS = {"total", "per_host"}
ITEM_OPTION_KEYS = {"verify", "force", "on_success", "on_failure", "notify"}
ITEM_KEYS = {"name", "from", "to", "volumes", *ITEM_OPTION_KEYS}


class FleetPlanError(UsageError):
    """The fleet plan file is missing or invalid (exit status 2)."""


@dataclass(frozen=True)
class FleetItem:
    """One item of a fleet plan: a validated task spec and its name."""

    name: str
    spec: TaskSpec

    @property
    def hosts(self) -> frozenset[str]:
        return frozenset((self.spec.source_host, self.spec.target_host))


@dataclass(frozen=True)
class FleetPlan:
    """A validated fleet plan."""

    path: Path
    items: tuple[FleetItem, ...]
    total: int = DEFAULT_TOTAL
    per_host: int = DEFAULT_PER_HOST


def load_fleet_plan(path: Path, config: Config) -> FleetPlan:
    """Read, parse and validate a fleet plan file against the configured hosts."""
    raw = _read(path)
    return fleet_plan_from_dict(raw, path, config)


def _read(path: Path) -> Any:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise FleetPlanError(f"fleet plan {path} is larger than {MAX_FILE_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FleetPlanError(f"fleet plan not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise FleetPlanError(f"cannot read fleet plan {path}: {error}") from None

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "malformed YAML"
        raise FleetPlanError(f"invalid YAML in fleet plan {path}{where}: {problem}") from None
    except (RecursionError, ValueError, TypeError, AttributeError, OverflowError):
        raise FleetPlanError(f"invalid YAML in fleet plan {path}: a value cannot be read") from None


def fleet_plan_from_dict(raw: Any, path: Path, config: Config) -> FleetPlan:
    """Validate a parsed fleet plan document and build the FleetPlan."""
    where = f"fleet plan {path}"
    if not isinstance(raw, dict):
        raise FleetPlanError(f"invalid {where}: the top level must be a mapping with 'items'")
    _reject_unknown(raw, TOP_KEYS, where)
    version = raw.get("version", FLEET_VERSION)
    if version != FLEET_VERSION or isinstance(version, bool):
        raise FleetPlanError(f"unsupported version {short_repr(version)} in {where}",
                             hint=f"this DDM reads version {FLEET_VERSION}")

    total, per_host = _concurrency(raw.get("concurrency"), where)
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise FleetPlanError(f"invalid 'defaults' in {where}: expected a mapping")
    _reject_unknown(defaults, ITEM_OPTION_KEYS, f"defaults in {where}")

    raw_items = raw.get("items")
    if not isinstance(raw_items, list) or not raw_items:
        raise FleetPlanError(f"missing 'items' in {where}: expected a non-empty list")
    if len(raw_items) > MAX_ITEMS:
        raise FleetPlanError(f"too many items in {where}: at most {MAX_ITEMS}")

    items = [_item(raw_item, index, defaults, where, config)
             for index, raw_item in enumerate(raw_items, start=1)]
    _reject_duplicate_names(items, where)
    _reject_shared_targets(items, where)
    return FleetPlan(path=path, items=tuple(items), total=total, per_host=per_host)


def _concurrency(raw: Any, where: str) -> tuple[int, int]:
    if raw is None:
        return DEFAULT_TOTAL, DEFAULT_PER_HOST
    if not isinstance(raw, dict):
        raise FleetPlanError(f"invalid 'concurrency' in {where}: expected a mapping")
    _reject_unknown(raw, CONCURRENCY_KEYS, f"concurrency in {where}")
    values = []
    for key, default in (("total", DEFAULT_TOTAL), ("per_host", DEFAULT_PER_HOST)):
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or \
                not 1 <= value <= MAX_CONCURRENCY:
            raise FleetPlanError(
                f"invalid concurrency.{key} {short_repr(value)} in {where}",
                hint=f"use a whole number from 1 to {MAX_CONCURRENCY}",
            )
        values.append(value)
    return values[0], values[1]


def _item(raw: Any, index: int, defaults: dict[str, Any], where: str,
          config: Config) -> FleetItem:
    from ddm.api import build_spec

    label = f"item {index} of {where}"
    if not isinstance(raw, dict):
        raise FleetPlanError(f"invalid {label}: expected a mapping with from, to and volumes")
    _reject_unknown(raw, ITEM_KEYS, label)
    values = {**defaults, **raw}

    name = values.get("name", f"item-{index}")
    if not isinstance(name, str) or not name or len(name) > 64 or not name.isprintable():
        raise FleetPlanError(f"invalid name {short_repr(name)} of {label}",
                             hint="use up to 64 printable characters")
    label = f"item {name!r} of {where}"
    for key in ("from", "to"):
        if not isinstance(values.get(key), str):
            raise FleetPlanError(f"missing or invalid '{key}' in {label}: expected a host name")
    volumes = values.get("volumes")
    if isinstance(volumes, str):
        volumes = [volumes]
    if not isinstance(volumes, list) or not volumes or \
            not all(isinstance(volume, str) for volume in volumes):
        raise FleetPlanError(f"missing or invalid 'volumes' in {label}",
                             hint="give a list of SRC or SRC:DST volume names")
    verify = values.get("verify", config.defaults.verify)
    if verify not in VERIFY_MODES:
        raise FleetPlanError(f"invalid verify {short_repr(verify)} in {label}",
                             hint=f"use one of: {', '.join(VERIFY_MODES)}")
    force = values.get("force", False)
    if not isinstance(force, bool):
        raise FleetPlanError(f"invalid force {short_repr(force)} in {label}: use true or false")
    notify = values.get("notify") or []
    if isinstance(notify, str):
        notify = [notify]

    try:
        spec = build_spec(
            config, source=values["from"], target=values["to"], volumes=volumes,
            verify=verify, force=force, on_success=values.get("on_success"),
            on_failure=values.get("on_failure"), notify=notify,
        )
    except DDMError as error:
        raise FleetPlanError(f"invalid {label}: {error.message}", hint=error.hint) from None
    return FleetItem(name=name, spec=spec)


def _reject_unknown(raw: dict[Any, Any], allowed: set[str], where: str) -> None:
    unknown = [key for key in raw if key not in allowed]
    if unknown:
        raise FleetPlanError(f"unknown key {short_repr(unknown[0])} in {where}",
                             hint=f"allowed keys: {', '.join(sorted(allowed))}")


def _reject_duplicate_names(items: list[FleetItem], where: str) -> None:
    seen: set[str] = set()
    for item in items:
        if item.name in seen:
            raise FleetPlanError(f"item name {item.name!r} is used twice in {where}")
        seen.add(item.name)


def _reject_shared_targets(items: list[FleetItem], where: str) -> None:
    """Reject two items that write the same volume name on the same target host."""
    owners: dict[tuple[str, str], str] = {}
    for item in items:
        for volume in item.spec.volumes:
            key = (item.spec.target_host, volume.target)
            if key in owners:
                raise FleetPlanError(
                    f"items {owners[key]!r} and {item.name!r} of {where} both write volume "
                    f"{volume.target!r} on host {item.spec.target_host!r}",
                    hint="give one of them another target name with SRC:DST",
                )
            owners[key] = item.name
