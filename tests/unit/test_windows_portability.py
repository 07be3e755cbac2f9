"""Windows portability of the controller side, checked on Linux.

The controller (ddmctl, ddminit, ddmverify, ddmsyncer and the ddm and ddmdriver code they use)
must not need fork, fcntl or POSIX-only signals. tests.windows.simulate runs Python with those
parts of the standard library removed; these tests import every controller module and run the
unit tests that way. Named pipes and the ctypes process check cannot run here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ddm.config import WINDOWS_ENGINE_URL, expand_path, load_config, parse_host_url
from ddm.errors import ConfigError
from ddm.processes import process_alive
from ddmctl.common import raise_on_sigterm
from ddmdriver.engine import open_engine
from tests.unit.cli_support import invoke

REPOSITORY = Path(__file__).resolve().parents[2]
CONTROLLER_PACKAGES = ("ddm", "ddmctl", "ddmdriver", "ddminit", "ddmsyncer", "ddmverify")
# Scripts that DDM sends to a Docker host and runs there; importing one runs it.
REMOTE_SCRIPTS = {"ddmsyncer.hostscan", "ddmsyncer.hostmanifest"}

# Unit tests left out of the simulated run, because their fixtures need POSIX themselves
# (mkfifo, geteuid, GNU tar on disk, a Unix socket standing in for a remote engine) or because
# they only fuzz inputs already run above.
POSIX_FIXTURE_TESTS = (
    "tests/unit/test_config.py::test_save_special_file_rejected",
    "tests/unit/test_tarstream.py::test_gnu_tar_archive_matches_disk",
    "tests/unit/test_tarstream.py::test_gnu_tar_posix_xattrs_and_acl",
    "tests/unit/test_driver_transport.py::test_dial_stdio_falls_back_to_socat",
    # Linux's subprocess.Popen.kill() sends signal.SIGKILL, which the simulation removes; on
    # Windows, Popen.kill() calls TerminateProcess instead.
    "tests/unit/test_callbacks.py::test_run_command_timeout",
    # A tree with a FIFO and GNU tar on disk; the deselection prefix covers every scan test.
    "tests/unit/test_hostverify.py::test_scan",
    "tests/unit/test_hostverify.py::test_manifest_json_keeps_sha256",
    "tests/unit/test_hostverify.py::test_builder_sha256_off_by_default",
    "tests/unit/test_hostverify.py::test_sha256_view_changes_only_file_digests",
    "tests/unit/test_hostverify.py::test_sha256_view_records_equal_scan_records",
    "tests/unit/test_hostverify.py::test_sha256_view_thread_returns_view",
)
SKIPPED_FILES = ("tests/unit/test_fuzz_corpus.py", "tests/unit/test_windows_portability.py")


def controller_modules() -> list[str]:
    """Return the dotted name of every module of the controller packages."""
    names = []
    for package in CONTROLLER_PACKAGES:
        for path in sorted((REPOSITORY / package).rglob("*.py")):
            parts = list(path.relative_to(REPOSITORY).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join(parts)
            if name not in REMOTE_SCRIPTS:
                names.append(name)
    return names


def run_simulated(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    """Run `python -m tests.windows.simulate ARGS` from the repository with a temporary HOME."""
    environ = {
        **os.environ,
        "PYTHONPATH": str(REPOSITORY),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
    }
    return subprocess.run(
        [sys.executable, "-m", "tests.windows.simulate", *args],
        cwd=REPOSITORY, env=environ, capture_output=True, text=True, check=False,
    )


def test_simulation_blocks_posix_modules(tmp_path: Path) -> None:
    result = run_simulated("import", "fcntl", "termios", "pwd", "grp", "resource", home=tmp_path)

    assert result.returncode == 1
    for name in ("fcntl", "termios", "pwd", "grp", "resource"):
        assert f"{name}: ImportError" in result.stdout


def test_controller_modules_import_without_posix(tmp_path: Path) -> None:
    modules = controller_modules()
    assert "ddmctl.cli" in modules
    assert "ddmdriver.ssh" in modules

    result = run_simulated("import", *modules, home=tmp_path)

    assert result.stdout == "", result.stdout
    assert result.returncode == 0, result.stderr


def test_unit_tests_pass_without_posix(tmp_path: Path) -> None:
    arguments = ["pytest", "-q", "-p", "no:cacheprovider", "tests/unit"]
    for node in POSIX_FIXTURE_TESTS:
        arguments += ["--deselect", node]
    for path in SKIPPED_FILES:
        arguments += ["--ignore", path]

    result = run_simulated(*arguments, home=tmp_path)

    summary = result.stdout.strip().splitlines()[-1:]
    assert result.returncode == 0, result.stdout[-4000:]
    assert "passed" in summary[0], summary
    assert "failed" not in summary[0], summary


def test_process_alive_for_this_and_ended_process() -> None:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    ended_pid = int(child.stdout)

    assert process_alive(os.getpid()) is True
    assert process_alive(ended_pid) is False
    assert process_alive(None) is False
    assert process_alive(0) is False


def test_npipe_host_rejected_off_windows(environ: dict[str, str]) -> None:
    host = parse_host_url("desktop", WINDOWS_ENGINE_URL)
    config = load_config(None, environ)

    with pytest.raises(ConfigError) as caught:
        open_engine(host, config)

    message = str(caught.value)
    assert "npipe:// named pipes exist only on Windows" in message
    assert "\n" not in message


def test_npipe_host_ping_exits_2(home: Path, environ: dict[str, str]) -> None:
    written = invoke("ddminit", ["--host", f"desktop={WINDOWS_ENGINE_URL}", "--yes"], environ)
    assert written.status == 0, written

    outcome = invoke("ddmdriver", ["ping", "desktop"], environ)

    assert outcome.status == 2
    assert outcome.stderr.startswith("ddmdriver: error: host desktop uses npipe:")
    assert len(outcome.stderr.splitlines()) == 1


def test_local_host_is_named_pipe_on_windows(monkeypatch: pytest.MonkeyPatch,
                                             environ: dict[str, str]) -> None:
    monkeypatch.setattr(sys, "platform", "win32")

    config = load_config(None, environ)

    assert config.host("local").url == WINDOWS_ENGINE_URL
    assert config.host("local").scheme == "npipe"


def test_raise_on_sigterm_without_posix_signals(monkeypatch: pytest.MonkeyPatch) -> None:
    previous = signal.getsignal(signal.SIGTERM)
    monkeypatch.delattr(signal, "SIGTERM")
    monkeypatch.delattr(signal, "SIGBREAK", raising=False)

    raise_on_sigterm()

    monkeypatch.undo()
    assert signal.getsignal(signal.SIGTERM) == previous


def test_expand_path_backslash_tilde(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    monkeypatch.setattr(os, "sep", "\\")

    expanded = expand_path("~\\.ssh\\id_ed25519", {"HOME": str(home)})

    assert expanded == home / ".ssh\\id_ed25519"
