"""Tests of the five commands' error handling, run in-process through ddmctl.common.run_main.

Every failure must print exactly one line, "PROG: error: ...", on stderr, nothing on stdout,
no traceback unless --debug is given, and return the documented exit status.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from ddm import __version__, api
from ddm.config import load_config
from ddm.errors import ExitStatus, UsageError
from ddm.store import TaskStore, default_store_path
from ddm.task import Task
from tests.unit.cli_support import (
    COMMAND_NAMES,
    command_available,
    error_line,
    invoke,
    snapshot_tree,
)

pytestmark = pytest.mark.usefixtures("no_network")

SUBCOMMANDS = {
    "ddmctl": ["migrate", "list", "status", "resume", "cancel", "rollback"],
    "ddmsyncer": ["run", "serve"],
}

EXIT_STATUS_LINES = ["0    success", "1    migration", "2    usage", "3    connection",
                     "4    SSH host key", "5    SSH authentication", "6    conflict",
                     "130  interrupted"]


def present_commands() -> list[str]:
    return [prog for prog in COMMAND_NAMES if command_available(prog)]


# --version and --help


@pytest.mark.parametrize("prog", present_commands())
def test_version(environ: dict[str, str], prog: str) -> None:
    outcome = invoke(prog, ["--version"], environ)

    assert outcome.status == 0
    assert outcome.stdout == f"{prog} {__version__}\n"
    assert outcome.stderr == ""


@pytest.mark.parametrize("prog", present_commands())
@pytest.mark.parametrize("option", ["--help", "-h"])
def test_help(environ: dict[str, str], prog: str, option: str) -> None:
    outcome = invoke(prog, [option], environ)

    assert outcome.status == 0
    assert outcome.stderr == ""
    assert outcome.stdout.startswith(f"Usage: {prog} ")
    assert f"Example:\n    {prog} " in outcome.stdout
    assert "Exit statuses:" in outcome.stdout
    for line in EXIT_STATUS_LINES:
        assert line in outcome.stdout


@pytest.mark.parametrize(
    ("prog", "subcommand"),
    [(prog, name) for prog, names in SUBCOMMANDS.items() for name in names],
)
def test_subcommand_help(environ: dict[str, str], prog: str, subcommand: str) -> None:
    outcome = invoke(prog, [subcommand, "--help"], environ)

    assert outcome.status == 0
    assert outcome.stderr == ""
    assert outcome.stdout.startswith(f"Usage: {prog} {subcommand} ")
    assert f"Example:\n    {prog} {subcommand}" in outcome.stdout
    assert "Exit statuses:" in outcome.stdout
    assert "130  interrupted" in outcome.stdout


def test_rollback_help_names_changed_volume_conflict(environ: dict[str, str]) -> None:
    outcome = invoke("ddmctl", ["rollback", "--help"], environ)
    joined = " ".join(outcome.stdout.split())

    assert outcome.status == 0
    assert ("6 conflict: another task holds the volume, the task's state forbids the action, "
            "or a rollback kept a target volume that changed since the task") in joined


def test_exit_status_docs_name_changed_volume_conflict() -> None:
    root = Path(__file__).resolve().parents[2]
    rows = [line for line in (root / "docs" / "exit-statuses.md").read_text().splitlines()
            if line.startswith("| 6 |")]
    readme_rows = [line for line in (root / "README.md").read_text().splitlines()
                   if line.startswith("| 6 |")]
    chinese_rows = [line for line in (root / "README.zh-CN.md").read_text().splitlines()
                    if line.startswith("| 6 |")]

    assert len(rows) == 1
    assert "`ddmctl rollback` kept a target volume that changed or was replaced" in rows[0]
    assert readme_rows == ["| 6 | another task holds the volume, the task's state forbids the "
                           "action, or a rollback kept a target volume that changed since the "
                           "task |"]
    assert len(chinese_rows) == 1
    assert "回滚保留了自任务以来已被更改的目标卷" in chinese_rows[0]


def test_help_writes_nothing(home: Path, environ: dict[str, str]) -> None:
    before = snapshot_tree(home)

    for prog in present_commands():
        invoke(prog, ["--help"], environ)

    assert snapshot_tree(home) == before


# Usage errors from the argument parser


USAGE_ERRORS = [
    # (prog, args, text the error line must contain)
    ("ddmctl", [], "missing command"),
    ("ddmctl", ["nosuch"], "No such command 'nosuch'"),
    ("ddmctl", ["--nosuch"], "No such option"),
    ("ddmctl", ["--config"], "'--config' requires an argument"),
    ("ddmctl", ["list", "--state", "lost"], "'lost' is not one of"),
    ("ddmctl", ["list", "--limit", "0"], "0 is not in the range"),
    ("ddmctl", ["list", "--limit", "many"], "'many' is not a valid integer"),
    ("ddmctl", ["status"], "Missing argument 'TASK'"),
    ("ddmctl", ["rollback", "a", "b"], "unexpected extra argument (b)"),
    ("ddmctl", ["migrate"], "Missing option '--from'"),
    ("ddmctl", ["migrate", "--from", "a", "--to", "b"], "Missing option '--volume'"),
    ("ddmctl", ["migrate", "--from", "a", "--to", "b", "--volume", "v1", "--verify", "deep"],
     "'deep' is not one of"),
    ("ddminit", ["--nosuch"], "No such option"),
    ("ddminit", ["--host"], "'--host' requires an argument"),
    ("ddmverify", [], "Missing option '--from'"),
    ("ddmverify", ["--from", "a", "--to", "b"], "Missing option '--volume'"),
    ("ddmsyncer", [], "missing command"),
    ("ddmsyncer", ["run"], "Missing argument 'TASK'"),
    ("ddmsyncer", ["serve", "--concurrency", "0"], "0 is not in the range"),
    ("ddmsyncer", ["serve", "--poll-interval", "0"], "is not in the range"),
]


@pytest.mark.parametrize(("prog", "args", "expected"), USAGE_ERRORS)
def test_usage_error(
    home: Path, configured: dict[str, str], prog: str, args: list[str], expected: str
) -> None:
    before = snapshot_tree(home)

    outcome = invoke(prog, args, configured)

    line = error_line(outcome, prog)
    assert expected in line
    # The hint names the (sub)command whose options were wrong.
    subcommand = args[:1] if args and not args[0].startswith("-") else []
    if "No such command" in expected:
        subcommand = []
    command = " ".join([prog, *subcommand])
    assert line.endswith(f"run '{command} --help' for usage")
    assert snapshot_tree(home) == before


# Errors raised by DDM after parsing


VALIDATION_ERRORS = [
    # (prog, args, text the error line must contain)
    ("ddmctl", ["migrate", "--from", "nosuch", "--to", "b", "--volume", "v1", "--yes"],
     "unknown host 'nosuch'"),
    ("ddmctl", ["migrate", "--from", "a", "--to", "nosuch", "--volume", "v1", "--yes"],
     "unknown host 'nosuch'"),
    ("ddmctl", ["migrate", "--from", "a", "--to", "b", "--volume", "v", "--yes"],
     "invalid volume name 'v'"),
    ("ddmctl", ["migrate", "--from", "a", "--to", "b", "--volume", "ab\n", "--yes"],
     "invalid volume name 'ab\\n'"),
    ("ddmctl", ["migrate", "--from", "a", "--to", "b", "--volume", "v1:", "--yes"],
     "invalid volume mapping 'v1:': missing target volume name; write SRC to keep the name, "
     "or SRC:DST to rename the volume"),
    ("ddmctl", ["migrate", "--from", "a", "--to", "b", "--volume", ":t1", "--yes"],
     "invalid volume mapping ':t1': missing source volume name"),
    ("ddmctl", ["migrate", "--from", "a", "--to", "b", "--volume", "vol2:bb:cc", "--yes"],
     "invalid volume mapping 'vol2:bb:cc': more than one ':'; write SRC to keep the name, "
     "or SRC:DST to rename the volume"),
    ("ddmctl", ["migrate", "--from", "a", "--to", "b", "--volume", "v1", "--volume", "v1",
                "--yes"], "source volume 'v1' given twice"),
    ("ddmctl", ["migrate", "--from", "a", "--to", "b", "--volume", "v1:t1", "--volume", "v2:t1",
                "--yes"], "target volume 't1' given twice"),
    ("ddmctl", ["migrate", "--from", "a", "--to", "a", "--volume", "v1", "--yes"],
     "would be copied onto itself"),
    ("ddmctl", ["migrate", "--from", "a", "--to", "b", "--volume", "v1", "--force"],
     "needs --yes"),
    ("ddmctl", ["--config", "missing.yaml", "list"], "config file not found: missing.yaml"),
    ("ddminit", ["--host", "h1", "--yes"], "invalid --host 'h1'"),
    ("ddminit", ["--host", "local=unix:///run/docker.sock", "--yes"], "'local' is reserved"),
    ("ddminit", ["--host", "LOCAL=unix:///run/docker.sock", "--yes"], "'LOCAL' is reserved"),
    ("ddminit", ["--host", "Local=unix:///run/docker.sock", "--yes"], "'Local' is reserved"),
    ("ddminit", ["--host", "h1=tcp://127.0.0.1:2375", "--host", "h1=tcp://127.0.0.1:2376",
                 "--yes"],
     "host 'h1' given twice: --host h1=tcp://127.0.0.1:2375 and --host h1=tcp://127.0.0.1:2376"),
    ("ddminit", ["--host", "h1=ftp://h1", "--yes"], "unsupported URL scheme 'ftp'"),
    ("ddminit", ["--host", "h1=ssh://h1:0", "--yes"], "invalid port 0"),
    ("ddminit", ["--host", "h1=ssh://root:pw@h1", "--yes"], "contains a password"),
    ("ddminit", ["--host", "h1=ssh://root:ab/cd@h1", "--yes"], "URL for host 'h1' contains a password"),
    ("ddminit", ["--host", "ssh://root:secret@h1", "--yes"],
     "invalid --host 'ssh://root:***@h1'"),
    ("ddminit", ["--host", "h1=ssh://root@h1", "--host", "h1=ssh://root:secret@h2", "--yes"],
     "host 'h1' given twice: --host h1=ssh://root@h1 and --host h1=ssh://root:***@h2"),
    ("ddminit", ["--host", "h1=ssh://h1", "--docker-socket", "docker.sock", "--yes"],
     "invalid docker_socket 'docker.sock'"),
    ("ddmverify", ["--from", "nosuch", "--to", "b", "--volume", "v1"], "unknown host 'nosuch'"),
    ("ddmverify", ["--from", "a", "--to", "a", "--volume", "v1"], "would be copied onto itself"),
    ("ddmverify", ["--from", "a", "--to", "b", "--volume", "-v1"], "invalid volume name '-v1'"),
]


@pytest.mark.parametrize(("prog", "args", "expected"), VALIDATION_ERRORS)
def test_validation_error(
    home: Path, configured: dict[str, str], prog: str, args: list[str], expected: str
) -> None:
    before = snapshot_tree(home)

    outcome = invoke(prog, args, configured)

    line = error_line(outcome, prog)
    assert expected in line
    assert snapshot_tree(home) == before


@pytest.mark.parametrize(("name", "advice"), [
    ("nosuch", "add one with 'ddminit --host nosuch=URL'"),
    ("LOCAL", "host names are case-sensitive, and the local Docker engine is 'local'"),
    ("Local", "host names are case-sensitive, and the local Docker engine is 'local'"),
    ("A", "host names are case-sensitive, so use 'a'"),
])
def test_unknown_host_advice(home: Path, configured: dict[str, str], name: str,
                             advice: str) -> None:
    # ddminit rejects 'LOCAL' and 'A' next to 'a', so the hint must not suggest adding them.
    outcome = invoke("ddmctl", ["plan", "--from", name, "--to", "a", "--volume", "v1"],
                     configured)

    config_path = home / ".config" / "ddm" / "config.yaml"
    assert error_line(outcome, "ddmctl") == (
        f"ddmctl: error: unknown host '{name}' in {config_path}; known hosts: a, b, local; "
        f"{advice}")


def test_invalid_config_reported_before_store(home: Path, environ: dict[str, str]) -> None:
    (home / "bad.yaml").write_text("version: 2\n")
    before = snapshot_tree(home)

    outcome = invoke("ddmctl", ["--config", "bad.yaml", "list"], environ)

    line = error_line(outcome, "ddmctl")
    assert "unsupported config version 2 in bad.yaml" in line
    assert snapshot_tree(home) == before


def test_ddm_config_env_honoured(home: Path, environ: dict[str, str]) -> None:
    (home / "bad.yaml").write_text("hosts: [a]\n")
    environ["DDM_CONFIG"] = str(home / "bad.yaml")

    outcome = invoke("ddmctl", ["list"], environ)

    line = error_line(outcome, "ddmctl")
    assert f"invalid 'hosts' in {home / 'bad.yaml'}" in line


def test_ddm_config_read_from_environment(
    home: Path, environ: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The process environment must not leak into a command run with its own Environment.
    monkeypatch.setenv("DDM_CONFIG", str(home / "bad-from-os-environ.yaml"))

    outcome = invoke("ddmctl", ["list", "--json"], environ)

    assert outcome.status == 0, outcome
    assert outcome.stdout == "[]\n"


def test_debug_prints_traceback(home: Path, environ: dict[str, str]) -> None:
    (home / "bad.yaml").write_text("version: 2\n")

    outcome = invoke("ddmctl", ["--debug", "--config", "bad.yaml", "list"], environ)

    assert outcome.status == ExitStatus.USAGE
    assert outcome.stdout == ""
    assert outcome.stderr.startswith("Traceback")
    assert "ConfigError" in outcome.stderr
    assert outcome.stderr.splitlines()[-1].startswith("ddmctl: error: unsupported config version")


def test_no_traceback_without_debug(home: Path, environ: dict[str, str]) -> None:
    (home / "bad.yaml").write_text("version: 2\n")

    outcome = invoke("ddmctl", ["-v", "-v", "--config", "bad.yaml", "list"], environ)

    assert "Traceback" not in outcome.stderr
    assert outcome.status == ExitStatus.USAGE


# ddminit


def test_ddminit_yes_writes_config(home: Path, environ: dict[str, str]) -> None:
    outcome = invoke("ddminit", [
        "--host", "old=ssh://root@old.example:2222",
        "--host", "new=ssh://deploy@new.example",
        "--identity-file", "~/.ssh/id_ed25519",
        "--docker-socket", "/run/docker.sock",
        "--yes",
    ], environ)
    path = home / ".config" / "ddm" / "config.yaml"

    assert outcome.status == 0, outcome
    assert outcome.stdout == f"{path}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    config = load_config(path, environ)
    assert sorted(config.hosts) == ["local", "new", "old"]
    assert config.host("old").url == "ssh://root@old.example:2222"
    assert config.host("old").docker_socket == "/run/docker.sock"
    assert config.host("new").user == "deploy"
    assert config.identity_file == home / ".ssh" / "id_ed25519"


def test_ddminit_keeps_existing_hosts(home: Path, environ: dict[str, str]) -> None:
    first = invoke("ddminit", ["--host", "old=ssh://old.example", "--yes"], environ)
    second = invoke("ddminit", ["--host", "new=ssh://new.example", "--yes"], environ)
    third = invoke("ddminit", ["--host", "old=ssh://moved.example", "--yes"], environ)

    assert [first.status, second.status, third.status] == [0, 0, 0]
    config = load_config(home / ".config" / "ddm" / "config.yaml", environ)
    assert sorted(config.hosts) == ["local", "new", "old"]
    assert config.host("old").hostname == "moved.example"


def test_ddminit_explicit_config_path(home: Path, environ: dict[str, str]) -> None:
    outcome = invoke("ddminit", ["--config", "sub/ddm.yaml", "--host", "h1=ssh://h1", "--yes"],
                     environ)

    assert outcome.status == 0, outcome
    assert "h1" in load_config(home / "sub" / "ddm.yaml", environ).hosts
    assert not (home / ".config").exists()


def test_ddminit_parent_is_file(home: Path, environ: dict[str, str]) -> None:
    (home / "parent").write_text("a file\n")
    before = snapshot_tree(home)

    outcome = invoke("ddminit", ["--config", "parent/config.yaml", "--host", "h1=ssh://h1",
                                 "--yes"], environ)

    line = error_line(outcome, "ddminit")
    assert "cannot write config file parent/config.yaml" in line
    assert snapshot_tree(home) == before


def test_ddminit_needs_yes_off_terminal(home: Path, environ: dict[str, str]) -> None:
    before = snapshot_tree(home)

    outcome = invoke("ddminit", ["--host", "h1=ssh://h1.example"], environ, stdin_isatty=False)

    line = error_line(outcome, "ddminit")
    assert "without confirmation" in line
    assert "--yes" in line
    assert snapshot_tree(home) == before


def test_ddminit_invalid_existing_untouched(home: Path, environ: dict[str, str]) -> None:
    config_dir = home / ".config" / "ddm"
    config_dir.mkdir(parents=True)
    (config_dir / "config.yaml").write_text("hosts:\n  h1: ssh://h1:0\n")
    before = snapshot_tree(home)

    outcome = invoke("ddminit", ["--host", "h2=ssh://h2", "--yes"], environ)

    line = error_line(outcome, "ddminit")
    assert "invalid port 0" in line
    assert snapshot_tree(home) == before


# ddmctl list and status


def test_list_json_empty(home: Path, environ: dict[str, str]) -> None:
    outcome = invoke("ddmctl", ["list", "--json"], environ)

    assert outcome.status == 0
    assert outcome.stdout == "[]\n"
    assert outcome.stderr == ""


def test_list_table_empty(home: Path, environ: dict[str, str]) -> None:
    outcome = invoke("ddmctl", ["list"], environ)

    assert outcome.status == 0
    assert outcome.stdout.splitlines()[0].startswith("ID ")
    assert len(outcome.stdout.splitlines()) == 1


def test_status_unknown_task(home: Path, environ: dict[str, str]) -> None:
    outcome = invoke("ddmctl", ["status", "nosuchtask"], environ)

    line = error_line(outcome, "ddmctl")
    assert "task 'nosuchtask' not found" in line


def test_status_and_list_of_stored_task(configured: dict[str, str]) -> None:
    store = TaskStore(default_store_path(configured))
    task = api.create_task(store, load_config(None, configured), source="a", target="b",
                           volumes=["pgdata", "uploads:uploads-2"])
    store.close()

    status = invoke("ddmctl", ["status", task.id[:6], "--json", "--events"], configured)
    listing = invoke("ddmctl", ["list", "--json"], configured)

    assert status.status == 0, status
    data = json.loads(status.stdout)
    assert data["id"] == task.id
    assert data["state"] == "queued"
    assert [volume["target"] for volume in data["volumes"]] == ["pgdata", "uploads-2"]
    assert [event["kind"] for event in data["events"]] == ["created"]
    assert listing.status == 0
    assert [entry["id"] for entry in json.loads(listing.stdout)] == [task.id]


def test_status_ambiguous_prefix(configured: dict[str, str]) -> None:
    store = TaskStore(default_store_path(configured))
    spec = api.build_spec(load_config(None, configured), source="a", target="b",
                          volumes=["pgdata"])
    store.create_task(Task(id="abcd00000001", spec=spec))
    store.create_task(Task(id="abcd00000002", spec=spec))
    store.close()

    ambiguous = invoke("ddmctl", ["status", "abcd"], configured)
    unique = invoke("ddmctl", ["status", "abcd00000002", "--json"], configured)

    line = error_line(ambiguous, "ddmctl")
    assert "task ID prefix 'abcd' is ambiguous" in line
    assert unique.status == 0
    assert json.loads(unique.stdout)["id"] == "abcd00000002"


def test_incremental_with_force_is_usage_error(configured: dict[str, str]) -> None:
    outcome = invoke("ddmctl", ["migrate", "--from", "a", "--to", "b", "--volume", "pgdata",
                                "--incremental", "--force", "--yes"], configured)

    line = error_line(outcome, "ddmctl")
    assert outcome.status == 2
    assert "--incremental and --force ask for opposite things" in line


def test_incremental_with_engine_path_is_usage_error(configured: dict[str, str]) -> None:
    outcome = invoke("ddmctl", ["migrate", "--from", "a", "--to", "b", "--volume", "pgdata",
                                "--incremental", "--data-path", "engine", "--yes"], configured)

    line = error_line(outcome, "ddmctl")
    assert outcome.status == 2
    assert "--incremental does not work with --data-path engine" in line


class _EngineWithVolumes:
    """Engine stand-in: host 'a' has the volume 'vlogs', host 'b' has none."""

    def __init__(self, host: object) -> None:
        self.host = host

    def __enter__(self) -> _EngineWithVolumes:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def volume_inspect(self, name: str) -> object | None:
        if self.host.name == "a" and name == "vlogs":
            return object()
        return None


@pytest.mark.parametrize(("volume", "expected"), [
    ("missingvol", "volume 'missingvol' not found on host 'a'"),
    ("vlogs:nothere", "volume 'nothere' not found on host 'b'"),
])
def test_ddmverify_missing_volume_is_usage_error(
    configured: dict[str, str], monkeypatch: pytest.MonkeyPatch, volume: str, expected: str
) -> None:
    # A missing volume means the check could not run, which must differ from "differs" (1).
    from ddmdriver import engine as engine_module

    monkeypatch.setattr(engine_module, "open_engine",
                        lambda host, config: _EngineWithVolumes(host))

    outcome = invoke("ddmverify", ["--from", "a", "--to", "b", "--volume", volume, "--deep"],
                     configured)

    assert outcome.status == ExitStatus.USAGE
    assert expected in error_line(outcome, "ddmverify")


@pytest.mark.parametrize(("prog", "args"), [
    ("ddmverify", ["--from", "a", "--to", "b", "--volume", "missingvol"]),
    ("ddmdriver", ["manifest", "a", "missingvol"]),
])
def test_missing_volume_same_status_everywhere(
    configured: dict[str, str], monkeypatch: pytest.MonkeyPatch, prog: str, args: list[str]
) -> None:
    # Both commands read a volume that the operator named; neither may exit 1 ("differs").
    from ddmdriver import cli as driver_cli
    from ddmdriver import engine as engine_module

    def open_engine(host: object, config: object) -> _EngineWithVolumes:
        return _EngineWithVolumes(host)

    monkeypatch.setattr(engine_module, "open_engine", open_engine)
    monkeypatch.setattr(driver_cli, "open_engine", open_engine)

    outcome = invoke(prog, args, configured)

    assert outcome.status == ExitStatus.USAGE
    assert error_line(outcome, prog) == (
        f"{prog}: error: volume 'missingvol' not found on host 'a'; check the name with "
        "'docker volume ls' on that host")


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
@pytest.mark.parametrize("command", ["migrate", "create", "plan"])
def test_full_mode_rejects_explicit_codec(
    home: Path, configured: dict[str, str], command: str, codec: str
) -> None:
    # Full mode never compresses, so an explicit codec must not be dropped without a word.
    before = snapshot_tree(home)

    args = [command, "--from", "a", "--to", "b", "--mode", "full", "--container", "web2",
            "--compress", codec]
    if command == "migrate":
        args.append("--yes")

    outcome = invoke("ddmctl", args, configured)

    assert outcome.status == ExitStatus.USAGE
    assert f"--compress {codec} is for volumes mode" in error_line(outcome, "ddmctl")
    assert snapshot_tree(home) == before


def test_full_spec_rejects_explicit_codec(configured: dict[str, str]) -> None:
    with pytest.raises(UsageError, match="--compress zstd is for volumes mode"):
        api.build_full_spec(load_config(None, configured), source="a", target="b",
                            containers=["web2"], options={"compress": "zstd"})


def test_full_mode_rejects_host_data_path(home: Path, configured: dict[str, str]) -> None:
    # Full mode copies volumes only through the Engine API, so --data-path host must not be
    # dropped without a word.
    before = snapshot_tree(home)

    outcome = invoke("ddmctl", ["migrate", "--from", "a", "--to", "b", "--mode", "full",
                                "--container", "web2", "--data-path", "host", "--yes"], configured)

    line = error_line(outcome, "ddmctl")
    assert "--data-path host is for volumes mode" in line
    assert "leave out --data-path in full mode" in line
    assert snapshot_tree(home) == before


@pytest.mark.parametrize("options, named", [
    (["--incremental"], "--incremental is for volumes mode"),
    (["--parallel", "4"], "--parallel is for volumes mode"),
    (["--stop-writers", "--live"], "--stop-writers, --live are for volumes mode"),
    (["--pause"], "--pause is for volumes mode"),
])
def test_full_mode_rejects_volumes_options(home: Path, configured: dict[str, str],
                                           options: list[str], named: str) -> None:
    # Full mode ignored these options without a word; the operator must learn it up front.
    before = snapshot_tree(home)

    outcome = invoke("ddmctl", ["migrate", "--from", "a", "--to", "b", "--mode", "full",
                                "--container", "web2", *options, "--yes"], configured)

    assert outcome.status == 2
    line = error_line(outcome, "ddmctl")
    assert named in line
    assert "full mode stops the source containers itself" in line
    assert snapshot_tree(home) == before


def test_full_spec_rejects_host_data_path(configured: dict[str, str]) -> None:
    with pytest.raises(UsageError, match="--data-path host is for volumes mode"):
        api.build_full_spec(load_config(None, configured), source="a", target="b",
                            containers=["web2"], options={"data_path": "host"})


def test_rejected_resume_prints_nothing(environ: dict[str, str]) -> None:
    config = load_config(None, environ)
    store = TaskStore(default_store_path(environ))
    try:
        task = api.create_task(store, config, source="local", target="local",
                               volumes=("va:vb",), verify="full", force=False)
    finally:
        store.close()

    outcome = invoke("ddmctl", ["resume", task.id], environ)
    as_json = invoke("ddmctl", ["resume", task.id, "--json"], environ)

    assert outcome.status == 6, outcome.stderr
    assert outcome.stdout == ""
    assert f"task {task.id} is queued; only an interrupted task can be resumed" in outcome.stderr
    assert as_json.status == 6, as_json.stderr
    assert as_json.stdout == ""
