"""A lab of Docker hosts in network namespaces on this machine, for DDM's integration tests.

Run `python -m tests.lab --help` for the command-line interface.
"""

from tests.lab.errors import LabCommandError, LabError
from tests.lab.host import HostStatus, LabHost
from tests.lab.image import BUSYBOX_IMAGE
from tests.lab.lab import DEFAULT_PORT, Lab
from tests.lab.prereq import missing_prerequisites

__all__ = [
    "BUSYBOX_IMAGE",
    "DEFAULT_PORT",
    "HostStatus",
    "Lab",
    "LabCommandError",
    "LabError",
    "LabHost",
    "missing_prerequisites",
]
