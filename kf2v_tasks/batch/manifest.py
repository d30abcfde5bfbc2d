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

Any other named column is refused with a did-you-mean, unless the caller names it in
``extra_columns`` (see :mod:`~kf2v_tasks.batch.manifest_columns`): such columns are kept per
row (:attr:`ParsedManifest.extras`) and written to ``results.csv`` after its own columns.

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

This module reads the file and checks what spans rows (shared ids and outputs); the
header is checked in :mod:`~kf2v_tasks.batch.manifest_columns`, each row by the Pydantic
validators of :mod:`~kf2v_tasks.batch.manifest_row`.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Iterator
from typing import Any, Optional, Union

from pydantic import BaseModel, Field

from kf2v_tasks.batch.manifest_columns import REQUIRED_COLUMNS, ExtraColumns, read_header
from kf2v_tasks.batch.manifest_defaults import RowDefaults
from kf2v_tasks.batch.manifest_paths import manifest_base_dir
from kf2v_tasks.batch.manifest_row import ManifestRow, RowError, parse_row
from kf2v_tasks.errors import ManifestFileError
from kf2v_tasks.redaction import redact_text

__all__ = [
    "ExtraColumns",
    "ManifestFileError",
    "ParsedManifest",
    "RowDefaults",
    "load_manifest",
    "parse_manifest",
]

_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class ParsedManifest(BaseModel):
    """The outcome of parsing a manifest: the valid rows, and the reasons for the others."""

    source: str = Field(description="Where the manifest came from (URL or path).")
    rows: list[ManifestRow] = Field(default_factory=list, description="Valid rows, in order.")
    errors: list[RowError] = Field(
        default_factory=list, description="Row-level problems, one per bad cell, in order."
    )
    columns: list[str] = Field(
        default_factory=list, description="Header names as normalised (trimmed, lower-case)."
    )
    warnings: list[str] = Field(
        default_factory=list, description="Non-fatal remarks (unnamed columns, long prompts)."
    )
    extra_columns: list[str] = Field(
        default_factory=list,
        description="The user's own columns (parsed with extra_columns), as named in the header.",
    )
    extras: dict[int, dict[str, str]] = Field(
        default_factory=dict,
        description="Row number -> the row's cells in extra_columns (valid and invalid rows).",
    )

    @property
    def invalid_row_numbers(self) -> list[int]:
        """Row numbers that have at least one error, ascending."""
        return sorted({e.row_number for e in self.errors})

    @property
    def total(self) -> int:
        """Number of data rows (valid and invalid; blank lines do not count)."""
        return len(self.rows) + len(self.invalid_row_numbers)


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
    records = _records(text, _guess_delimiter(text), source)
    header_line, header_cells = next(records, (1, []))
    if not header_cells:
        raise ManifestFileError(
            source, f"is empty: expected a header with {', '.join(REQUIRED_COLUMNS)}", line=1
        )
    header = read_header(header_cells, header_line, source, extra_columns)
    columns = header.columns
    parsed = ParsedManifest(
        source=source, columns=columns, warnings=header.warnings, extra_columns=header.names
    )
    rows: list[ManifestRow] = []
    claims: dict[int, dict[str, Any]] = {}
    for line, cells in records:
        if header.extra:
            parsed.extras[line] = {
                name: cells[i] if i < len(cells) else ""
                for name, i in zip(header.names, header.extra, strict=True)
            }
        # Trailing empty cells beyond the header are spreadsheet padding, not data.
        if len(cells) > len(columns) and any(c.strip() for c in cells[len(columns) :]):
            reason = (
                f"row has {len(cells)} cells but the header has {len(columns)} "
                "(a comma inside a cell that is not quoted?)"
            )  # misaligned cells: checking each column would only produce noise
            parsed.errors.append(RowError(row_number=line, reason=reason))
            continue
        raw = {c: v for c, v in zip(columns, cells, strict=False) if c}
        row, claims[line] = parse_row(line, raw, base_dir, defaults)
        if isinstance(row, ManifestRow):
            rows.append(row)
        else:
            parsed.errors.extend(row)
    shared = _shared(claims)
    for errors in shared.values():
        parsed.errors.extend(errors)
    parsed.errors.sort(key=lambda e: e.row_number)  # stable: a row's own errors stay first
    for row in rows:
        if row.row_number not in shared:
            parsed.rows.append(row)
            parsed.warnings.extend(f"row {row.row_number}: {w}" for w in row.warnings)
    return parsed


def _shared(claims: dict[int, dict[str, Any]]) -> dict[int, list[RowError]]:
    """Row number → errors, for every row whose id or output name another row also takes.

    Every such row is invalid, not only the later ones: which one the user meant is
    anybody's guess, so none is paid for.
    """
    errors: dict[int, list[RowError]] = {}

    def add(line: int, column: str, reason: str) -> None:
        error = RowError(row_number=line, id=claims[line]["id"], column=column, reason=reason)
        errors.setdefault(line, []).append(error)

    def others(lines: list[int], line: int) -> str:  # "row 2" or "rows 2, 7"
        rest = sorted(n for n in lines if n != line)
        return f"row{'s' if len(rest) > 1 else ''} {', '.join(map(str, rest))}"

    for row_id, lines in _groups(claims, "id", str).items():
        for line in lines:
            what = f"derived id {row_id!r}" if claims[line]["derived"] else repr(row_id)
            add(line, "id", f"{what} is also used by {others(lines, line)}")
    # Compared case-insensitively: some filesystems are.
    for lines in _groups(claims, "output", str.casefold).values():
        for line in lines:
            name, from_cell = claims[line]["output"], claims[line]["from_cell"]
            if not from_cell and line in errors:
                continue  # its name comes from its id, already reported as shared
            spelt = sorted({claims[n]["output"] for n in lines} - {name})
            also = (
                f" (as {', '.join(map(repr, spelt))}; names that differ only in case are one "
                "file on some systems)"
                if spelt
                else ""
            )
            reason = f"output {name!r} is also used by {others(lines, line)}{also}"
            add(line, "output" if from_cell else "id", reason)
    return errors


def _groups(claims: dict[int, dict[str, Any]], key: str, norm: Any) -> dict[str, list[int]]:
    """Claimed values taken by more than one row → those rows."""
    groups: dict[str, list[int]] = {}
    for line, claim in claims.items():
        if key in claim:
            groups.setdefault(norm(claim[key]), []).append(line)
    return {value: lines for value, lines in groups.items() if len(lines) > 1}


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
