"""The ledger record's state machine: every transition from every state, legal or not.

A record is built in each of the five states, with and without a task id, and each
transition is tried on it: where the table says it is legal it must land in the expected
state and append its event; everywhere else it must raise IllegalTransitionError and leave
the record exactly as it was.
"""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from kf2v_tasks.dashscope.models import TaskStatus
from kf2v_tasks.errors import PermanentError
from kf2v_tasks.generation.ledger_record import LedgerRecord
from kf2v_tasks.generation.ledger_state import IllegalTransitionError, LedgerError, LedgerState
from kf2v_tasks.generation.previews import Previews

FP = "c" * 64
S = LedgerState
ANY_TASK = {S.SUBMITTED, S.TERMINAL, S.PERSISTED}
NO_TASK_CREATE = {S.SUBMITTING, S.AMBIGUOUS, S.TERMINAL}


def make(state: LedgerState, *, task: bool, **fields) -> LedgerRecord:
    """A record as loaded from disk in ``state`` (loading accepts any state)."""
    doc = {"fingerprint": FP, "state": state.value, **fields}
    if task:
        doc.setdefault("task_id", "task-1")
        doc.setdefault("submitted_at", datetime.now(UTC).isoformat())
    return LedgerRecord.model_validate(doc)


#: transition name -> (call, (state, has_task) -> expected state or None when illegal, event)
TRANSITIONS = {
    "begin_create": (
        lambda r: r.begin_create(),
        lambda st, task: S.SUBMITTING if not task and st in NO_TASK_CREATE else None,
        "create",
    ),
    "create_ambiguous": (
        lambda r: r.create_ambiguous("no answer"),
        lambda st, task: S.AMBIGUOUS if not task and st is S.SUBMITTING else None,
        "ambiguous_create",
    ),
    "create_rejected": (
        lambda r: r.create_rejected("InvalidParameter", "bad"),
        lambda st, task: S.TERMINAL if not task and st in NO_TASK_CREATE else None,
        "create_rejected",
    ),
    "create_outcome_unknown": (
        lambda r: r.create_outcome_unknown(),
        lambda st, task: S.AMBIGUOUS if not task and st in {S.SUBMITTING, S.AMBIGUOUS} else None,
        "create_outcome_unknown",
    ),
    "submitted": (
        lambda r: r.submitted("task-2", "req-2"),
        lambda st, task: S.SUBMITTED if not task and st is S.SUBMITTING else None,
        "submitted",
    ),
    "ended": (
        lambda r: r.ended(TaskStatus.FAILED, "InternalError", "boom"),
        lambda st, task: (
            (S.PERSISTED if st is S.PERSISTED else S.TERMINAL) if task and st in ANY_TASK else None
        ),
        "ended",
    ),
    "not_reusable": (
        lambda r: r.not_reusable(TaskStatus.UNKNOWN),
        lambda st, task: S.TERMINAL if task and st in ANY_TASK else None,
        "not_reusable",
    ),
    "timed_out": (
        lambda r: r.timed_out("deadline passed", ["RUNNING@t"]),
        lambda st, task: st if task and st in ANY_TASK else None,
        "timeout",
    ),
    "persisted": (
        lambda r: r.persisted("out/a.mp4", "f" * 64, 99),
        lambda st, task: S.PERSISTED if task and st in ANY_TASK else None,
        "persisted",
    ),
}

CASES = [
    pytest.param(name, state, task, id=f"{name}-{state.value}-{'task' if task else 'no_task'}")
    for name in TRANSITIONS
    for state in LedgerState
    for task in (False, True)
]


@pytest.mark.parametrize("name,state,task", CASES)
def test_every_transition_from_every_state(name, state, task):
    call, expected_of, event = TRANSITIONS[name]
    rec = make(state, task=task)
    expected = expected_of(state, task)
    if expected is None:
        before = rec.model_dump()
        with pytest.raises(IllegalTransitionError) as info:
            call(rec)
        assert info.value.transition == name and info.value.state is state
        assert f"{name}() is not allowed in state {state.value!r}" in str(info.value)
        assert FP[:12] in str(info.value)
        assert rec.model_dump() == before  # nothing half-changed
    else:
        call(rec)
        assert rec.state is expected
        assert rec.events[-1]["event"] == event


def test_the_table_allows_the_whole_happy_path_and_its_events():
    rec = LedgerRecord.new(FP, row_id="row-1")
    assert (rec.state, rec.create_attempts, rec.events) == (S.SUBMITTING, 0, [])
    rec.begin_create()
    rec.submitted("task-1", "req-1")
    rec.ended(TaskStatus.SUCCEEDED)
    rec.persisted(
        "out/a.mp4",
        "f" * 64,
        1234,
        model="wan2.2-kf2v-flash",
        resolution="480P",
        duration_seconds=5,
        cost=0.5,
        currency="CNY",
    )
    assert rec.state is S.PERSISTED and rec.terminal_status is TaskStatus.SUCCEEDED
    assert (rec.output_path, rec.sha256, rec.bytes) == ("out/a.mp4", "f" * 64, 1234)
    assert (rec.model, rec.resolution, rec.duration_seconds) == ("wan2.2-kf2v-flash", "480P", 5)
    assert (rec.cost, rec.currency) == (0.5, "CNY") and rec.persisted_at is not None
    assert [e["event"] for e in rec.events] == ["create", "submitted", "ended", "persisted"]
    assert rec.events[0]["attempt"] == 1 and rec.events[1]["task_id"] == "task-1"
    assert all(datetime.fromisoformat(e["at"]).tzinfo for e in rec.events)


def test_state_cannot_be_assigned():
    rec = LedgerRecord.new(FP)
    with pytest.raises(ValidationError, match="frozen"):
        rec.state = LedgerState.PERSISTED
    with pytest.raises(ValidationError, match="frozen"):
        rec.state = "persisted"
    assert rec.state is S.SUBMITTING


def test_unknown_state_does_not_load():
    with pytest.raises(ValidationError):
        LedgerRecord.model_validate({"fingerprint": FP, "state": "paid"})


def test_illegal_transition_is_a_permanent_ledger_error_that_pickles():
    assert issubclass(IllegalTransitionError, LedgerError)
    assert issubclass(IllegalTransitionError, PermanentError)  # never retried
    with pytest.raises(IllegalTransitionError) as info:
        LedgerRecord.new(FP).ended(TaskStatus.FAILED)
    back = pickle.loads(pickle.dumps(info.value))
    assert str(back) == str(info.value) and back.state is S.SUBMITTING
    assert (back.fingerprint, back.transition, back.why) == (
        FP,
        "ended",
        "it starts only from persisted, submitted, terminal",
    )


# -- what each transition does besides the state --------------------------------------------


def test_begin_create_counts_attempts_and_clears_a_refusal():
    rec = LedgerRecord.new(FP)
    rec.begin_create()
    rec.create_rejected("Throttling", "slow down", sent=True)
    assert (rec.state, rec.create_attempts, rec.error_code) == (S.TERMINAL, 0, "Throttling")
    rec.begin_create()
    assert (rec.state, rec.create_attempts) == (S.SUBMITTING, 1)
    rec.submitted("task-1")
    assert rec.error_code is None and rec.error_message is None


def test_create_rejected_forgets_only_a_sent_attempt():
    rec = LedgerRecord.new(FP)
    rec.begin_create()
    rec.create_rejected("ConnectionFailedError", "never left", sent=False)
    assert rec.create_attempts == 1
    rec.begin_create()
    rec.create_rejected("InvalidParameter", "bad", sent=True)
    assert rec.create_attempts == 1 and rec.events[-1] == {
        **rec.events[-1],
        "event": "create_rejected",
        "error": "InvalidParameter",
    }


def test_a_rejected_retry_after_an_ambiguous_create_stays_ambiguous():
    rec = LedgerRecord.new(FP)
    rec.begin_create()
    rec.create_ambiguous("read timeout after the POST was sent")
    assert rec.possible_duplicate and rec.create_attempts == 1
    rec.begin_create()
    rec.create_rejected("InvalidParameter", "bad", sent=True)
    # The first create may still exist (and be billed): never "terminal, nothing paid".
    assert rec.state is S.AMBIGUOUS and rec.possible_duplicate and rec.create_attempts == 1


def test_create_outcome_unknown_after_a_crash_marks_a_possible_duplicate():
    rec = make(S.SUBMITTING, task=False, create_attempts=1)
    rec.create_outcome_unknown()
    assert rec.state is S.AMBIGUOUS and rec.possible_duplicate
    assert rec.events[-1] == {**rec.events[-1], "event": "create_outcome_unknown", "attempts": 1}
    rec.create_outcome_unknown()  # found again by the next run: logged again, same state
    assert [e["event"] for e in rec.events] == ["create_outcome_unknown"] * 2
    assert rec.state is S.AMBIGUOUS


def test_submitted_records_the_task_and_time():
    at = datetime(2025, 7, 1, 20, 0, tzinfo=UTC)
    rec = LedgerRecord.new(FP)
    rec.begin_create()
    rec.submitted("task-9", "req-9", at=at)
    assert (rec.task_id, rec.request_id, rec.submitted_at) == ("task-9", "req-9", at)
    with pytest.raises(ValueError, match="task id"):
        LedgerRecord.new(FP).submitted("")


def test_ended_and_not_reusable_take_only_fitting_statuses():
    rec = make(S.SUBMITTED, task=True)
    with pytest.raises(ValueError, match="terminal status"):
        rec.ended(TaskStatus.RUNNING)
    with pytest.raises(ValueError, match="FAILED, CANCELED or UNKNOWN"):
        rec.not_reusable(TaskStatus.SUCCEEDED)
    assert rec.state is S.SUBMITTED and rec.events == []
    rec.ended("CANCELED")  # the wire's plain string works too
    assert rec.terminal_status is TaskStatus.CANCELED and not rec.is_reusable()


@pytest.mark.parametrize("status", [TaskStatus.FAILED, TaskStatus.CANCELED])
def test_a_task_that_ended_without_a_video_cannot_be_persisted(status):
    rec = make(S.SUBMITTED, task=True)
    rec.ended(status, "X", "y")
    with pytest.raises(IllegalTransitionError, match=f"ended {status.value} and has no video"):
        rec.persisted("out/a.mp4", "f" * 64, 1)
    assert rec.state is S.TERMINAL


def test_persisting_again_replaces_the_file_facts():
    rec = make(S.PERSISTED, task=True, terminal_status="SUCCEEDED", output_path="old.mp4")
    rec.persisted("new.mp4", "a" * 64, 5)
    assert (rec.output_path, rec.sha256, rec.bytes) == ("new.mp4", "a" * 64, 5)


# -- recreate_after -----------------------------------------------------------------------------


def test_recreate_after_a_dead_task_keeps_the_history():
    old = make(S.SUBMITTED, task=True, row_id="row-1", possible_duplicate=True)
    old.ended(TaskStatus.FAILED, "InternalError", "boom")
    rec = LedgerRecord.recreate_after(old)
    assert rec.state is S.SUBMITTING and rec.task_id is None and rec.create_attempts == 0
    assert rec.row_id == "row-1" and not rec.possible_duplicate
    assert [e["event"] for e in rec.events] == ["ended", "recreate"]
    assert rec.events[-1] == {
        **rec.events[-1],
        "previous_task_id": "task-1",
        "previous_status": "FAILED",
    }
    assert rec.extra["earlier_tasks"] == [
        {"task_id": "task-1", "status": "FAILED", "possible_duplicate": True}
    ]
    rec.begin_create()  # and the new record creates normally
    rec.submitted("task-2")
    again = LedgerRecord.recreate_after(_dead(rec), row_id="row-7")
    assert [t["task_id"] for t in again.extra["earlier_tasks"]] == ["task-1", "task-2"]
    assert again.row_id == "row-7"


def _dead(rec: LedgerRecord) -> LedgerRecord:
    rec.ended(TaskStatus.UNKNOWN)
    return rec


def test_recreate_after_an_expired_task():
    old = make(S.SUBMITTED, task=True)
    old.submitted_at = datetime.now(UTC) - timedelta(hours=25)
    assert LedgerRecord.recreate_after(old).state is S.SUBMITTING


def test_recreate_after_refuses_a_usable_task_or_no_task():
    with pytest.raises(IllegalTransitionError, match="can still deliver its video; reuse it"):
        LedgerRecord.recreate_after(make(S.SUBMITTED, task=True))
    with pytest.raises(IllegalTransitionError, match="no earlier task"):
        LedgerRecord.recreate_after(make(S.AMBIGUOUS, task=False))


def _previews(name: str = "a") -> Previews:
    return Previews(
        poster=f"out/{name}.poster.jpg",
        strip=f"out/{name}.strip.jpg",
        frames=5,
        poster_frame=2,
        width=64,
        height=48,
    )


def test_previews_are_recorded_only_for_a_kept_video_and_reset_by_a_new_download():
    rec = make(S.SUBMITTED, task=True)
    with pytest.raises(IllegalTransitionError, match="previews_made"):
        rec.previews_made(_previews())  # nothing kept yet to preview
    rec.persisted("out/a.mp4", "ff" * 32, 10, previews=_previews())
    assert rec.previews == _previews() and rec.state is S.PERSISTED
    rec.previews_made(_previews("b"))
    assert rec.previews.poster == "out/b.poster.jpg" and rec.events[-1]["event"] == "previews"
    assert rec.state is S.PERSISTED
    rec.persisted("out/a.mp4", "ee" * 32, 11)  # a re-download: old previews may not match
    assert rec.previews is None
    # Old records (no previews field) load unchanged; new ones round-trip.
    loaded = LedgerRecord.model_validate(rec.model_dump(mode="json", exclude={"previews"}))
    assert loaded.previews is None
    rec.previews_made(_previews())
    assert LedgerRecord.model_validate(rec.model_dump(mode="json")).previews == _previews()
