"""Compare one volume on two hosts by their manifests (used by ddmverify and ddm.api)."""

from __future__ import annotations

from typing import Any

from ddm.errors import UsageError
from ddm.manifest import compare_manifests, display_path
from ddmsyncer import volumes


def compare_volume(source_engine: Any, target_engine: Any, source: str, target: str,
                   aspects: tuple[str, ...], deep: bool, session: str) -> dict[str, Any]:
    """Read both manifests and return the comparison as a JSON-ready mapping."""
    for engine, name in ((source_engine, source), (target_engine, target)):
        if engine.volume_inspect(name) is None:
            raise UsageError(f"volume {name!r} not found on host {engine.host.name!r}",
                             hint="check the name with 'docker volume ls' on that host")

    source_manifest = volumes.read_manifest(source_engine, source, task_id=session,
                                            hash_content=deep)
    target_manifest = volumes.read_manifest(target_engine, target, task_id=session,
                                            hash_content=deep)
    differences = compare_manifests(source_manifest, target_manifest, aspects)
    return {
        "source": source,
        "target": target,
        "entries": len(source_manifest.entries),
        "differences": [
            {"path": display_path(difference.path), "aspect": difference.aspect,
             "source": jsonable(difference.source), "target": jsonable(difference.target)}
            for difference in differences
        ],
    }


def jsonable(value: Any) -> Any:
    """Return a difference's value in a form json.dumps accepts, paths escaped for display."""
    if isinstance(value, bytes):
        return display_path(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
