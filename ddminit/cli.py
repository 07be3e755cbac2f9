"""ddminit: write the DDM configuration file (hosts, key file, known_hosts)."""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path

import click

from ddm.config import (
    LOCAL_HOST,
    Config,
    config_from_dict,
    default_config_path,
    expand_path,
    load_config,
    parse_host_url,
    save_config,
)
from ddm.errors import ExitStatus, UsageError
from ddmctl.common import common_options, epilog, main_for, make_context


def parse_host_option(value: str) -> tuple[str, str]:
    """Split a --host NAME=URL argument."""
    name, separator, url = value.partition("=")
    if not separator or not name or not url:
        raise UsageError(f"invalid --host {value!r}", hint="use --host NAME=ssh://user@host:22")
    if name == LOCAL_HOST:
        raise UsageError("the host name 'local' is reserved for the local Docker engine",
                         hint="choose another name")
    return name, url


@click.command(
    epilog=epilog("ddminit --host old=ssh://root@old.example --host new=ssh://root@new.example "
                  "--identity-file ~/.ssh/id_ed25519 --yes"),
    context_settings={"help_option_names": ["-h", "--help"]},
)
@common_options
@click.option("--host", "host_args", multiple=True, metavar="NAME=URL",
              help="A Docker host: ssh://[user@]host[:port], unix:///path or tcp://host:port "
              "(repeatable; replaces a host of the same name).")
@click.option("--identity-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Private key for ssh:// hosts (default: ~/.ssh/config, then ~/.ssh/id_*).")
@click.option("--known-hosts", type=click.Path(dir_okay=False, path_type=Path),
              help="known_hosts file to check host keys against (default ~/.ssh/known_hosts).")
@click.option("--docker-socket", metavar="PATH",
              help="Path of the Docker socket on the ssh:// hosts given here "
              "(default /var/run/docker.sock).")
@click.option("-y", "--yes", is_flag=True, help="Write without asking.")
@click.pass_context
def cli(
    ctx: click.Context,
    config_path: Path | None,
    debug: bool,
    verbose: int,
    quiet: bool,
    host_args: tuple[str, ...],
    identity_file: Path | None,
    known_hosts: Path | None,
    docker_socket: str | None,
    yes: bool,
) -> int:
    """Write or update the DDM configuration file (mode 0600).

    Hosts already in the file are kept unless a --host of the same name replaces them. Without
    --yes, on a terminal, ddminit asks before writing; off a terminal it needs --yes.
    """
    context = make_context(ctx, config_path, debug, verbose, quiet)
    environ = context.env.environ
    path = config_path or default_config_path(environ)
    existing = load_config(path, environ) if path.exists() else None

    config = build_config(existing, path, host_args, identity_file, known_hosts,
                          docker_socket, environ)
    warn_about_key(context, config.identity_file)

    if not yes:
        if not context.env.stdin_isatty:
            raise UsageError(f"not writing {path} without confirmation",
                             hint="pass --yes to write without asking")
        names = ", ".join(name for name in config.hosts if name != LOCAL_HOST) or "no hosts"
        if not click.confirm(f"write {path} with {names}?", default=True, err=True):
            raise click.exceptions.Abort()

    save_config(config, path)
    context.info(f"wrote {path}")
    context.echo(str(path))
    return int(ExitStatus.OK)


def build_config(
    existing: Config | None,
    path: Path,
    host_args: tuple[str, ...],
    identity_file: Path | None,
    known_hosts: Path | None,
    docker_socket: str | None,
    environ,
) -> Config:
    """Merge the command-line values into the existing configuration and validate the result."""
    raw = existing.to_dict() if existing else {"version": 1, "hosts": {}}
    if identity_file is not None:
        raw["identity_file"] = str(_absolute(identity_file, environ))
    if known_hosts is not None:
        raw["known_hosts"] = str(_absolute(known_hosts, environ))

    for value in host_args:
        name, url = parse_host_option(value)
        host = parse_host_url(name, url)
        entry = replace(host, docker_socket=docker_socket or host.docker_socket).to_dict()
        raw["hosts"][name] = entry

    return config_from_dict(raw, path, environ)


def _absolute(path: Path, environ) -> Path:
    expanded = expand_path(str(path), environ)
    return expanded if expanded.is_absolute() else Path.cwd() / expanded


def warn_about_key(context, identity_file: Path | None) -> None:
    """Warn when the private key is missing or readable by group or others."""
    if identity_file is None:
        return
    try:
        mode = os.stat(identity_file).st_mode
    except OSError:
        context.info(f"warning: identity file {identity_file} does not exist yet")
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        context.info(f"warning: identity file {identity_file} is readable by group or others; "
                     f"run 'chmod 600 {identity_file}'")


main = main_for(cli, "ddminit")


if __name__ == "__main__":
    main()
