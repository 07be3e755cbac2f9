"""What ddminit writes and prints when it replaces a config file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ddm.config import load_config
from tests.unit.cli_support import invoke

pytestmark = pytest.mark.usefixtures("no_network")


def test_symlinked_config_written_through(home: Path, environ: dict[str, str]) -> None:
    real = home / "real.yaml"
    real.write_text("hosts:\n  old: tcp://127.0.0.1:2375\n")
    os.chmod(real, 0o644)
    (home / "link.yaml").symlink_to("real.yaml")

    outcome = invoke("ddminit", ["--config", "link.yaml", "--host", "new=tcp://127.0.0.1:2376",
                                 "--yes"], environ)

    assert outcome.status == 0, outcome
    assert outcome.stdout == "link.yaml\n"
    assert outcome.stderr == (f"wrote {real}, the file that the symbolic link link.yaml "
                              "points to\n")
    assert os.readlink(home / "link.yaml") == "real.yaml"
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
    assert sorted(load_config(real, environ).hosts) == ["local", "new", "old"]
    assert sorted(entry.name for entry in home.iterdir()) == ["link.yaml", "real.yaml"]

