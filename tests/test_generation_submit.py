"""submit_generation as a plain async function: reuse, re-create, ambiguity and crashes.

A scripted stand-in for Kf2vClient plays each create's outcome (including "the process
died after the POST left"); the ledger is a real one on local disk, read back after each
step to check what a re-run would see.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kf2v_tasks.dashscope.models import GenerationOptions, Kf2vRequest, TaskStatus
from kf2v_tasks.dashscope.task_state import TaskState
from kf2v_tasks.errors import (
    AmbiguousCreateError,
    ConnectionFailedError,
    InvalidRequestError,
)
from kf2v_tasks.generation.fingerprint import request_fingerprint
from kf2v_tasks.generation.frames import check_pair
from kf2v_tasks.generation.ledger import Ledger, LedgerRecord, LedgerState
from kf2v_tasks.generation.submit import AmbiguousPolicy, submit_generation

from helpers import make_frame

OPTIONS = GenerationOptions(resolution="480P", seed=3)


class Crash(BaseException):
    """The process dies (not an Exception: nothing may catch and record it)."""


class ScriptedClient:
    """Kf2vClient's create/query surface; each create plays the next scripted outcome.

    Outcomes: ``"ok"`` (a task is created), ``"not_sent"`` (fails before the POST
    leaves), an exception raised after the POST left, or ``Crash``.
    """

    def __init__(self, *script) -> None:
        self.script = list(script)
        self.posts = 0  # POSTs that left (before_send ran)
        self.created: list[str] = []
        self.statuses: dict[str, TaskStatus] = {}
        self.queries: list[str] = []
        self.requests: list[Kf2vRequest] = []

    async def create_task(self, request: Kf2vRequest, *, before_send=None) -> TaskState:
        outcome = self.script.pop(0)
        if outcome == "not_sent":
            raise ConnectionFailedError("connect refused", request_sent=False)
        if before_send is not None:
            await before_send()
        self.posts += 1
        self.requests.append(request)
        if outcome is Crash:
            raise Crash()
        if isinstance(outcome, BaseException):
            raise outcome
        task_id = f"task-{len(self.created) + 1}"
        self.created.append(task_id)
        self.statuses[task_id] = TaskStatus.PENDING
        return TaskState(task_id=task_id, status=TaskStatus.PENDING, request_id=f"req-{task_id}")

    async def get_task(self, task_id: str) -> TaskState:
        self.queries.append(task_id)
        status = self.statuses.get(task_id, TaskStatus.UNKNOWN)
        code = "InternalError" if status is TaskStatus.FAILED else None
        return TaskState(task_id=task_id, status=status, code=code, message=code and "boom")

    async def upload_file(self, data: bytes, filename: str, model: str) -> str:
        return f"oss://dashscope-instant/x/{filename}"


def ambiguous() -> AmbiguousCreateError:
    return AmbiguousCreateError("read timeout after the create was sent")


@pytest.fixture
async def pair(tmp_path: Path):
    a = make_frame(tmp_path / "in" / "a.png", (320, 240), (200, 60, 30))
    b = make_frame(tmp_path / "in" / "b.png", (320, 240), (20, 160, 220))
    return await check_pair(str(a), str(b))


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(str(tmp_path / "out"))


async def submit(client, pair, ledger, policy=AmbiguousPolicy.RETRY_ONCE, **kw):
    return await submit_generation(
        client,
        pair,
        "a slow pan",
        None,
        OPTIONS,
        ledger=ledger,
        ambiguous_policy=policy,
        row_id="row-1",
        **kw,
    )


def events(record: LedgerRecord) -> list[str]:
    return [e["event"] for e in record.events]


async def test_new_work_is_created_once_and_recorded(pair, ledger):
    client = ScriptedClient("ok")
    sub = await submit(client, pair, ledger)
    assert (sub.task_id, sub.request_id, sub.reused) == ("task-1", "req-task-1", False)
    assert sub.fingerprint == request_fingerprint(pair, "a slow pan", None, OPTIONS)
    assert (sub.model, sub.resolution, sub.duration_seconds) == ("wan2.2-kf2v-flash", "480P", 5)
    assert sub.parameters["seed"] == 3 and sub.create_attempts == 1
    sent = client.requests[0]
    assert sent.first_frame_url.startswith("data:image/png;base64,")
    rec = await ledger.get(sub.fingerprint)
    assert rec.state is LedgerState.SUBMITTED and rec.task_id == "task-1"
    assert rec.row_id == "row-1" and events(rec) == ["create", "submitted"]


async def test_a_valid_task_is_reused_without_a_create(pair, ledger):
    client = ScriptedClient("ok")
    first = await submit(client, pair, ledger)
    again = await submit(client, pair, ledger)
    assert again.reused and again.task_id == first.task_id and client.posts == 1
    assert client.queries == ["task-1"]  # one query makes the reuse safe
    assert (again.resolution, again.duration_seconds) == ("480P", 5)


async def test_a_failed_task_is_marked_and_the_work_created_again(pair, ledger):
    client = ScriptedClient("ok", "ok")
    first = await submit(client, pair, ledger)
    client.statuses[first.task_id] = TaskStatus.FAILED
    second = await submit(client, pair, ledger)
    assert second.task_id == "task-2" and not second.reused and client.posts == 2
    rec = await ledger.get(second.fingerprint)
    assert events(rec) == ["create", "submitted", "not_reusable", "recreate", "create", "submitted"]
    assert rec.extra["earlier_tasks"] == [
        {"task_id": "task-1", "status": "FAILED", "possible_duplicate": False}
    ]
    assert rec.state is LedgerState.SUBMITTED and rec.create_attempts == 1


async def test_an_expired_task_is_created_again_without_a_query(pair, ledger):
    client = ScriptedClient("ok", "ok")
    first = await submit(client, pair, ledger)
    rec = await ledger.get(first.fingerprint)
    rec.submitted_at = datetime.now(UTC) - timedelta(hours=25)
    await ledger.put(rec)
    second = await submit(client, pair, ledger)
    assert second.task_id == "task-2" and client.queries == []


async def _kept_long_ago(client, pair, ledger, tmp_path: Path) -> tuple[str, Path]:
    """Work created, its video kept at a path, and its task now past the 24 h TTL."""
    import hashlib

    first = await submit(client, pair, ledger)
    video = tmp_path / "out" / "row-1.mp4"
    video.write_bytes(b"a kept video")
    rec = await ledger.get(first.fingerprint)
    rec.persisted(str(video), hashlib.sha256(video.read_bytes()).hexdigest(), 12)
    rec.submitted_at = datetime.now(UTC) - timedelta(hours=25)
    await ledger.put(rec)
    return first.fingerprint, video


async def test_a_kept_video_outlives_its_task_and_is_never_made_again(pair, ledger, tmp_path):
    # A run that planned before another run kept this video reaches it after the task's
    # 24 h (seed 20261215 of the soak, where 24 h are 144 s): it must not pay again.
    client = ScriptedClient("ok", "ok")
    fp, video = await _kept_long_ago(client, pair, ledger, tmp_path)
    stale = LedgerRecord.new(fp, row_id="row-1")  # what the late run's plan had read
    again = await submit(client, pair, ledger, record=stale)
    assert again.reused and again.task_id == "task-1" and client.posts == 1
    assert again.persisted_path == str(video) and again.already_persisted_at is not None


async def test_a_kept_video_that_is_gone_is_made_again_once_its_task_expired(
    pair, ledger, tmp_path
):
    client = ScriptedClient("ok", "ok")
    _, video = await _kept_long_ago(client, pair, ledger, tmp_path)
    video.write_bytes(b"not the kept video")
    again = await submit(client, pair, ledger)
    assert not again.reused and again.task_id == "task-2" and client.posts == 2


async def test_one_guarded_retry_after_an_ambiguous_create(pair, ledger):
    client = ScriptedClient(ambiguous(), "ok")
    sub = await submit(client, pair, ledger)
    assert sub.possible_duplicate and sub.create_attempts == 2 and client.posts == 2
    rec = await ledger.get(sub.fingerprint)
    assert events(rec) == ["create", "ambiguous_create", "create", "submitted"]
    assert rec.state is LedgerState.SUBMITTED and rec.possible_duplicate


async def test_two_ambiguous_creates_stop_and_a_rerun_never_posts_a_third(pair, ledger):
    client = ScriptedClient(ambiguous(), ambiguous())
    with pytest.raises(AmbiguousCreateError):
        await submit(client, pair, ledger)
    fp = request_fingerprint(pair, "a slow pan", None, OPTIONS)
    rec = await ledger.get(fp)
    assert rec.state is LedgerState.AMBIGUOUS and rec.create_attempts == 2
    with pytest.raises(AmbiguousCreateError, match=f"fingerprint {fp[:12]} may have reached"):
        await submit(ScriptedClient("ok"), pair, ledger)
    assert client.posts == 2


async def test_policy_fail_never_retries(pair, ledger):
    client = ScriptedClient(ambiguous(), "ok")
    with pytest.raises(AmbiguousCreateError):
        await submit(client, pair, ledger, AmbiguousPolicy.FAIL)
    assert client.posts == 1
    with pytest.raises(AmbiguousCreateError, match="policy fail"):
        await submit(client, pair, ledger, "fail")
    assert client.posts == 1


async def test_a_refused_create_is_terminal_with_nothing_paid_and_may_be_tried_again(pair, ledger):
    refused = InvalidRequestError("InvalidParameter", "bad frame", status_code=400)
    client = ScriptedClient(refused, "ok")
    with pytest.raises(InvalidRequestError):
        await submit(client, pair, ledger)
    fp = request_fingerprint(pair, "a slow pan", None, OPTIONS)
    rec = await ledger.get(fp)
    assert rec.state is LedgerState.TERMINAL and rec.task_id is None
    assert (rec.create_attempts, rec.error_code) == (0, "InvalidParameter")
    sub = await submit(client, pair, ledger)  # e.g. after the user fixed their account
    assert sub.task_id == "task-1" and not sub.possible_duplicate and sub.create_attempts == 1


async def test_a_create_that_never_left_counts_no_attempt(pair, ledger):
    client = ScriptedClient("not_sent")
    with pytest.raises(ConnectionFailedError):
        await submit(client, pair, ledger)
    rec = await ledger.get(request_fingerprint(pair, "a slow pan", None, OPTIONS))
    assert rec.state is LedgerState.TERMINAL and rec.create_attempts == 0
    assert rec.error_code == "ConnectionFailedError" and client.posts == 0


async def test_a_crash_after_the_post_left_is_a_possible_duplicate_on_resume(pair, ledger):
    with pytest.raises(Crash):
        await submit(ScriptedClient(Crash), pair, ledger)
    fp = request_fingerprint(pair, "a slow pan", None, OPTIONS)
    rec = await ledger.get(fp)
    # Written before the POST: a resume knows a create may exist.
    assert rec.state is LedgerState.SUBMITTING and rec.create_attempts == 1
    client = ScriptedClient("ok")
    sub = await submit(client, pair, ledger)
    assert sub.possible_duplicate and sub.create_attempts == 2 and client.posts == 1
    rec = await ledger.get(fp)
    assert events(rec) == ["create", "create_outcome_unknown", "create", "submitted"]


async def test_a_crash_under_policy_fail_records_the_ambiguity_and_stops(pair, ledger):
    with pytest.raises(Crash):
        await submit(ScriptedClient(Crash), pair, ledger)
    client = ScriptedClient("ok")
    with pytest.raises(AmbiguousCreateError):
        await submit(client, pair, ledger, AmbiguousPolicy.FAIL)
    rec = await ledger.get(request_fingerprint(pair, "a slow pan", None, OPTIONS))
    assert rec.state is LedgerState.AMBIGUOUS and rec.possible_duplicate
    assert client.posts == 0


async def test_without_a_ledger_every_call_creates(pair):
    client = ScriptedClient("ok", "ok")
    a = await submit(client, pair, None)
    b = await submit(client, pair, None)
    assert (a.task_id, b.task_id) == ("task-1", "task-2") and client.queries == []
