"""ddmctl plan and ddmctl create: the plan of a migration, and a queued task for ddmsyncer.

Both take the arguments of `ddmctl migrate`; `task_options` declares them once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from ddm import api
from ddm.errors import ExitStatus, UsageError
from ddm.task import TaskSpec
from ddmctl.common import CommandContext, epilog, json_option
from ddmctl.complete import complete_host
from ddmctl.progress import format_bytes, format_duration
from ddmsyncer.compression import format_ratio, reject_full_mode_codec

F = TypeVar("F", bound=Callable[..., Any])


def task_options(function: F) -> F:
    """Add the options that describe a migration task (shared by migrate, plan and create)."""
    options = [
        click.option("--from", "source", required=True, metavar="HOST", help="Source host name.",
                     shell_complete=complete_host),
        click.option("--to", "target", required=True, metavar="HOST", help="Target host name.",
                     shell_complete=complete_host),
        click.option("--volume", "volumes", multiple=True, metavar="SRC[:DST]",
                     help="Volume to move; SRC:DST renames it on the target (repeatable, "
                     "volumes mode)."),
        *full_mode_options(),
        click.option("--verify", type=click.Choice(["none", "quick", "full"]), default=None,
                     help="Check after the copy: quick compares metadata and sizes, full also "
                     "hashes content (default: defaults.verify in the config, else full)."),
        click.option("--force", is_flag=True,
                     help="Replace a target volume that already exists (its old content is lost)."),
        click.option("--compress", type=click.Choice(["none", "lz4", "zstd", "auto"]),
                     default="none", show_default=True,
                     help="Compress the host data path's stream with zstd or lz4; auto turns "
                     "it on only when measurements predict a faster copy."),
        *callback_options(),
        route_option(),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def full_mode_options() -> list[Callable[[F], F]]:
    """Return --mode and the options of full mode, as `ddmctl migrate` has them."""
    return [
        click.option("--mode", type=click.Choice(["volumes", "full"]), default="volumes",
                     show_default=True, help="Move volumes only, or whole containers (full)."),
        click.option("--container", "containers", multiple=True, metavar="NAME",
                     help="Container to move in full mode (repeatable)."),
        click.option("--project", metavar="NAME",
                     help="Compose project to move in full mode: every container, volume and "
                     "network labelled com.docker.compose.project=NAME."),
        click.option("--map-path", "map_paths", multiple=True, metavar="SRC=DST",
                     help="Copy the bind-mounted host directory SRC to DST on the target (full "
                     "mode, repeatable)."),
        click.option("--warm", is_flag=True,
                     help="Full mode: copy the volumes of running containers before stopping "
                     "them, then copy only what changed (needs python3 and GNU tar on both "
                     "hosts)."),
        click.option("--remove-source", is_flag=True,
                     help="Remove the stopped source containers after a verified full-mode "
                     "migration."),
    ]


def callback_options() -> list[Callable[[F], F]]:
    """Return the --on-success, --on-failure and --notify options."""
    return [
        click.option("--on-success", metavar="CMD",
                     help="Command run when the task succeeds; split like a shell does, run "
                     "without a shell, task summary JSON on stdin (default: defaults.on_success)."),
        click.option("--on-failure", metavar="CMD",
                     help="Command run when the task fails or is cancelled; like --on-success "
                     "(default: defaults.on_failure)."),
        click.option("--notify", multiple=True, metavar="URL",
                     help="http:// or https:// URL that gets the task summary JSON by POST "
                     "(repeatable; default: defaults.notify)."),
    ]


def route_option() -> Callable[[F], F]:
    """Return the --route option (shared by migrate, plan and create)."""
    return click.option(
        "--route", type=click.Choice(["relay", "direct"]), default="relay", show_default=True,
        help="How volume data travels between the hosts: relay passes it through this machine, "
        "direct streams it from the source host to the target's direct_address with a one-task "
        "SSH key (needs the host data path).")


def with_callback_options(function: F) -> F:
    """Add --on-success, --on-failure and --notify to a command."""
    for option in reversed(callback_options()):
        function = option(function)
    return function


def spec_from_options(context: CommandContext, options: dict[str, Any]) -> TaskSpec:
    """Validate the task options of either mode and return the TaskSpec; nothing is stored."""
    config = context.config
    verify = options["verify"] or config.defaults.verify
    if options.get("mode", "volumes") == "full":
        if options.get("route", "relay") != "relay":
            raise UsageError("--route direct is for volumes mode",
                             hint="leave out --route in full mode")
        reject_full_mode_codec(options.get("compress"))
        if options.get("incremental"):
            raise UsageError("--incremental is for volumes mode",
                             hint="leave out --incremental in full mode, or use --warm")
        if options["volumes"] or options["force"]:
            raise UsageError("--volume and --force belong to volumes mode",
                             hint="full mode moves the volumes of the given containers")
        callbacks = api.build_callbacks(config, on_success=options["on_success"],
                                        on_failure=options["on_failure"],
                                        notify=options["notify"])
        return api.build_full_spec(
            config, source=options["source"], target=options["target"],
            containers=options["containers"], project=options["project"],
            map_path=options["map_paths"], remove_source=options["remove_source"],
            verify=verify, options={**callbacks, "warm": options["warm"]},
        )

    full_only = ("containers", "project", "map_paths", "remove_source", "warm")
    if any(options.get(name) for name in full_only):
        raise UsageError("--container, --project, --map-path, --remove-source and --warm need "
                         "--mode full")
    extra = {"incremental": True} if options.get("incremental") else {}
    if not options["volumes"]:
        raise UsageError("missing option --volume",
                         hint="pass --volume NAME, or --mode full with --container NAME or "
                         "--project NAME")
    return api.build_spec(
        config, source=options["source"], target=options["target"],
        volumes=options["volumes"], verify=verify, force=options["force"],
        on_success=options["on_success"], on_failure=options["on_failure"],
        notify=options["notify"], options={"route": options.get("route", "relay"),
                                           "compress": options.get("compress") or "none",
                                           **extra},
    )


@click.command(epilog=epilog("ddmctl plan --from old --to new --volume pgdata --json\n  "
                             "ddmctl plan --from old --to new --mode full --project shop"))
@task_options
@click.option("--probe-size", type=click.IntRange(0, 1024), default=4, show_default=True,
              metavar="MIB", help="MiB read and written over each SSH link to measure its "
              "speed for the estimate; 0 skips the measurement, and --compress auto "
              "is then left to the run.")
@click.option("--incremental", is_flag=True,
              help="Plan the update of a target volume that contains the copy an earlier DDM "
              "task made, as 'ddmctl migrate --incremental' would run it: both hosts scan the "
              "volumes and the plan lists what would be sent and deleted.")
@json_option
@click.pass_obj
def plan(context: CommandContext, probe_size: int, incremental: bool, as_json: bool,
         **options: Any) -> int:
    """Show what a migration would do, and change nothing on either host.

    Lists each object (volumes; in full mode also containers, images, bind mounts and
    networks) with its size, data path and preserved aspects, every conflict, the order of
    the steps and an estimated duration from the measured link speed. Exits 1 when a conflict
    would make the migration fail.
    """
    spec = spec_from_options(context, {**options, "incremental": incremental})
    document = api.plan_task(context.config, spec, probe_bytes=probe_size * 1024 * 1024,
                             store=context.store)
    return show_plan(context, document, as_json)


@click.command(epilog=epilog("ddmctl create --from old --to new --volume pgdata\n  "
                             "ddmctl create --from old --to new --mode full --container web"))
@task_options
@json_option
@click.pass_obj
def create(context: CommandContext, as_json: bool, **options: Any) -> int:
    """Store a queued task and print its ID; 'ddmsyncer serve' or 'ddmsyncer run' runs it."""
    spec = spec_from_options(context, options)
    task = api.create_task_from_spec(context.store, spec, reserve=False)
    if as_json:
        context.print_json(task.to_dict())
    else:
        context.echo(task.id)
    return int(ExitStatus.OK)


def show_plan(context: CommandContext, document: dict[str, Any], as_json: bool) -> int:
    """Print a plan document as JSON or as text; return 0 when it has no conflicts, else 1."""
    if as_json:
        context.print_json(document)
    else:
        for line in plan_lines(document):
            context.echo(line)
    return int(ExitStatus.OK if document["ok"] else ExitStatus.FAILED)


def plan_lines(document: dict[str, Any]) -> list[str]:
    """Return the text form of a plan document."""
    lines = [f"plan: {document['mode']} from {document['source_host']} to "
             f"{document['target_host']}, verify {document['verify']}"]
    lines.append("objects:")
    for entry in document["objects"]:
        lines.append(f"  {entry['kind']} {entry['source']} -> {entry['target']}: "
                     f"{format_bytes(entry.get('size_bytes'))}, {entry.get('action')}, "
                     f"data path {entry['data_path'] or 'unknown'}")
        if entry.get("incremental"):
            update = entry["incremental"]
            lines.append(f"    incremental update of the existing target (copy of task "
                         f"{entry['earlier_task']}): send {update['send_entries']} entries "
                         f"({format_bytes(update['send_bytes'])}), delete "
                         f"{update['delete_entries']}")
        lines.append(f"    preserves {', '.join(entry['preserves'])}")
        if entry.get("data_path_reason"):
            route = f", route {entry['route']}" if entry.get("route") else ""
            lines.append(f"    data path {entry['data_path']} ({entry['data_path_reason']}){route}")
            lines.append(f"    keeps: {', '.join(entry['keeps'])}")
        if entry.get("loses"):
            lines.append(f"    loses: {', '.join(entry['loses'])}")
        if entry.get("compression") and entry["compression"]["requested"] != "none":
            lines.append(f"    {compression_line(entry['compression'])}")
        if entry.get("running_writers"):
            lines.append(f"    used by running containers: {', '.join(entry['running_writers'])}")
        lines.extend(f"    {line}" for line in full_object_lines(entry))
    lines.append("conflicts:" if document["conflicts"] else "conflicts: none")
    for conflict in document["conflicts"]:
        lines.append(f"  {conflict['kind']} {conflict['object']}: {conflict['message']}")
    lines.append("steps:")
    for step in document["steps"]:
        where = f" [{step['object']}]" if step["object"] else ""
        lines.append(f"  {step['order']:>2}. {step['phase']}: {step['action']}{where}")
    lines.append(estimate_line(document["estimate"]))
    return lines


def full_object_lines(entry: dict[str, Any]) -> list[str]:
    """Return the details of a full-mode object: image tags, container state, network subnets."""
    kind = entry["kind"]
    if entry.get("action") == "already_migrated":
        return [f"already migrated by task {entry['earlier_task']}; nothing is sent"]
    if kind == "image":
        return [f"id {entry['id'][:19]}, tags {', '.join(entry['tags']) or '-'}, "
                f"{'on the target' if entry['present_on_target'] else 'missing on the target'}"]
    if kind == "container":
        state = "running" if entry["running"] else "stopped"
        after = f", after {', '.join(entry['depends_on'])}" if entry["depends_on"] else ""
        deleted = f", {entry['deleted_paths']} deleted paths" if entry["deleted_paths"] else ""
        return [f"image {entry['image']}, {state}{after}{deleted}"]
    if kind == "network":
        return [f"driver {entry['driver']}, subnets {', '.join(entry['subnets']) or '-'}"]
    if kind in ("volume", "bind_mount") and entry.get("containers"):
        cutover = ", copied while the source containers are stopped" if entry.get(
            "during_cutover") else ""
        return [f"used by {', '.join(entry['containers'])}{cutover}"]
    return []


def compression_line(chosen: dict[str, Any]) -> str:
    """Return the compression decision of one volume, with the ratio sampled for an explicit codec."""
    if not chosen["codec"]:
        return f"compression none ({chosen['reason']})"
    codec = f"{chosen['codec']}-{chosen['level']}"
    line = f"compression {codec} ({chosen['reason']})"
    if chosen["requested"] == "auto":
        return line  # the reason already names the measured ratio and rates
    sample = next((sample for sample in chosen.get("samples") or []
                   if (sample["codec"], sample["level"]) == (chosen["codec"], chosen["level"])),
                  None)
    if sample is None:
        return f"{line}, ratio not measured"
    ratio = format_ratio(sample["output_bytes"] / sample["input_bytes"])
    return (f"{line}, ratio {ratio} measured on the first "
            f"{format_bytes(sample['input_bytes'])} of the tar stream")


def estimate_line(estimate: dict[str, Any]) -> str:
    """Return the duration estimate as one line, saying that it is an estimate and what was measured."""
    if estimate["seconds"] is None:
        return f"estimate: {estimate['basis']}"
    rate = format_bytes(round(estimate["copy_bytes_per_second"]))
    return (f"estimate: about {format_duration(estimate['seconds'])} for "
            f"{format_bytes(estimate['bytes_total'])}{compression_clause(estimate)} "
            f"at {rate}/s measured over SSH{downtime_clause(estimate)} "
            "(engine and disk time not included)")


def compression_clause(estimate: dict[str, Any]) -> str:
    """Return what the estimate assumes about compression, or "" when nothing is compressed."""
    compressed = estimate.get("compression") or []
    if not compressed:
        return ""
    measured = [entry for entry in compressed if entry["ratio"] is not None]
    parts = []
    if measured:
        codecs = ", ".join(sorted({f"{entry['codec']}-{entry['level']}" for entry in measured}))
        sampled = ("ratio measured on a sample of the tar stream" if len(measured) == 1
                   else "ratios measured on a sample of each tar stream")
        parts.append(f"{format_bytes(estimate['wire_bytes_total'])} on the wire with {codecs}, "
                     f"{sampled}")
    unmeasured = [entry["object"] for entry in compressed if entry["ratio"] is None]
    if unmeasured:
        parts.append(f"compression ratio of {', '.join(unmeasured)} not measured, counted "
                     "uncompressed")
    return f" ({'; '.join(parts)})"


def downtime_clause(estimate: dict[str, Any]) -> str:
    """Return the downtime part of the estimate line, with docker stop's grace period."""
    if estimate.get("downtime_seconds") is None:
        return ""
    clause = f", downtime about {format_duration(estimate['downtime_seconds'])}"
    grace = estimate.get("stop_timeout_seconds")
    if grace:
        clause += (f" (up to {format_duration(grace)} of it waiting for the source containers "
                   "to stop, their StopTimeout)")
    unbounded = estimate.get("stop_unbounded") or []
    if unbounded:
        clause += (f", plus the stop of {', '.join(unbounded)}, which docker stop waits for "
                   "without a limit")
    return clause
