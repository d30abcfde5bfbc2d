"""Creates/s and queries/s shared by the runs of one account, counted on the Prefect server."""

from __future__ import annotations

import asyncio
import time

import pytest

from kf2v_tasks.batch.sharding import shard_parameters
from kf2v_tasks.dashscope.limits import RateLimiter
from kf2v_tasks.lanes import rates as rates_module
from kf2v_tasks.lanes.rates import RateShare, runs_limit_name


def test_shards_keep_the_whole_rates_and_split_the_budget():
    p = shard_parameters(
        {"manifest": "m.csv", "max_cost": 3.0, "concurrency": {"submits_per_second": 2.0}}, 3
    )
    assert p["concurrency"]["submits_per_second"] == 2.0  # the runs share it as they go
    assert p["max_cost"] == 1.0 and p["shards"] == 1


async def test_a_limiter_follows_a_new_rate_at_once():
    from kf2v_tasks import clock

    limiter = RateLimiter(1000.0)
    limiter.set_rate(10.0)
    t0 = clock.now()
    for _ in range(4):
        await limiter.acquire()
    assert clock.now() - t0 >= 0.29  # 3 gaps of 0.1 s, not of 1 ms


@pytest.mark.usefixtures("prefect_server")
async def test_runs_of_one_account_split_its_rates_and_get_them_back(monkeypatch):
    monkeypatch.setattr(rates_module, "REFRESH_SECONDS", 0.2)
    name = "kf2v-test-share"
    a_creates, a_queries = RateLimiter(2.0), RateLimiter(20.0)
    a = await RateShare.join(name, {a_creates: 2.0, a_queries: 20.0})
    assert a is not None and a.runs == 1 and a_creates.rate == 2.0

    b_creates = RateLimiter(2.0)
    t0 = time.monotonic()
    b = await RateShare.join(name, {b_creates: 2.0})
    # The newcomer waits one refresh, by which time the first run has made room.
    assert time.monotonic() - t0 >= 0.2
    assert b is not None and b.runs == 2 and b_creates.rate == 1.0
    assert a.runs == 2 and (a_creates.rate, a_queries.rate) == (1.0, 10.0)

    await b.leave()
    await asyncio.sleep(0.5)
    assert a.runs == 1 and a_creates.rate == 2.0  # given back within a refresh
    await a.leave()
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        limit = await client.read_global_concurrency_limit_by_name(runs_limit_name(name))
    assert limit.active_slots == 0


@pytest.mark.usefixtures("prefect_server")
async def test_two_runs_together_make_no_more_calls_than_one_would(monkeypatch):
    """Two runs each wanting 10 calls/s of a 10/s account make ~10/s between them."""
    monkeypatch.setattr(rates_module, "REFRESH_SECONDS", 0.2)
    name = "kf2v-test-share-calls"
    limiters = [RateLimiter(10.0), RateLimiter(10.0)]
    shares = [await RateShare.join(name, {limiter: 10.0}) for limiter in limiters]
    stamps: list[float] = []

    async def calls(limiter: RateLimiter, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await limiter.acquire()
            stamps.append(time.monotonic())

    await asyncio.gather(*(calls(limiter, 2.0) for limiter in limiters))
    for share in shares:
        assert share is not None
        await share.leave()
    wall = max(stamps) - min(stamps)
    # Not 20 per second. The bound allows each limiter's first token and, for the run that
    # joined first, one refresh (0.2 s) at its whole rate before it reads that a second run
    # came: the share is followed every REFRESH_SECONDS, not per call.
    assert len(stamps) <= 10 * wall + 2 + 10 * 0.2, (len(stamps), wall)
    assert len(stamps) >= 10 * wall * 0.8, (len(stamps), wall)


async def test_no_server_means_this_runs_rates_and_says_so(caplog):
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    limiter = RateLimiter(2.0)
    # Nothing listens on port 9.
    with temporary_settings(
        {PREFECT_API_URL: "http://127.0.0.1:9/api", PREFECT_CLIENT_MAX_RETRIES: 0}
    ):
        share = await RateShare.join("kf2v-test-offline", {limiter: 2.0})
    assert share is None and limiter.rate == 2.0
    assert "not shared with overlapping runs" in caplog.text
