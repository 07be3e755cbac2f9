"""What ddminit writes, warns about and prints: symlinks, comments, keys and a declined write."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ddm.config import load_config
from tests.unit.cli_support import invoke, snapshot_tree

pytestmark = pytest.mark.usefixtures("no_network")


def test_symlinked_config_written_through(home: Path, environ: dict[str, str]) -> None:
    real = home / "real.yaml"
    real.write_text("hosts:\n  old: tcp://127.0.0.1:2375\n")
    os.chmod(real, 0o644)
    (home / "link.yaml").symlink_to("real.yaml")

    outcome = invoke("ddminit", ["--config", "link.yaml", "--host", "new=tcp://127.0.0.1:2376",
                                 "--yes"], environ)

    assert outcome.status == 0, outcome
    assert outcome.stdout == "link.yaml\n"
    assert outcome.stderr == (f"wrote {real}, the file that the symbolic link link.yaml "
                              "points to\n")
    assert os.readlink(home / "link.yaml") == "real.yaml"
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
    assert sorted(load_config(real, environ).hosts) == ["local", "new", "old"]
    assert sorted(entry.name for entry in home.iterdir()) == ["link.yaml", "real.yaml"]


def test_declined_write_changes_nothing(home: Path, environ: dict[str, str]) -> None:
    before = snapshot_tree(home)

    outcome = invoke("ddminit", ["--host", "h1=tcp://127.0.0.1:2375"], environ,
                     stdin_text="n\n", stdin_isatty=True)
    config_path = home / ".config" / "ddm" / "config.yaml"

    assert outcome.status == 1, outcome
    assert outcome.stdout == ""
    assert outcome.stderr == (
        f"write {config_path} with h1? [Y/n] "
        f"ddminit: error: nothing was written to {config_path} because the confirmation was declined; "
        "run ddminit again and answer yes, or pass --yes\n"
    )
    assert snapshot_tree(home) == before


def test_rewrite_warns_about_comments(home: Path, environ: dict[str, str]) -> None:
    config_path = home / "ddm.yaml"
    config_path.write_text(
        "# hosts of the move to the new rack\n"
        "hosts:\n"
        "  old: 'tcp://127.0.0.1:2375'   # the #1 server\n"
        "  plain: tcp://127.0.0.1:2377\n"
        "defaults:\n"
        "  on_failure: |\n"
        "    # not a comment: part of a block scalar\n"
        "# end\n"
    )

    outcome = invoke("ddminit", ["--config", "ddm.yaml", "--host", "new=tcp://127.0.0.1:2376",
                                 "--yes"], environ)

    assert outcome.status == 0, outcome
    assert outcome.stderr.splitlines() == [
        "warning: ddminit does not keep the comments in ddm.yaml (lines 1, 3, 8), because it "
        "writes the file anew from its values; to keep them, edit the file by hand instead",
        "wrote ddm.yaml",
    ]
    assert "#" not in config_path.read_text().replace("# not a comment", "")
    assert sorted(load_config(config_path, environ).hosts) == ["local", "new", "old", "plain"]


def test_rewrite_without_comments_is_quiet(home: Path, environ: dict[str, str]) -> None:
    # A "#" inside a quoted or plain scalar is part of the value, not a comment.
    (home / "ddm.yaml").write_text("known_hosts: '/keys/known #1'\nssh_config: /keys/config#1\n")

    outcome = invoke("ddminit", ["--config", "ddm.yaml", "--host", "new=tcp://127.0.0.1:2376",
                                 "--yes"], environ)

    assert outcome.status == 0, outcome
    assert outcome.stderr == "wrote ddm.yaml\n"


def test_public_key_as_identity_file(home: Path, environ: dict[str, str]) -> None:
    public_key = home / "id_ed25519.pub"
    public_key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHc0bXlrZXlieXRlc2FyZWhlcmUx "
                          "operator@workstation\n")
    os.chmod(public_key, 0o644)

    outcome = invoke("ddminit", ["--config", "ddm.yaml", "--identity-file", str(public_key),
                                 "--yes"], environ)

    assert outcome.status == 0, outcome
    assert outcome.stderr.splitlines() == [
        f"warning: identity file {public_key} is a public key, and SSH needs the private key; "
        f"pass the private key file, probably {home / 'id_ed25519'}, with --identity-file",
        "wrote ddm.yaml",
    ]


def test_yes_warns_about_unrecorded_key(home: Path, environ: dict[str, str]) -> None:
    known_hosts = home / "known_hosts"
    known_hosts.write_text(
        "[127.0.0.1]:2201 ssh-ed25519 "
        "AAAAC3NzaC1lZDI1NTE5AAAAIHc0bXlrZXlieXRlc2FyZWhlcmUxMjM0NTY3ODkwYWJj\n"
    )

    outcome = invoke("ddminit", ["--config", "ddm.yaml", "--known-hosts", str(known_hosts),
                                 "--host", "old=ssh://root@127.0.0.1:2201",
                                 "--host", "new=ssh://root@127.0.0.1:2202", "--yes"], environ)

    assert outcome.status == 0, outcome
    assert outcome.stderr.splitlines() == [
        f"warning: no SSH host key of new is recorded in {known_hosts}, so DDM rejects host "
        "'new' until one is; run 'ddminit --accept-host-key new=SHA256:...' with the "
        "fingerprint that the host's administrator gives you, or run ddminit on a terminal "
        "without --yes to check the fingerprint there",
        "wrote ddm.yaml",
    ]
    assert known_hosts.read_text().count("\n") == 1


def test_letter_case_twin_in_arguments(home: Path, environ: dict[str, str]) -> None:
    before = snapshot_tree(home)

    outcome = invoke("ddminit", ["--config", "ddm.yaml", "--host", "a=tcp://127.0.0.1:2375",
                                 "--host", "A=tcp://127.0.0.1:2376", "--yes"], environ)

    assert outcome.status == 2
    assert outcome.stdout == ""
    assert outcome.stderr == (
        "ddminit: error: host 'A' differs only in letter case from host 'a', also given with "
        "--host; two names that differ only in case are easy to mix up, so give one of them "
        "another name\n")
    assert snapshot_tree(home) == before


def test_letter_case_twin_of_file_host(home: Path, configured: dict[str, str]) -> None:
    config_path = home / ".config" / "ddm" / "config.yaml"
    before = snapshot_tree(home)

    outcome = invoke("ddminit", ["--host", "B=tcp://127.0.0.1:2375", "--yes"], configured)

    assert outcome.status == 2
    assert outcome.stdout == ""
    assert outcome.stderr == (
        f"ddminit: error: host 'B' differs only in letter case from host 'b' in {config_path}; "
        "two names that differ only in case are easy to mix up, so choose another name, or "
        "pass --host b=URL to "
        "change host 'b'\n")
    assert snapshot_tree(home) == before


def test_same_name_still_replaces_host(home: Path, configured: dict[str, str]) -> None:
    outcome = invoke("ddminit", ["--host", "b=tcp://127.0.0.1:2375", "--yes"], configured)

    assert outcome.status == 0, outcome
    config = load_config(home / ".config" / "ddm" / "config.yaml", configured)
    assert config.host("b").url == "tcp://127.0.0.1:2375"
    assert sorted(config.hosts) == ["a", "b", "local"]
