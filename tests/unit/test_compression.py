"""Compression without a lab: the auto decision, option checks, and the codec pipelines run locally."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ddm import api
from ddm.config import load_config
from ddm.errors import TransferFailed, UsageError
from ddmdriver.codec import DEFAULT_CODECS, Codec, StreamDecompressor, compressing_argv, decompressing_argv
from ddmsyncer.compression import AUTO_MARGIN, Sample, decide_auto, predicted_rate, validate_compress
from tests.lab.errors import LabError
from tests.lab.netem import validate_rate

MIB = 1024 * 1024
ZSTD3, ZSTD1, LZ4 = Codec("zstd", 3), Codec("zstd", 1), Codec("lz4", 1)


def sample(codec: Codec, ratio: float, mib_per_second: float) -> Sample:
    """Return a 4 MiB sample compressed to `ratio` at `mib_per_second`."""
    size = 4 * MIB
    return Sample(codec, size, int(size * ratio), size / (mib_per_second * MIB))


# The auto decision, with the numbers measured in docs/benchmarks.md as the typical cases.

def test_auto_slow_link_text_picks_best_ratio() -> None:
    samples = [sample(ZSTD3, 0.35, 158), sample(ZSTD1, 0.40, 263), sample(LZ4, 0.66, 334)]

    codec, reason = decide_auto(12 * MIB, samples)

    assert codec == ZSTD3
    assert reason.startswith("zstd-3 is faster")


def test_auto_fast_link_text_picks_fast_level() -> None:
    samples = [sample(ZSTD3, 0.35, 158), sample(ZSTD1, 0.40, 263), sample(LZ4, 0.66, 334)]

    codec, _ = decide_auto(110 * MIB, samples)

    assert codec == ZSTD1


def test_auto_random_data_stays_off() -> None:
    samples = [sample(ZSTD3, 1.0, 500), sample(ZSTD1, 1.0, 500), sample(LZ4, 1.0, 600)]

    codec, reason = decide_auto(12 * MIB, samples)

    assert codec is None
    assert reason.startswith("compression is not faster")


def test_auto_slow_compressor_stays_off() -> None:
    samples = [sample(ZSTD3, 0.3, 150)]

    codec, _ = decide_auto(300 * MIB, samples)

    assert codec is None


def test_auto_needs_the_margin() -> None:
    link = 100 * MIB
    just_below = [sample(ZSTD1, 1 / (AUTO_MARGIN - 0.01), 1000)]
    just_above = [sample(ZSTD1, 1 / (AUTO_MARGIN + 0.01), 1000)]

    assert decide_auto(link, just_below)[0] is None
    assert decide_auto(link, just_above)[0] == ZSTD1


@pytest.mark.parametrize("link", [None, 0.0])
def test_auto_without_link_rate(link: float | None) -> None:
    codec, reason = decide_auto(link, [sample(ZSTD3, 0.1, 500)])

    assert codec is None
    assert reason == "the link rate could not be measured"


def test_auto_without_samples() -> None:
    assert decide_auto(12 * MIB, []) == (None, "no compression sample could be taken")


def test_predicted_rate_is_slower_bound() -> None:
    assert predicted_rate(sample(ZSTD3, 0.5, 20), 100 * MIB) == pytest.approx(20 * MIB)
    assert predicted_rate(sample(ZSTD3, 0.5, 500), 10 * MIB) == pytest.approx(20 * MIB)


# Option checks.

@pytest.mark.parametrize("value", ["none", "lz4", "zstd", "auto"])
def test_validate_compress_accepts(value: str) -> None:
    assert validate_compress(value, "host") == value


def test_validate_compress_default_none() -> None:
    assert validate_compress(None) == "none"


def test_validate_compress_rejects_unknown() -> None:
    with pytest.raises(UsageError, match="invalid compression 'gzip'"):
        validate_compress("gzip")


@pytest.mark.parametrize("value", ["lz4", "zstd"])
def test_engine_path_rejects_codec(value: str) -> None:
    with pytest.raises(UsageError, match="needs the host data path"):
        validate_compress(value, "engine")


@pytest.mark.parametrize("value", ["none", "auto"])
def test_engine_path_allows_auto_none(value: str) -> None:
    assert validate_compress(value, "engine") == value


def test_build_spec_checks_compress(tmp_path: Path) -> None:
    config_file = tmp_path / "ddm.yaml"
    config_file.write_text("hosts:\n  a: ssh://nobody@127.0.0.1:1\n  b: ssh://nobody@127.0.0.1:1\n")
    config = load_config(config_file, {"HOME": str(tmp_path)})

    spec = api.build_spec(config, source="a", target="b", volumes=["data"],
                          options={"compress": "zstd"})

    assert spec.options["compress"] == "zstd"
    with pytest.raises(UsageError):
        api.build_spec(config, source="a", target="b", volumes=["data"],
                       options={"compress": "zstd", "data_path": "engine"})
    with pytest.raises(UsageError):
        api.build_spec(config, source="a", target="b", volumes=["data"], options={"compress": "xz"})


def test_lab_rate_form() -> None:
    assert validate_rate("100mbit") == "100mbit"
    for bad in ("100", "fast", "100mbit; reboot", "0mbit"):
        with pytest.raises(LabError):
            validate_rate(bad)


# The pipelines, run on this machine with its tar and codec tools.

needs_tools = pytest.mark.skipif(not (shutil.which("zstd") and shutil.which("lz4")),
                                 reason="the zstd and lz4 commands are not installed")


def make_tree(root: Path) -> None:
    (root / "dir").mkdir()
    (root / "dir" / "text.log").write_bytes(b"volume mountpoint archive\n" * 20000)
    (root / "link").symlink_to("dir/text.log")


@needs_tools
@pytest.mark.parametrize("name", ["zstd", "lz4"])
def test_pipeline_round_trip(tmp_path: Path, name: str) -> None:
    codec = DEFAULT_CODECS[name]
    source, target = tmp_path / "source", tmp_path / "target"
    source.mkdir()
    target.mkdir()
    make_tree(source)

    plain = subprocess.run(["tar", "--create", "--file=-", f"--directory={source}", "."],
                           capture_output=True, check=True).stdout
    compressed = subprocess.run(
        compressing_argv((), ["tar", "--create", "--file=-", f"--directory={source}", "."], codec),
        capture_output=True, check=True).stdout
    decoder = StreamDecompressor(codec, "test")
    decoded = decoder.decode(compressed)
    decoder.finish()
    extracted = subprocess.run(
        decompressing_argv((), ["tar", "--extract", "--file=-", f"--directory={target}"], codec),
        input=compressed, capture_output=True)

    assert len(compressed) < len(plain) // 10
    assert decoded == plain
    assert extracted.returncode == 0, extracted.stderr
    assert (target / "dir" / "text.log").read_bytes() == (source / "dir" / "text.log").read_bytes()
    assert (target / "link").readlink() == Path("dir/text.log")


@needs_tools
def test_pipeline_source_tar_failure(tmp_path: Path) -> None:
    argv = compressing_argv((), ["tar", "--create", "--file=-", f"--directory={tmp_path}/missing", "."],
                            DEFAULT_CODECS["zstd"])

    completed = subprocess.run(argv, capture_output=True)

    assert completed.returncode == 2
    assert b"Cannot open" in completed.stderr


@needs_tools
def test_pipeline_tar_changed_status_kept(tmp_path: Path) -> None:
    """GNU tar's exit status 1 reaches the caller unchanged through the compressor."""
    argv = compressing_argv((), ["sh", "-c", "echo data; exit 1"], DEFAULT_CODECS["lz4"])

    completed = subprocess.run(argv, capture_output=True)

    assert completed.returncode == 1


@needs_tools
def test_pipeline_target_rejects_corrupt(tmp_path: Path) -> None:
    codec = DEFAULT_CODECS["zstd"]
    source = tmp_path / "source"
    source.mkdir()
    make_tree(source)
    compressed = bytearray(subprocess.run(
        compressing_argv((), ["tar", "--create", "--file=-", f"--directory={source}", "."], codec),
        capture_output=True, check=True).stdout)
    compressed[len(compressed) // 2] ^= 0xFF
    target = tmp_path / "target"
    target.mkdir()

    extracted = subprocess.run(
        decompressing_argv((), ["tar", "--extract", "--file=-", f"--directory={target}"], codec),
        input=bytes(compressed), capture_output=True)

    assert extracted.returncode == 2
    with pytest.raises(TransferFailed, match="corrupt"):
        StreamDecompressor(codec, "test").decode(bytes(compressed))


@pytest.mark.parametrize("name", ["zstd", "lz4"])
def test_decoder_rejects_truncated(name: str) -> None:
    if name == "zstd":
        import zstandard

        whole = zstandard.ZstdCompressor(write_checksum=True).compress(b"x" * 100000)
    else:
        import lz4.frame

        whole = lz4.frame.compress(b"x" * 100000)
    decoder = StreamDecompressor(Codec(name, 1), "test")
    decoder.decode(whole[: len(whole) // 2])

    with pytest.raises(TransferFailed, match="ended early"):
        decoder.finish()


def test_direct_route_rejects_codec() -> None:
    with pytest.raises(UsageError, match="not supported with --route direct"):
        validate_compress("zstd", "host", "direct")
    assert validate_compress("auto", "host", "direct") == "auto"
