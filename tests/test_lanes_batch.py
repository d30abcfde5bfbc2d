"""A batch keeps one lane per model: each fills its own quota, longest rows first.

On a real Prefect server against the simulator (which enforces §16's per-model quota:
wan2.7-i2v 5 running, kf2v 2) over real HTTP, with the batch flow's default settings.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from kf2v_flows.batch import generate_batch
from kf2v_tasks.batch.config import ConcurrencySettings
from kf2v_tasks.simulator import RuntimeDistribution, SimulatorConfig, run_simulator

from conftest import TEST_API_KEY
from helpers import SPEED, make_frame, manifest_text, peak_running, pointed_at

pytestmark = pytest.mark.usefixtures("prefect_server")
COLUMNS = ["id", "first_frame", "last_frame", "model", "resolution", "duration", "prompt"]


@pytest.fixture
def sim(monkeypatch):
    cfg = SimulatorConfig(
        speed=SPEED, render="tiny", runtime=RuntimeDistribution(kind="fixed", low=60), seed=21
    )
    with run_simulator(cfg) as s, pointed_at(s, monkeypatch):
        yield s


def _frames(folder: Path) -> None:
    make_frame(folder / "a.png", (480, 400))
    make_frame(folder / "b.png", (480, 400), (20, 160, 90))


def _wan(i: int, duration: int, resolution: str = "720P") -> dict:
    return {
        "id": f"w{i}",
        "first_frame": "a.png",
        "last_frame": "b.png",
        "model": "wan2.7-i2v",
        "resolution": resolution,
        "duration": duration,
        "prompt": f"shot {i}",
    }


def _kf2v(i: int) -> dict:
    return {
        "id": f"k{i}",
        "first_frame": "a.png",
        "last_frame": "b.png",
        "model": "wan2.2-kf2v-flash",
        "prompt": f"pan {i}",
    }


def _manifest(folder: Path, rows: list[dict]) -> str:
    _frames(folder)
    (folder / "m.csv").write_text(manifest_text(rows, COLUMNS))
    return str(folder / "m.csv")


def _peak_running(rows: list[dict], model: str) -> int:
    return peak_running(rows, lambda r: r["model"] == model)


async def test_each_model_fills_its_own_lane_and_never_more(sim, tmp_path):
    rows = [_wan(i, d) for i, d in enumerate([2, 3, 4, 5, 6, 8, 10, 12, 15, 15])]
    rows += [_kf2v(i) for i in range(4)]
    summary = await generate_batch(_manifest(tmp_path, rows), str(tmp_path / "out"))
    assert summary.counts == {"succeeded": 14}, summary.results
    timeline = sim.tasks()
    # Each lane reaches its model's quota (5 and 2) and never passes it.
    assert _peak_running(timeline, "wan2.7-i2v") == 5
    assert _peak_running(timeline, "wan2.2-kf2v-flash") == 2
    assert sim.stats()["peak_by_model"] == {"wan2.7-i2v": 5, "wan2.2-kf2v-flash": 2}
    # Each lane is its own global concurrency limit: named by account and model, no key.
    async with get_client() as client:
        names = {x.name for x in await client.read_global_concurrency_limits(limit=200, offset=0)}
    lanes = {n for n in names if n.endswith(("-wan2.7-i2v", "-wan2.2-kf2v-flash"))}
    assert len(lanes) == 2 and all(n.startswith("kf2v-key-") for n in lanes), names
    assert not any(TEST_API_KEY in n for n in names)


def _created_order(timeline: list[dict]) -> list[float]:
    return [r["run_seconds"] for r in sorted(timeline, key=lambda r: r["created"])]


ONE_AT_A_TIME = ConcurrencySettings(lanes={"wan2.7-i2v": "1"}, queue_ahead=0)


async def test_a_lane_starts_its_longest_rows_first_by_the_prior(sim, tmp_path):
    rows = [_wan(0, 2), _wan(1, 15), _wan(2, 5, "1080P"), _wan(3, 5)]
    await generate_batch(
        _manifest(tmp_path, rows), str(tmp_path / "out"), concurrency=ONE_AT_A_TIME
    )
    created = _created_order(sim.tasks())
    # 15 s 720P (180 s), 5 s 1080P (96 s), 5 s 720P (60 s), 2 s 720P (24 s).
    assert created == sorted(created, reverse=True) and len(created) == 4


async def test_manifest_order_keeps_the_first_rows_first(sim, tmp_path):
    rows = [_wan(0, 2), _wan(1, 15), _wan(2, 5)]
    await generate_batch(
        _manifest(tmp_path, rows),
        str(tmp_path / "out"),
        concurrency=ONE_AT_A_TIME,
        order="manifest",
    )
    assert _created_order(sim.tasks()) == [24.0, 180.0, 60.0]


async def test_the_learned_run_times_reorder_a_lane(sim, tmp_path):
    out = tmp_path / "out"
    # This output has seen 720P tasks run far longer than 1080P ones (a busy tier, say):
    # the prior would start the 1080P row first; what was learned starts the 720P one.
    history = {
        "version": 1,
        "samples": {"wan2.7-i2v": {"720P": [[5.0, 900.0]] * 6, "1080P": [[5.0, 50.0]] * 6}},
    }
    (out / ".kf2v").mkdir(parents=True)
    (out / ".kf2v" / "runtimes.json").write_text(json.dumps(history))
    rows = [_wan(0, 5, "1080P"), _wan(1, 5, "720P")]
    await generate_batch(_manifest(tmp_path, rows), str(out), concurrency=ONE_AT_A_TIME)
    by_created = sorted(sim.tasks(), key=lambda r: r["created"])
    assert [r["resolution"] for r in by_created] == ["720P", "1080P"]
    # And the run added what it saw to the history, beside the ledger.
    kept = json.loads((out / ".kf2v" / "runtimes.json").read_text())
    assert len(kept["samples"]["wan2.7-i2v"]["720P"]) == 7


async def test_limits_apply_sets_one_limit_per_lane_of_the_account(monkeypatch):
    import argparse

    from kf2v_tasks._cli.main import _apply_lane_limits
    from kf2v_tasks.lanes.gcl import apply_limits, show_limits

    monkeypatch.setenv("DASHSCOPE_API_KEY", TEST_API_KEY)
    args = argparse.Namespace(
        lane=[("wan2.7-i2v", "8:5")],
        concurrency=None,
        queue_ahead=1,
        credentials_block=None,
        model=["wan2.7-i2v", "wan2.7-i2v-2026-04-25", "wan2.2-kf2v-flash"],
        prefix="kf2v",
    )
    applied = await _apply_lane_limits(args, apply_limits)
    sizes = {a["name"].split("-", 2)[-1].split("-", 1)[-1]: a["limit"] for a in applied}
    # Raised wan2.7-i2v (8 + 1), its dated variant its own lane at the table's 5 + 1, kf2v 2 + 1.
    assert sizes == {"wan2.7-i2v": 9, "wan2.7-i2v-2026-04-25": 6, "wan2.2-kf2v-flash": 3}
    shown = {x["name"]: x["limit"] for x in await show_limits()}
    assert all(shown[a["name"]] == a["limit"] for a in applied)
    assert not any(TEST_API_KEY in name for name in shown)
