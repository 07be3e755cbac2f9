"""The plan's estimate and text: compression ratios, one link rate, incremental updates."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ddm.task import VerifyMode
from ddmctl.commands.planning import compression_line, estimate_line
from ddmdriver.codec import Codec
from ddmdriver.hostpath import HostAccess
from ddmsyncer.compression import Sample, decide_auto, format_ratio, sample_compression
from ddmsyncer.linkprobe import LinkRate
from ddmsyncer.plan import estimate_duration

MIB = 1024 * 1024
LINKS = {"source": LinkRate("h1", 2.0 * MIB, 2.0 * MIB, 4),
         "target": LinkRate("h2", 1.0 * MIB, 1.0 * MIB, 4)}


def compressed_volume(size: int, *, codec: str | None = "zstd", samples: list[dict[str, Any]]
                      | None = None, requested: str = "auto") -> dict[str, Any]:
    """Return a host-path volume entry with the compression entry of a plan."""
    return {
        "kind": "volume", "source": "logs", "target": "logs", "action": "create",
        "size_bytes": size, "data_path": "host", "verify_method": "host-scan",
        "compression": {"requested": requested, "codec": codec, "level": 3 if codec else None,
                        "reason": "zstd-3 is faster", "link_bytes_per_second": MIB,
                        "samples": samples or []},
    }


def zstd_sample(input_bytes: int = 4 * MIB, output_bytes: int = MIB,
                rate: int = 100 * MIB) -> dict[str, Any]:
    return {"codec": "zstd", "level": 3, "input_bytes": input_bytes,
            "output_bytes": output_bytes, "ratio": output_bytes / input_bytes,
            "compress_bytes_per_second": rate}


def test_estimate_uses_measured_ratio() -> None:
    volume = compressed_volume(40 * MIB, samples=[zstd_sample()])

    estimate = estimate_duration([volume], LINKS, VerifyMode.FULL)

    # Ratio 0.25 on a 1 MiB/s link: 10 MiB cross the wire in 10 s.
    assert estimate["copy_bytes_per_second"] == MIB
    assert estimate["wire_bytes_total"] == 10 * MIB
    assert estimate["copy_seconds"] == pytest.approx(10.0)
    assert estimate["compression"] == [{"object": "logs", "codec": "zstd", "level": 3,
                                        "ratio": 0.25, "sample_bytes": 4 * MIB}]


def test_estimate_bounded_by_compress_rate() -> None:
    volume = compressed_volume(40 * MIB, samples=[zstd_sample(output_bytes=MIB // 64,
                                                              rate=2 * MIB)])

    estimate = estimate_duration([volume], LINKS, VerifyMode.FULL)

    # The link could carry 64 MiB/s of volume data, but the codec compresses 2 MiB/s.
    assert estimate["copy_seconds"] == pytest.approx(20.0)


def test_estimate_without_sample_counts_uncompressed() -> None:
    volume = compressed_volume(40 * MIB, samples=[], requested="zstd")

    estimate = estimate_duration([volume], LINKS, VerifyMode.FULL)

    assert estimate["wire_bytes_total"] == 40 * MIB
    assert estimate["copy_seconds"] == pytest.approx(40.0)
    assert estimate["compression"][0]["ratio"] is None


def test_estimate_ignores_other_codec_sample() -> None:
    lz4 = {**zstd_sample(), "codec": "lz4", "level": 1}
    volume = compressed_volume(40 * MIB, samples=[lz4])

    estimate = estimate_duration([volume], LINKS, VerifyMode.FULL)

    assert estimate["wire_bytes_total"] == 40 * MIB


def test_estimate_skips_host_scan_verify() -> None:
    scanned = compressed_volume(8 * MIB, codec=None)
    read_back = {**compressed_volume(8 * MIB, codec=None), "source": "db",
                 "verify_method": "read-back"}

    estimate = estimate_duration([scanned, read_back], LINKS, VerifyMode.FULL)

    # Only the read-back volume crosses the target's 1 MiB/s read link again.
    assert estimate["verify_seconds"] == pytest.approx(8.0)


def test_estimate_incremental_sends_changes() -> None:
    update = {"kind": "volume", "source": "db", "target": "db", "action": "incremental",
              "size_bytes": 100 * MIB, "data_path": "host",
              "incremental": {"send_entries": 3, "send_bytes": 2 * MIB, "delete_entries": 0}}

    estimate = estimate_duration([update], LINKS, VerifyMode.FULL)

    assert estimate["bytes_total"] == 2 * MIB
    assert estimate["copy_seconds"] == pytest.approx(2.0)
    assert estimate["verify_seconds"] == 0.0


def test_estimate_line_names_measured_ratio() -> None:
    volume = compressed_volume(40 * MIB, samples=[zstd_sample()])

    line = estimate_line(estimate_duration([volume], LINKS, VerifyMode.FULL))

    assert "10.0 MiB on the wire with zstd-3" in line
    assert "ratio measured on a sample of the tar stream" in line
    assert "at 1.0 MiB/s measured over SSH" in line


def test_estimate_line_says_ratio_unmeasured() -> None:
    volume = compressed_volume(40 * MIB, samples=[], requested="zstd")

    line = estimate_line(estimate_duration([volume], LINKS, VerifyMode.FULL))

    assert "compression ratio of logs not measured, counted uncompressed" in line


def test_estimate_line_names_stop_wait() -> None:
    estimate = {"seconds": 12.0, "bytes_total": MIB, "copy_bytes_per_second": MIB,
                "downtime_seconds": 13.0, "stop_timeout_seconds": 10, "stop_unbounded": ["db"]}

    line = estimate_line(estimate)

    assert "downtime about 13 s" in line
    assert "up to 10 s of it waiting for the source containers to stop" in line
    assert "StopTimeout" in line
    assert "the stop of db, which docker stop waits for without a limit" in line


def test_compression_line_explicit_codec_ratio() -> None:
    chosen = compressed_volume(40 * MIB, samples=[zstd_sample()], requested="zstd")["compression"]

    line = compression_line({**chosen, "reason": "--compress zstd"})

    assert line == ("compression zstd-3 (--compress zstd), ratio 0.25 measured on the first "
                    "4.0 MiB of the tar stream")


def test_compression_line_explicit_codec_unmeasured() -> None:
    chosen = compressed_volume(40 * MIB, samples=[], requested="zstd")["compression"]

    line = compression_line({**chosen, "reason": "--compress zstd"})

    assert line == "compression zstd-3 (--compress zstd), ratio not measured"


@pytest.mark.parametrize(("ratio", "text"), [
    (0.35, "0.35"),
    (1.0, "1.00"),
    (0.012, "0.012"),
    (0.0036, "0.0036"),
    (3.6e-05, "0.000036"),
])
def test_ratio_format_keeps_two_digits(ratio: float, text: str) -> None:
    assert format_ratio(ratio) == text


def test_ratio_format_rejects_zero() -> None:
    with pytest.raises(ValueError):
        format_ratio(0.0)


def test_auto_reason_tiny_ratio_not_zero() -> None:
    zeros = Sample(Codec("zstd", 3), 4 * MIB, 140, 0.02)

    _, reason = decide_auto(MIB, [zeros])

    assert "ratio 0.00 " not in reason
    assert "ratio 0.000033 " in reason


def test_auto_reason_link_rate_binary_units() -> None:
    _, reason = decide_auto(1_000_000, [Sample(Codec("zstd", 3), 4 * MIB, MIB, 0.02)])

    # The same form as the estimate line's rate, so both lines show one number.
    assert reason.startswith("zstd-3 is faster (link 976.6 KiB/s;")


def test_sample_without_output_is_skipped(tmp_path: Path) -> None:
    output = f"{4 * MIB} 1000 5000000\n{4 * MIB} 0 1000000\n"
    engine = SimpleNamespace(
        host=SimpleNamespace(name="h1"),
        ssh=SimpleNamespace(exec_command=lambda argv, timeout: SimpleNamespace(
            stdout=output, exit_status=0)),
    )
    access = HostAccess("h1", (), "tar (GNU tar) 1.34")

    samples = sample_compression(engine, access, str(tmp_path),
                                 [Codec("zstd", 3), Codec("lz4", 1)])

    assert [sample.codec.name for sample in samples] == ["zstd"]
    assert samples[0].output_bytes == 1000


def test_plan_help_offers_incremental(environ: dict[str, str], no_network: None) -> None:
    from tests.unit.cli_support import invoke

    outcome = invoke("ddmctl", ["plan", "--help"], environ)

    assert outcome.status == 0
    assert "--incremental" in outcome.stdout


def test_plan_incremental_rejected_in_full_mode(home: Path, environ: dict[str, str],
                                                no_network: None) -> None:
    from tests.unit.cli_support import error_line, invoke

    config_path = home / "ddm.yaml"
    config_path.write_text("version: 1\nhosts:\n  old: ssh://root@old.example\n"
                           "  new: ssh://root@new.example\n")

    outcome = invoke("ddmctl", ["--config", str(config_path), "plan", "--from", "old", "--to",
                                "new", "--mode", "full", "--container", "web", "--incremental"],
                     environ)

    assert outcome.status == 2
    assert "--incremental is for volumes mode" in error_line(outcome, "ddmctl")


def test_plan_incremental_with_force_rejected(home: Path, environ: dict[str, str],
                                              no_network: None) -> None:
    from tests.unit.cli_support import error_line, invoke

    config_path = home / "ddm.yaml"
    config_path.write_text("version: 1\nhosts:\n  old: ssh://root@old.example\n"
                           "  new: ssh://root@new.example\n")

    outcome = invoke("ddmctl", ["--config", str(config_path), "plan", "--from", "old", "--to",
                                "new", "--volume", "pgdata", "--incremental", "--force"],
                     environ)

    assert outcome.status == 2
    assert "--incremental and --force ask for opposite things" in error_line(outcome, "ddmctl")
