"""Portable file names from user-visible names (segment, box, case and model names)."""

from __future__ import annotations

import re

_UNSAFE = re.compile(r"[^\w.\-]+", re.UNICODE)
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(1, 10)} | {f"lpt{i}" for i in range(1, 10)}


def safe_file_stem(name: str, fallback: str = "item", max_length: int = 100) -> str:
    """``name`` made into a portable file name stem: runs of characters other than letters,
    digits, ``.``, ``-``, ``_`` become ``_``; no leading/trailing dots or underscores; at most
    ``max_length`` characters; ``fallback`` when nothing is left or the name is reserved on Windows."""
    stem = _UNSAFE.sub("_", str(name)).strip("._ ")[:max_length]
    if not stem or stem.lower() in _WINDOWS_RESERVED:
        stem = fallback
    return stem


def unique_file_stem(name: str, taken: set, fallback: str = "item", max_length: int = 100) -> str:
    """``safe_file_stem(name)`` made unique (case-insensitively) against ``taken`` with ``_2``,
    ``_3``, ...; the chosen stem is added to ``taken``."""
    stem = safe_file_stem(name, fallback, max_length)
    candidate, k = stem, 1
    while candidate.lower() in taken:
        k += 1
        candidate = f"{stem}_{k}"
    taken.add(candidate.lower())
    return candidate
