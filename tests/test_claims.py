"""Claims in the ledger: exclusive create, renewal, expiry and takeover, bounded waits.

On local disk and on S3 (the moto server of the session): two claimers at once, exactly
one wins (threads on the storage primitive, real processes on the claim); a held claim is
renewed past its lease; an expired claim is taken over and the takeover is written into
the ledger record; a live claim with no task id never blocks for ever.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from test_generation_submit import ScriptedClient

from kf2v_tasks import clock
from kf2v_tasks.dashscope.models import GenerationOptions, TaskStatus
from kf2v_tasks.errors import TaskFailedError
from kf2v_tasks.generation import claim_lease
from kf2v_tasks.generation import claims as claims_mod
from kf2v_tasks.generation.claims import ClaimBook, ClaimDoc, ClaimHeldError, ClaimPolicy
from kf2v_tasks.generation.fingerprint import request_fingerprint
from kf2v_tasks.generation.frames import check_pair
from kf2v_tasks.generation.ledger import Ledger, LedgerRecord
from kf2v_tasks.generation.outcome import record_outcome
from kf2v_tasks.generation.submit import submit_generation
from kf2v_tasks.storage.conditional import (
    ConditionFailedError,
    create_exclusive_sync,
    delete_if_sync,
    guarantee,
    read_versioned_sync,
    replace_if_sync,
)

from fake_clock import LeaseTime
from helpers import make_frame

FP = "c" * 64
OPTIONS = GenerationOptions(resolution="480P", seed=3)


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path: Path) -> tuple[str, dict | None]:
    """An output root on local disk or in a fresh S3 bucket, with its storage options."""
    if request.param == "local":
        return str(tmp_path / "out"), None
    s3 = request.getfixturevalue("s3_server")
    return f"s3://{s3.new_bucket()}/out", s3.storage_options


@pytest.fixture(autouse=True)
def fast_clock(monkeypatch):
    """Service time 60x: a 120 s lease is 2 real seconds (a real-time floor of 2 s here:
    the default floor would only make these tests wait longer)."""
    monkeypatch.setattr(claims_mod, "MIN_LEASE_REAL_SECONDS", 2.0)
    clock.set_time_scale(60)
    yield
    clock.set_time_scale(None)


def test_a_lease_never_lasts_less_than_its_real_time_floor(monkeypatch):
    monkeypatch.undo()
    assert ClaimPolicy().lease() == claims_mod.MIN_LEASE_REAL_SECONDS * 60 == 360.0
    assert ClaimPolicy(lease_seconds=600).lease() == 600


@pytest.fixture
def lease_time(monkeypatch) -> LeaseTime:
    """Fake time for leases, renewals and waits: moved by ``lease_time.advance(seconds)``."""
    return LeaseTime().install(monkeypatch)


def foreign_claim(book: ClaimBook, fp: str, *, expires_in: float, pid: int = 4242) -> None:
    """A claim file written by another (pretend) process: live or already expired."""
    now = claim_lease.wall_clock()  # the fake clock's, where a test uses one
    doc = ClaimDoc(
        fingerprint=fp, holder="0" * 32, token="other", host="elsewhere", pid=pid,
        acquired_at=now, renewed_at=now, expires_at=now + timedelta(seconds=expires_in),
        lease_seconds=120,
    )  # fmt: skip
    create_exclusive_sync(book.url_of(fp), doc.to_bytes(), book.storage_options)


def claim_doc(book: ClaimBook, fp: str) -> ClaimDoc | None:
    try:
        data, _ = read_versioned_sync(book.url_of(fp), book.storage_options)
    except FileNotFoundError:
        return None
    return ClaimDoc.model_validate_json(data)


# -- the storage primitive -------------------------------------------------------------------


def test_exclusive_create_has_exactly_one_winner(root):
    url = root[0] + "/.kf2v/claims/race.json"
    assert guarantee(url, root[1]) == "atomic"

    def claimer(i: int, target: str, barrier: threading.Barrier, outcomes: list[str]) -> None:
        barrier.wait()
        try:
            create_exclusive_sync(target, f"claimer {i}".encode(), root[1])
            outcomes.append(f"won {i}")
        except FileExistsError:
            outcomes.append("lost")

    for attempt in range(5):
        target = f"{url}.{attempt}"
        barrier = threading.Barrier(4)
        outcomes: list[str] = []
        threads = [
            threading.Thread(target=claimer, args=(i, target, barrier, outcomes)) for i in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [o for o in outcomes if o.startswith("won")]
        assert len(winners) == 1 and outcomes.count("lost") == 3, outcomes
        data, _ = read_versioned_sync(target, root[1])
        assert data.decode() == "claimer " + winners[0].split()[1]


def test_conditional_replace_and_delete_refuse_a_stale_version(root):
    url = root[0] + "/.kf2v/claims/cas.json"
    v1 = create_exclusive_sync(url, b"one", root[1])
    with pytest.raises(FileExistsError):
        create_exclusive_sync(url, b"two", root[1])
    v2 = replace_if_sync(url, b"two", v1, root[1])
    assert v2 != v1 and read_versioned_sync(url, root[1]) == (b"two", v2)
    with pytest.raises(ConditionFailedError):
        replace_if_sync(url, b"three", v1, root[1])  # somebody renewed since v1
    with pytest.raises(ConditionFailedError):
        delete_if_sync(url, v1, root[1])
    delete_if_sync(url, v2, root[1])
    with pytest.raises(FileNotFoundError):
        read_versioned_sync(url, root[1])
    with pytest.raises(ConditionFailedError):
        replace_if_sync(url, b"four", v2, root[1])  # gone: nothing to replace


def test_other_stores_are_documented_as_racy():
    assert guarantee("memory://kf2v-claims/x.json") == "racy"


# -- claims across real processes --------------------------------------------------------------

_CLAIMER = """
import asyncio, os, sys, time
from kf2v_tasks.generation.claims import ClaimBook
from kf2v_tasks.generation.ledger import Ledger
root, fp, go, opts = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
import json
book = ClaimBook(Ledger(root, storage_options=json.loads(opts) or None))
asyncio.run(book.read("0" * 64))  # warm: the storage's own imports and client are loaded
open(f"{go}.ready.{os.getpid()}", "w").close()
while not os.path.exists(go):
    time.sleep(0.005)
held, other = asyncio.run(book.try_acquire(fp, row_id="r"))
print("won" if held else "lost", flush=True)
while not os.path.exists(go + ".done"):  # alive until both answered: a holder that
    time.sleep(0.005)  # exited would be taken over, not raced
"""


@pytest.mark.slow  # two fresh Python processes importing the package
def test_two_processes_claim_at_once_and_one_wins(root, tmp_path):
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMER, root[0], FP, str(go), json.dumps(root[1] or {})],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("go.ready.*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)  # until both are imported, warm and spinning on the start file
    go.write_text("go")
    outs = [p.stdout.readline().strip() for p in procs]
    (tmp_path / "go.done").write_text("done")
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err[-2000:]
    assert sorted(outs) == ["lost", "won"], outs


# -- lease, renewal, expiry, takeover ----------------------------------------------------------


async def test_a_held_claim_is_renewed_past_its_lease_and_released(root, lease_time):
    book = ClaimBook(Ledger(root[0], storage_options=root[1]))
    held, other = await book.try_acquire(FP, row_id="r1")
    assert held is not None and other is None and book.holds(FP)
    first = claim_doc(book, FP)
    assert first.pid == os.getpid() and first.holder == claims_mod.HOLDER_ID
    lease_real = (first.expires_at - first.renewed_at).total_seconds()
    assert lease_real == pytest.approx(2.0, abs=0.05)  # 120 service s at 60x
    lease_time.advance(lease_real * 1.5)
    later = claim_doc(book, FP)
    assert later.token == first.token and later.expires_at > first.expires_at
    assert later.is_live()  # older than its lease, still live: the holder renews it
    assert await book.release(FP) and claim_doc(book, FP) is None and not book.holds(FP)
    assert not await book.release(FP)  # nothing held any more


async def test_a_claim_is_renewed_only_once_two_thirds_of_its_lease_are_spent(
    root, monkeypatch, lease_time
):
    """Short work is never renewed; a held claim is renewed every two thirds of a lease."""
    renewals: list[str] = []
    real_replace = claim_lease.replace_if_sync

    def counting(url, *args, **kwargs):
        renewals.append(url)
        return real_replace(url, *args, **kwargs)

    monkeypatch.setattr(claim_lease, "replace_if_sync", counting)
    book = ClaimBook(Ledger(root[0], storage_options=root[1]))
    held, _ = await book.try_acquire(FP)
    first = claim_doc(book, FP)
    lease_time.advance(1.1)  # under two thirds of the 2 s lease: nothing to renew yet
    assert renewals == [] and claim_doc(book, FP) == first
    await book.release(FP)
    assert renewals == []  # held 1.1 s of a 2 s lease: acquired and released, no renewal

    held, _ = await book.try_acquire(FP)
    lease_time.advance(3.0)  # renewed at ~1.33 s and ~2.67 s
    assert len(renewals) == 2 and claim_doc(book, FP).is_live()
    await book.release(FP)


async def test_a_failed_renewal_is_retried_well_before_the_lease_ends(
    root, monkeypatch, lease_time
):
    calls: list[float] = []
    real_replace = claim_lease.replace_if_sync

    def flaky(url, *args, **kwargs):
        calls.append(lease_time.monotonic())
        if len(calls) <= 2:
            raise OSError("storage hiccup")
        return real_replace(url, *args, **kwargs)

    monkeypatch.setattr(claim_lease, "replace_if_sync", flaky)
    book = ClaimBook(Ledger(root[0], storage_options=root[1]))
    await book.try_acquire(FP)
    first = claim_doc(book, FP)
    lease_time.advance(1.9)  # due at 1.33 s, retried at 1.5 s and 1.67 s: renewed by then
    assert len(calls) >= 3 and calls[1] - calls[0] == pytest.approx(1 / 6, abs=0.1)
    assert claim_doc(book, FP).expires_at > first.expires_at and book.holds(FP)
    await book.release(FP)


async def test_an_expired_claim_is_taken_over_and_the_takeover_recorded(root):
    ledger = Ledger(root[0], storage_options=root[1])
    book = ClaimBook(ledger)
    foreign_claim(book, FP, expires_in=-5, pid=999)  # its holder died 5 s ago
    got = await book.acquire(FP, row_id="r1")
    assert got.held is not None
    now_claim = claim_doc(book, FP)
    assert now_claim.pid == os.getpid() and now_claim.taken_over_from == "0" * 32
    rec = await ledger.get(FP)
    takeover = [e for e in rec.events if e["event"] == "claim_takeover"]
    assert len(takeover) == 1
    assert (takeover[0]["from_host"], takeover[0]["from_pid"]) == ("elsewhere", 999)
    assert takeover[0]["holder"] == claims_mod.HOLDER_ID and takeover[0]["at"]
    await book.release(FP)


async def test_a_takeover_note_never_overwrites_what_another_writer_just_wrote(s3_server):
    """The dead holder's re-attached peer keeps the video while we take the claim over."""
    bucket = s3_server.new_bucket()
    opts = s3_server.storage_options
    ledger = Ledger(f"s3://{bucket}/out", storage_options=opts)
    peer = Ledger(f"s3://{bucket}/out", storage_options=opts)
    rec = LedgerRecord.new(FP)
    rec.begin_create()
    rec.submitted("task-1")
    await peer.put(rec)
    book = ClaimBook(ledger)
    foreign_claim(book, FP, expires_in=-5, pid=999)
    real_get = ledger._get_sync

    def get_then_peer_writes(path):
        got = real_get(path)
        kept = peer._get_sync(path)
        kept.persisted("out/a.mp4", "f" * 64, 10)  # lands between our read and our write
        peer._put_sync(path, peer._encode(kept))
        return got

    ledger._get_sync = get_then_peer_writes
    held, _ = await book.try_acquire(FP)
    assert held is not None
    stored = await peer.get(FP)
    assert stored.state == "persisted"
    assert [e["event"] for e in stored.events][-2:] == ["persisted", "claim_takeover"]
    await book.release(FP)


async def test_a_live_claim_with_no_task_fails_after_a_bounded_wait(root, lease_time):
    ledger = Ledger(root[0], storage_options=root[1])
    book = ClaimBook(ledger, ClaimPolicy(lease_seconds=60, poll_seconds=30))
    foreign_claim(book, FP, expires_in=3600, pid=777)  # alive (as far as we can tell)
    started = lease_time.monotonic()
    with pytest.raises(ClaimHeldError, match="host elsewhere, pid 777") as err:
        await book.acquire(FP, row_id="r1")
    waited = lease_time.monotonic() - started
    # The wait limit is 1.5 leases: 180 service s (the 2 s real floor) = 3 (fake) seconds.
    assert 2.5 < waited < 8, waited
    assert err.value.code == "ClaimHeld" and "not creating it again" in str(err.value)
    assert claim_doc(book, FP).pid == 777  # the other run's claim is left alone


async def test_a_waiting_run_re_attaches_once_the_holder_records_its_task(root):
    ledger = Ledger(root[0], storage_options=root[1])
    book = ClaimBook(ledger)
    foreign_claim(book, FP, expires_in=3600)

    async def holder_creates():
        await asyncio.sleep(0.5)
        rec = LedgerRecord.new(FP, row_id="r1")
        rec.begin_create()
        await ledger.put(rec)  # "submitting": not usable yet, keep waiting
        await asyncio.sleep(0.5)
        rec.submitted("task-of-other-run")
        await ledger.put(rec)

    got, _ = await asyncio.gather(book.acquire(FP, row_id="r1"), holder_creates())
    assert got.held is None and got.record.task_id == "task-of-other-run"
    assert got.other.pid == 4242


# -- submit_generation with claims ------------------------------------------------------------


@pytest.fixture
async def pair(tmp_path: Path):
    a = make_frame(tmp_path / "in" / "a.png", (320, 240), (200, 60, 30))
    b = make_frame(tmp_path / "in" / "b.png", (320, 240), (20, 160, 220))
    return await check_pair(str(a), str(b))


async def submit(client, pair, ledger, **kw):
    return await submit_generation(
        client, pair, "a slow pan", None, OPTIONS, ledger=ledger, row_id="row-1", **kw
    )


async def test_submit_re_attaches_to_the_other_runs_task_and_never_posts(root, pair):
    ledger = Ledger(root[0], storage_options=root[1])
    fp = request_fingerprint(pair, "a slow pan", None, OPTIONS)
    book = ClaimBook(ledger)
    foreign_claim(book, fp, expires_in=3600)
    client = ScriptedClient("ok")
    client.statuses["task-9"] = TaskStatus.RUNNING

    async def other_run():
        await asyncio.sleep(0.3)
        rec = LedgerRecord.new(fp, row_id="row-1")
        rec.begin_create()
        rec.submitted("task-9", "req-9")
        await ledger.put(rec)

    sub, _ = await asyncio.gather(submit(client, pair, ledger), other_run())
    assert (sub.task_id, sub.reused, client.posts) == ("task-9", True, 0)
    assert sub.already_persisted_at is None
    assert claim_doc(book, fp).pid == 4242  # still the other run's


async def test_submit_holds_the_claim_until_the_task_ends(root, pair):
    ledger = Ledger(root[0], storage_options=root[1])
    book = ClaimBook(ledger)
    sub = await submit(ScriptedClient("ok"), pair, ledger)
    assert not sub.reused and book.holds(sub.fingerprint)
    assert claim_doc(book, sub.fingerprint).row_id == "row-1"
    await record_outcome(ledger, sub.fingerprint, TaskFailedError(sub.task_id, "E", "boom"))
    assert not book.holds(sub.fingerprint) and claim_doc(book, sub.fingerprint) is None


async def test_a_failed_create_releases_the_claim(tmp_path, pair):
    from kf2v_tasks.errors import InvalidRequestError

    ledger = Ledger(str(tmp_path / "out"))
    refused = InvalidRequestError("InvalidParameter", "bad frame", status_code=400)
    with pytest.raises(InvalidRequestError):
        await submit(ScriptedClient(refused), pair, ledger)
    fp = request_fingerprint(pair, "a slow pan", None, OPTIONS)
    assert not ClaimBook(ledger).holds(fp) and claim_doc(ClaimBook(ledger), fp) is None


async def test_already_persisted_work_says_so(tmp_path, pair):
    ledger = Ledger(str(tmp_path / "out"))
    client = ScriptedClient("ok")
    first = await submit(client, pair, ledger)
    rec = await ledger.get(first.fingerprint)
    rec.ended("SUCCEEDED")
    rec.persisted(str(tmp_path / "out" / "a.mp4"), "f" * 64, 10)
    await ledger.put(rec)
    await ClaimBook(ledger).release(first.fingerprint)
    client.statuses[first.task_id] = TaskStatus.SUCCEEDED
    again = await submit(client, pair, ledger)
    assert again.reused and again.already_persisted_at == rec.persisted_at
    assert again.persisted_path == str(tmp_path / "out" / "a.mp4") and client.posts == 1
    assert claim_doc(ClaimBook(ledger), first.fingerprint) is None  # nothing left to hold


async def test_an_expired_claim_with_a_task_is_adopted_by_the_re_attaching_run(tmp_path, pair):
    ledger = Ledger(str(tmp_path / "out"))
    fp = request_fingerprint(pair, "a slow pan", None, OPTIONS)
    rec = LedgerRecord.new(fp, row_id="row-1")
    rec.begin_create()
    rec.submitted("task-5")
    await ledger.put(rec)
    book = ClaimBook(ledger)
    foreign_claim(book, fp, expires_in=-1, pid=31337)  # died while polling task-5
    client = ScriptedClient()
    client.statuses["task-5"] = TaskStatus.RUNNING
    sub = await submit(client, pair, ledger)
    assert (sub.task_id, sub.reused, client.posts) == ("task-5", True, 0)
    assert book.holds(fp) and claim_doc(book, fp).taken_over_from == "0" * 32
    events = [e for e in (await ledger.get(fp)).events if e["event"] == "claim_takeover"]
    assert events[0]["from_pid"] == 31337
    await book.release(fp)


async def test_claims_can_be_switched_off(tmp_path, pair):
    ledger = Ledger(str(tmp_path / "out"))
    sub = await submit(ScriptedClient("ok"), pair, ledger, claims=ClaimPolicy(enabled=False))
    assert not ClaimBook(ledger).holds(sub.fingerprint)
    assert not (tmp_path / "out" / ".kf2v" / "claims").exists()


def _held_claim_writes(monkeypatch):
    """Claim file creates that wait for ``go`` in their worker thread: (entered, go, landed,
    the real create)."""
    from kf2v_tasks.storage import conditional

    entered, go, landed = threading.Event(), threading.Event(), threading.Event()
    real = conditional.create_exclusive_sync

    def slow_create(*args, **kwargs):
        entered.set()
        go.wait(10)
        try:
            return real(*args, **kwargs)
        finally:
            landed.set()

    monkeypatch.setattr(conditional, "create_exclusive_sync", slow_create)
    return entered, go, landed, real


async def test_a_claim_whose_acquisition_is_cancelled_leaves_no_file(tmp_path, monkeypatch):
    """Ctrl-C while the claim file is being written (in a worker thread, which a cancel
    does not stop): the file still lands, and must be taken back, not left for nobody."""
    entered, go, landed, _ = _held_claim_writes(monkeypatch)
    book = ClaimBook(Ledger(str(tmp_path / "out")))
    fp = "cd" * 32
    acquiring = asyncio.ensure_future(book.try_acquire(fp, row_id="r1"))
    await asyncio.to_thread(entered.wait, 10)
    acquiring.cancel()
    await asyncio.sleep(0)  # the cancel reaches the waiting caller first
    go.set()  # then the write lands
    with pytest.raises(asyncio.CancelledError):
        await acquiring
    await asyncio.to_thread(landed.wait, 10)  # the write has landed: was it taken back?
    assert not os.path.exists(book.url_of(fp))
    assert claim_lease.held_at(book.url_of(fp)) is None


def test_a_command_that_stops_takes_back_a_claim_written_but_never_held(tmp_path, monkeypatch):
    """The stop abandons the event loop while a claim file's write is in its thread (CI saw
    this after Ctrl-C): release_all, on the command's way out, waits for the write and
    removes the file, and only a file of ours."""
    _, go, landed, real = _held_claim_writes(monkeypatch)
    book = ClaimBook(Ledger(str(tmp_path / "out")))
    mine, theirs = "ab" * 32, "ef" * 32

    def abandoned_loop() -> None:  # a loop that stops with the claim's write in flight
        loop = asyncio.new_event_loop()
        loop.create_task(book.try_acquire(mine, row_id="r1"))
        loop.run_until_complete(asyncio.sleep(0.2))

    threading.Thread(target=abandoned_loop).start()
    other = ClaimDoc.model_validate(
        {**json.loads(book._new_doc(theirs, "r2").to_bytes()), "holder": "someone-else"}
    )
    with claim_lease.claim_write(book.url_of(theirs), None):  # a write whose file is not ours
        real(book.url_of(theirs), other.to_bytes(), None)
    threading.Timer(0.3, go.set).start()
    assert claim_lease.release_all(wait=5.0) >= 1
    assert landed.is_set() and not os.path.exists(book.url_of(mine))
    assert os.path.exists(book.url_of(theirs))  # another holder's claim is left alone
