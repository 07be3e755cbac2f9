"""The direct route's pieces that need no lab: keys, forced command, ssh options, config, scans."""

from __future__ import annotations

import shlex
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from ddm.config import load_config
from ddm.direct_config import validate_route
from ddm.errors import ConfigError, MigrationFailed, UsageError
from ddmdriver import direct
from ddmdriver.hostpath import HostAccess
from ddmsyncer.direct import compare_scans, manifest_from_scan
from ddmsyncer.incremental import Entry

ROOT_ACCESS = HostAccess("h2", (), "tar (GNU tar) 1.34")
TARGET = direct.DirectTarget("198.51.100.12", 22, "root", "ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAA")


def write_config(tmp_path: Path, host_lines: str) -> Path:
    path = tmp_path / "ddm.yaml"
    path.write_text("version: 1\nhosts:\n  h1: ssh://root@127.0.0.21:22\n  h2:\n"
                    "    url: ssh://root@127.0.0.22:22\n" + host_lines)
    return path


def test_task_key_is_ed25519_openssh():
    key = direct.generate_task_key("ddm-direct:0123456789ab:0:key")

    private = serialization.load_ssh_private_key(key.private_openssh, password=None)
    public_line = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    assert key.public_openssh == f"{public_line} ddm-direct:0123456789ab:0:key"
    assert key.public_openssh.startswith("ssh-ed25519 ")
    assert "PRIVATE" not in repr(key)


def test_task_keys_differ():
    assert direct.generate_task_key("a").public_openssh != direct.generate_task_key("a").public_openssh


def test_authorized_keys_line_restricts_and_forces_receive():
    key = direct.generate_task_key(direct.key_comment("0123456789ab", 3))
    command = direct.forced_command(ROOT_ACCESS, "/var/lib/docker/volumes/ddm-staging-0123456789ab-3/_data")

    line = direct.authorized_keys_line(key, command)

    assert line.startswith('restrict,command="tar --extract --file=- '
                           '--directory=/var/lib/docker/volumes/ddm-staging-0123456789ab-3/_data ')
    assert line.endswith(" ddm-direct:0123456789ab:3:key")
    assert direct.item_marker("0123456789ab", 3) in line
    assert direct.task_marker("0123456789ab") in line
    assert direct.item_marker("0123456789ab", 30) not in line
    assert "-P" not in shlex.split(command)
    assert "--absolute-names" not in command


@pytest.mark.parametrize("directory", [
    "relative/dir", "/a/../etc", "/a b", '/a"b', "/a\\b", "/a;rm", "/a$(id)", "/a\nb", "",
])
def test_forced_command_rejects_unsafe_directory(directory):
    with pytest.raises(MigrationFailed):
        direct.forced_command(ROOT_ACCESS, directory)


def test_forced_command_keeps_sudo_prefix():
    access = HostAccess("h2", ("sudo", "-n", "--"), "tar (GNU tar) 1.34")

    command = direct.forced_command(access, "/srv/volume")

    assert shlex.split(command)[:4] == ["sudo", "-n", "--", "tar"]


@pytest.mark.parametrize("task_id", ["../x", "a b", "", "x" * 65, "a;b"])
def test_markers_reject_invalid_task_id(task_id):
    with pytest.raises(ValueError):
        direct.task_marker(task_id)


def test_ssh_argv_trusts_only_the_verified_key():
    argv = direct.ssh_argv("/tmp/ddm-direct-0123456789ab-0", TARGET, "ddm-direct-0123456789ab-0")
    options = {argv[index + 1] for index, value in enumerate(argv) if value == "-o"}

    assert "StrictHostKeyChecking=yes" in options
    assert "UserKnownHostsFile=/tmp/ddm-direct-0123456789ab-0/known_hosts" in options
    assert "GlobalKnownHostsFile=/dev/null" in options
    assert "HostKeyAlgorithms=ssh-ed25519" in options
    assert "IdentitiesOnly=yes" in options
    assert "BatchMode=yes" in options
    assert "Ciphers=aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com" in options
    assert "StrictHostKeyChecking=accept-new" not in options
    assert "StrictHostKeyChecking=no" not in options
    assert argv[:3] == ["ssh", "-F", "/dev/null"]
    assert argv[-3:] == ["--", "198.51.100.12", "ddm-receive"]


def test_ssh_argv_rsa_host_key_uses_sha2_algorithms():
    target = direct.DirectTarget("198.51.100.12", 2222, "ops", "ssh-rsa", "AAAA")

    argv = direct.ssh_argv("/tmp/d", target, "alias")

    assert "HostKeyAlgorithms=rsa-sha2-512,rsa-sha2-256" in argv
    assert argv[argv.index("-p") + 1] == "2222"
    assert argv[argv.index("-l") + 1] == "ops"


def test_pipeline_script_is_one_line():
    script = direct.pipeline_script(ROOT_ACCESS, "/var/lib/docker/volumes/v/_data", "/tmp/d", TARGET, "alias")

    assert "\n" not in script
    assert "--totals" in script
    assert "-----BEGIN" not in script


@pytest.mark.parametrize("status_line, stderr, error_type", [
    (b"ddm-direct-status source-tar=0 ssh=255", b"Host key verification failed.", "HostKeyError"),
    (b"ddm-direct-status source-tar=0 ssh=255", b"root@x: Permission denied (publickey).",
     "AuthenticationFailed"),
    (b"ddm-direct-status source-tar=0 ssh=255", b"connect to host x port 22: No route to host",
     "ConnectionFailed"),
    (b"ddm-direct-status source-tar=0 ssh=2", b"tar: Cannot open", "TransferFailed"),
    (b"ddm-direct-status source-tar=2 ssh=0", b"tar: read error", "TransferFailed"),
    (b"", b"", "TransferFailed"),
])
def test_pipeline_failures_map_to_errors(status_line, stderr, error_type):
    from ddmdriver.ssh import CommandResult

    with pytest.raises(Exception) as raised:
        direct._raise_for_failure(CommandResult(0, status_line, stderr), "h1", TARGET, "volume 'v'")

    assert type(raised.value).__name__ == error_type


def test_pipeline_tolerates_file_changed_status():
    from ddmdriver.ssh import CommandResult

    direct._raise_for_failure(CommandResult(0, b"ddm-direct-status source-tar=1 ssh=0\n", b""), "h1",
                              TARGET, "volume 'v'")


def test_config_reads_direct_settings(tmp_path):
    path = write_config(tmp_path, "    direct_address: 198.51.100.12\n    direct_port: 2222\n"
                                  "    authorized_keys: /home/ops/.ssh/authorized_keys\n")

    host = load_config(path, {"HOME": str(tmp_path)}).host("h2")

    assert (host.direct_address, host.direct_port) == ("198.51.100.12", 2222)
    assert host.authorized_keys == "/home/ops/.ssh/authorized_keys"
    assert host.to_dict()["direct_port"] == 2222


@pytest.mark.parametrize("lines", [
    "    direct_address: 'a b'\n",
    "    direct_address: 12\n",
    "    direct_port: 0\n",
    "    direct_port: '22'\n",
    "    authorized_keys: relative/keys\n",
    "    authorized_keys: /a/../etc/shadow\n",
])
def test_config_rejects_invalid_direct_settings(tmp_path, lines):
    with pytest.raises(ConfigError):
        load_config(write_config(tmp_path, lines), {"HOME": str(tmp_path)})


def test_validate_route_requires_direct_address(tmp_path):
    config = load_config(write_config(tmp_path, ""), {"HOME": str(tmp_path)})

    validate_route(config, "h2", {"route": "relay"})
    with pytest.raises(UsageError, match="has no direct_address"):
        validate_route(config, "h2", {"route": "direct"})
    with pytest.raises(UsageError, match="invalid route"):
        validate_route(config, "h2", {"route": "sideways"})


def entry(path: bytes, kind: str = "file", **fields) -> Entry:
    values = dict(path=path, type=kind, mode=0o644, uid=0, gid=0, size=5, mtime_ns=1_500_000_001,
                  link=None, rdev=0, inode=1, nlink=1, digest="d" * 64)
    values.update(fields)
    return Entry(**values)


def test_compare_scans_finds_each_aspect():
    source = {b"a": entry(b"a"), b"b": entry(b"b", inode=2), b"gone": entry(b"gone", inode=3),
              b"sock": entry(b"sock", "socket", inode=4)}
    target = {b"a": entry(b"a", inode=9, digest="e" * 64), b"b": entry(b"b", inode=8, mtime_ns=1_500_000_002),
              b"extra": entry(b"extra", inode=7)}

    assert compare_scans(source, target) == [
        (b"a", "content"), (b"b", "mtime_ns"), (b"extra", "extra on target"),
        (b"gone", "missing on target"),
    ]


def test_compare_scans_checks_hard_link_groups():
    source = {b"x": entry(b"x", inode=5, nlink=2), b"y": entry(b"y", inode=5, nlink=2)}
    target = {b"x": entry(b"x", inode=6, nlink=2), b"y": entry(b"y", inode=7, nlink=2)}

    assert compare_scans(source, target) == [(b"x", "hard links"), (b"y", "hard links")]


def test_manifest_from_scan_marks_hard_links():
    scan = {b".": entry(b".", "dir", size=0), b"x": entry(b"x", inode=5, nlink=2),
            b"y": entry(b"y", inode=5, nlink=2), b"l": entry(b"l", "symlink", link=b"x", size=0),
            b"s": entry(b"s", "socket")}

    manifest = manifest_from_scan(scan)

    assert sorted(manifest.entries) == [b".", b"l", b"x", b"y"]
    assert manifest.entries[b"y"].type == "hardlink"
    assert manifest.entries[b"y"].linkname == b"x"
    assert manifest.entries[b"l"].linkname == b"x"
    assert manifest.entries[b"x"].mode == stat.S_IMODE(0o644)
    assert not manifest.hash_content
