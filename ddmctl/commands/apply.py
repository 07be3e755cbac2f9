"""ddmctl apply: run a fleet plan, many migrations across many host pairs."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import click

from ddm import api
from ddm.errors import ExitStatus
from ddm.text import counted
from ddmctl.commands.migrate import confirm
from ddmctl.commands.planning import estimate_line, format_duration
from ddmctl.common import CommandContext, epilog, json_option, raise_on_sigterm


@click.command(epilog=epilog("ddmctl apply fleet.yaml --dry-run"))
@click.argument("plan_path", metavar="PLAN.yaml",
                type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True,
              help="Plan every item (read-only checks and link probes) and change nothing.")
@click.option("--fail-fast", is_flag=True,
              help="After the first failed item, start no more items and cancel the running "
              "ones (they roll back).")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@click.pass_obj
def apply(context: CommandContext, plan_path: Path, dry_run: bool, fail_fast: bool, yes: bool,
          as_json: bool) -> int:
    """Migrate the volumes of a fleet plan file, within its concurrency limits.

    Each item runs as its own task. A failed item rolls back alone and the others go on,
    unless --fail-fast is given. Prints a summary table at the end and exits 1 when any item
    failed. The file format is described in docs/fleet-plans.md.
    """
    config = context.config
    plan = api.load_fleet_plan(plan_path, config)
    if dry_run:
        return show_fleet_plan(context, plan, as_json)

    force = any(item.spec.force for item in plan.items)
    confirm(context, f"run {counted(len(plan.items), 'item')} of fleet plan {plan_path}", yes=yes,
            force=force)
    raise_on_sigterm()
    lock = threading.Lock()

    def report(event: str, result: Any) -> None:
        with lock:
            if event == "started":
                context.info(f"item {result.name}: task {result.task_id} started")
            else:
                context.info(f"item {result.name}: {result.state}"
                             + (f": {result.error}" if result.error else ""))

    results = api.apply_fleet_plan(config, context.store.path, plan, fail_fast=fail_fast,
                                   on_item=report)
    if as_json:
        context.print_json({"plan": str(plan_path), "items": [r.to_dict() for r in results]})
    else:
        print_summary(context, results)
    failed = [result for result in results if not result.succeeded]
    return int(ExitStatus.FAILED if failed else ExitStatus.OK)


def show_fleet_plan(context: CommandContext, plan: Any, as_json: bool) -> int:
    """Plan every item and print the plans; return 1 when any item has a conflict."""
    documents = [(item, api.plan_task(context.config, item.spec, store=context.store))
                 for item in plan.items]
    if as_json:
        context.print_json({"plan": str(plan.path), "concurrency": {
            "total": plan.total, "per_host": plan.per_host},
            "items": [{"name": item.name, "plan": document} for item, document in documents]})
    else:
        context.echo(f"fleet plan {plan.path}: {counted(len(plan.items), 'item')}, at most {plan.total} "
                     f"at once and {plan.per_host} per host")
        for item, document in documents:
            state = "ok" if document["ok"] else counted(len(document["conflicts"]), "conflict")
            context.echo(f"item {item.name}: {item.spec.source_host} -> {item.spec.target_host}, "
                         f"{counted(len(document['objects']), 'volume')}, {state}")
            for conflict in document["conflicts"]:
                context.echo(f"  conflict: {conflict['message']}")
            context.echo(f"  {estimate_line(document['estimate'])}")
    ok = all(document["ok"] for _, document in documents)
    return int(ExitStatus.OK if ok else ExitStatus.FAILED)


def print_summary(context: CommandContext, results: list[Any]) -> None:
    """Print the summary table: one row per item."""
    rows = [("ITEM", "HOSTS", "VOLUMES", "TASK", "RESULT", "DURATION", "ERROR")]
    for result in results:
        rows.append((
            result.name,
            f"{result.source_host}->{result.target_host}",
            ",".join(result.volumes),
            result.task_id or "-",
            result.state,
            format_duration(result.seconds) if result.seconds is not None else "-",
            result.error or "",
        ))
    widths = [max(len(row[index]) for row in rows) for index in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)] + [row[-1]]
        context.echo("  ".join(cells).rstrip())
    succeeded = sum(1 for result in results if result.succeeded)
    context.info(f"{succeeded} of {counted(len(results), 'item')} succeeded")
