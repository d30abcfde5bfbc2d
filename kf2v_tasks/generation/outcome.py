"""How a task ended, written into its ledger record so that a dead task is never reused.

Writing the outcome also ends the row's claim when the task ended without a video; this
module sits above both the ledger and the claims so that neither imports the other.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Optional, Union

from kf2v_tasks.dashscope.models import TaskStatus
from kf2v_tasks.dashscope.task_state import TaskState
from kf2v_tasks.errors import (
    QueueTimeoutError,
    TaskCanceledError,
    TaskExpiredError,
    TaskFailedError,
    TaskTimeoutError,
)
from kf2v_tasks.generation.claims import release_claim
from kf2v_tasks.generation.ledger import Ledger, LedgerRecord

__all__ = ["record_outcome"]

logger = logging.getLogger("kf2v_tasks.generation.ledger")

#: How each "ended without a video" error reads as a task status.
_DEAD_ERRORS: dict[type, TaskStatus] = {
    TaskFailedError: TaskStatus.FAILED,
    TaskCanceledError: TaskStatus.CANCELED,
    QueueTimeoutError: TaskStatus.CANCELED,
    TaskExpiredError: TaskStatus.UNKNOWN,
}


async def record_outcome(
    ledger: Optional[Ledger],
    fingerprint: Optional[str],
    outcome: Union[TaskState, BaseException],
    *,
    persist_follows: bool = False,
) -> None:
    """Write how a task ended into its ledger record, so a dead task is never reused.

    ``outcome`` is the final state or the error polling raised. A timeout is only an event
    (the task may still finish, a resume re-attaches); other errors say nothing about the task
    and write nothing; nor does a record that now follows another task (re-created since).

    ``persist_follows``: the caller keeps the video next with this ledger, so a success is
    deferred (:meth:`Ledger.defer`) and written with "persisted", one write instead of two.
    Safe because "submitted" is reused exactly as a recorded success is.
    """
    if ledger is None or not fingerprint:
        return
    # The row's work is over unless the task succeeded (then persisting releases the claim).
    over = isinstance(outcome, BaseException) or (
        outcome.status.is_terminal and outcome.status is not TaskStatus.SUCCEEDED
    )
    try:
        await _write_outcome(ledger, fingerprint, outcome, persist_follows)
    finally:
        if over:
            await release_claim(ledger, fingerprint)


async def _write_outcome(
    ledger: Ledger,
    fingerprint: str,
    outcome: Union[TaskState, BaseException],
    persist_follows: bool,
) -> None:
    timed_out = isinstance(outcome, TaskTimeoutError)
    seen_at = datetime.now(UTC)
    if isinstance(outcome, TaskState):
        if not outcome.status.is_terminal:
            return
        status, code, message = outcome.status, outcome.code, outcome.message
    elif type(outcome) in _DEAD_ERRORS:
        status = _DEAD_ERRORS[type(outcome)]
        code, message = getattr(outcome, "code", type(outcome).__name__), str(outcome)
    elif not timed_out:
        return
    task_id = getattr(outcome, "task_id", None)

    def change(record: LedgerRecord) -> bool:
        if not record.task_id:
            return False
        if task_id and task_id != record.task_id:
            logger.info(
                "fingerprint %s now follows task %s; not recording how task %s ended",
                fingerprint[:12],
                record.task_id,
                task_id,
            )
            return False
        if timed_out:
            history = getattr(outcome, "history", [])
            record.timed_out(
                str(outcome), [f"{h.status.value}@{h.seen_at.isoformat()}" for h in history]
            )
        else:
            record.ended(status, code, message, at=seen_at)
        return True

    if persist_follows and isinstance(outcome, TaskState) and status is TaskStatus.SUCCEEDED:
        ledger.defer(fingerprint, change)
        return
    await ledger.modify(fingerprint, change)
