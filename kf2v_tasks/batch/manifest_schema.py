"""What a manifest holds: its columns, the row defaults, and the typed rows and errors of a parse.

Row numbers are file line numbers as an editor shows them (see :mod:`kf2v_tasks.batch.manifest`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kf2v_tasks.dashscope.catalog import BUILTIN_MODELS, get_model
from kf2v_tasks.dashscope.models import (
    DEFAULT_MODEL,
    SEED_MAX,
    GenerationOptions,
    Resolution,
)

#: Columns the parser understands. Any other named column is refused (a misspelt ``promt``
#: must not become a video without a prompt) unless the caller passes ``extra_columns``.
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
    "duration",
    "audio",
    "first_clip",
    "output",
)
REQUIRED_COLUMNS: tuple[str, ...] = ("first_frame", "last_frame")

#: Columns that name a setting no model has: refused even with ``extra_columns``, since
#: carrying them through would look as if they had been applied. (``duration`` and ``audio``
#: are real columns now: a row whose model does not take them is refused, row by row.)
UNSUPPORTED_COLUMNS: dict[str, str] = {}

#: What a caller says about columns of its own: False (refuse every unknown column), True
#: (accept them all) or the names of the ones to accept (any other is still refused).
ExtraColumns = Union[bool, list[str]]

#: The columns of ``results.csv``, in order. Defined here (not in ``results``) so the
#: manifest can refuse a column of the user's own that would collide with one of them.
RESULT_FILE_COLUMNS: tuple[str, ...] = (
    "row",
    "id",
    "status",
    "output",
    "task_id",
    "error_code",
    "error_message",
    "cost",
    "sha256",
    "bytes",
    "reattached",
    "possible_duplicate",
    "account",
    "earlier_run",
)


def resolution_names(resolutions: Iterable[Union[Resolution, str]]) -> str:
    """The resolutions as a sorted, comma-separated list, for messages."""
    return ", ".join(sorted(str(getattr(r, "value", r)) for r in resolutions))


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
    model: str = Field(
        default=DEFAULT_MODEL,
        examples=[spec.name for spec in BUILTIN_MODELS],
        description="Model for rows whose model cell is empty (wan2.2-kf2v-flash, "
        "wanx2.1-kf2v-plus, wan2.1-kf2v-plus, wan2.7-i2v, or one of a models file).",
    )
    resolution: Optional[Resolution] = Field(
        default=None,
        description="Resolution for rows whose resolution cell is empty; empty: each row's "
        "model's own default (kf2v 720P, wan2.7-i2v 1080P).",
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
    duration: Optional[int] = Field(
        default=None,
        ge=1,
        description="Video length (s) for rows whose duration cell is empty; empty: each "
        "model's default (5 s). kf2v models take 5 only, wan2.7-i2v 2..15.",
    )

    @field_validator("model", mode="before")
    @classmethod
    def _model_name(cls, value: Any) -> Any:
        value = getattr(value, "value", value)  # a Kf2vModel member is its name
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _fits_model(self) -> RowDefaults:
        name = self.model
        spec = get_model(name)  # an unknown model is a ValueError naming the known ones
        if self.resolution is not None and self.resolution.value not in spec.resolutions:
            raise ValueError(
                f"default resolution {self.resolution.value} is not available for the default "
                f"model {name} (allowed: {', '.join(sorted(spec.resolutions))})"
            )
        if self.duration is not None and not spec.allows_duration(self.duration):
            raise ValueError(
                f"default duration {self.duration} s is not available for the default model "
                f"{name} (allowed: {spec.duration_text()} s)"
            )
        return self


class ManifestRow(BaseModel):
    """One valid manifest row, resolved and ready to validate frames and submit.

    ``row_number`` is the file line the row starts on (header = line 1, see
    :mod:`kf2v_tasks.batch.manifest`). ``first_frame``/``last_frame`` are resolved: relative
    paths are joined to the manifest's folder; absolute paths and URLs pass through unchanged.
    """

    model_config = ConfigDict(frozen=True)

    row_number: int = Field(description="Line of the file the row starts on (header is line 1).")
    id: str = Field(description="The id cell, or row-<line> zero-padded to 4 digits.")
    first_frame: Optional[str] = Field(
        default=None, description="First frame path or URL, resolved (None with a clip)."
    )
    last_frame: Optional[str] = Field(
        default=None, description="Last frame path or URL, resolved (optional with a clip)."
    )
    first_clip: Optional[str] = Field(
        default=None, description="Clip (mp4/mov) to continue instead of a first frame."
    )
    audio: Optional[str] = Field(
        default=None, description="Driving audio (mp3/wav) path or URL, resolved; media models."
    )
    prompt: Optional[str] = Field(default=None, description="Prompt (cell or default).")
    negative_prompt: Optional[str] = Field(default=None, description="Negative prompt.")
    options: GenerationOptions = Field(description="Model, resolution, seed and flags.")
    output: str = Field(description="Output name relative to the output root, ends in .mp4.")
    raw: dict[str, str] = Field(
        default_factory=dict, description="The row's cells as read, by lower-cased column."
    )
    warnings: list[str] = Field(default_factory=list, description="Non-fatal remarks.")


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
