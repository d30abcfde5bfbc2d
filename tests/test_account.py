"""The account a task reaches: one set of limits per account, a lane per model, a client per loop."""

from __future__ import annotations

import asyncio
import threading

from kf2v_tasks import clock
from kf2v_tasks.credentials import DashScopeCredentials
from kf2v_tasks.dashscope.limits import AccountLimits, LaneQuota, RateLimiter
from kf2v_tasks.lanes.account import (
    account_id,
    account_label,
    lane_quotas,
    limits_for,
    open_account,
)
from kf2v_tasks.lanes.lane import open_lane, release_task

from conftest import TEST_API_KEY


def creds(base_url: str = "http://127.0.0.1:9/api/v1", **kw) -> DashScopeCredentials:
    return DashScopeCredentials(api_key=TEST_API_KEY, base_url=base_url, **kw)


def test_one_quota_per_account_never_keyed_by_the_key_itself():
    a, b = creds(), creds(workspace="ws-2")  # workspaces of one key share the account
    assert limits_for(a) is limits_for(b)
    assert limits_for(creds("http://127.0.0.1:10/api/v1")) is not limits_for(a)
    assert TEST_API_KEY not in account_id(a) and len(account_id(a)) == 16
    assert TEST_API_KEY not in account_label(a) and account_label(a).startswith("key-")
    assert account_label(creds(account="acme")) == "acme"


def test_each_model_is_its_own_lane_sized_from_the_table():
    limits = AccountLimits()
    assert limits.quota("wan2.2-kf2v-flash") == LaneQuota(2, 2.0)
    assert limits.quota("wan2.7-i2v") == LaneQuota(5, 5.0)
    assert limits.quota("wan2.7-i2v-2026-04-25") == LaneQuota(5, 5.0)
    assert limits.create_limiter("wan2.7-i2v") is not limits.create_limiter("wan2.7-i2v-2026-04-25")
    assert limits.create_limiter("wan2.7-i2v").rate == 5.0
    raised = AccountLimits(quotas=lane_quotas({"wan2.7-i2v": "8"}))
    assert raised.quota("wan2.7-i2v") == LaneQuota(8, 5.0)
    assert AccountLimits(max_in_flight=3).quota("wan2.7-i2v").running == 3


def test_an_unknown_model_gets_the_default_lane_and_one_warning(caplog):
    limits = AccountLimits()
    with caplog.at_level("WARNING"):
        assert limits.quota("wan9-new") == LaneQuota(2, 2.0)
        limits.quota("wan9-new")
    assert sum("wan9-new" in r.getMessage() for r in caplog.records) == 1


def test_a_lane_is_full_only_with_its_own_models_tasks():
    limits = AccountLimits()
    for i in range(5):
        limits.note_task(f"w{i}", "wan2.7-i2v")
    limits.note_task("k1", "wan2.2-kf2v-flash")
    limits.note_task("k2", "wan2.2-kf2v-flash")
    limits.note_task("k3", "wan2.2-kf2v-flash")
    running = {"w0", "w1", "w2", "w3", "k1"}
    assert not limits.lane_full("k3", running)  # 1 of 2 kf2v running
    assert limits.lane_full("k3", running | {"k2"})
    assert not limits.lane_full("w4", running)  # 4 of 5
    assert not limits.lane_full("unknown", running | {"k2"})


async def test_tasks_on_one_loop_share_one_client_until_the_last_leaves():
    c = creds()
    async with open_account(c) as first:
        async with open_account(c) as second:
            assert second.client is first.client
        assert not first.client.is_closed
    assert first.client.is_closed
    async with open_account(c) as later:
        assert later.client is not first.client


def test_each_loop_gets_its_own_client_but_the_same_limits():
    c = creds()
    seen = []

    def on_own_loop():
        async def use():
            async with open_account(c) as account:
                seen.append((account.client, account.limits))
                await asyncio.sleep(0.05)

        asyncio.run(use())

    threads = [threading.Thread(target=on_own_loop) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (c1, l1), (c2, l2) = seen
    assert c1 is not c2 and l1 is l2


async def test_lane_slots_pass_between_threads_and_loops_in_order():
    lane = await open_lane(
        "t-order", "wan2.2-kf2v-flash", LaneQuota(1, 2.0), queue_ahead=0, limit_prefix=None
    )
    held = await lane.take()
    held.bind("task-1")
    order = []

    async def wait(n):
        slot = await lane.take()
        order.append(n)
        slot.release()

    waiters = []
    for n in range(3):
        waiters.append(asyncio.ensure_future(wait(n)))
        await asyncio.sleep(0.01)  # queued in this order
    assert order == []
    threading.Thread(target=release_task, args=("task-1",)).start()  # freed elsewhere
    await asyncio.wait_for(asyncio.gather(*waiters), timeout=5)
    await asyncio.sleep(0.01)
    assert order == [0, 1, 2] and lane.in_use == 0 and lane.pool.peak == 1


def test_a_slot_taken_on_one_loop_is_freed_from_another():
    lane = asyncio.run(
        open_lane(
            "t-loops", "wan2.2-kf2v-flash", LaneQuota(1, 2.0), queue_ahead=0, limit_prefix=None
        )
    )

    async def submit():
        (await lane.take()).bind("task-x")

    asyncio.run(submit())  # that loop is gone now, as a .map task run's is
    assert lane.in_use == 1
    threading.Thread(target=release_task, args=("task-x",)).start()

    async def next_one():
        slot = await asyncio.wait_for(lane.take(), timeout=5)
        slot.release()

    asyncio.run(next_one())


async def test_a_waiter_that_gives_up_leaks_no_slot():
    lane = await open_lane(
        "t-cancel", "wan2.2-kf2v-flash", LaneQuota(1, 2.0), queue_ahead=0, limit_prefix=None
    )
    held = await lane.take()
    waiter = asyncio.ensure_future(lane.take())
    await asyncio.sleep(0.02)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    held.release()
    await asyncio.sleep(0.05)
    assert lane.in_use == 0
    again = await asyncio.wait_for(lane.take(), timeout=5)
    again.release()


async def test_slots_of_tasks_nobody_polls_are_freed_by_asking(monkeypatch):
    from kf2v_tasks.lanes import lane as lane_module

    monkeypatch.setattr(lane_module, "PROBE_AFTER", 0.01)
    lane = await open_lane(
        "t-probe", "wan2.2-kf2v-flash", LaneQuota(1, 2.0), queue_ahead=0, limit_prefix=None
    )
    (await lane.take()).bind("forgotten")
    asked = []

    async def probe(ids):
        asked.append(list(ids))
        return ids  # the service says they ended

    slot = await asyncio.wait_for(lane.take(probe=probe), timeout=5)
    slot.release()
    assert asked and asked[0] == ["forgotten"]


async def test_rate_limiter_spaces_callers_across_threads(monkeypatch):
    # A stopped clock: under load the threads' reservations spread over real time, and the
    # last one's wait shrank below 0.19 s although every reservation was spaced.
    monkeypatch.setattr(clock, "monotonic", lambda: 1000.0)
    limiter = RateLimiter(rate=1000.0)
    waits = []

    def reserve_many():
        waits.extend(limiter.reserve() for _ in range(50))

    threads = [threading.Thread(target=reserve_many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 200 reservations at 1000/s from four threads: the last one waits about 0.2 s.
    assert len(waits) == 200 and max(waits) >= 0.19
