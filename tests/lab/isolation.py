"""The result of the isolated_env fixture, importable by tests for type hints."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class IsolatedEnv:
    """The temporary home and DDM configuration file that the isolated_env fixture set up."""

    home: Path
    config_path: Path

    @property
    def environ(self) -> dict[str, str]:
        """A copy of os.environ as it is while the test runs, for load_config(environ=...)."""
        return dict(os.environ)
