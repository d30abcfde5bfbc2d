"""Waiting for a remote task: a schedule that starts slow and tightens, and two deadlines.

kf2v tasks take minutes (1–5 in the real service), so polling every second, as the
official SDK's ``wait`` does at first, spends the account's shared 20 queries/s on
answers we already know ("still running"). We poll rarely until a finish becomes
plausible, then often enough that a finished task is seen within a few seconds. When
several tasks wait on one client, :mod:`kf2v_tasks.dashscope.watcher` answers for all of them
with one ``GET /tasks?status=RUNNING`` and fetches only the ones that ended.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Optional, Protocol

from kf2v_tasks import clock
from kf2v_tasks.dashscope.models import TaskStatus
from kf2v_tasks.dashscope.schedule import PollSchedule
from kf2v_tasks.dashscope.task_state import StatusChange, TaskState
from kf2v_tasks.dashscope.watcher import watcher_for
from kf2v_tasks.errors import (
    QueueTimeoutError,
    TaskCanceledError,
    TaskExpiredError,
    TaskFailedError,
    TaskTimeoutError,
    UnsupportedOperationError,
)

if TYPE_CHECKING:
    from kf2v_tasks.dashscope.client import Kf2vClient

logger = logging.getLogger("kf2v_tasks.dashscope.polling")

#: The service itself gives up on a task after 3 hours (InternalError.Timeout).
DEFAULT_DEADLINE = 3 * 3600.0
DEFAULT_QUEUE_DEADLINE = 3600.0


class QueueClock(Protocol):
    """Service seconds of PENDING that the caller's own queue does not explain, so far."""

    def now(self) -> float:
        """A monotonic reading; a task's unexplained wait is the difference of two."""


def _record(history: list[StatusChange], status: TaskStatus) -> None:
    if not history or history[-1].status is not status:
        history.append(StatusChange(status=status, seen_at=datetime.now(UTC)))


async def wait_for_task(
    client: Kf2vClient,
    task_id: str,
    *,
    schedule: Optional[PollSchedule] = None,
    deadline: float = DEFAULT_DEADLINE,
    queue_deadline: float = DEFAULT_QUEUE_DEADLINE,
    raise_on_failure: bool = True,
    on_status: Optional[Callable[[TaskState], Awaitable[None]]] = None,
    queue_clock: Optional[QueueClock] = None,
) -> TaskState:
    """Poll ``task_id`` until it ends; return its final state with the status history.

    Args:
        deadline: service seconds after which we stop waiting (the task may still finish;
            resuming later re-attaches to it).
        queue_deadline: service seconds a task may stay PENDING before we cancel it (a
            PENDING task never started, so cancelling it costs nothing).
        raise_on_failure: raise typed errors for FAILED, CANCELED and UNKNOWN.
        on_status: awaited with every new status (progress reporting).
        queue_clock: measures PENDING time our own queue does not explain (a task queued on
            purpose behind our running ones is not late); without it, all the time since
            the first poll counts against ``queue_deadline``.

    Raises:
        TaskFailedError: FAILED, with the task's code and message.
        TaskCanceledError: CANCELED.
        TaskExpiredError: UNKNOWN (no such task, or older than 24 h).
        QueueTimeoutError: still PENDING past ``queue_deadline``; it was cancelled.
        TaskTimeoutError: still running past ``deadline``.
        TransientError: queries kept failing until ``deadline`` (a query that fails earlier
            is simply asked again on schedule).
        PermanentError: a query the service refused (bad id, auth).
    """
    schedule = schedule or PollSchedule()
    queue_mark = queue_clock.now() if queue_clock is not None else 0.0
    history: list[StatusChange] = []
    last_status: Optional[TaskStatus] = None
    async with watcher_for(client).watch(
        task_id, schedule, deadline=deadline, queue_deadline=queue_deadline
    ) as watch:
        while True:
            state = await watch.next_state()
            _record(history, state.status)
            if state.status is not last_status:
                last_status = state.status
                logger.debug("task %s is %s", task_id, state.status.value)
                if on_status is not None:
                    await on_status(state)

            if state.status.is_terminal:
                state = state.model_copy(update={"history": history})
                if raise_on_failure:
                    _raise_for_terminal(state)
                return state

            elapsed = clock.now() - watch.started
            if queue_clock is not None:
                pending_for = queue_clock.now() - queue_mark
            else:
                pending_for = elapsed
            if state.status is TaskStatus.PENDING and pending_for >= queue_deadline:
                await _cancel_pending(client, task_id, history, queue_deadline)
                # Cancel raced with the start: keep waiting for the now-running task.
                watch.mark_running()
            if elapsed >= deadline:
                raise TaskTimeoutError(
                    task_id,
                    f"task {task_id} still {state.status.value} after {deadline:.0f}s; "
                    "it may still finish — resume to re-attach without a second create",
                    history=history,
                )


async def _cancel_pending(
    client: Kf2vClient, task_id: str, history: list[StatusChange], queue_deadline: float
) -> None:
    try:
        await client.cancel_task(task_id)
    except UnsupportedOperationError:
        logger.info("task %s left PENDING just as we cancelled it; waiting on", task_id)
        return
    _record(history, TaskStatus.CANCELED)
    raise QueueTimeoutError(
        task_id,
        f"task {task_id} was still PENDING after {queue_deadline:.0f}s and was cancelled "
        "(a task that never ran is not billed)",
        history=history,
    )


def _raise_for_terminal(state: TaskState) -> None:
    if state.status is TaskStatus.SUCCEEDED:
        return
    if state.status is TaskStatus.FAILED:
        raise TaskFailedError(
            state.task_id,
            state.code or "Unknown",
            state.message or "no message",
            history=state.history,
        )
    if state.status is TaskStatus.CANCELED:
        raise TaskCanceledError(
            state.task_id, f"task {state.task_id} was CANCELED", history=state.history
        )
    raise TaskExpiredError(
        state.task_id,
        f"task {state.task_id} is UNKNOWN to the service (no such task, or older than 24 h)",
        history=state.history,
    )
