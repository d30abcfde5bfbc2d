"""Typed models of the kf2v wire protocol: requests, task states and usage.

The simulator imports the *constants and enums* from here (model names, resolutions,
limits) so both sides agree on the documented protocol; it never uses the client's
request building or parsing code, so it can still catch the client's mistakes.
"""

from __future__ import annotations

import warnings
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: Path of the kf2v create endpoint, relative to the ``.../api/v1`` base.
CREATE_PATH = "/services/aigc/image2video/video-synthesis"

PROMPT_MAX_CHARS = 800
NEGATIVE_PROMPT_MAX_CHARS = 500
SEED_MAX = 2_147_483_647
VIDEO_DURATION_SECONDS = 5

#: DashScope's task times are "YYYY-MM-DD HH:mm:ss.SSS" in UTC+8 with no zone suffix.
SERVICE_TZ = timezone(timedelta(hours=8))
SERVICE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


class Kf2vModel(StrEnum):
    """The kf2v models the service offers."""

    WAN22_FLASH = "wan2.2-kf2v-flash"
    WANX21_PLUS = "wanx2.1-kf2v-plus"  # Beijing name
    WAN21_PLUS = "wan2.1-kf2v-plus"  # Singapore (international) name


class Resolution(StrEnum):
    """Resolution tier: it sets the pixel count; the aspect ratio follows the first frame."""

    P480 = "480P"
    P720 = "720P"
    P1080 = "1080P"


#: Resolutions each model accepts (reference §1.3; wan2.1 plus documented as 720P only).
MODEL_RESOLUTIONS: dict[Kf2vModel, frozenset[Resolution]] = {
    Kf2vModel.WAN22_FLASH: frozenset({Resolution.P480, Resolution.P720, Resolution.P1080}),
    Kf2vModel.WANX21_PLUS: frozenset({Resolution.P720}),
    Kf2vModel.WAN21_PLUS: frozenset({Resolution.P720}),
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

    model: Kf2vModel = Field(
        default=Kf2vModel.WAN22_FLASH, description="kf2v model to generate with."
    )
    resolution: Resolution = Field(
        default=Resolution.P720,
        description="Resolution tier (480P, 720P, 1080P; the 2.1 plus models take 720P only).",
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
    duration: Literal[5] = Field(default=5, description="Video length in seconds (fixed at 5).")

    @model_validator(mode="after")
    def _resolution_fits_model(self) -> GenerationOptions:
        allowed = MODEL_RESOLUTIONS[self.model]
        if self.resolution not in allowed:
            names = ", ".join(sorted(r.value for r in allowed))
            raise ValueError(
                f"resolution {self.resolution.value} is not available for {self.model.value} "
                f"(allowed: {names})"
            )
        return self

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
    ``http(s)`` URL, a ``data:`` URI or an ``oss://`` temporary-upload URL.

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

    first_frame_url: str = Field(min_length=1, description="First frame as sent.")
    last_frame_url: str = Field(min_length=1, description="Last frame as sent.")
    prompt: Optional[str] = Field(default=None, description="Text prompt (≤ 800 characters).")
    negative_prompt: Optional[str] = Field(
        default=None, description="What to avoid (≤ 500 characters)."
    )
    options: GenerationOptions = Field(default_factory=GenerationOptions)

    @field_validator("prompt")
    @classmethod
    def _warn_long_prompt(cls, v: Optional[str]) -> Optional[str]:
        warn_if_truncated("prompt", v, PROMPT_MAX_CHARS)
        return v

    @field_validator("negative_prompt")
    @classmethod
    def _warn_long_negative(cls, v: Optional[str]) -> Optional[str]:
        warn_if_truncated("negative_prompt", v, NEGATIVE_PROMPT_MAX_CHARS)
        return v

    @property
    def uses_oss(self) -> bool:
        """Whether an ``oss://`` input needs ``X-DashScope-OssResourceResolve: enable``."""
        return self.first_frame_url.startswith("oss://") or self.last_frame_url.startswith("oss://")

    def to_payload(self) -> dict[str, Any]:
        """The JSON body of ``POST /services/aigc/image2video/video-synthesis``."""
        inp: dict[str, Any] = {
            "first_frame_url": self.first_frame_url,
            "last_frame_url": self.last_frame_url,
        }
        if self.prompt:
            inp["prompt"] = self.prompt
        if self.negative_prompt:
            inp["negative_prompt"] = self.negative_prompt
        return {
            "model": self.options.model.value,
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


def parse_service_time(value: Any) -> Optional[datetime]:
    """Parse DashScope's ``"YYYY-MM-DD HH:mm:ss.SSS"`` (UTC+8) into an aware datetime."""
    if not value or not isinstance(value, str):
        return None
    try:
        return datetime.strptime(value, SERVICE_TIME_FORMAT).replace(tzinfo=SERVICE_TZ)
    except ValueError:
        try:
            return datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=SERVICE_TZ)
        except ValueError:
            return None


def format_service_time(value: datetime) -> str:
    """Format an aware datetime the way DashScope does (UTC+8, milliseconds)."""
    return value.astimezone(SERVICE_TZ).strftime(SERVICE_TIME_FORMAT)[:-3]


class Usage(BaseModel):
    """Billing usage of a SUCCEEDED task (``SR`` on 2.2 models, ``video_ratio`` on 2.1).

    Example:
        ```python
        from kf2v_tasks.dashscope.models import Usage
        usage = Usage.model_validate({"video_duration": 5, "video_count": 1, "SR": 480})
        assert usage.resolution == "480P" and usage.video_duration == 5
        ```
    """

    model_config = ConfigDict(populate_by_name=True, extra="allow")

    video_duration: Optional[int] = None
    video_count: Optional[int] = None
    sr: Optional[int] = Field(default=None, alias="SR")
    video_ratio: Optional[str] = None

    @property
    def resolution(self) -> Optional[Resolution]:
        """The tier ``SR`` reports (2.2 models); ``None`` on 2.1 models or an unknown value."""
        if self.sr is None:
            return None
        try:
            return Resolution(f"{self.sr}P")
        except ValueError:
            return None


class StatusChange(BaseModel):
    """One observed status of a task and when (UTC) the client saw it first."""

    status: TaskStatus
    seen_at: datetime


class TaskState(BaseModel):
    """A task as ``GET /tasks/{id}`` (or create) reported it.

    Example:
        ```python
        from kf2v_tasks.dashscope.models import TaskState
        st = TaskState.from_response({"request_id": "r", "output": {"task_id": "t", "task_status": "PENDING"}})
        assert not st.status.is_terminal
        ```
    """

    task_id: str
    status: TaskStatus
    request_id: Optional[str] = None
    submit_time: Optional[datetime] = None
    scheduled_time: Optional[datetime] = None
    end_time: Optional[datetime] = None
    video_url: Optional[str] = None
    orig_prompt: Optional[str] = None
    actual_prompt: Optional[str] = None
    code: Optional[str] = None
    message: Optional[str] = None
    usage: Optional[Usage] = None
    history: list[StatusChange] = Field(
        default_factory=list, description="Statuses the client observed, in order."
    )

    @classmethod
    def from_response(cls, body: dict[str, Any]) -> TaskState:
        """Build from a create or query response body (``{"output": {...}, "usage": ...}``)."""
        out = body.get("output") or {}
        raw_status = out.get("task_status") or "UNKNOWN"
        try:
            status = TaskStatus(raw_status)
        except ValueError:
            status = TaskStatus.UNKNOWN
        usage = body.get("usage")
        return cls(
            task_id=str(out.get("task_id") or ""),
            status=status,
            request_id=body.get("request_id"),
            submit_time=parse_service_time(out.get("submit_time")),
            scheduled_time=parse_service_time(out.get("scheduled_time")),
            end_time=parse_service_time(out.get("end_time")),
            video_url=out.get("video_url") or None,
            orig_prompt=out.get("orig_prompt"),
            actual_prompt=out.get("actual_prompt"),
            code=out.get("code"),
            message=out.get("message"),
            usage=Usage.model_validate(usage) if isinstance(usage, dict) else None,
        )
