"""Full-mode migration of a two-container compose-style project between lab hosts h1 and h2.

The lab hosts share this machine's file system outside /var/lib/docker, /run and /etc/docker,
so a bind-mounted directory on h1 is the same directory on h2. The tests therefore copy bind
mounts to a new path with --map-path; the same path is refused as a conflict.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ddm import api
from ddm.config import load_config
from ddm.container_config import compare_projections, projection
from ddm.errors import MigrationFailed
from ddm.task import TaskState
from ddmctl.cli import cli
from ddmctl.common import run_main
from ddmdriver.engine import open_engine
from ddmdriver.containers import tcp_port_open
from tests.lab import Lab, LabHost
from tests.lab.image import BUSYBOX_IMAGE
from tests.lab.tree import _TREEOPS_SCRIPT, diff_snapshots, snapshot_volume_tree, _snapshot_entry

BIND_ROOT = Path("/var/tmp/ddm-full-mode-tests")
WEB_PORT = 18080
# The engine's archives carry whole-second mtimes.
TAR_MTIME_RESOLUTION_NS = 1_000_000_000
HEALTH_COMMAND = "wget -q -O /dev/null http://127.0.0.1:8080/ || exit 1"
WEB_COMMAND = "echo web starting; echo web warning >&2; exec httpd -f -p 8080"


@dataclass
class Project:
    """A compose-style project on h1 and everything the test created for it."""

    name: str
    image: str
    network: str
    subnet: str
    volume: str
    bind_source: Path
    bind_target: Path
    web: str
    db: str
    hosts: list[LabHost] = field(default_factory=list)

    @property
    def containers(self) -> list[str]:
        return [self.db, self.web]


def docker_json(host: LabHost, *args: str) -> Any:
    return json.loads(host.docker(*args).stdout)


def host_state(host: LabHost) -> dict[str, set[str]]:
    """Return the names of every container, volume and network, and every image ID and tag."""
    images = docker_json(host, "image", "inspect",
                         *host.docker("image", "ls", "-aq").stdout.split()) or []
    return {
        "containers": set(host.docker("ps", "-a", "--format", "{{.Names}}").stdout.split()),
        "volumes": set(host.docker("volume", "ls", "-q").stdout.split()),
        "networks": set(host.docker("network", "ls", "--format", "{{.Name}}").stdout.split()),
        "images": {image["Id"] for image in images},
        "tags": {tag for image in images for tag in image.get("RepoTags") or []},
    }


def is_running(host: LabHost, name: str) -> bool:
    return host.docker("inspect", "-f", "{{.State.Running}}", name).stdout.strip() == "true"


def snapshot_path(host: LabHost, path: Path) -> dict[bytes, Any]:
    output = host.run([sys.executable, "-I", str(_TREEOPS_SCRIPT), "snapshot", str(path)]).stdout
    return {bytes.fromhex(item["path"]): _snapshot_entry(item) for item in json.loads(output)}


def build_image(host: LabHost, tag: str) -> None:
    """Build the app image with `docker commit`: /www with two files, env, volume, label."""
    builder = f"ddmtest-build-{uuid.uuid4().hex[:8]}"
    host.docker("run", "--name", builder, "--network", "none", BUSYBOX_IMAGE, "sh", "-c",
                "mkdir -p /www /opt && echo hello > /www/index.html && echo old > /www/removed.txt")
    try:
        host.docker("commit",
                    "--change", "ENV IMAGE_ENV=from-image",
                    "--change", "VOLUME /anon",
                    "--change", "WORKDIR /www",
                    "--change", "EXPOSE 8080",
                    "--change", "LABEL image.label=from-image",
                    "--change", 'CMD ["httpd", "-f", "-p", "8080"]',
                    builder, tag)
    finally:
        host.docker("rm", "-f", builder)


def remove_everywhere(lab: Lab, project: Project) -> None:
    for host in (lab.host("h1"), lab.host("h2")):
        for name in project.containers:
            host.docker("rm", "-f", "--volumes", name, check=False)
        host.docker("volume", "rm", "-f", project.volume, check=False)
        for volume in host.docker("volume", "ls", "-q").stdout.split():
            if volume.startswith("ddm-logs-"):
                host.docker("volume", "rm", "-f", volume, check=False)
        host.docker("network", "rm", project.network, check=False)
        host.docker("image", "rm", "-f", project.image, check=False)
    host = lab.host("h1")
    host.docker("volume", "prune", "-f", check=False)
    lab.host("h2").docker("volume", "prune", "-f", check=False)
    shutil.rmtree(project.bind_source.parent, ignore_errors=True)


@pytest.fixture
def project(lab: Lab, isolated_env: Any) -> Iterator[Project]:
    """Start the project on h1: web (httpd, port, volumes, bind mount, health) and db."""
    h1 = lab.host("h1")
    token = uuid.uuid4().hex[:8]
    name = f"ddmp{token}"
    root = BIND_ROOT / token
    octet = int(token[:2], 16) % 200 + 20
    item = Project(
        name=name, image=f"ddmtest/app-{token}:1.0", network=f"{name}_default",
        subnet=f"10.231.{octet}.0/24", volume=f"{name}_data", bind_source=root / "site",
        bind_target=root / "site-moved", web=f"{name}-web-1", db=f"{name}-db-1",
    )
    project_label = f"com.docker.compose.project={name}"
    try:
        build_image(h1, item.image)
        h1.docker("network", "create", "--subnet", item.subnet, "--label", project_label,
                  "--label", "com.docker.compose.network=default", item.network)
        h1.docker("volume", "create", "--label", project_label, item.volume)
        item.bind_source.mkdir(parents=True)
        (item.bind_source / "page.html").write_text("from the bind mount\n")
        (item.bind_source / "nested").mkdir()
        (item.bind_source / "nested" / "data.bin").write_bytes(bytes(range(256)) * 64)

        h1.docker("run", "-d", "--name", item.db, "--network", item.network,
                  "--network-alias", "db", "--label", project_label,
                  "--label", "com.docker.compose.service=db", "--stop-timeout", "1",
                  "-e", "DB_MODE=primary", item.image, "sh", "-c",
                  "echo db ready; exec sleep 3600")
        h1.docker("run", "-d", "--name", item.web, "--network", item.network,
                  "--network-alias", "web", "-p", f"127.0.0.1:{WEB_PORT}:8080",
                  "-v", f"{item.volume}:/data", "-v", f"{item.bind_source}:/site:ro",
                  "-e", "APP_MODE=prod", "--label", project_label,
                  "--label", "com.docker.compose.service=web",
                  "--label", "com.docker.compose.depends_on=db:service_started:false",
                  "--label", "app.tier=front", "--restart", "unless-stopped",
                  "--health-cmd", HEALTH_COMMAND, "--health-interval", "1s",
                  "--stop-timeout", "1", "--hostname", "webhost", item.image,
                  "sh", "-c", WEB_COMMAND)
        h1.docker("exec", item.web, "sh", "-c",
                  "echo added > /www/added.txt && rm /www/removed.txt && mkdir /opt/newdir && "
                  "echo inner > /opt/newdir/inner.txt && echo data > /data/volume.txt && "
                  "echo anonymous > /anon/anon.txt")
        yield item
    finally:
        remove_everywhere(lab, item)


def migrate(*args: str) -> int:
    return run_main(cli, ["migrate", "--from", "h1", "--to", "h2", "--yes", *args], prog_name="ddmctl")


def only_task_id() -> str:
    tasks = api.open_store().list_tasks(limit=1)
    return tasks[0].id


def run_failing_task(project: Project, match: str) -> tuple[Any, Any, Any]:
    """Create the project's full-mode task, run it to its injected MigrationFailed; return config, store, task."""
    config, store = load_config(), api.open_store()
    task = api.create_full_task(store, config, source="h1", target="h2",
                                project=project.name,
                                map_path=[f"{project.bind_source}={project.bind_target}"])
    with pytest.raises(MigrationFailed, match=match):
        api.run_task(config, store, task.id)
    return config, store, task


def test_project_migrates_and_rolls_back(lab: Lab, project: Project,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    h1, h2 = lab.host("h1"), lab.host("h2")
    h2_before = host_state(h2)
    source_inspect = {name: docker_json(h1, "inspect", name)[0] for name in project.containers}
    source_changes = {name: sorted(h1.docker("container", "diff", name).stdout.splitlines())
                      for name in project.containers}
    anonymous = [m["Name"] for m in source_inspect[project.web]["Mounts"]
                 if m["Type"] == "volume" and m["Destination"] == "/anon"][0]

    status = migrate("--mode", "full", "--project", project.name, "--map-path",
                     f"{project.bind_source}={project.bind_target}", "--json")
    captured = capsys.readouterr()
    assert status == 0, captured.err
    task_id = only_task_id()
    extra = api.open_store().get_extra(task_id)

    # The image was missing on h2, so its bytes were sent.
    assert extra["image_bytes_sent"] > 0

    # Target containers run, the port accepts connections on h2 itself, the source is stopped.
    for name in project.containers:
        assert is_running(h2, name)
        assert not is_running(h1, name)
    config = load_config()
    with open_engine(config.host("h2"), config) as engine:
        assert tcp_port_open(engine, "127.0.0.1", WEB_PORT)
    page = h2.run(["busybox", "wget", "-q", "-O", "-", f"http://127.0.0.1:{WEB_PORT}/"]).stdout
    assert page == "hello\n"

    # The normalised inspect projection matches field by field.
    mapping = {str(project.bind_source): str(project.bind_target)}
    for name in project.containers:
        target_inspect = docker_json(h2, "inspect", name)[0]
        differences = compare_projections(projection(source_inspect[name]),
                                          projection(target_inspect), mapping)
        assert differences == []
        assert target_inspect["Config"]["Image"] == project.image
        assert target_inspect["Image"] == source_inspect[name]["Image"]

    # The writable layer: the added files exist, the deleted file is gone.
    listing = h2.docker("exec", project.web, "ls", "/www", "/opt/newdir").stdout.split()
    assert "added.txt" in listing
    assert "inner.txt" in listing
    assert "removed.txt" not in listing
    for name in project.containers:
        target_changes = sorted(h2.docker("container", "diff", name).stdout.splitlines())
        assert target_changes == source_changes[name]

    # Volumes (named and anonymous) and the bind mount match.
    for volume in (project.volume, anonymous):
        assert diff_snapshots(snapshot_volume_tree(h1, volume), snapshot_volume_tree(h2, volume),
                              mtime_resolution_ns=TAR_MTIME_RESOLUTION_NS) == []
    assert diff_snapshots(snapshot_path(h1, project.bind_source),
                          snapshot_path(h2, project.bind_target),
                          mtime_resolution_ns=TAR_MTIME_RESOLUTION_NS) == []

    # `ddmctl status --json` lists the containers of the task.
    assert run_main(cli, ["status", task_id, "--json"], prog_name="ddmctl") == 0
    status_data = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in status_data["full"]["plan"]["containers"]] == project.containers

    # The logs are archived and shown by `ddmctl logs`.
    status = run_main(cli, ["logs", task_id, "--container", project.web], prog_name="ddmctl")
    log_text = capsys.readouterr().out
    assert status == 0
    assert " stdout web starting" in log_text
    assert " stderr web warning" in log_text

    # Rollback: what the task created on h2 is gone, the source runs again.
    status = run_main(cli, ["rollback", task_id], prog_name="ddmctl")
    assert status == 0, capsys.readouterr().err
    assert host_state(h2) == h2_before
    assert not project.bind_target.exists()
    for name in project.containers:
        assert is_running(h1, name)


def test_conflicting_name_refused(lab: Lab, project: Project,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    h1, h2 = lab.host("h1"), lab.host("h2")
    h2.docker("create", "--name", project.web, BUSYBOX_IMAGE, "true")
    h1_before, h2_before = host_state(h1), host_state(h2)

    status = migrate("--mode", "full", "--project", project.name, "--map-path",
                     f"{project.bind_source}={project.bind_target}", "--dry-run", "--json")
    plan = json.loads(capsys.readouterr().out)
    assert status == 1

    def sources(kind: str) -> list[str]:
        return [entry["source"] for entry in plan["objects"] if entry["kind"] == kind]

    assert sources("container") == [project.db, project.web]
    assert sources("network") == [project.network]
    assert [entry["present_on_target"] for entry in plan["objects"]
            if entry["kind"] == "image"] == [False]
    assert len(sources("volume")) == 3
    assert plan["conflicts"] == [{
        "kind": "container", "object": project.web, "error": "TargetExists",
        "message": f"container name {project.web!r} is taken on host 'h2'",
    }]
    assert host_state(h2) == h2_before

    status = migrate("--mode", "full", "--project", project.name, "--map-path",
                     f"{project.bind_source}={project.bind_target}")
    error = capsys.readouterr().err
    assert status == 1
    assert f"container name {project.web!r} is taken" in error
    assert host_state(h2) == h2_before
    assert host_state(h1) == h1_before
    for name in project.containers:
        assert is_running(h1, name)


def test_taken_image_tag_names_remedy(lab: Lab, project: Project,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    h2 = lab.host("h2")
    h2.docker("tag", BUSYBOX_IMAGE, project.image)

    status = migrate("--mode", "full", "--project", project.name, "--map-path",
                     f"{project.bind_source}={project.bind_target}", "--dry-run", "--json")
    plan = json.loads(capsys.readouterr().out)

    assert status == 1
    [conflict] = [entry for entry in plan["conflicts"] if entry["kind"] == "image"]
    assert conflict["object"] == project.image
    assert f"remove that tag on 'h2' ('docker image rm {project.image}')" in conflict["message"]


def test_present_image_not_sent(lab: Lab, project: Project,
                                capsys: pytest.CaptureFixture[str]) -> None:
    h1, h2 = lab.host("h1"), lab.host("h2")
    saved = h1.run(["docker", "save", project.image], text=False).stdout
    h2.run(["docker", "load", "-q"], input=saved, text=False)
    image_id = docker_json(h1, "image", "inspect", project.image)[0]["Id"]
    assert docker_json(h2, "image", "inspect", project.image)[0]["Id"] == image_id

    status = migrate("--mode", "full", "--container", project.db)
    captured = capsys.readouterr()
    assert status == 0, captured.err
    extra = api.open_store().get_extra(only_task_id())
    assert extra["image_bytes_sent"] == 0
    # stdout has a line per transfer: the image was present, so only the image's anonymous
    # volume was sent.
    rows = [line.split("\t") for line in captured.out.splitlines()]
    assert [(kind, state) for kind, _, _, state, _ in rows] == [("volume", "sent")]
    assert is_running(h2, project.db)

    # Rollback keeps the image that was on h2 before the task.
    assert run_main(cli, ["rollback", only_task_id()], prog_name="ddmctl") == 0
    assert docker_json(h2, "image", "inspect", project.image)[0]["Id"] == image_id
    assert is_running(h1, project.db)


def test_failure_after_create_rolls_back(lab: Lab, project: Project,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    h1, h2 = lab.host("h1"), lab.host("h2")
    h2_before = host_state(h2)
    from ddmsyncer import containers as full

    original = full.driver.container_start

    def fail_on_target(engine: Any, name: str) -> None:
        if engine.host.name == "h2":
            raise MigrationFailed(f"injected failure starting {name}")
        original(engine, name)

    monkeypatch.setattr(full.driver, "container_start", fail_on_target)
    _, store, task = run_failing_task(project, "injected failure")

    assert store.get_task(task.id).state.value == "failed"
    assert host_state(h2) == h2_before
    assert not project.bind_target.exists()
    for name in project.containers:
        assert is_running(h1, name)


def test_failure_removes_created_parents(lab: Lab, project: Project,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # The target engine creates every missing parent of a bind mount's directory. A rollback
    # removes those and keeps the parents that existed before, even an empty one.
    h2 = lab.host("h2")
    h2_before = host_state(h2)
    existing = project.bind_source.parent / "existing-empty"
    existing.mkdir()
    bind_target = existing / "new" / "deeper" / "site-moved"
    from ddmsyncer import containers as full

    original = full.driver.container_start
    copied: list[bool] = []

    def fail_on_target(engine: Any, name: str) -> None:
        if engine.host.name == "h2":
            copied.append((bind_target / "page.html").is_file())
            raise MigrationFailed(f"injected failure starting {name}")
        original(engine, name)

    monkeypatch.setattr(full.driver, "container_start", fail_on_target)
    config, store = load_config(), api.open_store()
    task = api.create_full_task(store, config, source="h1", target="h2", project=project.name,
                                map_path=[f"{project.bind_source}={bind_target}"])
    with pytest.raises(MigrationFailed, match="injected failure"):
        api.run_task(config, store, task.id)

    assert copied == [True]
    assert store.get_task(task.id).state is TaskState.FAILED
    assert host_state(h2) == h2_before
    assert not (existing / "new").exists()
    assert existing.is_dir()
    assert list(existing.iterdir()) == []
    warnings = [event["message"] for event in store.get_events(task.id)
                if event["level"] == "warning"]
    assert not [message for message in warnings if "director" in message]


def test_finalize_removes_source(lab: Lab, project: Project,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    h1, h2 = lab.host("h1"), lab.host("h2")
    status = migrate("--mode", "full", "--container", project.db)
    assert status == 0, capsys.readouterr().err
    task_id = only_task_id()
    assert not is_running(h1, project.db)

    assert run_main(cli, ["finalize", task_id], prog_name="ddmctl") == 0
    assert project.db not in host_state(h1)["containers"]
    assert is_running(h2, project.db)
    capsys.readouterr()
    assert run_main(cli, ["status", task_id], prog_name="ddmctl") == 0
    assert ("finalized source containers removed from h1; the task can no longer be rolled back"
            in capsys.readouterr().out.splitlines())

    # A finalized task cannot be rolled back: its source containers are gone.
    assert run_main(cli, ["rollback", task_id], prog_name="ddmctl") == 6
    assert api.open_store().get_task(task_id).state.value == "succeeded"
    assert is_running(h2, project.db)


def test_finalize_rejected_keeps_rollback(lab: Lab, project: Project,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    h1, h2 = lab.host("h1"), lab.host("h2")
    status = migrate("--mode", "full", "--container", project.db)
    assert status == 0, capsys.readouterr().err
    task_id = only_task_id()
    h1.docker("start", project.db)
    capsys.readouterr()

    assert run_main(cli, ["finalize", task_id], prog_name="ddmctl") == 1
    finalize_error = capsys.readouterr().err
    assert is_running(h1, project.db)

    # The rejected finalize removed nothing, so the rollback the error suggests still runs.
    h1.docker("stop", project.db)
    assert run_main(cli, ["rollback", task_id], prog_name="ddmctl") == 0
    assert api.open_store().get_task(task_id).state.value == "rolled_back"
    assert project.db not in host_state(h2)["containers"]
    assert is_running(h1, project.db)
    assert "runs again on h1; nothing was removed" in finalize_error


def test_finalize_keeps_recreated_container(lab: Lab, project: Project,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    h1 = lab.host("h1")
    status = migrate("--mode", "full", "--container", project.db)
    assert status == 0, capsys.readouterr().err
    task_id = only_task_id()
    h1.docker("rm", project.db)
    new_id = h1.docker("create", "--name", project.db, BUSYBOX_IMAGE, "true").stdout.strip()

    assert run_main(cli, ["finalize", task_id], prog_name="ddmctl") == 0
    assert docker_json(h1, "inspect", project.db)[0]["Id"] == new_id


def test_remove_source_option(lab: Lab, project: Project,
                              capsys: pytest.CaptureFixture[str]) -> None:
    h1, h2 = lab.host("h1"), lab.host("h2")
    status = migrate("--mode", "full", "--container", project.db, "--remove-source")
    assert status == 0, capsys.readouterr().err
    assert project.db not in host_state(h1)["containers"]
    assert is_running(h2, project.db)
    assert is_running(h1, project.web)


def test_target_down_at_prepare_fails(lab: Lab, project: Project,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    h1, h2 = lab.host("h1"), lab.host("h2")
    h2.stop_relay()
    try:
        status = migrate("--mode", "full", "--container", project.db)
    finally:
        h2.start_relay()
    task = api.open_store().get_task(only_task_id())

    # Nothing was created on h2, so there is nothing to undo there: the task failed.
    assert status == 3, capsys.readouterr().err
    assert task.state.value == "failed"
    assert "h2" in task.error["message"]
    assert is_running(h1, project.db)


def test_resume_after_killed_copy_removes_helpers(lab: Lab, project: Project,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # A run killed during a volume's copy leaves the created volume and DDM's helper
    # containers that mount it. The first run below stops there without a rollback, as a
    # killed one does; the resumed run must undo it before it copies again.
    h1, h2 = lab.host("h1"), lab.host("h2")
    from ddmdriver import relay
    from ddmsyncer import containers as full

    def killed_relay(*args: Any, **options: Any) -> Any:
        raise MigrationFailed("injected end of the killed run")

    monkeypatch.setattr(relay, "relay_archive", killed_relay)
    monkeypatch.setattr(full.FullTaskRunner, "rollback", lambda self, every_host=False: None)
    config, store, task = run_failing_task(project, "injected end")
    helpers = h2.docker("ps", "-aq", "--filter", f"label=ddm.task={task.id}").stdout.split()
    assert helpers, "the killed run left no helper container on h2"
    store.update_task(task.id, state=TaskState.INTERRUPTED)
    monkeypatch.undo()

    resumed = api.resume_task(config, store, task.id)

    assert resumed.state is TaskState.SUCCEEDED
    assert is_running(h2, project.web)
    assert h2.docker("exec", project.web, "cat", "/data/volume.txt").stdout == "data\n"
    assert h2.docker("ps", "-aq", "--filter", f"label=ddm.task={task.id}").stdout.split() == []


def test_volume_copy_warns_of_lost_aspects(lab: Lab, project: Project,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    # Full mode copies volumes through the Engine API, which drops every xattr but
    # security.capability. The operator must read that before the copy, not find it later.
    h1, h2 = lab.host("h1"), lab.host("h2")
    source_file = Path(h1.volume_host_path(project.volume)) / "volume.txt"
    os.setxattr(source_file, "user.comment", b"dropped by the Engine API")

    status = migrate("--mode", "full", "--project", project.name, "--map-path",
                     f"{project.bind_source}={project.bind_target}")
    error = capsys.readouterr().err
    assert status == 0, error

    warnings = [line for line in error.splitlines()
                if f"volume {project.volume!r} is copied through the Engine API" in line]
    assert len(warnings) == 1, error
    for aspect in ("sub-second mtimes", "xattrs other than security.capability", "POSIX ACLs",
                   "sparseness"):
        assert aspect in warnings[0]

    # The warning is true: the target file has the content but not the xattr.
    target_file = Path(h2.volume_host_path(project.volume)) / "volume.txt"
    assert target_file.read_text() == "data\n"
    assert "user.comment" not in os.listxattr(target_file)
    assert os.getxattr(source_file, "user.comment") == b"dropped by the Engine API"

    # The warning comes before the volume's transfer starts.
    events = api.open_store().get_events(only_task_id())
    warning_ids = [event["id"] for event in events if event["level"] == "warning"
                   and f"volume {project.volume!r} is copied" in event["message"]]
    transfer_ids = [event["id"] for event in events if event["kind"] == "transfer_started"
                    and (event["data"] or {}).get("object") == project.volume]
    assert len(warning_ids) == 1
    assert len(transfer_ids) == 1
    assert warning_ids[0] < transfer_ids[0]


def test_resume_warns_of_lost_aspects_once(lab: Lab, project: Project,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # The first run stops during its first volume copy, as a killed one does. The resumed
    # run copies every volume again, but warns only of the volumes not warned of before.
    from ddmdriver import relay
    from ddmsyncer import containers as full

    def killed_relay(*args: Any, **options: Any) -> Any:
        raise MigrationFailed("injected end of the killed run")

    monkeypatch.setattr(relay, "relay_archive", killed_relay)
    monkeypatch.setattr(full.FullTaskRunner, "rollback", lambda self, every_host=False: None)
    config, store, task = run_failing_task(project, "injected end")
    store.update_task(task.id, state=TaskState.INTERRUPTED)
    monkeypatch.undo()
    warned_first = [event["message"] for event in store.get_events(task.id)
                    if event["level"] == "warning" and "is copied through the Engine API"
                    in event["message"]]
    emitted: list[str] = []

    resumed = api.resume_task(config, store, task.id,
                              on_event=lambda event: emitted.append(getattr(event, "message", "")))

    assert resumed.state is TaskState.SUCCEEDED
    assert len(warned_first) == 1
    volumes = [volume["name"] for volume in store.get_extra(task.id)["plan"]["volumes"]]
    assert len(volumes) == 3
    warnings = [event["message"] for event in store.get_events(task.id)
                if event["level"] == "warning"]
    for name in volumes:
        about_volume = [message for message in warnings
                        if message.startswith(f"volume {name!r} is copied through the Engine API")]
        assert len(about_volume) == 1, name
    assert warned_first[0] not in emitted
    warned_again = [message for message in emitted if "is copied through the Engine API" in message]
    assert len(warned_again) == 2
