"""The ledger's vocabulary: the states of a piece of work, its errors, task lifetimes.

A record moves between :class:`LedgerState` states only through its transitions
(:mod:`kf2v_tasks.generation.ledger_record`). Whether a task
can still deliver depends on how it ended (:data:`DEAD_STATUSES`) and its age
(:data:`TASK_TTL`, :data:`TASK_TTL_MARGIN`). Times are aware UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Optional

from kf2v_tasks.dashscope.models import TaskStatus
from kf2v_tasks.errors import PermanentError

__all__ = [
    "DEAD_STATUSES",
    "TASK_TTL",
    "TASK_TTL_MARGIN",
    "IllegalTransitionError",
    "LedgerError",
    "LedgerState",
    "utc",
]

#: Terminal statuses after which the task can never yield a video.
DEAD_STATUSES = frozenset({TaskStatus.FAILED, TaskStatus.UNKNOWN, TaskStatus.CANCELED})

#: Tasks and their video URLs expire this long after submission (service time).
TASK_TTL = timedelta(hours=24)
#: A task this close to expiry is not reused: it could expire before its video is kept.
TASK_TTL_MARGIN = timedelta(minutes=30)


class LedgerState(StrEnum):
    """Where a piece of work stands; the values are what the record files hold."""

    SUBMITTING = "submitting"  # a create is about to be sent: its outcome unknown on a crash
    SUBMITTED = "submitted"  # the task id is known
    AMBIGUOUS = "ambiguous"  # a create may or may not exist (and may be billed)
    TERMINAL = "terminal"  # the task ended (see terminal_status), or the create was refused
    PERSISTED = "persisted"  # the video is kept


class LedgerError(PermanentError, ValueError):
    """A ledger record cannot be used as it is: unreadable, or asked for an illegal move."""


class IllegalTransitionError(LedgerError):
    """A transition was asked from a state it cannot start from.

    Never retried: it means the caller would break a guarantee (typically, paying twice).
    """

    def __init__(self, fingerprint: str, transition: str, state: LedgerState, why: str) -> None:
        self.fingerprint = fingerprint
        self.transition = transition
        self.state = LedgerState(state)
        self.why = why
        super().__init__(
            f"ledger record {fingerprint[:12]}: {transition}() is not allowed in state "
            f"{self.state.value!r}: {why}"
        )

    def __reduce__(self):  # Prefect pickles task errors: rebuild from the same four parts
        return (type(self), (self.fingerprint, self.transition, self.state, self.why))


def utc(value: Optional[datetime]) -> Optional[datetime]:
    """``value`` as an aware UTC datetime (naive times in this package are UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
