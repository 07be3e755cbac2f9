"""Limit a lab host's SSH link to a rate with `tc qdisc ... netem rate` inside its namespace.

Kernels built without sch_netem (the 6.18 kernel of the development machine has none)
get a token bucket filter (`tbf`) with the same rate instead. `limit_rate` returns the
qdisc kind it used.

The controller's SSH connection enters a host through the socat relay: outside, socat
listens on the machine's loopback; inside, `nsenter --net` runs a second socat that
connects to sshd at 127.0.0.1:22 on the namespace's own `lo`. A netem qdisc on that `lo`
therefore shapes every byte of the host's SSH traffic. Both directions leave through the
same `lo`, so they share the rate. The machine's own interfaces are never touched: the
command runs through the host's nsenter, in the namespace that the lab created.
"""

from __future__ import annotations

import re
from typing import Any

from tests.lab.errors import LabError
from tests.lab.prereq import tool

# tc's rate units (tc(8), "RATES"): bit, kbit, mbit, gbit and their byte forms.
RATE_PATTERN = re.compile(r"[1-9][0-9]*(\.[0-9]+)?(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)")
LOOPBACK = "lo"
# tbf's bucket must hold at least one packet, and lo's MTU is 64 KiB. 512 KiB is 42 ms at
# 100 Mbit/s; packets wait at most TBF_LATENCY in the queue before tbf drops them.
TBF_BURST = "512kb"
TBF_LATENCY = "100ms"


def validate_rate(rate: str) -> str:
    """Return `rate` when tc accepts its form (e.g. 100mbit); raise LabError otherwise."""
    if not RATE_PATTERN.fullmatch(rate):
        raise LabError(f"invalid link rate {rate!r}; give a number and a tc unit, e.g. 100mbit")
    return rate


def limit_rate(host: Any, rate: str | None) -> str | None:
    """Shape `host`'s SSH link to `rate` (e.g. "100mbit"), or remove the limit when None.

    Returns the qdisc kind used ("netem" or "tbf"), or None when the limit was removed.
    """
    if rate is None:
        completed = host.run([tool("tc"), "qdisc", "del", "dev", LOOPBACK, "root"], check=False)
        # tc fails when no root qdisc was added; that is already the unlimited state.
        if completed.returncode != 0 and "No such file" not in completed.stderr \
                and "Cannot delete qdisc with handle of zero" not in completed.stderr:
            raise LabError(f"{host.name}: removing the link limit failed: {completed.stderr.strip()}")
        return None

    replace = [tool("tc"), "qdisc", "replace", "dev", LOOPBACK, "root"]
    completed = host.run([*replace, "netem", "rate", validate_rate(rate)], check=False)
    if completed.returncode == 0:
        return "netem"
    if "qdisc kind is unknown" not in completed.stderr:
        raise LabError(f"{host.name}: tc netem rate {rate} failed: {completed.stderr.strip()}")
    host.run([*replace, "tbf", "rate", rate, "burst", TBF_BURST, "latency", TBF_LATENCY])
    return "tbf"


def current_qdisc(host: Any) -> str:
    """Return `tc qdisc show dev lo` inside the host's namespace."""
    return host.run([tool("tc"), "qdisc", "show", "dev", LOOPBACK]).stdout.strip()
