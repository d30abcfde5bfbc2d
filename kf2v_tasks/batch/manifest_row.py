"""One manifest row: Pydantic validators turn its cells into a ManifestRow, or into RowErrors.

Each column is a field validator on :class:`ManifestRow` (the generation options on
``_Options``, nested). Pydantic runs every validator and collects every failure, so a row
reports all its problems at once; :func:`parse_row` maps each to a :class:`RowError` naming
the column. A check that needs the row's model reads it from the row's cells, so it runs
even when another cell is bad, and may blame another column (a default resolution the
model lacks is the ``model`` cell's fault).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from kf2v_tasks.batch.manifest_defaults import RowDefaults
from kf2v_tasks.batch.manifest_paths import (
    OUTPUT_SUFFIX,
    has_control,
    output_name,
    resolve_frame,
    show_cell,
)
from kf2v_tasks.dashscope.catalog import ModelSpec, active_catalog
from kf2v_tasks.dashscope.models import (
    NEGATIVE_PROMPT_MAX_CHARS,
    PROMPT_MAX_CHARS,
    SEED_MAX,
    GenerationOptions,
    Resolution,
)

#: Columns the parser understands, in the order messages list them.
KNOWN_COLUMNS: tuple[str, ...] = tuple(
    "id first_frame last_frame prompt negative_prompt model resolution seed prompt_extend "
    "watermark duration audio first_clip output".split()
)
ID_MAX_CHARS = 128
#: Longer prompts are certainly a mistake (a pasted file?), not something to truncate.
PROMPT_ABSURD_CHARS = 100_000

_PROMPT_LIMITS = {"prompt": PROMPT_MAX_CHARS, "negative_prompt": NEGATIVE_PROMPT_MAX_CHARS}
_FLAGS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_ID_CHAR_RE = re.compile(r"[A-Za-z0-9._-]")
_DIGITS_RE = re.compile(r"[0-9]+")


class RowError(BaseModel):
    """One problem with one cell (or a whole row) of the manifest."""

    model_config = ConfigDict(frozen=True)

    row_number: int = Field(description="Line of the file the row starts on.")
    id: Optional[str] = Field(default=None, description="The row's id, when it had a valid one.")
    column: Optional[str] = Field(default=None, description="The bad column; None: whole row.")
    reason: str = Field(description="What is wrong, in words a user can act on.")

    def message(self) -> str:
        """``"row N, column 'c': reason"`` (``"row N: reason"`` for whole-row problems)."""
        where = f"row {self.row_number}" + (f", column {self.column!r}" if self.column else "")
        return f"{where}: {self.reason}"


@dataclass
class _Row:
    """What the validators of one row share (the validation context)."""

    line: int
    base_dir: str
    defaults: RowDefaults
    cells: dict[str, str]  # trimmed, every known column
    claims: dict[str, Any] = field(default_factory=dict)  # the id and output it takes
    model: str = field(init=False)
    spec: Optional[ModelSpec] = field(init=False)  # None: a model name nobody knows

    def __post_init__(self) -> None:
        # Every check that depends on the model reads it here, so it runs even if the
        # model's own cell is bad, as the model's cell is not the only one to blame.
        self.model = self.cells["model"].lower() or self.defaults.model
        self.spec = active_catalog().find(self.model)


def _cell(*fields: str) -> Any:
    """A field validator reading cells; outside :func:`parse_row` values pass unchecked."""

    def wrap(check: Callable[[str, _Row, str], Any]) -> Any:
        def validate(cls: type, value: Any, info: ValidationInfo) -> Any:
            row = info.context
            return check(value, row, info.field_name or "") if isinstance(row, _Row) else value

        return field_validator(*fields, mode="before")(validate)

    return wrap


def _fail(*reasons: str, column: Optional[str]) -> NoReturn:
    """Raise one error per reason, blaming ``column`` (None: the whole row)."""
    ctx = [{"reason": r, "column": column} for r in reasons]
    errors = [PydanticCustomError("manifest", "{reason}", c) for c in ctx]
    line_errors = [{"type": e, "loc": (), "input": None} for e in errors]
    raise ValidationError.from_exception_data("ManifestRow", line_errors)


class _Options(BaseModel):
    """The cells that become the row's GenerationOptions, in the order they are reported."""

    model: Optional[str] = None
    resolution: Optional[Resolution] = None
    duration: Optional[int] = None
    seed: Optional[int] = None
    prompt_extend: Optional[bool] = None
    watermark: Optional[bool] = None

    @_cell("model")
    def _model(value: str, row: _Row, column: str) -> Optional[str]:
        if value and row.spec is None:
            names = ", ".join(active_catalog().names())
            _fail(f"{show_cell(value)} is not a known model (one of: {names})", column=column)
        return row.model

    @_cell("resolution")
    def _resolution(value: str, row: _Row, column: str) -> Optional[Resolution]:
        resolution = row.defaults.resolution
        if value:
            try:
                resolution = Resolution(value.upper())
            except ValueError:
                names = ", ".join(r.value for r in Resolution)
                _fail(f"{show_cell(value)} is not a resolution (one of: {names})", column=column)
        spec = row.spec
        if spec is not None and resolution is not None and resolution.value not in spec.resolutions:
            # Blame the cell the row set; defaults are consistent (RowDefaults checks).
            _fail(
                f"resolution {resolution.value}{'' if value else ' (the default)'} is not "
                f"available for {row.model} (allowed: {', '.join(sorted(spec.resolutions))})",
                column=column if value else "model",
            )
        return resolution

    @_cell("duration")
    def _duration(value: str, row: _Row, column: str) -> Optional[int]:
        seconds = row.defaults.duration
        if value:
            if not _DIGITS_RE.fullmatch(value) or len(value) > 6:
                _fail(f"{show_cell(value)} is not a whole number of seconds", column=column)
            seconds = int(value)
        spec = row.spec
        if spec is None or seconds is None:  # an unknown model is the model cell's error
            return spec.default_duration if spec else seconds
        if not spec.allows_duration(seconds):
            allowed = (
                f"its videos are always {spec.duration_min} s long"
                if spec.duration_min == spec.duration_max
                else f"allowed: {spec.duration_text()} s"
            )
            _fail(
                f"duration {seconds} s{'' if value else ' (the default)'} is not available "
                f"for {row.model} ({allowed})",
                column=column if value else "model",
            )
        return seconds

    @_cell("seed")
    def _seed(value: str, row: _Row, column: str) -> Optional[int]:
        if not value:
            return row.defaults.seed
        # Only plain ASCII digits: int() would also take "+5", "1_000" and "５".
        if not _DIGITS_RE.fullmatch(value) or len(value) > 15 or int(value) > SEED_MAX:
            _fail(f"{show_cell(value)} is not an integer in 0..{SEED_MAX}", column=column)
        return int(value)

    @_cell("prompt_extend", "watermark")
    def _flag(value: str, row: _Row, column: str) -> bool:
        if not value:
            return getattr(row.defaults, column)
        if value.lower() not in _FLAGS:
            _fail(f"{show_cell(value)} is not a boolean (true/false, 1/0, yes/no)", column=column)
        return _FLAGS[value.lower()]


class ManifestRow(BaseModel):
    """One valid manifest row, resolved and ready to validate frames and submit.

    ``row_number`` is the file line the row starts on (header = line 1, see
    :mod:`kf2v_tasks.batch.manifest`). ``first_frame``/``last_frame`` are resolved: relative
    paths are joined to the manifest's folder; absolute paths and URLs pass through unchanged.
    """

    model_config = ConfigDict(frozen=True)

    row_number: int = Field(description="Line of the file the row starts on (header is line 1).")
    id: str = Field(description="The id cell, or row-<line> zero-padded to 4 digits.")
    first_clip: Optional[str] = Field(
        default=None, description="Clip (mp4/mov) to continue instead of a first frame."
    )
    first_frame: Optional[str] = Field(
        default=None, description="First frame path or URL, resolved (None with a clip)."
    )
    last_frame: Optional[str] = Field(
        default=None, description="Last frame path or URL, resolved (optional with a clip)."
    )
    prompt: Optional[str] = Field(default=None, description="Prompt (cell or default).")
    negative_prompt: Optional[str] = Field(default=None, description="Negative prompt.")
    options: GenerationOptions = Field(description="Model, resolution, seed and flags.")
    audio: Optional[str] = Field(
        default=None, description="Driving audio (mp3/wav) path or URL, resolved; media models."
    )
    output: str = Field(description="Output name relative to the output root, ends in .mp4.")
    raw: dict[str, str] = Field(
        default_factory=dict, description="The row's cells as read, by lower-cased column."
    )
    warnings: list[str] = Field(default_factory=list, description="Non-fatal remarks.")

    @_cell("id")
    def _id(value: str, row: _Row, column: str) -> str:
        if not value:
            row.claims.update(id=f"row-{row.line:04d}", derived=True)
            return row.claims["id"]
        if len(value) > ID_MAX_CHARS:
            _fail(f"id has {len(value)} characters (at most {ID_MAX_CHARS})", column=column)
        bad = next(((i, c) for i, c in enumerate(value, 1) if not _ID_CHAR_RE.fullmatch(c)), None)
        if bad:
            _fail(
                f"id {show_cell(value)} contains {bad[1]!r} at position {bad[0]}; "
                "allowed: letters A-Z a-z, digits, '.', '_' and '-'",
                column=column,
            )
        row.claims.update(id=value, derived=False)
        return value

    @_cell("first_clip")
    def _first_clip(value: str, row: _Row, column: str) -> Optional[str]:
        if not value:
            return None
        problems = []
        if row.cells["first_frame"]:
            problems.append("a row continues a first_clip or starts from a first_frame, not both")
        if has_control(value):
            problems.append(f"{show_cell(value)} contains a control character")
        if row.spec is not None and not row.spec.clip:
            takers = ", ".join(s.name for s in active_catalog().models if s.clip)
            problems.append(f"{row.model} cannot continue a clip (models that can: {takers})")
        return _resolved(value, row, column, problems)

    @_cell("first_frame", "last_frame")
    def _frame(value: str, row: _Row, column: str) -> Optional[str]:
        if not value:
            if not row.cells["first_clip"]:
                _fail("is empty; every row needs a first and a last frame", column=column)
            return None
        problems = (
            [f"{show_cell(value)} contains a control character"] if has_control(value) else []
        )
        return _resolved(value, row, column, problems)

    @_cell("prompt", "negative_prompt")
    def _prompt(value: str, row: _Row, column: str) -> Optional[str]:
        text = value or getattr(row.defaults, column) or None
        if text is not None and len(text) > PROMPT_ABSURD_CHARS:
            _fail(
                f"has {len(text)} characters; over {PROMPT_ABSURD_CHARS} is surely a mistake "
                f"(the service keeps {_PROMPT_LIMITS[column]})",
                column=column,
            )
        return text

    @_cell("options")
    def _options(value: dict[str, str], row: _Row, column: str) -> dict[str, Any]:
        # Pydantic then builds the GenerationOptions; its own checks are a backstop.
        return _Options.model_validate(value, context=row).model_dump()

    @_cell("audio")
    def _audio(value: str, row: _Row, column: str) -> Optional[str]:
        if not value:
            return None
        problems = []
        if row.cells["first_clip"]:
            problems.append("a row that continues a first_clip takes no driving audio")
        if has_control(value):
            problems.append(f"{show_cell(value)} contains a control character")
        elif row.spec is not None and not row.spec.audio:
            takers = ", ".join(s.name for s in active_catalog().models if s.audio)
            problems.append(
                f"{row.model} takes no driving audio"
                + (f" (models that do: {takers})" if takers else "")
            )
        return _resolved(value, row, column, problems)

    @_cell("output")
    def _output(value: str, row: _Row, column: str) -> str:
        row_id = row.claims.get("id")  # claimed by the id validator, which runs first
        name = _output(value) if value else f"{row_id or ''}{OUTPUT_SUFFIX}"
        if row_id is not None:  # unique names are checked once every row is read
            row.claims.update(output=name, from_cell=bool(value))
        return name

    @model_validator(mode="after")
    def _remarks(self, info: ValidationInfo) -> ManifestRow:
        if isinstance(info.context, _Row):  # the list is ours to fill while parsing
            for column, limit in _PROMPT_LIMITS.items():
                text = getattr(self, column)
                if text is not None and len(text) > limit:
                    self.warnings.append(
                        f"{column} has {len(text)} characters; the service keeps the first "
                        f"{limit} and silently drops the rest"
                    )
            if self.first_clip:  # said with the estimate, before anything is paid
                seconds = self.options.duration
                self.warnings.append(
                    f"first_clip: the video is the clip continued to {seconds} s in total; "
                    f"all {seconds} s are billed, the clip's own seconds included"
                )
        return self


def parse_row(
    line: int, raw: dict[str, str], base_dir: str, defaults: RowDefaults
) -> tuple[Union[ManifestRow, list[RowError]], dict[str, Any]]:
    """Validate one row's cells (``raw``: by column): the row or its errors, and its claims.

    The claims (``id``, ``derived``, ``output``, ``from_cell``) are what the row takes even
    when it is invalid: whether another row takes them too is known only once all are read.
    """
    cells = {c: raw.get(c, "").strip() for c in KNOWN_COLUMNS}
    row = _Row(line, base_dir, defaults, cells)
    data = {**cells, "row_number": line, "raw": raw}
    data["options"] = {c: cells[c] for c in _Options.model_fields}
    try:
        return ManifestRow.model_validate(data, context=row), row.claims
    except ValidationError as exc:
        errors = []
        for e in exc.errors(include_url=False):
            ctx = e.get("ctx") or {}
            where = [c for c in e["loc"] if c in KNOWN_COLUMNS]  # ("options", "seed") is seed
            column = ctx.get("column", where[-1] if where else None)
            reason = str(ctx.get("reason", e["msg"]))
            errors.append(
                RowError(row_number=line, id=row.claims.get("id"), column=column, reason=reason)
            )
        return errors, row.claims


def _resolved(value: str, row: _Row, column: str, problems: list[str]) -> str:
    """A path cell resolved against the manifest's folder, unless it has problems."""
    if problems:
        _fail(*problems, column=column)
    return resolve_frame(value, row.base_dir)


def _output(value: str) -> str:
    try:
        return output_name(value)
    except ValueError as exc:
        _fail(str(exc), column="output")
