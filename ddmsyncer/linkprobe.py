"""Measure the link between the controller and a host, for the plan's duration estimate.

The probe reads `probe_bytes` of /dev/zero from the host over its SSH connection and writes
as many bytes to /dev/null on it. Nothing on the host changes. The result is a rate of the SSH
path only, timed without opening the channel. A real copy also waits for the engines and
disks, but it runs the source read and the target write at the same time, so an estimate
built from this rate can be off in either direction. Measured on the lab (two engines on one
loaded 2-core machine, a volume with one 32 MiB random file, `ddmctl plan` then `ddmctl
migrate --verify full`): estimates of 2.8 and 3.0 s, real runs of 2.2 and 2.3 s.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from ddm.errors import DDMError

log = logging.getLogger(__name__)

PROBE_CHUNK_BYTES = 256 * 1024
PROBE_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class LinkRate:
    """Measured SSH throughput between the controller and one host, in bytes per second."""

    host: str
    read_bytes_per_second: float | None  # host -> controller
    write_bytes_per_second: float | None  # controller -> host
    probe_bytes: int
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_link(engine: Any, probe_bytes: int) -> LinkRate:
    """Time a /dev/zero read and a /dev/null write of `probe_bytes` over the host's SSH link.

    Hosts reached without SSH (unix://, tcp://) are not measured, and a failed probe gives
    None rates with the reason in `note`; neither raises.
    """
    name = engine.host.name
    if engine.ssh is None or probe_bytes <= 0:
        reason = "not reached over SSH" if engine.ssh is None else "probe disabled"
        return LinkRate(name, None, None, probe_bytes, note=reason)

    try:
        read_rate = _measure_read(engine, probe_bytes)
        write_rate = _measure_write(engine, probe_bytes)
    except (DDMError, OSError, EOFError) as error:
        log.warning("link probe of host %s failed: %s", name, error)
        return LinkRate(name, None, None, probe_bytes, note=f"probe failed: {error}")
    return LinkRate(name, read_rate, write_rate, probe_bytes)


def _measure_read(engine: Any, probe_bytes: int) -> float:
    """Return the read rate, timed from the first byte, so that opening the channel and
    starting the command do not count."""
    channel = engine.ssh.open_command(["head", "-c", str(probe_bytes), "/dev/zero"],
                                      timeout=PROBE_TIMEOUT_SECONDS)
    try:
        channel.settimeout(PROBE_TIMEOUT_SECONDS)
        first = channel.recv(PROBE_CHUNK_BYTES)
        started = time.monotonic()
        received = len(first)
        while chunk := channel.recv(PROBE_CHUNK_BYTES):
            received += len(chunk)
        seconds = time.monotonic() - started
        status = channel.recv_exit_status()
    finally:
        channel.close()
    if status != 0 or received != probe_bytes:
        raise OSError(f"head -c {probe_bytes} /dev/zero returned {received} bytes and exit "
                      f"status {status}")
    return (received - len(first)) / max(seconds, 1e-6)


def _measure_write(engine: Any, probe_bytes: int) -> float:
    chunk = bytes(PROBE_CHUNK_BYTES)
    channel = engine.ssh.open_command(["dd", "of=/dev/null", "bs=65536"],
                                      timeout=PROBE_TIMEOUT_SECONDS)
    started = time.monotonic()  # after the channel is open, as for the read
    try:
        channel.settimeout(PROBE_TIMEOUT_SECONDS)
        remaining = probe_bytes
        while remaining > 0:
            part = chunk[: min(remaining, len(chunk))]
            channel.sendall(part)
            remaining -= len(part)
        channel.shutdown_write()
        # dd writes only a few lines of statistics to stderr, far less than the SSH window.
        status = channel.recv_exit_status()
    finally:
        channel.close()
    seconds = time.monotonic() - started
    if status != 0:
        raise OSError(f"dd of=/dev/null exited with status {status}")
    return probe_bytes / max(seconds, 1e-6)
