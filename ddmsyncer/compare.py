"""Compare one volume on two hosts by their manifests (used by ddmverify and ddm.api)."""

from __future__ import annotations

from typing import Any

from ddm.differences import difference_to_json
from ddm.manifest import compare_manifests
from ddmdriver.engine import inspect_named_volume
from ddmsyncer import volumes


def compare_volume(source_engine: Any, target_engine: Any, source: str, target: str,
                   aspects: tuple[str, ...], deep: bool, session: str) -> dict[str, Any]:
    """Read both manifests and return the comparison as a JSON-ready mapping."""
    for engine, name in ((source_engine, source), (target_engine, target)):
        inspect_named_volume(engine, name)

    source_manifest = volumes.read_manifest(source_engine, source, task_id=session,
                                            hash_content=deep)
    target_manifest = volumes.read_manifest(target_engine, target, task_id=session,
                                            hash_content=deep)
    differences = compare_manifests(source_manifest, target_manifest, aspects)
    return {
        "source": source,
        "target": target,
        "entries": len(source_manifest.entries),
        "differences": [difference_to_json(difference) for difference in differences],
    }

