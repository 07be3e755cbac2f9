"""Start-up work of DDM's command-line programs, kept out of the library's import path.

paramiko.config imports invoke, if installed, only to run the `Match exec` lines of an
ssh_config through paramiko.SSHConfig. DDM reads ssh_config itself (ddmdriver/sshconfig.py,
which never runs `Match exec`) and never uses paramiko.SSHConfig. So invoke, with the asyncio
and unittest.mock modules it imports, only slows each command's start. `import docker,
paramiko` took 0.168 s with it and 0.116 s without it (best of six, 2 vCPUs, Python 3.11,
paramiko 5.1, docker 7.1). paramiko works without invoke, which is an optional extra of it.
"""

from __future__ import annotations

import sys

OPTIONAL_MODULES = ("invoke",)


def leave_out_optional_imports() -> None:
    """Make `import invoke` fail in this process, as if invoke were not installed.

    Only command-line programs call this, before paramiko is imported. A module that is
    imported already stays, so a host program that uses invoke keeps it.
    """
    for name in OPTIONAL_MODULES:
        # A None entry in sys.modules makes `import name` raise ImportError (Python's import
        # system documentation, "The module cache").
        sys.modules.setdefault(name, None)
