"""Process checks that work on POSIX and on Windows.

`os.kill(pid, 0)` only tests for a process on POSIX. On Windows, os.kill with any signal other
than CTRL_C_EVENT or CTRL_BREAK_EVENT ends the process through TerminateProcess, and
CTRL_C_EVENT is 0, so the POSIX idiom would stop the very runner whose state it checks.
"""

from __future__ import annotations

import os
import sys

# Windows API constants (processthreadsapi.h, minwinbase.h).
PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
STILL_ACTIVE = 259
ERROR_ACCESS_DENIED = 5


def process_alive(pid: int | None) -> bool:
    """Return True when a process with this PID exists on this machine."""
    if not pid or pid < 0:
        return False
    if sys.platform == "win32":
        return _windows_process_alive(pid)
    return _posix_process_alive(pid)


def _posix_process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _windows_process_alive(pid: int) -> bool:
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    kernel32.OpenProcess.restype = wintypes.HANDLE
    handle = kernel32.OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
    if not handle:
        # A process of another user that this one may not query still exists.
        return ctypes.get_last_error() == ERROR_ACCESS_DENIED  # type: ignore[attr-defined]

    try:
        exit_code = wintypes.DWORD()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(exit_code)):
            return True
        return exit_code.value == STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)
