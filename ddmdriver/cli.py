"""ddmdriver: check the connection to a host's Docker engine and read a volume's manifest."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import click

from ddm.manifest import Manifest, ManifestBuilder, display_path
from ddm.task import new_task_id
from ddmctl.common import (
    InterruptibleGroup,
    accept_logging_options_after,
    common_options,
    epilog,
    json_option,
    main_for,
    make_context,
)
from ddmctl.complete import complete_host
from ddmdriver.engine import HELPER_MOUNT, Engine, inspect_named_volume, open_engine

TASK_LABEL = "ddm.task"
ARCHIVE_PREFIX = HELPER_MOUNT.lstrip("/").encode() + b"/"


@click.group(
    cls=InterruptibleGroup,
    epilog=epilog("ddmdriver ping old"),
    context_settings={"help_option_names": ["-h", "--help"]},
)
@common_options
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, debug: bool, verbose: int, quiet: bool) -> None:
    """Talk to the Docker engine of a configured host, over SSH for ssh:// hosts."""
    make_context(ctx, config_path, debug, verbose, quiet)


@cli.command(epilog=epilog("ddmdriver ping old --json"))
@click.argument("host", shell_complete=complete_host)
@json_option
@click.pass_obj
def ping(context, host: str, as_json: bool) -> None:  # type: ignore[no-untyped-def]
    """Connect to HOST and print its engine version, API version, OS/arch and round-trip time."""
    config = context.config
    with open_engine(config.host(host), config) as engine:
        info = engine.ping()

    if as_json:
        context.print_json({"host": host, **dataclasses.asdict(info)})
        return
    context.echo(
        f"{host}: Docker {info.version} (API {info.api_version}), {info.os}/{info.arch}, "
        f"round trip {info.rtt_seconds * 1000:.1f} ms"
    )


@cli.command(epilog=epilog("ddmdriver manifest old pgdata --json > pgdata.json"))
@click.argument("host", shell_complete=complete_host)
@click.argument("volume")
@click.option(
    "--hash/--no-hash",
    "hash_content",
    default=True,
    show_default=True,
    help="Hash each file's content with xxh3-128 (--no-hash lists metadata only).",
)
@json_option
@click.pass_obj
def manifest(context, host: str, volume: str, hash_content: bool, as_json: bool) -> None:  # type: ignore[no-untyped-def]
    """Print the manifest of VOLUME on HOST: every entry with type, mode, owner and size.

    The volume is read through a never-started helper container that mounts it read-only,
    so the volume does not change. The helper is removed afterwards. A VOLUME that does not
    exist on HOST ends the command with exit status 2, as in ddmverify.
    """
    config = context.config
    started = time.monotonic()
    with open_engine(config.host(host), config) as engine:
        result = read_manifest(engine, volume, hash_content=hash_content)
    seconds = time.monotonic() - started

    if as_json:
        context.env.stdout.write(result.to_json(indent=2) + "\n")
        return
    for line in manifest_lines(result):
        context.echo(line)
    context.info(
        f"{len(result)} entries, {result.total_file_bytes} bytes in files, "
        f"archive {result.bytes_fed} bytes (xxh3-128 {result.stream_digest}), {seconds:.1f} s"
    )


def read_manifest(engine: Engine, volume: str, *, hash_content: bool) -> Manifest:
    """Build the manifest of `volume` from its archive, through a read-only helper."""
    inspect_named_volume(engine, volume)
    helper = engine.create_helper(
        volume, read_only=True, labels={TASK_LABEL: f"ddmdriver-{new_task_id()}"}
    )
    try:
        builder = ManifestBuilder(hash_content=hash_content, strip_prefix=ARCHIVE_PREFIX)
        with engine.get_archive(helper, HELPER_MOUNT) as stream:
            for chunk in stream:
                builder.feed(chunk)
        return builder.close()
    finally:
        engine.remove_container(helper)


def manifest_lines(result: Manifest) -> list[str]:
    """Return one line per entry: type, mode, uid:gid, size, path, and link or digest."""
    lines = []
    for path in sorted(result.entries):
        entry = result.entries[path]
        line = f"{entry.type:8} {entry.mode:04o} {entry.uid}:{entry.gid} {entry.size:>12} {display_path(path)}"
        if entry.linkname is not None:
            arrow = "->" if entry.type == "symlink" else "=>"
            line += f" {arrow} {display_path(entry.linkname)}"
        elif entry.digest:
            line += f"  {entry.digest}"
        lines.append(line)
    return lines


accept_logging_options_after(cli)

main = main_for(cli, "ddmdriver")


if __name__ == "__main__":
    main()
