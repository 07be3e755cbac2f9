"""ddmctl: create, run, watch and roll back DDM migration tasks."""

from __future__ import annotations

from pathlib import Path

import click

from ddmctl.commands import apply, completion, control, full, hosts, migrate, planning, tasks
from ddmctl.common import (
    EXIT_STATUS_HELP,
    DDMGroup,
    accept_logging_options_after,
    common_options,
    main_for,
    make_context,
)


@click.group(
    cls=DDMGroup,
    epilog=f"\b\nExample:\n  ddmctl migrate --from old --to new --volume pgdata\n\n{EXIT_STATUS_HELP}",
    context_settings={"help_option_names": ["-h", "--help"]},
)
@common_options
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, debug: bool, verbose: int,
        quiet: bool) -> None:
    """Create, run, watch and roll back migration tasks between Docker hosts."""
    make_context(ctx, config_path, debug, verbose, quiet)


cli.add_command(migrate.migrate)
cli.add_command(completion.completion)
# control.logs prints the event log and, with --container, a full-mode container's log.
for command in (*tasks.COMMANDS, full.finalize, planning.plan, planning.create, control.pause,
                control.logs, hosts.hosts, apply.apply):
    cli.add_command(command)

accept_logging_options_after(cli)

main = main_for(cli, "ddmctl")


if __name__ == "__main__":
    main()
