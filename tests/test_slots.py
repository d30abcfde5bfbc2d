"""SlotPool: in-process limit, and Prefect global-concurrency leases kept across rows."""

from __future__ import annotations

import asyncio
import time

import pytest

from kf2v_tasks.batch.gcl import apply_limits, show_limits
from kf2v_tasks.batch.slots import SlotPool


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
    first = await apply_limits(2, name=name)
    again = await apply_limits(2, name=name)
    assert (first["action"], again["action"]) == ("created", "unchanged")
    assert any(x["name"] == name and x["limit"] == 2 for x in await show_limits())

    pool = await SlotPool.create(2, name)
    assert pool.gcl_name == name
    wall = await _run_jobs(pool, 12, 0.1)
    # The server may grant the second slot only after the first lease has served most
    # jobs (a busy SQLite server answers one acquire late): never more than two at once.
    assert 1 <= pool.peak <= 2
    assert pool.gcl_acquisitions == 2  # two leases, reused for all 12 jobs
    assert wall < 3.0, wall
    limits = {x["name"]: x for x in await show_limits()}
    assert limits[name]["active_slots"] == 0  # everything given back at the end


@pytest.mark.usefixtures("prefect_server")
async def test_missing_gcl_falls_back_to_local_limiting():
    pool = await SlotPool.create(2, "kf2v-no-such-limit")
    assert pool.gcl_name is None
    await _run_jobs(pool, 4, 0.01)
    assert pool.peak == 2


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
