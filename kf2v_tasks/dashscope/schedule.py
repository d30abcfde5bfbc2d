"""When to ask about a task again: rarely while it queues or has just started, often once
a finish is plausible (:class:`PollSchedule`, in service seconds)."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

from kf2v_tasks.dashscope.models import TaskStatus

__all__ = ["PollSchedule"]


class PollSchedule(BaseModel):
    """When to ask again, in service seconds."""

    # One line for the Prefect UI form (the docstring carries an example).
    model_config = ConfigDict(
        json_schema_extra={"description": "When to ask again, in seconds of service time."}
    )

    first_poll: float = Field(default=10.0, gt=0, description="Delay before the first query.")
    pending_interval: float = Field(default=15.0, gt=0, description="Interval while PENDING.")
    expected_min_runtime: float = Field(
        default=60.0, ge=0, description="Tasks rarely finish sooner than this after starting."
    )
    min_interval: float = Field(
        default=4.6,
        gt=0,
        description="Tightest interval once a finish is plausible. The SDK settles at 5 s "
        "per task; 4.6 s keeps the detection lag below it, and sweeps shared by two or more "
        "tasks make each check cost a fraction of a query.",
    )
    max_interval: float = Field(default=30.0, gt=0, description="Longest single wait.")
    sweep: bool = Field(
        default=True,
        description="When several tasks are due, ask for all of them with one "
        "``GET /tasks?status=RUNNING`` and fetch only those that left it.",
    )
    sweep_min_interval: float = Field(
        default=1.0,
        gt=0,
        description="Shortest interval between sweeps; sweeps come more often than "
        "``min_interval`` only when they answer for more than two tasks.",
    )

    def next_interval(self, status: TaskStatus, running_for: Optional[float]) -> float:
        """Seconds to wait before the next query, given what the last one said."""
        if status is TaskStatus.PENDING or running_for is None:
            return self.pending_interval
        remaining = self.expected_min_runtime - running_for
        return max(self.min_interval, min(self.max_interval, remaining))
