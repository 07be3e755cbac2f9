"""Tests of ddmdriver.sshconfig: reading ~/.ssh/config like OpenSSH, HOME from the environ."""

from __future__ import annotations

from pathlib import Path

import pytest

from ddm.errors import ConfigError
from ddmdriver.sshconfig import lookup_ssh_config


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / ".ssh").mkdir()
    return tmp_path


def write_config(home: Path, text: str, name: str = "config") -> Path:
    path = home / ".ssh" / name
    path.write_text(text)
    return path


def environ_for(home: Path) -> dict[str, str]:
    return {"HOME": str(home), "USER": "operator"}


def test_lookup_missing_file_is_empty(home: Path) -> None:
    options = lookup_ssh_config(home / ".ssh" / "config", "h1", environ_for(home))

    assert options == {"hostname": ["h1"]}


def test_lookup_first_value_wins(home: Path) -> None:
    path = write_config(
        home,
        "Host h1\n  HostName 127.0.0.21\n  Port 2222\n\nHost *\n  Port 22\n  User root\n",
    )

    options = lookup_ssh_config(path, "h1", environ_for(home))

    assert options["hostname"] == ["127.0.0.21"]
    assert options["port"] == ["2222"]
    assert options["user"] == ["root"]


def test_lookup_keywords_case_insensitive_and_equals(home: Path) -> None:
    path = write_config(home, "HOST h1\n  hostname=10.9.9.9\n  PORT = 2200\n")

    options = lookup_ssh_config(path, "h1", environ_for(home))

    assert options["hostname"] == ["10.9.9.9"]
    assert options["port"] == ["2200"]


def test_lookup_identity_files_accumulate(home: Path) -> None:
    path = write_config(
        home,
        "Host h1\n  IdentityFile ~/.ssh/first\nHost *\n  IdentityFile ~/.ssh/second\n",
    )

    options = lookup_ssh_config(path, "h1", environ_for(home))

    assert options["identityfile"] == [f"{home}/.ssh/first", f"{home}/.ssh/second"]


def test_lookup_tilde_uses_environ_home(home: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    other_home = tmp_path_factory.mktemp("other-home")
    path = write_config(home, "Host *\n  IdentityFile ~/.ssh/key\n  UserKnownHostsFile ~/kh\n")

    options = lookup_ssh_config(path, "h1", {"HOME": str(other_home)})

    assert options["identityfile"] == [f"{other_home}/.ssh/key"]
    assert options["userknownhostsfile"] == [f"{other_home}/kh"]


def test_lookup_tilde_only_at_start(home: Path) -> None:
    path = write_config(home, "Host *\n  IdentityFile /keys/a~b\n")

    options = lookup_ssh_config(path, "h1", environ_for(home))

    assert options["identityfile"] == ["/keys/a~b"]


def test_lookup_tokens_expanded(home: Path) -> None:
    path = write_config(
        home,
        "Host h1\n  HostName %h.example\n  IdentityFile %d/keys/%r@%h:%p_%n_%u_%%\n",
    )

    options = lookup_ssh_config(path, "h1", environ_for(home), user="root", port=2222)

    assert options["hostname"] == ["h1.example"]
    assert options["identityfile"] == [f"{home}/keys/root@h1.example:2222_h1_operator_%"]


def test_lookup_unknown_token_rejected(home: Path) -> None:
    path = write_config(home, "Host *\n  IdentityFile ~/.ssh/%z\n")

    with pytest.raises(ConfigError, match="unsupported token %z"):
        lookup_ssh_config(path, "h1", environ_for(home))


def test_lookup_wildcards_and_negation(home: Path) -> None:
    path = write_config(
        home,
        "Host *.lab !bad.lab\n  User labuser\nHost h?\n  Port 2022\n",
    )

    good = lookup_ssh_config(path, "good.lab", environ_for(home))
    bad = lookup_ssh_config(path, "bad.lab", environ_for(home))
    short = lookup_ssh_config(path, "h7", environ_for(home))

    assert good.get("user") == ["labuser"]
    assert "user" not in bad
    assert short.get("port") == ["2022"]
    assert "port" not in good


def test_lookup_quoted_argument(home: Path) -> None:
    path = write_config(home, 'Host h1\n  IdentityFile "/keys/with space/id"\n')

    options = lookup_ssh_config(path, "h1", environ_for(home))

    assert options["identityfile"] == ["/keys/with space/id"]


def test_lookup_comments_ignored(home: Path) -> None:
    path = write_config(home, "# comment\nHost h1 # trailing\n  Port 2222 # why\n")

    options = lookup_ssh_config(path, "h1", environ_for(home))

    assert options["port"] == ["2222"]


def test_lookup_proxyjump_kept(home: Path) -> None:
    path = write_config(home, "Host h2\n  HostName 127.0.0.22\n  ProxyJump root@h1:2222,h3\n")

    options = lookup_ssh_config(path, "h2", environ_for(home))

    assert options["proxyjump"] == ["root@h1:2222,h3"]


def test_lookup_include_relative_to_ssh_dir(home: Path) -> None:
    (home / ".ssh" / "conf.d").mkdir()
    write_config(home, "Host h1\n  Port 2201\n", name="conf.d/a.conf")
    write_config(home, "Host h1\n  Port 2202\n  User fromb\n", name="conf.d/b.conf")
    path = write_config(home, "Include conf.d/*.conf\nHost *\n  User default\n")

    options = lookup_ssh_config(path, "h1", environ_for(home))

    assert options["port"] == ["2201"]
    assert options["user"] == ["fromb"]


def test_lookup_include_inside_unmatched_host_skipped(home: Path) -> None:
    write_config(home, "Port 2999\n", name="extra")
    path = write_config(home, "Host other\n  Include extra\nHost *\n  Port 22\n")

    options = lookup_ssh_config(path, "h1", environ_for(home))

    assert options["port"] == ["22"]


def test_lookup_include_loop_rejected(home: Path) -> None:
    path = write_config(home, "Include config\n")

    with pytest.raises(ConfigError, match="Include nested"):
        lookup_ssh_config(path, "h1", environ_for(home))


def test_lookup_match_host_after_hostname(home: Path) -> None:
    path = write_config(
        home,
        "Host h1\n  HostName 127.0.0.21\nMatch host 127.0.0.*\n  Port 2222\n",
    )

    options = lookup_ssh_config(path, "h1", environ_for(home))

    assert options["port"] == ["2222"]


def test_lookup_match_user_and_all(home: Path) -> None:
    path = write_config(
        home,
        "Match user root\n  Port 2001\nMatch !user root\n  Port 2002\nMatch all\n  User x\n",
    )

    as_root = lookup_ssh_config(path, "h1", environ_for(home), user="root")
    as_other = lookup_ssh_config(path, "h1", environ_for(home), user="alice")

    assert as_root["port"] == ["2001"]
    assert as_other["port"] == ["2002"]
    assert as_root["user"] == ["x"]


def test_lookup_match_exec_never_runs(home: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = write_config(home, f"Match exec \"touch {marker}\"\n  Port 2003\n")

    options = lookup_ssh_config(path, "h1", environ_for(home))

    assert "port" not in options
    assert not marker.exists()


def test_lookup_unterminated_quote_rejected(home: Path) -> None:
    path = write_config(home, 'Host h1\n  IdentityFile "/keys/open\n')

    with pytest.raises(ConfigError, match=r"config:2"):
        lookup_ssh_config(path, "h1", environ_for(home))
