"""One data row of a manifest, cell by cell: a ManifestRow, or one RowError per bad cell.

Ids and output names must be unique in a manifest, and no row can know that alone: each
row records what it claims in one :class:`Claims` for the file, and once every row is read
:meth:`Claims.shared_errors` makes **every** row of a shared id or output invalid (not only
the later ones: which of them the user meant is anybody's guess, so none is paid for).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass, field
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
from kf2v_tasks.dashscope.catalog import ModelSpec, active_catalog
from kf2v_tasks.dashscope.models import (
    NEGATIVE_PROMPT_MAX_CHARS,
    PROMPT_MAX_CHARS,
    SEED_MAX,
    GenerationOptions,
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


@dataclass(frozen=True)
class _OutputClaim:
    line: int
    name: str
    row_id: str
    from_cell: bool  # False: derived from the row's id


@dataclass
class Claims:
    """The ids and output names the rows of one manifest claim, to find the shared ones.

    Example:
        ```python
        from kf2v_tasks.batch.manifest_rows import Claims
        claims = Claims()
        claims.claim_id("x", 2)
        claims.claim_id("x", 4)
        claims.claim_id("y", 3)
        [err] = claims.shared_errors()[4]
        assert err.message() == "row 4, column 'id': 'x' is also used by row 2"
        ```
    """

    ids: dict[str, list[int]] = field(default_factory=dict)
    derived: set[int] = field(default_factory=set)  # rows whose id is row-<line>
    outputs: dict[str, list[_OutputClaim]] = field(default_factory=dict)

    def claim_id(self, row_id: str, line: int, *, derived: bool = False) -> None:
        """Row ``line`` uses ``row_id`` (``derived``: made from its line number)."""
        self.ids.setdefault(row_id, []).append(line)
        if derived:
            self.derived.add(line)

    def claim_output(self, name: str, line: int, row_id: str, *, from_cell: bool) -> None:
        """Row ``line`` writes ``name`` (compared case-insensitively: some filesystems are)."""
        claim = _OutputClaim(line, name, row_id, from_cell)
        self.outputs.setdefault(name.casefold(), []).append(claim)

    def shared_errors(self) -> dict[int, list[RowError]]:
        """Row number → the errors of every row whose id or output another row also uses."""
        errors: dict[int, list[RowError]] = {}
        shared_id: set[int] = set()
        for row_id, lines in self.ids.items():
            if len(lines) < 2:
                continue
            for line in lines:
                others = _rows([n for n in lines if n != line])
                what = f"derived id {row_id!r}" if line in self.derived else repr(row_id)
                errors.setdefault(line, []).append(
                    RowError(
                        row_number=line,
                        id=row_id,
                        column="id",
                        reason=f"{what} is also used by {others}",
                    )
                )
                shared_id.add(line)
        for claims in self.outputs.values():
            if len(claims) < 2:
                continue
            for c in claims:
                if not c.from_cell and c.line in shared_id:
                    continue  # its name comes from its id, already reported as shared
                others = [o for o in claims if o.line != c.line]
                spelt = sorted({o.name for o in others if o.name != c.name})
                also = (
                    f" (as {', '.join(repr(n) for n in spelt)}; names that differ only in "
                    "case are one file on some systems)"
                    if spelt
                    else ""
                )
                errors.setdefault(c.line, []).append(
                    RowError(
                        row_number=c.line,
                        id=c.row_id,
                        column="output" if c.from_cell else "id",
                        reason=f"output {c.name!r} is also used by "
                        f"{_rows([o.line for o in others])}{also}",
                    )
                )
        return errors


def _rows(lines: list[int]) -> str:
    """``"row 2"`` or ``"rows 2, 7"``."""
    numbers = ", ".join(str(n) for n in sorted(lines))
    return f"row{'s' if len(lines) > 1 else ''} {numbers}"


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

    Example:
        ```python
        from kf2v_tasks.batch.manifest_rows import Claims, parse_row
        from kf2v_tasks.batch.manifest_schema import RowDefaults
        claims = Claims()
        columns = ["first_frame", "last_frame", "seed"]
        row, errors = parse_row(2, ["a.png", "b.png", "7"], columns, "/data", RowDefaults(),
                                claims)
        assert row.first_frame == "/data/a.png" and row.options.seed == 7 and not errors
        row, errors = parse_row(3, ["a.png", "b.png", "x"], columns, "/data", RowDefaults(),
                                claims)
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
        else:
            row_id = cell["id"]
            claims.claim_id(row_id, line)
    else:
        row_id = f"row-{line:04d}"
        claims.claim_id(row_id, line, derived=True)

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

    # model and resolution (what a model accepts is in the models table)
    catalog = active_catalog()
    model: Optional[str] = defaults.model
    if cell["model"]:
        model = cell["model"].lower()
        if catalog.find(model) is None:
            model = None
            fail(
                "model",
                f"{_show(cell['model'])} is not a known model "
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
                f"{_show(cell['resolution'])} is not a resolution "
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

    # duration and driving audio: only where the row's model takes them
    duration = _duration(cell["duration"], defaults.duration, spec, model, fail, row_id)
    audio: Optional[str] = None
    if cell["audio"]:
        if _has_control(cell["audio"]):
            fail("audio", f"{_show(cell['audio'])} contains a control character", row_id)
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
        claims.claim_output(output, line, row_id, from_cell=bool(cell["output"]))

    if errors:
        return None, errors
    assert row_id is not None and output is not None and model is not None
    assert resolution is not None and seed_ok and duration is not None
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
    if value:
        if not _DIGITS_RE.fullmatch(value) or len(value) > 6:
            fail("duration", f"{_show(value)} is not a whole number of seconds", row_id)
            return None
        seconds: Optional[int] = int(value)
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
