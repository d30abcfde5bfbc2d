"""The entry of the models table: :class:`ModelSpec`, its protocols and fact sources.

See :mod:`kf2v_tasks.dashscope.catalog` for the table itself and how to change it.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "ANY_REGION",
    "FACTS",
    "KF2V_CREATE_PATH",
    "MEDIA_CREATE_PATH",
    "MIB",
    "FactSource",
    "ModelSpec",
    "Protocol",
    "UnknownModelError",
    "by_region",
]

#: Create path of the kf2v protocol (relative to ``.../api/v1``).
KF2V_CREATE_PATH = "/services/aigc/image2video/video-synthesis"
#: Create path of the media protocol (the SDK's ``videos.SERVICE``).
MEDIA_CREATE_PATH = "/services/aigc/video-generation/video-synthesis"

MIB = 1024 * 1024


class Protocol(StrEnum):
    """How a model's create request is shaped (and where it is sent)."""

    KF2V = "kf2v"  # image2video path, first_frame_url / last_frame_url
    MEDIA = "media"  # video-generation path, input.media list


class FactSource(StrEnum):
    """Where a fact of the table comes from, strongest first."""

    SDK = "sdk"
    OFFICIAL_DOC = "official-doc"
    THIRD_PARTY = "third-party (UNCERTAIN)"
    ASSUMED = "assumed (UNCERTAIN)"
    USER = "user"  # set by a models file or register_model


#: The facts a :class:`ModelSpec` sources.
FACTS = (
    "protocol",
    "resolutions",
    "durations",
    "frame_limits",
    "audio",
    "prompt",
    "prices",
    "regions",
    "concurrency",
)

#: The ``prices`` key of a price that holds in every region (a flat ``{res: price}``).
ANY_REGION = "any"


class UnknownModelError(ValueError):
    """A model name the table has no entry for."""


class ModelSpec(BaseModel):
    """One model: protocol, what it accepts, what it costs, and the source of each fact."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(min_length=1, description="Model name as sent in the create body.")
    match_prefix: bool = Field(
        default=False, description="Also match dated variants: names starting with name + '-'."
    )
    protocol: Protocol = Field(description="kf2v or media.")
    resolutions: tuple[str, ...] = Field(description="Resolution tiers offered, e.g. 720P.")
    default_resolution: Optional[str] = Field(
        default=None, description="Tier used when none is asked (default: 720P if offered)."
    )
    duration_min: int = Field(default=5, ge=1, description="Shortest video (s).")
    duration_max: int = Field(default=5, ge=1, description="Longest video (s).")
    default_duration: int = Field(default=5, ge=1, description="Length when none is asked (s).")
    min_side: int = Field(default=240, ge=1, description="Smallest frame side (px).")
    max_side: int = Field(default=8000, ge=1, description="Largest frame side (px).")
    max_frame_bytes: int = Field(default=10 * MIB, ge=1, description="Largest frame file.")
    max_aspect: Optional[float] = Field(
        default=None, ge=1, description="Widest accepted aspect, either way (8: 1:8..8:1)."
    )
    audio: bool = Field(default=False, description="Takes a driving audio; output has sound.")
    audio_formats: tuple[str, ...] = Field(
        default=(), description="Driving-audio formats accepted (mp3, wav)."
    )
    audio_min_seconds: float = Field(default=0.0, ge=0, description="Shortest driving audio.")
    audio_max_seconds: float = Field(default=0.0, ge=0, description="Longest driving audio.")
    audio_max_bytes: int = Field(default=15 * MIB, ge=1, description="Largest audio file.")
    clip: bool = Field(
        default=False, description="Continues a first_clip (mp4/mov, the limits of §16)."
    )
    prompt_max_chars: int = Field(default=800, ge=1, description="Longer prompts are cut.")
    negative_prompt_max_chars: int = Field(default=500, ge=1)
    currency: str = Field(default="CNY", description="Currency of prices.")
    prices: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Region -> resolution -> price per generated second; a flat "
        "{resolution: price} holds in every region. A region without one: price unknown.",
    )
    regions: tuple[str, ...] = Field(
        default=(), description="Regions the docs list the model in (empty: not known)."
    )
    price_note: str = Field(default="", description="Where the prices come from.")
    concurrency: Optional[int] = Field(
        default=None, ge=1, description="Tasks one account may run at once of this model."
    )
    creates_per_second: Optional[float] = Field(
        default=None, gt=0, description="Creates per second one account may send for this model."
    )
    sources: dict[str, FactSource] = Field(
        default_factory=dict, description="Fact (see FACTS) -> where it comes from."
    )

    @field_validator("resolutions", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return tuple(str(v).strip().upper() for v in value)
        return value

    @field_validator("prices", mode="before")
    @classmethod
    def _price_keys(cls, value: Any) -> Any:
        return by_region(value) if isinstance(value, Mapping) else value

    def price(self, region: str, resolution: str) -> Optional[float]:
        """Price per second in ``region`` at ``resolution``; ``None``: not known there."""
        res = resolution.upper()
        for key in (region.lower(), ANY_REGION):
            if res in self.prices.get(key, {}):
                return self.prices[key][res]
        return None

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        if not self.resolutions:
            raise ValueError(f"model {self.name}: resolutions is empty")
        if not self.duration_min <= self.default_duration <= self.duration_max:
            raise ValueError(
                f"model {self.name}: default_duration {self.default_duration} is not in "
                f"{self.duration_min}..{self.duration_max}"
            )
        if self.min_side > self.max_side:
            raise ValueError(f"model {self.name}: min_side is larger than max_side")
        if self.default_resolution and self.default_resolution.upper() not in self.resolutions:
            raise ValueError(f"model {self.name}: default_resolution is not offered")
        if self.audio and not self.audio_formats:
            raise ValueError(f"model {self.name}: audio needs audio_formats")
        if self.protocol is Protocol.KF2V and self.audio:
            raise ValueError(f"model {self.name}: the kf2v protocol has no audio input")
        if self.protocol is Protocol.KF2V and self.clip:
            raise ValueError(f"model {self.name}: the kf2v protocol has no first_clip input")
        if any(p < 0 for by_res in self.prices.values() for p in by_res.values()):
            raise ValueError(f"model {self.name}: prices must be >= 0")
        return self

    @property
    def create_path(self) -> str:
        """The create endpoint of this model's protocol."""
        return KF2V_CREATE_PATH if self.protocol is Protocol.KF2V else MEDIA_CREATE_PATH

    @property
    def resolution(self) -> str:
        """The default tier: ``default_resolution``, else 720P if offered, else the first."""
        if self.default_resolution:
            return self.default_resolution.upper()
        return "720P" if "720P" in self.resolutions else self.resolutions[0]

    def matches(self, model: str) -> bool:
        """Whether ``model`` is this entry (or, with ``match_prefix``, a dated variant)."""
        return model == self.name or (self.match_prefix and model.startswith(self.name + "-"))

    def durations(self) -> list[int]:
        """Every allowed length in seconds."""
        return list(range(self.duration_min, self.duration_max + 1))

    def allows_duration(self, seconds: int) -> bool:
        """Whether ``seconds`` is an allowed length."""
        return self.duration_min <= seconds <= self.duration_max

    def duration_text(self) -> str:
        """``"5"`` or ``"2..15"``, for messages."""
        if self.duration_min == self.duration_max:
            return str(self.duration_min)
        return f"{self.duration_min}..{self.duration_max}"

    def source(self, fact: str) -> FactSource:
        """Where ``fact`` comes from (unsourced facts count as assumed)."""
        return self.sources.get(fact, FactSource.ASSUMED)


def by_region(prices: Mapping[str, Any]) -> dict[str, Any]:
    """``prices`` as region -> resolution -> price; a flat ``{res: price}`` is every region's."""
    if not any(isinstance(v, Mapping) for v in prices.values()):
        return {ANY_REGION: {str(k).strip().upper(): v for k, v in prices.items()}}
    return {
        str(region).strip().lower(): (
            {str(k).strip().upper(): v for k, v in by_res.items()}
            if isinstance(by_res, Mapping)
            else by_res
        )
        for region, by_res in prices.items()
    }
