"""The durable ledger: roundtrips on local disk, S3 and memory, atomicity, secrets, reuse rules."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from kf2v_tasks.dashscope.models import TaskStatus
from kf2v_tasks.generation.ledger import Ledger, LedgerError, LedgerRecord, scrub

FP = "a" * 64
T0 = datetime(2025, 7, 1, 12, 0, tzinfo=UTC)


def full_record(fp: str = FP) -> LedgerRecord:
    rec = LedgerRecord(
        fingerprint=fp,
        state="submitted",
        task_id="task-1",
        request_id="req-1",
        submitted_at=T0,
        create_attempts=1,
        row_id="row-1",
        extra={"model": "wan2.2-kf2v-flash"},
    )
    rec.add_event("submitted", task_id="task-1")
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
    rec.state = "persisted"
    rec.sha256, rec.bytes = "f" * 64, 123
    await ledger.put(rec)
    got = await ledger.get(FP)
    assert got.state == "persisted" and got.bytes == 123
    assert os.listdir(tmp_path / ".kf2v" / "ledger") == [f"{FP}.json"]


async def test_update(tmp_path):
    ledger = Ledger(str(tmp_path))
    await ledger.put(full_record())
    rec = await ledger.update(FP, state="terminal", terminal_status=TaskStatus.FAILED)
    assert rec.terminal_status is TaskStatus.FAILED
    assert (await ledger.get(FP)).state == "terminal"
    with pytest.raises(KeyError):
        await ledger.update("b" * 64, state="submitted")
    with pytest.raises(ValueError):
        await ledger.update(FP, state="bogus")


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


def test_scrub_leaves_plain_text_alone():
    assert scrub("oss://dashscope-instant/a/b.png") == "oss://dashscope-instant/a/b.png"
    assert scrub({"a": 1, "b": None}) == {"a": 1, "b": None}


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
    await ledger.update(FP, state="persisted", output_path=f"s3://{bucket}/run-1/a.mp4")
    keys = s3_server.filesystem().find(f"{bucket}/run-1")
    assert keys == [f"{bucket}/run-1/.kf2v/ledger/{FP}.json"]
    assert [r.state for r in await ledger.list()] == ["persisted"]
    # Written by "another worker" after our listing was cached: must not look absent.
    s3_server.filesystem().pipe(f"{bucket}/run-1/.kf2v/ledger/{'b' * 64}.json", b"not json")
    with pytest.raises(LedgerError):
        await ledger.get("b" * 64)


def test_datetimes_are_aware_utc():
    rec = LedgerRecord(fingerprint=FP, state="submitting", submitted_at=datetime(2025, 1, 1, 8))
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
    assert Ledger.is_task_reusable(rec_at(age, status, task_id), now=T0) is expected


def test_is_task_reusable_needs_submitted_at_and_honours_ttl():
    rec = LedgerRecord(fingerprint=FP, state="submitted", task_id="t")
    assert not Ledger.is_task_reusable(rec, now=T0)
    rec2 = rec_at(timedelta(hours=2))
    assert not Ledger.is_task_reusable(rec2, now=T0, ttl=timedelta(hours=2), margin=timedelta(0))
    recent = LedgerRecord(
        fingerprint=FP, state="submitted", task_id="t", submitted_at=datetime.now(UTC)
    )
    assert Ledger.is_task_reusable(recent)  # default now
