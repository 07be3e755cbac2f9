"""Full-mode `ddmctl plan`, `plan --json` and `migrate --dry-run` on the lab hosts h1 and h2.

The plan document is checked against the tables of docs/json-schemas.md (every key listed
there present, with the documented type), and both engines are snapshotted through docker-py
before and after to prove that planning changes nothing.
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ddm.config import load_config
from ddmdriver.engine import open_engine
from tests.integration.operator_support import ddmctl, ddmsyncer
from tests.integration.test_full_mode import build_image
from tests.lab import Lab, LabHost
from tests.lab.tree import RandomFile, write_volume_tree

SCHEMA_DOC = Path(__file__).resolve().parents[2] / "docs" / "json-schemas.md"
BIND_ROOT = Path("/var/tmp/ddm-full-plan-tests")
KINDS = ("image", "network", "volume", "bind_mount", "container")


@dataclass
class App:
    """One running container on h1 with an image, a named volume, a bind mount and a network."""

    container: str
    image: str
    volume: str
    network: str
    bind_source: Path
    bind_target: Path

    def plan_args(self) -> list[str]:
        return ["--from", "h1", "--to", "h2", "--mode", "full", "--container", self.container,
                "--map-path", f"{self.bind_source}={self.bind_target}"]


@pytest.fixture
def app(lab: Lab, isolated_env: Any) -> Iterator[App]:
    h1 = lab.host("h1")
    token = uuid.uuid4().hex[:8]
    root = BIND_ROOT / token
    item = App(container=f"ddmplan{token}", image=f"ddmtest/plan-{token}:1.0",
               volume=f"ddmplan{token}_data", network=f"ddmplan{token}_net",
               bind_source=root / "site", bind_target=root / "site-moved")
    try:
        build_image(h1, item.image)
        h1.docker("network", "create", "--subnet", f"10.232.{int(token[:2], 16) % 200 + 20}.0/24",
                  item.network)
        h1.docker("volume", "create", item.volume)
        write_volume_tree(h1, item.volume, {"data.bin": RandomFile(256 * 1024, seed=5)})
        item.bind_source.mkdir(parents=True)
        (item.bind_source / "page.html").write_bytes(b"x" * 8192)
        h1.docker("run", "-d", "--name", item.container, "--network", item.network,
                  "-v", f"{item.volume}:/data", "-v", f"{item.bind_source}:/site:ro",
                  "--stop-timeout", "1", item.image, "sleep", "3600")
        yield item
    finally:
        for host in (h1, lab.host("h2")):
            host.docker("rm", "-f", "--volumes", item.container, check=False)
            host.docker("volume", "rm", "-f", item.volume, check=False)
            host.docker("network", "rm", item.network, check=False)
            host.docker("image", "rm", "-f", item.image, check=False)
        shutil.rmtree(root, ignore_errors=True)


def engine_snapshot(host_name: str) -> dict[str, Any]:
    """Return the engine's containers (with state), images, volumes and networks via docker-py."""
    config = load_config()
    with open_engine(config.host(host_name), config) as engine:
        api = engine.api
        containers = {}
        for entry in api.containers(all=True):
            state = dict(api.inspect_container(entry["Id"])["State"])
            state.pop("Health", None)  # the health log grows while the engine runs checks
            containers[entry["Id"]] = (tuple(entry["Names"]), entry["ImageID"], state)
        return {
            "containers": containers,
            "images": {image["Id"]: sorted(image.get("RepoTags") or [])
                       for image in api.images(all=True)},
            "volumes": {volume["Name"]: (volume["Driver"], volume.get("Labels"),
                                         volume.get("Options"))
                        for volume in api.volumes().get("Volumes") or []},
            "networks": {network["Id"]: (network["Name"], network["Driver"])
                         for network in api.networks()},
        }


def both_snapshots() -> dict[str, Any]:
    return {name: engine_snapshot(name) for name in ("h1", "h2")}


# The schema description in docs/json-schemas.md.

def doc_tables() -> list[list[list[str]]]:
    """Return the markdown tables of the plan section, each a list of rows of cells."""
    text = SCHEMA_DOC.read_text()
    section = text[text.index("## Plan:"):text.index("## Host check:")]
    tables: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in section.splitlines():
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not set("".join(cells)) <= set("- "):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    return tables


def table_keys(table: list[list[str]]) -> list[tuple[list[str], list[str]]]:
    """Return (keys, other cells) for each row; a key cell may list several `keys`."""
    header, *rows = table
    return [(re.findall(r"`([^`]+)`", row[0]), row[1:]) for row in rows]


def type_matches(value: Any, description: str) -> bool:
    """Check a JSON value against a documented type such as 'integer or null'."""
    for alternative in description.split(" or "):
        alternative = alternative.strip()
        if alternative == "null" and value is None:
            return True
        if alternative == "string" and isinstance(value, str):
            return True
        if alternative == "boolean" and isinstance(value, bool):
            return True
        if alternative == "integer" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if alternative == "number" and isinstance(value, (int, float)) \
                and not isinstance(value, bool):
            return True
        if alternative == "object" and isinstance(value, dict):
            return True
        if alternative.startswith("array of") and isinstance(value, list):
            element = alternative.removeprefix("array of ").rstrip("s")
            return all(type_matches(item, element) for item in value)
    return False


def lookup(document: dict[str, Any], dotted: str) -> Any:
    value: Any = document
    for part in dotted.split("."):
        assert isinstance(value, dict), f"{dotted}: {part} is not inside an object"
        assert part in value, f"missing key {dotted}"
        value = value[part]
    return value


def kind_applies(kinds_cell: str, kind: str, mode: str, action: str | None = None) -> bool:
    for token in (part.strip() for part in kinds_cell.split(",")):
        name, _, qualifier = token.partition(" (")
        if name not in ("all", kind):
            continue
        if qualifier.startswith("full mode") and mode != "full":
            continue
        if qualifier.startswith("volumes mode") and mode != "volumes":
            continue
        # A qualifier such as "action `incremental` or `already_migrated`" limits the key
        # to objects with one of the named actions.
        if qualifier.startswith("action") and action not in re.findall(r"`([^`]+)`", qualifier):
            continue
        return True
    return False


def schema_errors(plan: dict[str, Any]) -> list[str]:
    """Return every difference between a plan document and the documented tables."""
    top, objects, _data_paths, conflicts, steps, estimate = doc_tables()
    errors = []

    def check(container: dict[str, Any], keys: list[str], type_cell: str, where: str) -> None:
        for key in keys:
            try:
                value = lookup(container, key)
            except AssertionError as error:
                errors.append(f"{where}: {error}")
                continue
            if not type_matches(value, type_cell):
                errors.append(f"{where}: {key} is {value!r}, documented as {type_cell}")

    for keys, (type_cell, _meaning) in table_keys(top):
        check(plan, keys, type_cell, "plan")
    for entry in plan.get("objects") or []:
        for keys, (kinds_cell, type_cell, _meaning) in table_keys(objects):
            if kind_applies(kinds_cell, entry.get("kind", ""), plan["mode"],
                             entry.get("action")):
                check(entry, keys, type_cell, f"object {entry.get('kind')} {entry.get('source')}")
    for entry in plan.get("conflicts") or []:
        for keys, (type_cell, _meaning) in table_keys(conflicts):
            check(entry, keys, type_cell, "conflict")
    for entry in plan.get("steps") or []:
        for keys, (type_cell, _meaning) in table_keys(steps):
            check(entry, keys, type_cell, f"step {entry.get('order')}")
    for keys, (type_cell, _meaning) in table_keys(estimate):
        check(plan["estimate"], keys, type_cell, "estimate")
    return errors


def test_schema_check_finds_errors() -> None:
    assert type_matches(3, "integer or null")
    assert not type_matches(True, "integer")
    assert type_matches(["a"], "array of strings")
    assert not type_matches([1], "array of strings")
    assert schema_errors({"mode": "full", "estimate": {}})  # an empty document fails


# Lab tests.

def test_full_plan_json_matches_schema(lab: Lab, app: App) -> None:
    before = both_snapshots()

    outcome = ddmctl("plan", *app.plan_args(), "--probe-size", "1", "--json")

    assert outcome.status == 0, outcome.stderr
    plan = outcome.json()
    assert schema_errors(plan) == []
    assert plan["mode"] == "full"
    assert plan["ok"] is True
    assert plan["conflicts"] == []

    by_kind = {kind: [entry for entry in plan["objects"] if entry["kind"] == kind]
               for kind in KINDS}
    assert [entry["kind"] for entry in plan["objects"]] == \
        [kind for kind in KINDS for _ in by_kind[kind]]
    image, = by_kind["image"]
    assert image["source"] == app.image
    assert image["action"] == "send"
    assert image["data_path"] == "image-archive"
    assert image["size_bytes"] > 0
    assert image["bytes_to_send"] == image["size_bytes"]
    network, = by_kind["network"]
    assert network["source"] == app.network
    assert network["action"] == "create"
    # The image declares VOLUME /anon, so the container also has an anonymous volume.
    volume, anonymous = sorted(by_kind["volume"], key=lambda entry: entry["anonymous"])
    assert volume["source"] == app.volume
    assert anonymous["anonymous"] is True
    assert volume["size_bytes"] >= 256 * 1024
    assert volume["during_cutover"] is True  # its container runs, so it moves after the stop
    assert volume["data_path"] == "engine-api"
    assert "content" in volume["preserves"]
    assert "content" in volume["verified"]
    bind, = by_kind["bind_mount"]
    assert (bind["source"], bind["target"]) == (str(app.bind_source), str(app.bind_target))
    assert bind["size_bytes"] >= 8192
    container, = by_kind["container"]
    assert container["source"] == app.container
    assert container["image"] == app.image
    assert container["running"] is True
    assert "writable_layer" in container["preserves"]

    phases = [step["phase"] for step in plan["steps"]]
    assert phases == sorted(phases, key=["prepare", "copy", "migrate", "verify",
                                         "cleanup"].index)
    stop = next(step for step in plan["steps"] if step["action"].startswith("stop the source"))
    copy = next(step for step in plan["steps"]
                if step["kind"] == "volume" and step["phase"] == "migrate")
    assert stop["order"] < copy["order"]
    assert plan["estimate"]["seconds"] > 0
    assert plan["estimate"]["downtime_seconds"] > 0
    assert plan["estimate"]["bytes_total"] >= image["size_bytes"] + 256 * 1024
    # The container runs with --stop-timeout 1, and docker stop may wait that long.
    assert container["stop_timeout_seconds"] == 1
    assert plan["estimate"]["stop_timeout_seconds"] == 1
    assert plan["estimate"]["downtime_seconds"] == pytest.approx(
        plan["estimate"]["downtime_copy_seconds"] + 1)

    assert both_snapshots() == before


def test_full_dry_run_and_text_plan(lab: Lab, app: App) -> None:
    before = both_snapshots()

    planned = ddmctl("plan", *app.plan_args(), "--probe-size", "0", "--json")
    dry_run = ddmctl("migrate", *app.plan_args(), "--dry-run", "--json")
    text = ddmctl("plan", *app.plan_args(), "--probe-size", "0")

    assert planned.status == 0, planned.stderr
    assert dry_run.status == 0, dry_run.stderr
    measured = ("link", "estimate", "engines")
    assert {key: value for key, value in planned.json().items() if key not in measured} == \
        {key: value for key, value in dry_run.json().items() if key not in measured}
    assert text.status == 0, text.stderr
    assert f"image {app.image} -> {app.image}:" in text.stdout
    assert f"container {app.container} -> {app.container}:" in text.stdout
    assert f"bind_mount {app.bind_source} -> {app.bind_target}:" in text.stdout
    assert f"network {app.network} -> {app.network}:" in text.stdout
    assert "estimate: no estimate" in text.stdout
    assert both_snapshots() == before


def test_full_plan_text_names_stop_wait(lab: Lab, app: App) -> None:
    text = ddmctl("plan", *app.plan_args(), "--probe-size", "1")

    assert text.status == 0, text.stderr
    estimate = next(line for line in text.stdout.splitlines() if line.startswith("estimate:"))
    assert "up to 1.0 s of it waiting for the source containers to stop" in estimate
    assert "StopTimeout" in estimate


def test_full_plan_lists_conflicts(lab: Lab, app: App) -> None:
    h2: LabHost = lab.host("h2")
    h2.docker("volume", "create", app.volume)
    before = both_snapshots()

    outcome = ddmctl("plan", *app.plan_args(), "--probe-size", "0", "--json")

    assert outcome.status == 1, outcome.stderr
    plan = outcome.json()
    assert schema_errors(plan) == []
    assert plan["ok"] is False
    assert [(c["kind"], c["object"], c["error"]) for c in plan["conflicts"]] == \
        [("volume", app.volume, "TargetExists")]
    volume = next(entry for entry in plan["objects"]
                  if entry["kind"] == "volume" and entry["source"] == app.volume)
    assert volume["action"] == "none"
    assert both_snapshots() == before


def test_full_plan_lists_locked_volume(lab: Lab, app: App) -> None:
    from tests.integration.operator_support import hold_lock

    holder = "d" * 12
    hold_lock(f"h1/volume/{app.volume}", holder)

    outcome = ddmctl("plan", *app.plan_args(), "--probe-size", "0", "--json")

    assert outcome.status == 1, outcome.stderr
    plan = outcome.json()
    assert schema_errors(plan) == []
    assert [(c["kind"], c["object"], c["error"]) for c in plan["conflicts"]] == \
        [("volume", app.volume, "TaskConflict")]
    assert plan["conflicts"][0]["message"].startswith(
        f"h1/volume/{app.volume} is held by task {holder}, which is running")


def test_full_migrate_takes_engine_locks(lab: Lab, app: App) -> None:
    from tests.integration.operator_support import hold_engine_lock

    holder = "f" * 12
    engine_id = hold_engine_lock(lab.host("h2"), app.volume, holder)
    before = both_snapshots()
    conflict_line = (f"volume {app.volume!r} on Docker engine {engine_id} (also reached under "
                     f"another host name) is held by task {holder}, which is running")

    planned = ddmctl("plan", *app.plan_args(), "--probe-size", "0", "--json")
    outcome = ddmctl("migrate", *app.plan_args(), "--yes")

    assert planned.status == 1, planned.stderr
    assert [(c["kind"], c["object"]) for c in planned.json()["conflicts"]] == \
        [("volume", app.volume)]
    assert planned.json()["conflicts"][0]["message"].startswith(conflict_line)
    assert outcome.status == 6, outcome.stderr
    assert conflict_line in outcome.stderr
    assert both_snapshots() == before


def test_create_full_task_is_queued(lab: Lab, app: App) -> None:
    before = both_snapshots()

    outcome = ddmctl("create", *app.plan_args(), "--json")

    assert outcome.status == 0, outcome.stderr
    task = outcome.json()
    assert task["state"] == "queued"
    assert task["mode"] == "full"
    assert task["spec"]["options"]["containers"] == [app.container]
    assert task["spec"]["options"]["map_path"] == {str(app.bind_source): str(app.bind_target)}
    assert both_snapshots() == before


def test_created_full_task_runs_in_serve(lab: Lab, app: App) -> None:
    h2: LabHost = lab.host("h2")
    created = ddmctl("create", *app.plan_args())
    assert created.status == 0, created.stderr
    task_id = created.stdout.strip()

    served = ddmsyncer("serve", "--once", "--poll-interval", "0.2")

    assert served.status == 0, served.stderr
    status = ddmctl("status", task_id, "--json")
    task = status.json()
    assert task["state"] == "succeeded", task["error"]
    assert h2.docker("inspect", "-f", "{{.State.Running}}", app.container).stdout.strip() == "true"
    transfers = {(entry["kind"], entry["name"]): entry for entry in task["full"]["transfers"]}
    image = transfers[("image", app.image)]
    assert image["state"] == "sent"
    assert image["bytes_done"] > 0
    assert transfers[("volume", app.volume)]["bytes_done"] >= 256 * 1024
    assert transfers[("bind_mount", str(app.bind_source))]["target"] == str(app.bind_target)
    assert task["downtime_seconds"] > 0

    text = ddmctl("status", task_id)
    assert f"image     {app.image}  sent" in text.stdout
    assert ddmctl("rollback", task_id).status == 0
