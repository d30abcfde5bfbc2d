"""Typed models of the wire protocols' requests, and the constants and enums both sides share.

Two create protocols share one task API (see :mod:`kf2v_tasks.dashscope.catalog`): kf2v
(``first_frame_url``/``last_frame_url`` on the image2video path) and media (an
``input.media`` list on the video-generation path, ``wan2.7-i2v``). What a model accepts
(resolutions, durations, audio) is read from the models table, not written here.

The simulator imports the *constants and enums* from here (model names, resolutions,
limits) so both sides agree on the documented protocol; it never uses the client's
request building or parsing code, so it can still catch the client's mistakes.
"""

from __future__ import annotations

import warnings
from enum import StrEnum
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from kf2v_tasks.dashscope.catalog import (
    BUILTIN_MODELS,
    KF2V_CREATE_PATH,
    MEDIA_CREATE_PATH,
    ModelSpec,
    Protocol,
    get_model,
)

#: Path of the kf2v create endpoint, relative to the ``.../api/v1`` base.
CREATE_PATH = KF2V_CREATE_PATH
#: Path of the media-protocol create endpoint (``wan2.7-i2v``).
MEDIA_PATH = MEDIA_CREATE_PATH

PROMPT_MAX_CHARS = 800
NEGATIVE_PROMPT_MAX_CHARS = 500
SEED_MAX = 2_147_483_647
#: The length of every kf2v video, and the default length of the others.
VIDEO_DURATION_SECONDS = 5
#: The default model.
DEFAULT_MODEL = "wan2.2-kf2v-flash"

#: A ``first_clip`` (reference §16): mp4 or mov, 2-10 s, each side 240-4096 px, aspect
#: 1:8-8:1, at most 100 MB. The output is the clip continued up to ``duration`` in total.
CLIP_FORMATS = ("mp4", "mov")
CLIP_MIN_SECONDS, CLIP_MAX_SECONDS = 2.0, 10.0
CLIP_MIN_SIDE, CLIP_MAX_SIDE = 240, 4096
CLIP_MAX_ASPECT = 8.0
CLIP_MAX_BYTES = 100 * 1024 * 1024


class Kf2vModel(StrEnum):
    """The kf2v-protocol models of the built-in table (others: ``catalog.active_catalog()``)."""

    WAN22_FLASH = "wan2.2-kf2v-flash"
    WANX21_PLUS = "wanx2.1-kf2v-plus"  # Beijing name
    WAN21_PLUS = "wan2.1-kf2v-plus"  # Singapore (international) name


class Resolution(StrEnum):
    """Resolution tier: it sets the pixel count; the aspect ratio follows the first frame."""

    P480 = "480P"
    P720 = "720P"
    P1080 = "1080P"


#: Resolutions each built-in kf2v model accepts, from the models table (reference §1.3).
MODEL_RESOLUTIONS: dict[Kf2vModel, frozenset[Resolution]] = {
    Kf2vModel(spec.name): frozenset(Resolution(r) for r in spec.resolutions)
    for spec in BUILTIN_MODELS
    if spec.protocol is Protocol.KF2V
}

#: Total pixel budget per tier (the output keeps the first frame's aspect ratio).
RESOLUTION_PIXELS: dict[Resolution, int] = {
    Resolution.P480: 832 * 480,
    Resolution.P720: 1280 * 720,
    Resolution.P1080: 1920 * 1080,
}


class TaskStatus(StrEnum):
    """Lifecycle of a remote task: PENDING → RUNNING → SUCCEEDED | FAILED; CANCELED; UNKNOWN."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    UNKNOWN = "UNKNOWN"

    @property
    def is_terminal(self) -> bool:
        """Whether the task can no longer change (UNKNOWN means gone or expired)."""
        return self in _TERMINAL


_TERMINAL = frozenset(
    {TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELED, TaskStatus.UNKNOWN}
)


class GenerationOptions(BaseModel):
    """Everything about a generation except the frames and prompts.

    Example:
        ```python
        from kf2v_tasks.dashscope.models import GenerationOptions
        opts = GenerationOptions(model="wan2.2-kf2v-flash", resolution="480P", seed=7)
        ```
    """

    model_config = ConfigDict(
        frozen=True,
        use_enum_values=False,
        json_schema_extra={
            "description": "Model, resolution, seed, prompt rewriting and watermark."
        },
    )

    model: str = Field(
        default=DEFAULT_MODEL,
        examples=[spec.name for spec in BUILTIN_MODELS],
        description="Model to generate with: wan2.2-kf2v-flash, wanx2.1-kf2v-plus, "
        "wan2.1-kf2v-plus, wan2.7-i2v (and its dated variants), or one of a models file.",
    )
    resolution: Optional[Resolution] = Field(
        default=None,
        description="Resolution tier (480P, 720P, 1080P; the 2.1 plus models take 720P only, "
        "wan2.7-i2v 720P or 1080P); empty: the model's own default (kf2v 720P, wan2.7-i2v "
        "1080P).",
    )
    seed: Optional[int] = Field(
        default=None,
        ge=0,
        le=SEED_MAX,
        description="Random seed (0..2147483647); empty for a random one.",
    )
    prompt_extend: bool = Field(
        default=True, description="Let the service rewrite the prompt with an LLM."
    )
    watermark: bool = Field(default=False, description='Add the "AI生成" watermark.')
    duration: int = Field(
        default=VIDEO_DURATION_SECONDS,
        ge=1,
        description="Video length in seconds (kf2v: 5 only; wan2.7-i2v: 2..15).",
    )

    @field_validator("model", mode="before")
    @classmethod
    def _model_name(cls, value: Any) -> Any:
        # A Kf2vModel member is its name; so is " WAN2.7-I2V " typed in a form.
        value = getattr(value, "value", value)
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _fits_model(self) -> GenerationOptions:
        spec = get_model(self.model)  # UnknownModelError is a ValueError
        if self.resolution is None:  # the service's own default for the model
            object.__setattr__(self, "resolution", Resolution(spec.resolution))
        assert self.resolution is not None
        if self.resolution.value not in spec.resolutions:
            names = ", ".join(sorted(spec.resolutions))
            raise ValueError(
                f"resolution {self.resolution.value} is not available for {self.model} "
                f"(allowed: {names})"
            )
        if not spec.allows_duration(self.duration):
            raise ValueError(
                f"duration {self.duration} s is not available for {self.model} "
                f"(allowed: {spec.duration_text()} s)"
            )
        return self

    @property
    def spec(self) -> ModelSpec:
        """The models-table entry of :attr:`model`."""
        return get_model(self.model)

    @property
    def protocol(self) -> Protocol:
        """The create protocol of :attr:`model`."""
        return self.spec.protocol

    def parameters(self) -> dict[str, Any]:
        """The ``parameters`` object of the create body."""
        params: dict[str, Any] = {
            "resolution": self.resolution.value,
            "prompt_extend": self.prompt_extend,
            "watermark": self.watermark,
            "duration": self.duration,
        }
        if self.seed is not None:
            params["seed"] = self.seed
        return params


class Kf2vRequest(BaseModel):
    """A complete create-task request: frames as they will be sent, prompts and options.

    ``first_frame_url``/``last_frame_url`` are what goes on the wire: a public
    ``http(s)`` URL, a ``data:`` URI or an ``oss://`` temporary-upload URL. A model that
    continues clips takes ``clip_url`` instead of the first frame (``first_clip``), with or
    without a last frame.

    Example:
        ```python
        from kf2v_tasks.dashscope.models import Kf2vRequest
        req = Kf2vRequest(
            first_frame_url="https://example.com/a.png",
            last_frame_url="https://example.com/b.png",
            prompt="a slow dolly shot",
        )
        body = req.to_payload()
        ```
    """

    model_config = ConfigDict(frozen=True)

    first_frame_url: Optional[str] = Field(
        default=None, min_length=1, description="First frame as sent (None with a clip)."
    )
    last_frame_url: Optional[str] = Field(
        default=None, min_length=1, description="Last frame as sent (optional with a clip)."
    )
    clip_url: Optional[str] = Field(
        default=None, min_length=1, description="first_clip as sent, to be continued."
    )
    prompt: Optional[str] = Field(default=None, description="Text prompt (≤ 800 characters).")
    negative_prompt: Optional[str] = Field(
        default=None, description="What to avoid (≤ 500 characters)."
    )
    audio_url: Optional[str] = Field(
        default=None,
        description="Driving audio as sent (media-protocol models only).",
    )
    options: GenerationOptions = Field(default_factory=GenerationOptions)

    @model_validator(mode="after")
    def _inputs_fit_model(self) -> Kf2vRequest:
        if self.audio_url is not None and not self.options.spec.audio:
            raise ValueError(f"{self.options.model} takes no driving audio")
        if self.clip_url is None:
            if self.first_frame_url is None or self.last_frame_url is None:
                raise ValueError("a first and a last frame are needed (or a first_clip)")
        elif not self.options.spec.clip:
            raise ValueError(f"{self.options.model} cannot continue a first_clip")
        elif self.first_frame_url is not None or self.audio_url is not None:
            # §16: first_clip goes alone or with a last_frame; nothing else with it
            raise ValueError("a first_clip takes no first frame or driving audio")
        return self

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _warn_long(cls, v: Optional[str], info: ValidationInfo) -> Optional[str]:
        limit = PROMPT_MAX_CHARS if info.field_name == "prompt" else NEGATIVE_PROMPT_MAX_CHARS
        warn_if_truncated(info.field_name, v, limit)
        return v

    @property
    def uses_oss(self) -> bool:
        """Whether an ``oss://`` input needs ``X-DashScope-OssResourceResolve: enable``."""
        urls = (self.first_frame_url, self.last_frame_url, self.audio_url, self.clip_url)
        return any(u.startswith("oss://") for u in urls if u)

    @property
    def create_path(self) -> str:
        """Where the create goes: the image2video (kf2v) or video-generation (media) path."""
        return self.options.spec.create_path

    def to_payload(self) -> dict[str, Any]:
        """The JSON create body, in the model's protocol (kf2v or media).

        Example:
            ```python
            from kf2v_tasks.dashscope.models import GenerationOptions, Kf2vRequest
            req = Kf2vRequest(first_frame_url="https://h/a.png", last_frame_url="https://h/b.png",
                              options=GenerationOptions(model="wan2.7-i2v", duration=8))
            body = req.to_payload()
            assert [m["type"] for m in body["input"]["media"]] == ["first_frame", "last_frame"]
            assert body["parameters"]["duration"] == 8
            ```
        """
        inp: dict[str, Any] = {}
        if self.prompt:
            inp["prompt"] = self.prompt
        if self.negative_prompt:
            inp["negative_prompt"] = self.negative_prompt
        if self.options.protocol is Protocol.MEDIA:
            items = (
                ("first_clip", self.clip_url),
                ("first_frame", self.first_frame_url),
                ("last_frame", self.last_frame_url),
                ("driving_audio", self.audio_url),
            )
            inp["media"] = [{"type": kind, "url": url} for kind, url in items if url]
        else:
            inp = {
                "first_frame_url": self.first_frame_url,
                "last_frame_url": self.last_frame_url,
                **inp,
            }
        return {
            "model": self.options.model,
            "input": inp,
            "parameters": self.options.parameters(),
        }


class PromptTruncationWarning(UserWarning):
    """The service silently truncates prompts longer than its limit."""


def warn_if_truncated(field: str, value: Optional[str], limit: int) -> None:
    """Warn (not fail) when ``value`` is longer than the service keeps."""
    if value is not None and len(value) > limit:
        warnings.warn(
            f"{field} has {len(value)} characters; the service keeps the first {limit} "
            "and silently drops the rest",
            PromptTruncationWarning,
            stacklevel=3,
        )
