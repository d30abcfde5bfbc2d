"""SlotPool: in-process limit, and Prefect global-concurrency leases kept across rows."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import pytest

from kf2v_tasks.lanes.gcl import apply_limits, ensure_limit, show_limits
from kf2v_tasks.lanes.slots import SlotPool


async def _run_jobs(pool: SlotPool, n: int, seconds: float) -> float:
    async def job():
        async with pool.slot():
            await asyncio.sleep(seconds)

    t0 = time.monotonic()
    await asyncio.gather(*(job() for _ in range(n)))
    await pool.close()
    return time.monotonic() - t0


async def test_local_pool_never_exceeds_its_size():
    pool = SlotPool(3)
    wall = await _run_jobs(pool, 12, 0.05)
    assert pool.peak == 3
    assert wall < 0.05 * 4 + 0.15  # 4 waves, no idle gaps


@pytest.mark.usefixtures("prefect_server")
async def test_gcl_leases_are_kept_and_handed_on_in_process():
    """With a server limit, this run takes its slots once and passes them row to row.

    Prefect's own release/re-acquire hand-off takes about a second per slot here; 12 jobs
    of 0.1 s on 2 slots would take many seconds that way, instead of ~0.6 s.
    """
    name = "kf2v-test-handoff"
    first = await apply_limits(name, 2, queue_ahead=0)
    again = await apply_limits(name, 2, queue_ahead=0)
    assert (first["action"], again["action"]) == ("created", "unchanged")
    assert any(x["name"] == name and x["limit"] == 2 for x in await show_limits())

    pool = await SlotPool.create(2, name)
    assert pool.gcl_name == name
    wall = await _run_jobs(pool, 12, 0.1)
    # The server may grant the second slot only after the first lease has served most
    # jobs (a busy SQLite server answers one acquire late): never more than two at once.
    assert 1 <= pool.peak <= 2
    assert 1 <= pool.gcl_acquisitions <= 2  # leases reused for all 12 jobs
    assert wall < 3.0, wall
    limits = {x["name"]: x for x in await show_limits()}
    assert limits[name]["active_slots"] == 0  # everything given back at the end


@pytest.mark.usefixtures("prefect_server")
async def test_a_missing_gcl_is_created_with_the_runs_limit_once_even_by_two_at_once(caplog):
    """Two runs starting together both ensure the limit: one creates it, the other reads it."""
    name = f"kf2v-test-ensure-{uuid.uuid4().hex[:8]}"
    results = await asyncio.gather(ensure_limit(name, 3), ensure_limit(name, 3))
    assert sorted(r["action"] for r in results) == ["created", "exists"]
    assert all(r["limit"] == 3 and r["active"] for r in results)
    assert (await ensure_limit(name, 5))["limit"] == 3  # an existing size is left alone

    caplog.set_level(logging.INFO, logger="kf2v_tasks.lanes.gcl")  # says what it made
    fresh = f"kf2v-test-pool-{uuid.uuid4().hex[:8]}"
    pool = await SlotPool.create(2, fresh)
    assert pool.gcl_name == fresh
    assert f"global concurrency limit {fresh!r} (2 slots, created now)" in caplog.text
    limits = {x["name"]: x for x in await show_limits()}
    assert limits[fresh]["limit"] == 2
    await _run_jobs(pool, 3, 0.01)
    assert pool.peak <= 2 and pool.gcl_acquisitions >= 1


async def test_no_server_means_local_limiting_and_says_so(caplog):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    caplog.set_level(logging.WARNING, logger="kf2v_tasks.lanes.slots")
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):  # no one
        pool = await SlotPool.create(2, "kf2v-dashscope-tasks")
    assert pool.gcl_name is None
    assert "limiting in-process to 2 tasks" in caplog.text


async def test_a_slot_given_back_early_wakes_the_next_row_once():
    pool = SlotPool(1)
    order: list[str] = []

    async def first():
        async with pool.slot() as held:
            order.append("first in")
            held.release()  # the remote task was seen ended
            held.release()  # idempotent: the exit must not give back a second slot
            await asyncio.sleep(0.05)  # bookkeeping still going on
            order.append("first out")

    async def second():
        await asyncio.sleep(0.01)
        async with pool.slot():
            order.append("second in")

    await asyncio.gather(first(), second())
    assert order == ["first in", "second in", "first out"]
    assert pool.in_use == 0 and pool._local._value == 1


@pytest.mark.usefixtures("prefect_server")
async def test_the_slots_of_a_killed_run_are_given_back_by_the_next_run():
    """A run killed while holding the only slot must not block the next run for good."""
    import json
    import socket
    import subprocess
    import sys

    from prefect.client.orchestration import get_client

    from kf2v_tasks.lanes.gcl import _api_url, _lease_folder, acquire_slot

    name = f"kf2v-test-dead-{uuid.uuid4().hex[:8]}"
    await ensure_limit(name, 1)
    async with get_client() as client:
        lease_id, _ = await acquire_slot(client, name)  # held by the run that is killed
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs
    folder = _lease_folder()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{socket.gethostname()}-{gone.pid}-test.json").write_text(
        json.dumps(
            {"host": socket.gethostname(), "pid": gone.pid, "api_url": _api_url(),
             "leases": [str(lease_id)]}
        )
    )  # fmt: skip
    assert {x["name"]: x for x in await show_limits()}[name]["active_slots"] == 1

    pool = await SlotPool.create(1, name)
    assert pool.gcl_name == name
    await asyncio.wait_for(_run_jobs(pool, 2, 0.01), timeout=30)  # not stuck behind the dead
    assert {x["name"]: x for x in await show_limits()}[name]["active_slots"] == 0
    assert not (folder / f"{socket.gethostname()}-{gone.pid}-test.json").exists()


@pytest.mark.usefixtures("prefect_server")
async def test_a_pool_asks_for_its_waiting_rows_slots_at_once_one_ask_at_a_time(monkeypatch):
    """Each ask costs a server round trip (seconds on a busy SQLite server) and concurrent
    asks contend: the pool asks for every waiting row's slot in one call, never has two
    asks in flight, and all its leases share one Prefect client."""
    from kf2v_tasks.lanes import slots as slots_module

    real_acquire = slots_module.acquire_slot
    clients: set[int] = set()
    granted: list[int] = []
    in_flight = peak = 0

    async def counting_acquire(client, name, slots=1):
        nonlocal in_flight, peak
        clients.add(id(client))
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            lease_id, got = await real_acquire(client, name, slots)
            granted.append(got)
            return lease_id, got
        finally:
            in_flight -= 1

    monkeypatch.setattr(slots_module, "acquire_slot", counting_acquire)
    name = "kf2v-test-blocks"
    pool = await SlotPool.create(8, name)
    await _run_jobs(pool, 16, 0.3)
    assert pool.peak == 8
    # The first row asks alone; the seven behind it are asked for together.
    assert pool.gcl_acquisitions == len(granted) <= 3 and max(granted) >= 4, granted
    assert peak == 1
    assert len(clients) == 1
    limits = {x["name"]: x for x in await show_limits()}
    assert limits[name]["active_slots"] == 0


@pytest.mark.usefixtures("prefect_server")
async def test_a_block_shrinks_to_what_the_limit_has_free():
    name = "kf2v-test-shrink"
    await apply_limits(name, 3, queue_ahead=0)
    other = await SlotPool.create(3, name)  # another run holds one of the three
    async with other.slot():
        pool = await SlotPool.create(8, name)
        wall = await asyncio.wait_for(_run_jobs(pool, 8, 0.1), timeout=30)
        assert pool.peak == 2  # the account's 3 minus the other run's 1
    await other.close()
    assert wall < 10
    assert {x["name"]: x for x in await show_limits()}[name]["active_slots"] == 0


@pytest.mark.usefixtures("prefect_server")
async def test_rows_announced_ahead_are_covered_by_the_first_ask(monkeypatch):
    from kf2v_tasks.lanes import slots as slots_module

    real_acquire = slots_module.acquire_slot
    asked: list[int] = []

    async def recording_acquire(client, name, slots=1):
        asked.append(slots)
        return await real_acquire(client, name, slots)

    monkeypatch.setattr(slots_module, "acquire_slot", recording_acquire)
    pool = await SlotPool.create(6, "kf2v-test-expect")
    pool.expect(20)
    await _run_jobs(pool, 20, 0.05)
    assert asked == [6]  # one ask for the whole pool, reused by all 20 rows
