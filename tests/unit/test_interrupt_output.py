"""What the commands print on stderr when Ctrl-C stops them, and how the progress bars end."""

from __future__ import annotations

import io
import time
from typing import Any

import pytest

from ddm import api
from ddm.events import ItemStarted, PhaseStarted, Progress
from ddm.store import TaskStore
from ddm.task import ItemState, Phase, TaskState
from ddmctl import common
from ddmctl.commands import migrate
from ddmctl.progress import RichDisplay
from tests.unit.cli_support import command_available, invoke

pytestmark = pytest.mark.usefixtures("no_network")

# Arguments that each command accepts, so that it reaches its callback.
COMMAND_ARGS = {
    "ddmctl": ["list"],
    "ddmsyncer": ["run", "abcd00000001"],
    "ddmdriver": ["ping", "a"],
    "ddminit": ["--host", "a=ssh://nobody@127.0.0.1:1", "--yes"],
    "ddmverify": ["--from", "a", "--to", "b", "--volume", "pgdata"],
}


def interrupt(*args: Any, **kwargs: Any) -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize("prog", [prog for prog in COMMAND_ARGS if command_available(prog)])
def test_interrupt_prints_error_line_only(configured: dict[str, str],
                                          monkeypatch: pytest.MonkeyPatch, prog: str) -> None:
    # Every command sets up logging first thing in its callback.
    monkeypatch.setattr(common, "configure_logging", interrupt)

    outcome = invoke(prog, COMMAND_ARGS[prog], configured)

    assert outcome.status == 130
    assert outcome.stdout == ""
    assert outcome.stderr == f"{prog}: error: interrupted\n"


def interrupt_during_copy(config: Any, store: TaskStore, task_id: str, on_event: Any) -> None:
    """Show a bar for the first volume, then stop as a run that rolled back after Ctrl-C."""
    store.claim_task(task_id, 1, (TaskState.QUEUED,))
    on_event(PhaseStarted(task_id, phase="copy"))
    on_event(ItemStarted(task_id, position=0, source="vfirst", target="vfirst",
                         bytes_total=4096))
    on_event(Progress(task_id, position=0, bytes_done=1024, bytes_total=4096))
    store.update_item(task_id, 0, state=ItemState.ROLLED_BACK, started_at=time.time())
    store.update_task(task_id, state=TaskState.FAILED, phase=Phase.ROLLBACK,
                      finished_at=time.time(), runner_pid=None)
    raise KeyboardInterrupt


def test_interrupt_line_follows_progress_bars(configured: dict[str, str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # A terminal's display: rich draws its bars until the display ends.
    monkeypatch.setattr(migrate, "choose_display",
                        lambda env, **options: RichDisplay(env.stderr, no_color=True))
    monkeypatch.setattr(api, "run_task", interrupt_during_copy)

    outcome = invoke("ddmctl", ["migrate", "--from", "a", "--to", "b", "--volume", "vfirst",
                                "--yes"], configured)

    store = api.open_store(configured)
    task_id = store.list_tasks(limit=1)[0].id
    store.close()
    lines = outcome.stderr.splitlines()
    assert outcome.status == 130
    assert outcome.stdout == ""
    assert lines[0] == f"task {task_id} created"
    assert lines[1] == "phase copy"
    assert lines[2].startswith("vfirst → vfirst ")
    assert "1.0/4.0 KiB" in lines[2]
    assert lines[3] == (f"task {task_id} stopped by an interrupt and is now failed; "
                        f"see 'ddmctl status {task_id}'")
    assert lines[4] == "ddmctl: error: interrupted"
    assert len(lines) == 5


def test_rich_display_without_bars_adds_no_line() -> None:
    stream = io.StringIO()

    with pytest.raises(KeyboardInterrupt):
        with RichDisplay(stream, no_color=True) as display:
            display(PhaseStarted("t1", phase="prepare"))
            display(PhaseStarted("t1", phase="rollback"))
            raise KeyboardInterrupt

    assert stream.getvalue() == "phase prepare\nphase rollback\n"


def interrupt_then_rollback_fails(config: Any, store: TaskStore, task_id: str,
                                  on_event: Any) -> None:
    """Stop as a run whose rollback after Ctrl-C failed: the task is left interrupted."""
    store.claim_task(task_id, 1, (TaskState.QUEUED,))
    store.update_task(task_id, state=TaskState.INTERRUPTED, phase=Phase.ROLLBACK,
                      finished_at=time.time(), runner_pid=None,
                      error={"error": "Interrupted", "message": "interrupted; rollback failed too",
                             "exit_status": 130,
                             "rollback_error": {"error": "MigrationFailed", "exit_status": 1,
                                                "message": "volume ddm-staging-x is in use"}})
    raise KeyboardInterrupt


def test_interrupt_line_says_rollback_failed(configured: dict[str, str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "run_task", interrupt_then_rollback_fails)

    outcome = invoke("ddmctl", ["migrate", "--from", "a", "--to", "b", "--volume", "vfirst",
                                "--yes"], configured)

    store = api.open_store(configured)
    task_id = store.list_tasks(limit=1)[0].id
    store.close()
    assert outcome.status == 130
    assert outcome.stderr.splitlines()[-2:] == [
        f"task {task_id} stopped by an interrupt, and its rollback failed: volume ddm-staging-x "
        f"is in use; the target may still hold what the task created: run 'ddmctl rollback "
        f"{task_id}' once that is fixed",
        "ddmctl: error: interrupted"]
