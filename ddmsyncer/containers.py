"""Full-mode tasks: move whole containers with their images, data, layers, logs and networks.

Phases: prepare (build the plan, reject any conflict) -> copy (images, networks, volumes
of containers that are not running) -> migrate (stop the source containers, final data pass,
compare every volume and bind mount with its source, then create and start the target
containers) -> verify (running and healthy, ports accept connections on the target host,
inspect projections and writable layers match) -> cleanup (helper containers).

Every object is recorded in the task's extra state under "created" before it is created, so
a rollback, also after a crash, removes exactly what the task created on the target. The
source containers are only stopped, never changed; rollback starts those that were running.

Writable layer: added and changed files are copied with GET archive from the stopped source
container and PUT archive into the created, not yet started target container, so the target
runs its original image reference (Config.Image and the image ID stay as on the source). A
`docker commit` would carry deletions too, but it bakes the container's merged config into a
new image and changes the image ID. Deletions are instead written as overlay2 whiteouts
(character devices 0:0) into the target container's upper directory over SSH; prepare
rejects deletions on other storage drivers.
"""

from __future__ import annotations

import io
import logging
import tarfile
import time
from typing import Any

from ddm.container_config import (
    compare_projections,
    create_body,
    extra_networks,
    get_path,
    projection,
)
from ddm.errors import DDMError, MigrationFailed, TargetExists, TaskConflict, VerificationFailed
from ddm.events import ItemFinished, ItemStarted, Progress
from ddm.manifest import Manifest, ManifestBuilder
from ddm.task import TaskItem, TaskState, VerifyMode
from ddmdriver import containers as driver
from ddmdriver import imagelayers
from ddmdriver import images as image_driver
from ddmdriver.engine import HELPER_IMAGE, HELPER_MOUNT
from ddmsyncer import datapath, rerun, undo, volumes, warm
from ddmsyncer.datapath import DataPath
from ddmsyncer.fullplan import FullPlan, build_full_plan
from ddmsyncer.runner import PROGRESS_EVENT_SECONDS, PROGRESS_STORE_SECONDS, TaskRunner

log = logging.getLogger(__name__)

LOGS_VOLUME_PREFIX = "ddm-logs-"
DEFAULT_VERIFY_TIMEOUT_SECONDS = 60.0
STATE_POLL_SECONDS = 0.5
# "directories" are bind-mount destinations, removed with their content. "parent_directories"
# are the directories above them that the engine created, removed only while empty.
CREATED_KINDS = ("containers", "volumes", "networks", "tags", "images", "directories",
                 "parent_directories")
# Key of the task's extra state that lists each image, volume and bind-mount transfer.
TRANSFERS_KEY = "transfers"


def logs_volume_name(task_id: str) -> str:
    """Return the target volume that keeps the source containers' logs of a task."""
    return f"{LOGS_VOLUME_PREFIX}{task_id}"


class FullTaskRunner(TaskRunner):
    """Runs a full-mode task; the volumes-mode phases of TaskRunner are not used."""

    plan: FullPlan

    def lock_names(self) -> list[str]:
        spec = self.task.spec
        names = [f"{spec.source_host}/container/{name}"
                 for name in spec.options.get("containers") or []]
        if spec.options.get("project"):
            names.append(f"{spec.source_host}/project/{spec.options['project']}")
        return sorted(names)

    def plan_lock_names(self, volume_names: list[str], container_names: list[str]) -> list[str]:
        """Return the locks of a full plan: each volume on both hosts and each source container."""
        spec = self.task.spec
        return sorted(
            {f"{host}/volume/{name}" for name in volume_names
             for host in (spec.source_host, spec.target_host)}
            | {f"{spec.source_host}/container/{name}" for name in container_names}
        )

    def engine_plan_lock_names(self, volume_names: list[str],
                               container_names: list[str]) -> list[str]:
        """Return plan_lock_names() by Docker engine ID (see volumes.engine_lock_names)."""
        spec = self.task.spec
        engine_ids = {spec.source_host: volumes.engine_id(self.source),
                      spec.target_host: volumes.engine_id(self.target)}
        return volumes.engine_lock_names(self.plan_lock_names(volume_names, container_names),
                                         engine_ids)

    def rollback_lock_names(self) -> list[str]:
        """Return the locks the task held when it ran, those on the target host first.

        They are those of lock_names() and of the plan that prepare stored (a task that
        stopped before it has none), because the rollback also starts the source containers.
        """
        plan = self.extra().get("plan") or {}
        planned = self.plan_lock_names(
            [volume["name"] for volume in plan.get("volumes") or []],
            [container["name"] for container in plan.get("containers") or []])
        target_prefix = f"{self.task.spec.target_host}/"
        return sorted(set(self.lock_names()) | set(planned),
                      key=lambda name: (not name.startswith(target_prefix), name))

    # Task state

    def extra(self) -> dict[str, Any]:
        return self.store.get_extra(self.task.id)

    def remember_created(self, kind: str, value: Any) -> None:
        """Record an object as created by this task, before creating it."""
        created = self.extra().get("created") or {key: [] for key in CREATED_KINDS}
        created.setdefault(kind, []).append(value)
        self.store.set_extra(self.task.id, created=created)

    def _update_created_container(self, name: str, container_id: str) -> None:
        created = self.extra()["created"]
        created["containers"] = [
            {"name": name, "id": container_id} if entry["name"] == name else entry
            for entry in created["containers"]
        ]
        self.store.set_extra(self.task.id, created=created)

    def add_sent_bytes(self, kind: str, count: int) -> None:
        key = f"{kind}_bytes_sent"
        self.store.set_extra(self.task.id, **{key: int(self.extra().get(key) or 0) + count})

    # Phases

    def _run_phases(self) -> None:
        from ddm.task import Phase

        if any(self.extra().get("created", {}).values()):
            self.record("info", "restart", "undoing the earlier, interrupted run first")
            # No host is connected yet, and the earlier run's helper containers still mount
            # the volumes it created, so its helpers are removed on both hosts first.
            self.rollback_objects(every_host=True)

        self._manifests_by_name: dict[str, Manifest] = {}
        self._warm_updates: dict[str, Any] = {}
        self._positions = 0
        with self.phase(Phase.PREPARE):
            if self._already_migrated():
                return
            self.prepare_full()
        with self.phase(Phase.COPY):
            self.copy_full()
        with self.phase(Phase.MIGRATE):
            self.migrate_full()
        with self.phase(Phase.VERIFY):
            self.verify_full()
        with self.phase(Phase.CLEANUP):
            self.cleanup_full()

    def prepare_full(self) -> None:
        self.source.ping()
        self.target.ping()
        self.plan = build_full_plan(self.source, self.target, self.task.spec)
        self.store.set_extra(
            self.task.id, plan=self.plan.to_dict(),
            source_containers=[container.name for container in self.plan.containers],
            source_running=[c.name for c in self.plan.containers if c.running],
            source_container_ids={c.name: c.id for c in self.plan.containers},
            created={key: [] for key in CREATED_KINDS}, image_bytes_sent=0, images={},
            transfers=[],
            volume_bytes_sent=0, source_stopped_at=None, downtime_seconds=None, warm={},
        )
        self._remember_helper_images()
        volume_names = [volume.name for volume in self.plan.volumes]
        container_names = [container.name for container in self.plan.containers]
        self.store.acquire_locks(self.task.id,
                                 self.plan_lock_names(volume_names, container_names)
                                 + self.engine_plan_lock_names(volume_names, container_names))
        if self.plan.conflicts:
            count = len(self.plan.conflicts)
            raise TargetExists(
                f"{count} conflict{'s' if count > 1 else ''} on host "
                f"{self.task.spec.target_host!r}: "
                + "; ".join(self.plan.conflict_messages()),
                hint="resolve them (see 'ddmctl migrate --dry-run') and run the migration again",
            )
        self.record("info", "planned", f"{len(self.plan.containers)} containers, "
                    f"{len(self.plan.images)} images, {len(self.plan.volumes)} volumes, "
                    f"{len(self.plan.binds)} bind mounts, {len(self.plan.networks)} networks")

    def _already_migrated(self) -> bool:
        """Finish a re-run of a succeeded migration without sending anything; see ddmsyncer.rerun."""
        self.source.ping()
        self.target.ping()
        record = rerun.find_finished_full(self)
        if record is None:
            return False

        names = [entry["name"] for entry in record["target_containers"]]
        self.store.set_extra(
            self.task.id, **{rerun.EXTRA_KEY: record},
            created={key: [] for key in CREATED_KINDS}, image_bytes_sent=0, images={},
            volume_bytes_sent=0, layer_bytes_sent=0, downtime_seconds=None,
        )
        self.record("info", "already_migrated",
                    f"containers {', '.join(names)} already run on {self.task.spec.target_host}, "
                    f"migrated by task {record['task']}; nothing sent",
                    earlier_task=record["task"])
        return True

    def _remember_helper_images(self) -> None:
        """Record on which hosts this task will import DDM's helper image, so rollback removes it."""
        hosts = [engine.host.name for engine in (self.source, self.target)
                 if image_driver.image_inspect(engine, HELPER_IMAGE) is None]
        self.store.set_extra(self.task.id, helper_image_hosts=hosts)

    def copy_full(self) -> None:
        for image in self.plan.images:
            self.check_control(force=True)
            self._copy_image(image)
        for network in self.plan.networks:
            if not network.exists_on_target:
                self.remember_created("networks", network.name)
                driver.network_create(self.target, network.name, network.inspect)
        for volume in self.plan.volumes:
            self.remember_created("volumes", volume.name)
            self.target.volume_create(volume.name, driver=volume.driver,
                                      driver_opts=volume.options, labels=volume.labels)
            if volume.remote:
                self.warn_once(f"volume {volume.name!r} uses driver {volume.driver} or a remote "
                               "file system; it was recreated with its options, not copied")
        for volume in self._volumes_to_copy(running=False):
            self._copy_volume(volume.name)
        if warm.is_warm(self):
            self._precopy_running()

    def _precopy_running(self) -> None:
        if not warm.supports_warm(self):
            self.warn("--warm needs ssh:// hosts for its host-side scans; the volumes of "
                      "running containers are copied after the stop")
            return
        warm.precopy(self, [volume.name for volume in self._volumes_to_copy(running=True)])

    def migrate_full(self) -> None:
        if warm.is_warm(self):
            warm.start_delta_commands(self, [volume.name for volume in
                                             self._volumes_to_copy(running=True)])
        try:
            self._stop_and_move()
        finally:
            warm.close_delta_commands(self)

    def _stop_and_move(self) -> None:
        for container in reversed(self.plan.containers):
            if container.running:
                self.check_control(force=True)
                warm.mark_source_stopped(self)
                driver.container_stop(self.source, container.name)
                self.record("info", "stopped", f"stopped source container {container.name!r}")

        precopied = warm.precopied(self)
        for volume in self._volumes_to_copy(running=True):
            if volume.name in precopied:
                warm.copy_delta(self, volume.name)
            else:
                self._copy_volume(volume.name)
        for bind in self.plan.binds:
            self._copy_bind(bind.source_path, bind.target_path)
        self._verify_data()

        for container in self.plan.containers:
            self.check_control(force=True)
            self._create_container(container)
        for container in self.plan.containers:
            driver.container_start(self.target, container.name)
            self.record("info", "started", f"started container {container.name!r} on "
                        f"{self.task.spec.target_host}")

    def verify_full(self) -> None:
        timeout = float(self.task.spec.options.get("verify_timeout")
                        or DEFAULT_VERIFY_TIMEOUT_SECONDS)
        inspects = {}
        for container in self.plan.containers:
            inspects[container.name] = self._wait_running(container.name, timeout)
            self._check_ports(container.name, inspects[container.name])
        warm.record_downtime(self)
        # The stopped source containers' logs no longer change, so they are archived after
        # the downtime instead of during it.
        self._archive_logs()

        for container in self.plan.containers:
            inspect = inspects[container.name]
            self._check_projection(container, inspect)
            self._check_layer(container)
        self.record("info", "verified", "containers, ports, configuration and writable layers "
                    "verified")

    def _verify_data(self) -> None:
        """Compare every copied volume and bind mount with its source, before any start.

        It runs in the migrate phase, after the final data pass and before the target
        containers are created: once they run, their applications write to the volumes
        (a pid file, a log, a database's journal), and the target no longer contains what the
        source held when it stopped. A difference fails the task while the source containers
        can still be started again unchanged.
        """
        if self.task.spec.verify is VerifyMode.NONE:
            self.warn("volume data was not verified (--verify none)")
            return

        hash_content = self.task.spec.verify is VerifyMode.FULL
        for name, manifest in self._manifests_by_name.items():
            target_manifest = self._read_target_manifest(name, hash_content)
            item = TaskItem(task_id=self.task.id, position=0, source=name, target=name)
            volumes.verify_volume(manifest, target_manifest, item, self.task.spec.verify)
        warm.verify_deltas(self)
        self.record("info", "data_verified", "volumes and bind mounts match their source, "
                    "before the target containers start")

    def cleanup_full(self) -> None:
        self.cleanup()
        warm.discard_backups(self)
        if self.task.spec.options.get("remove_source"):
            remove_source_containers(self, [container.name for container in self.plan.containers])

    # Copy steps

    def _copy_image(self, image: Any) -> None:
        target = self.target
        if image.present_on_target:
            for tag in image.missing_tags:
                self.remember_created("tags", tag)
                image_driver.image_tag(target, image.id, tag)
            self._record_image(image, 0)
            self.record("info", "image", f"image {image.id[:19]} already on "
                        f"{self.task.spec.target_host}; not sent")
            return

        self.remember_created("images", image.id)
        names = image.tags or [image.id]
        progress = TransferProgress(self, "image", names[0], image.size_bytes or None)
        layer_filter = self._layer_filter(image.id)
        read = image_driver.relay_image(self.source, target, names, on_chunk=progress.add,
                                        transform=layer_filter.filter)
        sent = layer_filter.sent_bytes
        progress.finish(read, sent_bytes=sent)
        self._target_chains.update(layer_filter.chains)
        self.add_sent_bytes("image", sent)
        self._record_image(image, sent, read_bytes=read,
                           skipped_layers=len(layer_filter.skipped_layers))
        skipped = (f", {len(layer_filter.skipped_layers)} layers the target has left out"
                   if layer_filter.skipped_layers else "")
        self.record("info", "image", f"sent image {image.id[:19]} ({', '.join(names)}): "
                    f"{sent} bytes{skipped}")

    def _layer_filter(self, image_id: str) -> imagelayers.LayerFilter:
        """Return a filter that leaves out the image's layers that the target already has."""
        if not hasattr(self, "_target_chains"):
            try:
                self._target_chains = imagelayers.target_chain_ids(self.target)
            except DDMError as error:
                self.warn(f"could not list the images of {self.task.spec.target_host}; "
                          f"sending whole images: {error}")
                self._target_chains = set()
        inspect = image_driver.image_inspect(self.source, image_id) or {}
        diff_ids = (inspect.get("RootFS") or {}).get("Layers") or []
        return imagelayers.LayerFilter(imagelayers.chain_ids(diff_ids), self._target_chains)

    def _record_image(self, image: Any, sent: int, *, read_bytes: int = 0,
                      skipped_layers: int = 0) -> None:
        """Store the bytes sent for one image under "images" in the task's extra state."""
        images = self.extra().get("images") or {}
        images[image.id] = {"tags": list(image.tags), "bytes_sent": sent,
                            "bytes_read": read_bytes, "layers_left_out": skipped_layers,
                            "present_on_target": bool(image.present_on_target)}
        self.store.set_extra(self.task.id, images=images)

    def _volumes_to_copy(self, *, running: bool) -> list[Any]:
        """Return the volumes to copy now: those of running containers only after the stop."""
        running_names = {c.name for c in self.plan.containers if c.running}
        selected = []
        for volume in self.plan.volumes:
            if volume.remote:
                continue
            used_by_running = bool(running_names & set(volume.containers))
            if used_by_running == running:
                selected.append(volume)
        return selected

    def _copy_volume(self, name: str) -> None:
        volume = next(volume for volume in self.plan.volumes if volume.name == name)
        self.warn_once(f"volume {name!r} is copied through the Engine API (full mode has no "
                       f"host data path); it loses {', '.join(datapath.loses(DataPath.ENGINE))}")
        item = TaskItem(task_id=self.task.id, position=0, source=name, target=name)
        progress = TransferProgress(self, "volume", name, volume.size_bytes)
        manifest, byte_count, _ = volumes.copy_volume(
            self.source, self.target, item, task_id=self.task.id,
            hash_content=self.task.spec.verify is VerifyMode.FULL, on_chunk=progress.add,
        )
        progress.finish(byte_count)
        self._manifests_by_name[name] = manifest
        self.add_sent_bytes("volume", byte_count)
        volumes.remove_task_helpers(self.source, self.task.id)
        volumes.remove_task_helpers(self.target, self.task.id)

    def _copy_bind(self, source_path: str, target_path: str) -> None:
        from ddmdriver.relay import relay_archive

        labels = {volumes.TASK_LABEL: self.task.id}
        self._remember_bind_directories(source_path, target_path)
        source_helper = driver.create_bind_helper(self.source, source_path, read_only=True,
                                                  labels=labels)
        target_helper = driver.create_bind_helper(self.target, target_path, read_only=False,
                                                  labels=labels)
        builder = ManifestBuilder(hash_content=self.task.spec.verify is VerifyMode.FULL,
                                  strip_prefix=volumes.ARCHIVE_PREFIX)
        bind = next(bind for bind in self.plan.binds if bind.source_path == source_path)
        progress = TransferProgress(self, "bind_mount", source_path, bind.size_bytes,
                                    target=target_path)
        result = relay_archive(self.source, source_helper, HELPER_MOUNT, self.target,
                               target_helper, "/",
                               observers=[builder.feed, lambda chunk: progress.add(len(chunk))])
        progress.finish(result.bytes)
        self._manifests_by_name[f"bind:{target_path}"] = builder.close()
        self.add_sent_bytes("volume", result.bytes)
        volumes.remove_task_helpers(self.source, self.task.id)
        volumes.remove_task_helpers(self.target, self.task.id)
        self.record("info", "bind", f"copied directory {source_path} to {target_path}: "
                    f"{result.bytes} bytes")

    def _remember_bind_directories(self, source_path: str, target_path: str) -> None:
        """Record the bind-mount directory and each missing parent that the engine creates.

        The target engine creates them when it unpacks into the helper container that
        bind-mounts `target_path`. Only directories missing now are recorded, so a rollback
        never removes one that existed before the task.
        """
        missing = driver.missing_directories(self.target, target_path)
        if missing is None:
            # NOTE: a host that runs no commands cannot tell which directories exist, and
            # its rollback cannot remove directories either (it warns).
            self.remember_created("directories", target_path)
            return

        path = (driver.path_and_parents(target_path) or ["/"])[-1]
        if path not in missing:
            self._check_own_directory(source_path, path)
            return
        for parent in missing[:-1]:
            self.remember_created("parent_directories", parent)
        self.remember_created("directories", target_path)

    def _check_own_directory(self, source_path: str, path: str) -> None:
        """Accept an existing bind-mount directory only when this task created it.

        That happens when one bind mount's directory lies inside another's. Any other
        directory appeared after prepare checked that it was missing, and raises TargetExists.
        """
        created = self.extra().get("created") or {}
        if path in (created.get("parent_directories") or []):
            # The task created it as a parent of another bind mount, so it may now hold files.
            self.remember_created("directories", path)
            return
        copied = [(driver.path_and_parents(directory) or ["/"])[-1]
                  for directory in created.get("directories") or []]
        if path in copied or _below_any(path, copied):
            return
        raise TargetExists(f"bind mount directory {path!r} already exists on host "
                           f"{self.task.spec.target_host!r}, though it was missing at prepare",
                           hint=f"pass --map-path {source_path}=NEW_PATH, or remove the "
                           "directory, and run the migration again")

    def _archive_logs(self) -> None:
        """Write each source container's log into the task's logs volume on the target."""
        name = logs_volume_name(self.task.id)
        self.remember_created("volumes", name)
        self.target.volume_create(name, labels={"ddm.task": self.task.id, "ddm.logs": "1"})
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for container in self.plan.containers:
                data = driver.container_logs(self.source, container.name)
                member = tarfile.TarInfo(f"{container.name}.log")
                member.size = len(data)
                member.mtime = int(time.time())
                member.mode = 0o644
                tar.addfile(member, io.BytesIO(data))
        helper = self.target.create_helper(name, read_only=False,
                                           labels={volumes.TASK_LABEL: self.task.id})
        try:
            self.target.put_archive(helper, HELPER_MOUNT, iter([archive.getvalue()]))
        finally:
            self.target.remove_container(helper)
        self.store.set_extra(self.task.id, logs_volume=name)

    def _create_container(self, container: Any) -> None:
        body = create_body(container.inspect, container.image_config,
                           map_path=self.task.spec.options.get("map_path") or {})
        self.remember_created("containers", {"name": container.name, "id": None})
        container_id = driver.container_create(self.target, container.name, body)
        self._update_created_container(container.name, container_id)
        for network, endpoint in extra_networks(container.inspect):
            driver.network_connect(self.target, network, container_id, endpoint)
        self._copy_layer(container, container_id)

    def _copy_layer(self, container: Any, target_id: str) -> None:
        """Carry the source container's added, changed and deleted files into the target."""
        changes = driver.container_changes(self.source, container.name)
        mount_points = [mount["Destination"] for mount in container.inspect.get("Mounts") or []]
        copied: list[str] = []
        sent = 0
        for change in sorted(changes, key=lambda change: change["Path"]):
            path = change["Path"]
            if change["Kind"] == driver.CHANGE_DELETED or _below_any(path, copied):
                continue
            if any(path == point or path.startswith(point.rstrip("/") + "/")
                   or point.startswith(path.rstrip("/") + "/") for point in mount_points):
                continue  # mount points and the paths that lead to them are not layer data
            stream = self.source.get_archive(container.id, path)
            with stream:
                is_directory = bool((stream.stat or {}).get("mode", 0) & (1 << 31))
                if is_directory and change["Kind"] == driver.CHANGE_MODIFIED:
                    continue  # its changed entries are listed on their own
                parent = path.rsplit("/", 1)[0] or "/"
                self.target.put_archive(target_id, parent, iter(stream))
                sent += stream.bytes_read
            copied.append(path)

        deleted = self.plan.deleted_paths.get(container.name) or []
        if deleted:
            target_inspect = driver.container_inspect(self.target, target_id) or {}
            upper = get_path(target_inspect, "GraphDriver.Data.UpperDir")
            if not upper:
                raise MigrationFailed(f"cannot find the writable layer of container "
                                      f"{container.name!r} on {self.task.spec.target_host}")
            driver.write_whiteouts(self.target, upper, deleted)
        self.add_sent_bytes("layer", sent)
        self.record("info", "layer", f"container {container.name!r}: copied {len(copied)} "
                    f"changed paths ({sent} bytes), marked {len(deleted)} deleted")

    # Verify steps

    def _wait_running(self, name: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            inspect = driver.container_inspect(self.target, name) or {}
            state = inspect.get("State") or {}
            health = (state.get("Health") or {}).get("Status")
            if state.get("Running") and health in (None, "healthy"):
                return inspect
            if not state.get("Running") and state.get("Status") in ("exited", "dead"):
                raise VerificationFailed(f"container {name!r} on {self.task.spec.target_host} "
                                         f"exited with code {state.get('ExitCode')}")
            if time.monotonic() > deadline:
                raise VerificationFailed(
                    f"container {name!r} on {self.task.spec.target_host} is not running and "
                    f"healthy after {timeout:.0f} s (state {state.get('Status')}, health {health})")
            self.check_control()
            time.sleep(STATE_POLL_SECONDS)

    def _check_ports(self, name: str, inspect: dict[str, Any]) -> None:
        ports = get_path(inspect, "NetworkSettings.Ports") or {}
        for container_port, bindings in ports.items():
            if not container_port.endswith("/tcp"):
                continue
            for binding in bindings or []:
                address = binding.get("HostIp") or "0.0.0.0"
                address = "127.0.0.1" if address in ("0.0.0.0", "") else address
                address = "::1" if address == "::" else address
                if not driver.tcp_port_open(self.target, address, int(binding["HostPort"])):
                    raise VerificationFailed(
                        f"published port {address}:{binding['HostPort']} of container {name!r} "
                        f"does not accept connections on {self.task.spec.target_host}")

    def _check_projection(self, container: Any, inspect: dict[str, Any]) -> None:
        if inspect.get("Image") != container.image_id:
            raise VerificationFailed(
                f"container {container.name!r} on {self.task.spec.target_host} runs image "
                f"{str(inspect.get('Image'))[:19]}, the source runs {container.image_id[:19]}")
        target_image = image_driver.image_inspect(self.target, inspect["Image"]) or {}
        differences = compare_projections(
            projection(container.inspect, container.image_config),
            projection(inspect, target_image.get("Config")),
            self.task.spec.options.get("map_path") or {},
        )
        if differences:
            raise VerificationFailed(
                f"container {container.name!r} differs from its source: " + "; ".join(differences))

    def _check_layer(self, container: Any) -> None:
        """Check that every change of the source container's layer is in the target's."""

        def listing(engine: Any) -> list[tuple[str, int]]:
            return sorted((change["Path"], change["Kind"])
                          for change in driver.container_changes(engine, container.name))

        source, target = set(listing(self.source)), set(listing(self.target))
        missing = sorted(source - target)
        if missing:
            raise VerificationFailed(
                f"writable layer of container {container.name!r} on "
                f"{self.task.spec.target_host} lacks {len(missing)} changes of the source "
                f"(path, kind): {missing[:10]}")
        # The target container already runs, so its application may have written files.
        unexpected = sorted(target - source)
        if unexpected:
            self.warn(f"container {container.name!r} changed {len(unexpected)} more paths since "
                      f"it started on {self.task.spec.target_host}: {unexpected[:10]}")

    def _read_target_manifest(self, name: str, hash_content: bool) -> Manifest:
        if not name.startswith("bind:"):
            return volumes.read_manifest(self.target, name, task_id=self.task.id,
                                         hash_content=hash_content)
        helper = driver.create_bind_helper(self.target, name[len("bind:"):], read_only=True,
                                           labels={volumes.TASK_LABEL: self.task.id})
        try:
            builder = ManifestBuilder(hash_content=hash_content,
                                      strip_prefix=volumes.ARCHIVE_PREFIX)
            with self.target.get_archive(helper, HELPER_MOUNT) as stream:
                for chunk in stream:
                    builder.feed(chunk)
            return builder.close()
        finally:
            self.target.remove_container(helper)

    # Rollback

    def rollback(self, *, every_host: bool = False) -> None:
        """Remove what the task created on the target, then start the source containers again."""
        from ddm.events import PhaseStarted
        from ddm.task import Phase

        self.check_rollback_allowed()
        self.task.phase = Phase.ROLLBACK
        self.store.update_task(self.task.id, phase=Phase.ROLLBACK)
        self.record("info", "phase", "phase rollback started")
        self.emit_safely(PhaseStarted(self.task.id, phase=Phase.ROLLBACK.value))
        self.rollback_objects(every_host=every_host)

    def check_rollback_allowed(self) -> None:
        """Raise TaskConflict when the task removed its source containers (finalize)."""
        if self.extra().get("finalized") or self.extra().get("source_removed"):
            raise TaskConflict(f"task {self.task.id} removed its source containers; it cannot "
                               "be rolled back")

    def rollback_objects(self, *, every_host: bool = False) -> None:
        self.cleanup(every_host=every_host)
        warm.discard_backups(self)
        created = self.extra().get("created") or {}
        if not any(created.get(kind) for kind in CREATED_KINDS):
            # Nothing to remove there, so a target that was down at prepare is not needed.
            self._restart_source()
            self._remove_helper_images()
            return
        target = self.target
        for entry in reversed(created.get("containers") or []):
            driver.container_remove(target, entry.get("id") or entry["name"])
        for name in reversed(created.get("volumes") or []):
            if target.volume_inspect(name) is not None:
                undo.remove_target_volume(target, name, self.task.id)
        for name in reversed(created.get("networks") or []):
            driver.network_remove(target, name)
        for tag in created.get("tags") or []:
            image_driver.image_remove(target, tag)
        for image_id in created.get("images") or []:
            image = image_driver.image_inspect(target, image_id)
            for tag in (image or {}).get("RepoTags") or []:
                image_driver.image_remove(target, tag)
            image_driver.image_remove(target, image_id)
        for path in created.get("directories") or []:
            try:
                driver.remove_host_directory(target, path)
            except DDMError as error:
                self.warn(f"could not remove directory {path} on "
                          f"{self.task.spec.target_host}: {error}; remove it by hand")
        self._remove_parent_directories(target, created.get("parent_directories") or [])
        self.store.set_extra(self.task.id, created={key: [] for key in CREATED_KINDS})
        self.record("info", "rolled_back", f"removed what the task created on "
                    f"{self.task.spec.target_host}")
        self._restart_source()
        self._remove_helper_images()

    def _remove_parent_directories(self, target: Any, parents: list[str]) -> None:
        """Remove the empty bind-mount parents that the task created, innermost first."""
        if not parents:
            return
        try:
            driver.remove_empty_directories(target, sorted(set(parents), key=len, reverse=True))
        except DDMError as error:
            self.warn(f"kept directories that the task created on {self.task.spec.target_host}, "
                      f"because they are not empty or could not be removed: {error}")

    def _remove_helper_images(self) -> None:
        for host_name in self.extra().get("helper_image_hosts") or []:
            engine = self.engine(host_name)
            try:
                volumes.remove_task_helpers(engine, self.task.id)
                image_driver.image_remove(engine, HELPER_IMAGE)
            except DDMError as error:
                self.warn(f"could not remove the helper image on {host_name}: {error}")
        self.store.set_extra(self.task.id, helper_image_hosts=[])

    def _restart_source(self) -> None:
        for name in self.extra().get("source_running") or []:
            inspect = driver.container_inspect(self.source, name)
            if inspect is not None and not get_path(inspect, "State.Running"):
                driver.container_start(self.source, name)
                self.record("info", "restarted", f"started source container {name!r} again")


class TransferProgress:
    """Reports the bytes of one image, volume or bind-mount transfer while they pass.

    It emits ItemStarted, Progress and ItemFinished events, and keeps the transfer in the
    task's extra state under TRANSFERS_KEY, stored at most every PROGRESS_STORE_SECONDS, so
    that `ddmctl status --watch` in another process can draw a bar per image and volume.
    """

    def __init__(self, runner: FullTaskRunner, kind: str, name: str, bytes_total: int | None,
                 *, target: str | None = None) -> None:
        self.runner = runner
        self.position = runner._positions
        runner._positions += 1
        self.bytes_total = bytes_total
        self.done = 0
        self._last_event = 0.0
        self._last_store = time.monotonic()
        self.record = {"position": self.position, "kind": kind, "name": name,
                       "target": target or name, "bytes_total": bytes_total, "bytes_done": 0,
                       "state": "sending", "started_at": time.time(), "finished_at": None}
        self._store()
        size = "unknown size" if bytes_total is None else f"{bytes_total} bytes"
        runner.record("info", "transfer_started", f"sending {kind} {name} ({size})",
                      object_kind=kind, object=name, bytes_total=bytes_total)
        runner.emit(ItemStarted(runner.task.id, position=self.position, source=name,
                                target=target or name, bytes_total=bytes_total,
                                object_kind=kind))

    def add(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self._last_store >= PROGRESS_STORE_SECONDS:
            self._last_store = now
            self.record["bytes_done"] = self.done
            self._store()
        if now - self._last_event >= PROGRESS_EVENT_SECONDS:
            self._last_event = now
            self.runner.emit(Progress(self.runner.task.id, position=self.position,
                                      bytes_done=self.done, bytes_total=self.bytes_total))
            self.runner.check_control()

    def finish(self, byte_count: int, *, sent_bytes: int | None = None) -> None:
        """Store the transfer as sent; `sent_bytes` is what reached the target, when it differs.

        An image's layers that the target already has are read but left out of what is sent.
        """
        self.record.update(bytes_done=byte_count, state="sent", finished_at=time.time())
        if sent_bytes is not None:
            self.record["bytes_sent"] = sent_bytes
        self._store()
        self.runner.emit(ItemFinished(self.runner.task.id, position=self.position,
                                      state="copied", bytes_done=byte_count))

    def _store(self) -> None:
        transfers = [entry for entry in self.runner.extra().get(TRANSFERS_KEY) or []
                     if entry["position"] != self.position]
        transfers.append(dict(self.record))
        transfers.sort(key=lambda entry: entry["position"])
        self.runner.store.set_extra(self.runner.task.id, **{TRANSFERS_KEY: transfers})


def _below_any(path: str, parents: list[str]) -> bool:
    return any(path.startswith(parent.rstrip("/") + "/") for parent in parents)


def remove_source_containers(runner: TaskRunner, names: list[str]) -> None:
    """Remove the stopped source containers of a task (never their volumes).

    Each container is found by the ID the task recorded, so a container created later under the
    same name stays. All are checked before the first removal, so when one runs again nothing
    is removed and the task can still be rolled back.
    """
    recorded_ids = runner.store.get_extra(runner.task.id).get("source_container_ids") or {}
    removable = {name: recorded_ids.get(name) or name for name in names}
    for name, reference in list(removable.items()):
        inspect = driver.container_inspect(runner.source, reference)
        if inspect is None:
            del removable[name]
        elif get_path(inspect, "State.Running"):
            raise MigrationFailed(f"source container {name!r} runs again on "
                                  f"{runner.task.spec.source_host}; nothing was removed",
                                  hint="stop it first, or roll the task back")

    runner.store.set_extra(runner.task.id, source_removed=True)
    for name, reference in removable.items():
        driver.container_remove(runner.source, reference)
        runner.record("info", "source_removed", f"removed source container {name!r}")


def finalize_task(runner: FullTaskRunner) -> None:
    """Remove the stopped source containers of a succeeded full-mode task."""
    task = runner.task
    if task.state is not TaskState.SUCCEEDED:
        raise TaskConflict(f"task {task.id} is {task.state.value}; only a succeeded task can be "
                           "finalized")
    extra = runner.extra()
    if extra.get("finalized"):
        return
    try:
        remove_source_containers(runner, list(extra.get("source_containers") or []))
        runner.store.set_extra(task.id, finalized=True)
        runner.record("info", "finalized", "source containers removed")
    finally:
        runner._close()


def read_task_log(runner: TaskRunner, container: str) -> bytes:
    """Return the archived log of one source container from the task's logs volume."""
    from ddm.errors import UsageError

    extra = runner.store.get_extra(runner.task.id)
    volume = extra.get("logs_volume")
    if not volume:
        raise UsageError(f"task {runner.task.id} archived no logs",
                         hint="logs are archived in the migrate phase of a full-mode task")
    names = extra.get("source_containers") or []
    if container not in names:
        raise UsageError(f"container {container!r} is not part of task {runner.task.id}",
                         hint=f"name one of its containers: {', '.join(names) or 'none'}")
    unfinished = (TaskState.FAILED, TaskState.CANCELLED, TaskState.ROLLED_BACK)
    if runner.task.state in unfinished:
        # The rollback of a failed or cancelled task removes the logs volume with everything
        # else the task created on the target.
        raise UsageError(
            f"task {runner.task.id} is {runner.task.state.value}, so its container logs are not "
            f"archived on {runner.task.spec.target_host}: its rollback removed them, or it "
            "stopped before it archived them",
            hint=f"the source container keeps its log; read it with 'docker logs {container}' "
            f"on {runner.task.spec.source_host}")
    target = runner.target
    helper = target.create_helper(volume, read_only=True, labels={volumes.TASK_LABEL: runner.task.id})
    try:
        with target.get_archive(helper, f"{HELPER_MOUNT}/{container}.log") as stream:
            data = b"".join(stream)
    except DDMError:
        raise
    finally:
        target.remove_container(helper)
        runner._close()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.next()
        extracted = tar.extractfile(member) if member else None
        return extracted.read() if extracted else b""
