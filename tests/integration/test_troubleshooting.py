"""Engine connection errors that docs/troubleshooting.md quotes, reproduced on the lab.

Two SSH users are added to h1 for these tests only, through a copy of /etc/passwd bind-mounted
in h1's own mount namespace, so the machine's /etc/passwd does not change. `ddmuser` may not use
the Docker socket. `ddmnodocker` logs in with a PATH that contains neither docker nor socat.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ddm.config import load_config
from ddm.errors import ConnectionFailed
from ddmdriver.engine import open_engine
from tests.lab import Lab, LabHost

UNPRIVILEGED_USER = "ddmuser"
NO_DOCKER_USER = "ddmnodocker"


@pytest.fixture
def lab_users(h1: LabHost) -> Iterator[None]:
    """Add the two users to h1's /etc/passwd for the length of one test."""
    # pytest's tmp_path is private to root, and the users' shell must be reachable.
    with tempfile.TemporaryDirectory(prefix="ddm-lab-users-") as directory:
        shared = Path(directory)
        shared.chmod(0o755)
        with _bind_passwd(h1, shared):
            yield


@contextlib.contextmanager
def _bind_passwd(h1: LabHost, tmp_path: Path) -> Iterator[None]:
    bin_dir = tmp_path / "nodocker-bin"
    bin_dir.mkdir()
    (bin_dir / "sh").symlink_to("/bin/sh")
    shell = tmp_path / "nodocker-shell"
    shell.write_text(f'#!/bin/sh\nPATH={bin_dir}\nexport PATH\nexec /bin/sh "$@"\n')
    shell.chmod(0o755)

    passwd = tmp_path / "passwd"
    passwd.write_text(
        Path("/etc/passwd").read_text()
        + f"{UNPRIVILEGED_USER}:x:4242:4242::/tmp:/bin/sh\n"
        + f"{NO_DOCKER_USER}:x:4243:4243::/tmp:{shell}\n"
    )
    h1.run(["mount", "--bind", str(passwd), "/etc/passwd"])
    try:
        yield
    finally:
        h1.run(["umount", "/etc/passwd"])


def connect_as(lab: Lab, tmp_path: Path, user: str) -> None:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    path = tmp_path / f"{user}.yaml"
    path.write_text(
        f"identity_file: {lab.identity_file}\nknown_hosts: {lab.known_hosts}\n"
        f"hosts:\n  h1: {lab.host('h1').ssh_url.replace('root@', f'{user}@')}\n"
    )
    config = load_config(path, {"HOME": str(home), "USER": "root"})
    with open_engine(config.host("h1"), config) as engine:
        engine.ping()


def test_socket_permission_denied(lab: Lab, lab_users: None, tmp_path: Path) -> None:
    with pytest.raises(ConnectionFailed) as raised:
        connect_as(lab, tmp_path, UNPRIVILEGED_USER)

    message = str(raised.value)
    assert "Docker engine on h1 not reachable" in message
    assert "connect: permission denied" in message
    assert "Error while fetching server API version" not in message
    assert "add it to the 'docker' group" in message


def test_docker_cli_missing(lab: Lab, lab_users: None, tmp_path: Path) -> None:
    with pytest.raises(ConnectionFailed) as raised:
        connect_as(lab, tmp_path, NO_DOCKER_USER)

    message = str(raised.value)
    assert "socat: not found" in message
    assert "install the docker CLI on that host" in message
