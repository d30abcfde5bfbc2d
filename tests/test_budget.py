"""Budgets a pipeline can see, and bad manifests refused before anything is paid for.

On a real (ephemeral) Prefect server against the simulator over real HTTP. With
``max_cost`` the plan names the rows that fit and those that do not before the first
create; the run never submits the others, ends Failed (``BatchFailedError``) and
``kf2v run`` exits 3. Rows sharing an id are never submitted, and a misspelt column stops
the batch before any create.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kf2v_flows.batch import generate_batch
from kf2v_tasks.batch.config import ConcurrencySettings
from kf2v_tasks.batch.manifest import RowDefaults
from kf2v_tasks.batch.reporting import BatchObserver, observing
from kf2v_tasks.dashscope.models import Resolution
from kf2v_tasks.errors import BatchFailedError, ManifestFileError
from kf2v_tasks.simulator import RuntimeDistribution

from conftest import TEST_API_KEY
from helpers import SPEED, fast_service, make_pairs, manifest_text, pointed_at

pytestmark = pytest.mark.usefixtures("prefect_server")
FAST = ConcurrencySettings(max_in_flight=4, submits_per_second=20, queries_per_second=200)
CHEAP = RowDefaults(resolution=Resolution.P480)  # 0.10/s x 5 s = 0.50 per row


@pytest.fixture(scope="module")
def sim():
    with fast_service(RuntimeDistribution(kind="fixed", low=30), seed=7) as s:
        yield s


@pytest.fixture(autouse=True)
def _env(sim, monkeypatch):
    with pointed_at(sim, monkeypatch):
        yield


def _manifest(folder: Path, ids: list[str], columns: list[str] | None = None) -> Path:
    pairs = make_pairs(folder, len(ids))
    rows = [
        {"id": i, "first_frame": a, "last_frame": b} for i, (a, b) in zip(ids, pairs, strict=True)
    ]
    path = folder / "m.csv"
    path.write_text(manifest_text(rows, columns or ["id", "first_frame", "last_frame"]))
    return path


class _PlanSpy(BatchObserver):
    """Records the budget line, and how many creates the simulator had seen, at plan time."""

    def __init__(self, sim) -> None:
        self.sim = sim
        self.seen: list[tuple[str, int]] = []

    async def on_plan(self, plan, cost, dry_run):
        self.seen.append((plan.budget_line(cost.currency), self.sim.stats()["creates"]))


async def test_a_budget_stop_fails_the_flow_and_the_plan_named_the_rows_first(sim, tmp_path):
    manifest = _manifest(tmp_path / "in", ["a", "b", "c", "d"])
    spy = _PlanSpy(sim)
    before = sim.stats()["creates"]
    with observing(spy):
        state = await generate_batch(
            str(manifest),
            str(tmp_path / "out"),
            defaults=CHEAP,
            max_cost=1.2,
            concurrency=FAST,
            return_state=True,
        )
    # Before the first create, the plan said which rows fit (manifest order) and which not.
    assert spy.seen == [
        (
            "max_cost 1.20 CNY: 2 rows fit (1.00 CNY): 2 (a), 3 (b); "
            "2 rows over budget, not submitted: 4 (c), 5 (d)",
            before,
        )
    ]
    assert state.is_failed()
    assert state.message.endswith("2 not submitted: over max_cost 1.20)"), state.message
    error = await state.aresult(raise_on_failure=False)
    assert isinstance(error, BatchFailedError)
    summary = error.summary
    assert summary.over_budget == 2 and summary.failed == 0
    assert summary.counts == {"succeeded": 2, "over_budget": 2}
    assert [(r.id, r.status.value) for r in summary.results] == [
        ("a", "succeeded"), ("b", "succeeded"), ("c", "over_budget"), ("d", "over_budget"),
    ]  # fmt: skip
    assert sim.stats()["creates"] - before == 2


async def test_a_dry_run_shows_the_rows_over_budget(sim, tmp_path):
    manifest = _manifest(tmp_path / "in", ["a", "b", "c"])
    before = sim.stats()["creates"]
    with pytest.raises(BatchFailedError) as info:
        await generate_batch(
            str(manifest), str(tmp_path / "out"), defaults=CHEAP, max_cost=1.0, dry_run=True
        )
    summary = info.value.summary
    assert summary.counts == {"planned": 2, "over_budget": 1} and summary.dry_run
    assert "1 would not be submitted: over max_cost 1.00" in str(info.value)
    table = (tmp_path / "out" / "results.dry-run.csv").read_text().splitlines()
    assert table[-1].startswith("4,c,over_budget,")
    assert sim.stats()["creates"] == before


def test_the_cli_exits_three_on_a_budget_stop_and_prints_the_plan_first(sim, tmp_path):
    from prefect.settings import PREFECT_API_URL

    manifest = _manifest(tmp_path / "in", ["a", "b", "c"])
    env = dict(
        os.environ,
        DASHSCOPE_API_KEY=TEST_API_KEY,
        DASHSCOPE_HTTP_BASE_URL=sim.base_url,
        KF2V_TIME_SCALE=str(SPEED),
        PREFECT_API_URL=PREFECT_API_URL.value(),
    )
    cmd = [sys.executable, "-m", "kf2v_tasks._cli.main", "run", str(manifest)]
    p = subprocess.run(
        cmd + ["--output", str(tmp_path / "out"), "--resolution", "480P", "--max-cost", "1.2",
               "--submits-per-second", "20", "--queries-per-second", "200"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 3, p.stderr[-3000:]
    plan = "budget max_cost 1.20 CNY: 2 rows fit (1.00 CNY): 2 (a), 3 (b); 1 row over budget"
    assert plan in p.stderr
    assert p.stderr.index(plan) < p.stderr.index("3 rows: 1 over_budget, 2 succeeded")
    assert "over_budget 1 row not submitted (max_cost 1.20 CNY): 4 (c)" in p.stderr
    assert "Traceback" not in p.stderr
    helptext = subprocess.run(
        cmd[:-1] + ["--help"], capture_output=True, text=True, timeout=60
    ).stdout
    assert "3  nothing failed, but --max-cost left rows unsubmitted" in helptext


async def test_rows_sharing_an_id_are_never_submitted(sim, tmp_path):
    manifest = _manifest(tmp_path / "in", ["x", "y", "x"])
    before = sim.stats()["creates"]
    with pytest.raises(BatchFailedError) as info:
        await generate_batch(str(manifest), str(tmp_path / "out"), concurrency=FAST)
    summary = info.value.summary
    assert [(r.row, r.status.value) for r in summary.results] == [
        (2, "invalid"), (3, "succeeded"), (4, "invalid"),
    ]  # fmt: skip
    assert [r.error_message for r in summary.results if r.status.value == "invalid"] == [
        "row 2, column 'id': 'x' is also used by row 4",
        "row 4, column 'id': 'x' is also used by row 2",
    ]
    assert sim.stats()["creates"] - before == 1
    assert not (tmp_path / "out" / "x.mp4").exists()


async def test_a_misspelt_column_is_refused_before_any_create(sim, tmp_path):
    manifest = _manifest(tmp_path / "in", ["p", "q"], ["id", "first_frame", "last_frame", "promt"])
    before = sim.stats()
    state = await generate_batch(
        str(manifest), str(tmp_path / "out"), concurrency=FAST, return_state=True
    )
    assert state.is_failed()
    error = await state.aresult(raise_on_failure=False)
    assert isinstance(error, ManifestFileError)
    assert "unknown column 'promt' (did you mean 'prompt'?)" in str(error)
    after = sim.stats()
    assert (after["creates"], after["uploads"]) == (before["creates"], before["uploads"])
    assert not (tmp_path / "out" / "results.csv").exists()
