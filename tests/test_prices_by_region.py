"""Prices by region (issue 22 #2, #3) and money shown as it was (issue 25 #6).

On a real (ephemeral) Prefect server against the simulator over real HTTP. A run prices
its rows in the region of the credentials in use (a block with a ``base_url`` of its own
keeps its ``region``), with Model Studio's own price list (reference §16); a model that
list does not price there is "unknown": counted apart, warned once, and never run under
``max_cost``. A re-run counts only what it makes and keeps each kept video's cost.
"""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from kf2v_flows.batch import generate_batch
from kf2v_tasks.batch.config import ConcurrencySettings
from kf2v_tasks.batch.gallery_page import GalleryCard, render_gallery
from kf2v_tasks.batch.reporting import BatchObserver, observing
from kf2v_tasks.credentials import DashScopeCredentials
from kf2v_tasks.errors import BatchFailedError
from kf2v_tasks.simulator import RuntimeDistribution

from conftest import TEST_API_KEY
from helpers import SPEED, fast_service, make_pairs, manifest_text

pytestmark = pytest.mark.usefixtures("prefect_server")
FAST = ConcurrencySettings(max_in_flight=4, submits_per_second=20, queries_per_second=200)
COLUMNS = ["id", "first_frame", "last_frame", "model", "resolution", "duration"]
# Reference §16, CNY per generated second.
I2V = {"beijing": {"720P": 0.6, "1080P": 1.0}, "singapore": {"720P": 0.733924, "1080P": 1.100886}}


@pytest.fixture(scope="module")
def sim():
    with fast_service(RuntimeDistribution(kind="fixed", low=30), seed=22) as s:
        yield s


@pytest.fixture(autouse=True)
def _time_scale():
    from kf2v_tasks import clock

    clock.set_time_scale(SPEED)
    yield
    clock.set_time_scale(None)


def _block(sim, region: str) -> DashScopeCredentials:
    # A base_url of its own (the simulator) keeps the block's region for prices.
    return DashScopeCredentials(
        api_key=SecretStr(TEST_API_KEY), region=region, base_url=sim.base_url
    )


def _manifest(folder: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    """``rows``: (id, model, resolution, duration) each, with frames of their own."""
    pairs = make_pairs(folder, len(rows))
    cells = [
        dict(id=i, first_frame=a, last_frame=b, model=m, resolution=r, duration=d)
        for (i, m, r, d), (a, b) in zip(rows, pairs, strict=True)
    ]
    path = folder / "m.csv"
    path.write_text(manifest_text(cells, COLUMNS))
    return path


def _table(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in csv.DictReader(io.StringIO(path.read_text()))}


I2V_ROWS = [("a", "wan2.7-i2v", "720P", "4"), ("b", "wan2.7-i2v", "1080P", "6")]


def _i2v_cost(region: str) -> float:
    return 4 * I2V[region]["720P"] + 6 * I2V[region]["1080P"]


@pytest.mark.parametrize("region", ["beijing", "singapore"])
async def test_the_flow_estimates_the_same_manifest_by_the_region_of_its_block(
    sim, tmp_path, region
):
    manifest = _manifest(tmp_path / "in", I2V_ROWS)
    before = sim.stats()["creates"]
    summary = await generate_batch(
        str(manifest), str(tmp_path / "out"), dry_run=True, credentials_block=_block(sim, region)
    )
    assert summary.estimated_cost == pytest.approx(_i2v_cost(region))
    table = _table(tmp_path / "out" / "results.dry-run.csv")
    assert float(table["a"]["cost"]) == pytest.approx(4 * I2V[region]["720P"])
    assert float(table["b"]["cost"]) == pytest.approx(6 * I2V[region]["1080P"])
    assert sim.stats()["creates"] == before


def _cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    import os

    from prefect.settings import PREFECT_API_URL

    full = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value(), KF2V_TIME_SCALE=str(SPEED))
    for name in ("DASHSCOPE_API_KEY", "DASHSCOPE_HTTP_BASE_URL"):
        full.pop(name, None)
    full.update(env)
    cmd = [sys.executable, "-m", "kf2v_tasks._cli.main", "run", *args]
    return subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=300)


def test_kf2v_run_dry_run_estimates_by_the_region_of_the_credentials_block(sim, tmp_path):
    manifest = _manifest(tmp_path / "in", I2V_ROWS)
    lines = {}
    for region in ("beijing", "singapore"):
        _block(sim, region).save(f"kf2v-prices-{region}", overwrite=True)
        p = _cli(tmp_path, str(manifest), "--output", str(tmp_path / region), "--dry-run",
                 "--credentials-block", f"kf2v-prices-{region}")  # fmt: skip
        assert p.returncode == 0, p.stderr[-3000:]
        lines[region] = next(line for line in p.stderr.splitlines() if "estimated cost" in line)
    assert lines == {
        "beijing": "2 valid rows, 0 invalid; estimated cost 8.40 CNY at beijing prices "
        "(dry run: nothing is submitted)",
        "singapore": "2 valid rows, 0 invalid; estimated cost 9.54 CNY at singapore prices "
        "(dry run: nothing is submitted)",
    }
    assert f"{_i2v_cost('singapore'):.2f}" == "9.54"


def test_flash_on_singapore_is_unknown_warned_once_and_refused_by_max_cost(sim, tmp_path):
    manifest = _manifest(
        tmp_path / "in",
        [("f1", "wan2.2-kf2v-flash", "720P", ""), ("f2", "wan2.2-kf2v-flash", "480P", ""),
         ("i", "wan2.7-i2v", "720P", "2")],
    )  # fmt: skip
    _block(sim, "singapore").save("kf2v-prices-sg", overwrite=True)
    out = tmp_path / "out"
    before = sim.stats()["creates"]
    p = _cli(tmp_path, str(manifest), "--output", str(out), "--max-cost", "5",
             "--credentials-block", "kf2v-prices-sg")  # fmt: skip
    assert p.returncode == 3, p.stderr[-3000:]
    err = p.stderr
    # The estimate says so on its one line; the region warning comes once, before any create.
    assert (
        "3 valid rows, 0 invalid; estimated cost 1.47 CNY at singapore prices; price unknown "
        "for 2 rows (10 s): wan2.2-kf2v-flash in singapore, not counted\n" in err
    )
    assert err.count("wan2.2-kf2v-flash is listed for beijing only") == 1
    assert (
        "warning wan2.2-kf2v-flash is listed for beijing only, and this run is in singapore" in err
    )
    # max_cost does not guess: the rows are not submitted, and the plan says how to price them.
    why = "no price for model wan2.2-kf2v-flash at resolution 720P in singapore"
    budget = next(line for line in err.splitlines() if line.startswith("budget "))
    assert why in budget and "models file (PREFECT_INTEGRATIONS_KF2V_MODELS_FILE" in budget
    assert sim.stats()["creates"] - before == 1  # the wan2.7-i2v row only
    table = _table(out / "results.csv")
    assert {k: r["status"] for k, r in table.items()} == {
        "f1": "over_budget", "f2": "over_budget", "i": "succeeded",
    }  # fmt: skip
    assert why in table["f1"]["error_message"] and "price_table" in table["f1"]["error_message"]
    assert float(table["i"]["cost"]) == pytest.approx(2 * 0.733924)

    # A price the user supplies (a models file) is used, and max_cost then runs the rows.
    models = tmp_path / "models.toml"
    models.write_text(
        '[[models]]\nname = "wan2.2-kf2v-flash"\n'
        'prices = { singapore = { "480P" = 0.12, "720P" = 0.25 } }\n'
    )
    p = _cli(tmp_path, str(manifest), "--output", str(out), "--max-cost", "5", "--dry-run",
             "--credentials-block", "kf2v-prices-sg",
             PREFECT_INTEGRATIONS_KF2V_MODELS_FILE=str(models))  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    assert "estimated cost 1.85 CNY at singapore prices; 1 row already kept" in p.stderr
    table = _table(out / "results.dry-run.csv")
    assert (table["f1"]["status"], float(table["f1"]["cost"])) == ("planned", 1.25)
    assert (table["f2"]["status"], float(table["f2"]["cost"])) == ("planned", 0.6)


class _Estimates(BatchObserver):
    def __init__(self) -> None:
        self.seen = []

    async def on_plan(self, plan, cost, dry_run):
        self.seen.append(cost)


async def test_a_rerun_counts_only_what_it_makes_and_keeps_what_each_video_cost(sim, tmp_path):
    flash = [("a", "wan2.2-kf2v-flash", "480P", ""), ("b", "wan2.2-kf2v-flash", "480P", "")]
    out = tmp_path / "out"
    first = await generate_batch(
        str(_manifest(tmp_path / "in", flash)), str(out), concurrency=FAST,
        credentials_block=_block(sim, "beijing"),
    )  # fmt: skip
    assert (first.estimated_cost, first.spent) == (1.0, 1.0)  # 2 x 5 s x 0.10

    # The same rows and a new one, now on a Singapore account: flash has no price there.
    rows = [*flash, ("c", "wan2.7-i2v", "720P", "2"), ("d", "wan2.2-kf2v-flash", "720P", "")]
    spy = _Estimates()
    with observing(spy), pytest.raises(BatchFailedError):  # nothing failed: d has no price
        await generate_batch(
            str(_manifest(tmp_path / "in", rows)), str(out), concurrency=FAST,
            credentials_block=_block(sim, "singapore"), max_cost=10,
        )  # fmt: skip
    [cost] = spy.seen
    assert (cost.rows, cost.total) == (1, pytest.approx(2 * 0.733924))  # c only
    assert (cost.kept_rows, cost.kept_cost, cost.unpriced_rows) == (2, 1.0, 1)
    assert "; 2 rows already kept (made for 1.00 CNY), not made again" in cost.notes()

    again = await generate_batch(
        str(_manifest(tmp_path / "in", rows[:3])), str(out), concurrency=FAST,
        credentials_block=_block(sim, "singapore"),
    )  # fmt: skip
    assert again.estimated_cost == 0.0 and again.spent == 0.0  # this run made nothing
    table = _table(out / "results.csv")
    # Kept videos keep the cost they were made for (Beijing's), not 0.00, not unknown.
    assert {k: (r["status"], r["cost"]) for k, r in table.items()} == {
        "a": ("skipped", "0.5"), "b": ("skipped", "0.5"), "c": ("skipped", "1.467848"),
        "d": ("over_budget", ""),
    }  # fmt: skip
    page = (out / "index.html").read_text()
    assert sorted(re.findall(r"cost (\d+\.\d\d) CNY", page)) == ["0.50", "0.50", "1.47"]


def test_a_video_of_unknown_price_shows_so_in_the_gallery():
    page = render_gallery(
        [GalleryCard(row=2, id="x", status="succeeded", cost=None)], title="t", subtitle="s"
    )
    assert "cost unknown" in page and "cost 0.00" not in page


async def test_the_single_video_flow_prices_its_video_in_the_region_of_its_block(sim, tmp_path):
    import json

    from kf2v_flows.single import generate_video
    from kf2v_tasks.dashscope.models import GenerationOptions

    (a, b) = make_pairs(tmp_path / "in", 1)[0]
    video = await generate_video(
        str(tmp_path / "in" / a),
        str(tmp_path / "in" / b),
        str(tmp_path / "out" / "one.mp4"),
        "a slow pan",
        options=GenerationOptions(model="wan2.7-i2v", duration=2, resolution="720P"),
        credentials_block=_block(sim, "singapore"),
    )
    assert (video.cost, video.currency) == (pytest.approx(2 * 0.733924), "CNY")
    assert json.loads(Path(video.sidecar_path).read_text())["cost"] == video.cost


async def test_an_account_pool_across_regions_prices_each_row_at_the_dearest(sim):
    from kf2v_tasks.batch.plan_assess import run_prices
    from kf2v_tasks.generation.pricing import PriceTable

    other = DashScopeCredentials(
        api_key=SecretStr(TEST_API_KEY + "-2"), region="singapore", base_url=sim.base_url
    )
    pool = await run_prices([_block(sim, "beijing"), other])
    assert pool.region == "beijing+singapore" and pool.price("wan2.7-i2v", "1080P") == 1.100886
    assert pool.find("wan2.2-kf2v-flash", "480P") is None  # unknown on the Singapore account
    assert (await run_prices(None)).region == "beijing"  # no block: KF2V_REGION (the suite's)
    mine = PriceTable(per_second={"wan2.2-kf2v-flash": {"720P": 1.0}})
    assert await run_prices([other], mine) is mine  # a whole table of the caller's
    patched = await run_prices([other], {"wan2.2-kf2v-flash": {"720P": 0.3}})
    assert patched.price("wan2.2-kf2v-flash", "720P") == 0.3 and patched.region == "singapore"


async def test_a_task_picked_up_again_is_warned_about_too(tmp_path):
    from kf2v_tasks.batch.plan import plan_batch
    from kf2v_tasks.generation.pricing import PriceTable

    manifest = _manifest(tmp_path / "in", [("f", "wan2.2-kf2v-flash", "720P", "")])
    plan = await plan_batch(str(manifest), str(tmp_path / "out"))
    plan.live = ["f"]  # created before (a crashed run, or kf2v run's head start)
    est = plan.estimate(PriceTable.default("singapore"))
    assert (est.rows, est.unpriced_rows) == (0, 0)  # not made (nor paid) again by this run
    assert est.warning.startswith("wan2.2-kf2v-flash is listed for beijing only")
