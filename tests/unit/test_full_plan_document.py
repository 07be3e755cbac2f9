"""The full-mode plan document built from a FullPlan, and its estimate, without a lab."""

from __future__ import annotations

from ddm.errors import TargetExists
from ddm.task import Mode, TaskSpec, VerifyMode
from ddmsyncer.fullplan import BindPlan, ContainerPlan, FullPlan, ImagePlan, NetworkPlan, VolumePlan
from ddmsyncer.fullplan_document import full_plan_objects, full_plan_steps
from ddmsyncer.linkprobe import LinkRate
from ddmsyncer.plan import estimate_duration

IMAGE_ID = "sha256:" + "a" * 64


def sample_plan() -> FullPlan:
    """Two containers: web runs and uses data and a bind mount, db is stopped and uses cache."""
    plan = FullPlan()
    plan.containers = [
        ContainerPlan(name="db", id="1" * 64, image_id=IMAGE_ID, image_reference="app:1",
                      running=False, inspect={}, image_config={}, layer_bytes=100),
        ContainerPlan(name="web", id="2" * 64, image_id=IMAGE_ID, image_reference="app:1",
                      running=True, inspect={}, image_config={}, depends_on=["db"],
                      layer_bytes=200),
    ]
    plan.images = [ImagePlan(id=IMAGE_ID, tags=["app:1"], size_bytes=5000, architecture="amd64")]
    plan.volumes = [
        VolumePlan(name="data", driver="local", options={}, labels={}, size_bytes=3000,
                   anonymous=False, remote=False, containers=["web"]),
        VolumePlan(name="cache", driver="local", options={}, labels={}, size_bytes=1000,
                   anonymous=False, remote=False, containers=["db"]),
        VolumePlan(name="nfs", driver="local", options={"type": "nfs"}, labels={},
                   size_bytes=None, anonymous=False, remote=True, containers=["web"]),
    ]
    plan.binds = [BindPlan("/srv/site", "/data/site", ["web"], size_bytes=400)]
    plan.networks = [NetworkPlan(name="shop", inspect={"Driver": "bridge"})]
    plan.deleted_paths = {"web": ["/www/old.txt"]}
    return plan


def full_spec(**options: object) -> TaskSpec:
    return TaskSpec(source_host="old", target_host="new", mode=Mode.FULL,
                    verify=VerifyMode.FULL, options={"containers": ["db", "web"], **options})


def test_objects_kinds_and_actions() -> None:
    plan = sample_plan()
    plan.conflict("volume", "cache", TargetExists, "volume 'cache' already exists on host 'new'")

    objects = full_plan_objects(plan, full_spec())

    assert [(entry["kind"], entry["source"], entry["action"]) for entry in objects] == [
        ("image", "app:1", "send"), ("network", "shop", "create"),
        ("volume", "data", "create"), ("volume", "cache", "none"), ("volume", "nfs", "create"),
        ("bind_mount", "/srv/site", "create"), ("container", "db", "create"),
        ("container", "web", "create"),
    ]
    by_source = {entry["source"]: entry for entry in objects}
    assert by_source["data"]["during_cutover"] is True
    assert by_source["cache"]["during_cutover"] is False
    assert by_source["nfs"]["data_path"] == "none"
    assert by_source["nfs"]["bytes_to_send"] == 0
    assert by_source["/srv/site"]["target"] == "/data/site"
    assert by_source["web"]["deleted_paths"] == 1
    assert by_source["web"]["depends_on"] == ["db"]


def test_present_image_sends_nothing() -> None:
    plan = sample_plan()
    plan.images[0].present_on_target = True
    plan.images[0].missing_tags = ["app:1"]

    image = full_plan_objects(plan, full_spec())[0]

    assert image["action"] == "tag"
    assert image["data_path"] == "none"
    assert image["bytes_to_send"] == 0


def test_warm_volume_data_path() -> None:
    objects = full_plan_objects(sample_plan(), full_spec(warm=True))

    by_source = {entry["source"]: entry for entry in objects}
    assert by_source["data"]["data_path"] == "engine-api+host-delta"
    assert by_source["cache"]["data_path"] == "engine-api"


def test_steps_stop_before_cutover_copy() -> None:
    steps = full_plan_steps(sample_plan(), full_spec(remove_source=True))

    assert [step["order"] for step in steps] == list(range(1, len(steps) + 1))
    described = [(step["phase"], step["kind"], step["object"]) for step in steps]
    stop = described.index(("migrate", "container", "web -> web"))
    copy_data = described.index(("migrate", "volume", "data -> data"))
    copy_cache = described.index(("copy", "volume", "cache -> cache"))
    assert copy_cache < stop < copy_data
    assert ("migrate", "bind_mount", "/srv/site -> /data/site") in described
    assert ("migrate", "volume", "nfs -> nfs") not in described
    assert described[-1] == ("cleanup", "container", "web -> web")
    assert any(step["object"] == "web -> web" and "mark 1 deleted paths" in step["action"]
               for step in steps)


def test_estimate_includes_downtime() -> None:
    objects = full_plan_objects(sample_plan(), full_spec())
    links = {"source": LinkRate("old", 100.0, 100.0, 4), "target": LinkRate("new", 50.0, 100.0, 4)}

    estimate = estimate_duration(objects, links, VerifyMode.FULL)

    # Sent: image 5000, volumes 3000 + 1000, bind mount 400, layers 100 + 200.
    assert estimate["bytes_total"] == 9700
    assert estimate["copy_bytes_per_second"] == 100.0
    assert estimate["copy_seconds"] == 97.0
    # Verify reads the volumes and the bind mount back at 50 B/s.
    assert estimate["verify_seconds"] == 88.0
    # After the first stop: data 3000, the bind mount 400 and both layers 100 + 200.
    assert estimate["downtime_copy_seconds"] == 37.0
    # web runs without a StopTimeout, so docker stop may wait Docker's default 10 s.
    assert estimate["stop_timeout_seconds"] == 10
    assert estimate["downtime_seconds"] == 47.0
    assert estimate["sizes_unknown"] == 0


def test_downtime_uses_stop_timeouts() -> None:
    plan = sample_plan()
    plan.containers[0].running = True
    plan.containers[0].inspect = {"Config": {"StopTimeout": 30}}
    plan.containers[1].inspect = {"Config": {"StopTimeout": 2}}
    links = {"source": LinkRate("old", 100.0, 100.0, 4), "target": LinkRate("new", 50.0, 100.0, 4)}

    objects = full_plan_objects(plan, full_spec())
    estimate = estimate_duration(objects, links, VerifyMode.FULL)

    by_source = {entry["source"]: entry for entry in objects}
    assert by_source["db"]["stop_timeout_seconds"] == 30
    assert by_source["web"]["stop_timeout_seconds"] == 2
    assert estimate["stop_timeout_seconds"] == 32
    assert estimate["stop_unbounded"] == []
    # Both containers run now, so the cache volume moves during the cutover too.
    assert estimate["downtime_copy_seconds"] == 47.0
    assert estimate["downtime_seconds"] == 79.0


def test_downtime_lists_unbounded_stop() -> None:
    plan = sample_plan()
    plan.containers[1].inspect = {"Config": {"StopTimeout": -1}}
    links = {"source": LinkRate("old", 100.0, 100.0, 4), "target": LinkRate("new", 50.0, 100.0, 4)}

    objects = full_plan_objects(plan, full_spec())
    estimate = estimate_duration(objects, links, VerifyMode.FULL)

    assert estimate["stop_timeout_seconds"] == 0
    assert estimate["stop_unbounded"] == ["web"]
    assert estimate["downtime_seconds"] == 37.0


def test_stopped_container_adds_no_wait() -> None:
    plan = sample_plan()
    plan.containers[1].running = False
    links = {"source": LinkRate("old", 100.0, 100.0, 4), "target": LinkRate("new", 50.0, 100.0, 4)}

    estimate = estimate_duration(full_plan_objects(plan, full_spec()), links, VerifyMode.FULL)

    assert estimate["downtime_seconds"] is None
    assert estimate["stop_timeout_seconds"] is None
