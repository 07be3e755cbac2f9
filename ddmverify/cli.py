"""ddmverify: prove that target volumes hold what the source volumes hold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ddm.api import build_spec
from ddm.errors import ExitStatus
from ddm.task import VerifyMode, new_task_id
from ddmctl.common import (
    CommandContext,
    common_options,
    epilog,
    json_option,
    main_for,
    make_context,
)
from ddmctl.complete import complete_host
from ddmsyncer import volumes
from ddmsyncer.compare import compare_volume

# Aspects that the Engine API archive cannot carry, so they are reported as not checked.
NOT_CHECKED = ("mtime_ns", "xattrs", "acl", "sparse")


@click.command(
    epilog=epilog("ddmverify --from old --to new --volume pgdata --deep"),
    context_settings={"help_option_names": ["-h", "--help"]},
)
@common_options
@click.option("--from", "source", required=True, metavar="HOST", help="Source host name.",
              shell_complete=complete_host)
@click.option("--to", "target", required=True, metavar="HOST", help="Target host name.",
              shell_complete=complete_host)
@click.option("--volume", "volume_args", multiple=True, required=True, metavar="SRC[:DST]",
              help="Volume to compare; SRC:DST when it was renamed (repeatable).")
@click.option("--deep", is_flag=True,
              help="Also hash every file's content (xxh3-128); default compares metadata and sizes.")
@json_option
@click.pass_context
def cli(
    ctx: click.Context,
    config_path: Path | None,
    debug: bool,
    verbose: int,
    quiet: bool,
    source: str,
    target: str,
    volume_args: tuple[str, ...],
    deep: bool,
    as_json: bool,
) -> int:
    """Compare volumes on two hosts; exit 0 when they match and 1 when they differ.

    Each difference is listed with its path and aspect: presence, type, mode, owner, size,
    link, device, mtime and, with --deep, content.
    """
    from ddmdriver.engine import open_engine

    context = make_context(ctx, config_path, debug, verbose, quiet)
    config = context.config
    mode = VerifyMode.FULL if deep else VerifyMode.QUICK
    spec = build_spec(config, source=source, target=target, volumes=volume_args, verify=mode,
                      force=True)
    aspects = volumes.aspects_for(mode)
    session = f"verify-{new_task_id()}"

    results = []
    with open_engine(config.host(source), config) as source_engine, \
            open_engine(config.host(target), config) as target_engine:
        for volume in spec.volumes:
            results.append(compare_volume(source_engine, target_engine, volume.source,
                                          volume.target, aspects, deep, session))

    differs = any(result["differences"] for result in results)
    if as_json:
        context.print_json({"match": not differs, "aspects": list(aspects),
                            "not_checked": list(NOT_CHECKED), "volumes": results})
    else:
        print_results(context, results, aspects)
    return int(ExitStatus.FAILED if differs else ExitStatus.OK)


def print_results(context: CommandContext, results: list[dict[str, Any]],
                  aspects: tuple[str, ...]) -> None:
    for result in results:
        name = f"{result['source']} -> {result['target']}"
        if not result["differences"]:
            context.echo(f"{name}: match ({result['entries']} entries; checked "
                         f"{', '.join(aspects)}; not checked {', '.join(NOT_CHECKED)})")
            continue
        context.echo(f"{name}: {len(result['differences'])} differences")
        for difference in result["differences"]:
            context.echo(f"  {difference['path']}\t{difference['aspect']}\t"
                         f"source={difference['source']}\ttarget={difference['target']}")


main = main_for(cli, "ddmverify")


if __name__ == "__main__":
    main()
