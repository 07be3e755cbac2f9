"""ddmverify: prove that target volumes hold what the source volumes hold."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click

from ddm.api import build_spec
from ddm.errors import ExitStatus
from ddm.differences import describe_value, difference_to_json
from ddm.manifest import Difference, Manifest, compare_manifests, display_path
from ddm.task import VerifyMode, new_task_id
from ddm.text import counted
from ddmctl.common import (
    CommandContext,
    InterruptibleCommand,
    common_options,
    epilog,
    json_option,
    main_for,
    make_context,
)
from ddmctl.complete import complete_host
from ddmdriver.engine import inspect_named_volume
from ddmdriver.hostpath import read_host_manifest
from ddmsyncer import hostverify, volumes
from ddmsyncer.datapath import DataPath, HostProbes, Route, choose_route, not_checked, verify_aspects


@click.command(
    cls=InterruptibleCommand,
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
              help="Also hash every file's content (SHA-256 on each host when both run python3 "
              "and the host data path applies, else xxh3-128 of the archives); default compares "
              "metadata and sizes.")
@click.option("--data-path", type=click.Choice(["auto", "engine", "host"]), default="auto",
              show_default=True,
              help="How to read both volumes: host runs GNU tar on the hosts and compares every "
              "aspect it keeps, engine reads the Engine API archive, auto picks host where "
              "possible.")
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
    data_path: str,
    as_json: bool,
) -> int:
    """Compare volumes on two hosts; exit 0 when they match and 1 when they differ.

    A volume that does not exist on its host ends the command with exit status 2.
    Each difference is listed with its path and aspect: presence, type, mode, owner, size,
    link, device, mtime and, with --deep, content. On the host data path also mtime_ns,
    xattrs, acl and sparse; on the Engine API path those are reported as not checked.
    """
    from ddmdriver.engine import open_engine

    context = make_context(ctx, config_path, debug, verbose, quiet)
    config = context.config
    mode = VerifyMode.FULL if deep else VerifyMode.QUICK
    spec = build_spec(config, source=source, target=target, volumes=volume_args, verify=mode,
                      force=True)
    session = f"verify-{new_task_id()}"

    results = []
    probes = HostProbes()
    with open_engine(config.host(source), config) as source_engine, \
            open_engine(config.host(target), config) as target_engine:
        for volume in spec.volumes:
            results.append(compare_volume(source_engine, target_engine, volume.source,
                                          volume.target, deep, session,
                                          data_path=data_path, probes=probes))

    differs = any(result["differences"] for result in results)
    if as_json:
        context.print_json({"match": not differs,
                            "volumes": [result_to_json(result) for result in results]})
    else:
        print_results(context, results)
    return int(ExitStatus.FAILED if differs else ExitStatus.OK)


def compare_volume(source_engine: Any, target_engine: Any, source: str, target: str, deep: bool,
                   session: str, *, data_path: str = "auto",
                   probes: HostProbes | None = None) -> dict[str, Any]:
    """Read both manifests on one data path and return the comparison.

    The mapping is the volume's object of the JSON output, except that "differences" contains
    the Difference objects (result_to_json() converts them).
    """
    infos = [inspect_named_volume(engine, name)
             for engine, name in ((source_engine, source), (target_engine, target))]

    probes = probes or HostProbes()
    route = choose_route(source_engine, target_engine, infos[0], data_path, probes)
    if route.data_path is DataPath.HOST and (infos[1].driver != "local" or infos[1].options):
        route = choose_route(source_engine, target_engine, infos[0], "engine", probes)
    method = hostverify.READ_BACK
    if route.data_path is DataPath.HOST and _both_run_python(source_engine, target_engine, route):
        method = hostverify.HOST_SCAN
        source_manifest, target_manifest = scan_both(source_engine, target_engine, infos, route, deep)
    else:
        source_manifest = read_volume_manifest(source_engine, route.source_access, infos[0], route,
                                               deep, session)
        target_manifest = read_volume_manifest(target_engine, route.target_access, infos[1], route,
                                               deep, session)

    aspects = verify_aspects(route.data_path, deep=deep)
    differences = compare_manifests(source_manifest, target_manifest, aspects)
    return {
        "source": source,
        "target": target,
        "data_path": route.data_path.value,
        "method": method,
        "aspects": list(aspects),
        "not_checked": list(not_checked(route.data_path, deep=deep)),
        "entries": len(source_manifest.entries),
        "differences": differences,
    }


def result_to_json(result: dict[str, Any]) -> dict[str, Any]:
    """Return a compare_volume() result with its differences in their JSON form."""
    return {**result, "differences": [difference_to_json(difference)
                                      for difference in result["differences"]]}


def _both_run_python(source_engine: Any, target_engine: Any, route: Route) -> bool:
    python = hostverify.PythonProbes()
    return (python.available(source_engine, route.source_access)
            and python.available(target_engine, route.target_access))


def scan_both(source_engine: Any, target_engine: Any, infos: list[Any], route: Route,
              deep: bool) -> tuple[Manifest, Manifest]:
    """Scan both volumes at once, each on its own host (content digests: SHA-256)."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="ddm-verify-scan") as pool:
        scans = [pool.submit(hostverify.scan_manifest, engine, access, info.mountpoint,
                             hash_content=deep)
                 for engine, access, info in ((source_engine, route.source_access, infos[0]),
                                              (target_engine, route.target_access, infos[1]))]
        return scans[0].result().manifest, scans[1].result().manifest


def read_volume_manifest(engine: Any, access: Any, info: Any, route: Route, deep: bool,
                         session: str) -> Manifest:
    """Read a volume's manifest with host tar on the host path, else through the Engine API."""
    if route.data_path is DataPath.HOST:
        return read_host_manifest(engine, access, info.mountpoint, hash_content=deep)
    return volumes.read_manifest(engine, info.name, task_id=session, hash_content=deep)


def print_results(context: CommandContext, results: list[dict[str, Any]]) -> None:
    for result in results:
        name = f"{result['source']} -> {result['target']}"
        if not result["differences"]:
            unchecked = ", ".join(result["not_checked"])
            unchecked_text = f"not checked {unchecked}" if unchecked else "every aspect checked"
            context.echo(f"{name}: match ({counted(result['entries'], 'entry', 'entries')}; data path "
                         f"{result['data_path']}, {result['method']}; "
                         f"checked {', '.join(result['aspects'])}; {unchecked_text})")
            continue
        context.echo(f"{name}: {counted(len(result['differences']), 'difference')} (data path "
                     f"{result['data_path']}, {result['method']})")
        for difference in result["differences"]:
            context.echo(difference_line(difference))


def difference_line(difference: Difference) -> str:
    """Return the tab-separated text line of one difference: path, aspect, both values."""
    source = describe_value(difference.aspect, difference.source)
    target = describe_value(difference.aspect, difference.target)
    return (f"  {display_path(difference.path)}\t{difference.aspect}\t"
            f"source={source}\ttarget={target}")


main = main_for(cli, "ddmverify")


if __name__ == "__main__":
    main()
