"""ddminit: write the DDM configuration file (hosts, key file, known_hosts)."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import replace
from pathlib import Path

import click
import yaml

from ddm.config import (
    LOCAL_HOST,
    Config,
    comment_lines,
    config_from_dict,
    default_config_path,
    expand_path,
    load_config,
    parse_host_url,
    redact_password,
    save_config,
)
from ddm.errors import Declined, ExitStatus, UsageError
from ddmctl.common import (
    CommandContext,
    InterruptibleCommand,
    common_options,
    epilog,
    json_option,
    main_for,
    make_context,
)
from ddminit.hostkeys import (
    host_keys_to_record,
    parse_accept_option,
    unrecorded_hosts,
    write_host_keys,
)

# Comment lines named in the warning before "and N more".
MAX_LISTED_LINES = 5

# The line of an OpenSSH .pub file: the key type (ssh-ed25519, ecdsa-sha2-nistp256,
# sk-ssh-ed25519@openssh.com, ...), then base64 that starts with "AAAA" because the key blob
# starts with the type name's length as a 4-byte big-endian number below 2**24.
PUBLIC_KEY_PATTERN = re.compile(rb"(ssh|ecdsa|sk)-[A-Za-z0-9@.-]+ +AAAA[A-Za-z0-9+/]")
# Bytes read from the start of the identity file: a public key line's type and first base64.
PUBLIC_KEY_HEAD_BYTES = 256


def parse_host_option(value: str) -> tuple[str, str]:
    """Split a --host NAME=URL argument."""
    name, separator, url = value.partition("=")
    if not separator or not name or not url:
        raise UsageError(f"invalid --host {redact_password(value)!r}",
                         hint="use --host NAME=ssh://user@host:22")
    if name.casefold() == LOCAL_HOST:
        raise UsageError(f"the host name {name!r} is reserved for the local Docker engine",
                         hint="choose another name; 'local' is reserved in any letter case")
    return name, url


def parse_host_options(host_args: tuple[str, ...]) -> dict[str, str]:
    """Map the host names of the --host arguments to their URLs; a repeated name is an error."""
    urls: dict[str, str] = {}
    for value in host_args:
        name, url = parse_host_option(value)
        if name in urls:
            first, second = redact_password(urls[name]), redact_password(url)
            raise UsageError(f"host {name!r} given twice: --host {name}={first} and "
                             f"--host {name}={second}", hint="pass one --host per host name")
        urls[name] = url
    return urls


@click.command(
    cls=InterruptibleCommand,
    epilog=epilog("ddminit --host old=ssh://root@old.example --host new=ssh://root@new.example "
                  "--identity-file ~/.ssh/id_ed25519 --yes"),
    context_settings={"help_option_names": ["-h", "--help"]},
)
@common_options
@click.option("--host", "host_args", multiple=True, metavar="NAME=URL",
              help="A Docker host: ssh://[user@]host[:port], unix:///path or tcp://host:port "
              "(repeatable, each name once; replaces a host of the same name in the file).")
@click.option("--identity-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Private key for ssh:// hosts (default: ~/.ssh/config, then ~/.ssh/id_*).")
@click.option("--known-hosts", type=click.Path(dir_okay=False, path_type=Path),
              help="known_hosts file to check host keys against (default ~/.ssh/known_hosts).")
@click.option("--docker-socket", metavar="PATH",
              help="Path of the Docker socket on the ssh:// hosts given here "
              "(default /var/run/docker.sock).")
@click.option("--accept-host-key", "accept_args", multiple=True, metavar="NAME=SHA256:...",
              help="Record the SSH host key of host NAME in known_hosts if its fingerprint is "
              "exactly this one (repeatable). Without it, ddminit records a key only after you "
              "confirm its fingerprint on a terminal.")
@click.option("-y", "--yes", is_flag=True,
              help="Write without asking; no host key is recorded unless --accept-host-key "
              "names it, and a warning names each new ssh:// host whose key is not recorded.")
@json_option
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
    accept_args: tuple[str, ...],
    yes: bool,
    as_json: bool,
) -> int:
    """Write or update the DDM configuration file (mode 0600).

    Hosts already in the file are kept unless a --host of the same name replaces them. Without
    --yes, on a terminal, ddminit shows the SSH host key fingerprint of each new ssh:// host,
    asks whether to record it in known_hosts, and asks before writing; off a terminal it needs
    --yes. Encrypted key files are read with the passphrase in DDM_SSH_PASSPHRASE, or used
    through ssh-agent.
    """
    context = make_context(ctx, config_path, debug, verbose, quiet)
    environ = context.env.environ
    path = config_path or default_config_path(environ)
    existing = load_config(path, environ) if path.exists() else None

    config = build_config(existing, path, host_args, identity_file, known_hosts,
                          docker_socket, environ)
    warn_about_key(context, config.identity_file)
    if existing is not None:
        warn_about_comments(context, path)
    if not yes and not context.env.stdin_isatty:
        raise UsageError(f"not writing {path} without confirmation",
                         hint="pass --yes to write without asking")

    accepted = dict(parse_accept_option(value) for value in accept_args)
    new_ssh_hosts = [
        name for name in parse_host_options(host_args)
        if config.hosts[name].scheme == "ssh" and name not in accepted
    ]
    if yes:
        warn_about_unrecorded_keys(context, config, new_ssh_hosts)
        new_ssh_hosts = []
    records = host_keys_to_record(
        config, accepted, new_ssh_hosts,
        ask=lambda question: ask(context, question, default=False), inform=context.info,
    )

    if not yes:
        names = ", ".join(name for name in config.hosts if name != LOCAL_HOST) or "no hosts"
        if not ask(context, f"write {path} with {names}?", default=True):
            raise Declined(f"nothing was written to {path} because the confirmation was declined",
                           hint="run ddminit again and answer yes, or pass --yes")

    written = save_config(config, path)
    if written == path:
        context.info(f"wrote {path}")
    else:
        context.info(f"wrote {written}, the file that the symbolic link {path} points to")
    write_host_keys(records, context.info)
    if as_json:
        context.print_json({"path": str(path), **config.to_dict()})
    else:
        context.echo(str(path))
    return int(ExitStatus.OK)


def ask(context: CommandContext, question: str, *, default: bool) -> bool:
    """Ask a yes/no question on stderr and read the answer from the command's stdin.

    The end of input aborts, so a closed stdin never counts as yes.
    """
    choices = "[Y/n]" if default else "[y/N]"
    context.env.stderr.write(f"{question} {choices} ")
    context.env.stderr.flush()
    answer = context.env.stdin.readline()
    if not answer:
        raise click.exceptions.Abort()
    answer = answer.strip().lower()
    if not answer:
        return default
    return answer in ("y", "yes")


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

    urls = parse_host_options(host_args)
    check_letter_case(list(raw["hosts"]), list(urls), path)
    for name, url in urls.items():
        host = parse_host_url(name, url)
        entry = replace(host, docker_socket=docker_socket or host.docker_socket).to_dict()
        raw["hosts"][name] = entry

    return config_from_dict(raw, path, environ)


def check_letter_case(file_names: list[str], new_names: list[str], path: Path) -> None:
    """Raise UsageError when a host name to add differs from another only in letter case.

    Host names are case-sensitive in the config file, in --from and --to, and in the task
    locks, so `a` and `A` would be two hosts that an operator can easily confuse. A name
    already in the file may be given again, because that replaces the host.
    """
    file_by_key = {name.casefold(): name for name in file_names}
    argument_by_key: dict[str, str] = {}
    for name in new_names:
        if name in file_names:
            continue
        key = name.casefold()
        if key in file_by_key:
            other = file_by_key[key]
            raise UsageError(
                f"host {name!r} differs only in letter case from host {other!r} in {path}",
                hint=f"two names that differ only in case are easy to mix up, so choose another "
                     f"name, or pass --host {other}=URL to change host {other!r}")
        if key in argument_by_key:
            other = argument_by_key[key]
            raise UsageError(
                f"host {name!r} differs only in letter case from host {other!r}, also given "
                "with --host",
                hint="two names that differ only in case are easy to mix up, so give one of "
                     "them another name")
        argument_by_key[key] = name


def _absolute(path: Path, environ) -> Path:
    expanded = expand_path(str(path), environ)
    return expanded if expanded.is_absolute() else Path.cwd() / expanded


def warn_about_key(context, identity_file: Path | None) -> None:
    """Warn when the private key is missing, is a public key, or is readable by group or others."""
    if identity_file is None:
        return
    try:
        mode = os.stat(identity_file).st_mode
    except OSError:
        context.info(f"warning: identity file {identity_file} does not exist yet")
        return
    if is_public_key_file(identity_file):
        private = identity_file.with_suffix("") if identity_file.suffix == ".pub" else None
        where = f", probably {private}," if private is not None else ""
        context.info(f"warning: identity file {identity_file} is a public key, and SSH needs "
                     f"the private key; pass the private key file{where} with --identity-file")
        return
    # Windows reports no group or other permission bits (st_mode is 0o666 or 0o444).
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        context.info(f"warning: identity file {identity_file} is readable by group or others; "
                     f"run 'chmod 600 {identity_file}'")


def is_public_key_file(path: Path) -> bool:
    """Tell whether the file starts like an OpenSSH public key line (`ssh-ed25519 AAAA...`)."""
    try:
        with open(path, "rb") as stream:
            head = stream.read(PUBLIC_KEY_HEAD_BYTES)
    except OSError:
        return False
    return PUBLIC_KEY_PATTERN.match(head) is not None


def warn_about_unrecorded_keys(context: CommandContext, config: Config,
                               host_names: list[str]) -> None:
    """Warn about each ssh:// host whose key --yes leaves unrecorded, naming the fix."""
    for name, known_hosts_file in unrecorded_hosts(config, host_names):
        where = known_hosts_file or "any known_hosts file"
        context.info(
            f"warning: no SSH host key of {name} is recorded in {where}, so DDM "
            f"rejects host {name!r} until one is; run 'ddminit --accept-host-key "
            f"{name}=SHA256:...' with the fingerprint that the host's administrator gives you, "
            "or run ddminit on a terminal without --yes to check the fingerprint there"
        )


def warn_about_comments(context: CommandContext, path: Path) -> None:
    """Warn that the rewrite drops the comments of the existing config file, naming their lines."""
    try:
        lines = comment_lines(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return  # The file changed after load_config parsed it, and the write goes on.
    if not lines:
        return
    listed = ", ".join(str(line) for line in lines[:MAX_LISTED_LINES])
    if len(lines) > MAX_LISTED_LINES:
        listed += f" and {len(lines) - MAX_LISTED_LINES} more"
    noun = "line" if len(lines) == 1 else "lines"
    context.info(f"warning: ddminit does not keep the comments in {path} ({noun} {listed}), "
                 "because it writes the file anew from its values; to keep them, edit the file "
                 "by hand instead")


main = main_for(cli, "ddminit")


if __name__ == "__main__":
    main()
