"""What the command-line programs import at start, checked in fresh interpreters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]

REPORT = """
import importlib.util, json, sys
installed = importlib.util.find_spec("invoke") is not None
import {module}
import paramiko.config
print(json.dumps({{"installed": installed,
                  "invoke": repr(sys.modules.get("invoke", "absent")),
                  "paramiko_invoke": repr(paramiko.config.invoke),
                  "unittest.mock": "unittest.mock" in sys.modules}}))
"""


def imported_by(module: str) -> dict[str, object]:
    environment = dict(os.environ, PYTHONPATH=str(REPOSITORY))
    completed = subprocess.run([sys.executable, "-c", REPORT.format(module=module)],
                               capture_output=True, text=True, env=environment, check=True)
    return json.loads(completed.stdout)


@pytest.mark.parametrize("module", ["ddmctl.cli", "ddmverify.cli"])
def test_cli_start_leaves_out_invoke(module: str) -> None:
    report = imported_by(module)

    assert report["invoke"] == "None"
    assert report["paramiko_invoke"] == "None"
    assert report["unittest.mock"] is False


def test_library_import_keeps_invoke() -> None:
    report = imported_by("ddm.api")
    if not report["installed"]:
        pytest.skip("invoke is not installed")

    assert report["invoke"].startswith("<module 'invoke'")
