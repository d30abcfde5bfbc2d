"""Price table, cost estimates and the budget."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from kf2v_tasks.batch.manifest import parse_manifest
from kf2v_tasks.dashscope.models import MODEL_RESOLUTIONS, GenerationOptions, Kf2vModel, Resolution
from kf2v_tasks.errors import BudgetExceededError
from kf2v_tasks.generation.pricing import (
    DEFAULT_NOTES,
    Budget,
    CostEstimate,
    PriceTable,
    estimate,
    estimate_row,
    video_cost,
)

# ----------------------------------------------------------------- price table


def test_default_prices():
    t = PriceTable.default()
    assert t.currency == "CNY"
    assert t.price(Kf2vModel.WAN22_FLASH, Resolution.P480) == 0.10
    assert t.price("wan2.2-kf2v-flash", "720p") == 0.20
    assert t.price("wan2.2-kf2v-flash", "1080P") == 0.48
    assert t.price("wan2.1-kf2v-plus", "720P") == 0.70
    assert t.price("wanx2.1-kf2v-plus", "720P") == 0.70
    # every model has a price at every resolution it accepts
    for model, resolutions in MODEL_RESOLUTIONS.items():
        for res in resolutions:
            assert t.price(model, res) > 0
    # one note per entry of the models table: the kf2v models and wan2.7-i2v
    assert set(t.notes) == {m.value for m in Kf2vModel} | {"wan2.7-i2v"} == set(DEFAULT_NOTES)
    assert "ASSUMED" in t.notes["wan2.7-i2v"]
    assert "UNCERTAIN" in t.notes["wan2.2-kf2v-flash"]
    assert "documented" in t.notes["wan2.1-kf2v-plus"]
    assert "ASSUMED" in t.notes["wanx2.1-kf2v-plus"]


def test_default_is_a_fresh_copy():
    PriceTable.default().per_second["wan2.2-kf2v-flash"]["480P"] = 99
    assert PriceTable.default().price("wan2.2-kf2v-flash", "480P") == 0.10


def test_missing_price_is_a_clear_error():
    t = PriceTable(per_second={"wan2.2-kf2v-flash": {"720P": 0.2}})
    with pytest.raises(
        ValueError,
        match=r"no price for model wan2.2-kf2v-flash at resolution "
        r"1080P; pass a price table",
    ):
        t.price("wan2.2-kf2v-flash", "1080P")
    with pytest.raises(ValueError, match="no price for model other"):
        t.price("other", "720P")


def test_negative_or_nan_prices_are_rejected():
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            PriceTable(per_second={"m": {"720P": bad}})


def test_bare_mapping_patches_the_defaults():
    t = PriceTable.from_value({"wan2.2-kf2v-flash": {"1080p": 0.5}, "new-model": {"720P": 1}})
    assert t.price("wan2.2-kf2v-flash", "1080P") == 0.5
    assert t.price("wan2.2-kf2v-flash", "480P") == 0.10
    assert t.price("new-model", "720P") == 1.0
    assert t.notes["wan2.2-kf2v-flash"] == "overridden by the caller"
    assert t.currency == "CNY"


def test_full_table_replaces_the_defaults_and_json_works():
    doc = {"currency": "USD", "per_second": {"wan2.1-kf2v-plus": {"720P": 0.1}}}
    for value in (doc, json.dumps(doc)):
        t = PriceTable.from_value(value)
        assert t.currency == "USD"
        assert t.price("wan2.1-kf2v-plus", "720P") == 0.1
        with pytest.raises(ValueError, match="no price"):
            t.price("wan2.2-kf2v-flash", "720P")


def test_from_value_passthrough_none_and_garbage():
    t = PriceTable.default()
    assert PriceTable.from_value(t) is t
    assert PriceTable.from_value(None) == PriceTable.default()
    with pytest.raises(ValueError, match="not valid JSON"):
        PriceTable.from_value("{nope")
    with pytest.raises(ValueError, match="mapping"):
        PriceTable.from_value("[1, 2]")


# ----------------------------------------------------------------- estimates


def test_estimate_row_is_five_seconds_times_price():
    assert estimate_row(GenerationOptions(resolution="480P")) == 0.5
    assert estimate_row(GenerationOptions()) == 1.0
    assert estimate_row(GenerationOptions(resolution="1080P")) == 2.4
    assert estimate_row(GenerationOptions(model="wan2.1-kf2v-plus")) == 3.5


def test_video_cost_is_seconds_times_price_in_the_tables_currency():
    assert video_cost("wan2.2-kf2v-flash", "480P", 5) == 0.5
    assert video_cost(Kf2vModel.WAN22_FLASH, Resolution.P1080) == 2.4  # 5 s by default
    assert video_cost("wan2.2-kf2v-flash", "720p", 3) == 0.6  # resolution case does not matter
    usd = PriceTable(currency="USD", per_second={"wan2.1-kf2v-plus": {"720P": 0.1}})
    assert video_cost("wan2.1-kf2v-plus", "720P", 5, usd) == 0.5
    assert video_cost("wan2.2-kf2v-flash", "480P", 0) == 0.0
    with pytest.raises(ValueError, match="no price for model wan2.2-kf2v-flash at resolution 480P"):
        video_cost("wan2.2-kf2v-flash", "480P", 5, usd)
    with pytest.raises(ValueError, match=">= 0 seconds"):
        video_cost("wan2.2-kf2v-flash", "480P", -1)


def test_estimate_row_and_video_cost_agree():
    for model, resolutions in MODEL_RESOLUTIONS.items():
        for res in resolutions:
            opts = GenerationOptions(model=model, resolution=res)
            assert estimate_row(opts) == video_cost(model, res, opts.duration)


def test_media_model_is_priced_by_its_duration_and_dated_variants_by_their_entry():
    t = PriceTable.default()
    assert t.price("wan2.7-i2v", "720P") == 0.60 and t.price("wan2.7-i2v", "1080P") == 1.0
    assert t.price("wan2.7-i2v-2026-04-25", "1080P") == 1.0  # priced as its table entry
    eight = GenerationOptions(model="wan2.7-i2v", duration=8)  # the service's default 1080P
    assert eight.resolution.value == "1080P" and estimate_row(eight) == 8.0
    assert estimate_row(GenerationOptions(model="wan2.7-i2v", duration=8, resolution="720P")) == 4.8
    est = estimate([eight, GenerationOptions(resolution="480P")])
    assert (est.seconds, est.total) == (13, 8.5)
    assert est.by_model["wan2.7-i2v"] == {
        "rows": 1,
        "seconds": 8,
        "cost": 8.0,
        "resolutions": {"1080P": 1},
    }


def test_models_file_prices_reach_the_default_table(tmp_path, monkeypatch):
    from kf2v_tasks.dashscope.catalog import MODELS_FILE_ENV, reset_catalog

    path = tmp_path / "models.json"
    path.write_text('{"models": [{"name": "wan2.7-i2v", "prices": {"720P": 0.5, "1080P": 0.9}}]}')
    monkeypatch.setenv(MODELS_FILE_ENV, str(path))
    reset_catalog()
    try:
        assert PriceTable.default().price("wan2.7-i2v", "720P") == 0.5
        assert estimate_row(GenerationOptions(model="wan2.7-i2v", duration=10)) == 9.0  # 1080P
    finally:
        monkeypatch.delenv(MODELS_FILE_ENV)
        reset_catalog()


def test_estimate_totals_and_breakdown():
    opts = [
        GenerationOptions(resolution="480P"),
        GenerationOptions(),
        GenerationOptions(),
        GenerationOptions(resolution="1080P"),
        GenerationOptions(model="wanx2.1-kf2v-plus"),
    ]
    est = estimate(opts)
    assert isinstance(est, CostEstimate)
    assert (est.rows, est.seconds, est.currency) == (5, 25, "CNY")
    assert est.total == pytest.approx(0.5 + 1.0 + 1.0 + 2.4 + 3.5)
    assert est.by_model["wan2.2-kf2v-flash"] == {
        "rows": 4,
        "seconds": 20,
        "cost": 4.9,
        "resolutions": {"480P": 1, "720P": 2, "1080P": 1},
    }
    assert est.by_model["wanx2.1-kf2v-plus"]["cost"] == 3.5
    assert est.describe() == "5 rows, 25 s of video, about 8.40 CNY"


def test_estimate_accepts_manifest_rows_and_a_custom_table():
    parsed = parse_manifest(
        "first_frame,last_frame,resolution\na,b,480P\nc,d,1080P\n", source="m", base_dir=""
    )
    table = PriceTable(currency="USD", per_second={"wan2.2-kf2v-flash": {"480P": 1, "1080P": 2}})
    est = estimate(parsed.rows, table)
    assert (est.rows, est.total, est.currency) == (2, 15.0, "USD")


def test_estimate_of_nothing():
    est = estimate([])
    assert (est.rows, est.seconds, est.total, est.by_model) == (0, 0, 0.0, {})


def test_estimate_without_a_price_raises():
    with pytest.raises(ValueError, match="no price"):
        estimate([GenerationOptions()], PriceTable(per_second={}))


# ----------------------------------------------------------------- budget


def test_unlimited_budget_never_refuses_but_tracks():
    b = Budget(None)
    assert all(b.try_reserve(1000.0) for _ in range(10))
    assert b.reserved == 10_000.0 and b.remaining is None
    b.commit(1000.0)
    assert (b.spent, b.reserved) == (1000.0, 9000.0)


def test_budget_refuses_the_row_that_would_exceed():
    b = Budget(max_cost=2.5)
    assert b.try_reserve(1.0) and b.try_reserve(1.0)
    assert not b.try_reserve(1.0)  # 3.0 > 2.5
    assert b.try_reserve(0.5)  # a cheaper row still fits exactly
    assert b.remaining == 0.0 and b.refused == 1
    assert (b.spent, b.reserved) == (0.0, 2.5)


def test_failed_rows_release_their_reservation():
    b = Budget(max_cost=2.0)
    assert b.try_reserve(1.0) and b.try_reserve(1.0)
    b.release(1.0)  # failed: not billed
    b.commit(1.0)  # succeeded
    assert (b.spent, b.reserved, b.remaining) == (1.0, 0.0, 1.0)
    assert b.try_reserve(1.0)
    assert not b.try_reserve(0.01)


def test_float_rounding_does_not_refuse_an_exact_fit():
    b = Budget(max_cost=2.0)
    assert all(b.try_reserve(0.2) for _ in range(10))
    assert not b.try_reserve(0.2)
    for _ in range(10):
        b.commit(0.2)
    assert b.spent == 2.0 and b.reserved == 0.0


def test_zero_budget_and_bad_amounts():
    b = Budget(0)
    assert not b.try_reserve(0.5)
    assert b.try_reserve(0.0)
    with pytest.raises(ValueError):
        Budget(-1)
    with pytest.raises(ValueError):
        Budget(float("nan"))
    for bad in (-1.0, float("inf")):
        with pytest.raises(ValueError):
            b.try_reserve(bad)
        with pytest.raises(ValueError):
            b.commit(bad)
        with pytest.raises(ValueError):
            b.release(bad)


def test_reserve_raises_budget_exceeded():
    b = Budget(1.0)
    b.reserve(1.0)
    with pytest.raises(BudgetExceededError, match="would exceed max_cost 1"):
        b.reserve(0.5)


def test_budget_from_threads_never_overcommits():
    b = Budget(max_cost=50.0)
    granted: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(100):
            ok = b.try_reserve(1.0)
            with lock:
                granted.append(ok)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 50 and b.reserved == 50.0


async def test_budget_from_async_tasks():
    b = Budget(max_cost=3.0)

    async def row() -> bool:
        if not b.try_reserve(1.0):
            return False
        await asyncio.sleep(0)
        b.commit(1.0)
        return True

    results = await asyncio.gather(*(row() for _ in range(10)))
    assert sum(results) == 3 and b.spent == 3.0 and b.reserved == 0.0
