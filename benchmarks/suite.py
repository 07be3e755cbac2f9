"""The benchmark scenarios and baselines, run against one lab in one process of measurement.

Every scenario creates its source volume on lab host h1 and copies it to h2 three ways: the
two hand-made baselines (host-level tar over ssh, and `docker run ... tar` over ssh) and DDM
(`ddmctl migrate` as a child process). Each copy goes to a fresh target volume. The
baselines' targets are removed when the scenario ends, not right after each copy, and every
measured copy first waits for the disk to settle (Suite.settle): on the lab machine's disk,
deleting a tree of 100,000 files slowed the next extraction from about 3 s to 20-60 s for
about two minutes, which used to fall on whichever method ran next.
"""

from __future__ import annotations

import compileall
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.measure import ProcessUsage, run_command, run_pipeline
from ddm.store import TaskStore, default_store_path
from tests.lab import Lab

log = logging.getLogger(__name__)

MIB = 1024 * 1024
GENTREE = Path(__file__).with_name("gentree.py")
BUSYBOX_IMAGE = "ddm-lab/busybox:latest"

# Suite.settle: the kernel's I/O pressure (PSI) must stay below this share of time, in percent
# over the last 10 s, for SETTLE_QUIET_POLLS polls in a row, one per second.
IO_PRESSURE_PATH = Path("/proc/pressure/io")
SETTLE_PRESSURE_PERCENT = 1.0
SETTLE_QUIET_POLLS = 3
SETTLE_LIMIT_SECONDS = 240.0
SETTLE_FALLBACK_SECONDS = 10.0

# Tree shapes per size. "full" is the size the goals are stated for; "small" is a quick
# check of the whole suite that finishes in about four minutes.
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "a": {"kind": "single", "bytes": 2048 * MIB},
        "b": {"kind": "small-files", "files": 100_000, "dirs": 1000, "file_bytes": 4096},
        "c": {"kind": "mixed", "files": 20_000, "dirs": 200, "median_bytes": 16 * 1024,
              "sigma": 1.5, "cap_bytes": 32 * MIB, "large_bytes": [104 * MIB, 120 * MIB, 136 * MIB]},
        "d": {"kind": "change", "share": 0.01, "median_bytes": 16 * 1024},
        "p": {"kind": "single", "bytes": 256 * MIB, "volumes": 3},
        "e": {"tree": {"kind": "small-files", "files": 4096, "dirs": 64, "file_bytes": 256 * 1024},
              "change": {"kind": "change", "share": 0.01, "median_bytes": 256 * 1024, "seed": 5}},
        "i": {"image_bytes": 100 * MIB, "volume": {"kind": "single", "bytes": 4 * MIB}},
        "z": {"text": {"kind": "text", "bytes": 256 * MIB, "files": 32},
              "random": {"kind": "single", "bytes": 256 * MIB}},
    },
    "small": {
        "a": {"kind": "single", "bytes": 64 * MIB},
        "b": {"kind": "small-files", "files": 2000, "dirs": 20, "file_bytes": 4096},
        "c": {"kind": "mixed", "files": 2000, "dirs": 20, "median_bytes": 16 * 1024,
              "sigma": 1.5, "cap_bytes": 4 * MIB, "large_bytes": [12 * MIB]},
        "d": {"kind": "change", "share": 0.01, "median_bytes": 16 * 1024},
        "p": {"kind": "single", "bytes": 32 * MIB, "volumes": 3},
        "e": {"tree": {"kind": "small-files", "files": 256, "dirs": 8, "file_bytes": 256 * 1024},
              "change": {"kind": "change", "share": 0.01, "median_bytes": 256 * 1024, "seed": 5}},
        "i": {"image_bytes": 4 * MIB, "volume": {"kind": "single", "bytes": 1 * MIB}},
        "z": {"text": {"kind": "text", "bytes": 64 * MIB, "files": 8},
              "random": {"kind": "single", "bytes": 64 * MIB}},
    },
}
# (e) runs its cutovers inside the benchmark process, which grows to about 110 MiB. Children
# forked after that report at least that peak RSS (ru_maxrss keeps the peak from before
# exec), so (e) comes last.
SCENARIOS = ("a", "b", "c", "d", "p", "q", "i", "z", "e")
# The packages whose modules each measured `ddmctl` process imports.
PACKAGES = ("ddm", "ddmctl", "ddmdriver", "ddmsyncer", "ddmverify")
TITLES = {
    "a": "(a) one file of random data",
    "b": "(b) many 4 KiB files",
    "c": "(c) mixed tree, log-normal sizes",
    "d": "(d) re-migration after 1% of (c) changed",
    "e": "(e) warm cutover",
    "p": "(p) three volumes, --parallel",
    "q1": "(q) eight small volumes, --parallel",
    "q2": "(q) one large and six small volumes, --parallel",
    "i": "(i) image transfer and re-run, full mode",
    "z": "(z) --compress, on a 100 Mbit/s link and on loopback",
    "z1": "(z) log-like text, 100 Mbit/s link",
    "z2": "(z) random data, 100 Mbit/s link",
    "z3": "(z) log-like text, loopback",
    "z4": "(z) random data, loopback",
}


@dataclass
class Result:
    """One measured copy: a method applied to a scenario's volume."""

    scenario: str
    method: str
    data_bytes: int
    usage: ProcessUsage
    wire_bytes: int | None = None  # archive bytes DDM relayed; None for the baselines
    phase_seconds: dict[str, float] = field(default_factory=dict)
    note: str = ""
    downtime_seconds: float | None = None  # full-mode cutovers only
    image_bytes: int | None = None  # image bytes sent; scenario (i) only

    @property
    def mib_per_second(self) -> float:
        return self.data_bytes / MIB / self.usage.seconds if self.usage.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mib_per_second"] = self.mib_per_second
        return data


class Suite:
    """Runs scenarios on a lab and collects Results."""

    def __init__(self, lab: Lab, size: str, work_dir: Path) -> None:
        self.lab = lab
        self.size = size
        self.shapes = SIZES[size]
        self.work_dir = work_dir
        self.results: list[Result] = []
        self.config_path = lab.write_ddm_config(work_dir / "ddm.yaml")
        self.env = self._isolated_env()
        compile_repository()
        self.source = lab.host("h1")
        self.target = lab.host("h2")
        self.leftovers: list[str] = []  # target volumes to remove when the scenario ends

    def _isolated_env(self) -> dict[str, str]:
        """Environment with HOME and XDG directories under the work directory, no agent."""
        home = self.work_dir / "home"
        env = {name: value for name, value in os.environ.items()
               if not name.startswith("DOCKER_") and name != "SSH_AUTH_SOCK"}
        env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
                   XDG_DATA_HOME=str(home / ".local/share"), DDM_CONFIG=str(self.config_path))
        repository = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [repository, env.get("PYTHONPATH")]))
        for name in ("HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
            Path(env[name]).mkdir(parents=True, exist_ok=True)
        return env

    # Volumes and data

    def make_source(self, name: str, shape: dict[str, Any]) -> dict[str, Any]:
        """Create volume `name` on the source host and write the scenario's tree into it."""
        self.source.docker("volume", "create", name)
        return self.generate(name, shape)

    def generate(self, name: str, shape: dict[str, Any]) -> dict[str, Any]:
        mountpoint = self.source.volume_mountpoint(name)
        completed = self.source.run(
            ["python3", str(GENTREE), mountpoint, shape["kind"], json.dumps(shape)], timeout=3600
        )
        written = json.loads(completed.stdout.strip().splitlines()[-1])
        written["volume_bytes"] = self.volume_bytes(self.source, name)
        log.info("volume %s: %s", name, written)
        return written

    def volume_bytes(self, host: Any, name: str) -> int:
        """Return the sum of the sizes of the regular files in a volume."""
        mountpoint = host.volume_mountpoint(name)
        completed = host.run(["python3", "-c", _SUM_SIZES, mountpoint])
        return int(completed.stdout.strip())

    def remove_target(self, name: str) -> None:
        self.target.docker("volume", "rm", "-f", name, check=False)

    def remove_leftovers(self) -> None:
        """Remove the target volumes that the scenario's baselines left for later."""
        while self.leftovers:
            self.remove_target(self.leftovers.pop())

    def settle(self) -> float:
        """Flush both hosts' writes and wait until the disk is quiet; return the seconds waited.

        NOTE: PSI is machine-wide, so other work on the machine also delays the start.
        """
        started = time.monotonic()
        for host in (self.source, self.target):
            host.run(["sync"], timeout=600)
        if not IO_PRESSURE_PATH.exists():
            time.sleep(SETTLE_FALLBACK_SECONDS)
            return time.monotonic() - started

        quiet_polls = 0
        pressure = 0.0
        while quiet_polls < SETTLE_QUIET_POLLS and time.monotonic() - started < SETTLE_LIMIT_SECONDS:
            time.sleep(1.0)
            pressure = parse_io_pressure(IO_PRESSURE_PATH.read_text())
            quiet_polls = quiet_polls + 1 if pressure < SETTLE_PRESSURE_PERCENT else 0

        waited = time.monotonic() - started
        if quiet_polls < SETTLE_QUIET_POLLS:
            log.warning("disk still busy after %.0f s (I/O pressure %.1f%%); measuring anyway",
                        waited, pressure)
        log.info("disk settled in %.1f s (I/O pressure %.1f%%)", waited, pressure)
        return waited

    # Baselines

    def baseline_host_tar(self, scenario: str, source_volume: str, data_bytes: int) -> Result:
        """Baseline 1: host-level tar on the source, through the controller, into tar on the target."""
        target_volume = f"{source_volume}-b1"
        self.remove_target(target_volume)
        self.target.docker("volume", "create", target_volume)
        producer = self.lab.ssh_argv(self.source, "tar", "-C", self.source.volume_mountpoint(source_volume),
                                     "-cf", "-", ".")
        consumer = self.lab.ssh_argv(self.target, "tar", "-C", self.target.volume_mountpoint(target_volume),
                                     "-xf", "-")
        self.settle()
        usage, errors = run_pipeline(producer, consumer, env=self.env)
        self.leftovers.append(target_volume)
        return self._checked(Result(scenario, "baseline 1: ssh tar, ssh tar -x", data_bytes, usage), errors)

    def baseline_docker_run(self, scenario: str, source_volume: str, data_bytes: int) -> Result:
        """Baseline 2: `docker run ... tar` on the source into `docker run -i ... tar` on the target."""
        target_volume = f"{source_volume}-b2"
        self.remove_target(target_volume)
        producer = self.lab.ssh_argv(self.source, "docker", "run", "--rm", "-v", f"{source_volume}:/v",
                                     BUSYBOX_IMAGE, "tar", "-cf", "-", "-C", "/v", ".")
        consumer = self.lab.ssh_argv(self.target, "docker", "run", "-i", "--rm", "-v", f"{target_volume}:/v",
                                     BUSYBOX_IMAGE, "tar", "-xf", "-", "-C", "/v")
        self.settle()
        usage, errors = run_pipeline(producer, consumer, env=self.env)
        self.leftovers.append(target_volume)
        return self._checked(Result(scenario, "baseline 2: docker run tar", data_bytes, usage), errors)

    def _checked(self, result: Result, errors: str) -> Result:
        if any(result.usage.exit_statuses):
            raise RuntimeError(f"{result.method} failed in scenario {result.scenario} with exit "
                               f"statuses {result.usage.exit_statuses}: {errors.strip()[-2000:]}")
        return result

    # DDM

    def ddm_migrate(
        self, scenario: str, volumes: list[tuple[str, str]], data_bytes: int, *,
        method: str = "ddm", options: tuple[str, ...] = (),
    ) -> Result:
        """Run `ddmctl migrate` as a child process and return its measured Result."""
        argv = [sys.executable, "-m", "ddmctl.cli", "--config", str(self.config_path), "migrate",
                "--from", self.source.name, "--to", self.target.name, "--yes", "--json", *options]
        for source_volume, target_volume in volumes:
            argv += ["--volume", f"{source_volume}:{target_volume}"]

        output_path = self.work_dir / "ddmctl.out"
        self.settle()
        usage, errors = run_command(argv, env=self.env, stdout_path=str(output_path))
        task = _last_json(output_path.read_text())
        if usage.exit_statuses != (0,) or task is None or task.get("state") != "succeeded":
            raise RuntimeError(f"ddmctl migrate failed in scenario {scenario} "
                               f"(exit status {usage.exit_statuses}): {errors.strip()[-2000:]}")

        wire = sum(int(volume.get("bytes_done") or 0) for volume in task["volumes"])
        return Result(scenario, method, data_bytes, usage, wire_bytes=wire,
                      phase_seconds=self.phase_seconds(task["id"]))

    def phase_seconds(self, task_id: str) -> dict[str, float]:
        """Return how long each phase of a stored task took, from its phase events."""
        store = TaskStore(default_store_path(self.env))
        try:
            events = store.get_events(task_id)
        finally:
            store.close()
        marks = [(event["message"].split()[1], event["at"]) for event in events
                 if event["kind"] == "phase"]
        finished = next((event["at"] for event in events if event["kind"] == "finished"), None)
        seconds = {}
        for index, (phase, at) in enumerate(marks):
            end = marks[index + 1][1] if index + 1 < len(marks) else finished
            if end is not None:
                seconds[phase] = end - at
        return seconds


_SUM_SIZES = """
import os, sys
total = 0
for directory, _, names in os.walk(sys.argv[1]):
    for name in names:
        path = os.path.join(directory, name)
        if os.path.isfile(path) and not os.path.islink(path):
            total += os.path.getsize(path)
print(total)
"""


def compile_repository(repository: Path | None = None) -> None:
    """Write the bytecode of DDM's packages, as `pip install` does for an installed copy.

    Without it, a run with PYTHONDONTWRITEBYTECODE set, or of a freshly changed checkout,
    compiles every changed module in each measured `ddmctl` process: 0.09 to 0.13 s of CPU
    per start on the lab machine, which no installed DDM spends.
    """
    repository = repository or Path(__file__).resolve().parent.parent
    for package in PACKAGES:
        compileall.compile_dir(str(repository / package), quiet=1)


def parse_io_pressure(text: str) -> float:
    """Return the "some avg10" figure of /proc/pressure/io: percent of the last 10 s."""
    some_lines = [line for line in text.splitlines() if line.startswith("some ")]
    if not some_lines:
        raise ValueError(f"no 'some' line in the I/O pressure text {text[:80]!r}")
    fields = dict(part.split("=", 1) for part in some_lines[0].split()[1:])
    return float(fields["avg10"])


def _last_json(text: str) -> dict[str, Any] | None:
    """Return the last JSON object printed on stdout; ddmctl --json prints the task last."""
    decoder = json.JSONDecoder()
    text = text.strip()
    start = text.rfind("\n{")
    candidates = [text[start + 1:]] if start >= 0 else []
    candidates.append(text)
    for candidate in candidates:
        try:
            value, _ = decoder.raw_decode(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def new_work_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="ddm-bench-"))
