"""One lab host: a network and mount namespace with its own dockerd and sshd.

Host hN lives in namespaces held open by a holder process (holder.py), which also
starts the host's dockerd and sshd and reaps processes orphaned inside. Inside,
only `lo` is up and no route leads out. /run is a tmpfs, and /var/lib/docker and
/etc/docker are bind mounts of directories under the lab root, so every host has
its own images, volumes and engine ID. sshd listens on 127.0.0.1:22 inside the namespace, and also on the
host's lab link address (tests.lab.link) when the lab has a link. A socat relay on the machine's loopback, at 127.0.0.(20+N) and the lab
port, forwards each connection into the namespace with nsenter.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.lab import link, procs
from tests.lab.errors import LabCommandError, LabError
from tests.lab.image import BUSYBOX_IMAGE, BUSYBOX_IMAGE_CMD
from tests.lab.prereq import SYSTEM_PATH, tool
from tests.lab.procs import ProcessRecord

logger = logging.getLogger(__name__)

# Inside each host's namespaces. /var/run is a symlink to /run on Debian, so
# /var/run/docker.sock, Docker's default, reaches the same socket.
ENGINE_SOCKET = "/run/docker.sock"
DOCKER_ROOT = "/var/lib/docker"
SSHD_ADDRESS = "127.0.0.1"
SSHD_PORT = 22

COMPONENTS = ("holder", "dockerd", "sshd", "relay")

_DAEMON_ENV = {"PATH": SYSTEM_PATH, "HOME": "/root", "LANG": "C.UTF-8"}
_ENGINE_START_SECONDS = 60.0
_SSH_START_SECONDS = 30.0
_DOCKERD_STOP_SECONDS = 30.0
_LOG_TAIL_LINES = 25
_HOLDER_SCRIPT = Path(__file__).with_name("holder.py")


@dataclass(frozen=True)
class HostStatus:
    """Whether each part of a lab host runs and responds."""

    name: str
    holder: bool
    dockerd: bool
    engine: bool
    sshd: bool
    relay: bool
    ssh: bool

    @property
    def ok(self) -> bool:
        return all((self.holder, self.dockerd, self.engine, self.sshd, self.relay, self.ssh))


class LabHost:
    """A Docker host of the lab, reachable at ssh://root@127.0.0.(20+index):port."""

    def __init__(self, root: Path, index: int, port: int, on_change: Callable[[], None] | None = None) -> None:
        self.index = index
        self.name = f"h{index}"
        self.address = f"127.0.0.{20 + index}"
        self.port = port
        self.directory = root / self.name
        self.docker_root = self.directory / "docker"
        self.net_namespace: str | None = None
        self.link_namespace: str | None = None  # set by Lab before prepare() when it has a link
        self.processes: dict[str, ProcessRecord | None] = dict.fromkeys(COMPONENTS)
        self._on_change = on_change

    def __repr__(self) -> str:
        return f"LabHost({self.name!r}, {self.address}:{self.port})"

    @property
    def ssh_url(self) -> str:
        return f"ssh://root@{self.address}:{self.port}"

    @property
    def link_address(self) -> str | None:
        """The host's address on the lab link, where its sshd listens on port 22, or None."""
        if self.link_namespace is None:
            return None
        return link.host_address(self.index)

    @property
    def host_key_path(self) -> Path:
        return self.directory / "ssh_host_ed25519_key"

    @property
    def holder_socket(self) -> Path:
        return self.directory / "holder.sock"

    @property
    def known_hosts_line(self) -> str:
        """The known_hosts line for this host's key, e.g. "[127.0.0.21]:2222 ssh-ed25519 AAAA..."."""
        key_type, key_data = self.host_key_path.with_suffix(".pub").read_text().split()[:2]
        return f"[{self.address}]:{self.port} {key_type} {key_data}"

    @property
    def engine_socket(self) -> Path:
        """The engine's unix socket as seen from outside the namespaces, for docker-py."""
        return Path(f"/proc/{self._holder_pid()}/root{ENGINE_SOCKET}")

    # State file support.

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "net_namespace": self.net_namespace,
            "processes": {
                name: record.to_json() if record is not None else None for name, record in self.processes.items()
            },
        }

    def load_json(self, data: Mapping[str, Any]) -> None:
        self.net_namespace = data.get("net_namespace")
        for name in COMPONENTS:
            record = data.get("processes", {}).get(name)
            self.processes[name] = ProcessRecord.from_json(record) if record else None

    # Commands inside the host.

    def run(
        self,
        argv: Sequence[str],
        input: str | bytes | None = None,
        check: bool = True,
        *,
        text: bool = True,
        timeout: float | None = 300.0,
        capture_output: bool = True,
    ) -> subprocess.CompletedProcess[Any]:
        """Run a command in the host's network, mount and UTS namespaces.

        The command inherits this process's environment, except that DOCKER_HOST and
        DOCKER_CONFIG point at this host's engine and the other DOCKER_* variables
        are removed. With text=False, input and output are bytes. Raises
        LabCommandError on a non-zero exit status when check is true.
        """
        command = self._nsenter_argv(argv)
        completed = subprocess.run(
            command,
            input=input,
            capture_output=capture_output,
            text=text,
            timeout=timeout,
            env=self._command_env(),
            cwd="/",
        )
        if check and completed.returncode != 0:
            raise LabCommandError(self.name, completed.returncode, argv, completed.stdout, completed.stderr)
        return completed

    def docker(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float | None = 300.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this host's engine."""
        return self.run([tool("docker"), *args], input=input, check=check, timeout=timeout)

    def volume_mountpoint(self, name: str) -> str:
        """Return the volume's mountpoint inside the host, e.g. /var/lib/docker/volumes/NAME/_data."""
        return self.docker("volume", "inspect", "--format", "{{.Mountpoint}}", name).stdout.strip()

    def volume_host_path(self, name: str) -> Path:
        """Return the volume's mountpoint as seen from outside the namespaces."""
        mountpoint = self.volume_mountpoint(name)
        if not mountpoint.startswith(DOCKER_ROOT + "/"):
            raise LabError(f"volume {name} on {self.name} has mountpoint {mountpoint} outside {DOCKER_ROOT}")
        return self.docker_root / mountpoint[len(DOCKER_ROOT) + 1 :]

    # Faults: stop and start the engine, sshd and relay, cut SSH connections.

    def stop_dockerd(self, *, kill: bool = False, timeout: float = _DOCKERD_STOP_SECONDS) -> None:
        """Stop dockerd: SIGTERM and wait (SIGKILL after timeout), or SIGKILL at once when kill is true.

        After kill=True, dockerd's containerd exits with it, but container shims and
        running containers stay, as after an engine crash. start_dockerd() works in
        both cases; with running containers it may take about 10 s more, because
        the new dockerd stops the containers it finds.
        """
        record = self.processes["dockerd"]
        if kill:
            if record is not None:
                procs.kill_processes([record], name=f"{self.name} dockerd")
        else:
            procs.stop_process(record, timeout=timeout, name=f"{self.name} dockerd")
        self._set_process("dockerd", None)
        logger.info("%s: dockerd stopped", self.name)

    def start_dockerd(self, timeout: float = _ENGINE_START_SECONDS) -> None:
        """Start dockerd if it is not running and wait until the engine responds to /_ping."""
        if procs.is_running(self.processes["dockerd"]):
            return
        self._spawn_dockerd()
        self._wait_for_engine(timeout)

    def stop_sshd(self) -> None:
        """Stop the sshd listener; sessions that are already open keep running."""
        procs.stop_process(self.processes["sshd"], timeout=10.0, name=f"{self.name} sshd")
        self._set_process("sshd", None)

    def start_sshd(self, timeout: float = _SSH_START_SECONDS) -> None:
        """Start sshd if it is not running and wait until it sends its banner through the relay."""
        if procs.is_running(self.processes["sshd"]):
            return
        self._spawn_sshd()
        self._wait_for_ssh(timeout)

    def stop_relay(self) -> None:
        """Stop the relay and cut its connections; new connections to address:port are refused."""
        self.cut_connections()
        procs.stop_process(self.processes["relay"], timeout=5.0, name=f"{self.name} relay")
        self._set_process("relay", None)

    def start_relay(self, timeout: float = _SSH_START_SECONDS) -> None:
        """Start the relay if it is not running and wait until sshd sends its banner through it."""
        if procs.is_running(self.processes["relay"]):
            return
        self._spawn_relay()
        self._wait_for_ssh(timeout)

    def relay_connections(self) -> list[int]:
        """Return the PIDs of the relay's per-connection processes: one per open SSH connection."""
        relay = self.processes["relay"]
        if not procs.is_running(relay):
            return []
        assert relay is not None
        return [pid for pid, ppid in procs.parent_map().items() if ppid == relay.pid]

    def cut_connections(self) -> int:
        """Kill the relay's per-connection processes, which cuts every open SSH connection to this host.

        The relay keeps listening, so new connections work. Returns the number of
        connections cut.
        """
        relay = self.processes["relay"]
        if not procs.is_running(relay):
            return 0
        assert relay is not None

        # socat forks one process per connection, which runs relay-connect.sh. Killing
        # the script's process (socat after exec) makes the forked socat exit and be
        # reaped by the relay. Killing the forked socat first would leave the inner
        # process to PID 1, which may never reap it.
        parents = procs.parent_map()
        connections = [pid for pid, ppid in parents.items() if ppid == relay.pid]
        inner = procs.descendants(connections, parents)
        procs.kill_processes(procs.records_of(inner), name=f"{self.name} relay connections")

        forked = procs.records_of(connections)
        if not procs.wait_for_exit(forked, 2.0):
            procs.kill_processes(forked, name=f"{self.name} relay connections")
        if connections:
            logger.info("%s: cut %d SSH connection(s)", self.name, len(connections))
        return len(connections)

    def ensure_running(self) -> None:
        """Restart dockerd, sshd and the relay where a fault test left them stopped."""
        if not procs.is_running(self.processes["holder"]):
            raise LabError(f"lab host {self.name} is gone (its namespace holder exited); bring the lab up again")
        self.start_dockerd()

        # sshd's start waits for its banner through the relay, and the relay's through sshd:
        # spawn both, then wait once.
        relay_stopped = not procs.is_running(self.processes["relay"])
        sshd_stopped = not procs.is_running(self.processes["sshd"])
        if relay_stopped:
            self._spawn_relay()
        if sshd_stopped:
            self._spawn_sshd()
        if relay_stopped or sshd_stopped:
            self._wait_for_ssh(_SSH_START_SECONDS)

    def status(self) -> HostStatus:
        """Check each process and whether the engine and sshd respond."""
        holder = procs.is_running(self.processes["holder"])
        relay = procs.is_running(self.processes["relay"])
        return HostStatus(
            name=self.name,
            holder=holder,
            dockerd=procs.is_running(self.processes["dockerd"]),
            engine=holder and self.ping_engine(),
            sshd=procs.is_running(self.processes["sshd"]),
            relay=relay,
            ssh=relay and self.read_ssh_banner() is not None,
        )

    def ping_engine(self) -> bool:
        """Return whether the engine answers GET /_ping on its unix socket."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
                connection.settimeout(2.0)
                connection.connect(str(self.engine_socket))
                connection.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                response = connection.recv(4096)
        except (OSError, LabError):
            return False
        return response.startswith(b"HTTP/1.") and b" 200 " in response.split(b"\r\n", 1)[0]

    def read_ssh_banner(self) -> str | None:
        """Connect through the relay and return sshd's identification line, or None."""
        try:
            with socket.create_connection((self.address, self.port), timeout=2.0) as connection:
                banner = b""
                while b"\n" not in banner and len(banner) < 256:
                    chunk = connection.recv(256)
                    if not chunk:
                        break
                    banner += chunk
        except OSError:
            return None

        line = banner.split(b"\n", 1)[0].rstrip(b"\r")
        return line.decode("ascii", "replace") if line.startswith(b"SSH-2.0-") else None

    # Lifecycle, called by Lab.

    def prepare(self, authorized_key: str) -> None:
        """Create the host's directories, host key and configuration files."""
        for path in (self.directory, self.docker_root, self.directory / "etc-docker", self.directory / "docker-config"):
            path.mkdir(parents=True, exist_ok=True)

        subprocess.run(
            [tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", f"ddm-lab-{self.name}",
             "-f", str(self.host_key_path)],
            check=True,
            capture_output=True,
        )
        (self.directory / "authorized_keys").write_text(authorized_key.strip() + "\n")
        (self.directory / "sshd_config").write_text(self._sshd_config())
        (self.directory / "daemon.json").write_text("{}\n")
        (self.directory / "bashrc").write_text(
            "# The lab host's ~/.bashrc, in place of the machine's own (see _set_up_namespace).\n")
        (self.directory / "docker-config" / "config.json").write_text("{}\n")

    def start(self, image_tar: Path) -> None:
        """Create the namespaces, start dockerd, sshd and the relay, and import the busybox image."""
        started = time.monotonic()
        self._start_holder()
        self._set_up_namespace()
        self._attach_link()

        self._spawn_dockerd()
        self._spawn_sshd()
        self._spawn_relay()
        self._wait_for_engine(_ENGINE_START_SECONDS)
        self._wait_for_ssh(_SSH_START_SECONDS)

        self._import_image(image_tar)
        logger.info("%s: up at %s in %.1f s", self.name, self.ssh_url, time.monotonic() - started)

    def teardown(self) -> None:
        """Stop the relay, sshd and dockerd, kill what is left in the namespace, then the holder."""
        relay = self.processes["relay"]
        if procs.is_running(relay):
            self.cut_connections()
        procs.stop_process(relay, timeout=5.0, name=f"{self.name} relay")

        sshd = self.processes["sshd"]
        if sshd is not None and procs.is_running(sshd):
            sessions = procs.records_of(procs.descendants([sshd.pid]))
            procs.kill_processes(sessions, name=f"{self.name} ssh sessions")
        procs.stop_process(sshd, timeout=5.0, name=f"{self.name} sshd")

        procs.stop_process(self.processes["dockerd"], timeout=_DOCKERD_STOP_SECONDS, name=f"{self.name} dockerd")
        self._kill_namespace_processes()
        self._wait_for_holder_to_reap()
        procs.kill_processes(
            [record for record in [self.processes["holder"]] if record is not None], name=f"{self.name} holder"
        )

        for name in COMPONENTS:
            self.processes[name] = None
        logger.info("%s: down", self.name)

    # Helpers.

    def _holder_pid(self) -> int:
        """Return the holder's PID after checking that it is still in this host's network namespace.

        The check keeps a reused PID from sending a command into the machine's own
        namespaces.
        """
        holder = self.processes["holder"]
        if not procs.is_running(holder) or holder is None:
            raise LabError(f"lab host {self.name} is not running (no namespace holder)")
        if procs.namespace_id(holder.pid, "net") != self.net_namespace:
            raise LabError(f"lab host {self.name}: holder {holder.pid} is no longer in {self.net_namespace}")
        return holder.pid

    def _nsenter_argv(self, argv: Sequence[str]) -> list[str]:
        return [tool("nsenter"), f"--target={self._holder_pid()}", "--net", "--mount", "--uts", "--", *argv]

    def _command_env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("DOCKER_")}
        env["DOCKER_HOST"] = f"unix://{ENGINE_SOCKET}"
        env["DOCKER_CONFIG"] = str(self.directory / "docker-config")
        env["PATH"] = env.get("PATH", "") + ":" + SYSTEM_PATH
        return env

    def _set_process(self, name: str, record: ProcessRecord | None) -> None:
        self.processes[name] = record
        if self._on_change is not None:
            self._on_change()

    def _start_holder(self) -> None:
        own_net = procs.namespace_id(os.getpid(), "net")
        own_mnt = procs.namespace_id(os.getpid(), "mnt")
        argv = [tool("unshare"), "--net", "--mount", "--uts", "--propagation", "private", "--",
                sys.executable, "-I", str(_HOLDER_SCRIPT), str(self.holder_socket)]
        holder = procs.spawn(argv, log_path=self.directory / "holder.log", env=_DAEMON_ENV)
        self._set_process("holder", holder)

        # unshare switches namespaces, makes every mount private, then execs the
        # holder, which listens on its socket only after that. Entering earlier
        # would run the mount commands below in the machine's own mount namespace.
        deadline = time.monotonic() + 10.0
        while True:
            reply = self._ping_holder()
            if reply is not None and reply.get("pid") == holder.pid:
                break
            if not procs.is_running(holder):
                raise LabError(f"{self.name}: namespace holder exited: {self._log_tail('holder.log')}")
            if time.monotonic() > deadline:
                raise LabError(f"{self.name}: namespace holder did not answer within 10 s: "
                               f"{self._log_tail('holder.log')}")
            time.sleep(0.01)

        net = procs.namespace_id(holder.pid, "net")
        mnt = procs.namespace_id(holder.pid, "mnt")
        if net in (None, own_net) or mnt in (None, own_mnt):
            raise LabError(f"{self.name}: holder {holder.pid} is not in namespaces of its own ({net}, {mnt})")
        self.net_namespace = net
        self._set_process("holder", holder)

    def _ping_holder(self) -> dict[str, Any] | None:
        try:
            return self._holder_request({"op": "ping"})
        except (OSError, LabError):
            return None

    def _spawn_in_host(self, argv: Sequence[str], log_name: str) -> ProcessRecord:
        """Start a daemon inside the host's namespaces as a child of the holder."""
        self._holder_pid()
        reply = self._holder_request(
            {"op": "spawn", "argv": list(argv), "log": str(self.directory / log_name), "env": _DAEMON_ENV}
        )
        if not reply.get("ok"):
            raise LabError(f"{self.name}: starting {argv[0]} failed: {reply.get('error')}")
        return ProcessRecord(pid=int(reply["pid"]), start_time=int(reply["start_time"]))

    def _holder_request(self, request: Mapping[str, Any]) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(10.0)
            connection.connect(str(self.holder_socket))
            connection.sendall(json.dumps(request).encode() + b"\n")
            connection.shutdown(socket.SHUT_WR)

            data = b""
            while chunk := connection.recv(65536):
                data += chunk
        if not data:
            raise LabError(f"{self.name}: namespace holder closed the connection without a reply")
        reply: dict[str, Any] = json.loads(data)
        return reply

    def _set_up_namespace(self) -> None:
        script = "\n".join(
            [
                "set -eu",
                "ip link set lo up",
                f"hostname ddm-lab-{self.name}",
                "mount -t tmpfs -o mode=0755 tmpfs /run",
                "mkdir -m 0755 /run/sshd",
                f"mkdir -p {DOCKER_ROOT} /etc/docker",
                f"mount --bind {self.docker_root} {DOCKER_ROOT}",
                f"mount --bind {self.directory / 'etc-docker'} /etc/docker",
                # bash reads ~/.bashrc for every command that sshd runs. The machine's own
                # may start tools such as pyenv, which cost about 0.1 s of CPU per command
                # and put their python3 first in PATH, unlike a plain Docker host.
                f"if [ -f /root/.bashrc ]; then mount --bind {self.directory / 'bashrc'} "
                "/root/.bashrc; fi",
            ]
        )
        try:
            self.run(["/bin/sh", "-c", script], timeout=30.0)
        except LabCommandError as error:
            raise LabError(f"{self.name}: setting up the namespace failed: {error}") from error

    def _attach_link(self) -> None:
        if self.link_namespace is None:
            return
        address = link.attach_host(self.link_namespace, self.name, self._holder_pid(), self.index)
        try:
            link.configure_host_end(self.run, address)
        except LabCommandError as error:
            raise LabError(f"{self.name}: configuring the lab link failed: {error}") from error

    def _spawn_dockerd(self) -> None:
        holder = self._holder_pid()
        run_directory = Path(f"/proc/{holder}/root/run")
        _remove_stale_pid_file(run_directory / "docker.pid", "dockerd", holder)
        _remove_stale_pid_file(run_directory / "docker" / "containerd" / "containerd.pid",
                               "containerd", holder)

        argv = [
                tool("dockerd"),
                "--config-file", str(self.directory / "daemon.json"),
                "--host", f"unix://{ENGINE_SOCKET}",
                "--data-root", DOCKER_ROOT,
                "--exec-root", "/run/docker",
                "--pidfile", "/run/docker.pid",
                "--iptables=false",
                "--ip6tables=false",
                # No docker0 bridge: the namespace keeps lo as its only interface,
                # and containers get the "none" network by default.
                "--bridge=none",
                "--shutdown-timeout=3",
        ]
        self._set_process("dockerd", self._spawn_in_host(argv, "dockerd.log"))

    def _spawn_sshd(self) -> None:
        argv = [tool("sshd"), "-D", "-f", str(self.directory / "sshd_config"), "-E", str(self.directory / "sshd.log")]
        self._set_process("sshd", self._spawn_in_host(argv, "sshd.log"))

    def _spawn_relay(self) -> None:
        _check_port_free(self.address, self.port)
        script = self.directory / "relay-connect.sh"
        script.write_text(self._relay_script())
        script.chmod(0o755)

        argv = [
            tool("socat"),
            "-d",
            "-lf", str(self.directory / "relay.log"),
            f"TCP-LISTEN:{self.port},bind={self.address},fork,reuseaddr",
            f"EXEC:{script}",
        ]
        self._set_process("relay", procs.spawn(argv, log_path=self.directory / "relay.log", env=_DAEMON_ENV))

    def _relay_script(self) -> str:
        holder = self.processes["holder"]
        assert holder is not None
        namespace = f"/proc/{holder.pid}/ns/net"
        # The check keeps a reused holder PID from relaying into the machine's own
        # network namespace, where port 22 may be another sshd.
        return (
            "#!/bin/sh\n"
            f"# Relays one connection to sshd inside lab host {self.name}.\n"
            f'if [ "$(readlink {namespace})" != "{self.net_namespace}" ]; then\n'
            f'    echo "lab host {self.name} is gone" >&2\n'
            "    exit 1\n"
            "fi\n"
            f"exec {tool('nsenter')} --net={namespace} {tool('socat')} STDIO TCP:{SSHD_ADDRESS}:{SSHD_PORT}\n"
        )

    def _sshd_config(self) -> str:
        lines = [f"ListenAddress {SSHD_ADDRESS}:{SSHD_PORT}"]
        if self.link_address is not None:
            lines.append(f"ListenAddress {self.link_address}:{SSHD_PORT}")
        lines += [
            f"HostKey {self.host_key_path}",
            "PidFile none",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            f"AuthorizedKeysFile {self.directory / 'authorized_keys'}",
            "StrictModes no",
            "UsePAM no",
            "PrintMotd no",
            "LogLevel VERBOSE",
            # The docker CLI of SSH sessions reads its configuration from the lab
            # directory, not from the machine's /root/.docker.
            f"SetEnv DOCKER_CONFIG={self.directory / 'docker-config'}",
        ]
        return "\n".join(lines) + "\n"

    def _wait_for_engine(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ping_engine():
            if not procs.is_running(self.processes["dockerd"]):
                raise LabError(f"{self.name}: dockerd exited: {self._log_tail('dockerd.log')}")
            if time.monotonic() > deadline:
                raise LabError(f"{self.name}: engine did not answer within {timeout:.0f} s: "
                               f"{self._log_tail('dockerd.log')}")
            time.sleep(0.02)

    def _wait_for_ssh(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.read_ssh_banner() is None:
            if not procs.is_running(self.processes["sshd"]):
                raise LabError(f"{self.name}: sshd exited: {self._log_tail('sshd.log')}")
            if not procs.is_running(self.processes["relay"]):
                raise LabError(f"{self.name}: relay exited: {self._log_tail('relay.log')}")
            if time.monotonic() > deadline:
                raise LabError(f"{self.name}: sshd did not answer at {self.address}:{self.port} within "
                               f"{timeout:.0f} s: {self._log_tail('sshd.log')}")
            time.sleep(0.02)

    def _import_image(self, image_tar: Path) -> None:
        self.run(
            [tool("docker"), "import", "--change", BUSYBOX_IMAGE_CMD, "-", BUSYBOX_IMAGE],
            input=image_tar.read_bytes(),
            text=False,
            timeout=120.0,
        )

    def _kill_namespace_processes(self) -> None:
        """SIGKILL every process left in the host's network namespace and all their descendants.

        This catches containerd after a dockerd crash, container shims and the
        container processes below them, which live in namespaces of their own.
        """
        if self.net_namespace is None:
            return

        holder = self.processes["holder"]
        for _ in range(10):
            inside = procs.pids_in_net_namespace(self.net_namespace)
            if holder is not None:
                inside.discard(holder.pid)
            targets = inside | procs.descendants(inside)
            if not targets:
                return
            logger.debug("%s: killing %d leftover process(es)", self.name, len(targets))
            procs.kill_processes(procs.records_of(targets), name=f"{self.name} leftover processes")
        raise LabError(f"{self.name}: processes keep appearing in {self.net_namespace}")

    def _wait_for_holder_to_reap(self) -> None:
        """Wait until the holder has reaped its exited children, which become unreapable zombies once it dies."""
        holder = self.processes["holder"]
        if not procs.is_running(holder):
            return
        assert holder is not None

        deadline = time.monotonic() + 2.0
        while any(ppid == holder.pid for ppid in procs.parent_map().values()):
            if time.monotonic() > deadline:
                logger.warning("%s: holder %d did not reap its children within 2 s", self.name, holder.pid)
                return
            time.sleep(0.02)

    def _log_tail(self, file_name: str) -> str:
        path = self.directory / file_name
        try:
            lines = path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return f"({path} is missing)"
        return f"last lines of {path}:\n" + "\n".join(lines[-_LOG_TAIL_LINES:])


def _remove_stale_pid_file(path: Path, program: str, holder: int) -> None:
    """Remove a pid file unless its PID is a live `program` in the holder's mount namespace.

    dockerd checks only that /proc/PID exists, both for its own pid file and for
    the one of the containerd it starts. A killed process stays a zombie, with a
    /proc/PID entry, until its parent reaps it, and PID 1 of some containers
    reaps late or never. The lab hosts also share the machine's PID space. With a
    pid_max of 32768 on a busy machine, another process may get a killed dockerd's
    PID soon after. Then dockerd fails with "pid file found", or waits for the
    dead containerd until it times out.
    """
    try:
        pid = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return

    if not _is_live_program(pid, program, holder):
        path.unlink(missing_ok=True)
        logger.debug("removed stale pid file %s of pid %d", path, pid)


def _is_live_program(pid: int, program: str, holder: int) -> bool:
    """Return whether PID runs `program`, is not a zombie and is in the holder's mount namespace."""
    stat = procs.read_stat(pid)
    if stat is None or stat.state in ("Z", "X", "x"):
        return False
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        same_namespace = os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink(f"/proc/{holder}/ns/mnt")
    except OSError:
        return False
    return comm == program and same_namespace


def _check_port_free(address: str, port: int) -> None:
    """Raise LabError when address:port cannot be bound, e.g. because an earlier lab still listens there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as error:
            raise LabError(
                f"cannot listen on {address}:{port}: {error.strerror}; another lab may still run there "
                f"(stop it with `python -m tests.lab down --root ITS_ROOT`) or choose another lab port"
            ) from error
