"""The comparison of manifests as DDM did it while manifests were plain dictionaries.

Kept as a test oracle: the streaming compare_manifests() must return exactly what this
returns. It keeps both manifests whole in memory, which is fine for test data.
"""

from __future__ import annotations

from collections.abc import Iterable

from ddm.manifest import _ASPECT_VALUES, _TYPE_DEPENDENT_ASPECTS, Difference, ManifestEntry


class _DictInodeView:
    def __init__(self, entries: dict[bytes, ManifestEntry]) -> None:
        self.entries = entries
        self.groups: dict[bytes, tuple[bytes, ...]] = {}
        self.inode_entries: dict[bytes, ManifestEntry] = {}

        members: dict[bytes, list[bytes]] = {}
        for path, entry in entries.items():
            if entry.type == "hardlink":
                root = self._resolve_root(path)
                members.setdefault(root, [root]).append(path)

        for root, paths in members.items():
            group = tuple(sorted(paths))
            root_entry = entries.get(root)
            for path in group:
                self.groups[path] = group
                if root_entry is not None and root_entry.type != "hardlink":
                    self.inode_entries[path] = root_entry

    def _resolve_root(self, path: bytes) -> bytes:
        seen = {path}
        entry = self.entries[path]
        while entry.type == "hardlink" and entry.linkname is not None:
            path = entry.linkname
            next_entry = self.entries.get(path)
            if next_entry is None or path in seen:
                break
            seen.add(path)
            entry = next_entry
        return path

    def inode(self, path: bytes) -> ManifestEntry:
        return self.inode_entries.get(path) or self.entries[path]


def reference_compare(
    source: dict[bytes, ManifestEntry], target: dict[bytes, ManifestEntry], aspects: Iterable[str]
) -> list[Difference]:
    """Compare two manifests given as dictionaries of path to entry."""
    selected = frozenset(aspects)
    source_view = _DictInodeView(source)
    target_view = _DictInodeView(target)
    differences: list[Difference] = []
    for path in sorted(source.keys() | target.keys()):
        source_entry = source.get(path)
        target_entry = target.get(path)
        if source_entry is None or target_entry is None:
            if "presence" in selected:
                differences.append(Difference(
                    path, "presence",
                    source_entry.type if source_entry else None,
                    target_entry.type if target_entry else None,
                ))
            continue
        differences.extend(_compare_path(path, source_view, target_view, selected))
    return differences


def _compare_path(
    path: bytes, source_view: _DictInodeView, target_view: _DictInodeView, selected: frozenset[str]
) -> list[Difference]:
    source_inode = source_view.inode(path)
    target_inode = target_view.inode(path)
    differences: list[Difference] = []

    skip_type_dependent = False
    if "type" in selected and source_inode.type != target_inode.type:
        differences.append(Difference(path, "type", source_inode.type, target_inode.type))
        skip_type_dependent = True

    for aspect, read_value in _ASPECT_VALUES:
        if aspect not in selected:
            continue
        if skip_type_dependent and aspect in _TYPE_DEPENDENT_ASPECTS:
            continue
        if aspect == "mtime_ns" and any(item.aspect == "mtime" for item in differences):
            continue
        source_value = read_value(source_inode)
        target_value = read_value(target_inode)
        if source_value != target_value:
            differences.append(Difference(path, aspect, source_value, target_value))

    if "link" in selected and not skip_type_dependent:
        source_group = source_view.groups.get(path)
        target_group = target_view.groups.get(path)
        if source_group != target_group:
            differences.append(Difference(path, "link", source_group, target_group))
    return differences
