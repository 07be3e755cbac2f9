"""The `--compress` choice of a task: none, lz4, zstd, or auto (on only when it is faster).

Compression applies to the host data path only (ddmdriver.codec), because the Engine API
archive cannot be compressed by the daemon. `--compress auto` decides per volume from two
measurements:

* the link rate: the slower of the two hosts' read rates over SSH, measured for half a
  second each, which bounds an uncompressed copy through this process;
* a sample compression on the source host: the first SAMPLE_BYTES of the volume's tar
  stream piped through each codec the hosts have. The host times the whole pipeline, so
  the rate includes reading the files.

A compressed copy is predicted to move min(compress rate, link rate / ratio) bytes of the
volume per second. Auto picks the codec with the highest prediction and turns compression
on when that beats the link rate by AUTO_MARGIN. The decision, its reason and the numbers
are recorded as a task event and in the task's state under "compression".
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ddm.errors import DDMError, UsageError
from ddm.text import format_bytes
from ddmdriver.codec import AUTO_CANDIDATES, DEFAULT_CODECS, Codec

log = logging.getLogger(__name__)

COMPRESS_CHOICES = ("none", "lz4", "zstd", "auto")
SAMPLE_BYTES = 4 * 1024 * 1024
MIN_SAMPLE_BYTES = 256 * 1024
# The link probe reads /dev/zero from each host for LINK_PROBE_SECONDS after the first byte,
# at most LINK_PROBE_MAX_BYTES. A probe of a fixed 4 MiB (ddmsyncer.linkprobe) measured 3 to
# 5 MiB/s on links that copies crossed at 11 to 33 MiB/s on the loaded benchmark machine.
# There, starting the command and waiting for its exit weighed more than the transfer.
LINK_PROBE_SECONDS = 0.5
LINK_PROBE_MAX_BYTES = 64 * 1024 * 1024
LINK_PROBE_CHUNK_BYTES = 256 * 1024
# Compression must predict a copy at least this much faster, because the prediction leaves
# out the decoding on the target and in this process, and the sample is the first files only.
AUTO_MARGIN = 1.2
# NOTE: the controller's decoding is not measured. zstandard decoded log-like text at about
# 280 MiB/s of output on the 2-core benchmark machine, so on links near that rate auto can
# pick a codec that makes the copy slower.
SAMPLE_TIMEOUT_SECONDS = 120.0
EXTRA_KEY = "compression"

# Runs on the source host: counts the sample's bytes (which also reads the files into the
# page cache), then times tar | head | codec | wc with GNU date's nanoseconds, once per
# codec, printing one line "INPUT OUTPUT NANOSECONDS" each.
_SAMPLE_START = ['limit=$1', 'shift', 'input=$("$@" 2>/dev/null | head -c "$limit" | wc -c)']
_SAMPLE_CODEC = ["start=$(date +%s%N)",
                 'output=$("$@" 2>/dev/null | head -c "$limit" | {codec} | wc -c)',
                 "end=$(date +%s%N)",
                 'echo "$input $output $((end - start))"']


def validate_compress(requested: str | None, data_path: str = "auto", route: str = "relay") -> str:
    """Return the checked `--compress` value.

    An explicit codec needs the host data path and the relay route, because the direct
    route's host-to-host stream is not compressed.
    """
    value = requested or "none"
    if value not in COMPRESS_CHOICES:
        raise UsageError(f"invalid compression {value!r}", hint="use none, lz4, zstd or auto")
    if value in DEFAULT_CODECS and route == "direct":
        raise UsageError(f"--compress {value} is not supported with --route direct",
                         hint="use --route relay to compress, or --compress none")
    if value in DEFAULT_CODECS and data_path == "engine":
        raise UsageError(f"--compress {value} needs the host data path, but --data-path is engine",
                         hint="the Engine API archive cannot be compressed; use --data-path auto "
                         "or host, or --compress none")
    return value


def reject_full_mode_codec(requested: str | None) -> None:
    """Raise UsageError for an explicit codec (lz4, zstd) in full mode, which never compresses.

    `auto` and `none` pass, because both leave the stream uncompressed when nothing applies.
    """
    if requested in DEFAULT_CODECS:
        raise UsageError(f"--compress {requested} is for volumes mode",
                         hint="full mode does not compress its transfers; leave out --compress "
                         "in full mode")


@dataclass(frozen=True)
class Sample:
    """A sample compression of a volume's tar stream on the source host."""

    codec: Codec
    input_bytes: int
    output_bytes: int
    seconds: float

    @property
    def ratio(self) -> float:
        return self.output_bytes / self.input_bytes if self.input_bytes else 1.0

    @property
    def bytes_per_second(self) -> float:
        return self.input_bytes / max(self.seconds, 1e-6)

    def to_dict(self) -> dict[str, Any]:
        # Four significant digits, because data of zeros compresses to a ratio below 0.0001.
        return {**self.codec.to_dict(), "input_bytes": self.input_bytes,
                "output_bytes": self.output_bytes, "ratio": float(f"{self.ratio:.4g}"),
                "compress_bytes_per_second": round(self.bytes_per_second)}


@dataclass(frozen=True)
class Decision:
    """The codec of one volume's copy (None: uncompressed), why, and the numbers behind it."""

    codec: Codec | None
    reason: str
    requested: str
    measurements: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.codec.label if self.codec else "none"

    def to_dict(self) -> dict[str, Any]:
        return {"requested": self.requested, "codec": self.codec.name if self.codec else None,
                "level": self.codec.level if self.codec else None, "reason": self.reason,
                **self.measurements}


def predicted_rate(sample: Sample, link_bytes_per_second: float) -> float:
    """Return the volume bytes per second a copy compressed like `sample` is predicted to reach."""
    return min(sample.bytes_per_second, link_bytes_per_second / max(sample.ratio, 1e-3))


def decide_auto(link_bytes_per_second: float | None, samples: list[Sample]) -> tuple[Codec | None, str]:
    """Pick the codec that makes the copy fastest, or None when no codec beats the plain link.

    Pure function of the measurements, so it is tested with given numbers.
    """
    if link_bytes_per_second is None or link_bytes_per_second <= 0:
        return None, "the link rate could not be measured"
    if not samples:
        return None, "no compression sample could be taken"

    best = max(samples, key=lambda sample: predicted_rate(sample, link_bytes_per_second))
    best_rate = predicted_rate(best, link_bytes_per_second)
    numbers = (f"link {format_rate(link_bytes_per_second)}; {best.codec.label} ratio "
               f"{format_ratio(best.ratio)} at {format_rate(best.bytes_per_second)} predicts "
               f"{format_rate(best_rate)}")
    if best_rate >= link_bytes_per_second * AUTO_MARGIN:
        return best.codec, f"{best.codec.label} is faster ({numbers})"
    return None, f"compression is not faster ({numbers})"


def format_rate(bytes_per_second: float) -> str:
    """Format a rate with binary units, as `ddmctl plan` prints the estimate's link rate."""
    return f"{format_bytes(round(bytes_per_second))}/s"


def format_ratio(ratio: float) -> str:
    """Format a compression ratio (compressed / original) with two significant digits.

    Below 0.01 it gets more decimals, so a tiny measured ratio never reads as 0.00.
    """
    if ratio <= 0:
        raise ValueError(f"compression ratio {ratio} is not a measured ratio")
    decimals = max(2, 1 - math.floor(math.log10(ratio)))
    return f"{ratio:.{decimals}f}"


def sample_compression(engine: Any, access: Any, directory: str, codecs: list[Codec],
                       sample_bytes: int = SAMPLE_BYTES) -> list[Sample]:
    """Compress the first `sample_bytes` of the directory's tar stream on its host with each
    codec, in one SSH command, and return the samples timed there.

    Raises ValueError when the host's output is not one line of three numbers per codec
    (for example when its `date` has no %N).
    """
    from ddmdriver.hostpath import create_argv

    tar_argv = create_argv(access, directory)[len(access.prefix):]
    parts = list(_SAMPLE_START)
    for codec in codecs:
        parts += [part.replace("{codec}", " ".join(codec.compress_argv())) for part in _SAMPLE_CODEC]
    argv = access.argv("sh", "-c", "; ".join(parts), "ddm-sample", str(sample_bytes), *tar_argv)
    result = engine.ssh.exec_command(argv, timeout=SAMPLE_TIMEOUT_SECONDS)

    lines = [line.split() for line in result.stdout.splitlines()]
    valid = all(len(fields) == 3 and all(part.isdigit() for part in fields) for fields in lines)
    if result.exit_status != 0 or len(lines) != len(codecs) or not valid:
        raise ValueError(f"sample compression on {engine.host.name} returned "
                         f"{result.stdout[:120]!r} and exit status {result.exit_status}")
    samples = []
    for codec, fields in zip(codecs, lines):
        sample = Sample(codec, int(fields[0]), int(fields[1]), int(fields[2]) / 1e9)
        if sample.input_bytes > 0 and sample.output_bytes == 0:
            # Every codec writes a frame header, so no output means the codec failed, and its
            # ratio of 0 would predict an endless rate.
            log.warning("sample compression with %s on %s produced no output; codec skipped",
                        codec.label, engine.host.name)
            continue
        samples.append(sample)
    return samples


class CompressionChooser:
    """Compression decisions and byte counts of a task's volumes, shared by its worker threads."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        options = runner.task.spec.options
        self.requested = validate_compress(options.get("compress"),
                                           options.get("data_path", "auto"),
                                           options.get("route") or "relay")
        self.direct_route = options.get("route") == "direct"
        self.decisions: dict[int, Decision] = {}
        self.link_rates: dict[str, float | None] = {}  # measured once per task run
        self._lock = threading.Lock()

    def choose(self, item: Any, route: Any) -> Decision:
        """Decide once per run for `item` on its `route`, and record the decision as an event."""
        with self._lock:
            if item.position in self.decisions:
                return self.decisions[item.position]
        if self.direct_route:
            decision = Decision(None, "the direct route's stream is not compressed", self.requested)
        else:
            decision = choose_compression(self.runner.source, self.runner.target, route,
                                          self.requested, volume=item.source,
                                          link_rates=self.link_rates)
        with self._lock:
            self.decisions[item.position] = decision
        if decision.requested != "none":
            self.runner.record("info", "compression", f"volume {item.source!r}: compression "
                               f"{decision.label} ({decision.reason})", position=item.position,
                               compression=decision.to_dict())
        self._store(item, decision.to_dict())
        return decision

    def codec_for(self, item: Any) -> Codec | None:
        with self._lock:
            decision = self.decisions.get(item.position)
        return decision.codec if decision else None

    def record_result(self, item: Any, stream_bytes: int, wire_bytes: int) -> None:
        """Store the tar stream's and the wire's byte counts of a finished copy."""
        self._store(item, {"stream_bytes": stream_bytes, "wire_bytes": wire_bytes})
        codec = self.codec_for(item)
        if codec is not None and stream_bytes:
            self.runner.record("info", "compression", f"volume {item.source!r}: {stream_bytes} "
                               f"tar bytes sent as {wire_bytes} {codec.name} bytes "
                               f"({wire_bytes / stream_bytes:.1%})", position=item.position,
                               stream_bytes=stream_bytes, wire_bytes=wire_bytes)

    def _store(self, item: Any, values: dict[str, Any]) -> None:
        store, task_id = self.runner.store, self.runner.task.id
        with self._lock:
            records = dict(store.get_extra(task_id).get(EXTRA_KEY, {}))
            records[str(item.position)] = {**records.get(str(item.position), {}), **values}
            store.set_extra(task_id, **{EXTRA_KEY: records})


def choose_compression(source: Any, target: Any, route: Any, requested: str, *,
                       volume: str, link_rates: dict[str, float | None] | None = None) -> Decision:
    """Return the compression of one volume on its route (a ddmsyncer.datapath.Route).

    `link_rates` keeps the measured link rate for the next volume of the same task.

    Raises UsageError when an explicit codec cannot be used: the route is the Engine API,
    or a host lacks the codec's command.
    """
    from ddmsyncer.datapath import DataPath

    if requested == "none":
        return Decision(None, "--compress none", requested)
    if route.data_path is not DataPath.HOST:
        if requested in DEFAULT_CODECS:
            raise UsageError(f"--compress {requested} is not possible for volume {volume!r}: it is "
                             f"copied through the Engine API ({route.reason})",
                             hint="use --compress auto or none")
        return Decision(None, "the Engine API archive cannot be compressed", requested)

    available = _codecs_on_both(route)
    if requested in DEFAULT_CODECS:
        if requested not in available:
            missing = [access.host_name for access in (route.source_access, route.target_access)
                       if requested not in access.codecs]
            raise UsageError(f"--compress {requested} is not possible for volume {volume!r}: "
                             f"{requested} not found on host {', '.join(missing)}",
                             hint=f"install the Debian package {requested} there, or use "
                             "--compress auto or none")
        return Decision(DEFAULT_CODECS[requested], f"--compress {requested}", requested)

    candidates = [codec for codec in AUTO_CANDIDATES if codec.name in available]
    if not candidates:
        return Decision(None, "neither zstd nor lz4 is on both hosts", requested)
    return _measure_and_decide(source, target, route, candidates, requested,
                               {} if link_rates is None else link_rates)


def plan_compression(source: Any, target: Any, route: Any, options: dict[str, Any],
                     volume: str, *, measure: bool = True,
                     link_rate: float | None = None) -> dict[str, Any]:
    """Return the plan's compression entry of one volume, measured like a run's.

    `link_rate` is the copy rate the plan measured (ddmsyncer.linkprobe), so `auto` decides
    with the same rate the plan's estimate uses instead of probing the link again. An
    explicit codec also gets a sample of the volume, so the estimate has its ratio. Without
    `measure`, nothing is sampled and `auto` is left undecided.
    """
    requested = validate_compress(options.get("compress"), options.get("data_path", "auto"),
                                  options.get("route") or "relay")
    if options.get("route") == "direct":
        return Decision(None, "the direct route's stream is not compressed", requested).to_dict()
    if requested == "auto" and not measure:
        return Decision(None, "not measured (--probe-size 0); the run measures the link and "
                        "samples the volume", requested).to_dict()

    decision = choose_compression(source, target, route, requested, volume=volume,
                                  link_rates={"copy": link_rate} if measure else None)
    if decision.codec is None or requested == "auto" or not measure:
        return decision.to_dict()

    samples: list[Sample] = []
    try:
        samples = sample_compression(source, route.source_access, route.source_directory,
                                     [decision.codec])
    except (DDMError, ValueError, OSError) as error:
        log.warning("sample compression failed: %s", error)
    measurements = {"link_bytes_per_second": round(link_rate) if link_rate else None,
                    "samples": [sample.to_dict() for sample in samples]}
    return Decision(decision.codec, decision.reason, requested, measurements).to_dict()


def incremental_codec(runner: Any, item: Any, source_mountpoint: str) -> Codec | None:
    """Choose the codec of an incremental update's tar stream, like a full copy's.

    The incremental path runs tar as the SSH login user, so it needs no sudo prefix, but the
    codec commands come from the same host probe. Auto samples the whole volume, not the
    changed files only.
    """
    from ddmsyncer.datapath import DataPath, Route

    staged = runner.staged
    chooser = staged.compression
    if chooser.requested == "none":
        return None
    source_access = staged.probes.probe(runner.source).access
    target_access = staged.probes.probe(runner.target).access
    if source_access is None or target_access is None:
        if chooser.requested in DEFAULT_CODECS:
            raise UsageError(f"--compress {chooser.requested} is not possible for volume "
                             f"{item.source!r}: the hosts do not allow host commands as root",
                             hint="use --compress auto or none")
        return None
    route = Route(DataPath.HOST, "incremental update", source_access, target_access,
                  source_mountpoint)
    return chooser.choose(item, route).codec


def measure_link_rate(source: Any, target: Any) -> float | None:
    """Return the slower of the two hosts' read rates over SSH in bytes per second, or None.

    NOTE: a copy writes to the target, but this reads from it, so an asymmetric link to the
    target is measured in the wrong direction.
    """
    rates = []
    for engine in (source, target):
        try:
            rates.append(_measure_read_rate(engine))
        except (DDMError, OSError, EOFError) as error:
            log.warning("link probe of host %s failed: %s", engine.host.name, error)
            return None
    return min(rates)


def _measure_read_rate(engine: Any) -> float:
    """Read /dev/zero for LINK_PROBE_SECONDS from the first byte on; return bytes per second."""
    argv = ["head", "-c", str(LINK_PROBE_MAX_BYTES), "/dev/zero"]
    channel = engine.ssh.open_command(argv, timeout=SAMPLE_TIMEOUT_SECONDS)
    try:
        channel.settimeout(SAMPLE_TIMEOUT_SECONDS)
        channel.recv(LINK_PROBE_CHUNK_BYTES)
        started = time.monotonic()
        received = 0
        seconds = 0.0
        while seconds < LINK_PROBE_SECONDS and (chunk := channel.recv(LINK_PROBE_CHUNK_BYTES)):
            received += len(chunk)
            seconds = time.monotonic() - started
    finally:
        channel.close()
    if received == 0:
        raise OSError(f"head -c {LINK_PROBE_MAX_BYTES} /dev/zero on {engine.host.name} sent "
                      "one chunk only")
    return received / max(seconds, 1e-6)


def _codecs_on_both(route: Any) -> frozenset[str]:
    source_codecs = getattr(route.source_access, "codecs", frozenset())
    target_codecs = getattr(route.target_access, "codecs", frozenset())
    return frozenset(source_codecs) & frozenset(target_codecs)


def _measure_and_decide(source: Any, target: Any, route: Any, candidates: list[Codec],
                        requested: str, link_rates: dict[str, float | None]) -> Decision:
    if "copy" not in link_rates:
        link_rates["copy"] = measure_link_rate(source, target)
    link_rate = link_rates["copy"]

    samples: list[Sample] = []
    try:
        samples = sample_compression(source, route.source_access, route.source_directory,
                                     candidates)
    except (DDMError, ValueError, OSError) as error:
        log.warning("sample compression failed: %s", error)

    measurements: dict[str, Any] = {
        "link_bytes_per_second": round(link_rate) if link_rate else None,
        "samples": [sample.to_dict() for sample in samples],
    }
    if samples and samples[0].input_bytes < MIN_SAMPLE_BYTES:
        return Decision(None, f"the volume's tar stream is only {samples[0].input_bytes} bytes, "
                        "too little to gain from compression", requested, measurements)
    codec, reason = decide_auto(link_rate, samples)
    return Decision(codec, reason, requested, measurements)
