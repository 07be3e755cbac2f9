"""ddmctl hosts check: the state of each configured host, in one table."""

from __future__ import annotations

import click

from ddm import api
from ddm.config import LOCAL_HOST
from ddm.errors import UsageError
from ddmctl.common import CommandContext, epilog, json_option
from ddmctl.progress import format_bytes


@click.group(epilog=epilog("ddmctl hosts check old new"))
def hosts() -> None:
    """Inspect the configured Docker hosts."""


@hosts.command(epilog=epilog("ddmctl hosts check old new --json"))
@click.argument("names", nargs=-1, metavar="[HOST ...]")
@json_option
@click.pass_obj
def check(context: CommandContext, names: tuple[str, ...], as_json: bool) -> int:
    """Check that hosts can be used: SSH, host key, engine, storage, clock and rights.

    Without HOST, every host of the config except 'local' is checked; name 'local' to check
    this machine's engine. Exits 0 when every host is usable, else with the status of the
    worst failure: 5 SSH authentication, 4 host key, 3 connection.
    """
    from ddmdriver.hostcheck import worst_exit_status

    config = context.config
    selected = list(names) or [name for name in config.hosts if name != LOCAL_HOST]
    if not selected:
        raise UsageError("no hosts to check: the config names none",
                         hint="add hosts with 'ddminit --host NAME=URL', or name 'local' to "
                         "check this machine's engine")
    for name in selected:
        config.host(name)
    results = api.check_hosts(config, selected)

    if as_json:
        context.print_json([result.to_dict() for result in results])
    else:
        print_table(context, results)
        for result in results:
            for problem in result.problems:
                context.info(f"{result.host}: {problem}")
    return worst_exit_status(results)


def print_table(context: CommandContext, results: list) -> None:
    """Print one row per host, with '-' where a value is unknown."""
    header = ("HOST", "USABLE", "HOST KEY", "ENGINE", "API", "DRIVER", "ARCH", "VOLUMES FREE",
              "CLOCK SKEW", "HOST TAR", "USER")
    rows = [header]
    for result in results:
        rows.append((
            result.host,
            "yes" if result.usable else f"no ({result.exit_status})",
            result.host_key,
            result.engine_version or "-",
            result.api_version or "-",
            result.storage_driver or "-",
            result.arch or "-",
            format_bytes(result.volumes_free_bytes),
            "-" if result.clock_skew_seconds is None else f"{result.clock_skew_seconds:+.1f} s",
            _tar_cell(result.host_tar),
            _rights_cell(result.rights),
        ))
    widths = [max(len(str(row[index])) for row in rows) for index in range(len(header))]
    for row in rows:
        context.echo("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


def _tar_cell(host_tar: dict) -> str:
    if not host_tar:
        return "-"
    if host_tar["available"]:
        return "yes"
    if not host_tar["gnu_tar"]:
        return "no (no GNU tar)"
    return "no (volumes unreadable)"


def _rights_cell(rights: dict) -> str:
    if not rights:
        return "-"
    labels = [label for key, label in (("root", "root"), ("docker_group", "docker"),
                                        ("sudo", "sudo")) if rights.get(key)]
    return f"{rights.get('user') or '?'} ({', '.join(labels) or 'no root, docker or sudo'})"
