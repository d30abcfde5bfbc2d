"""One data row of a manifest, cell by cell: a ManifestRow, or one RowError per bad cell."""

from __future__ import annotations

import posixpath
import re
from typing import Optional

from pydantic import ValidationError

from kf2v_tasks.batch.manifest_paths import resolve_frame
from kf2v_tasks.batch.manifest_schema import (
    KNOWN_COLUMNS,
    ManifestRow,
    RowDefaults,
    RowError,
    resolution_names,
)
from kf2v_tasks.dashscope.models import (
    MODEL_RESOLUTIONS,
    NEGATIVE_PROMPT_MAX_CHARS,
    PROMPT_MAX_CHARS,
    SEED_MAX,
    GenerationOptions,
    Kf2vModel,
    Resolution,
)
from kf2v_tasks.storage.paths import RESERVED_DIR

ID_MAX_CHARS = 128
#: Longer prompts are certainly a mistake (a pasted file?), not something to truncate.
PROMPT_ABSURD_CHARS = 100_000
OUTPUT_MAX_CHARS = 1024
OUTPUT_SEGMENT_MAX_CHARS = 255
OUTPUT_SUFFIX = ".mp4"
#: Folder under the output root that holds run state (ledger, temp files).
RESERVED_OUTPUT_DIR = RESERVED_DIR

_ID_RE = re.compile(r"[A-Za-z0-9._-]+")
_DIGITS_RE = re.compile(r"[0-9]+")
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


def parse_row(
    line: int,
    cells: list[str],
    columns: list[str],
    base_dir: str,
    defaults: RowDefaults,
    ids: dict[str, int],
    outputs: dict[str, int],
) -> tuple[Optional[ManifestRow], list[RowError]]:
    """Check and resolve one data row; every bad cell gives its own :class:`RowError`.

    Args:
        line: the file line the row starts on (its row number).
        cells: the row's cells as the CSV reader gave them.
        columns: the normalised header names, in file order (``""`` for unnamed columns).
        base_dir: folder relative frame paths are resolved against (``""``: leave relative).
        defaults: values for empty optional cells.
        ids: id → first row using it, shared by every row of one manifest; updated here.
        outputs: case-folded output name → first row using it, shared likewise; updated here.

    Returns:
        ``(row, [])`` for a valid row; ``(None, errors)`` otherwise.

    Example:
        ```python
        from kf2v_tasks.batch.manifest_rows import parse_row
        from kf2v_tasks.batch.manifest_schema import RowDefaults
        ids, outputs = {}, {}
        columns = ["first_frame", "last_frame", "seed"]
        row, errors = parse_row(2, ["a.png", "b.png", "7"], columns, "/data", RowDefaults(),
                                ids, outputs)
        assert row.first_frame == "/data/a.png" and row.options.seed == 7 and not errors
        row, errors = parse_row(3, ["a.png", "b.png", "x"], columns, "/data", RowDefaults(),
                                ids, outputs)
        assert errors[0].message() == "row 3, column 'seed': 'x' is not an integer in 0..2147483647"
        ```
    """
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
                f"(allowed: {resolution_names(allowed)})",
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


def _has_control(value: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in value)


def _show(value: str, limit: int = 60) -> str:
    """repr of a cell, shortened so one absurd cell does not flood the report."""
    if len(value) > limit:
        return repr(value[: limit - 1] + "…")
    return repr(value)
