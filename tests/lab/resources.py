"""Track volumes and containers that a test creates on lab hosts, and remove them afterwards."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence

from tests.lab.errors import LabCommandError, LabError
from tests.lab.host import LabHost
from tests.lab.image import BUSYBOX_IMAGE
from tests.lab.lab import Lab

logger = logging.getLogger(__name__)


def unique_name(prefix: str = "ddmtest") -> str:
    """Return a volume or container name that no other test uses, e.g. "ddmtest-3f2a9c01b4"."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class LabResources:
    """Volumes and containers created by one test, removed by cleanup().

    Containers are removed before volumes, because a volume that a container uses
    cannot be removed.
    """

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self._volumes: list[tuple[LabHost, str]] = []
        self._containers: list[tuple[LabHost, str]] = []

    def create_volume(
        self,
        host: LabHost | str,
        name: str | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        driver_opts: Mapping[str, str] | None = None,
    ) -> str:
        """Create a local volume on host, named unique_name() unless name is given; return its name."""
        host = self._host(host)
        name = name or unique_name()
        argv = ["volume", "create"]
        for key, value in (labels or {}).items():
            argv += ["--label", f"{key}={value}"]
        for key, value in (driver_opts or {}).items():
            argv += ["--opt", f"{key}={value}"]

        self.add_volume(host, name)
        host.docker(*argv, name)
        return name

    def add_volume(self, host: LabHost | str, name: str) -> None:
        """Track a volume for removal at cleanup, e.g. a volume that DDM creates on the target host."""
        self._volumes.append((self._host(host), name))

    def create_container(
        self,
        host: LabHost | str,
        *,
        volumes: Mapping[str, str] | None = None,
        command: Sequence[str] = ("sleep", "3600"),
        start: bool = False,
        name: str | None = None,
        image: str = BUSYBOX_IMAGE,
    ) -> str:
        """Create (and with start=True, start) a container that mounts volumes {name: path}; return its ID."""
        host = self._host(host)
        argv = ["run", "--detach"] if start else ["create"]
        argv += ["--name", name or unique_name()]
        for volume, path in (volumes or {}).items():
            argv += ["--volume", f"{volume}:{path}"]

        container_id = host.docker(*argv, image, *command).stdout.strip()
        self.add_container(host, container_id)
        return container_id

    def add_container(self, host: LabHost | str, container: str) -> None:
        """Track a container (ID or name) for removal at cleanup."""
        self._containers.append((self._host(host), container))

    def cleanup(self) -> list[str]:
        """Remove the tracked containers, then volumes; return one line per resource that could not be removed.

        Restarts dockerd, sshd and the relay on every host first, so a test that
        stopped them and then failed does not break the tests after it.
        """
        failures: list[str] = []
        for host in self.lab.hosts:
            try:
                host.ensure_running()
            except LabError as error:
                failures.append(str(error))

        for host, container in reversed(self._containers):
            failures += self._remove(host, ["rm", "--force", "--volumes", container], "No such container")
        for host, volume in reversed(self._volumes):
            failures += self._remove(host, ["volume", "rm", "--force", volume], "no such volume")

        self._containers.clear()
        self._volumes.clear()
        return failures

    def _remove(self, host: LabHost, argv: list[str], missing_message: str) -> list[str]:
        try:
            host.docker(*argv, timeout=60.0)
        except LabCommandError as error:
            if missing_message.lower() in str(error.stderr).lower():
                return []
            logger.warning("cleanup on %s failed: %s", host.name, error)
            return [f"{host.name}: docker {' '.join(argv)} failed: {str(error.stderr).strip()}"]
        return []

    def _host(self, host: LabHost | str) -> LabHost:
        return self.lab.host(host) if isinstance(host, str) else host
