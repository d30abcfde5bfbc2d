"""One data row of a manifest, cell by cell: a ManifestRow, or one RowError per bad cell.

What a cell may hold on its own is checked in :mod:`~kf2v_tasks.batch.manifest_cells`;
whether an id or output name is shared with another row is known only once every row is
read, so each row records its claims in :class:`~kf2v_tasks.batch.manifest_claims.Claims`.
What needs the row's model (resolution, duration, driving audio) is checked here, against
the models table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

from pydantic import ValidationError

from kf2v_tasks.batch.manifest_cells import (
    ID_MAX_CHARS,
    OUTPUT_MAX_CHARS,
    OUTPUT_SEGMENT_MAX_CHARS,
    OUTPUT_SUFFIX,
    RESERVED_OUTPUT_DIR,
    check_output,
    has_control,
    id_problem,
    parse_seed,
    show,
    whole_seconds,
)
from kf2v_tasks.batch.manifest_claims import Claims
from kf2v_tasks.batch.manifest_paths import resolve_frame
from kf2v_tasks.batch.manifest_schema import (
    KNOWN_COLUMNS,
    ManifestRow,
    RowDefaults,
    RowError,
    resolution_names,
)
from kf2v_tasks.dashscope.catalog import ModelSpec, active_catalog
from kf2v_tasks.dashscope.models import (
    NEGATIVE_PROMPT_MAX_CHARS,
    PROMPT_MAX_CHARS,
    SEED_MAX,
    GenerationOptions,
    Resolution,
)

__all__ = [
    "ID_MAX_CHARS",
    "OUTPUT_MAX_CHARS",
    "OUTPUT_SEGMENT_MAX_CHARS",
    "OUTPUT_SUFFIX",
    "PROMPT_ABSURD_CHARS",
    "RESERVED_OUTPUT_DIR",
    "Claims",
    "parse_row",
]

#: Longer prompts are certainly a mistake (a pasted file?), not something to truncate.
PROMPT_ABSURD_CHARS = 100_000
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


def parse_row(
    line: int,
    cells: list[str],
    columns: list[str],
    base_dir: str,
    defaults: RowDefaults,
    claims: Claims,
) -> tuple[Optional[ManifestRow], list[RowError]]:
    """Check and resolve one data row; every bad cell gives its own :class:`RowError`.

    Whether its id or output is unique is known only once every row is read: the row
    records both in ``claims`` and :meth:`Claims.shared_errors` says which rows clash.

    Args:
        line: the file line the row starts on (its row number).
        cells: the row's cells as the CSV reader gave them.
        columns: the normalised header names, in file order (``""`` for unnamed columns).
        base_dir: folder relative frame paths are resolved against (``""``: leave relative).
        defaults: values for empty optional cells.
        claims: what the rows of this manifest claim (ids, outputs); updated here.

    Returns:
        ``(row, [])`` for a row whose cells are all good; ``(None, errors)`` otherwise.
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
        reason = id_problem(cell["id"])
        if reason:
            fail("id", reason)
        else:
            row_id = cell["id"]
            claims.claim_id(row_id, line)
    else:
        row_id = f"row-{line:04d}"
        claims.claim_id(row_id, line, derived=True)

    # frames, or a clip to continue (first_clip, optionally ending on last_frame)
    frames: dict[str, Optional[str]] = {}
    clip = bool(cell["first_clip"])
    if clip and cell["first_frame"]:
        fail(
            "first_clip",
            "a row continues a first_clip or starts from a first_frame, not both",
            row_id,
        )
    for col in ("first_clip", "first_frame", "last_frame"):
        value = cell[col]
        if not value:
            if not clip and col != "first_clip":
                fail(col, "is empty; every row needs a first and a last frame", row_id)
            frames[col] = None
        elif has_control(value):
            fail(col, f"{show(value)} contains a control character", row_id)
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

    # model and resolution (what a model accepts is in the models table)
    catalog = active_catalog()
    model: Optional[str] = defaults.model
    if cell["model"]:
        model = cell["model"].lower()
        if catalog.find(model) is None:
            model = None
            fail(
                "model",
                f"{show(cell['model'])} is not a known model "
                f"(one of: {', '.join(catalog.names())})",
                row_id,
            )
    spec: Optional[ModelSpec] = catalog.find(model) if model is not None else None
    resolution: Optional[Resolution] = defaults.resolution
    if cell["resolution"]:
        try:
            resolution = Resolution(cell["resolution"].upper())
        except ValueError:
            resolution = None
            fail(
                "resolution",
                f"{show(cell['resolution'])} is not a resolution "
                f"(one of: {', '.join(r.value for r in Resolution)})",
                row_id,
            )
    if spec is not None and resolution is not None:
        allowed = spec.resolutions
        if resolution.value not in allowed:
            # Blame the cell the row set; defaults are consistent (RowDefaults checks).
            column = "resolution" if cell["resolution"] else "model"
            which = "" if cell["resolution"] else " (the default)"
            fail(
                column,
                f"resolution {resolution.value}{which} is not available for {model} "
                f"(allowed: {resolution_names(allowed)})",
                row_id,
            )

    # duration, driving audio and first_clip: only where the row's model takes them
    duration = _duration(cell["duration"], defaults.duration, spec, model, fail, row_id)
    if clip and spec is not None and not spec.clip:
        takers = ", ".join(s.name for s in catalog.models if s.clip)
        fail("first_clip", f"{model} cannot continue a clip (models that can: {takers})", row_id)
    if clip and cell["audio"]:
        fail("audio", "a row that continues a first_clip takes no driving audio", row_id)
    if clip and duration is not None:  # said with the estimate, before anything is paid
        warnings.append(
            f"first_clip: the video is the clip continued to {duration} s in total; all "
            f"{duration} s are billed, the clip's own seconds included"
        )
    audio: Optional[str] = None
    if cell["audio"]:
        if has_control(cell["audio"]):
            fail("audio", f"{show(cell['audio'])} contains a control character", row_id)
        elif spec is not None and not spec.audio:
            takers = [s.name for s in catalog.models if s.audio]
            fail(
                "audio",
                f"{model} takes no driving audio"
                + (f" (models that do: {', '.join(takers)})" if takers else ""),
                row_id,
            )
        else:
            audio = resolve_frame(cell["audio"], base_dir)

    # seed
    seed: Optional[int] = defaults.seed
    seed_ok = True
    if cell["seed"]:
        seed = parse_seed(cell["seed"])
        if seed is None:
            seed_ok = False
            fail("seed", f"{show(cell['seed'])} is not an integer in 0..{SEED_MAX}", row_id)

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
            fail(col, f"{show(cell[col])} is not a boolean (true/false, 1/0, yes/no)", row_id)

    # output
    output: Optional[str] = None
    if cell["output"]:
        output, reason = check_output(cell["output"])
        if reason:
            fail("output", reason, row_id)
    elif row_id is not None:
        output = row_id + OUTPUT_SUFFIX  # ids are filename-safe by construction
    if output is not None and row_id is not None:
        claims.claim_output(output, line, row_id, from_cell=bool(cell["output"]))

    if errors:
        return None, errors
    assert row_id is not None and output is not None and model is not None
    assert seed_ok and duration is not None
    try:
        options = GenerationOptions(
            model=model,
            resolution=resolution,
            seed=seed,
            prompt_extend=flags["prompt_extend"],
            watermark=flags["watermark"],
            duration=duration,
        )
    except ValidationError as exc:  # defensive: the checks above should cover every case
        fail(None, f"invalid options: {exc.errors()[0].get('msg', exc)}", row_id)
        return None, errors
    row = ManifestRow(
        row_number=line,
        id=row_id,
        first_frame=frames["first_frame"],
        last_frame=frames["last_frame"],
        first_clip=frames["first_clip"],
        audio=audio,
        prompt=prompts["prompt"],
        negative_prompt=prompts["negative_prompt"],
        options=options,
        output=output,
        raw=raw,
        warnings=warnings,
    )
    return row, errors


def _duration(
    value: str,
    default: Optional[int],
    spec: Optional[ModelSpec],
    model: Optional[str],
    fail: Callable[[Optional[str], str, Optional[str]], None],
    row_id: Optional[str],
) -> Optional[int]:
    """The row's length in seconds: its cell, else the default, else the model's own."""
    seconds: Optional[int]
    if value:
        seconds = whole_seconds(value)
        if seconds is None:
            fail("duration", f"{show(value)} is not a whole number of seconds", row_id)
            return None
    else:
        seconds = default
    if spec is None:
        return seconds if seconds is not None else 5  # the model cell already failed
    if seconds is None:
        return spec.default_duration
    if not spec.allows_duration(seconds):
        column, which = ("duration", "") if value else ("model", " (the default)")
        fixed = spec.duration_min == spec.duration_max
        allowed = (
            f"its videos are always {spec.duration_min} s long"
            if fixed
            else f"allowed: {spec.duration_text()} s"
        )
        fail(
            column,
            f"duration {seconds} s{which} is not available for {model} ({allowed})",
            row_id,
        )
        return None
    return seconds
