"""The values a manifest row takes for the optional columns it leaves empty."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kf2v_tasks.dashscope.catalog import BUILTIN_MODELS, get_model
from kf2v_tasks.dashscope.models import DEFAULT_MODEL, SEED_MAX, Resolution

__all__ = ["RowDefaults"]


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
        spec = get_model(self.model)  # an unknown model is a ValueError naming the known ones
        if self.resolution is not None and self.resolution.value not in spec.resolutions:
            raise ValueError(
                f"default resolution {self.resolution.value} is not available for the default "
                f"model {self.model} (allowed: {', '.join(sorted(spec.resolutions))})"
            )
        if self.duration is not None and not spec.allows_duration(self.duration):
            raise ValueError(
                f"default duration {self.duration} s is not available for the default model "
                f"{self.model} (allowed: {spec.duration_text()} s)"
            )
        return self
