"""Tests of the create-config mapping and the dependency order of full mode."""

from __future__ import annotations

from typing import Any

from ddm.container_config import (
    compare_projections,
    create_body,
    extra_networks,
    map_host_path,
    projection,
)
from ddmsyncer.fullplan import ContainerPlan, deleted_paths, order_by_dependencies

CONTAINER_ID = "0123456789ab" + "c" * 52
ANONYMOUS = "f" * 64

IMAGE_CONFIG: dict[str, Any] = {
    "Env": ["PATH=/bin", "IMAGE_ENV=from-image"],
    "Cmd": ["httpd", "-f"],
    "Entrypoint": None,
    "WorkingDir": "/www",
    "Labels": {"image.label": "1"},
    "ExposedPorts": {"8080/tcp": {}},
    "Volumes": {"/anon": {}},
    "Healthcheck": {"Test": ["CMD", "true"]},
    "User": "",
}


def inspect_data(**config: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "Id": CONTAINER_ID,
        "Name": "/web",
        "Config": {
            "Hostname": CONTAINER_ID[:12],
            "Image": "app:1.0",
            "Env": ["PATH=/bin", "IMAGE_ENV=from-image", "APP_MODE=prod"],
            "Cmd": ["httpd", "-f"],
            "Entrypoint": None,
            "WorkingDir": "/www",
            "Labels": {"image.label": "1", "app.tier": "front"},
            "ExposedPorts": {"8080/tcp": {}, "9090/udp": {}},
            "Volumes": {"/anon": {}},
            "Healthcheck": {"Test": ["CMD", "true"]},
            "User": "",
            "Tty": False,
        },
        "HostConfig": {
            "Binds": ["/srv/site:/site:ro", "named:/data"],
            "Mounts": None,
            "NetworkMode": "appnet",
            "PortBindings": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]},
            "RestartPolicy": {"Name": "unless-stopped", "MaximumRetryCount": 0},
            "Memory": 0,
            "Links": ["/db:/web/database"],
        },
        "Mounts": [
            {"Type": "bind", "Source": "/srv/site", "Destination": "/site", "RW": False},
            {"Type": "volume", "Name": "named", "Destination": "/data", "RW": True,
             "Driver": "local"},
            {"Type": "volume", "Name": ANONYMOUS, "Destination": "/anon", "RW": True,
             "Driver": "local"},
        ],
        "NetworkSettings": {"Networks": {
            "othernet": {"Aliases": ["cache", CONTAINER_ID[:12]], "IPAMConfig": None},
            "appnet": {"Aliases": ["web", CONTAINER_ID[:12]],
                       "IPAMConfig": {"IPv4Address": "10.1.0.9", "IPv6Address": ""}},
        }},
    }
    data["Config"].update(config)
    return data


def test_create_body_drops_image_defaults() -> None:
    body = create_body(inspect_data(), IMAGE_CONFIG)
    assert body["Env"] == ["APP_MODE=prod"]
    assert body["Labels"] == {"app.tier": "front"}
    assert body["ExposedPorts"] == {"9090/udp": {}}
    for name in ("Cmd", "WorkingDir", "Healthcheck", "Volumes", "Entrypoint", "Hostname"):
        assert name not in body


def test_create_body_keeps_user_values() -> None:
    body = create_body(inspect_data(Hostname="webhost", User="999"), IMAGE_CONFIG)
    assert body["Image"] == "app:1.0"
    assert body["Hostname"] == "webhost"
    assert body["User"] == "999"
    assert body["Tty"] is False
    host = body["HostConfig"]
    assert host["RestartPolicy"] == {"Name": "unless-stopped", "MaximumRetryCount": 0}
    assert host["PortBindings"] == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}
    assert host["Memory"] == 0
    assert host["Links"] == ["db:database"]


def test_create_body_keeps_cmd_with_entrypoint() -> None:
    body = create_body(inspect_data(Entrypoint=["/bin/sh", "-c"]), IMAGE_CONFIG)
    assert body["Entrypoint"] == ["/bin/sh", "-c"]
    assert body["Cmd"] == ["httpd", "-f"]


def test_create_body_maps_binds_and_anonymous_volumes() -> None:
    body = create_body(inspect_data(), IMAGE_CONFIG, map_path={"/srv": "/data/srv"})
    host = body["HostConfig"]
    assert host["Binds"] == ["/data/srv/site:/site:ro", "named:/data"]
    assert host["Mounts"] == [
        {"Type": "volume", "Source": ANONYMOUS, "Target": "/anon", "ReadOnly": False}
    ]


def test_create_body_networks() -> None:
    data = inspect_data()
    body = create_body(data, IMAGE_CONFIG)
    assert body["NetworkingConfig"] == {"EndpointsConfig": {
        "appnet": {"Aliases": ["web"], "IPAMConfig": {"IPv4Address": "10.1.0.9"}}
    }}
    assert extra_networks(data) == [("othernet", {"Aliases": ["cache"]})]


def test_map_host_path_longest_prefix() -> None:
    mapping = {"/srv": "/a", "/srv/site": "/b"}
    assert map_host_path("/srv/site/x", mapping) == "/b/x"
    assert map_host_path("/srv/other", mapping) == "/a/other"
    assert map_host_path("/srvx", mapping) == "/srvx"


def test_projection_ignores_engine_values() -> None:
    source = inspect_data()
    target = inspect_data()
    target["Id"] = "9" * 64
    target["Config"]["Hostname"] = target["Id"][:12]
    target["NetworkSettings"]["Networks"]["appnet"]["Aliases"] = ["web", target["Id"][:12]]
    target["NetworkSettings"]["Networks"]["othernet"]["Aliases"] = ["cache", target["Id"][:12]]
    assert compare_projections(projection(source), projection(target)) == []


def test_projection_reports_changed_field() -> None:
    source = inspect_data()
    target = inspect_data(Env=["PATH=/bin"])
    differences = compare_projections(projection(source), projection(target))
    assert len(differences) == 1
    assert differences[0].startswith("Config.Env:")


def plan(name: str, service: str, depends: str = "", links: list[str] | None = None
         ) -> ContainerPlan:
    labels = {"com.docker.compose.service": service}
    if depends:
        labels["com.docker.compose.depends_on"] = depends
    inspect = {"Config": {"Labels": labels}, "HostConfig": {"Links": links}}
    return ContainerPlan(name=name, id=name, image_id="sha256:1", image_reference="app",
                         running=True, inspect=inspect, image_config={})


def test_order_by_depends_on_and_links() -> None:
    ordered = order_by_dependencies([
        plan("a-web", "web", "api:service_started:false"),
        plan("b-api", "api", "db:service_healthy:false"),
        plan("c-db", "db"),
        plan("d-worker", "worker", links=["/c-db:/d-worker/db"]),
    ])
    names = [item.name for item in ordered]
    assert names.index("c-db") < names.index("b-api") < names.index("a-web")
    assert names.index("c-db") < names.index("d-worker")


def test_deleted_paths_keep_top_directories() -> None:
    changes = [{"Path": "/etc", "Kind": 0}, {"Path": "/opt/x", "Kind": 2},
               {"Path": "/opt/x/y", "Kind": 2}, {"Path": "/www/a", "Kind": 2},
               {"Path": "/www/new", "Kind": 1}]
    assert deleted_paths(changes) == ["/opt/x", "/www/a"]


def test_normalise_reference_adds_latest() -> None:
    from ddmsyncer.fullplan import normalise_reference

    assert normalise_reference("app") == "app:latest"
    assert normalise_reference("registry.example:5000/app") == "registry.example:5000/app:latest"
    assert normalise_reference("registry.example/app:1.2") == "registry.example/app:1.2"
    assert normalise_reference("app@sha256:" + "0" * 64) == "app@sha256:" + "0" * 64
