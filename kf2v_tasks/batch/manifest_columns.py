"""A manifest's header: the columns the plugin reads, and the caller's own (``extra_columns``).

An unknown column is refused with a did-you-mean (``promt`` → ``prompt``): ignoring it
would make a video without the prompt the user wrote. ``extra_columns=True`` accepts any
other column, a list exactly the ones it names (case-insensitively; each may be absent).
Accepted columns must not collide with a column of ``results.csv``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Optional, Union

from kf2v_tasks.batch.manifest_row import KNOWN_COLUMNS
from kf2v_tasks.errors import ManifestFileError

REQUIRED_COLUMNS: tuple[str, ...] = ("first_frame", "last_frame")

#: What a caller says about columns of its own: False (refuse every unknown column), True
#: (accept them all) or the names of the ones to accept (any other is still refused).
ExtraColumns = Union[bool, list[str]]

#: The columns of ``results.csv``, in order; here so the header can refuse a column of the
#: user's own that would collide with one of them.
RESULT_FILE_COLUMNS: tuple[str, ...] = tuple(
    "row id status output task_id error_code error_message cost sha256 bytes reattached "
    "possible_duplicate account earlier_run".split()
)


@dataclass(frozen=True)
class Header:
    """A checked header: normalised names, where the caller's own columns are, remarks."""

    columns: list[str]  # trimmed, lower-case; "" for an unnamed column
    extra: list[int]  # positions of the caller's own columns
    names: list[str]  # those columns as the header spells them
    warnings: list[str]


def trim(name: str) -> str:
    """A header cell without surrounding blanks and byte order mark, case kept."""
    return name.strip().lstrip("\ufeff").strip()


def did_you_mean(column: str, also: Iterable[str] = ()) -> Optional[str]:
    """The known column (or one of ``also``) ``column`` is probably a misspelling of."""
    # "First Frame" and "first-frame" are the same mistake as a typo.
    key = column.replace(" ", "_").replace("-", "_")
    close = difflib.get_close_matches(key, [*KNOWN_COLUMNS, *also], n=1, cutoff=0.6)
    return close[0] if close else None


def read_header(header: list[str], line: int, source: str, extra_columns: ExtraColumns) -> Header:
    """Check a header row and find the caller's own columns in it.

    Raises:
        ManifestFileError: a column named twice, a required one missing, an unknown one not
            accepted, or an accepted one that collides with a column of results.csv.
        ValueError: ``extra_columns`` lists a name that cannot be a column of one's own.
    """

    def refuse(problem: str) -> ManifestFileError:
        return ManifestFileError(source, f"line {line} (header): {problem}", line=line)

    columns = [trim(h).lower() for h in header]
    seen: dict[str, int] = {}
    for i, c in enumerate(columns, start=1):
        if c in seen:
            raise refuse(f"column {c!r} appears more than once (columns {seen[c]} and {i})")
        if c:
            seen[c] = i
    # Rows that continue a clip need no frame columns (each row is checked on its own).
    missing = [c for c in REQUIRED_COLUMNS if c not in seen and "first_clip" not in seen]
    if missing:
        found = ", ".join(repr(c) for c in columns if c) or "none"
        names = ", ".join(missing).replace("first_frame", "first_frame (or first_clip)")
        raise refuse(f"missing required column(s) {names} (header has: {found})")

    wanted = _wanted(extra_columns)
    own = [i for i, c in enumerate(columns) if c and c not in KNOWN_COLUMNS]
    accepted = [i for i in own if extra_columns is True or columns[i] in (wanted or ())]
    refused = [i for i in own if i not in accepted]
    problems = []
    if refused:
        hints = sorted(wanted or ())
        names = ", ".join(
            repr(columns[i])
            + (f" (did you mean {near!r}?)" if (near := did_you_mean(columns[i], hints)) else "")
            for i in refused
        )
        how = (
            "pass extra_columns=True (kf2v: --extra-columns)"
            if wanted is None
            else f"add them to extra_columns (it names {', '.join(map(repr, hints)) or 'none'})"
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
        raise refuse("; ".join(problems))

    warnings = []
    unnamed = columns.count("")
    if unnamed:
        warnings.append(f"ignoring {unnamed} column(s) with an empty header name")
    for i in accepted if extra_columns is True else ():  # a listed column is no typo
        near = did_you_mean(columns[i])
        if near:  # carried through as asked; but a typo here still loses the setting
            warnings.append(
                f"column {trim(header[i])!r} is carried through as your own column; "
                f"if you meant {near!r}, rename it"
            )
    return Header(columns, accepted, [trim(header[i]) for i in accepted], warnings)


def _wanted(extra_columns: ExtraColumns) -> Optional[frozenset[str]]:
    """The caller's own columns a list names (normalised); ``None`` for True or False."""
    if isinstance(extra_columns, bool):
        return None
    if isinstance(extra_columns, str) or not isinstance(extra_columns, Iterable):
        raise ValueError(
            f"extra_columns: expected True, False or a list of column names, got "
            f"{type(extra_columns).__name__}"
        )
    names: set[str] = set()
    for name in extra_columns:
        key = trim(name).lower() if isinstance(name, str) else ""
        if not key:
            raise ValueError(f"extra_columns: {name!r} is not a column name")
        if key in KNOWN_COLUMNS:
            raise ValueError(
                f"extra_columns: {name!r} is a column the plugin reads itself; list only "
                "columns of your own"
            )
        names.add(key)
    return frozenset(names)
