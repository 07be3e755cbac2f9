"""The mountinfo escaping of the --force replacement check (ddmsyncer.replacecheck)."""

from __future__ import annotations

import pytest

from ddmsyncer import undo
from ddmsyncer.replacecheck import containers_using, escape_mountinfo, unescape_mountinfo


@pytest.mark.parametrize("path, escaped", [
    ("/var/lib/docker/volumes/pgdata/_data", "/var/lib/docker/volumes/pgdata/_data"),
    ("/srv/docker root/volumes", "/srv/docker\\040root/volumes"),
    ("/a\tb\nc\\d", "/a\\011b\\012c\\134d"),
])
def test_mountinfo_escape_round_trip(path, escaped):
    assert escape_mountinfo(path) == escaped
    assert unescape_mountinfo(escaped) == path


class _Api:
    """The engine's result for a `volume` filter, whatever the filter matched."""

    def __init__(self, containers: list[dict]) -> None:
        self.listed = containers

    def containers(self, all: bool, filters: dict) -> list[dict]:  # noqa: A002 - docker-py's name
        assert all and filters == {"volume": "data"}
        return self.listed


class _Engine:
    def __init__(self, containers: list[dict]) -> None:
        self.api = _Api(containers)


@pytest.mark.parametrize("lookup", [containers_using, undo.containers_using])
def test_containers_using_names_only_mounts_of_the_volume(lookup) -> None:
    engine = _Engine([
        {"Id": "a" * 64, "Names": ["/uses-volume"],
         "Mounts": [{"Type": "volume", "Name": "data", "Destination": "/srv"}]},
        {"Id": "b" * 64, "Names": ["/mounts-at-path"],
         "Mounts": [{"Type": "volume", "Name": "other", "Destination": "/data"}]},
        {"Id": "c" * 64, "Names": ["/binds-data"],
         "Mounts": [{"Type": "bind", "Source": "/srv/data", "Destination": "/data"}]},
    ])

    assert lookup(engine, "data") == ["uses-volume"]


def test_undo_lookup_engine_failure() -> None:
    class Failing:
        class api:  # noqa: N801 - stands in for docker-py's APIClient attribute
            @staticmethod
            def containers(**_: object) -> list[dict]:
                raise OSError("connection reset")

    assert undo.containers_using(Failing(), "data") == []


def test_undo_removal_in_use_hint() -> None:
    from ddm.errors import MigrationFailed

    class Host:
        name = "new"

    class Target:
        host = Host()

        class api:  # noqa: N801 - stands in for docker-py's APIClient attribute
            @staticmethod
            def containers(**_: object) -> list[dict]:
                return []

        @staticmethod
        def volume_remove(name: str) -> None:
            raise MigrationFailed(f"Docker engine on new rejected removing volume {name}: "
                                  "remove data: volume is in use - [0123456789ab]")

    with pytest.raises(MigrationFailed) as raised:
        undo.remove_target_volume(Target(), "data", "t" * 12)

    assert raised.value.hint == ("remove the container that Docker names in its error on new, "
                                 f"then run 'ddmctl rollback {'t' * 12}' again")
