"""--compress on the host data path: compressed copies land intact, and broken streams fail safely."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

import ddmdriver.codec
import ddmdriver.hostpath
from ddm.store import TaskStore, default_store_path
from tests.integration.commands import run_command
from tests.lab import Lab, LabHost
from tests.lab.netem import current_qdisc
from tests.lab.resources import LabResources, unique_name
from tests.lab.tree import Dir, File, RandomFile, Symlink, diff_snapshots, snapshot_volume_tree, write_volume_tree


def log_text(size: int, seed: int) -> bytes:
    """Return `size` bytes of log-like lines, which zstd and lz4 shrink to well under half."""
    rng = random.Random(seed)
    words = ["volume", "mountpoint", "container", "image", "archive", "checksum", "request",
             "started", "finished", "error", "retry", "host", "key", "relay"]
    lines = []
    length = 0
    while length < size:
        line = (f"2026-12-04T23:{rng.randrange(60):02}:{rng.randrange(60):02}Z "
                f"{rng.choice(['INFO', 'WARN', 'DEBUG'])} pid={rng.randrange(1, 65536)} "
                f"{' '.join(rng.choice(words) for _ in range(rng.randrange(4, 12)))}\n")
        lines.append(line)
        length += len(line)
    return "".join(lines).encode()[:size]


def text_tree() -> dict[str, Any]:
    return {
        "logs": Dir(),
        "logs/app.log": File(log_text(1 << 20, seed=1)),
        "logs/db.log": File(log_text(512 << 10, seed=2), mode=0o600, uid=999, gid=999),
        "data/random.bin": RandomFile(128 << 10, seed=3),
        "data/empty": File(b""),
        "current": Symlink("logs/app.log"),
    }


def migrate_json(lab: Lab, tmp_path: Path, source: str, target: str, *options: str) -> tuple[int, dict, str]:
    result = run_command(lab, tmp_path, "ddmctl", "migrate", "--from", "h1", "--to", "h2",
                         "--volume", f"{source}:{target}", "--data-path", "host", "--yes",
                         "--json", *options)
    document = json.loads(result.stdout) if result.stdout.strip().startswith("{") else {}
    return result.status, document, result.stderr


def compression_record(tmp_path: Path, task_id: str) -> dict[str, Any]:
    """Return the task's stored compression record of its first volume."""
    home = tmp_path / "home"
    store = TaskStore(default_store_path({"HOME": str(home), "XDG_DATA_HOME": str(home / "data")}))
    return store.get_extra(task_id)["compression"]["0"]


def assert_same_tree(h1: LabHost, source: str, h2: LabHost, target: str) -> None:
    assert diff_snapshots(snapshot_volume_tree(h1, source), snapshot_volume_tree(h2, target)) == []


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_compressed_copy_identical(lab: Lab, h1: LabHost, h2: LabHost, resources: LabResources,
                                   tmp_path: Path, codec: str) -> None:
    source = resources.create_volume(h1)
    write_volume_tree(h1, source, text_tree())
    target = unique_name("compressed")
    resources.add_volume(h2, target)

    status, document, stderr = migrate_json(lab, tmp_path, source, target, "--compress", codec,
                                            "--verify", "full")

    assert status == 0, stderr
    assert document["state"] == "succeeded"
    assert_same_tree(h1, source, h2, target)
    record = compression_record(tmp_path, document["id"])
    assert record["codec"] == codec
    assert record["stream_bytes"] == document["volumes"][0]["bytes_done"]
    assert record["wire_bytes"] < record["stream_bytes"] // 2
    status_json = run_command(lab, tmp_path, "ddmctl", "status", document["id"], "--json")
    assert json.loads(status_json.stdout)["compression"]["0"] == record
    status_text = run_command(lab, tmp_path, "ddmctl", "status", document["id"])
    assert f", {codec}-" in status_text.stdout


def test_uncompressed_wire_bytes_equal_stream(lab: Lab, h1: LabHost, h2: LabHost,
                                              resources: LabResources, tmp_path: Path) -> None:
    source = resources.create_volume(h1)
    write_volume_tree(h1, source, text_tree())
    target = unique_name("plain")
    resources.add_volume(h2, target)

    status, document, stderr = migrate_json(lab, tmp_path, source, target, "--compress", "none")

    assert status == 0, stderr
    record = compression_record(tmp_path, document["id"])
    assert record["codec"] is None
    assert record["wire_bytes"] == record["stream_bytes"]


def test_auto_records_decision(lab: Lab, h1: LabHost, h2: LabHost, resources: LabResources,
                               tmp_path: Path) -> None:
    source = resources.create_volume(h1)
    write_volume_tree(h1, source, text_tree())
    target = unique_name("auto")
    resources.add_volume(h2, target)

    status, document, stderr = migrate_json(lab, tmp_path, source, target, "--compress", "auto")

    assert status == 0, stderr
    assert_same_tree(h1, source, h2, target)
    record = compression_record(tmp_path, document["id"])
    assert record["requested"] == "auto"
    assert record["reason"]
    assert record["link_bytes_per_second"] > 0
    assert {sample["codec"] for sample in record["samples"]} == {"zstd", "lz4"}
    assert all(sample["ratio"] < 0.6 for sample in record["samples"])
    assert record["wire_bytes"] > 0


def corrupting_compressor(self: ddmdriver.codec.Codec) -> list[str]:
    """Compress, then drop the bytes between offset 64 and head's read buffer end."""
    command = " ".join([self.name, "-q", "-c", f"-{self.level}"])
    return ["sh", "-c", f"{command} | {{ head -c 64; head -c 1 >/dev/null; cat; }}"]


def failing_decompressor(self: ddmdriver.codec.Codec) -> list[str]:
    """Decompress the whole stream, then exit 3: tar succeeds, but the codec's failure counts."""
    return ["sh", "-c", f"{self.name} -d -q -c; exit 3"]


@pytest.mark.parametrize("fault", ["corrupt stream", "target codec fails"])
def test_broken_stream_leaves_target(lab: Lab, h1: LabHost, h2: LabHost, resources: LabResources,
                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     fault: str) -> None:
    source = resources.create_volume(h1)
    write_volume_tree(h1, source, text_tree())
    target = resources.create_volume(h2)
    write_volume_tree(h2, target, {"old.txt": File(b"the target's old content\n")})
    before = snapshot_volume_tree(h2, target)
    if fault == "corrupt stream":
        monkeypatch.setattr(ddmdriver.codec.Codec, "compress_argv", corrupting_compressor)
    else:
        monkeypatch.setattr(ddmdriver.codec.Codec, "decompress_argv", failing_decompressor)

    status, document, stderr = migrate_json(lab, tmp_path, source, target, "--compress", "zstd",
                                            "--force")

    assert status == 1, stderr
    expected = "zstd stream from h1" if fault == "corrupt stream" else "zstd -d failed with exit status 3"
    assert expected in stderr
    assert diff_snapshots(before, snapshot_volume_tree(h2, target)) == []
    volumes = h2.docker("volume", "ls", "--quiet").stdout.split()
    assert [name for name in volumes if name.startswith("ddm-staging-")] == []


def test_missing_codec_rejected(lab: Lab, h1: LabHost, h2: LabHost, resources: LabResources,
                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ddmdriver.hostpath, "PROBED_CODECS", ())
    source = resources.create_volume(h1)
    write_volume_tree(h1, source, {"a.txt": File(b"a\n")})
    target = unique_name("nocodec")
    resources.add_volume(h2, target)

    explicit, _, stderr = migrate_json(lab, tmp_path, source, target, "--compress", "lz4")
    auto, document, auto_stderr = migrate_json(lab, tmp_path, source, target, "--compress", "auto")

    assert explicit == 2
    assert "lz4 not found on host h1, h2" in stderr
    assert "install the Debian package lz4" in stderr
    assert auto == 0, auto_stderr
    record = compression_record(tmp_path, document["id"])
    assert record["codec"] is None
    assert record["reason"] == "neither zstd nor lz4 is on both hosts"


def test_engine_path_rejects_codec(lab: Lab, h1: LabHost, resources: LabResources,
                                   tmp_path: Path) -> None:
    source = resources.create_volume(h1)

    result = run_command(lab, tmp_path, "ddmctl", "migrate", "--from", "h1", "--to", "h2",
                         "--volume", f"{source}:{unique_name('engine')}", "--data-path", "engine",
                         "--compress", "zstd", "--yes")

    assert result.status == 2
    assert "--compress zstd needs the host data path" in result.stderr


def test_plan_shows_compression(lab: Lab, h1: LabHost, resources: LabResources,
                                tmp_path: Path) -> None:
    source = resources.create_volume(h1)
    write_volume_tree(h1, source, text_tree())

    text = run_command(lab, tmp_path, "ddmctl", "plan", "--from", "h1", "--to", "h2",
                       "--volume", f"{source}:{unique_name('plan')}", "--compress", "zstd")
    document = run_command(lab, tmp_path, "ddmctl", "plan", "--from", "h1", "--to", "h2",
                           "--volume", f"{source}:{unique_name('plan')}", "--compress", "auto",
                           "--json")

    assert text.status == 0, text.stderr
    assert "compression zstd-3 (--compress zstd)" in text.stdout
    assert document.status == 0, document.stderr
    chosen = json.loads(document.stdout)["objects"][0]["compression"]
    assert chosen["requested"] == "auto"
    assert chosen["reason"]


def test_plan_without_probe_leaves_auto_undecided(lab: Lab, h1: LabHost, resources: LabResources,
                                                  tmp_path: Path) -> None:
    source = resources.create_volume(h1)
    write_volume_tree(h1, source, text_tree())

    document = run_command(lab, tmp_path, "ddmctl", "plan", "--from", "h1", "--to", "h2",
                           "--volume", f"{source}:{unique_name('plan')}", "--compress", "auto",
                           "--probe-size", "0", "--json")

    assert document.status == 0, document.stderr
    plan = json.loads(document.stdout)
    chosen = plan["objects"][0]["compression"]
    assert chosen["codec"] is None
    assert chosen["reason"].startswith("not measured (--probe-size 0)")
    assert plan["estimate"]["copy_seconds"] is None


def test_lab_rate_limit(lab: Lab, h1: LabHost) -> None:
    try:
        lab.limit_rate("100mbit")
        limited = current_qdisc(h1)
    finally:
        lab.limit_rate(None)
    unlimited = current_qdisc(h1)

    assert "rate 100Mbit" in limited
    assert "rate" not in unlimited


def test_incremental_update_compressed(lab: Lab, h1: LabHost, h2: LabHost, resources: LabResources,
                                       tmp_path: Path) -> None:
    source = resources.create_volume(h1)
    write_volume_tree(h1, source, text_tree())
    resources.add_volume(h2, source)
    first, _, first_stderr = migrate_json(lab, tmp_path, source, source)
    assert first == 0, first_stderr
    write_volume_tree(h1, source, {"logs/app.log": File(log_text(1 << 20, seed=7)),
                                   "logs/new.log": File(log_text(256 << 10, seed=8))})

    result = run_command(lab, tmp_path, "ddmctl", "migrate", "--from", "h1", "--to", "h2",
                         "--volume", source, "--incremental", "--compress", "zstd", "--yes", "--json")

    assert result.status == 0, result.stderr
    assert_same_tree(h1, source, h2, source)
    record = compression_record(tmp_path, json.loads(result.stdout)["id"])
    assert record["codec"] == "zstd"
    assert 0 < record["wire_bytes"] < record["stream_bytes"] // 2


def test_plan_estimate_uses_sampled_ratio(lab: Lab, h1: LabHost, resources: LabResources,
                                          tmp_path: Path) -> None:
    source = resources.create_volume(h1)
    write_volume_tree(h1, source, text_tree())

    result = run_command(lab, tmp_path, "ddmctl", "plan", "--from", "h1", "--to", "h2",
                         "--volume", f"{source}:{unique_name('plan')}", "--compress", "zstd",
                         "--json")

    assert result.status == 0, result.stderr
    plan = json.loads(result.stdout)
    chosen = plan["objects"][0]["compression"]
    estimate = plan["estimate"]
    assert [(sample["codec"], sample["level"]) for sample in chosen["samples"]] == [("zstd", 3)]
    assert chosen["samples"][0]["ratio"] < 0.6
    assert estimate["compression"][0]["ratio"] < 0.6
    assert estimate["wire_bytes_total"] < estimate["bytes_total"] * 0.6
    # The copy time follows the compressed bytes, not the tar stream's.
    assert estimate["copy_seconds"] < estimate["bytes_total"] / estimate["copy_bytes_per_second"]


def test_plan_auto_uses_estimate_link_rate(lab: Lab, h1: LabHost, resources: LabResources,
                                           tmp_path: Path) -> None:
    source = resources.create_volume(h1)
    write_volume_tree(h1, source, {"zeros.bin": File(bytes(1 << 20))})

    document = run_command(lab, tmp_path, "ddmctl", "plan", "--from", "h1", "--to", "h2",
                           "--volume", f"{source}:{unique_name('plan')}", "--compress", "auto",
                           "--json")
    text = run_command(lab, tmp_path, "ddmctl", "plan", "--from", "h1", "--to", "h2",
                       "--volume", f"{source}:{unique_name('plan')}", "--compress", "auto")

    assert document.status == 0, document.stderr
    plan = json.loads(document.stdout)
    chosen = plan["objects"][0]["compression"]
    assert chosen["link_bytes_per_second"] == round(plan["estimate"]["copy_bytes_per_second"])
    assert all(sample["ratio"] > 0 for sample in chosen["samples"])
    assert text.status == 0, text.stderr
    assert "ratio 0.00 " not in text.stdout
    assert "ratio 0.0" in text.stdout  # zeros compress to a ratio far below 0.01
