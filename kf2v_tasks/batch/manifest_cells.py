"""Checks of single manifest cells that need no other cell: ids, seeds, output names.

Each check answers in words a user can act on; the row parser
(:mod:`~kf2v_tasks.batch.manifest_rows`) turns a reason into a ``RowError`` naming the
row and the column.
"""

from __future__ import annotations

import posixpath
import re
from typing import Optional

from kf2v_tasks.dashscope.models import SEED_MAX
from kf2v_tasks.storage.paths import RESERVED_DIR

__all__ = [
    "ID_MAX_CHARS",
    "OUTPUT_MAX_CHARS",
    "OUTPUT_SEGMENT_MAX_CHARS",
    "OUTPUT_SUFFIX",
    "RESERVED_OUTPUT_DIR",
    "check_output",
    "has_control",
    "id_problem",
    "parse_seed",
    "show",
]

ID_MAX_CHARS = 128
OUTPUT_MAX_CHARS = 1024
OUTPUT_SEGMENT_MAX_CHARS = 255
OUTPUT_SUFFIX = ".mp4"
#: Folder under the output root that holds run state (ledger, temp files).
RESERVED_OUTPUT_DIR = RESERVED_DIR

_ID_RE = re.compile(r"[A-Za-z0-9._-]+")
_DIGITS_RE = re.compile(r"[0-9]+")


def id_problem(value: str) -> Optional[str]:
    """Why ``value`` cannot be a row id (too long, a character outside A-Z a-z 0-9 . _ -)."""
    if len(value) > ID_MAX_CHARS:
        return f"id has {len(value)} characters (at most {ID_MAX_CHARS})"
    if not _ID_RE.fullmatch(value):
        pos, bad = next((i, ch) for i, ch in enumerate(value, 1) if not _ID_RE.fullmatch(ch))
        return (
            f"id {show(value)} contains {bad!r} at position {pos}; "
            "allowed: letters A-Z a-z, digits, '.', '_' and '-'"
        )
    return None


def parse_seed(value: str) -> Optional[int]:
    """A seed cell as an integer in 0..SEED_MAX, or ``None`` when it is not one."""
    # Only plain ASCII digits: int() would also take "+5", "1_000" and "５".
    if not _DIGITS_RE.fullmatch(value) or len(value) > len(str(SEED_MAX)) + 5:
        return None
    number = int(value)
    return number if number <= SEED_MAX else None


def whole_seconds(value: str) -> Optional[int]:
    """A duration cell as whole seconds (plain digits), or ``None`` when it is not one."""
    if not _DIGITS_RE.fullmatch(value) or len(value) > 6:
        return None
    return int(value)


def check_output(value: str) -> tuple[Optional[str], Optional[str]]:
    """Normalise an output name: ``(name, None)`` when fine, ``(None, reason)`` otherwise."""
    if "\\" in value:
        return None, f"{show(value)} contains a backslash; use '/' between folders"
    if has_control(value):
        return None, f"{show(value)} contains a control character"
    if ":" in value:
        return None, f"{show(value)} contains ':'; URL schemes and drive letters are not allowed"
    if value.startswith("/"):
        return None, f"{show(value)} is absolute; give a name relative to the output folder"
    if value.endswith("/"):
        return None, f"{show(value)} names a folder, not a file"
    parts = value.split("/")
    if ".." in parts:
        return None, f"{show(value)} contains '..'; outputs must stay inside the output folder"
    parts = [p for p in parts if p not in ("", ".")]
    if not parts:
        return None, f"{show(value)} is not a file name"
    if parts[0] == RESERVED_OUTPUT_DIR:
        return None, f"{show(value)} is inside {RESERVED_OUTPUT_DIR!r}, reserved for run state"
    if value.startswith("~"):
        return None, f"{show(value)} starts with '~'; give a name relative to the output folder"
    if any(len(p) > OUTPUT_SEGMENT_MAX_CHARS for p in parts):
        return (
            None,
            f"a part of {show(value)} is longer than {OUTPUT_SEGMENT_MAX_CHARS} characters",
        )
    name = "/".join(parts)
    ext = posixpath.splitext(parts[-1])[1]
    if not ext:
        name += OUTPUT_SUFFIX
    elif ext.lower() != OUTPUT_SUFFIX:
        return None, f"{show(value)} must end in {OUTPUT_SUFFIX} (videos are MP4)"
    if len(name) > OUTPUT_MAX_CHARS:
        return None, f"output name has {len(name)} characters (at most {OUTPUT_MAX_CHARS})"
    from kf2v_tasks.storage.paths import safe_child  # lazy: imports fsspec

    try:
        # Backstop: the runner writes through safe_child, so it must accept every name we do.
        name = safe_child("the output folder", name)
    except ValueError as exc:
        return None, str(exc)
    return name, None


def has_control(value: str) -> bool:
    """Whether ``value`` holds a control character (a pasted newline, a NUL …)."""
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in value)


def show(value: str, limit: int = 60) -> str:
    """repr of a cell, shortened so one absurd cell does not flood the report."""
    if len(value) > limit:
        return repr(value[: limit - 1] + "…")
    return repr(value)
