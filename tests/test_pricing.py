"""Price table by region, cost estimates and the budget."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from kf2v_tasks.batch.manifest import parse_manifest
from kf2v_tasks.dashscope.catalog import (
    MODELS_FILE_ENV,
    FactSource,
    ModelCatalog,
    get_model,
    reset_catalog,
)
from kf2v_tasks.dashscope.models import MODEL_RESOLUTIONS, GenerationOptions, Kf2vModel, Resolution
from kf2v_tasks.errors import BudgetExceededError
from kf2v_tasks.generation.budget import Budget
from kf2v_tasks.generation.pricing import (
    CostEstimate,
    PriceTable,
    estimate,
    estimate_row,
    region_warning,
    video_cost,
)

BEIJING = PriceTable.default("beijing")
SINGAPORE = PriceTable.default("singapore")

# ----------------------------------------------------------------- price table


def test_beijing_prices_are_model_studios_own():
    t = BEIJING
    assert (t.currency, t.region) == ("CNY", "beijing")
    assert t.price(Kf2vModel.WAN22_FLASH, Resolution.P480) == 0.10
    assert t.price("wan2.2-kf2v-flash", "720p") == 0.20
    assert t.price("wan2.2-kf2v-flash", "1080P") == 0.48
    assert t.price("wanx2.1-kf2v-plus", "720P") == 0.70
    assert t.price("wan2.7-i2v", "720P") == 0.6 and t.price("wan2.7-i2v", "1080P") == 1.0
    assert t.find("wan2.1-kf2v-plus", "720P") is None  # the international name: Singapore only


def test_singapore_prices_are_model_studios_own():
    t = SINGAPORE
    assert t.region == "singapore"
    assert t.price("wan2.7-i2v", "720P") == 0.733924
    assert t.price("wan2.7-i2v", "1080P") == 1.100886
    assert t.price("wan2.7-i2v-2026-04-25", "1080P") == 1.100886  # priced as its family
    assert t.price("wan2.1-kf2v-plus", "720P") == 0.733924
    # Not on Singapore's price list: unknown, never guessed from Beijing's.
    for model in ("wan2.2-kf2v-flash", "wanx2.1-kf2v-plus"):
        assert model not in t.per_second and t.find(model, "720P") is None
    with pytest.raises(
        ValueError, match=r"no price for model wan2.2-kf2v-flash at resolution 720P in singapore"
    ):
        t.price("wan2.2-kf2v-flash", "720P")


def test_every_price_is_sourced_from_model_studios_pricing_page():
    for spec in ModelCatalog().models:
        assert spec.source("prices") is FactSource.OFFICIAL_DOC, spec.name
        assert spec.source("regions") is FactSource.OFFICIAL_DOC, spec.name
        assert "pricing page" in spec.price_note


def test_every_offered_resolution_is_priced_in_each_region_the_model_is_listed_in():
    for model, resolutions in MODEL_RESOLUTIONS.items():
        for region in get_model(model).regions:
            table = PriceTable.default(region)
            for res in resolutions:
                assert table.price(model, res) > 0, (model, region, res)


def test_the_default_region_is_the_configured_one(monkeypatch):
    monkeypatch.setenv("KF2V_REGION", "singapore")
    assert PriceTable.default() == SINGAPORE
    monkeypatch.setenv("KF2V_REGION", "beijing")
    assert PriceTable.default() == BEIJING
    assert PriceTable.from_value(None) == BEIJING


def test_a_pool_across_regions_pays_the_dearest_and_unknown_anywhere_is_unknown():
    both = PriceTable.default(["beijing", "singapore"])
    assert both.region == "beijing+singapore"
    assert both.price("wan2.7-i2v", "720P") == 0.733924
    assert both.find("wan2.2-kf2v-flash", "480P") is None


def test_default_is_a_fresh_copy():
    PriceTable.default("beijing").per_second["wan2.2-kf2v-flash"]["480P"] = 99
    assert PriceTable.default("beijing").price("wan2.2-kf2v-flash", "480P") == 0.10


def test_missing_price_is_a_clear_error_that_says_how_to_give_one():
    t = PriceTable(per_second={"wan2.2-kf2v-flash": {"720P": 0.2}})
    with pytest.raises(
        ValueError,
        match=r"no price for model wan2.2-kf2v-flash at resolution 1080P in this table; .*models file",
    ):
        t.price("wan2.2-kf2v-flash", "1080P")
    with pytest.raises(
        ValueError, match="no price for model other at resolution 720P.*price_table"
    ):
        t.price("other", "720P")


def test_negative_or_nan_prices_are_rejected():
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            PriceTable(per_second={"m": {"720P": bad}})


def test_bare_mapping_patches_the_defaults_of_the_region():
    patch = {"wan2.2-kf2v-flash": {"1080p": 0.5}, "new-model": {"720P": 1}}
    t = PriceTable.from_value(patch, "beijing")
    assert t.price("wan2.2-kf2v-flash", "1080P") == 0.5
    assert t.price("wan2.2-kf2v-flash", "480P") == 0.10
    assert t.price("new-model", "720P") == 1.0
    assert t.notes["wan2.2-kf2v-flash"] == "overridden by the caller"
    assert t.currency == "CNY"
    sg = PriceTable.from_value(patch, "singapore")  # the caller prices flash in Singapore
    assert sg.price("wan2.2-kf2v-flash", "1080P") == 0.5
    assert sg.find("wan2.2-kf2v-flash", "480P") is None
    assert sg.price("wan2.7-i2v", "720P") == 0.733924


def test_full_table_replaces_the_defaults_and_json_works():
    doc = {"currency": "USD", "per_second": {"wan2.1-kf2v-plus": {"720P": 0.1}}}
    for value in (doc, json.dumps(doc)):
        t = PriceTable.from_value(value, "beijing")
        assert (t.currency, t.region) == ("USD", None)
        assert t.price("wan2.1-kf2v-plus", "720P") == 0.1
        with pytest.raises(ValueError, match="no price"):
            t.price("wan2.2-kf2v-flash", "720P")


def test_from_value_passthrough_and_garbage():
    t = PriceTable.default("beijing")
    assert PriceTable.from_value(t, "singapore") is t
    with pytest.raises(ValueError, match="not valid JSON"):
        PriceTable.from_value("{nope")
    with pytest.raises(ValueError, match="mapping"):
        PriceTable.from_value("[1, 2]")


def test_models_file_prices_per_region_or_for_every_region(tmp_path, monkeypatch):
    path = tmp_path / "models.toml"
    path.write_text(
        '[[models]]\nname = "wan2.2-kf2v-flash"\nprices = { singapore = { "720P" = 0.25 } }\n'
        '[[models]]\nname = "wan2.7-i2v"\nprices = { "720P" = 0.5, "1080P" = 0.9 }\n'
    )
    monkeypatch.setenv(MODELS_FILE_ENV, str(path))
    reset_catalog()
    try:
        flash = get_model("wan2.2-kf2v-flash")
        assert flash.source("prices") is FactSource.USER
        # The user's Singapore price joins the documented Beijing ones.
        assert PriceTable.default("singapore").price("wan2.2-kf2v-flash", "720P") == 0.25
        assert PriceTable.default("beijing").price("wan2.2-kf2v-flash", "720P") == 0.20
        assert PriceTable.default("singapore").find("wan2.2-kf2v-flash", "480P") is None
        # A flat price holds in every region.
        for region in ("beijing", "singapore"):
            assert PriceTable.default(region).price("wan2.7-i2v", "720P") == 0.5
        ten = GenerationOptions(model="wan2.7-i2v", duration=10)  # 1080P
        assert estimate_row(ten, PriceTable.default("singapore")) == 9.0
    finally:
        monkeypatch.delenv(MODELS_FILE_ENV)
        reset_catalog()


# ----------------------------------------------------------------- estimates


def test_estimate_row_is_duration_times_price_and_none_when_unknown():
    assert estimate_row(GenerationOptions(resolution="480P"), BEIJING) == 0.5
    assert estimate_row(GenerationOptions(), BEIJING) == 1.0
    assert estimate_row(GenerationOptions(resolution="1080P"), BEIJING) == 2.4
    assert estimate_row(GenerationOptions(model="wanx2.1-kf2v-plus"), BEIJING) == 3.5
    assert estimate_row(GenerationOptions(model="wan2.1-kf2v-plus"), SINGAPORE) == 3.66962
    assert estimate_row(GenerationOptions(), SINGAPORE) is None


def test_video_cost_is_seconds_times_price_in_the_tables_currency():
    assert video_cost("wan2.2-kf2v-flash", "480P", 5, BEIJING) == 0.5
    assert video_cost(Kf2vModel.WAN22_FLASH, Resolution.P1080, table=BEIJING) == 2.4  # 5 s
    assert video_cost("wan2.2-kf2v-flash", "720p", 3, BEIJING) == 0.6  # any case
    usd = PriceTable(currency="USD", per_second={"wan2.1-kf2v-plus": {"720P": 0.1}})
    assert video_cost("wan2.1-kf2v-plus", "720P", 5, usd) == 0.5
    assert video_cost("wan2.2-kf2v-flash", "480P", 0, BEIJING) == 0.0
    with pytest.raises(ValueError, match="no price for model wan2.2-kf2v-flash at resolution 480P"):
        video_cost("wan2.2-kf2v-flash", "480P", 5, usd)
    with pytest.raises(ValueError, match=">= 0 seconds"):
        video_cost("wan2.2-kf2v-flash", "480P", -1, BEIJING)


def test_estimate_row_and_video_cost_agree():
    for model, resolutions in MODEL_RESOLUTIONS.items():
        table = PriceTable.default(get_model(model).regions[0])
        for res in resolutions:
            opts = GenerationOptions(model=model, resolution=res)
            assert estimate_row(opts, table) == video_cost(model, res, opts.duration, table)


def test_media_model_is_priced_by_its_duration():
    eight = GenerationOptions(model="wan2.7-i2v", duration=8)  # the service's default 1080P
    assert eight.resolution.value == "1080P" and estimate_row(eight, BEIJING) == 8.0
    assert estimate_row(eight, SINGAPORE) == 8.807088
    assert (
        estimate_row(GenerationOptions(model="wan2.7-i2v", duration=8, resolution="720P"), BEIJING)
        == 4.8
    )
    est = estimate([eight, GenerationOptions(resolution="480P")], BEIJING)
    assert (est.seconds, est.total) == (13, 8.5)
    assert est.by_model["wan2.7-i2v"] == {
        "rows": 1,
        "seconds": 8,
        "cost": 8.0,
        "resolutions": {"1080P": 1},
    }


def test_estimate_totals_and_breakdown():
    opts = [
        GenerationOptions(resolution="480P"),
        GenerationOptions(),
        GenerationOptions(),
        GenerationOptions(resolution="1080P"),
        GenerationOptions(model="wanx2.1-kf2v-plus"),
    ]
    est = estimate(opts, region="beijing")
    assert isinstance(est, CostEstimate)
    assert (est.rows, est.seconds, est.currency, est.region) == (5, 25, "CNY", "beijing")
    assert est.total == pytest.approx(0.5 + 1.0 + 1.0 + 2.4 + 3.5)
    assert est.by_model["wan2.2-kf2v-flash"] == {
        "rows": 4,
        "seconds": 20,
        "cost": 4.9,
        "resolutions": {"480P": 1, "720P": 2, "1080P": 1},
    }
    assert est.by_model["wanx2.1-kf2v-plus"]["cost"] == 3.5
    assert est.describe() == "5 rows, 25 s of video, about 8.40 CNY at beijing prices"
    assert est.warning is None


def test_the_same_rows_cost_what_the_price_list_says_in_each_region():
    rows = [GenerationOptions(model="wan2.7-i2v", resolution="720P", duration=10)] * 2 + [
        GenerationOptions(model="wan2.7-i2v", resolution="1080P", duration=5)
    ]
    assert estimate(rows, region="beijing").total == 2 * 10 * 0.6 + 5 * 1.0
    assert estimate(rows, region="singapore").total == pytest.approx(
        2 * 10 * 0.733924 + 5 * 1.100886
    )


def test_unpriced_rows_are_counted_apart_on_one_line_with_a_region_warning():
    rows = [GenerationOptions(), GenerationOptions(resolution="480P")] + [
        GenerationOptions(model="wan2.7-i2v", resolution="720P", duration=4)
    ]
    est = estimate(rows, region="singapore")
    assert (est.rows, est.seconds, est.total) == (1, 4, pytest.approx(4 * 0.733924))
    assert (est.unpriced_rows, est.unpriced_seconds) == (2, 10)
    assert est.notes() == (
        " at singapore prices; price unknown for 2 rows (10 s): wan2.2-kf2v-flash in "
        "singapore, not counted"
    )
    assert "\n" not in est.describe()
    assert est.warning == (
        "wan2.2-kf2v-flash is listed for beijing only, and this run is in singapore: the "
        "service may refuse it (Model Studio's pricing and rate-limit pages)"
    )


def test_region_warning_names_each_model_listed_only_elsewhere_once():
    line = region_warning(
        ["wan2.2-kf2v-flash", "wanx2.1-kf2v-plus", "wan2.2-kf2v-flash", "wan2.7-i2v"], "singapore"
    )
    assert line.startswith(
        "wan2.2-kf2v-flash is listed for beijing only; wanx2.1-kf2v-plus is listed for "
        "beijing only, and this run is in singapore"
    )
    assert "wan2.1-kf2v-plus is listed for singapore only" in region_warning(
        ["wan2.1-kf2v-plus"], "beijing"
    )
    assert region_warning(["wan2.7-i2v", "wan2.2-kf2v-flash"], "beijing") is None
    assert region_warning(["wan2.2-kf2v-flash"], None) is None  # a table of your own


def test_kept_videos_are_shown_apart_at_what_they_cost_then():
    est = estimate([GenerationOptions()], BEIJING, kept=[1.0, 0.5])
    assert (est.rows, est.total, est.kept_rows, est.kept_cost) == (1, 1.0, 2, 1.5)
    assert est.notes().endswith("; 2 rows already kept (made for 1.50 CNY), not made again")
    # A video made where its price was unknown is not shown as free.
    some = estimate([], BEIJING, kept=[1.0, None]).notes()
    assert some.endswith(
        "; 2 rows already kept (made for 1.00 CNY; 1 at an unknown price), not made again"
    )
    none = estimate([], BEIJING, kept=[None]).notes()
    assert none.endswith("; 1 row already kept (made at an unknown price), not made again")


def test_estimate_accepts_manifest_rows_and_a_custom_table():
    parsed = parse_manifest(
        "first_frame,last_frame,resolution\na,b,480P\nc,d,1080P\n", source="m", base_dir=""
    )
    table = PriceTable(currency="USD", per_second={"wan2.2-kf2v-flash": {"480P": 1, "1080P": 2}})
    est = estimate(parsed.rows, table)
    assert (est.rows, est.total, est.currency) == (2, 15.0, "USD")


def test_estimate_of_nothing():
    est = estimate([], BEIJING)
    assert (est.rows, est.seconds, est.total, est.by_model) == (0, 0, 0.0, {})


def test_estimate_without_a_price_counts_the_row_unpriced():
    est = estimate([GenerationOptions()], PriceTable(per_second={}))
    assert (est.rows, est.unpriced_rows, est.total) == (0, 1, 0.0)
    assert "in this table" in est.notes()


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
