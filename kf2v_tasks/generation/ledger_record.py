"""One ledger record and its state machine: every legal move of a piece of work, and no other.

A record is what is known about one fingerprint (one piece of paid work). Its ``state``
changes only through the transition methods below, each of which checks the move is legal
from the current state, sets the fields that go with it and appends its event; assigning
``record.state`` raises, so no other module can move a record behind the machine's back.

The create transitions (``begin_create``, ``create_ambiguous``, ``create_rejected``,
``create_outcome_unknown``, ``submitted``) need no task id yet; the others (``ended``,
``not_reusable``, ``timed_out``, ``persisted``, ``previews_made``) need one. A record with
a task starts a new create only through ``recreate_after``, which refuses while that task
can still deliver its video (a new create would pay twice).

On disk the states are the plain strings of :class:`LedgerState`, so older records load
unchanged. States, errors and task lifetimes live in :mod:`kf2v_tasks.generation.ledger_state`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kf2v_tasks import clock
from kf2v_tasks.dashscope.models import Resolution, TaskStatus
from kf2v_tasks.generation.ledger_state import (
    DEAD_STATUSES,
    TASK_TTL,
    TASK_TTL_MARGIN,
    IllegalTransitionError,
    LedgerState,
    utc,
)
from kf2v_tasks.generation.previews import Previews

__all__ = ["LedgerRecord"]

_S = LedgerState


def _now() -> datetime:
    return datetime.now(UTC)


class LedgerRecord(BaseModel):
    """What is known about one piece of work (one fingerprint), moved only by transitions.

    Start a record with :meth:`new` (first create) or :meth:`recreate_after` (the earlier
    task can no longer deliver), then move it with the transition methods. Loading a
    stored record (``model_validate``) accepts every state, including old plain strings.
    """

    model_config = ConfigDict(validate_assignment=True, extra="ignore")

    fingerprint: str
    state: LedgerState = Field(
        default=LedgerState.SUBMITTING,
        frozen=True,  # moved by the transition methods only
        description="Where the work stands; see LedgerState.",
    )
    task_id: Optional[str] = None
    request_id: Optional[str] = None
    submitted_at: Optional[datetime] = Field(default=None, description="Aware UTC.")
    create_attempts: int = 0
    possible_duplicate: bool = False
    terminal_status: Optional[TaskStatus] = None
    error_code: Optional[str] = None
    error_message: Optional[str] = None
    output_path: Optional[str] = None
    sha256: Optional[str] = None
    bytes: Optional[int] = None
    persisted_at: Optional[datetime] = None
    model: Optional[str] = Field(default=None, description="Model of the kept video.")
    resolution: Optional[Resolution] = Field(default=None, description="Its resolution tier.")
    duration_seconds: Optional[int] = Field(default=None, description="Its length (billed).")
    cost: Optional[float] = Field(default=None, description="What it cost, in currency.")
    currency: Optional[str] = None
    previews: Optional[Previews] = Field(
        default=None, description="Poster and strip of the kept video (None: not made yet)."
    )
    row_id: Optional[str] = None
    events: list[dict[str, Any]] = Field(
        default_factory=list, description='Append-only log: {"at": iso, "event": ..., ...}.'
    )
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("submitted_at", "persisted_at")
    @classmethod
    def _aware_utc(cls, v: Optional[datetime]) -> Optional[datetime]:
        return utc(v)

    # -- reading ----------------------------------------------------------------------------

    def add_event(self, event: str, **data: Any) -> None:
        """Append ``{"at": now, "event": event, **data}`` to the log (no state change)."""
        self.events.append({"at": _now().isoformat(), "event": event, **data})

    def is_reusable(
        self,
        now: Optional[datetime] = None,
        ttl: timedelta = TASK_TTL,
        margin: timedelta = TASK_TTL_MARGIN,
    ) -> bool:
        """Whether the recorded task can still deliver its video (no new create needed).

        True when it has a task id, was submitted less than ``ttl - margin`` ago (tasks
        and their video URLs expire 24 h after submission) and did not end FAILED,
        CANCELED or UNKNOWN.
        """
        if not self.task_id or self.submitted_at is None:
            return False
        if self.terminal_status in DEAD_STATUSES:
            return False
        now = utc(now) or _now()
        # Task lifetimes are service time: under KF2V_TIME_SCALE a rehearsal's tasks expire
        # proportionally sooner, exactly as the simulator at the same speed expires them.
        return (now - self.submitted_at) * clock.time_scale() < ttl - margin

    # -- starting a record ------------------------------------------------------------------

    @classmethod
    def new(cls, fingerprint: str, *, row_id: Optional[str] = None) -> LedgerRecord:
        """A record for work never submitted before (``submitting``, no attempt yet)."""
        return cls(fingerprint=fingerprint, state=LedgerState.SUBMITTING, row_id=row_id)

    @classmethod
    def recreate_after(
        cls, previous: LedgerRecord, *, row_id: Optional[str] = None
    ) -> LedgerRecord:
        """A fresh ``submitting`` record for work whose earlier task can no longer deliver.

        The history (events, extra) is kept and the earlier task is listed under
        ``extra["earlier_tasks"]``; the attempt count starts again.

        Raises:
            IllegalTransitionError: ``previous`` has no task, or its task is still usable
                (reuse it: a new create would pay twice).
        """
        if not previous.task_id:
            raise IllegalTransitionError(
                previous.fingerprint, "recreate_after", previous.state, "it has no earlier task"
            )
        if previous.is_reusable():
            raise IllegalTransitionError(
                previous.fingerprint,
                "recreate_after",
                previous.state,
                f"task {previous.task_id} can still deliver its video; reuse it",
            )
        status = previous.terminal_status.value if previous.terminal_status else None
        record = cls(
            fingerprint=previous.fingerprint,
            state=LedgerState.SUBMITTING,
            row_id=row_id or previous.row_id,
            events=list(previous.events),
            extra={
                **previous.extra,
                "earlier_tasks": [
                    *previous.extra.get("earlier_tasks", []),
                    {
                        "task_id": previous.task_id,
                        "status": status,
                        "possible_duplicate": previous.possible_duplicate,
                    },
                ],
            },
        )
        record.add_event("recreate", previous_task_id=previous.task_id, previous_status=status)
        return record

    # -- the create ---------------------------------------------------------------------------

    def begin_create(self) -> None:
        """The create POST is about to leave: count the attempt (write the record now).

        Legal while no task is known: ``submitting``, ``ambiguous`` (the one guarded
        retry) or ``terminal`` after a refused create.
        """
        self._check("begin_create", {_S.SUBMITTING, _S.AMBIGUOUS, _S.TERMINAL}, task=False)
        self.create_attempts += 1
        self._move(_S.SUBMITTING, "create", attempt=self.create_attempts)

    def create_ambiguous(self, error: str) -> None:
        """The create may have reached the service (and may be billed): ``ambiguous``."""
        self._check("create_ambiguous", {_S.SUBMITTING}, task=False)
        self.possible_duplicate = True
        self._move(_S.AMBIGUOUS, "ambiguous_create", error=error)

    def create_rejected(self, code: str, message: str, *, sent: bool = True) -> None:
        """The create certainly did not happen (refused, or never left).

        An attempt that was counted (``sent``) is forgotten. The record ends ``terminal``
        with no task (nothing paid), or stays ``ambiguous`` if an earlier create may exist.
        """
        self._check("create_rejected", {_S.SUBMITTING, _S.AMBIGUOUS, _S.TERMINAL}, task=False)
        if sent and self.create_attempts > 0:
            self.create_attempts -= 1
        self.error_code, self.error_message = code, message
        to = _S.AMBIGUOUS if self.possible_duplicate else _S.TERMINAL
        self._move(to, "create_rejected", error=code)

    def create_outcome_unknown(self) -> None:
        """A run finds an earlier create whose answer never arrived (a crash or an
        ambiguous answer): a task may exist, so the work is a possible duplicate."""
        self._check("create_outcome_unknown", {_S.SUBMITTING, _S.AMBIGUOUS}, task=False)
        self.possible_duplicate = True
        self._move(_S.AMBIGUOUS, "create_outcome_unknown", attempts=self.create_attempts)

    def submitted(
        self, task_id: str, request_id: Optional[str] = None, *, at: Optional[datetime] = None
    ) -> None:
        """The service answered the create with ``task_id``: ``submitted``."""
        self._check("submitted", {_S.SUBMITTING}, task=False)
        if not task_id:
            raise ValueError("submitted() needs the task id the service returned")
        self.task_id, self.request_id = task_id, request_id
        self.submitted_at = utc(at) or _now()
        self.terminal_status = None
        self.error_code = self.error_message = None
        self._move(_S.SUBMITTED, "submitted", task_id=task_id)

    # -- the task -------------------------------------------------------------------------------

    def not_reusable(
        self,
        status: TaskStatus | str,
        code: Optional[str] = None,
        message: Optional[str] = None,
    ) -> None:
        """A re-check found the recorded task FAILED, CANCELED or UNKNOWN: ``terminal``."""
        status = TaskStatus(status)
        self._check("not_reusable", {_S.SUBMITTED, _S.TERMINAL, _S.PERSISTED}, task=True)
        if status not in DEAD_STATUSES:
            raise ValueError(f"not_reusable() takes FAILED, CANCELED or UNKNOWN, not {status}")
        self.terminal_status = status
        self.error_code, self.error_message = code, message
        self._move(_S.TERMINAL, "not_reusable", status=status.value)

    def ended(
        self,
        status: TaskStatus | str,
        code: Optional[str] = None,
        message: Optional[str] = None,
        *,
        at: Optional[datetime] = None,
    ) -> None:
        """The task reached a terminal status: ``terminal`` (a kept video stays ``persisted``).

        ``at``: when it was seen to end, if that was before now (a write put off until the
        video is kept says when the task really ended).
        """
        status = TaskStatus(status)
        self._check("ended", {_S.SUBMITTED, _S.TERMINAL, _S.PERSISTED}, task=True)
        if not status.is_terminal:
            raise ValueError(f"ended() takes a terminal status, not {status.value}")
        self.terminal_status = status
        self.error_code, self.error_message = code, message
        to = _S.PERSISTED if self.state is _S.PERSISTED else _S.TERMINAL
        data: dict[str, Any] = {"status": status.value}
        if code:
            data["code"] = code
        if at is not None:
            data["at"] = (utc(at) or _now()).isoformat()
        self._move(to, "ended", **data)

    def timed_out(self, error: str, history: Iterable[str] = ()) -> None:
        """Our deadline passed while the task ran: an event only (it may still finish)."""
        self._check("timed_out", {_S.SUBMITTED, _S.TERMINAL, _S.PERSISTED}, task=True)
        self._move(self.state, "timeout", error=error, history=list(history))

    def persisted(
        self,
        path: str,
        sha256: str,
        bytes: int,  # noqa: A002  (the record's field of the same name)
        *,
        model: Optional[str] = None,
        resolution: Optional[Resolution | str] = None,
        duration_seconds: Optional[int] = None,
        cost: Optional[float] = None,
        currency: Optional[str] = None,
        previews: Optional[Previews] = None,
    ) -> None:
        """The task's video is committed at ``path``: ``persisted``.

        Legal once the task is known, unless it ended FAILED or CANCELED (such a task
        never had a video; UNKNOWN may be an expiry after the download began). Persisting
        again (a re-download) is legal, and replaces the previews with ``previews``
        (previews of another copy of the file are not kept: they may not match it).
        """
        self._check("persisted", {_S.SUBMITTED, _S.TERMINAL, _S.PERSISTED}, task=True)
        if self.terminal_status in (TaskStatus.FAILED, TaskStatus.CANCELED):
            raise IllegalTransitionError(
                self.fingerprint,
                "persisted",
                self.state,
                f"task {self.task_id} ended {self.terminal_status.value} and has no video",
            )
        self.terminal_status = TaskStatus.SUCCEEDED
        self.error_code = self.error_message = None
        self.output_path, self.sha256, self.bytes = path, sha256, bytes
        self.persisted_at = _now()
        self.model, self.duration_seconds = model, duration_seconds
        self.resolution = Resolution(resolution) if resolution else None
        self.cost, self.currency = cost, currency
        self.previews = previews
        self._move(_S.PERSISTED, "persisted", path=path)

    def previews_made(self, previews: Previews) -> None:
        """The kept video's poster and strip are written: record them (an event only).

        Legal only once the video is ``persisted``: previews are made from the stored file.
        """
        self._check("previews_made", {_S.PERSISTED}, task=True)
        self.previews = previews
        self._move(_S.PERSISTED, "previews", poster=previews.poster)

    # -- the machinery --------------------------------------------------------------------------

    def _check(self, transition: str, allowed: set[LedgerState], *, task: bool) -> None:
        """Raise unless ``transition`` may start from this state (and task id presence)."""
        if self.state not in allowed:
            names = ", ".join(sorted(s.value for s in allowed))
            raise IllegalTransitionError(
                self.fingerprint, transition, self.state, f"it starts only from {names}"
            )
        if task and not self.task_id:
            raise IllegalTransitionError(
                self.fingerprint, transition, self.state, "no task id is recorded"
            )
        if not task and self.task_id:
            raise IllegalTransitionError(
                self.fingerprint,
                transition,
                self.state,
                f"task {self.task_id} is recorded; a new create starts with recreate_after()",
            )

    def _move(self, to: LedgerState, event: str, **data: Any) -> None:
        # The one place a state changes: the field is frozen against plain assignment.
        self.__dict__["state"] = to
        self.add_event(event, **data)
