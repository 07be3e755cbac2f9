"""The docker save stream filter that leaves out layers the target already has."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest

from ddmdriver.imagelayers import LayerFilter, chain_ids, v1_id

BASE_DIFF = "sha256:" + "1" * 64
TOP_DIFF = "sha256:" + "2" * 64
LOWER_JSON = {"created": "1970-01-01T00:00:00Z", "container_config": {"Cmd": None}}
TOP_JSON = {"created": "2026-01-01T00:00:00Z", "config": {"Cmd": ["sh", "-c", "a<b&c"]},
            "os": "linux"}


def save_stream(tar_format: int = tarfile.USTAR_FORMAT) -> tuple[bytes, str, str]:
    """Build a docker-save-like archive of two layers; return it and both directory names."""
    chains = chain_ids([BASE_DIFF, TOP_DIFF])
    base_json = json.dumps(LOWER_JSON, separators=(",", ":")).encode()
    base_dir = v1_id(base_json, chains[0], with_os=False)
    base_json = json.dumps({"id": base_dir, **LOWER_JSON, "os": "linux"},
                           separators=(",", ":")).encode()
    top_body = dict(TOP_JSON, parent=base_dir)
    top_dir = v1_id(json.dumps(top_body).encode(), chains[1], with_os=True)
    top_json = json.dumps({"id": top_dir, **top_body}, separators=(",", ":")).encode()

    output = io.BytesIO()
    with tarfile.open(fileobj=output, mode="w", format=tar_format) as archive:
        for directory, layer_json, layer in ((base_dir, base_json, b"B" * 5000),
                                             (top_dir, top_json, b"T" * 700)):
            for name, content in (("VERSION", b"1.0"), ("json", layer_json),
                                  ("layer.tar", layer)):
                member = tarfile.TarInfo(f"{directory}/{name}")
                member.size = len(content)
                if tar_format == tarfile.PAX_FORMAT:
                    # An extended header for every member, as Go writes for sub-second mtimes.
                    member.pax_headers = {"path": member.name, "mtime": "1.5"}
                archive.addfile(member, io.BytesIO(content))
        manifest = tarfile.TarInfo("manifest.json")
        manifest.size = 2
        archive.addfile(manifest, io.BytesIO(b"[]"))
    return output.getvalue(), base_dir, top_dir


def run_filter(data: bytes, present: set[str], chunk_size: int) -> tuple[bytes, LayerFilter]:
    layer_filter = LayerFilter(chain_ids([BASE_DIFF, TOP_DIFF]), present)
    chunks = [data[index:index + chunk_size] for index in range(0, len(data), chunk_size)]
    return b"".join(layer_filter.filter(chunks)), layer_filter


def member_names(data: bytes) -> list[str]:
    return tarfile.open(fileobj=io.BytesIO(data)).getnames()


def test_chain_ids_follow_docker_rule():
    chains = chain_ids([BASE_DIFF, TOP_DIFF])
    assert chains[0] == BASE_DIFF
    expected = hashlib.sha256(f"{BASE_DIFF} {TOP_DIFF}".encode()).hexdigest()
    assert chains[1] == f"sha256:{expected}"


@pytest.mark.parametrize("chunk_size", [1, 100, 511, 512, 513, 4096, 1 << 20])
def test_filter_leaves_out_present_layer(chunk_size):
    data, base_dir, top_dir = save_stream()
    output, layer_filter = run_filter(data, {BASE_DIFF}, chunk_size)
    names = member_names(output)
    assert f"{base_dir}/layer.tar" not in names
    assert f"{base_dir}/json" in names
    assert f"{top_dir}/layer.tar" in names
    assert "manifest.json" in names
    assert layer_filter.skipped_layers == [BASE_DIFF]
    assert layer_filter.sent_bytes == len(output)
    assert layer_filter.sent_bytes + layer_filter.skipped_bytes == len(data)


@pytest.mark.parametrize("chunk_size", [1, 700, 1 << 20])
def test_filter_passes_stream_unchanged(chunk_size):
    data, _, _ = save_stream()
    output, layer_filter = run_filter(data, set(), chunk_size)
    assert output == data
    assert layer_filter.skipped_bytes == 0


def test_filter_top_layer_of_pax_archive():
    data, base_dir, top_dir = save_stream(tarfile.PAX_FORMAT)
    assert data.count(b"path=") >= 6
    chains = chain_ids([BASE_DIFF, TOP_DIFF])
    output, layer_filter = run_filter(data, set(chains), 300)
    names = member_names(output)
    assert f"{base_dir}/layer.tar" not in names
    assert f"{top_dir}/layer.tar" not in names
    assert layer_filter.skipped_layers == chains


def test_filter_keeps_layer_of_unknown_json():
    data, base_dir, _ = save_stream()
    tampered = data.replace(b"1970-01-01", b"1971-01-01")
    output, layer_filter = run_filter(tampered, {BASE_DIFF}, 4096)
    assert output == tampered
    assert f"{base_dir}/layer.tar" in member_names(output)
    assert layer_filter.skipped_layers == []
