"""How long a paid video stays fetchable, and how long its download keeps trying.

A video that was made was paid for: its download retries transient failures for as long
as its link can live (or the run's deadline allows), and a row that still fails says
until when a re-run can fetch it without paying again.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Optional

from kf2v_tasks import clock
from kf2v_tasks.dashscope.models import TaskStatus
from kf2v_tasks.dashscope.task_state import TaskState
from kf2v_tasks.generation.ledger_state import TASK_TTL, TASK_TTL_MARGIN, utc
from kf2v_tasks.generation.submit import Submission

#: However early the URL is believed to expire, a download is tried this long (service
#: seconds): the service, not our estimate, says when a video is gone (a 403, then a task
#: it no longer knows).
MIN_DOWNLOAD_PATIENCE = 3600.0


def link_expiry(state: TaskState, submission: Optional[Submission] = None) -> datetime:
    """When (UTC, as this machine counts) the task's video URL stops working at the latest.

    The service keeps a task and its video 24 h (service time) from the task's end. The
    end is the earliest of: when this client first saw the task SUCCEEDED, and, when the
    service's own times are known, the create's time here plus the service's run time
    (``end_time - submit_time``). Service durations become real ones through the time
    scale (:mod:`kf2v_tasks.clock`), as the ledger counts a task's lifetime.
    """
    scale = clock.time_scale()
    now = datetime.now(UTC)
    ends = [utc(h.seen_at) for h in state.history if h.status is TaskStatus.SUCCEEDED]
    submitted = utc(submission.submitted_at) if submission is not None else None
    if submitted is not None and state.submit_time is not None and state.end_time is not None:
        ran = (state.end_time - state.submit_time).total_seconds()
        if ran >= 0:
            ends.append(submitted + timedelta(seconds=ran / scale))
    end = min((e for e in ends if e is not None), default=now)
    return min(end, now) + TASK_TTL / scale


def download_patience(expires: datetime, deadline: Optional[float] = None) -> float:
    """Service seconds a download may keep retrying: until ``expires``, or ``deadline``.

    At least :data:`MIN_DOWNLOAD_PATIENCE` for the URL (an estimate must not end a paid
    download early); a run's ``deadline`` (a :func:`kf2v_tasks.clock.now` reading) cuts it.
    """
    left = (expires - datetime.now(UTC)).total_seconds() * clock.time_scale()
    patience = max(MIN_DOWNLOAD_PATIENCE, left)
    if deadline is not None:
        patience = min(patience, max(0.0, deadline - clock.now()))
    return patience


def rerun_by(expires: datetime, submission: Optional[Submission] = None) -> datetime:
    """Until when a re-run re-attaches to the task (and fetches its video) instead of paying.

    The ledger reuses a task until ``TASK_TTL - TASK_TTL_MARGIN`` after its create (service
    time), and the video cannot outlive its URL (``expires``).
    """
    scale = clock.time_scale()
    by = expires - TASK_TTL_MARGIN / scale
    submitted = utc(submission.submitted_at) if submission is not None else None
    if submitted is not None:
        by = min(by, submitted + (TASK_TTL - TASK_TTL_MARGIN) / scale)
    return by


def still_at_service(task_id: str, fetch_by: datetime, error: BaseException) -> str:
    """The row's message for a paid video that could not be fetched: where it still is."""
    return (
        f"the video of task {task_id} was made and paid for but could not be fetched "
        f"({error}); it is still at the service: run again before about "
        f"{fetch_by:%Y-%m-%d %H:%M} UTC to fetch it (the run re-attaches to the task, "
        "nothing is paid twice)"
    )
