"""Per-account token buckets: 429 Throttling.RateQuota on create and on queries."""

from __future__ import annotations

import time

import httpx

from .simkit import HEADERS, create
from fake_clock import manual_sim_clock


def test_submit_rate_limit_real_time(make_sim):
    sim = make_sim(rate_limits_real_time=True, submits_per_second=2.0, queries_per_second=1000.0)
    clock = manual_sim_clock(sim)  # stopped: no token comes back until the test says
    codes = [create(sim).status_code for _ in range(4)]
    assert codes[:2] == [200, 200] and 429 in codes[2:]
    throttled = create(sim)
    if throttled.status_code == 429:
        assert throttled.json()["code"] == "Throttling.RateQuota"
        assert (
            throttled.json()["message"] == "Requests rate limit exceeded, please try again later."
        )
    clock.advance(0.6)  # refill at 2 per real second
    assert create(sim).status_code == 200
    stats = sim.stats()
    assert stats["throttled_by_endpoint"]["create"] >= 1 and stats["creates"] >= 3


def test_query_rate_limit_real_time(make_sim):
    sim = make_sim(rate_limits_real_time=True, queries_per_second=5.0)
    with httpx.Client(headers=HEADERS) as client:
        codes = [client.get(f"{sim.base_url}/tasks/x").status_code for _ in range(12)]
    assert codes[:5] == [200] * 5 and codes.count(429) >= 5
    # A different key is a different account with its own bucket.
    other = {**HEADERS, "Authorization": "Bearer sk-someone-else"}
    assert httpx.get(f"{sim.base_url}/tasks/x", headers=other).status_code == 200


def test_rate_limits_scale_with_speed(make_sim):
    sim = make_sim(speed=1000.0, submits_per_second=2.0)
    time.sleep(0.01)
    assert all(create(sim).status_code == 200 for _ in range(5))
