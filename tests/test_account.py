"""The account a task reaches: one quota per account, one client per event loop at a time."""

from __future__ import annotations

import asyncio
import threading

from kf2v_tasks.account import account_id, limits_for, open_account
from kf2v_tasks.credentials import DashScopeCredentials
from kf2v_tasks.dashscope.limits import InFlight, RateLimiter

from conftest import TEST_API_KEY


def creds(base_url: str = "http://127.0.0.1:9/api/v1") -> DashScopeCredentials:
    return DashScopeCredentials(api_key=TEST_API_KEY, base_url=base_url)


def test_one_quota_per_account_never_keyed_by_the_key_itself():
    a, b = creds(), creds()
    assert limits_for(a) is limits_for(b)
    assert limits_for(creds("http://127.0.0.1:10/api/v1")) is not limits_for(a)
    assert TEST_API_KEY not in account_id(a) and len(account_id(a)) == 16


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


async def test_in_flight_slots_pass_between_threads_in_order():
    slots = InFlight(1)
    key = await slots.acquire()
    slots.bind(key, "task-1")
    order = []

    async def wait(n):
        k = await slots.acquire()
        order.append(n)
        slots.release(k)

    waiters = [asyncio.ensure_future(wait(n)) for n in range(3)]
    await asyncio.sleep(0.02)
    assert order == []
    threading.Thread(target=slots.release, args=("task-1",)).start()  # freed elsewhere
    await asyncio.gather(*waiters)
    assert order == [0, 1, 2] and slots.held == 0 and slots.peak == 1


async def test_a_waiter_that_gives_up_leaks_no_slot():
    slots = InFlight(1)
    key = await slots.acquire()
    waiter = asyncio.ensure_future(slots.acquire())
    await asyncio.sleep(0.01)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    slots.release(key)
    await asyncio.sleep(0.01)
    assert slots.held == 0


async def test_slots_of_tasks_nobody_polls_are_freed_by_asking():
    slots = InFlight(1)
    key = await slots.acquire()
    slots.bind(key, "forgotten")
    asked = []

    async def probe(ids):
        asked.append(list(ids))
        return ids  # the service says they ended

    await asyncio.wait_for(slots.acquire(probe=probe, probe_after=0.01), timeout=5)
    assert asked == [["forgotten"]]


async def test_rate_limiter_spaces_callers_across_threads():
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
