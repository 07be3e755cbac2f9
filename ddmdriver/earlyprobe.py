"""The host probe started as soon as a host's SSH connection is authenticated.

Every SSH command makes the host start the account's login shell, which takes 0.15 to 0.6 s
on the lab's hosts (see docs/benchmarks.md, "Fixed cost of the relay route"). Opening a
host's engine starts one such command, `docker system dial-stdio`, and the probe of the
host data path (hostpath.PROBE_SCRIPT) is another. Started one after the other, both shell
starts lie on the prepare phase's critical path. StartedProbe starts the probe on the fresh
connection, so both shells start at once. The probe needs the mountpoints it checks, which
only the engine can tell, so it reads them from stdin once finish() sends them. The target's
probe also reports the free space of the engine's volume directory, which saves the target
the login shell of a separate `df` command.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import paramiko

from ddm.errors import DDMError
from ddmdriver import hostpath
from ddmdriver.ssh import collect_output

logger = logging.getLogger(__name__)


class StartedProbe:
    """hostpath.PROBE_SCRIPT running on a host, waiting on stdin for the directories to check."""

    def __init__(self, ssh: Any, host_name: str) -> None:
        """Start the probe on `ssh`, an authenticated ddmdriver.ssh.SSHConnection.

        Raises DDMError or ValueError when the command cannot start.
        """
        self.host_name = host_name
        argv = ["sh", "-c", hostpath.PROBE_SCRIPT, "ddm-probe", *hostpath.PROBED_CODECS, "--"]
        self._channel: paramiko.Channel = ssh.open_command(argv)

    def finish(self, directories: Sequence[str] = (),
               free_space_path: str | None = None) -> hostpath.HostProbe:
        """Send `directories` and `free_space_path`, wait for the probe and return its result.

        HostProbe.free_bytes is the space available under `free_space_path`. A path that
        contains a newline cannot be sent as a line. Such a directory is left out of
        HostProbe.checked, and such a free-space path leaves free_bytes None. The caller
        then runs a command of its own (datapath uses hostpath.check_directory).
        """
        sendable = [directory for directory in directories if "\n" not in directory]
        lines = "".join(f"readable {directory}\n" for directory in sendable)
        if free_space_path is not None and "\n" not in free_space_path:
            lines += f"free {free_space_path}\n"
        try:
            self._send(lines.encode("utf-8", "surrogateescape"))
            result = collect_output(self._channel, hostpath.PROBE_TIMEOUT_SECONDS)
        except (TimeoutError, OSError, EOFError, paramiko.SSHException, DDMError) as error:
            return hostpath.HostProbe(None, f"probing {self.host_name} failed: {error}")
        finally:
            self._channel.close()
        return hostpath.parse_probe_output(self.host_name, result.exit_status, result.stdout,
                                           result.stderr, sendable)

    def close(self) -> None:
        """Stop the probe without a result; its script then reads end of file and exits."""
        self._channel.close()

    def _send(self, data: bytes) -> None:
        try:
            if data:
                self._channel.sendall(data)
        except OSError as error:
            # The script exits before it reads stdin when the account has no root access,
            # and its output reports that, so the directories are not needed.
            logger.debug("probe on %s took no directories: %s", self.host_name, error)
        self._channel.shutdown_write()


def start_probe(ssh: Any, host_name: str) -> StartedProbe | None:
    """Start the probe on `ssh`; return None, after logging why, when it cannot start."""
    try:
        return StartedProbe(ssh, host_name)
    except (DDMError, ValueError) as error:
        logger.info("starting the probe of %s early failed: %s; it is probed later with a "
                    "command of its own", host_name, error)
        return None
