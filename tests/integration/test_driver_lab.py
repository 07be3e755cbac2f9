"""Tests of ddmdriver against the lab: SSH checks, Engine calls and the archive relay."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import xxhash
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ddm.config import Config, load_config
from ddm.errors import (
    AuthenticationFailed,
    ConnectionFailed,
    HostKeyError,
    TargetExists,
    TransferFailed,
    UsageError,
    VolumeNotFound,
)
from ddmdriver import ssh as ssh_module
from ddmdriver.engine import HELPER_IMAGE, Engine, open_engine
from ddmdriver.relay import relay_archive
from tests.lab import Lab, LabHost
from tests.lab.resources import LabResources, unique_name
from tests.lab.tree import (
    Dir,
    Fifo,
    File,
    HardLink,
    RandomFile,
    Symlink,
    diff_snapshots,
    snapshot_volume_tree,
    write_volume_tree,
)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    (path / ".ssh").mkdir(parents=True)
    return path


@pytest.fixture
def config(lab: Lab, home: Path, tmp_path: Path) -> Config:
    """The lab's DDM config, with HOME at an empty temporary directory and no SSH agent."""
    path = lab.write_ddm_config(tmp_path / "ddm.yaml")
    return load_config(path, {"HOME": str(home), "USER": "root"})


@pytest.fixture
def engines(config: Config) -> Iterator[tuple[Engine, Engine]]:
    with open_engine(config.host("h1"), config) as first, open_engine(config.host("h2"), config) as second:
        yield first, second


def write_config(tmp_path: Path, home: Path, text: str) -> Config:
    path = tmp_path / "custom.yaml"
    path.write_text(text)
    return load_config(path, {"HOME": str(home), "USER": "root"})


def host_fingerprint(host: LabHost) -> str:
    key_data = host.host_key_path.with_suffix(".pub").read_text().split()[1]
    digest = hashlib.sha256(base64.b64decode(key_data)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def new_private_key(path: Path) -> Path:
    data = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def test_ping_both_hosts(engines: tuple[Engine, Engine]) -> None:
    for engine, name in zip(engines, ("h1", "h2")):
        info = engine.ping()

        assert info.version
        assert info.api_version.startswith("1.")
        assert info.os == "linux"
        assert info.arch
        assert 0 < info.rtt_seconds < 5
        assert engine.api.info()["Name"] == f"ddm-lab-{name}"


def test_one_ssh_connection_for_many_calls(engines: tuple[Engine, Engine]) -> None:
    engine = engines[0]
    transport = engine.ssh.transport if engine.ssh else None

    for _ in range(5):
        engine.ping()
        engine.volume_inspect("ddmtest-absent")
    engine.exec_command(["true"])

    assert engine.ssh is not None
    assert engine.ssh.transport is transport
    assert engine.ssh.is_active


def test_volume_create_inspect_remove(
    engines: tuple[Engine, Engine], h1: LabHost, resources: LabResources
) -> None:
    engine = engines[0]
    name = unique_name()
    resources.add_volume(h1, name)

    created = engine.volume_create(name, labels={"team": "ddm"}, driver_opts={"type": "tmpfs", "device": "tmpfs"})
    inspected = engine.volume_inspect(name)
    cli = json.loads(h1.docker("volume", "inspect", name).stdout)[0]

    assert created == inspected
    assert inspected is not None
    assert inspected.name == name
    assert inspected.driver == "local"
    assert inspected.labels == {"team": "ddm"}
    assert inspected.options == {"type": "tmpfs", "device": "tmpfs"}
    assert inspected.mountpoint == cli["Mountpoint"]
    assert inspected.scope == "local"

    with pytest.raises(TargetExists, match=name):
        engine.volume_create(name)

    engine.volume_remove(name)
    assert engine.volume_inspect(name) is None
    assert h1.docker("volume", "inspect", name, check=False).returncode != 0
    with pytest.raises(VolumeNotFound, match=name):
        engine.volume_remove(name)


def test_helper_image_imported_without_pull(engines: tuple[Engine, Engine], h2: LabHost) -> None:
    engine = engines[1]
    h2.docker("image", "rm", "--force", HELPER_IMAGE, check=False)
    images_before = set(h2.docker("images", "--quiet", "--no-trunc").stdout.split())
    started = int(time.time())

    image_id = engine.ensure_helper_image()
    again = engine.ensure_helper_image()

    images_after = set(h2.docker("images", "--quiet", "--no-trunc").stdout.split())
    assert images_after - images_before == {image_id}
    assert again == image_id

    image = engine.api.inspect_image(image_id)
    assert image["RepoTags"] == [HELPER_IMAGE]
    assert not image["RepoDigests"]
    assert image["Config"]["Cmd"] == ["/ddm-helper"]
    assert image["Config"]["Labels"] == {"ddm.helper": "empty"}

    events = h2.docker(
        "events", "--since", str(started - 1), "--until", str(int(time.time()) + 1),
        "--filter", "type=image", "--format", "{{.Action}}",
    ).stdout.split()
    assert "import" in events
    assert "pull" not in events


def test_create_helper_never_started(
    engines: tuple[Engine, Engine], h1: LabHost, resources: LabResources
) -> None:
    engine = engines[0]
    volume = resources.create_volume(h1)

    container_id = engine.create_helper(volume, read_only=True, labels={"ddm.task": "t-123"})
    resources.add_container(h1, container_id)
    details = engine.api.inspect_container(container_id)

    assert details["State"]["Status"] == "created"
    assert details["Config"]["Labels"] == {"ddm.task": "t-123", "ddm.helper": "empty"}
    assert details["HostConfig"]["NetworkMode"] == "none"
    (mount,) = details["Mounts"]
    assert mount["Name"] == volume
    assert mount["Destination"] == "/v"
    assert mount["RW"] is False

    engine.remove_container(container_id)
    assert h1.docker("container", "inspect", container_id, check=False).returncode != 0
    assert engine.volume_inspect(volume) is not None
    engine.remove_container(container_id)


def test_create_helper_missing_volume(engines: tuple[Engine, Engine], h1: LabHost) -> None:
    name = unique_name()

    with pytest.raises(VolumeNotFound, match=name):
        engines[0].create_helper(name, read_only=True, labels={})

    assert h1.docker("volume", "inspect", name, check=False).returncode != 0


def test_archive_round_trip_small_volume(
    engines: tuple[Engine, Engine], h1: LabHost, h2: LabHost, resources: LabResources
) -> None:
    source, target = engines
    volume = resources.create_volume(h1)
    write_volume_tree(
        h1,
        volume,
        {
            "docs/readme.txt": "hello\n",
            "bin/tool": File(b"#!/bin/sh\n", mode=0o755, uid=1000, gid=1001, mtime_ns=1_000_000_000_123_456_789),
            "shared": Dir(mode=0o1777, uid=33, gid=33),
            "big.bin": RandomFile(3 * 1024 * 1024 + 5, seed=7),
            "link": Symlink("docs/readme.txt"),
            "dangling": Symlink("/nowhere"),
            "hard": HardLink("docs/readme.txt"),
            "pipe": Fifo(mode=0o600),
            b"latin1-\xe9": b"not UTF-8",
        },
    )
    resources.add_volume(h2, volume)
    target.volume_create(volume)
    source_helper = source.create_helper(volume, read_only=True, labels={"ddm.task": "rt"})
    resources.add_container(h1, source_helper)
    target_helper = target.create_helper(volume, read_only=False, labels={"ddm.task": "rt"})
    resources.add_container(h2, target_helper)
    observed = bytearray()

    result = relay_archive(
        source, source_helper, "/v", target, target_helper, "/", observers=[observed.extend]
    )

    assert result.bytes == len(observed)
    assert result.bytes > 3 * 1024 * 1024
    assert result.stream_digest == xxhash.xxh3_128(bytes(observed)).hexdigest()
    # dockerd's archive API writes whole-second mtimes (seen with dockerd 20.10), so the
    # sub-second part is compared separately.
    expected = snapshot_volume_tree(h1, volume)
    actual = snapshot_volume_tree(h2, volume)
    assert diff_snapshots(expected, actual, ignore=("mtime_ns",)) == []
    for path, entry in expected.items():
        assert actual[path].mtime_ns // 10**9 == entry.mtime_ns // 10**9, path


def test_get_archive_missing_path(
    engines: tuple[Engine, Engine], h1: LabHost, resources: LabResources
) -> None:
    engine = engines[0]
    volume = resources.create_volume(h1)
    helper = engine.create_helper(volume, read_only=True, labels={})
    resources.add_container(h1, helper)

    with pytest.raises(TransferFailed, match="/v/absent"):
        engine.get_archive(helper, "/v/absent")


def test_relay_into_read_only_target_names_target(
    engines: tuple[Engine, Engine], h1: LabHost, h2: LabHost, resources: LabResources
) -> None:
    source, target = engines
    volume = resources.create_volume(h1)
    write_volume_tree(h1, volume, {"a.bin": RandomFile(256 * 1024, seed=1)})
    target_volume = resources.create_volume(h2)
    source_helper = source.create_helper(volume, read_only=True, labels={})
    resources.add_container(h1, source_helper)
    read_only_helper = target.create_helper(target_volume, read_only=True, labels={})
    resources.add_container(h2, read_only_helper)

    with pytest.raises(TransferFailed) as raised:
        relay_archive(source, source_helper, "/v", target, read_only_helper, "/")

    assert str(raised.value).startswith("target h2:")
    assert target.ping().version


def test_exec_command_quotes_arguments(engines: tuple[Engine, Engine]) -> None:
    result = engines[0].exec_command(["printf", "%s|", "a b", "$(id)", "'q'", "*"])

    assert result.exit_status == 0
    assert result.stdout == b"a b|$(id)|'q'|*|"
    assert result.stderr == b""


def test_exec_command_exit_status_and_stderr(engines: tuple[Engine, Engine]) -> None:
    result = engines[0].exec_command(["ls", "/ddm-does-not-exist"])

    assert result.exit_status != 0
    assert b"ddm-does-not-exist" in result.stderr
    assert result.stdout == b""


def test_free_bytes_of_volume(
    engines: tuple[Engine, Engine], h1: LabHost, resources: LabResources
) -> None:
    engine = engines[0]
    volume = resources.create_volume(h1)
    info = engine.volume_inspect(volume)
    assert info is not None

    free = engine.free_bytes(info.mountpoint)

    df = h1.run(["df", "-P", "-k", info.mountpoint]).stdout.splitlines()[1].split()
    assert free is not None
    assert abs(free - int(df[3]) * 1024) < 256 * 1024 * 1024
    assert engine.free_bytes("/ddm-does-not-exist") is None


def test_unknown_host_key_rejected(lab: Lab, home: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    config = write_config(
        tmp_path,
        home,
        f"identity_file: {lab.identity_file}\nknown_hosts: {empty}\n"
        f"hosts:\n  h1: {lab.host('h1').ssh_url}\n",
    )

    with pytest.raises(HostKeyError) as raised:
        open_engine(config.host("h1"), config)

    h1 = lab.host("h1")
    message = str(raised.value)
    assert "unknown SSH host key" in message
    assert f"[{h1.address}]:{h1.port}" in message
    assert "ssh-ed25519" in message
    assert host_fingerprint(h1) in message
    assert f"ssh-keyscan -p {h1.port} {h1.address}" in message
    assert empty.read_text() == ""


def test_changed_host_key_rejected(lab: Lab, home: Path, tmp_path: Path) -> None:
    h1, h2 = lab.host("h1"), lab.host("h2")
    wrong = tmp_path / "wrong_known_hosts"
    key_type, key_data = h2.known_hosts_line.split()[1:3]
    wrong.write_text(f"[{h1.address}]:{h1.port} {key_type} {key_data}\n")
    config = write_config(
        tmp_path,
        home,
        f"identity_file: {lab.identity_file}\nknown_hosts: {wrong}\nhosts:\n  h1: {h1.ssh_url}\n",
    )

    with pytest.raises(HostKeyError) as raised:
        open_engine(config.host("h1"), config)

    message = str(raised.value)
    assert "has changed" in message
    assert host_fingerprint(h1) in message
    assert host_fingerprint(h2) in message


def test_wrong_key_file_rejected(lab: Lab, home: Path, tmp_path: Path) -> None:
    stranger = new_private_key(tmp_path / "stranger_key")
    config = write_config(
        tmp_path,
        home,
        f"identity_file: {stranger}\nknown_hosts: {lab.known_hosts}\n"
        f"hosts:\n  h1: {lab.host('h1').ssh_url}\n",
    )

    with pytest.raises(AuthenticationFailed) as raised:
        open_engine(config.host("h1"), config)

    message = str(raised.value)
    assert "'root'" in message
    assert f"{lab.host('h1').address}:{lab.host('h1').port}" in message
    assert str(stranger) in message
    assert "PRIVATE KEY" not in message


def test_connection_refused(lab: Lab, home: Path, tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        home,
        f"identity_file: {lab.identity_file}\nknown_hosts: {lab.known_hosts}\n"
        "hosts:\n  closed: ssh://root@127.0.0.21:1\n",
    )

    with pytest.raises(ConnectionFailed, match="127.0.0.21:1"):
        open_engine(config.host("closed"), config)


def test_wrong_docker_socket_names_cause(lab: Lab, home: Path, tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        home,
        f"identity_file: {lab.identity_file}\nknown_hosts: {lab.known_hosts}\n"
        f"hosts:\n  h1:\n    url: {lab.host('h1').ssh_url}\n    docker_socket: /run/ddm-absent.sock\n",
    )

    with pytest.raises(ConnectionFailed) as raised:
        open_engine(config.host("h1"), config)

    assert "h1" in str(raised.value)
    assert "/run/ddm-absent.sock" in str(raised.value)


def test_ssh_config_port_and_hostname_used(lab: Lab, home: Path, tmp_path: Path) -> None:
    h1 = lab.host("h1")
    (home / ".ssh" / "config").write_text(
        f"Host lab-one\n  HostName {h1.address}\n  Port {h1.port}\n  User root\n"
        f"  IdentityFile {lab.identity_file}\n  UserKnownHostsFile {lab.known_hosts}\n"
    )
    config = write_config(tmp_path, home, "hosts:\n  one: ssh://lab-one\n")

    with open_engine(config.host("one"), config) as engine:
        assert engine.api.info()["Name"] == "ddm-lab-h1"


def test_proxyjump_through_h1(lab: Lab, home: Path, tmp_path: Path) -> None:
    # From inside h1 the other lab hosts are unreachable, so the jump goes from h1's sshd
    # to h1's own sshd at 127.0.0.1:22 inside its namespace.
    h1 = lab.host("h1")
    key_type, key_data = h1.known_hosts_line.split()[1:3]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"{h1.known_hosts_line}\ninside-h1 {key_type} {key_data}\n")
    (home / ".ssh" / "config").write_text(
        f"Host jump\n  HostName {h1.address}\n  Port {h1.port}\n  User root\n"
        "Host behind\n  HostName 127.0.0.1\n  Port 22\n  HostKeyAlias inside-h1\n"
        "  ProxyJump jump\n"
    )
    config = write_config(
        tmp_path,
        home,
        f"identity_file: {lab.identity_file}\nknown_hosts: {known_hosts}\n"
        "hosts:\n  behind: ssh://root@behind\n",
    )

    with open_engine(config.host("behind"), config) as engine:
        assert engine.ssh is not None
        assert len(engine.ssh._transports) == 2
        assert engine.ssh.target.hostname == "127.0.0.1"
        assert engine.api.info()["Name"] == "ddm-lab-h1"


def test_proxyjump_unknown_jump_host_key(lab: Lab, home: Path, tmp_path: Path) -> None:
    h1 = lab.host("h1")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    (home / ".ssh" / "config").write_text(
        f"Host jump\n  HostName {h1.address}\n  Port {h1.port}\n"
        "Host behind\n  HostName 127.0.0.1\n  ProxyJump jump\n"
    )
    config = write_config(
        tmp_path,
        home,
        f"identity_file: {lab.identity_file}\nknown_hosts: {known_hosts}\n"
        "hosts:\n  behind: ssh://root@behind\n",
    )

    with pytest.raises(HostKeyError, match=re.escape(f"[{h1.address}]:{h1.port}")):
        open_engine(config.host("behind"), config)


def test_volume_size_and_root(engines: tuple[Engine, Engine], h1: LabHost, resources: LabResources) -> None:
    engine = engines[0]
    volume = resources.create_volume(h1)
    write_volume_tree(h1, volume, {"a.bin": RandomFile(1024 * 1024, seed=3), "b.txt": "12345"})

    size = engine.volume_size(volume)
    root = engine.volumes_root()

    assert size is not None
    assert 1024 * 1024 + 5 <= size < 1024 * 1024 + 64 * 1024
    info = engine.volume_inspect(volume)
    assert info is not None
    assert info.mountpoint.startswith(root + "/")
    assert engine.volume_size(unique_name()) is None


def test_list_containers_by_label(
    engines: tuple[Engine, Engine], h1: LabHost, resources: LabResources
) -> None:
    engine = engines[0]
    volume = resources.create_volume(h1)
    task = unique_name("task")
    first = engine.create_helper(volume, read_only=True, labels={"ddm.task": task})
    resources.add_container(h1, first)
    second = engine.create_helper(volume, read_only=True, labels={"ddm.task": task, "x": "1"})
    resources.add_container(h1, second)
    other = engine.create_helper(volume, read_only=True, labels={"ddm.task": unique_name("task")})
    resources.add_container(h1, other)

    assert set(engine.list_containers(labels={"ddm.task": task})) == {first, second}
    assert engine.list_containers(labels={"ddm.task": task, "x": "1"}) == [second]


@pytest.fixture
def ssh_agent(tmp_path: Path) -> Iterator[str]:
    """An ssh-agent of this test on a socket in tmp_path; yields the socket path."""
    socket_path = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket_path)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        yield str(socket_path)
    finally:
        agent.terminate()
        agent.wait(timeout=10)


def test_agent_key_used_only_from_environ(lab: Lab, home: Path, tmp_path: Path, ssh_agent: str) -> None:
    environ = {"HOME": str(home), "USER": "root", "SSH_AUTH_SOCK": ssh_agent}
    subprocess.run(["ssh-add", str(lab.identity_file)], env=environ, check=True, capture_output=True)
    path = tmp_path / "agent.yaml"
    path.write_text(f"known_hosts: {lab.known_hosts}\nhosts:\n  h1: {lab.host('h1').ssh_url}\n")

    with_agent = load_config(path, environ)
    without_agent = load_config(path, {"HOME": str(home), "USER": "root"})

    with open_engine(with_agent.host("h1"), with_agent) as engine:
        assert engine.api.info()["Name"] == "ddm-lab-h1"
    with pytest.raises(AuthenticationFailed, match="no SSH key"):
        open_engine(without_agent.host("h1"), without_agent)


def test_unix_socket_host_uses_docker_py(lab: Lab, home: Path, tmp_path: Path) -> None:
    h1 = lab.host("h1")
    config = write_config(tmp_path, home, f"hosts:\n  direct: unix://{h1.engine_socket}\n")

    with open_engine(config.host("direct"), config) as engine:
        info = engine.ping()
        name = engine.api.info()["Name"]
        with pytest.raises(UsageError, match="not an ssh:// host"):
            engine.exec_command(["true"])

    assert engine.ssh is None
    assert info.api_version.startswith("1.")
    assert name == "ddm-lab-h1"


def test_relay_survives_rekeying(
    config: Config, h1: LabHost, h2: LabHost, resources: LabResources, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ssh_module, "REKEY_BYTES", 2 * 1024 * 1024)
    volume = resources.create_volume(h1)
    write_volume_tree(h1, volume, {"a.bin": RandomFile(24 * 1024 * 1024, seed=11)})
    resources.add_volume(h2, volume)

    with open_engine(config.host("h1"), config) as source, open_engine(config.host("h2"), config) as target:
        target.volume_create(volume)
        source_helper = source.create_helper(volume, read_only=True, labels={})
        resources.add_container(h1, source_helper)
        target_helper = target.create_helper(volume, read_only=False, labels={})
        resources.add_container(h2, target_helper)

        result = relay_archive(source, source_helper, "/v", target, target_helper, "/")

        assert target.ssh is not None
        # paramiko resets its byte counter at every new key, so a count below the total
        # shows that the connection rekeyed during the transfer.
        assert target.ssh.transport.packetizer._Packetizer__sent_bytes < result.bytes // 2

    assert result.bytes > 24 * 1024 * 1024
    expected = snapshot_volume_tree(h1, volume)
    assert diff_snapshots(expected, snapshot_volume_tree(h2, volume), ignore=("mtime_ns",)) == []


@pytest.mark.parametrize("side", ["source", "target"])
def test_relay_cut_connection_names_side(
    config: Config, lab: Lab, h1: LabHost, h2: LabHost, resources: LabResources, side: str
) -> None:
    volume = resources.create_volume(h1)
    write_volume_tree(h1, volume, {"a.bin": RandomFile(64 * 1024 * 1024, seed=5)})
    resources.add_volume(h2, volume)
    victim = h1 if side == "source" else h2
    cut = []

    def cut_after_8_mib(view: memoryview) -> None:
        cut.append(len(view))
        if sum(cut) >= 8 * 1024 * 1024 and len(cut) == len([n for n in cut if n]):
            if not getattr(cut_after_8_mib, "done", False):
                cut_after_8_mib.done = True  # type: ignore[attr-defined]
                victim.cut_connections()

    source = open_engine(config.host("h1"), config)
    target = open_engine(config.host("h2"), config)
    try:
        target.volume_create(volume)
        source_helper = source.create_helper(volume, read_only=True, labels={})
        resources.add_container(h1, source_helper)
        target_helper = target.create_helper(volume, read_only=False, labels={})
        resources.add_container(h2, target_helper)
        started = time.monotonic()

        with pytest.raises(TransferFailed) as raised:
            relay_archive(
                source, source_helper, "/v", target, target_helper, "/", observers=[cut_after_8_mib]
            )

        assert str(raised.value).startswith(f"{side} {victim.name}:")
        assert time.monotonic() - started < 60
    finally:
        source.close()
        target.close()


def test_exec_command_timeout(engines: tuple[Engine, Engine]) -> None:
    ssh = engines[0].ssh
    assert ssh is not None
    started = time.monotonic()

    with pytest.raises(ConnectionFailed, match="timed out after 1 s"):
        ssh.exec_command(["sh", "-c", "exec >/dev/null 2>&1; sleep 30"], timeout=1)

    assert time.monotonic() - started < 10
    assert engines[0].exec_command(["true"]).exit_status == 0
