"""A manifest's header: the columns the plugin reads, and the caller's own (``extra_columns``).

An unknown column is refused with a did-you-mean (``promt`` → ``prompt``): ignoring it
would make a video without the prompt the user wrote. A caller with columns of its own
passes ``extra_columns``: ``True`` accepts any other column, a list accepts exactly the
columns it names (case-insensitively; each may be absent) and still refuses the rest
with the same hints. Accepted columns must not collide with a column of ``results.csv``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Optional

from kf2v_tasks.batch.manifest_schema import (
    KNOWN_COLUMNS,
    REQUIRED_COLUMNS,
    RESULT_FILE_COLUMNS,
    UNSUPPORTED_COLUMNS,
    ExtraColumns,
)
from kf2v_tasks.errors import ManifestFileError

__all__ = [
    "check_columns",
    "check_header",
    "did_you_mean",
    "normalise_header",
    "trim",
    "wanted_columns",
]


def trim(name: str) -> str:
    """A header cell without surrounding blanks and byte order mark, case kept."""
    return name.strip().lstrip("\ufeff").strip()


def normalise_header(name: str) -> str:
    """A header cell as the parser compares it: trimmed, lower-case."""
    return trim(name).lower()


def did_you_mean(column: str, also: Iterable[str] = ()) -> Optional[str]:
    """The known column (or one of ``also``) ``column`` is probably a misspelling of."""
    # "First Frame" and "first-frame" are the same mistake as a typo.
    key = column.replace(" ", "_").replace("-", "_")
    close = difflib.get_close_matches(key, [*KNOWN_COLUMNS, *also], n=1, cutoff=0.6)
    return close[0] if close else None


def wanted_columns(extra_columns: ExtraColumns) -> Optional[frozenset[str]]:
    """The caller's own columns a list names (normalised); ``None`` for True or False.

    Raises:
        ValueError: a listed name is empty, not text, or a column the plugin reads itself.
    """
    if isinstance(extra_columns, bool):
        return None
    if isinstance(extra_columns, str) or not isinstance(extra_columns, Iterable):
        raise ValueError(
            f"extra_columns: expected True, False or a list of column names, got "
            f"{type(extra_columns).__name__}"
        )
    names: set[str] = set()
    for name in extra_columns:
        if not isinstance(name, str) or not normalise_header(name):
            raise ValueError(f"extra_columns: {name!r} is not a column name")
        key = normalise_header(name)
        if key in KNOWN_COLUMNS:
            raise ValueError(
                f"extra_columns: {name!r} is a column the plugin reads itself; list only "
                "columns of your own"
            )
        names.add(key)
    return frozenset(names)


def check_columns(
    columns: list[str], line: int, source: str, extra_columns: ExtraColumns
) -> list[int]:
    """Refuse columns the plugin would ignore; the positions of the caller's own columns.

    Args:
        columns: the normalised header names, in file order (``""`` for unnamed ones).
        line: the header's line in the file, for messages.
        source: the manifest's path or URL, for messages.
        extra_columns: False (refuse every unknown column), True (accept them all) or
            the names of the columns to accept.

    Raises:
        ManifestFileError: an unknown column that is not accepted, or an accepted one that
            collides with a column of results.csv.
        ValueError: ``extra_columns`` lists a name that cannot be a column of one's own.
    """
    wanted = wanted_columns(extra_columns)
    problems: list[str] = []
    unsupported = [c for c in columns if c in UNSUPPORTED_COLUMNS]
    for c in unsupported:
        problems.append(f"column {c!r} is not supported: {UNSUPPORTED_COLUMNS[c]}")
    own = [
        i for i, c in enumerate(columns) if c and c not in KNOWN_COLUMNS and c not in unsupported
    ]
    if wanted is None:
        accepted, refused = (own, []) if extra_columns else ([], own)
    else:
        accepted = [i for i in own if columns[i] in wanted]
        refused = [i for i in own if columns[i] not in wanted]
    if refused:
        names = ", ".join(
            repr(columns[i])
            + (
                f" (did you mean {near!r}?)"
                if (near := did_you_mean(columns[i], sorted(wanted or ())))
                else ""
            )
            for i in refused
        )
        how = (
            "pass extra_columns=True (kf2v: --extra-columns)"
            if wanted is None
            else f"add them to extra_columns (it names {_listed(wanted)})"
        )
        problems.append(
            f"unknown column{'s' if len(refused) > 1 else ''} {names}; known: "
            f"{', '.join(KNOWN_COLUMNS)}. To carry columns of your own into results.csv, {how}"
        )
    clash = [columns[i] for i in accepted if columns[i] in RESULT_FILE_COLUMNS]
    if clash:
        problems.append(
            f"column{'s' if len(clash) > 1 else ''} {', '.join(repr(c) for c in clash)} "
            "cannot be carried into results.csv, which has its own; rename "
            f"{'them' if len(clash) > 1 else 'it'}"
        )
    if problems:
        raise ManifestFileError(source, f"line {line} (header): " + "; ".join(problems), line=line)
    return accepted


def _listed(names: frozenset[str]) -> str:
    return ", ".join(repr(n) for n in sorted(names)) if names else "none"


def check_header(columns: list[str], line: int, source: str) -> None:
    """Refuse a header that names a column twice or lacks a required one.

    Raises:
        ManifestFileError: naming the column(s) and the header's line.
    """
    seen: dict[str, int] = {}
    for i, c in enumerate(columns, start=1):
        if not c:
            continue
        if c in seen:
            raise ManifestFileError(
                source,
                f"line {line} (header): column {c!r} appears more than once "
                f"(columns {seen[c]} and {i})",
                line=line,
            )
        seen[c] = i
    # Rows that continue a clip need no frame columns (each row is checked on its own).
    missing = [c for c in REQUIRED_COLUMNS if c not in seen and "first_clip" not in seen]
    if missing:
        found = ", ".join(repr(c) for c in columns if c) or "none"
        names = ", ".join(missing).replace("first_frame", "first_frame (or first_clip)")
        raise ManifestFileError(
            source,
            f"line {line} (header): missing required column(s) {names} (header has: {found})",
            line=line,
        )
