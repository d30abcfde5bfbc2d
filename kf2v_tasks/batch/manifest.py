"""CSV batch manifests: one generation per row, validated up front with precise reasons.

A manifest is a CSV file with a header. Required columns are ``first_frame`` and
``last_frame``; optional ones are ``id``, ``prompt``, ``negative_prompt``, ``model``,
``resolution``, ``seed``, ``prompt_extend``, ``watermark``, ``duration``, ``audio`` and
``output``. Header names are trimmed and case-insensitive. An empty cell means "use the
default" (:class:`RowDefaults`). One manifest may mix models of both protocols (kf2v and
``wan2.7-i2v``): ``duration`` (seconds) and ``audio`` (a driving mp3/wav, path or URL,
resolved like the frames) are refused, row by row, on a model that does not take them, and
so is ``first_clip`` (an mp4/mov to continue, instead of ``first_frame``; ``last_frame`` is
then optional).

Any other named column is refused with a did-you-mean (``promt`` → ``prompt``): ignoring
it would make a video without the prompt the user wrote. Pipelines that carry columns of
their own pass ``extra_columns=True`` (any other column) or a list of their names
(``extra_columns=["sequence"]``: those only, every other unknown column is still refused
with its did-you-mean); those columns are then kept per row (:attr:`ParsedManifest.extras`)
and written to ``results.csv`` after its own columns. A column listed in
:data:`UNSUPPORTED_COLUMNS` (none today) is refused either way.

Problems are split in two kinds:

* **file-level** (cannot be read, not text, no header, missing required or unknown
  columns, broken quoting): :func:`parse_manifest` and :func:`load_manifest` raise
  :class:`ManifestFileError`, whose message is ``manifest <path>: <reason>``;
* **row-level** (a bad seed, an unknown model, an id two rows use …): the row becomes one
  :class:`RowError` per bad column and is left out of :attr:`ParsedManifest.rows`; the
  rest of the batch still runs. Its message is ``row N, column 'x': reason``. Every row
  of a shared id or output is invalid, not only the later ones.

Row numbers are **line numbers in the file as an editor shows them**: the header is
normally line 1 and the first data row line 2. A row whose quoted cell spans several
lines is numbered by the line it starts on. ``ManifestFileError.line`` uses the same
numbering when the problem has a place in the file (``None`` otherwise).

This module reads the file (encoding, delimiter, records); the header is checked in
:mod:`~kf2v_tasks.batch.manifest_columns`, one row's cells in
:mod:`~kf2v_tasks.batch.manifest_rows` (with :mod:`~kf2v_tasks.batch.manifest_cells` and
:mod:`~kf2v_tasks.batch.manifest_claims`), frame paths resolved in
:mod:`~kf2v_tasks.batch.manifest_paths`, and the typed results are defined in
:mod:`~kf2v_tasks.batch.manifest_schema` (all re-exported here).
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Iterator
from typing import Any, Optional, Union

from kf2v_tasks.batch.manifest_cells import (
    ID_MAX_CHARS,
    OUTPUT_MAX_CHARS,
    OUTPUT_SEGMENT_MAX_CHARS,
    OUTPUT_SUFFIX,
    RESERVED_OUTPUT_DIR,
)
from kf2v_tasks.batch.manifest_claims import Claims
from kf2v_tasks.batch.manifest_columns import (
    check_columns,
    check_header,
    did_you_mean,
    normalise_header,
    trim,
)
from kf2v_tasks.batch.manifest_paths import manifest_base_dir, resolve_frame
from kf2v_tasks.batch.manifest_rows import PROMPT_ABSURD_CHARS, parse_row
from kf2v_tasks.batch.manifest_schema import (
    KNOWN_COLUMNS,
    REQUIRED_COLUMNS,
    UNSUPPORTED_COLUMNS,
    ExtraColumns,
    ManifestRow,
    ParsedManifest,
    RowDefaults,
    RowError,
)
from kf2v_tasks.errors import ManifestFileError
from kf2v_tasks.redaction import redact_text

__all__ = [
    "ID_MAX_CHARS",
    "KNOWN_COLUMNS",
    "OUTPUT_MAX_CHARS",
    "OUTPUT_SEGMENT_MAX_CHARS",
    "OUTPUT_SUFFIX",
    "PROMPT_ABSURD_CHARS",
    "REQUIRED_COLUMNS",
    "RESERVED_OUTPUT_DIR",
    "UNSUPPORTED_COLUMNS",
    "ExtraColumns",
    "ManifestFileError",
    "ManifestRow",
    "ParsedManifest",
    "RowDefaults",
    "RowError",
    "load_manifest",
    "manifest_base_dir",
    "parse_manifest",
    "resolve_frame",
]

_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def parse_manifest(
    data: Union[bytes, str],
    *,
    source: str,
    base_dir: str,
    defaults: Optional[RowDefaults] = None,
    extra_columns: ExtraColumns = False,
) -> ParsedManifest:
    """Parse manifest text; pure (no I/O), so it can be fuzzed.

    Args:
        data: the file's bytes (UTF-8 with or without BOM, or UTF-16 with a BOM) or text.
        source: where it came from, for messages.
        base_dir: folder relative frame paths are resolved against (``s3://bucket/dir``,
            ``/data/batch``, ``https://host/dir/``); ``""`` leaves them relative.
        defaults: values for empty optional cells.
        extra_columns: accept columns the plugin does not know (True: any; a list: the
            ones it names, case-insensitively) and keep their cells per row
            (:attr:`ParsedManifest.extras`) instead of refusing the file.

    Returns:
        The valid rows plus one :class:`RowError` per bad cell of the invalid rows.

    Raises:
        ManifestFileError: file-level problems only (encoding, header, missing or unknown
            columns, malformed quoting). Row problems never raise.
        ValueError: ``extra_columns`` lists a column the plugin reads itself.
    """
    defaults = defaults or RowDefaults()
    text = _decode(data, source)
    delimiter = _guess_delimiter(text)
    records = _records(text, delimiter, source)

    header_line, header = _read_header(records, source)
    columns = [normalise_header(h) for h in header]
    check_header(columns, header_line, source)
    extra = check_columns(columns, header_line, source, extra_columns)

    warnings: list[str] = []
    unnamed = sum(1 for c in columns if not c)
    if unnamed:
        warnings.append(f"ignoring {unnamed} column(s) with an empty header name")
    for i in extra if extra_columns is True else ():  # a listed column is no typo
        near = did_you_mean(columns[i])
        if near:  # carried through as asked; but a typo here still loses the setting
            warnings.append(
                f"column {trim(header[i])!r} is carried through as your own column; "
                f"if you meant {near!r}, rename it"
            )

    parsed = ParsedManifest(
        source=source,
        columns=columns,
        warnings=warnings,
        extra_columns=[trim(header[i]) for i in extra],
    )
    claims = Claims()
    rows, errors = [], []
    for line, cells in records:
        row, bad = parse_row(line, cells, columns, base_dir, defaults, claims)
        if row is not None:
            rows.append(row)
        errors.extend(bad)
        if extra:
            parsed.extras[line] = {
                trim(header[i]): cells[i] if i < len(cells) else "" for i in extra
            }
    shared = claims.shared_errors()
    for line_errors in shared.values():
        errors.extend(line_errors)
    errors.sort(key=lambda e: e.row_number)  # stable: a row's own errors stay in order
    for row in rows:
        if row.row_number not in shared:
            parsed.rows.append(row)
            parsed.warnings.extend(f"row {row.row_number}: {w}" for w in row.warnings)
    parsed.errors = errors
    return parsed


async def load_manifest(
    url: str,
    *,
    defaults: Optional[RowDefaults] = None,
    storage_options: Optional[dict[str, Any]] = None,
    extra_columns: ExtraColumns = False,
) -> ParsedManifest:
    """Read a manifest from any fsspec URL (local path, ``s3://``, ``https://`` …) and parse it.

    Relative frame paths are resolved against the manifest's own folder; ``extra_columns``
    is as in :func:`parse_manifest`. A file to run must hold at least one row: an empty
    or header-only file is refused, so a run never replaces an output's results.csv and
    gallery with an empty table.

    Raises:
        ManifestFileError: the file cannot be read, has a file-level problem, or has no
            data row.
    """
    data = await asyncio.to_thread(_read_bytes, url, dict(storage_options or {}))
    parsed = parse_manifest(
        data,
        source=url,
        base_dir=manifest_base_dir(url),
        defaults=defaults,
        extra_columns=extra_columns,
    )
    if parsed.total == 0:
        raise ManifestFileError(
            url, "has a header but no rows: nothing to run; add a row per video", line=2
        )
    return parsed


# --------------------------------------------------------------------------- reading the file


def _read_bytes(url: str, storage_options: dict[str, Any]) -> bytes:
    from kf2v_tasks.storage.paths import open_fs  # lazy: fsspec backends are heavy to import

    try:
        fs, path = open_fs(url, storage_options)
        return fs.cat_file(path)
    except FileNotFoundError:
        raise ManifestFileError(url, "no such file") from None
    except IsADirectoryError:
        raise ManifestFileError(url, "is a folder, not a CSV file") from None
    except PermissionError:
        raise ManifestFileError(url, "permission denied") from None
    except (OSError, ValueError, ImportError) as exc:
        raise ManifestFileError(url, f"cannot be read: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return redact_text(text[0]) if text else type(exc).__name__


def _decode(data: Union[bytes, str], source: str) -> str:
    if isinstance(data, str):
        return data.removeprefix("\ufeff")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if data.startswith(_UTF16_BOMS):
            try:
                return data.decode("utf-16").removeprefix("\ufeff")
            except UnicodeDecodeError:
                raise ManifestFileError(
                    source, "starts with a UTF-16 byte order mark but is not UTF-16 text"
                ) from None
        line = data.count(b"\n", 0, exc.start) + 1
        raise ManifestFileError(
            source,
            f"line {line} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start}); save the file as CSV UTF-8",
            line=line,
        ) from None


def _guess_delimiter(text: str) -> str:
    # Spreadsheets in many locales export ';' (or tab) separated "CSV"; decide from the
    # header line only, and only when it has no comma at all.
    first = next((ln for ln in io.StringIO(text, newline="") if ln.strip()), "")
    if "," not in first:
        for candidate in (";", "\t"):
            if candidate in first:
                return candidate
    return ","


def _records(text: str, delimiter: str, source: str) -> Iterator[tuple[int, list[str]]]:
    """Yield (start line, cells) per non-blank record; csv errors become ManifestFileError."""
    # strict: an unclosed quote must fail loudly instead of swallowing the rest of the file.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    end = 0
    while True:
        start = end + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ManifestFileError(
                source,
                f"line {start}: malformed CSV in the record starting there ({exc})",
                line=start,
            ) from None
        end = reader.line_num
        if cells and any(c.strip() for c in cells):
            yield start, cells


def _read_header(records: Iterator[tuple[int, list[str]]], source: str) -> tuple[int, list[str]]:
    try:
        return next(records)
    except StopIteration:
        raise ManifestFileError(
            source, f"is empty: expected a header with {', '.join(REQUIRED_COLUMNS)}", line=1
        ) from None
