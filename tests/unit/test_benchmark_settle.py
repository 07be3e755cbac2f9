"""The benchmark suite's reading of the kernel's I/O pressure (PSI) file, and its bytecode step."""

import importlib.util
import sys
from pathlib import Path

import pytest

from benchmarks import suite
from benchmarks.suite import parse_io_pressure

PRESSURE = (
    "some avg10=30.29 avg60=17.80 avg300=6.13 total=455294642\n"
    "full avg10=11.05 avg60=9.10 avg300=3.01 total=114681395\n"
)


def test_reads_the_some_line_not_the_full_line() -> None:
    assert parse_io_pressure(PRESSURE) == pytest.approx(30.29)


def test_order_of_lines_does_not_matter() -> None:
    swapped = "".join(reversed(PRESSURE.splitlines(keepends=True)))
    assert parse_io_pressure(swapped) == pytest.approx(30.29)


def test_text_without_a_some_line_is_an_error() -> None:
    with pytest.raises(ValueError):
        parse_io_pressure("full avg10=1.00 avg60=0.00 avg300=0.00 total=1\n")


def test_compile_repository_writes_bytecode(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    for package in suite.PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "module.py").write_text("VALUE = 1\n")

    suite.compile_repository(tmp_path)

    for package in suite.PACKAGES:
        compiled = importlib.util.cache_from_source(str(tmp_path / package / "module.py"))
        assert Path(compiled).is_file()
