"""A task as the service reports it: its status, its times (UTC+8 on the wire) and its usage.

The client parses create and query answers into :class:`TaskState`; the simulator formats
its times with :func:`format_service_time`, so both read the service's clock the same way.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

from kf2v_tasks.dashscope.models import Resolution, TaskStatus

#: DashScope's task times are "YYYY-MM-DD HH:mm:ss.SSS" in UTC+8 with no zone suffix.
SERVICE_TZ = timezone(timedelta(hours=8))
SERVICE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


def parse_service_time(value: Any) -> Optional[datetime]:
    """Parse DashScope's ``"YYYY-MM-DD HH:mm:ss.SSS"`` (UTC+8) into an aware datetime."""
    if not value or not isinstance(value, str):
        return None
    for fmt in (SERVICE_TIME_FORMAT, "%Y-%m-%d %H:%M:%S"):
        try:
            return datetime.strptime(value, fmt).replace(tzinfo=SERVICE_TZ)
        except ValueError:
            pass
    return None


def format_service_time(value: datetime) -> str:
    """Format an aware datetime the way DashScope does (UTC+8, milliseconds)."""
    return value.astimezone(SERVICE_TZ).strftime(SERVICE_TIME_FORMAT)[:-3]


class Usage(BaseModel):
    """Billing usage of a SUCCEEDED task (``SR`` on 2.2 models, ``video_ratio`` on 2.1)."""

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
        from kf2v_tasks.dashscope.task_state import TaskState
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
