"""submit_generation given the ledger record its caller already read (a batch, at planning).

The record stands in for the read before the claim, never for the read under it: an old
record can make a run claim in vain or check a task at the service, never pay twice or
write over a newer record.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_generation_submit import OPTIONS, ScriptedClient

from kf2v_tasks.dashscope.models import TaskStatus
from kf2v_tasks.generation.claims import ClaimPolicy, release_claim
from kf2v_tasks.generation.frames import check_pair
from kf2v_tasks.generation.ledger import Ledger, LedgerRecord, LedgerState
from kf2v_tasks.generation.submit import submit_generation

from helpers import make_frame


@pytest.fixture
async def pair(tmp_path: Path):
    a = make_frame(tmp_path / "in" / "a.png", (320, 240), (200, 60, 30))
    b = make_frame(tmp_path / "in" / "b.png", (320, 240), (20, 160, 220))
    return await check_pair(str(a), str(b))


class CountingLedger(Ledger):
    """A ledger on local disk that counts its reads."""

    reads = 0

    async def get(self, fingerprint: str):
        self.reads += 1
        return await super().get(fingerprint)


async def submit(client, pair, ledger, **kw):
    return await submit_generation(client, pair, "a slow pan", None, OPTIONS, ledger=ledger, **kw)


async def test_new_work_read_at_planning_is_read_once_more_under_its_claim(pair, tmp_path):
    ledger = CountingLedger(str(tmp_path / "out"))
    client = ScriptedClient("ok")
    sub = await submit(client, pair, ledger, record=None)
    assert sub.task_id == "task-1" and not sub.reused and client.posts == 1
    assert ledger.reads == 1  # under the claim only


async def test_work_made_since_the_plan_read_is_re_attached_never_created(pair, tmp_path):
    ledger = Ledger(str(tmp_path / "out"))
    client = ScriptedClient("ok", "ok")
    first = await submit(client, pair, ledger)  # another run, after our plan read "none"
    await release_claim(ledger, first.fingerprint)
    again = await submit(client, pair, ledger, record=None)
    assert again.reused and again.task_id == "task-1" and client.posts == 1


async def test_an_old_record_of_a_dead_task_never_overwrites_the_newer_one(pair, tmp_path):
    ledger = Ledger(str(tmp_path / "out"))
    client = ScriptedClient("ok", "ok", "ok")
    first = await submit(client, pair, ledger)
    planned = await ledger.get(first.fingerprint)  # the plan's read: task-1, alive
    client.statuses["task-1"] = TaskStatus.FAILED
    second = await submit(client, pair, ledger)  # another run re-created it: task-2
    assert second.task_id == "task-2"
    client.queries.clear()
    again = await submit(client, pair, ledger, record=planned)
    assert again.reused and again.task_id == "task-2" and client.posts == 2
    assert client.queries == ["task-1", "task-2"]  # the newer task is checked too
    rec = await ledger.get(first.fingerprint)
    assert rec.task_id == "task-2" and rec.state is LedgerState.SUBMITTED


async def test_without_claims_the_record_given_is_not_trusted(pair, tmp_path):
    ledger = Ledger(str(tmp_path / "out"))
    client = ScriptedClient("ok", "ok")
    await submit(client, pair, ledger)
    off = ClaimPolicy(enabled=False)
    again = await submit(client, pair, ledger, record=None, claims=off)
    assert again.reused and client.posts == 1
    assert isinstance(await ledger.get(again.fingerprint), LedgerRecord)
