"""Fixtures shared by DDM's tests: the lab of Docker hosts, an isolated environment, resource cleanup.

The lab needs root and the tools of scripts/setup.sh. When either is missing,
every test that uses the lab fails with the reason; none is skipped.

Environment variables:
    DDM_LAB_PORT  SSH port of the lab hosts (default 2222)
    DDM_LAB_ROOT  lab directory (default: ddm-lab-pytest-PORT in the temporary
                  directory). A fixed default lets the next run tear down a lab
                  that a killed run left behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab import Lab, LabError, LabHost, missing_prerequisites
from tests.lab.isolation import IsolatedEnv
from tests.lab.lab import DEFAULT_PORT
from tests.lab.resources import LabResources


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the lab fixture with "lab", so `-m "not lab"` selects the others."""
    for item in items:
        if "lab" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.lab)


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """A running lab of two hosts, h1 and h2, shared by the whole test session."""
    problems = missing_prerequisites()
    if problems:
        pytest.fail("the lab of Docker hosts cannot start:\n  " + "\n  ".join(problems), pytrace=False)

    port = int(os.environ.get("DDM_LAB_PORT", str(DEFAULT_PORT)))
    root = Path(os.environ.get("DDM_LAB_ROOT") or Path(tempfile.gettempdir()) / f"ddm-lab-pytest-{port}")
    session_lab = Lab(root, host_count=2, port=port)
    try:
        session_lab.up()
    except LabError as error:
        pytest.fail(f"the lab of Docker hosts failed to start: {error}", pytrace=False)

    try:
        yield session_lab
    finally:
        session_lab.down()


@pytest.fixture
def h1(lab: Lab) -> LabHost:
    """Lab host h1, the usual migration source."""
    return lab.host("h1")


@pytest.fixture
def h2(lab: Lab) -> LabHost:
    """Lab host h2, the usual migration target."""
    return lab.host("h2")


@pytest.fixture
def isolated_env(lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> IsolatedEnv:
    """Point HOME and the XDG directories at a temporary directory and DDM_CONFIG at a lab configuration.

    monkeypatch.setenv changes os.environ, so subprocesses such as ddmctl inherit
    the environment. SSH_AUTH_SOCK and the DOCKER_* variables are removed, so no
    agent and no Docker context of the machine takes part.
    """
    home = tmp_path / "home"
    variables = {
        "HOME": home,
        "XDG_CONFIG_HOME": home / ".config",
        "XDG_DATA_HOME": home / ".local" / "share",
        "XDG_CACHE_HOME": home / ".cache",
    }
    for name, path in variables.items():
        path.mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(name, str(path))

    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    for name in list(os.environ):
        if name.startswith("DOCKER_"):
            monkeypatch.delenv(name)

    config_path = lab.write_ddm_config(tmp_path / "ddm.yaml")
    monkeypatch.setenv("DDM_CONFIG", str(config_path))
    return IsolatedEnv(home=home, config_path=config_path)


@pytest.fixture
def resources(lab: Lab) -> Iterator[LabResources]:
    """Create and track volumes and containers on lab hosts; remove them after the test."""
    tracker = LabResources(lab)
    yield tracker

    failures = tracker.cleanup()
    if failures:
        pytest.fail("cleaning up lab resources failed:\n  " + "\n  ".join(failures), pytrace=False)
