"""The durable ledger store: roundtrips on local disk, S3 and memory, atomicity, secrets, reuse
rules, old records, and ``record_outcome`` (how a task ended, written to its record).

The state machine itself (every transition, legal and illegal) is in
tests/test_generation_ledger_record.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from kf2v_tasks.dashscope.models import TaskStatus
from kf2v_tasks.dashscope.task_state import StatusChange, TaskState
from kf2v_tasks.errors import (
    QueueTimeoutError,
    TaskCanceledError,
    TaskExpiredError,
    TaskFailedError,
    TaskTimeoutError,
    ThrottledError,
)
from kf2v_tasks.generation.ledger import Ledger, LedgerRecord, LedgerState
from kf2v_tasks.generation.ledger_state import LedgerError
from kf2v_tasks.generation.outcome import record_outcome

FP = "a" * 64
T0 = datetime(2025, 7, 1, 12, 0, tzinfo=UTC)


def full_record(fp: str = FP) -> LedgerRecord:
    rec = LedgerRecord.new(fp, row_id="row-1")
    rec.extra = {"model": "wan2.2-kf2v-flash"}
    rec.begin_create()
    rec.submitted("task-1", "req-1", at=T0)
    return rec


async def test_local_roundtrip_and_layout(tmp_path):
    ledger = Ledger(str(tmp_path))
    assert await ledger.get(FP) is None
    rec = full_record()
    await ledger.put(rec)
    assert await ledger.get(FP) == rec
    folder = tmp_path / ".kf2v" / "ledger"
    assert sorted(os.listdir(folder)) == [f"{FP}.json"]  # no temp files left behind
    on_disk = json.loads((folder / f"{FP}.json").read_text())
    assert datetime.fromisoformat(on_disk["submitted_at"].replace("Z", "+00:00")) == T0


async def test_put_replaces_whole_record(tmp_path):
    ledger = Ledger(str(tmp_path))
    rec = full_record()
    await ledger.put(rec)
    rec.persisted("out/a.mp4", "f" * 64, 123)
    await ledger.put(rec)
    got = await ledger.get(FP)
    assert got.state == "persisted" and got.bytes == 123
    assert os.listdir(tmp_path / ".kf2v" / "ledger") == [f"{FP}.json"]


async def test_update_changes_fields_but_never_the_state(tmp_path):
    ledger = Ledger(str(tmp_path))
    await ledger.put(full_record())
    rec = await ledger.update(FP, row_id="sunrise")
    assert rec.row_id == "sunrise" and (await ledger.get(FP)).row_id == "sunrise"
    with pytest.raises(KeyError):
        await ledger.update("b" * 64, row_id="x")
    for field in ("state", "fingerprint"):
        with pytest.raises(ValueError, match=f"cannot change {field}; use a LedgerRecord"):
            await ledger.update(FP, **{field: "terminal"})
    with pytest.raises(ValueError):
        await ledger.update(FP, create_attempts="many")
    assert (await ledger.get(FP)).state is LedgerState.SUBMITTED


async def test_corrupt_record_is_an_error_not_absent(tmp_path):
    ledger = Ledger(str(tmp_path))
    folder = tmp_path / ".kf2v" / "ledger"
    folder.mkdir(parents=True)
    (folder / f"{FP}.json").write_text('{"fingerprint": "aaa", "sta')
    with pytest.raises(LedgerError, match=f"{FP}.json"):
        await ledger.get(FP)
    (folder / f"{FP}.json").write_text('{"fingerprint": "x", "state": "nonsense"}')
    with pytest.raises(LedgerError):
        await ledger.get(FP)


async def test_list_ignores_temp_files(tmp_path):
    ledger = Ledger(str(tmp_path))
    assert await ledger.list() == []
    for fp in ("1" * 64, "2" * 64):
        await ledger.put(full_record(fp))
    (tmp_path / ".kf2v" / "ledger" / f"{'3' * 64}.json.tmp-abc").write_text("{")
    assert [r.fingerprint for r in await ledger.list()] == ["1" * 64, "2" * 64]


async def test_many_concurrent_puts(tmp_path):
    ledger = Ledger(str(tmp_path))
    fps = [f"{i:064x}" for i in range(40)]
    await asyncio.gather(*(ledger.put(full_record(fp)) for fp in fps))
    assert len(await ledger.list()) == 40
    assert all(n.endswith(".json") for n in os.listdir(tmp_path / ".kf2v" / "ledger"))


async def test_unsafe_fingerprint_rejected(tmp_path):
    ledger = Ledger(str(tmp_path))
    for bad in ("../escape", "a/b", "", "x" * 200):
        with pytest.raises(ValueError):
            await ledger.get(bad)


async def test_no_signed_urls_or_keys_stored(tmp_path):
    ledger = Ledger(str(tmp_path))
    rec = full_record()
    rec.add_event(
        "download_failed",
        url="https://dashscope-result.oss.aliyuncs.com/x/v.mp4?Expires=1&OSSAccessKeyId=AK&Signature=zzz",
    )
    rec.error_message = "Authorization: Bearer sk-kf2vtestsecret-0123456789abcdef failed"
    rec.extra = {"nested": ["see https://h/p?sig=abc#frag"]}
    await ledger.put(rec)
    raw = (tmp_path / ".kf2v" / "ledger" / f"{FP}.json").read_text()
    for secret in ("Signature", "Expires=", "kf2vtestsecret", "sig=abc"):
        assert secret not in raw
    got = await ledger.get(FP)
    assert got.events[-1]["url"] == "https://dashscope-result.oss.aliyuncs.com/x/v.mp4"
    assert got.extra["nested"] == ["see https://h/p#frag"]
    assert (
        got.error_message.startswith("Authorization: Bearer ") and "[secure]" in got.error_message
    )


async def test_every_field_is_scrubbed_and_plain_values_kept(tmp_path):
    ledger = Ledger(str(tmp_path))
    rec = full_record()
    rec.error_code = "sk-kf2vtestsecret-0123456789abcdef"
    rec.row_id = "row-1"
    rec.extra = {"plain": "oss://dashscope-instant/a/b.png", "n": 1, "none": None}
    await ledger.put(rec)
    raw = (tmp_path / ".kf2v" / "ledger" / f"{FP}.json").read_text()
    assert "kf2vtestsecret" not in raw
    got = await ledger.get(FP)
    assert got.extra == {"plain": "oss://dashscope-instant/a/b.png", "n": 1, "none": None}
    assert (got.fingerprint, got.task_id, got.row_id) == (FP, "task-1", "row-1")


def test_repr_hides_storage_options():
    ledger = Ledger("memory://kf2v-repr", storage_options={"secret": "hunter2"})
    assert "hunter2" not in repr(ledger)


async def test_memory_roundtrip():
    ledger = Ledger(f"memory://kf2v-{uuid.uuid4().hex[:8]}/out")
    await ledger.put(full_record())
    assert (await ledger.get(FP)).task_id == "task-1"
    assert len(await ledger.list()) == 1


async def test_s3_roundtrip(s3_server):
    bucket = s3_server.new_bucket()
    opts = s3_server.storage_options
    ledger = Ledger(f"s3://{bucket}/run-1", storage_options=opts)
    assert await ledger.get(FP) is None
    assert await ledger.list() == []
    rec = full_record()
    await ledger.put(rec)
    assert await ledger.get(FP) == rec
    rec.persisted(f"s3://{bucket}/run-1/a.mp4", "f" * 64, 10)
    await ledger.put(rec)
    keys = s3_server.filesystem().find(f"{bucket}/run-1")
    assert keys == [f"{bucket}/run-1/.kf2v/ledger/{FP}.json"]
    assert [r.state for r in await ledger.list()] == ["persisted"]
    # Written by "another worker" after our listing was cached: must not look absent.
    s3_server.filesystem().pipe(f"{bucket}/run-1/.kf2v/ledger/{'b' * 64}.json", b"not json")
    with pytest.raises(LedgerError):
        await ledger.get("b" * 64)


def test_datetimes_are_aware_utc():
    rec = LedgerRecord(fingerprint=FP, state="submitted", submitted_at=datetime(2025, 1, 1, 8))
    assert rec.submitted_at.tzinfo is not None and rec.submitted_at.hour == 8
    cst = timezone(timedelta(hours=8))
    rec.persisted_at = datetime(2025, 1, 1, 8, tzinfo=cst)
    assert rec.persisted_at.utcoffset() == timedelta(0) and rec.persisted_at.hour == 0


# -- reuse rules --------------------------------------------------------------------------


def rec_at(age: timedelta, status: TaskStatus | None = None, task_id="t") -> LedgerRecord:
    return LedgerRecord(
        fingerprint=FP,
        state="submitted",
        task_id=task_id,
        submitted_at=T0 - age,
        terminal_status=status,
    )


@pytest.mark.parametrize(
    "age,status,task_id,expected",
    [
        (timedelta(minutes=5), None, "t", True),
        (timedelta(hours=23), None, "t", True),
        (timedelta(hours=23, minutes=29), TaskStatus.SUCCEEDED, "t", True),
        (timedelta(hours=23, minutes=31), None, "t", False),  # inside the 30 min margin
        (timedelta(hours=25), None, "t", False),
        (timedelta(minutes=5), TaskStatus.RUNNING, "t", True),
        (timedelta(minutes=5), TaskStatus.FAILED, "t", False),
        (timedelta(minutes=5), TaskStatus.UNKNOWN, "t", False),
        (timedelta(minutes=5), TaskStatus.CANCELED, "t", False),
        (timedelta(minutes=5), None, None, False),
    ],
)
def test_is_task_reusable(age, status, task_id, expected):
    assert rec_at(age, status, task_id).is_reusable(now=T0) is expected


def test_is_task_reusable_needs_submitted_at_and_honours_ttl():
    rec = LedgerRecord(fingerprint=FP, state="submitted", task_id="t")
    assert not rec.is_reusable(now=T0)
    rec2 = rec_at(timedelta(hours=2))
    assert not rec2.is_reusable(now=T0, ttl=timedelta(hours=2), margin=timedelta(0))
    recent = LedgerRecord(
        fingerprint=FP, state="submitted", task_id="t", submitted_at=datetime.now(UTC)
    )
    assert recent.is_reusable()  # default now


# -- records written before the state machine -------------------------------------------

#: A record exactly as the ledger wrote it before LedgerState existed (no cost fields).
OLD_RECORD = {
    "bytes": 2048,
    "create_attempts": 1,
    "error_code": None,
    "error_message": None,
    "events": [
        {"at": "2025-07-01T12:00:00+00:00", "attempt": 1, "event": "create"},
        {"at": "2025-07-01T12:00:01+00:00", "event": "submitted", "task_id": "t-old"},
        {"at": "2025-07-01T12:03:00+00:00", "event": "persisted", "path": "out/a.mp4"},
    ],
    "extra": {},
    "fingerprint": FP,
    "output_path": "out/a.mp4",
    "persisted_at": "2025-07-01T12:03:00Z",
    "possible_duplicate": False,
    "request_id": "r-old",
    "row_id": "row-1",
    "sha256": "e" * 64,
    "state": "persisted",
    "submitted_at": "2025-07-01T12:00:01Z",
    "task_id": "t-old",
    "terminal_status": "SUCCEEDED",
}


@pytest.mark.parametrize("state", [s.value for s in LedgerState])
async def test_old_record_with_a_plain_string_state_loads(tmp_path, state):
    folder = tmp_path / ".kf2v" / "ledger"
    folder.mkdir(parents=True)
    (folder / f"{FP}.json").write_text(json.dumps({**OLD_RECORD, "state": state}))
    ledger = Ledger(str(tmp_path))
    rec = await ledger.get(FP)
    assert rec.state is LedgerState(state) and rec.state == state
    assert (rec.model, rec.resolution, rec.cost, rec.currency) == (None, None, None, None)
    assert [e["event"] for e in rec.events] == ["create", "submitted", "persisted"]
    await ledger.put(rec)  # written back: the same plain string on disk
    assert json.loads((folder / f"{FP}.json").read_text())["state"] == state


async def test_old_persisted_record_moves_on_through_transitions(tmp_path):
    folder = tmp_path / ".kf2v" / "ledger"
    folder.mkdir(parents=True)
    (folder / f"{FP}.json").write_text(json.dumps(OLD_RECORD))
    ledger = Ledger(str(tmp_path))
    rec = await ledger.get(FP)
    rec.not_reusable(TaskStatus.UNKNOWN)  # expired since
    rec = LedgerRecord.recreate_after(rec)
    rec.begin_create()
    await ledger.put(rec)
    got = await ledger.get(FP)
    assert got.state is LedgerState.SUBMITTING and got.create_attempts == 1
    assert got.extra["earlier_tasks"] == [
        {"task_id": "t-old", "status": "UNKNOWN", "possible_duplicate": False}
    ]


# -- record_outcome ------------------------------------------------------------------------


async def submitted_ledger(tmp_path, task_id="task-1") -> Ledger:
    ledger = Ledger(str(tmp_path))
    rec = LedgerRecord.new(FP)
    rec.begin_create()
    rec.submitted(task_id, "req-1")
    await ledger.put(rec)
    return ledger


def state_of(status: TaskStatus, task_id="task-1", **out) -> TaskState:
    return TaskState(task_id=task_id, status=status, **out)


HISTORY = [StatusChange(status=TaskStatus.RUNNING, seen_at=T0)]


@pytest.mark.parametrize(
    "outcome,status,code",
    [
        (state_of(TaskStatus.SUCCEEDED), TaskStatus.SUCCEEDED, None),
        (
            state_of(TaskStatus.FAILED, code="InternalError", message="boom"),
            TaskStatus.FAILED,
            "InternalError",
        ),
        (
            TaskFailedError("task-1", "DataInspectionFailed", "no"),
            TaskStatus.FAILED,
            "DataInspectionFailed",
        ),
        (TaskCanceledError("task-1", "canceled"), TaskStatus.CANCELED, "TaskCanceledError"),
        (QueueTimeoutError("task-1", "queued too long"), TaskStatus.CANCELED, "QueueTimeoutError"),
        (TaskExpiredError("task-1", "gone"), TaskStatus.UNKNOWN, "TaskExpiredError"),
    ],
)
async def test_record_outcome_writes_how_the_task_ended(tmp_path, outcome, status, code):
    ledger = await submitted_ledger(tmp_path)
    await record_outcome(ledger, FP, outcome)
    rec = await ledger.get(FP)
    assert rec.state is LedgerState.TERMINAL and rec.terminal_status is status
    assert rec.events[-1]["event"] == "ended" and rec.events[-1]["status"] == status.value
    assert rec.error_code == code
    # A dead task is never reused; a SUCCEEDED one still can be (its video is not kept yet).
    assert rec.is_reusable() is (status is TaskStatus.SUCCEEDED)


async def test_record_outcome_timeout_is_only_an_event(tmp_path):
    ledger = await submitted_ledger(tmp_path)
    await record_outcome(ledger, FP, TaskTimeoutError("task-1", "deadline", history=HISTORY))
    rec = await ledger.get(FP)
    assert rec.state is LedgerState.SUBMITTED and rec.terminal_status is None
    assert rec.events[-1]["event"] == "timeout"
    assert rec.events[-1]["history"] == [f"RUNNING@{T0.isoformat()}"]
    assert rec.is_reusable()


@pytest.mark.parametrize(
    "outcome",
    [
        state_of(TaskStatus.RUNNING),  # not over: nothing to say
        ThrottledError("Throttling", "slow down", status_code=429),  # says nothing about the task
        ValueError("a bug elsewhere"),
        state_of(TaskStatus.FAILED, task_id="an-older-task"),  # the record follows task-1
        TaskFailedError("an-older-task", "InternalError", "x"),
    ],
)
async def test_record_outcome_writes_nothing_when_it_has_nothing_to_say(tmp_path, outcome):
    ledger = await submitted_ledger(tmp_path)
    path = tmp_path / ".kf2v" / "ledger" / f"{FP}.json"
    before = path.read_bytes()
    await record_outcome(ledger, FP, outcome)
    assert path.read_bytes() == before


async def test_record_outcome_without_ledger_record_or_fingerprint(tmp_path):
    ledger = Ledger(str(tmp_path))
    failed = state_of(TaskStatus.FAILED)
    await record_outcome(None, FP, failed)
    await record_outcome(ledger, None, failed)
    await record_outcome(ledger, FP, failed)  # no record: nothing to move
    assert await ledger.list() == []


async def test_record_outcome_keeps_a_persisted_video_persisted(tmp_path):
    ledger = await submitted_ledger(tmp_path)
    rec = await ledger.get(FP)
    rec.persisted("out/a.mp4", "f" * 64, 10)
    await ledger.put(rec)
    await record_outcome(ledger, FP, TaskExpiredError("task-1", "expired"))
    rec = await ledger.get(FP)
    assert rec.state is LedgerState.PERSISTED and rec.terminal_status is TaskStatus.UNKNOWN
    assert rec.output_path == "out/a.mp4" and not rec.is_reusable()


# ---------------------------------------------------------------------- modify() on S3


@pytest.fixture
def s3_proxy(s3_proxies):
    return s3_proxies(seed=2)


def forwarded(proxy) -> dict[str, int]:
    return {
        k.removeprefix("forwarded."): v
        for k, v in proxy.counts.items()
        if k.startswith("forwarded.")
    }


async def _submitted_on_s3(s3_server, storage_options: dict) -> tuple[str, Ledger]:
    """A new bucket whose ledger holds FP's record, submitted as task-1 (written by it)."""
    bucket = s3_server.new_bucket()
    ledger = Ledger(f"s3://{bucket}/out", storage_options=storage_options)
    rec = LedgerRecord.new(FP)
    rec.begin_create()
    rec.submitted("task-1", "req-1")
    await ledger.put(rec)
    return bucket, ledger


def spent(proxy, before: dict[str, int]) -> dict[str, int]:
    now = forwarded(proxy)
    return {k: v - before.get(k, 0) for k, v in now.items() if v != before.get(k, 0)}


async def test_record_outcome_after_our_own_write_is_one_conditional_put_on_s3(s3_server, s3_proxy):
    """What this ledger wrote last is not read again: one PUT If-Match its ETag."""
    bucket, ledger = await _submitted_on_s3(s3_server, s3_proxy.storage_options)
    before = forwarded(s3_proxy)
    await record_outcome(ledger, FP, state_of(TaskStatus.SUCCEEDED))
    assert spent(s3_proxy, before) == {"PutObject": 1}
    stored = await Ledger(f"s3://{bucket}/out", storage_options=s3_server.storage_options).get(FP)
    assert stored.state is LedgerState.TERMINAL and stored.terminal_status is TaskStatus.SUCCEEDED
    # A fresh ledger (another process) knows nothing yet: one GET, then the conditional PUT.
    other = Ledger(f"s3://{bucket}/out", storage_options=s3_proxy.storage_options)
    before = forwarded(s3_proxy)
    await other.modify(FP, lambda r: r.add_event("note") or True)
    assert spent(s3_proxy, before) == {"GetObject": 1, "PutObject": 1}


async def _two_writers(s3_server) -> tuple[str, Ledger, Ledger]:
    """Two ledgers on one S3 output; ``mine`` wrote FP's record (task-1) and remembers it."""
    bucket, mine = await _submitted_on_s3(s3_server, s3_server.storage_options)
    return bucket, mine, Ledger(f"s3://{bucket}/out", storage_options=s3_server.storage_options)


async def test_a_record_changed_by_another_writer_is_read_again_never_overwritten(s3_server):
    bucket, mine, theirs = await _two_writers(s3_server)
    # Another run re-created the work since: the record follows another task now.
    other = await theirs.get(FP)
    other.ended(TaskStatus.FAILED, "InternalError", "boom")
    other = LedgerRecord.recreate_after(other)
    other.begin_create()
    other.submitted("task-2", "req-2")
    await theirs.put(other)

    seen: list[str] = []

    def close(r: LedgerRecord) -> bool:
        seen.append(r.task_id)
        if r.task_id != "task-1":
            return False
        r.ended(TaskStatus.SUCCEEDED)
        return True

    out = await mine.modify(FP, close)
    assert seen == ["task-1", "task-2"]  # the If-Match failed, the fresh read decided
    assert out.task_id == "task-2" and out.state is LedgerState.SUBMITTED
    assert (await theirs.get(FP)).task_id == "task-2"

    # A record removed meanwhile is not written back either.
    s3_server.filesystem().rm_file(f"{bucket}/out/.kf2v/ledger/{FP}.json")
    assert await mine.modify(FP, lambda r: True) is None
    assert await theirs.get(FP) is None


def test_a_ledger_pickles_without_what_it_saw(s3_server):
    import pickle

    ledger = Ledger("s3://some-bucket/out", storage_options=s3_server.storage_options)
    ledger._seen["x"] = (b"{}", '"etag"')
    back = pickle.loads(pickle.dumps(ledger))
    assert back.root == ledger.root and not back._seen and back._seen_lock is not None


async def test_update_on_s3_applies_its_changes_to_what_another_writer_wrote(s3_server):
    """update() is a conditional write: a record moved meanwhile is read again, not lost."""
    _, mine, theirs = await _two_writers(s3_server)
    other = await theirs.get(FP)
    other.ended(TaskStatus.SUCCEEDED)
    await theirs.put(other)

    out = await mine.update(FP, row_id="sunrise")
    assert out.row_id == "sunrise" and out.state is LedgerState.TERMINAL
    stored = await theirs.get(FP)
    assert stored.row_id == "sunrise" and stored.terminal_status is TaskStatus.SUCCEEDED
    with pytest.raises(ValueError, match="no field"):
        await mine.update(FP, row_idd="typo")


# ---------------------------------------------------------------------- defer() and flush()


async def test_a_success_put_off_is_written_with_the_next_change_in_one_put(s3_server, s3_proxy):
    """record_outcome(persist_follows=True) writes nothing; "persisted" then writes both."""
    bucket, ledger = await _submitted_on_s3(s3_server, s3_proxy.storage_options)
    before = forwarded(s3_proxy)
    await record_outcome(ledger, FP, state_of(TaskStatus.SUCCEEDED), persist_follows=True)
    assert spent(s3_proxy, before) == {}
    ended_by = datetime.now(UTC)

    def keep(r: LedgerRecord) -> bool:
        r.persisted("out/a.mp4", "f" * 64, 10)
        return True

    await ledger.modify(FP, keep)
    assert spent(s3_proxy, before) == {"PutObject": 1}
    stored = await Ledger(f"s3://{bucket}/out", storage_options=s3_server.storage_options).get(FP)
    assert [e["event"] for e in stored.events] == ["create", "submitted", "ended", "persisted"]
    ended = datetime.fromisoformat(stored.events[-2]["at"])
    assert ended <= ended_by and stored.state is LedgerState.PERSISTED
    await ledger.flush(FP)  # nothing left to write
    assert spent(s3_proxy, before) == {"PutObject": 1}


async def test_a_success_put_off_is_written_alone_by_flush(tmp_path):
    ledger = Ledger(str(tmp_path))
    await ledger.put(full_record())
    await record_outcome(ledger, FP, state_of(TaskStatus.SUCCEEDED), persist_follows=True)
    assert (await ledger.get(FP)).state is LedgerState.SUBMITTED
    await ledger.flush(FP)
    rec = await ledger.get(FP)
    assert rec.state is LedgerState.TERMINAL and rec.terminal_status is TaskStatus.SUCCEEDED
    assert ledger._deferred == {}


async def test_only_a_success_is_put_off(tmp_path):
    """A dead task is written at once whatever follows: it must never be reused."""
    ledger = Ledger(str(tmp_path))
    await ledger.put(full_record())
    await record_outcome(ledger, FP, state_of(TaskStatus.FAILED), persist_follows=True)
    rec = await ledger.get(FP)
    assert rec.terminal_status is TaskStatus.FAILED and not rec.is_reusable()
    assert ledger._deferred == {}
