"""CSV batch manifests: one generation per row, validated up front with precise reasons.

A manifest is a CSV file with a header. Required columns are ``first_frame`` and
``last_frame``; optional ones are ``id``, ``prompt``, ``negative_prompt``, ``model``,
``resolution``, ``seed``, ``prompt_extend``, ``watermark`` and ``output``. Header names
are trimmed and case-insensitive; unknown columns are ignored with a warning. An empty
cell means "use the default" (:class:`RowDefaults`).

Problems are split in two kinds:

* **file-level** (cannot be read, not text, no header, missing required columns, broken
  quoting): :func:`parse_manifest` and :func:`load_manifest` raise
  :class:`ManifestFileError`, whose message is ``manifest <path>: <reason>``;
* **row-level** (a bad seed, an unknown model, a duplicate id …): the row becomes one
  :class:`RowError` per bad column and is left out of :attr:`ParsedManifest.rows`; the
  rest of the batch still runs. Its message is ``row N, column 'x': reason``.

Row numbers are **line numbers in the file as an editor shows them**: the header is
normally line 1 and the first data row line 2. A row whose quoted cell spans several
lines is numbered by the line it starts on. ``ManifestFileError.line`` uses the same
numbering when the problem has a place in the file (``None`` otherwise).

Example:
    ```python
    from kf2v_tasks.batch.manifest import parse_manifest
    text = "id,first_frame,last_frame,seed\\nshot1,a.png,b.png,7\\nshot2,c.png,d.png,-3\\n"
    parsed = parse_manifest(text, source="m.csv", base_dir="s3://bucket/batch")
    assert [r.first_frame for r in parsed.rows] == ["s3://bucket/batch/a.png"]
    assert parsed.errors[0].message() == (
        "row 3, column 'seed': '-3' is not an integer in 0..2147483647"
    )
    ```
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import posixpath
import re
from collections.abc import Iterator
from typing import Any, Optional, Union
from urllib.parse import urljoin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kf2v_tasks.dashscope.models import (
    MODEL_RESOLUTIONS,
    NEGATIVE_PROMPT_MAX_CHARS,
    PROMPT_MAX_CHARS,
    SEED_MAX,
    GenerationOptions,
    Kf2vModel,
    Resolution,
)
from kf2v_tasks.errors import ManifestFileError
from kf2v_tasks.redaction import redact_text

#: Columns the parser understands; anything else is ignored with a warning.
KNOWN_COLUMNS: tuple[str, ...] = (
    "id",
    "first_frame",
    "last_frame",
    "prompt",
    "negative_prompt",
    "model",
    "resolution",
    "seed",
    "prompt_extend",
    "watermark",
    "output",
)
REQUIRED_COLUMNS: tuple[str, ...] = ("first_frame", "last_frame")

ID_MAX_CHARS = 128
#: Longer prompts are certainly a mistake (a pasted file?), not something to truncate.
PROMPT_ABSURD_CHARS = 100_000
OUTPUT_MAX_CHARS = 1024
OUTPUT_SEGMENT_MAX_CHARS = 255
OUTPUT_SUFFIX = ".mp4"
#: Folder under the output root that holds run state (ledger, temp files); see fsutil.
RESERVED_OUTPUT_DIR = ".kf2v"

_ID_RE = re.compile(r"[A-Za-z0-9._-]+")
_DIGITS_RE = re.compile(r"[0-9]+")
# A URL or fsspec chain ("s3://", "simplecache::s3://") or a data: URI. A bare "x:y" is
# deliberately *not* a scheme so that odd-but-relative file names still resolve.
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*(?:://|::)|^data:", re.IGNORECASE)
_DRIVE_RE = re.compile(r"^[A-Za-z]:[\\/]")
_URL_PREFIX_RE = re.compile(r"^(.*?://[^/]*)(.*)$", re.DOTALL)
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


# --------------------------------------------------------------------------- errors


# --------------------------------------------------------------------------- models


class RowDefaults(BaseModel):
    """Values used for every optional column a row leaves empty (or does not have).

    Example:
        ```python
        from kf2v_tasks.batch.manifest import RowDefaults
        defaults = RowDefaults(resolution="480P", seed=42, prompt="slow camera move")
        ```
    """

    model_config = ConfigDict(
        frozen=True, json_schema_extra={"description": "Values for the columns a row leaves empty."}
    )

    prompt: Optional[str] = Field(
        default=None, description="Prompt for rows whose prompt cell is empty."
    )
    negative_prompt: Optional[str] = Field(
        default=None, description="Negative prompt for rows whose negative_prompt cell is empty."
    )
    model: Kf2vModel = Field(
        default=Kf2vModel.WAN22_FLASH, description="Model for rows whose model cell is empty."
    )
    resolution: Resolution = Field(
        default=Resolution.P720,
        description="Resolution for rows whose resolution cell is empty (2.1 plus: 720P only).",
    )
    seed: Optional[int] = Field(
        default=None,
        ge=0,
        le=SEED_MAX,
        description="Seed (0..2147483647) for rows whose seed cell is empty; empty for random.",
    )
    prompt_extend: bool = Field(
        default=True, description="Let the service rewrite prompts, unless a row says otherwise."
    )
    watermark: bool = Field(
        default=False, description='Add the "AI生成" watermark, unless a row says otherwise.'
    )

    @model_validator(mode="after")
    def _resolution_fits_model(self) -> RowDefaults:
        allowed = MODEL_RESOLUTIONS[self.model]
        if self.resolution not in allowed:
            raise ValueError(
                f"default resolution {self.resolution.value} is not available for the default "
                f"model {self.model.value} (allowed: {_names(allowed)})"
            )
        return self


class ManifestRow(BaseModel):
    """One valid manifest row, resolved and ready to validate frames and submit.

    ``row_number`` is the file line the row starts on (header = line 1, see the module
    docstring). ``first_frame``/``last_frame`` are resolved: relative paths are joined to
    the manifest's folder; absolute paths and URLs pass through unchanged.
    """

    model_config = ConfigDict(frozen=True)

    row_number: int = Field(description="Line of the file the row starts on (header is line 1).")
    id: str = Field(description="The id cell, or row-<line> zero-padded to 4 digits.")
    first_frame: str = Field(description="First frame path or URL, resolved.")
    last_frame: str = Field(description="Last frame path or URL, resolved.")
    prompt: Optional[str] = Field(default=None, description="Prompt (cell or default).")
    negative_prompt: Optional[str] = Field(default=None, description="Negative prompt.")
    options: GenerationOptions = Field(description="Model, resolution, seed and flags.")
    output: str = Field(description="Output name relative to the output root, ends in .mp4.")
    raw: dict[str, str] = Field(
        default_factory=dict, description="The row's cells as read, by lower-cased column."
    )
    warnings: list[str] = Field(default_factory=list, description="Non-fatal remarks.")


class RowError(BaseModel):
    """One problem with one cell (or a whole row) of the manifest.

    Example:
        ```python
        from kf2v_tasks.batch.manifest import RowError
        err = RowError(row_number=7, id=None, column="seed",
                       reason="'-3' is not an integer in 0..2147483647")
        assert err.message() == "row 7, column 'seed': '-3' is not an integer in 0..2147483647"
        ```
    """

    model_config = ConfigDict(frozen=True)

    row_number: int = Field(description="Line of the file the row starts on.")
    id: Optional[str] = Field(default=None, description="The row's id, when it had a valid one.")
    column: Optional[str] = Field(default=None, description="The bad column; None: whole row.")
    reason: str = Field(description="What is wrong, in words a user can act on.")

    def message(self) -> str:
        """``"row N, column 'c': reason"`` (``"row N: reason"`` for whole-row problems)."""
        where = f"row {self.row_number}" + (f", column {self.column!r}" if self.column else "")
        return f"{where}: {self.reason}"


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
        default_factory=list, description="Non-fatal remarks (unknown columns, long prompts)."
    )

    @property
    def invalid_row_numbers(self) -> list[int]:
        """Row numbers that have at least one error, ascending."""
        return sorted({e.row_number for e in self.errors})

    @property
    def total(self) -> int:
        """Number of data rows (valid and invalid; blank lines do not count)."""
        return len(self.rows) + len(self.invalid_row_numbers)


# --------------------------------------------------------------------------- parsing


def parse_manifest(
    data: Union[bytes, str],
    *,
    source: str,
    base_dir: str,
    defaults: Optional[RowDefaults] = None,
) -> ParsedManifest:
    """Parse manifest text; pure (no I/O), so it can be fuzzed.

    Args:
        data: the file's bytes (UTF-8 with or without BOM, or UTF-16 with a BOM) or text.
        source: where it came from, for messages.
        base_dir: folder relative frame paths are resolved against (``s3://bucket/dir``,
            ``/data/batch``, ``https://host/dir/``); ``""`` leaves them relative.
        defaults: values for empty optional cells.

    Returns:
        The valid rows plus one :class:`RowError` per bad cell of the invalid rows.

    Raises:
        ManifestFileError: file-level problems only (encoding, header, missing required
            columns, malformed quoting). Row problems never raise.

    Example:
        ```python
        from kf2v_tasks.batch.manifest import parse_manifest
        parsed = parse_manifest(b"first_frame,last_frame\\na.png,b.png\\n",
                                source="m.csv", base_dir="/data")
        assert parsed.rows[0].output == "row-0002.mp4"
        ```
    """
    defaults = defaults or RowDefaults()
    text = _decode(data, source)
    delimiter = _guess_delimiter(text)
    records = _records(text, delimiter, source)

    header_line, header = _read_header(records, source)
    columns = [_normalise_header(h) for h in header]
    _check_header(columns, header_line, source)

    warnings: list[str] = []
    unknown = [c for c in columns if c and c not in KNOWN_COLUMNS]
    if unknown:
        warnings.append(
            "ignoring unknown column(s) "
            + ", ".join(repr(c) for c in unknown)
            + f" (known: {', '.join(KNOWN_COLUMNS)})"
        )
    unnamed = sum(1 for c in columns if not c)
    if unnamed:
        warnings.append(f"ignoring {unnamed} column(s) with an empty header name")

    parsed = ParsedManifest(source=source, columns=columns, warnings=warnings)
    ids: dict[str, int] = {}  # id -> first row using it
    outputs: dict[str, int] = {}  # case-folded output -> first row using it
    for line, cells in records:
        row, errors = _parse_row(line, cells, columns, base_dir, defaults, ids, outputs)
        if row is not None:
            parsed.rows.append(row)
            parsed.warnings.extend(f"row {line}: {w}" for w in row.warnings)
        parsed.errors.extend(errors)
    return parsed


async def load_manifest(
    url: str,
    *,
    defaults: Optional[RowDefaults] = None,
    storage_options: Optional[dict[str, Any]] = None,
) -> ParsedManifest:
    """Read a manifest from any fsspec URL (local path, ``s3://``, ``https://`` …) and parse it.

    Relative frame paths are resolved against the manifest's own folder.

    Raises:
        ManifestFileError: the file cannot be read or has a file-level problem.

    Example:
        ```python
        import asyncio
        from kf2v_tasks.batch.manifest import load_manifest
        parsed = asyncio.run(load_manifest("s3://bucket/batch/manifest.csv",
                                           storage_options={"anon": False}))
        ```
    """
    data = await asyncio.to_thread(_read_bytes, url, dict(storage_options or {}))
    return parse_manifest(data, source=url, base_dir=manifest_base_dir(url), defaults=defaults)


def manifest_base_dir(url: str) -> str:
    """The folder of a manifest URL or path, which relative frame paths are resolved against.

    Example:
        ```python
        from kf2v_tasks.batch.manifest import manifest_base_dir
        assert manifest_base_dir("s3://bucket/dir/m.csv") == "s3://bucket/dir/"
        ```
    """
    if _URL_RE.match(url):
        if url.lower().startswith(("http://", "https://")):
            url = url.split("#", 1)[0].split("?", 1)[0]
        prefix, path = _split_url(url)
        return prefix + (path.rsplit("/", 1)[0] if "/" in path else "") + "/"
    return os.path.dirname(os.path.abspath(url))


def resolve_frame(value: str, base_dir: str) -> str:
    """Resolve a frame cell against the manifest folder; absolute paths and URLs pass through.

    Example:
        ```python
        from kf2v_tasks.batch.manifest import resolve_frame
        assert resolve_frame("../f/a.png", "s3://b/dir/sub") == "s3://b/dir/f/a.png"
        assert resolve_frame("https://x/a.png", "/data") == "https://x/a.png"
        ```
    """
    from kf2v_tasks.storage.paths import resolve_relative  # lazy: imports fsspec

    if not base_dir or _is_absolute(value):
        return value
    if base_dir.lower().startswith(("http://", "https://")):
        return urljoin(base_dir if base_dir.endswith("/") else base_dir + "/", value)
    if "::" in base_dir.split("://", 1)[0]:
        # fsspec chain ("simplecache::s3://b/dir"): keep the chain, join onto its path.
        prefix, path = _split_url(base_dir)
        return prefix + posixpath.normpath(posixpath.join("/" + path.lstrip("/"), value))
    # One resolver for the whole project (bucket-anchored "..", "~" expansion, file://).
    return resolve_relative(value, base_dir)


# --------------------------------------------------------------------------- internals


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


def _normalise_header(name: str) -> str:
    return name.strip().lstrip("\ufeff").strip().lower()


def _check_header(columns: list[str], line: int, source: str) -> None:
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
    missing = [c for c in REQUIRED_COLUMNS if c not in seen]
    if missing:
        found = ", ".join(repr(c) for c in columns if c) or "none"
        raise ManifestFileError(
            source,
            f"line {line} (header): missing required column(s) {', '.join(missing)} "
            f"(header has: {found})",
            line=line,
        )


def _parse_row(
    line: int,
    cells: list[str],
    columns: list[str],
    base_dir: str,
    defaults: RowDefaults,
    ids: dict[str, int],
    outputs: dict[str, int],
) -> tuple[Optional[ManifestRow], list[RowError]]:
    errors: list[RowError] = []

    def fail(column: Optional[str], reason: str, row_id: Optional[str] = None) -> None:
        errors.append(RowError(row_number=line, id=row_id, column=column, reason=reason))

    # Trailing empty cells beyond the header are spreadsheet padding, not data.
    if len(cells) > len(columns) and any(c.strip() for c in cells[len(columns) :]):
        fail(
            None,
            f"row has {len(cells)} cells but the header has {len(columns)} "
            "(a comma inside a cell that is not quoted?)",
        )
        # The cells are misaligned, so per-column checks would only produce noise.
        return None, errors

    raw = {c: v for c, v in zip(columns, cells, strict=False) if c}
    cell = {c: raw.get(c, "").strip() for c in KNOWN_COLUMNS}
    warnings: list[str] = []

    # id (first: later errors carry it)
    row_id: Optional[str] = None
    if cell["id"]:
        reason = _id_problem(cell["id"])
        if reason:
            fail("id", reason)
        elif cell["id"] in ids:
            fail("id", f"duplicate id {cell['id']!r} (first used in row {ids[cell['id']]})")
        else:
            row_id = cell["id"]
    else:
        row_id = f"row-{line:04d}"
        if row_id in ids:
            fail("id", f"derived id {row_id!r} is already used in row {ids[row_id]}")
            row_id = None
    if row_id is not None:
        ids[row_id] = line

    # frames
    frames: dict[str, str] = {}
    for col in ("first_frame", "last_frame"):
        value = cell[col]
        if not value:
            fail(col, "is empty; every row needs a first and a last frame", row_id)
        elif _has_control(value):
            fail(col, f"{_show(value)} contains a control character", row_id)
        else:
            frames[col] = resolve_frame(value, base_dir)

    # prompts
    prompts: dict[str, Optional[str]] = {}
    for col, limit, default in (
        ("prompt", PROMPT_MAX_CHARS, defaults.prompt),
        ("negative_prompt", NEGATIVE_PROMPT_MAX_CHARS, defaults.negative_prompt),
    ):
        value = cell[col] or default or None
        if value is not None and len(value) > PROMPT_ABSURD_CHARS:
            fail(
                col,
                f"has {len(value)} characters; over {PROMPT_ABSURD_CHARS} is surely a mistake "
                f"(the service keeps {limit})",
                row_id,
            )
            continue
        if value is not None and len(value) > limit:
            warnings.append(
                f"{col} has {len(value)} characters; the service keeps the first {limit} "
                "and silently drops the rest"
            )
        prompts[col] = value

    # model and resolution
    model: Optional[Kf2vModel] = defaults.model
    if cell["model"]:
        try:
            model = Kf2vModel(cell["model"].lower())
        except ValueError:
            model = None
            fail(
                "model",
                f"{_show(cell['model'])} is not a kf2v model "
                f"(one of: {', '.join(m.value for m in Kf2vModel)})",
                row_id,
            )
    resolution: Optional[Resolution] = defaults.resolution
    if cell["resolution"]:
        try:
            resolution = Resolution(cell["resolution"].upper())
        except ValueError:
            resolution = None
            fail(
                "resolution",
                f"{_show(cell['resolution'])} is not a resolution "
                f"(one of: {', '.join(r.value for r in Resolution)})",
                row_id,
            )
    if model is not None and resolution is not None:
        allowed = MODEL_RESOLUTIONS[model]
        if resolution not in allowed:
            # Blame the cell the row set; defaults are consistent (RowDefaults checks).
            column = "resolution" if cell["resolution"] else "model"
            which = "" if cell["resolution"] else " (the default)"
            fail(
                column,
                f"resolution {resolution.value}{which} is not available for {model.value} "
                f"(allowed: {_names(allowed)})",
                row_id,
            )

    # seed
    seed: Optional[int] = defaults.seed
    seed_ok = True
    if cell["seed"]:
        seed = _parse_seed(cell["seed"])
        if seed is None:
            seed_ok = False
            fail("seed", f"{_show(cell['seed'])} is not an integer in 0..{SEED_MAX}", row_id)

    # flags
    flags: dict[str, bool] = {}
    for col, default_flag in (
        ("prompt_extend", defaults.prompt_extend),
        ("watermark", defaults.watermark),
    ):
        if not cell[col]:
            flags[col] = default_flag
            continue
        word = cell[col].lower()
        if word in _TRUE:
            flags[col] = True
        elif word in _FALSE:
            flags[col] = False
        else:
            fail(col, f"{_show(cell[col])} is not a boolean (true/false, 1/0, yes/no)", row_id)

    # output
    output: Optional[str] = None
    if cell["output"]:
        output, reason = _check_output(cell["output"])
        if reason:
            fail("output", reason, row_id)
    elif row_id is not None:
        output = row_id + OUTPUT_SUFFIX  # ids are filename-safe by construction
    if output is not None and row_id is not None:
        key = output.casefold()  # case-insensitive filesystems would merge these
        if key in outputs:
            column = "output" if cell["output"] else "id"
            fail(column, f"output {output!r} is already used by row {outputs[key]}", row_id)
        else:
            outputs[key] = line

    if errors:
        return None, errors
    assert row_id is not None and output is not None and model is not None
    assert resolution is not None and seed_ok
    try:
        options = GenerationOptions(
            model=model,
            resolution=resolution,
            seed=seed,
            prompt_extend=flags["prompt_extend"],
            watermark=flags["watermark"],
        )
    except ValidationError as exc:  # defensive: the checks above should cover every case
        fail(None, f"invalid options: {exc.errors()[0].get('msg', exc)}", row_id)
        return None, errors
    row = ManifestRow(
        row_number=line,
        id=row_id,
        first_frame=frames["first_frame"],
        last_frame=frames["last_frame"],
        prompt=prompts["prompt"],
        negative_prompt=prompts["negative_prompt"],
        options=options,
        output=output,
        raw=raw,
        warnings=warnings,
    )
    return row, errors


def _id_problem(value: str) -> Optional[str]:
    if len(value) > ID_MAX_CHARS:
        return f"id has {len(value)} characters (at most {ID_MAX_CHARS})"
    if not _ID_RE.fullmatch(value):
        pos, bad = next((i, ch) for i, ch in enumerate(value, 1) if not _ID_RE.fullmatch(ch))
        return (
            f"id {_show(value)} contains {bad!r} at position {pos}; "
            "allowed: letters A-Z a-z, digits, '.', '_' and '-'"
        )
    return None


def _parse_seed(value: str) -> Optional[int]:
    # Only plain ASCII digits: int() would also take "+5", "1_000" and "５".
    if not _DIGITS_RE.fullmatch(value) or len(value) > len(str(SEED_MAX)) + 5:
        return None
    number = int(value)
    return number if number <= SEED_MAX else None


def _check_output(value: str) -> tuple[Optional[str], Optional[str]]:
    """Normalise an output name; (name, None) when fine, (None, reason) otherwise."""
    if "\\" in value:
        return None, f"{_show(value)} contains a backslash; use '/' between folders"
    if _has_control(value):
        return None, f"{_show(value)} contains a control character"
    if ":" in value:
        return None, f"{_show(value)} contains ':'; URL schemes and drive letters are not allowed"
    if value.startswith("/"):
        return None, f"{_show(value)} is absolute; give a name relative to the output folder"
    if value.endswith("/"):
        return None, f"{_show(value)} names a folder, not a file"
    parts = value.split("/")
    if ".." in parts:
        return None, f"{_show(value)} contains '..'; outputs must stay inside the output folder"
    parts = [p for p in parts if p not in ("", ".")]
    if not parts:
        return None, f"{_show(value)} is not a file name"
    if parts[0] == RESERVED_OUTPUT_DIR:
        return None, f"{_show(value)} is inside {RESERVED_OUTPUT_DIR!r}, reserved for run state"
    if value.startswith("~"):
        return None, f"{_show(value)} starts with '~'; give a name relative to the output folder"
    if any(len(p) > OUTPUT_SEGMENT_MAX_CHARS for p in parts):
        return (
            None,
            f"a part of {_show(value)} is longer than {OUTPUT_SEGMENT_MAX_CHARS} characters",
        )
    name = "/".join(parts)
    ext = posixpath.splitext(parts[-1])[1]
    if not ext:
        name += OUTPUT_SUFFIX
    elif ext.lower() != OUTPUT_SUFFIX:
        return None, f"{_show(value)} must end in {OUTPUT_SUFFIX} (videos are MP4)"
    if len(name) > OUTPUT_MAX_CHARS:
        return None, f"output name has {len(name)} characters (at most {OUTPUT_MAX_CHARS})"
    from kf2v_tasks.storage.paths import safe_child  # lazy: imports fsspec

    try:
        # Backstop: the runner writes through safe_child, so it must accept every name we do.
        name = safe_child("the output folder", name)
    except ValueError as exc:
        return None, str(exc)
    return name, None


def _is_absolute(value: str) -> bool:
    return value.startswith(("/", "\\")) or bool(_DRIVE_RE.match(value) or _URL_RE.match(value))


def _split_url(url: str) -> tuple[str, str]:
    """``"s3://bucket/a/b"`` → ``("s3://bucket", "/a/b")``."""
    m = _URL_PREFIX_RE.match(url)
    if not m:  # "data:" or "x::y" without "://": no path to split
        return url, ""
    return m.group(1), m.group(2)


def _has_control(value: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in value)


def _show(value: str, limit: int = 60) -> str:
    """repr of a cell, shortened so one absurd cell does not flood the report."""
    if len(value) > limit:
        return repr(value[: limit - 1] + "…")
    return repr(value)


def _names(resolutions: frozenset[Resolution]) -> str:
    return ", ".join(sorted(r.value for r in resolutions))
