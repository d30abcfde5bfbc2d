"""Quota per account and per model (reference §16): one lane per model name as sent, each
with the model's own running limit and create rate; run time grows with duration and size."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

from kf2v_tasks.simulator import RuntimeDistribution
from kf2v_tasks.simulator.state import SimState

from .simkit import HEADERS, body, create, fast_config, media_body, wait_status
from fake_clock import manual_sim_clock

KF2V = "wan2.2-kf2v-flash"
WAN = "wan2.7-i2v"
DATED = "wan2.7-i2v-2026-04-25"
OTHER_KEY = {**HEADERS, "Authorization": "Bearer sk-sim-second-account"}
#: Long enough that nothing ends while a test looks (100 real seconds at speed 1000).
FOREVER = RuntimeDistribution(kind="fixed", low=100_000.0)


def task_id(resp: Any) -> str:
    assert resp.status_code == 200, resp.text
    return resp.json()["output"]["task_id"]


def sweep_peaks(rows: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    """(account, model) -> most tasks running at once, from the task timelines."""
    events: dict[tuple[str, str], list[tuple[float, int]]] = defaultdict(list)
    for r in rows:
        if r["started"] is not None:
            lane = (r["account"], r["model"])
            events[lane] += [(r["started"], 1), (r["ended"] or float("inf"), -1)]
    peaks = {}
    for lane, evs in events.items():
        running = peak = 0
        for _, delta in sorted(evs):  # an end sorts before a start at the same instant
            running += delta
            peak = max(peak, running)
        peaks[lane] = peak
    return peaks


def test_each_model_runs_its_own_limit_and_queued_tasks_start_on_their_lane(make_sim):
    sim = make_sim(runtime=RuntimeDistribution(kind="fixed", low=2000.0))
    clock = manual_sim_clock(sim)  # 2 real s per task, skipped: the clock moves when told
    wan = [task_id(create(sim, media_body())) for _ in range(7)]
    kf = [task_id(create(sim, body())) for _ in range(3)]
    # A kf2v task runs at once although 5 wan2.7 tasks hold their slots.
    stats = sim.stats()
    assert stats["peak_by_model"] == {WAN: 5, KF2V: 2}, stats
    assert stats["peak_concurrency"] == 7
    clock.advance(2.0)  # the first tasks end; the queued ones start at their ends
    clock.advance(2.0)
    for tid in wan + kf:
        wait_status(sim, tid, {"SUCCEEDED"})
    rows = sim.tasks()
    by_id = {r["task_id"]: r for r in rows}
    first_kf = by_id[kf[0]]
    alongside = [
        r for r in rows if r["model"] == WAN and r["started"] <= first_kf["started"] < r["ended"]
    ]
    assert len(alongside) == 5
    assert set(sweep_peaks(rows).values()) == {5, 2}
    # Exact replay: a queued task starts at the very end of a task of its own lane.
    ends = defaultdict(set)
    for r in rows:
        ends[r["model"]].add(r["ended"])
    queued = [r for r in rows if r["started"] != r["created"]]
    assert {r["task_id"] for r in queued} == {wan[5], wan[6], kf[2]}
    for r in queued:
        assert r["started"] in ends[r["model"]], r
    stats = sim.stats()
    assert (stats["running"], stats["pending"]) == (0, 0)
    assert stats["peak_by_model"] == {WAN: 5, KF2V: 2}


def test_a_dated_variant_is_its_own_lane(make_sim):
    sim = make_sim(runtime=FOREVER)
    for _ in range(5):
        task_id(create(sim, media_body()))
        task_id(create(sim, media_body(model=DATED)))
    extra = task_id(create(sim, media_body()))
    stats = sim.stats()
    assert stats["peak_by_model"] == {WAN: 5, DATED: 5}
    assert (stats["running"], stats["pending"]) == (10, 1)
    assert {r["task_id"]: r["status"] for r in sim.tasks()}[extra] == "PENDING"


def test_two_keys_are_two_accounts_with_their_own_lanes(make_sim):
    sim = make_sim(runtime=FOREVER)
    mine = [task_id(create(sim)) for _ in range(3)]
    theirs = [task_id(create(sim, headers=OTHER_KEY)) for _ in range(3)]
    status = {r["task_id"]: r["status"] for r in sim.tasks()}
    assert [status[t] for t in mine] == ["RUNNING", "RUNNING", "PENDING"]
    assert [status[t] for t in theirs] == ["RUNNING", "RUNNING", "PENDING"]
    stats = sim.stats()
    assert (stats["running"], stats["pending"]) == (4, 2)
    assert stats["peak_by_model"] == {KF2V: 2}  # the max over accounts, not their sum
    assert stats["peak_concurrency"] == 2
    assert len({r["account"] for r in sim.tasks()}) == 2


def test_reject_mode_checks_the_models_lane(make_sim):
    sim = make_sim(runtime=FOREVER, concurrency_mode="reject")
    assert [create(sim).status_code for _ in range(2)] == [200, 200]
    refused = create(sim)
    assert (refused.status_code, refused.json()["code"]) == (429, "Throttling")
    # A full kf2v lane does not stop wan2.7-i2v, which has 5 slots of its own.
    assert [create(sim, media_body()).status_code for _ in range(5)] == [200] * 5
    assert create(sim, media_body()).status_code == 429
    # Another account's kf2v lane is empty.
    assert create(sim, headers=OTHER_KEY).status_code == 200
    stats = sim.stats()
    assert stats["throttled_by_endpoint"] == {"create": 2}
    assert (stats["running"], stats["pending"]) == (8, 0)


def test_create_rate_is_per_account_and_model(make_sim):
    sim = make_sim(rate_limits_real_time=True, submits_per_second=None, runtime=FOREVER)
    # The simulator's clock stopped: no bucket refills while the creates go out (under
    # load, 12 real creates took long enough to refill the first one, and no 429 came).
    manual_sim_clock(sim)
    # Burst of one second's worth: 5 for wan2.7-i2v, then 429 before the bucket refills.
    wan = [create(sim, media_body()).status_code for _ in range(12)]
    assert wan[:5] == [200] * 5 and 429 in wan[5:], wan
    # kf2v has its own bucket of 2 (the wan2.7 creates spent none of it).
    kf = [create(sim).status_code for _ in range(5)]
    assert kf[:2] == [200, 200] and 429 in kf[2:], kf
    throttled = create(sim)
    if throttled.status_code == 429:
        assert throttled.json()["code"] == "Throttling.RateQuota"
    # Another key is another account with full buckets.
    assert create(sim, headers=OTHER_KEY).status_code == 200
    assert sim.stats()["throttled_by_endpoint"]["create"] >= 2


@pytest.mark.parametrize("scaling", [True, False])
def test_run_time_grows_with_duration_and_resolution(make_sim, scaling):
    sim = make_sim(runtime=RuntimeDistribution(kind="fixed", low=100.0), runtime_scaling=scaling)
    short = task_id(create(sim, media_body(duration=5, resolution="720P")))
    long = task_id(create(sim, media_body(duration=10, resolution="1080P")))
    kf720 = task_id(create(sim, body(parameters={"resolution": "720P"})))
    kf480 = task_id(create(sim, body(parameters={"resolution": "480P"})))
    for tid in (short, long, kf720, kf480):
        wait_status(sim, tid, {"SUCCEEDED"})
    rows = {r["task_id"]: r for r in sim.tasks()}
    factor = (10 / 5) * 1.6 if scaling else 1.0
    assert rows[short]["run_seconds"] == 100.0
    assert rows[kf720]["run_seconds"] == 100.0  # every 5-s 720P task runs the drawn time
    assert rows[long]["run_seconds"] == pytest.approx(100.0 * factor)
    assert rows[kf480]["run_seconds"] == pytest.approx(100.0 * (0.6 if scaling else 1.0))
    took = rows[long]["ended"] - rows[long]["started"]
    assert took == pytest.approx(0.1 * factor, abs=1e-6)  # speed 1000: real seconds


def test_explicit_limits_apply_to_every_model_and_model_limits_win(make_sim):
    sim = make_sim(runtime=FOREVER, max_concurrent=1)
    for _ in range(2):
        task_id(create(sim))
        task_id(create(sim, media_body()))
    stats = sim.stats()
    assert stats["peak_by_model"] == {KF2V: 1, WAN: 1}
    assert (stats["running"], stats["pending"]) == (2, 2)

    sim = make_sim(runtime=FOREVER, max_concurrent=1, model_limits={WAN: (3, 100.0)})
    for _ in range(4):
        task_id(create(sim))
        task_id(create(sim, media_body()))
        task_id(create(sim, media_body(model=DATED)))  # the table's name covers it
    stats = sim.stats()
    assert stats["peak_by_model"] == {KF2V: 1, WAN: 3, DATED: 3}
    assert (stats["running"], stats["pending"]) == (7, 5)


def test_limits_come_from_the_models_table_with_a_fallback():
    state = SimState(fast_config(submits_per_second=None))
    assert state.model_limits(WAN) == (5, 5.0)
    assert state.model_limits(DATED) == (5, 5.0)
    assert state.model_limits(KF2V) == state.model_limits("wanx2.1-kf2v-plus") == (2, 2.0)
    assert state.model_limits("not-in-the-table") == (2, 2.0)
    state = SimState(fast_config(submits_per_second=7.0, model_limits={DATED: (1, 0.5)}))
    assert state.model_limits(WAN) == (5, 7.0)
    assert state.model_limits(DATED) == (1, 0.5)  # the name as sent wins over the table's
