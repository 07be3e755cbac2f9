"""Command-line interface of the lab: up, down, status and exec.

    python -m tests.lab up --root DIR [--hosts N] [--port PORT] [--rate RATE]
    python -m tests.lab status --root DIR
    python -m tests.lab exec --root DIR HOST -- COMMAND [ARG...]
    python -m tests.lab down --root DIR

`up` prints the path of the DDM configuration file on stdout and progress on
stderr. The exit status is 0 on success, 1 when the lab failed or a host is down,
and 2 on invalid usage. `exec` exits with the command's status.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tests.lab.errors import LabError
from tests.lab.lab import DEFAULT_PORT, Lab
from tests.lab.netem import validate_rate
from tests.lab.prereq import missing_prerequisites

CONFIG_FILE = "ddm.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    arguments = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if arguments.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )

    try:
        return int(arguments.handler(arguments))
    except LabError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.lab", description="Manage the lab of Docker hosts.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every process start and stop")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="start the lab and print the path of its DDM configuration file")
    _add_root(up)
    up.add_argument("--hosts", type=int, default=2, help="number of hosts, h1 to hN (default: 2)")
    up.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"SSH port of every host (default: {DEFAULT_PORT})")
    up.add_argument("--rate", metavar="RATE",
                    help="limit each host's SSH link to RATE with tc netem inside its namespace, "
                    "e.g. 100mbit (default: unlimited)")
    up.set_defaults(handler=_up)

    down = commands.add_parser("down", help="stop every lab process and remove the lab root")
    _add_root(down)
    down.set_defaults(handler=_down)

    status = commands.add_parser("status", help="show whether each host's processes run and respond")
    _add_root(status)
    status.set_defaults(handler=_status)

    run = commands.add_parser("exec", help="run a command inside a host's namespaces, e.g. exec h1 -- docker ps")
    _add_root(run)
    run.add_argument("host", help="host name, e.g. h1")
    run.add_argument("command", nargs=argparse.REMAINDER, help="command and arguments, after --")
    run.set_defaults(handler=_exec)
    return parser


def _add_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, required=True, help="lab directory (created by up, removed by down)")


def _up(arguments: argparse.Namespace) -> int:
    problems = missing_prerequisites()
    if problems:
        raise LabError("the lab cannot start:\n  " + "\n  ".join(problems))

    if arguments.rate is not None:
        validate_rate(arguments.rate)
    lab = Lab(arguments.root, host_count=arguments.hosts, port=arguments.port).up()
    if arguments.rate is not None:
        lab.limit_rate(arguments.rate)
    config = lab.write_ddm_config(lab.root / CONFIG_FILE)
    print(config)
    return 0


def _down(arguments: argparse.Namespace) -> int:
    Lab(arguments.root).down()
    return 0


def _status(arguments: argparse.Namespace) -> int:
    lab = Lab.attach(arguments.root)
    columns = ("holder", "dockerd", "engine", "sshd", "relay", "ssh")
    print(f"{'host':<6}{'address':<18}" + "".join(f"{column:<9}" for column in columns))
    statuses = lab.status()
    for host, status in zip(lab.hosts, statuses, strict=False):
        cells = "".join(f"{'ok' if getattr(status, column) else 'DOWN':<9}" for column in columns)
        print(f"{host.name:<6}{host.address + ':' + str(host.port):<18}{cells}")
    return 0 if all(status.ok for status in statuses) else 1


def _exec(arguments: argparse.Namespace) -> int:
    command = list(arguments.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise LabError("exec needs a command after the host name, e.g. exec h1 -- docker ps")

    try:
        host = Lab.attach(arguments.root).host(arguments.host)
    except KeyError as error:
        raise LabError(str(error.args[0])) from error
    completed = host.run(command, check=False, capture_output=False, timeout=None)
    return completed.returncode


if __name__ == "__main__":
    sys.exit(main())
