"""Callbacks run when a task finishes: commands (--on-success, --on-failure) and URLs (--notify).

A command is split with shlex.split (POSIX rules, also on Windows) and run without a shell, so
quotes group words but pipes, redirections and variables are not interpreted. It gets the
task's JSON summary on stdin and DDM_TASK_ID and DDM_TASK_RESULT in its environment. A URL
(http:// or https://) gets the same JSON by HTTP POST, with a timeout per attempt and a bounded
number of retries with exponential backoff.

A callback never changes the task's result: a failure is logged and recorded as a task event.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import shlex
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ddm.errors import UsageError

log = logging.getLogger(__name__)

SUMMARY_VERSION = 1
COMMAND_TIMEOUT_SECONDS = 60.0
HTTP_TIMEOUT_SECONDS = 10.0
HTTP_ATTEMPTS = 4  # the first POST and up to 3 retries
HTTP_BACKOFF_SECONDS = 1.0  # doubled after every failed attempt: 1 s, 2 s, 4 s
MAX_CALLBACK_LENGTH = 4096
MAX_LOGGED_OUTPUT = 500
OPTION_KEYS = ("on_success", "on_failure", "notify")


# Proxies named by http_proxy and https_proxy are not used: the POST goes to the URL's host.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class CallbackError(UsageError):
    """A callback command or URL is invalid (exit status 2)."""


def validate_command(command: object, what: str = "callback command") -> str:
    """Check that a callback command splits into words with shlex and return it unchanged."""
    if not isinstance(command, str) or not command.strip() or len(command) > MAX_CALLBACK_LENGTH:
        raise CallbackError(f"invalid {what}: expected a non-empty command line")
    if "\x00" in command:
        raise CallbackError(f"invalid {what}: it contains a NUL character")
    try:
        words = shlex.split(command)
    except ValueError as error:
        raise CallbackError(f"invalid {what} {command!r}: {error}",
                            hint="close every quote; the command runs without a shell") from None
    if not words:
        raise CallbackError(f"invalid {what}: expected a non-empty command line")
    return command


def validate_url(url: object, what: str = "notify URL") -> str:
    """Check that a notify URL is http:// or https:// with a host, and return it."""
    if not isinstance(url, str) or not url or len(url) > MAX_CALLBACK_LENGTH:
        raise CallbackError(f"invalid {what}: expected an http:// or https:// URL")
    if any(ord(character) <= 0x20 or ord(character) == 0x7F for character in url):
        raise CallbackError(f"invalid {what} {url!r}: it contains spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for an invalid port
    except ValueError as error:
        raise CallbackError(f"invalid {what} {url!r}: {error}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CallbackError(f"invalid {what} {url!r}",
                            hint="use an http:// or https:// URL with a host name")
    return url


@dataclass(frozen=True)
class Callbacks:
    """The callbacks of one task, stored in the task spec's options."""

    on_success: str | None = None
    on_failure: str | None = None
    notify: tuple[str, ...] = ()

    @classmethod
    def build(cls, *, on_success: str | None, on_failure: str | None,
              notify: Iterable[str], defaults: Any) -> Callbacks:
        """Merge command-line values over the config defaults and validate them.

        A value given on the command line replaces the default; --notify URLs replace the
        default URLs.
        """
        notify = tuple(notify) or tuple(getattr(defaults, "notify", ()) or ())
        return cls(
            on_success=_optional_command(on_success or getattr(defaults, "on_success", None),
                                         "--on-success command"),
            on_failure=_optional_command(on_failure or getattr(defaults, "on_failure", None),
                                         "--on-failure command"),
            notify=tuple(validate_url(url, "--notify URL") for url in notify),
        )

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Callbacks:
        return cls(
            on_success=options.get("on_success"),
            on_failure=options.get("on_failure"),
            notify=tuple(options.get("notify") or ()),
        )

    def to_options(self) -> dict[str, Any]:
        """Return the callbacks as task spec options, leaving out the empty ones."""
        options: dict[str, Any] = {}
        if self.on_success:
            options["on_success"] = self.on_success
        if self.on_failure:
            options["on_failure"] = self.on_failure
        if self.notify:
            options["notify"] = list(self.notify)
        return options


def _optional_command(command: str | None, what: str) -> str | None:
    return None if command is None else validate_command(command, what)


@dataclass
class CallbackOutcome:
    """Result of one callback: `ok`, the number of attempts, and an error line when it failed."""

    kind: str  # "command" or "url"
    target: str
    ok: bool
    attempts: int = 1
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def task_summary(task: Any, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Return the JSON summary that callbacks receive (documented in docs/json-schemas.md).

    `extra` is the task's stored extra state; a full-mode task's objects come from it.
    """
    objects = [
        {"kind": "volume", "source": item.source, "target": item.target,
         "state": item.state.value, "bytes_done": item.bytes_done,
         "stream_digest": item.stream_digest}
        for item in task.items
    ]
    if task.spec.mode.value == "full":
        objects = full_mode_objects(extra or {})
    return {
        "summary_version": SUMMARY_VERSION,
        "task_id": task.id,
        "result": task.state.value,
        "mode": task.spec.mode.value,
        "source_host": task.spec.source_host,
        "target_host": task.spec.target_host,
        "created_at": task.created_at,
        "started_at": task.started_at,
        "finished_at": task.finished_at,
        "duration_seconds": task.duration,
        "error": task.error,
        "objects": objects,
    }


def full_mode_objects(extra: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Return a full-mode task's containers and transfers (images, volumes, bind mounts)."""
    plan = extra.get("plan") or {}
    objects: list[dict[str, Any]] = [
        {"kind": "container", "source": container.get("name"), "target": container.get("name"),
         "image": container.get("image")}
        for container in plan.get("containers") or []
    ]
    for transfer in extra.get("transfers") or []:
        objects.append({"kind": transfer.get("kind"), "source": transfer.get("name"),
                        "target": transfer.get("target"), "state": transfer.get("state"),
                        "bytes_done": transfer.get("bytes_done")})
    return objects


def run_command(command: str, summary: Mapping[str, Any], *,
                timeout: float = COMMAND_TIMEOUT_SECONDS,
                environ: Mapping[str, str] | None = None) -> CallbackOutcome:
    """Run a callback command without a shell, with the summary on stdin.

    Failures are returned in the outcome, not raised.
    """
    try:
        argv = shlex.split(command)
    except ValueError as error:
        return CallbackOutcome("command", command, False, error=f"invalid command: {error}")
    if not argv:
        return CallbackOutcome("command", command, False, error="empty command")
    env = dict(os.environ if environ is None else environ)
    env["DDM_TASK_ID"] = str(summary["task_id"])
    env["DDM_TASK_RESULT"] = str(summary["result"])
    payload = json.dumps(summary)

    try:
        completed = subprocess.run(argv, input=payload, text=True, capture_output=True,
                                   env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return CallbackOutcome("command", command, False, error=f"timed out after {timeout:g} s")
    except (OSError, ValueError) as error:
        reason = getattr(error, "strerror", None) or error
        return CallbackOutcome("command", command, False,
                               error=f"cannot start {argv[0]!r}: {reason}")

    details = {"exit_status": completed.returncode,
               "stderr": completed.stderr[-MAX_LOGGED_OUTPUT:]}
    if completed.returncode != 0:
        return CallbackOutcome("command", command, False, details=details,
                               error=f"exited with status {completed.returncode}")
    return CallbackOutcome("command", command, True, details=details)


def post_json(url: str, summary: Mapping[str, Any], *,
              timeout: float = HTTP_TIMEOUT_SECONDS,
              attempts: int = HTTP_ATTEMPTS,
              backoff: float = HTTP_BACKOFF_SECONDS,
              sleep: Callable[[float], None] = time.sleep) -> CallbackOutcome:
    """POST the summary to `url`, retrying on errors and 5xx responses.

    Failures are returned in the outcome, not raised. Each attempt waits at most `timeout`
    seconds for the connection and for each read, so the whole call takes about attempts *
    timeout plus the backoff pauses at most. A 4xx response is not retried, because the same
    request would get the same response.
    """
    body = json.dumps(summary).encode("utf-8")
    error = "not attempted"
    delay = backoff
    for attempt in range(1, attempts + 1):
        request = urllib.request.Request(
            url, data=body, method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "ddm-notify"},
        )
        try:
            with _OPENER.open(request, timeout=timeout) as response:
                return CallbackOutcome("url", url, True, attempts=attempt,
                                       details={"http_status": response.status})
        except urllib.error.HTTPError as http_error:
            error = f"HTTP {http_error.code} {http_error.reason}"
            if http_error.code < 500:
                return CallbackOutcome("url", url, False, attempts=attempt, error=error)
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as failure:
            reason = getattr(failure, "reason", failure)
            error = "timed out" if isinstance(reason, TimeoutError) else str(reason)

        log.warning("notify %s: attempt %d of %d failed: %s", url, attempt, attempts, error)
        if attempt < attempts:
            sleep(delay)
            delay *= 2
    return CallbackOutcome("url", url, False, attempts=attempts, error=error)


def run_task_callbacks(store: Any, task: Any, **post_options: Any) -> list[CallbackOutcome]:
    """Run the callbacks of a finished task and record each outcome as a task event."""
    callbacks = Callbacks.from_options(task.spec.options)
    command = callbacks.on_success if task.state.value == "succeeded" else callbacks.on_failure
    if not command and not callbacks.notify:
        return []

    summary = task_summary(task, store.get_extra(task.id))
    outcomes = []
    if command:
        outcomes.append(run_command(command, summary))
    for url in callbacks.notify:
        outcomes.append(post_json(url, summary, **post_options))

    for outcome in outcomes:
        _record(store, task.id, outcome)
    return outcomes


def _record(store: Any, task_id: str, outcome: CallbackOutcome) -> None:
    data = {"kind": outcome.kind, "target": outcome.target, "attempts": outcome.attempts,
            **outcome.details}
    if outcome.ok:
        log.info("task %s: callback %s %s succeeded", task_id, outcome.kind, outcome.target)
        store.add_event(task_id, "info", "callback",
                        f"callback {outcome.kind} {outcome.target} succeeded", data)
        return

    log.warning("task %s: callback %s %s failed: %s", task_id, outcome.kind, outcome.target,
                outcome.error)
    store.add_event(task_id, "warning", "callback_failed",
                    f"callback {outcome.kind} {outcome.target} failed: {outcome.error}",
                    {**data, "error": outcome.error})
