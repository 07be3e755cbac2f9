"""Bad input through the real commands: the corpus under tests/fuzz and random input.

Every case must fail during validation with exit status 2, exactly one stderr line of the form
"PROG: error: ...", no traceback, nothing on stdout, and no change under the temporary home
(HOME, XDG_CONFIG_HOME and XDG_DATA_HOME all lie there).

Corpus layout:
  tests/fuzz/config/*.yaml  config files; the first line is "# expect: TEXT", a text that the
                            error line must contain. A line "# absent: TEXT" names a text that
                            must not appear (a password).
  tests/fuzz/config/*.bin   config files as raw bytes; the error line must name the file.
  tests/fuzz/argv/*.json    {"command": PROG, "args": [...], "expect": TEXT}, run with a
                            config file that names hosts a and b. An optional "xfail" gives
                            the reason of a known bug; the case must then fail.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddm.config import load_config
from ddm.errors import ConfigError
from tests.unit.cli_support import error_line, home_environ, invoke, snapshot_tree

pytestmark = pytest.mark.usefixtures("no_network")

FUZZ_DIR = Path(__file__).resolve().parent.parent / "fuzz"
CONFIG_CASES = sorted([*FUZZ_DIR.glob("config/*.yaml"), *FUZZ_DIR.glob("config/*.bin")])
ARGV_CASES = sorted(FUZZ_DIR.glob("argv/*.json"))

MIB = 1024 * 1024

# Each command that reads a config file, with "{case}" standing for the file's path.
CONFIG_COMMANDS = [
    ("ddmctl", ["--config", "{case}", "list"]),
    ("ddmctl", ["--config", "{case}", "migrate", "--from", "a", "--to", "b", "--volume", "v1",
                "--yes"]),
    ("ddminit", ["--config", "{case}", "--host", "c=ssh://c.example", "--yes"]),
    ("ddmverify", ["--config", "{case}", "--from", "a", "--to", "b", "--volume", "v1"]),
    ("ddmsyncer", ["--config", "{case}", "run", "abcd0123"]),
]
COMMAND_IDS = ["ddmctl-list", "ddmctl-migrate", "ddminit", "ddmverify", "ddmsyncer-run"]

# Config files with a 1 MiB value or 100,000 levels of nesting, written at test time rather
# than kept in the repository. PyYAML's pure-Python scanner needs about 0.7 s per MiB, so each
# case runs through one command, a different one each, instead of all five.
HUGE_CASES = [
    # (case name, index into CONFIG_COMMANDS, text the error line must contain, file text)
    ("huge-host-name", 0, "invalid host name 'xxxx", "hosts:\n  ? {big}\n  : ssh://a\n"),
    ("huge-url", 1, "invalid URL for host 'a'", "hosts:\n  a: ssh://{big}\n"),
    ("huge-identity-file", 2, "invalid identity_file '/xxxx", "identity_file: /{big}\n"),
    ("huge-unknown-key", 3, "unknown key 'xxxx", "? {big}\n: 1\n"),
    ("huge-verify", 4, "invalid defaults.verify 'xxxx", "defaults:\n  verify: {big}\n"),
    ("huge-comment", 0, "unsupported config version 2", "# {big}\nversion: 2\n"),
    ("deep-nesting-100k", 1, "nested too deeply", "version: {deep}1{close}\n"),
]


def case_directives(path: Path) -> dict[str, list[str]]:
    """Return the "# expect:" and "# absent:" texts at the top of a .yaml case."""
    directives: dict[str, list[str]] = {"expect": [], "absent": []}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("# "):
            break
        key, _, value = line[2:].partition(": ")
        if key in directives:
            directives[key].append(value)
    return directives


def expand_args(args: list[str], case: Path) -> list[str]:
    return [str(case) if arg == "{case}" else arg for arg in args]


def test_corpus_present() -> None:
    yaml_cases = [case for case in CONFIG_CASES if case.suffix == ".yaml"]
    bin_cases = [case for case in CONFIG_CASES if case.suffix == ".bin"]

    assert len(yaml_cases) >= 60
    assert len(bin_cases) >= 5
    assert len(ARGV_CASES) >= 40
    for case in yaml_cases:
        assert case_directives(case)["expect"], f"{case.name} has no '# expect:' line"


@pytest.mark.parametrize(("prog", "args"), CONFIG_COMMANDS, ids=COMMAND_IDS)
@pytest.mark.parametrize("case", CONFIG_CASES, ids=lambda case: case.name)
def test_config_case(home: Path, environ: dict[str, str], case: Path, prog: str,
                     args: list[str]) -> None:
    before = snapshot_tree(home)

    outcome = invoke(prog, expand_args(args, case), environ)

    line = error_line(outcome, prog)
    if case.suffix == ".bin":
        assert str(case) in line
    else:
        directives = case_directives(case)
        for expected in directives["expect"]:
            assert expected in line
        for absent in directives["absent"]:
            assert absent not in line
    assert len(line) < 2000
    assert snapshot_tree(home) == before


@pytest.mark.parametrize(
    ("name", "command", "expected", "template"), HUGE_CASES, ids=[case[0] for case in HUGE_CASES]
)
def test_huge_config_case(tmp_path: Path, home: Path, environ: dict[str, str], name: str,
                          command: int, expected: str, template: str) -> None:
    prog, args = CONFIG_COMMANDS[command]
    case = tmp_path / f"{name}.yaml"
    depth = 100_000
    case.write_text(template.format(big="x" * MIB, deep="{a: " * depth, close="}" * depth))
    before = snapshot_tree(home)

    outcome = invoke(prog, expand_args(args, case), environ)

    line = error_line(outcome, prog)
    assert expected in line
    assert len(line) < 2000
    assert snapshot_tree(home) == before


def argv_params() -> list[object]:
    """Return the argv cases as parameters. A case with an "xfail" reason must fail."""
    params: list[object] = []
    for case in ARGV_CASES:
        reason = json.loads(case.read_text(encoding="utf-8")).get("xfail")
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        params.append(pytest.param(case, id=case.stem, marks=marks))
    return params


@pytest.mark.parametrize("case", argv_params())
def test_argv_case(home: Path, configured: dict[str, str], case: Path) -> None:
    spec = json.loads(case.read_text(encoding="utf-8"))
    before = snapshot_tree(home)

    outcome = invoke(spec["command"], spec["args"], configured)

    line = error_line(outcome, spec["command"])
    assert spec["expect"] in line
    assert len(line) < 2000
    assert snapshot_tree(home) == before


# Random input (hypothesis)


@contextmanager
def scratch_home() -> Iterator[tuple[Path, dict[str, str]]]:
    """Create a temporary home, make it the current directory, and remove it afterwards."""
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="ddm-fuzz-") as directory:
        home = Path(directory) / "home"
        home.mkdir()
        os.chdir(home)
        try:
            yield home, home_environ(home)
        finally:
            os.chdir(previous)


CONFIG_KEYS = ["version", "hosts", "defaults", "identity_file", "known_hosts", "ssh_config",
               "url", "docker_socket", "verify", "local", "a", "b"]
URL_SCHEMES = ["ssh", "unix", "tcp", "npipe", "http", ""]
HOST_TEXT = st.text(alphabet="ab.-_:[]%@/ 0123456789", max_size=12)

urls = st.builds(
    lambda scheme, user, host, port: f"{scheme}://{user}{host}{port}",
    st.sampled_from(URL_SCHEMES),
    st.sampled_from(["", "root@", "u:p@", "@", "-o@"]),
    HOST_TEXT,
    st.one_of(st.just(""), st.integers(-5, 70_000).map(lambda port: f":{port}")),
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20), urls,
    st.sampled_from(["none", "quick", "full", "/var/run/docker.sock", "~/.ssh/id_ed25519"]),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(CONFIG_KEYS), st.text(max_size=8)),
                        children, max_size=4),
    ),
    max_leaves=16,
)
documents = st.dictionaries(st.sampled_from(CONFIG_KEYS), values, max_size=5)
YAML_PUNCTUATION = list("[]{}:-&*!|>'\"#%@`,?\n\t ") + ["!!python/object:os.system", "*a", "&a"]


@st.composite
def config_bytes(draw: st.DrawFn) -> bytes:
    """Draw a config file: a dumped document, maybe cut or with YAML punctuation spliced in."""
    kind = draw(st.sampled_from(["document", "cut", "spliced", "raw", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "raw":
        tokens = st.one_of(st.sampled_from(YAML_PUNCTUATION), st.text(max_size=4))
        return "".join(draw(st.lists(tokens, max_size=30))).encode("utf-8", "surrogatepass")

    text = yaml.safe_dump(draw(documents), allow_unicode=True)
    if kind == "cut":
        text = text[: draw(st.integers(0, len(text)))]
    elif kind == "spliced":
        position = draw(st.integers(0, len(text)))
        text = text[:position] + draw(st.sampled_from(YAML_PUNCTUATION)) + text[position:]
    return text.encode("utf-8", "surrogatepass")


@settings(max_examples=100, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=config_bytes())
def test_random_config(data: bytes) -> None:
    with scratch_home() as (home, environ):
        case = home.parent / "case.yaml"
        case.write_bytes(data)
        try:
            load_config(case, environ)
            expected = "would be copied onto itself"
        except ConfigError as error:
            expected = str(error)
        before = snapshot_tree(home)

        # Migrating from local to local fails either on the config or as a copy onto itself.
        outcome = invoke("ddmctl", ["--config", str(case), "migrate", "--from", "local",
                                    "--to", "local", "--volume", "vv", "--yes"], environ)

        line = error_line(outcome, "ddmctl")
        assert expected in line
        assert snapshot_tree(home) == before


COMMAND_WORDS = {
    "ddmctl": ["migrate", "list", "status", "resume", "cancel", "rollback", "--from", "--to",
               "--volume", "--verify", "--force", "--dry-run", "--yes", "-y", "--json",
               "--state", "--limit", "--events"],
    "ddminit": ["--host", "--identity-file", "--known-hosts", "--docker-socket", "--yes", "-y"],
    "ddmverify": ["--from", "--to", "--volume", "--deep", "--json"],
    "ddmsyncer": ["run", "serve", "--concurrency", "--poll-interval", "--once", "--json"],
}
COMMON_WORDS = ["--config", "--debug", "-v", "-q", "--quiet", "--verbose", "--help", "-h",
                "--version", "a", "b", "local", "v1", "v1:v2", "abcd", "0", "-1", "full",
                "a=ssh://a.example", "local=unix:///x", "missing.yaml", ".", "/", ""]
# Real argv entries cannot contain NUL (execve takes C strings), so random text leaves it out.
ARGUMENT_TEXT = st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=16)


def help_requested(args: list[str]) -> bool:
    for arg in args:
        if arg in ("--help", "--version"):
            return True
        if arg.startswith("-") and not arg.startswith("--") and "h" in arg:
            return True
    return False


def verbose_requested(args: list[str]) -> bool:
    for arg in args:
        if arg in ("--debug", "--verbose"):
            return True
        if arg.startswith("-") and not arg.startswith("--") and "v" in arg:
            return True
    return False


@st.composite
def command_lines(draw: st.DrawFn) -> tuple[str, list[str]]:
    prog = draw(st.sampled_from(sorted(COMMAND_WORDS)))
    words = st.sampled_from(COMMAND_WORDS[prog] + COMMON_WORDS)
    args = draw(st.lists(st.one_of(words, words, ARGUMENT_TEXT), max_size=10))
    return prog, args


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command_line=command_lines())
def test_random_argv(command_line: tuple[str, list[str]]) -> None:
    prog, args = command_line
    with scratch_home() as (home, environ):
        # An invalid DOCKER_HOST makes every config load fail, so no command gets as far as
        # the task database or a Docker host.
        environ["DOCKER_HOST"] = "invalid-scheme://engine"
        before = snapshot_tree(home)

        outcome = invoke(prog, args, environ)

        assert outcome.status in (0, 2), outcome
        assert snapshot_tree(home) == before
        if outcome.status == 0:
            assert help_requested(args)
            assert outcome.stderr == ""
            assert outcome.stdout != ""
            return
        assert outcome.stdout == ""
        lines = outcome.stderr.splitlines()
        assert lines[-1].startswith(f"{prog}: error: ")
        if not verbose_requested(args):
            assert len(lines) == 1
        if "--debug" not in args:
            assert "Traceback" not in outcome.stderr
