"""Small helpers for the wording of messages that several packages print."""

from __future__ import annotations


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """Return `count` with `noun` in the singular or plural, as in "1 file" and "3 files".

    `plural` is for nouns whose plural is not `noun` + "s", such as "entry" and "entries".
    """
    word = noun if count == 1 else (plural or f"{noun}s")
    return f"{count} {word}"


def format_bytes(count: int | None) -> str:
    """Format a byte count with binary units (KiB, MiB, GiB); None gives "-"."""
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"
