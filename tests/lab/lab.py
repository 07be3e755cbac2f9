"""The lab: a set of Docker hosts in network namespaces, reachable over SSH on loopback.

The lab records its processes in a JSON state file in its root directory after
every change, so `down` works from another process, and a later `up` on the same
root first tears down whatever a crashed run left behind.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.lab import link, procs
from tests.lab.errors import LabError
from tests.lab.host import HostStatus, LabHost
from tests.lab.image import BUSYBOX_IMAGE, build_busybox_tar
from tests.lab.prereq import tool

logger = logging.getLogger(__name__)

STATE_FILE = "lab-state.json"
STATE_FORMAT = 1
DEFAULT_PORT = 2222
MAX_HOSTS = 20

# socat's address syntax and sshd_config split on whitespace, ':' and ',', so the
# lab root may contain only these characters.
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9_./+@%=-]*$")

# A unix socket path has at most 107 bytes, and the holder's socket is
# ROOT/hNN/holder.sock.
_MAX_ROOT_LENGTH = 90


class Lab:
    """A lab of host_count Docker hosts h1, h2, ... under root.

    Host hN listens for SSH at 127.0.0.(20+N):port, so h1 is ssh://root@127.0.0.21:2222
    with the default port. The hosts also reach each other over the lab link
    (tests.lab.link), where hN's sshd listens at 198.51.100.(10+N):22.
    """

    image = BUSYBOX_IMAGE

    def __init__(self, root: Path, host_count: int = 2, port: int = DEFAULT_PORT) -> None:
        root = Path(os.path.abspath(root))
        if not _SAFE_PATH.match(str(root)):
            raise LabError(f"invalid lab root {root}: use only letters, digits and _ . / + @ % = -")
        if len(str(root)) > _MAX_ROOT_LENGTH:
            raise LabError(
                f"invalid lab root {root}: longer than {_MAX_ROOT_LENGTH} characters, too long for the unix "
                f"socket paths below it"
            )
        if not 1 <= host_count <= MAX_HOSTS:
            raise LabError(f"invalid host count {host_count}: expected 1 to {MAX_HOSTS}")
        if not 1 <= port <= 65535:
            raise LabError(f"invalid lab port {port}: expected 1 to 65535")

        self.root = root
        self.port = port
        self._state_lock = threading.Lock()
        self._started = False
        self.link_namespace: str | None = None
        self.hosts = [LabHost(root, index, port, on_change=self._save_state) for index in range(1, host_count + 1)]

    def __repr__(self) -> str:
        return f"Lab({str(self.root)!r}, host_count={len(self.hosts)}, port={self.port})"

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.down()

    @property
    def state_path(self) -> Path:
        return self.root / STATE_FILE

    @property
    def client_dir(self) -> Path:
        return self.root / "client"

    @property
    def identity_file(self) -> Path:
        """The client's ed25519 private key, authorized for root on every host."""
        return self.client_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        """A known_hosts file with the host key of every host."""
        return self.client_dir / "known_hosts"

    def host(self, name: str) -> LabHost:
        """Return host "h1", "h2", ...; raises KeyError for an unknown name."""
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(f"no lab host {name!r}; the lab has {', '.join(host.name for host in self.hosts)}")

    @classmethod
    def attach(cls, root: Path) -> Lab:
        """Return the lab recorded in root's state file, for use by another process."""
        state = _read_state(Path(os.path.abspath(root)) / STATE_FILE)
        if state is None:
            raise LabError(f"no lab state file {Path(root) / STATE_FILE}; is the lab up?")

        lab = cls(root, host_count=len(state["hosts"]), port=int(state["port"]))
        lab._load_hosts(state)
        lab._started = True
        return lab

    def up(self) -> Lab:
        """Start every host in parallel and return self.

        On failure, tears down what was started, removes the root directory and
        re-raises the error. A LabError message then includes the last lines of the
        failed daemon's log.
        """
        started = time.monotonic()
        self._clear_earlier_lab()
        self.root.mkdir(parents=True, exist_ok=True)
        self._started = True
        self._save_state()

        try:
            self._create_client_key()
            image_tar = build_busybox_tar(self.root / "busybox.tar")
            authorized_key = (self.client_dir / "id_ed25519.pub").read_text()
            self._create_link()
            for host in self.hosts:
                host.prepare(authorized_key)

            _run_in_parallel([functools.partial(host.start, image_tar) for host in self.hosts])
            self.known_hosts.write_text("".join(host.known_hosts_line + "\n" for host in self.hosts))
        except BaseException:
            logger.error("lab in %s failed to come up; tearing it down", self.root)
            try:
                self.down()
            except LabError as teardown_error:
                logger.error("tearing down the failed lab failed too: %s", teardown_error)
            raise

        logger.info("lab with %d host(s) up in %.1f s", len(self.hosts), time.monotonic() - started)
        return self

    def limit_rate(self, rate: str | None) -> None:
        """Limit every host's SSH link to `rate` (tc syntax, e.g. "100mbit"); None removes it.

        See tests/lab/netem.py: a netem qdisc on each host namespace's loopback, which
        carries the host's SSH traffic and nothing of the machine's own.
        """
        from tests.lab.netem import limit_rate

        kinds = {limit_rate(host, rate) for host in self.hosts}
        logger.info("lab link rate: %s (%s)", rate or "unlimited", ", ".join(sorted(map(str, kinds))))

    def down(self) -> None:
        """Stop every process of the lab and remove the root directory.

        Uses the state file when it exists, so this works in a process other than
        the one that called up(). Keeps the root directory, with its logs, and raises
        LabError when a host could not be stopped.
        """
        state = _read_state(self.state_path)
        if state is not None:
            self._load_hosts(state)
        elif not self._started:
            logger.info("no lab state file in %s; nothing to tear down", self.root)
            return

        errors = _run_in_parallel([host.teardown for host in self.hosts], raise_first=False)
        if self.link_namespace is not None:
            try:
                link.remove_namespace(self.link_namespace)
                self.link_namespace = None
            except LabError as error:
                errors.append(error)
        if errors:
            self._save_state()
            raise LabError(f"lab in {self.root} not fully torn down: " + "; ".join(map(str, errors)))

        if self.root.exists():
            _unmount_below(self.root)
            shutil.rmtree(self.root)
        self._started = False
        logger.info("lab in %s is down", self.root)

    def status(self) -> list[HostStatus]:
        """Check every host's processes and whether its engine and sshd respond."""
        return [host.status() for host in self.hosts]

    def write_ddm_config(self, path: Path) -> Path:
        """Write a DDM configuration file naming every host, the client key and known_hosts."""
        lines = [
            "version: 1",
            f"identity_file: {self.identity_file}",
            f"known_hosts: {self.known_hosts}",
            "hosts:",
        ]
        for host in self.hosts:
            lines += [f"  {host.name}:", f"    url: {host.ssh_url}"]
            if host.link_address is not None:
                lines += [f"    direct_address: {host.link_address}",
                          f"    authorized_keys: {host.directory / 'authorized_keys'}"]

        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        return path

    def ssh_argv(self, host: LabHost | str, *command: str) -> list[str]:
        """Return an ssh command line that logs in to host with the client key and strict host key checking.

        It reads no ssh_config file. Run it with HOME set to a temporary directory
        (the isolated_env fixture does), so ssh never touches the real ~/.ssh.
        """
        if isinstance(host, str):
            host = self.host(host)
        return [
            tool("ssh"),
            "-F", "/dev/null",
            "-i", str(self.identity_file),
            "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10",
            "-p", str(host.port),
            f"root@{host.address}",
            *command,
        ]

    # Helpers.

    def _clear_earlier_lab(self) -> None:
        state = _read_state(self.state_path)
        if state is None:
            if self.root.exists() and any(self.root.iterdir()):
                raise LabError(
                    f"{self.root} is not empty and contains no {STATE_FILE}; choose a missing or empty directory"
                )
            return

        owner = state.get("owner")
        owner_record = procs.ProcessRecord.from_json(owner) if owner else None
        if owner_record is not None and owner_record.pid != os.getpid() and procs.is_running(owner_record):
            raise LabError(
                f"the lab in {self.root} is in use by process {owner_record.pid}; stop that process "
                f"or choose another lab root and port"
            )

        logger.warning("tearing down the earlier lab recorded in %s", self.state_path)
        Lab.attach(self.root).down()

    def _create_client_key(self) -> None:
        self.client_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", "ddm-lab-client", "-f",
             str(self.identity_file)],
            check=True,
            capture_output=True,
        )

    def _create_link(self) -> None:
        """Create the link namespace, recorded in the state file before it exists."""
        link.check_network_unused()
        self.link_namespace = link.namespace_name(self.port)
        self._save_state()
        link.create_namespace(self.link_namespace)
        for host in self.hosts:
            host.link_namespace = self.link_namespace

    def _load_hosts(self, state: dict[str, Any]) -> None:
        self.link_namespace = state.get("link_namespace")
        hosts_by_index = {host.index: host for host in self.hosts}
        for data in state["hosts"]:
            host = hosts_by_index.get(int(data["index"]))
            if host is None:
                host = LabHost(self.root, int(data["index"]), self.port, on_change=self._save_state)
                self.hosts.append(host)
            host.load_json(data)
            host.link_namespace = self.link_namespace

    def _save_state(self) -> None:
        owner = procs.record_process(os.getpid())
        state = {
            "format": STATE_FORMAT,
            "port": self.port,
            "owner": owner.to_json() if owner is not None else None,
            "link_namespace": self.link_namespace,
            "hosts": [host.to_json() for host in self.hosts],
        }
        with self._state_lock:
            if not self.root.is_dir():
                return
            temporary = self.state_path.with_suffix(".tmp")
            temporary.write_text(json.dumps(state, indent=2) + "\n")
            os.replace(temporary, self.state_path)


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None

    try:
        state: dict[str, Any] = json.loads(text)
    except json.JSONDecodeError as error:
        raise LabError(f"invalid lab state file {path}: {error}; stop its processes by hand, then remove it") from error
    if state.get("format") != STATE_FORMAT:
        raise LabError(f"lab state file {path} has format {state.get('format')}, expected {STATE_FORMAT}")
    return state


def _run_in_parallel(tasks: Iterable[Callable[[], None]], *, raise_first: bool = True) -> list[BaseException]:
    """Run the tasks in threads and wait for all of them; raise or return their exceptions."""
    tasks = list(tasks)
    with ThreadPoolExecutor(max_workers=max(1, len(tasks))) as pool:
        futures = [pool.submit(task) for task in tasks]
    errors = [error for error in (future.exception() for future in futures) if error is not None]
    if errors and raise_first:
        raise errors[0]
    return errors


def _unmount_below(root: Path) -> None:
    """Unmount anything mounted at or below root in this mount namespace.

    The lab's mounts live in private mount namespaces that vanish with their
    processes, so this finds nothing unless a host was set up by other means. It
    keeps shutil.rmtree from descending into a mounted filesystem.
    """
    prefix = str(root)
    mountpoints: list[str] = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            mountpoint = line.split()[4].replace("\\040", " ")
            if mountpoint == prefix or mountpoint.startswith(prefix + "/"):
                mountpoints.append(mountpoint)

    for mountpoint in sorted(mountpoints, key=len, reverse=True):
        logger.warning("unmounting leftover mount %s", mountpoint)
        subprocess.run([tool("umount"), "--lazy", mountpoint], check=True, capture_output=True)
