"""The DDM error hierarchy.

Every error that an operator can cause or fix is a `DDMError`. Each class carries the exit
status that the commands return for it, so the command layer never maps errors to codes by
hand. `str(error)` is one line: what failed, on which value, and what to do next.
"""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    """Exit statuses of every DDM command (documented in each command's --help)."""

    OK = 0
    FAILED = 1  # a migration or verification failed, or the volumes differ
    USAGE = 2  # invalid arguments or configuration
    CONNECTION = 3  # a host or its Docker engine could not be reached
    HOST_KEY = 4  # an SSH host key is unknown or changed
    AUTHENTICATION = 5  # the SSH server rejected the user or key
    # Another task has locked the volume, the task's state forbids the action, or a rollback
    # kept a target volume that changed since the task.
    CONFLICT = 6
    INTERRUPTED = 130  # stopped by Ctrl-C or SIGTERM


EXIT_STATUS_HELP = """\b
Exit statuses:
  0    success
  1    migration or verification failed (volumes differ),
       or a confirmation prompt was declined
  2    usage or configuration error; for ddmverify and
       ddmdriver manifest also a volume missing on a host
  3    connection to a host or its Docker engine failed
  4    SSH host key unknown or changed
  5    SSH authentication failed
  6    conflict: another task holds the volume, the task's state
       forbids the action, or a rollback kept a target volume
       that changed since the task
  130  interrupted"""


class DDMError(Exception):
    """Base class: an expected failure with a one-line message and an exit status."""

    exit_status: ExitStatus = ExitStatus.FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        text = self.message if not self.hint else f"{self.message}; {self.hint}"
        return " ".join(text.split())

    def to_dict(self) -> dict[str, object]:
        """Return the error as a JSON-ready mapping for task state and --json output."""
        return {
            "error": type(self).__name__,
            "message": str(self),
            "exit_status": int(self.exit_status),
        }


class ConfigError(DDMError):
    """The configuration file or a configuration value is invalid or missing."""

    exit_status = ExitStatus.USAGE


class UsageError(DDMError):
    """A command-line argument is invalid."""

    exit_status = ExitStatus.USAGE


class TaskNotFound(DDMError):
    """No stored task has the given ID."""

    exit_status = ExitStatus.USAGE


class ConnectionFailed(DDMError):
    """A host, its SSH server or its Docker engine could not be reached."""

    exit_status = ExitStatus.CONNECTION


class ConnectionLost(ConnectionFailed):
    """An open SSH connection to a host broke while a task ran."""


class HostKeyError(DDMError):
    """The SSH host key of a host is not in known_hosts, or differs from the recorded one."""

    exit_status = ExitStatus.HOST_KEY


class AuthenticationFailed(DDMError):
    """The SSH server rejected the user, or the private key could not be used."""

    exit_status = ExitStatus.AUTHENTICATION


class TaskConflict(DDMError):
    """An action that conflicts with another task, the task's state or a changed target volume.

    Another task has locked a volume or container that the task needs, the task's state
    forbids the action, or `ddmctl rollback` kept a target volume that changed since the task.
    """

    exit_status = ExitStatus.CONFLICT


class TaskNotStarted(TaskConflict):
    """The task's state forbids running or resuming it, so this call did not run it.

    Another process may be running the task and changing its stored state meanwhile, so the
    command layer cannot tell this case from a run of its own by reading the store.
    """


class TargetsChanged(TaskConflict):
    """`ddmctl rollback` kept target volumes that changed or were replaced since the task.

    `changed` maps each kept item's position to why its volume was kept, as a phrase that
    follows "volume 'NAME' on HOST", for example "was replaced ... after task X created it".
    `absent` contains the positions of the task's target volumes that no longer existed when
    the check looked for them.
    """

    def __init__(self, message: str, changed: dict[int, str], *, hint: str | None = None,
                 absent: frozenset[int] = frozenset()) -> None:
        super().__init__(message, hint=hint)
        self.changed = changed
        self.absent = absent


class MigrationFailed(DDMError):
    """A phase of a migration task failed."""

    exit_status = ExitStatus.FAILED


class VolumeNotFound(MigrationFailed):
    """A volume does not exist on a host."""


class TargetExists(MigrationFailed):
    """The target name is already taken on the target host."""


class InsufficientSpace(MigrationFailed):
    """The target host has less free space than the data needs."""


class TransferFailed(MigrationFailed):
    """The archive stream between the hosts broke."""


class VerificationFailed(MigrationFailed):
    """The target differs from the source after the copy."""


class Declined(DDMError):
    """The operator answered no at a confirmation prompt, so the command changed nothing.

    The exit status is FAILED rather than INTERRUPTED, so that a script can tell a refusal
    from Ctrl-C, and `ddminit ... && ddmctl ...` stops after it.
    """

    exit_status = ExitStatus.FAILED


class Interrupted(DDMError):
    """The operator interrupted the command (Ctrl-C or SIGTERM)."""

    exit_status = ExitStatus.INTERRUPTED


class Cancelled(DDMError):
    """The operator cancelled the task with `ddmctl cancel`."""

    exit_status = ExitStatus.INTERRUPTED
