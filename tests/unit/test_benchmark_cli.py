"""The benchmark suite's command line and table: where results go, notes, rate format."""

from pathlib import Path

import pytest

# The suite measures its children with the POSIX module resource and runs only on Linux.
pytest.importorskip("resource")

from benchmarks.__main__ import default_json_path, parse_arguments, scenario_notes  # noqa: E402
from benchmarks.report import format_rate  # noqa: E402

CHECKOUT = Path(__file__).resolve().parents[2]


def test_json_default_is_not_set() -> None:
    assert parse_arguments(["run"]).json is None


def test_json_default_path_outside_checkout() -> None:
    path = default_json_path().resolve()
    assert not path.is_relative_to(CHECKOUT)
    assert path.name.startswith("ddm-benchmarks-")
    assert path.suffix == ".json"


def test_json_option_keeps_given_path(tmp_path: Path) -> None:
    requested = tmp_path / "out.json"
    assert parse_arguments(["run", "--json", str(requested)]).json == requested


def test_help_says_d_runs_c(capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # argparse wraps at the terminal width
    with pytest.raises(SystemExit):
        parse_arguments(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "d without c runs c first" in text
    assert "ddm-benchmarks-UTCTIME.json" in text


@pytest.mark.parametrize("scenarios", [["d"], ["a", "d"], ["d", "c"]])
def test_note_when_d_runs_c_first(scenarios: list[str]) -> None:
    notes = scenario_notes(scenarios)
    assert len(notes) == 1
    assert "c runs first" in notes[0]


@pytest.mark.parametrize("scenarios", [["c", "d"], ["a", "b"], []])
def test_no_note_otherwise(scenarios: list[str]) -> None:
    assert scenario_notes(scenarios) == []


@pytest.mark.parametrize(("rate", "text"), [
    (3.14, "3.1"),
    (0.04, "0.0"),
    (99.94, "99.9"),
    (99.96, "100"),
    (123.4, "123"),
])
def test_rate_format(rate: float, text: str) -> None:
    assert format_rate(rate) == text
