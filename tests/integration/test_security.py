"""Security tests on the lab: host keys, ddminit's key decisions, injection, secrets, hostile archives."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import sqlite3
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from ddm.archive_guard import ArchiveGuard, UnsafeArchiveMember
from ddm.config import load_config
from ddm.env import Environment
from ddm.errors import ExitStatus
from ddmctl.common import run_main
from ddmdriver.engine import open_engine
from ddmdriver.relay import relay_archive
from tests.lab import Lab, LabHost
from tests.lab.resources import LabResources, unique_name
from tests.lab.tree import RandomFile, snapshot_volume_tree, write_volume_tree

PASSPHRASE = "lab passphrase 7d1e"


def host_fingerprint(host: LabHost) -> str:
    key_data = host.host_key_path.with_suffix(".pub").read_text().split()[1]
    digest = hashlib.sha256(base64.b64decode(key_data)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def run_command(prog: str, args: list[str], environ: dict[str, str], *, stdin_text: str = "",
                stdin_isatty: bool = False) -> tuple[int, str, str]:
    """Run a DDM command in this process with in-memory streams; return (status, stdout, stderr)."""
    module = __import__(f"{prog}.cli", fromlist=["cli"])
    env = Environment(stdin=io.StringIO(stdin_text), stdout=io.StringIO(), stderr=io.StringIO(),
                      environ=environ, stdin_isatty=stdin_isatty, stdout_isatty=False,
                      stderr_isatty=False)
    status = run_main(module.cli, args, env=env, prog_name=prog)
    return status, env.stdout.getvalue(), env.stderr.getvalue()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    (path / ".ssh").mkdir(parents=True)
    return path


@pytest.fixture
def environ(home: Path) -> dict[str, str]:
    return {"HOME": str(home), "USER": "root", "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_DATA_HOME": str(home / ".local" / "share")}


def write_config(path: Path, lab: Lab, known_hosts: Path, identity_file: Path | None = None) -> Path:
    hosts = "".join(f"  {host.name}: {host.ssh_url}\n" for host in lab.hosts)
    path.write_text(f"identity_file: {identity_file or lab.identity_file}\n"
                    f"known_hosts: {known_hosts}\nhosts:\n{hosts}")
    path.chmod(0o600)
    return path


# Host keys


def test_unknown_host_key_exit_4(lab: Lab, h1: LabHost, tmp_path: Path, environ: dict[str, str]) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    config = write_config(tmp_path / "ddm.yaml", lab, known_hosts)

    status, stdout, stderr = run_command("ddmdriver", ["--config", str(config), "ping", "h1"], environ)

    assert status == ExitStatus.HOST_KEY
    assert stdout == ""
    (line,) = stderr.splitlines()
    assert line.startswith("ddmdriver: error: unknown SSH host key")
    assert host_fingerprint(h1) in line
    assert f"ddminit --accept-host-key h1={host_fingerprint(h1)}" in line
    assert known_hosts.read_text() == ""


def test_changed_host_key_exit_4(lab: Lab, h1: LabHost, h2: LabHost, tmp_path: Path,
                                 environ: dict[str, str]) -> None:
    known_hosts = tmp_path / "known_hosts"
    key_type, key_data = h2.known_hosts_line.split()[1:3]
    known_hosts.write_text(f"[{h1.address}]:{h1.port} {key_type} {key_data}\n")
    config = write_config(tmp_path / "ddm.yaml", lab, known_hosts)

    status, _, stderr = run_command(
        "ddmctl", ["--config", str(config), "migrate", "--from", "h1", "--to", "h2", "--volume",
                   unique_name(), "--yes"], environ)

    assert status == ExitStatus.HOST_KEY
    error = stderr.strip().splitlines()[-1]
    assert error.startswith("ddmctl: error: SSH host key for ")
    assert "has changed" in error
    assert host_fingerprint(h1) in error
    assert host_fingerprint(h2) in error
    assert "man-in-the-middle" in error


def test_accept_host_key_records_match(lab: Lab, h1: LabHost, tmp_path: Path,
                                       environ: dict[str, str]) -> None:
    config = tmp_path / "ddm.yaml"
    known_hosts = tmp_path / "ssh" / "known_hosts"

    status, stdout, stderr = run_command("ddminit", [
        "--config", str(config), "--host", f"h1={h1.ssh_url}", "--identity-file",
        str(lab.identity_file), "--known-hosts", str(known_hosts),
        "--accept-host-key", f"h1={host_fingerprint(h1)}", "--yes"], environ)

    assert status == 0, stderr
    assert stdout.strip() == str(config)
    assert host_fingerprint(h1) in stderr
    assert known_hosts.read_text().split() == h1.known_hosts_line.split()
    assert oct(known_hosts.stat().st_mode & 0o777) == oct(0o600)
    status, stdout, stderr = run_command("ddmdriver", ["--config", str(config), "ping", "h1"], environ)
    assert status == 0, stderr

    # A second run finds the key recorded and adds nothing.
    status, _, stderr = run_command("ddminit", [
        "--config", str(config), "--accept-host-key", f"h1={host_fingerprint(h1)}", "--yes"], environ)
    assert status == 0, stderr
    assert len(known_hosts.read_text().splitlines()) == 1


def test_accept_host_key_wrong_fingerprint(lab: Lab, h1: LabHost, h2: LabHost, tmp_path: Path,
                                           environ: dict[str, str]) -> None:
    config = tmp_path / "ddm.yaml"
    known_hosts = tmp_path / "known_hosts"

    status, stdout, stderr = run_command("ddminit", [
        "--config", str(config), "--host", f"h1={h1.ssh_url}", "--identity-file",
        str(lab.identity_file), "--known-hosts", str(known_hosts),
        "--accept-host-key", f"h1={host_fingerprint(h2)}", "--yes"], environ)

    assert status == ExitStatus.HOST_KEY
    assert stdout == ""
    (line,) = stderr.splitlines()
    assert host_fingerprint(h1) in line
    assert host_fingerprint(h2) in line
    assert "nothing was recorded" in line
    assert not known_hosts.exists()
    assert not config.exists()


def test_accept_host_key_changed_key_not_replaced(lab: Lab, h1: LabHost, h2: LabHost,
                                                  tmp_path: Path, environ: dict[str, str]) -> None:
    known_hosts = tmp_path / "known_hosts"
    key_type, key_data = h2.known_hosts_line.split()[1:3]
    old_text = f"[{h1.address}]:{h1.port} {key_type} {key_data}\n"
    known_hosts.write_text(old_text)
    config = write_config(tmp_path / "ddm.yaml", lab, known_hosts)

    status, _, stderr = run_command("ddminit", [
        "--config", str(config), "--accept-host-key", f"h1={host_fingerprint(h1)}", "--yes"], environ)

    assert status == ExitStatus.HOST_KEY
    assert "has changed" in stderr
    assert known_hosts.read_text() == old_text


@pytest.mark.parametrize(("answer", "recorded"), [("y", True), ("n", False)])
def test_ddminit_terminal_confirms_fingerprint(lab: Lab, h1: LabHost, tmp_path: Path,
                                               environ: dict[str, str], answer: str,
                                               recorded: bool) -> None:
    config = tmp_path / "ddm.yaml"
    known_hosts = tmp_path / "known_hosts"

    status, stdout, stderr = run_command("ddminit", [
        "--config", str(config), "--host", f"h1={h1.ssh_url}", "--identity-file",
        str(lab.identity_file), "--known-hosts", str(known_hosts)], environ,
        stdin_text=f"{answer}\ny\n", stdin_isatty=True)

    assert status == 0, stderr
    assert f"ssh-ed25519 {host_fingerprint(h1)}; record it in {known_hosts}? [y/N]" in stderr
    assert config.exists()
    if recorded:
        assert known_hosts.read_text().split() == h1.known_hosts_line.split()
    else:
        assert not known_hosts.exists()
        assert "not recorded" in stderr


def test_ddminit_terminal_end_of_input_records_nothing(lab: Lab, h1: LabHost, tmp_path: Path,
                                                       environ: dict[str, str]) -> None:
    config = tmp_path / "ddm.yaml"
    known_hosts = tmp_path / "known_hosts"

    status, _, stderr = run_command("ddminit", [
        "--config", str(config), "--host", f"h1={h1.ssh_url}", "--known-hosts", str(known_hosts)],
        environ, stdin_text="", stdin_isatty=True)

    assert status == ExitStatus.INTERRUPTED
    assert host_fingerprint(h1) in stderr
    assert not known_hosts.exists()
    assert not config.exists()


# Shell injection


def marker_paths() -> tuple[str, str]:
    token = uuid.uuid4().hex[:8]
    return f"/tmp/ddm-injected-{token}-a", f"/tmp/ddm-injected-{token}-b"


def assert_no_marker(hosts: list[LabHost], markers: tuple[str, ...]) -> None:
    for marker in markers:
        assert not Path(marker).exists(), marker
        for host in hosts:
            assert host.run(["test", "-e", marker], check=False).returncode != 0, (host.name, marker)


def test_hostile_volume_names_rejected(lab: Lab, h1: LabHost, h2: LabHost, tmp_path: Path,
                                       environ: dict[str, str]) -> None:
    first, second = marker_paths()
    config = write_config(tmp_path / "ddm.yaml", lab, lab.known_hosts)
    names = [f"a';touch {first};'", f'a";touch {first};"', f"a$(touch {first})", f"a`touch {first}`",
             f"a; touch {second}", f"a b {second}", f"ok:x$(touch {second})"]

    for name in names:
        status, _, stderr = run_command("ddmctl", ["--config", str(config), "migrate", "--from", "h1",
                                                   "--to", "h2", "--volume", name, "--yes"], environ)
        assert status == ExitStatus.USAGE, (name, stderr)
        assert "invalid" in stderr

    status, _, stderr = run_command("ddmverify", ["--config", str(config), "--from", "h1", "--to",
                                                  "h2", "--volume", f"v;touch {first}"], environ)
    assert status == ExitStatus.USAGE, stderr
    assert_no_marker([h1, h2], (first, second))


def test_hostile_host_paths_quoted(lab: Lab, h1: LabHost, home: Path, tmp_path: Path) -> None:
    first, second = marker_paths()
    config = load_config(write_config(tmp_path / "ddm.yaml", lab, lab.known_hosts),
                         {"HOME": str(home), "USER": "root"})
    hostile = [f"/tmp/x'; touch {first}; '", f"/tmp/$(touch {first})", f"/tmp/`touch {second}`",
               f'/tmp/x"; touch {second}; "', f"/tmp/a b; touch {second}"]

    with open_engine(config.host("h1"), config) as engine:
        for path in hostile:
            assert engine.free_bytes(path) is None
            result = engine.exec_command(["printf", "%s", path])
            assert result.exit_status == 0
            assert result.stdout == path.encode()

    assert_no_marker([h1], (first, second))


# Secrets


def encrypted_copy(key_path: Path, destination: Path, passphrase: str) -> Path:
    key = serialization.load_ssh_private_key(key_path.read_bytes(), password=None)
    destination.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.BestAvailableEncryption(passphrase.encode())))
    destination.chmod(0o600)
    return destination


def key_material(*paths: Path) -> list[str]:
    """Return the base64 body lines of private key files (the secret part of each file)."""
    lines = []
    for path in paths:
        lines += [line for line in path.read_text().splitlines() if line and "PRIVATE KEY" not in line]
    return lines


def find_secrets(texts: dict[str, bytes], secrets: list[str]) -> list[str]:
    found = []
    for where, data in texts.items():
        for secret in secrets:
            if secret.encode() in data:
                found.append(f"{secret[:12]}... in {where}")
    return found


def test_no_secret_in_output_state_or_logs(
    lab: Lab, h1: LabHost, h2: LabHost, resources: LabResources, tmp_path: Path, home: Path,
) -> None:
    locked = encrypted_copy(lab.identity_file, tmp_path / "locked_key", PASSPHRASE)
    config = write_config(tmp_path / "ddm.yaml", lab, lab.known_hosts, identity_file=locked)
    volume = resources.create_volume(h1)
    resources.add_volume(h2, volume)
    write_volume_tree(h1, volume, {"data.bin": RandomFile(256 * 1024, seed=5), "a.txt": "a\n"})
    database = tmp_path / "state" / "tasks.db"
    base = {"HOME": str(home), "USER": "root", "DDM_STATE_DB": str(database),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    runs: dict[str, subprocess.CompletedProcess[bytes]] = {}

    def ddm(name: str, prog: str, *args: str, passphrase: str | None) -> subprocess.CompletedProcess[bytes]:
        environ = dict(base)
        if passphrase is not None:
            environ["DDM_SSH_PASSPHRASE"] = passphrase
        runs[name] = subprocess.run([sys.executable, "-m", f"{prog}.cli", "--config", str(config),
                                     "-vv", *args], env=environ, capture_output=True, timeout=300)
        return runs[name]

    migrated = ddm("migrate", "ddmctl", "migrate", "--from", "h1", "--to", "h2", "--volume", volume,
                   "--yes", "--json", passphrase=PASSPHRASE)
    status = ddm("status", "ddmctl", "list", "--json", passphrase=PASSPHRASE)
    no_passphrase = ddm("no-passphrase", "ddmdriver", "ping", "h1", passphrase=None)
    wrong = ddm("wrong", "ddmctl", "migrate", "--from", "h1", "--to", "h2", "--volume", volume,
                "--yes", "--json", passphrase="not the passphrase")

    assert migrated.returncode == 0, migrated.stderr.decode()
    assert status.returncode == 0
    assert b'"state": "succeeded"' in migrated.stdout
    assert b"DEBUG" in migrated.stderr
    assert no_passphrase.returncode == ExitStatus.AUTHENTICATION
    assert b"is encrypted" in no_passphrase.stderr
    assert b"DDM_SSH_PASSPHRASE" in no_passphrase.stderr
    assert wrong.returncode == ExitStatus.AUTHENTICATION
    assert b"cannot decrypt SSH key file" in wrong.stderr
    assert diff_free(snapshot_volume_tree(h1, volume), snapshot_volume_tree(h2, volume))

    texts = {f"{name} {stream}": getattr(run, stream) for name, run in runs.items()
             for stream in ("stdout", "stderr")}
    for path in database.parent.iterdir():
        texts[path.name] = path.read_bytes()
    with sqlite3.connect(database) as connection:
        texts["tasks.db dump"] = "\n".join(connection.iterdump()).encode()
    secrets = [PASSPHRASE, "not the passphrase", *key_material(locked, lab.identity_file)]
    assert len(secrets) > 4
    assert find_secrets(texts, secrets) == []


def diff_free(expected: dict, actual: dict) -> bool:
    return set(expected) == set(actual) and all(
        expected[path].sha256 == actual[path].sha256 for path in expected)


# Hostile archive content through the Engine API path


class HostileSource:
    """A source engine whose archive stream is a hand-made tar, with a real host's name."""

    def __init__(self, data: bytes) -> None:
        self.host = type("Host", (), {"name": "hostile"})()
        self.data = data

    def get_archive(self, container_id: str, path: str, *, chunk_size: int) -> HostileStream:
        return HostileStream(self.data)


class HostileStream:
    def __init__(self, data: bytes) -> None:
        self.buffer = io.BytesIO(data)

    def read(self, size: int) -> bytes:
        return self.buffer.read(size)

    def abort(self) -> None:
        self.buffer.seek(0, io.SEEK_END)

    def close(self) -> None:
        pass


def hostile_tar(members: list[tuple[str, str, str]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        directory = tarfile.TarInfo("v")
        directory.type = tarfile.DIRTYPE
        directory.mode = 0o755
        archive.addfile(directory)
        padding = tarfile.TarInfo("v/padding.bin")
        padding.size = 64 * 1024
        archive.addfile(padding, io.BytesIO(bytes(padding.size)))
        for name, kind, value in members:
            info = tarfile.TarInfo(name)
            if kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, value
                archive.addfile(info)
            else:
                data = value.encode()
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([("v/../escaped-dotdot", "file", "x")], "contains '..'"),
        ([("/escaped-absolute", "file", "x")], "is absolute"),
        ([("escaped-outside", "file", "x")], "outside the root v"),
        ([("v/link", "symlink", "/"), ("v/link/escaped-through-link", "file", "x")],
         "runs through the symlink v/link"),
    ],
)
def test_hostile_archive_stopped_before_target(
    lab: Lab, h2: LabHost, resources: LabResources, home: Path, tmp_path: Path,
    members: list[tuple[str, str, str]], reason: str,
) -> None:
    config = load_config(write_config(tmp_path / "ddm.yaml", lab, lab.known_hosts),
                         {"HOME": str(home), "USER": "root"})
    volume = resources.create_volume(h2)
    data = hostile_tar(members)

    with open_engine(config.host("h2"), config) as target:
        helper = target.create_helper(volume, read_only=False, labels={"ddm.task": "hostile"})
        resources.add_container(h2, helper)
        with pytest.raises(UnsafeArchiveMember) as raised:
            relay_archive(HostileSource(data), "f" * 12, "/v", target, helper, "/",  # type: ignore[arg-type]
                          guard=ArchiveGuard(b"v"), chunk_size=4096)
        changes = target.api.diff(helper) or []

    assert reason in str(raised.value)
    assert [change["Path"] for change in changes if "escaped" in change["Path"]] == []
    written = snapshot_volume_tree(h2, volume)
    assert not any(b"escaped" in path for path in written)
    for path in ("/escaped-dotdot", "/escaped-absolute", "/escaped-outside",
                 "/escaped-through-link", "/var/lib/docker/volumes/escaped-dotdot"):
        assert h2.run(["test", "-e", path], check=False).returncode != 0, path
