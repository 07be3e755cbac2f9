"""Run Python code with the POSIX-only parts of the standard library made unavailable.

This is the closest check of Windows portability that a Linux machine allows. A module that
imports fcntl, termios, pwd, grp or resource fails with ImportError. os.fork, os.getuid,
SIGKILL, SIGHUP and the other names that Windows builds of Python lack are removed. It cannot
show that the Windows-only code paths (named pipes, ctypes calls) work.

Usage: python -m tests.windows.simulate import MODULE...   (import each module)
       python -m tests.windows.simulate pytest ARGS...     (run pytest)
"""

from __future__ import annotations

import importlib
import importlib.abc
import socket
import sys
from collections.abc import Sequence

BLOCKED_MODULES = frozenset(
    {"fcntl", "termios", "tty", "pty", "pwd", "grp", "resource", "syslog", "posix_ipc"}
)

# Names of `os` that the Windows build of Python 3.11 does not have.
POSIX_ONLY_OS_NAMES = (
    "fork", "forkpty", "getuid", "geteuid", "getgid", "getegid", "getgroups", "getpgid",
    "setsid", "setuid", "setgid", "killpg", "wait3", "wait4", "statvfs", "fstatvfs",
    "getloadavg", "sysconf", "pathconf", "fchown", "lchown", "chown", "mkfifo", "mknod",
)

# Signals and functions of `signal` that Windows lacks; Windows keeps SIGINT, SIGTERM,
# SIGABRT, SIGFPE, SIGILL, SIGSEGV, SIGBREAK, CTRL_C_EVENT and CTRL_BREAK_EVENT.
POSIX_ONLY_SIGNAL_NAMES = (
    "SIGKILL", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGCHLD", "SIGPIPE",
    "SIGSTOP", "SIGCONT", "SIGTSTP", "SIGWINCH", "alarm", "pause", "setitimer", "getitimer",
    "siginterrupt", "pthread_kill", "pthread_sigmask", "sigwait",
)


class PosixModuleBlocker(importlib.abc.MetaPathFinder):
    """A meta path finder that makes every module of BLOCKED_MODULES fail to import."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if fullname.split(".")[0] in BLOCKED_MODULES:
            raise ImportError(f"No module named {fullname!r} (blocked: POSIX-only)", name=fullname)
        return None


def install() -> None:
    """Block the POSIX-only modules and remove the POSIX-only names of os, signal and socket."""
    import os
    import signal

    for name in list(sys.modules):
        if name.split(".")[0] in BLOCKED_MODULES:
            del sys.modules[name]
    sys.meta_path.insert(0, PosixModuleBlocker())

    for name in POSIX_ONLY_OS_NAMES:
        if hasattr(os, name):
            delattr(os, name)
    for name in POSIX_ONLY_SIGNAL_NAMES:
        if hasattr(signal, name):
            delattr(signal, name)
    # Python on Windows has no AF_UNIX constant.
    if hasattr(socket, "AF_UNIX"):
        delattr(socket, "AF_UNIX")


def import_modules(names: Sequence[str]) -> int:
    """Import each module and print the ones that fail; return the number of failures."""
    failures = 0
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - every failure is reported
            failures += 1
            print(f"{name}: {type(error).__name__}: {error}")
    return failures


def main(argv: Sequence[str]) -> int:
    install()
    if argv[:1] == ["import"]:
        return 1 if import_modules(argv[1:]) else 0
    if argv[:1] == ["pytest"]:
        import _pytest.compat
        import _pytest.tmpdir
        import pytest

        # pytest calls os.getuid() unless sys.platform is win32; on Windows it uses None.
        _pytest.compat.get_user_id = lambda: None
        _pytest.tmpdir.get_user_id = lambda: None
        return int(pytest.main(list(argv[1:])))
    print("usage: python -m tests.windows.simulate import MODULE... | pytest ARGS...")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
