"""``continue_clips`` storyboards on a real (ephemeral) Prefect server and the simulator.

Each transition continues the clip before it toward the next keyframe (first_clip +
last_frame), so the simulator renders at a size a first_clip may have (not tiny).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import pytest

from kf2v_flows.storyboard import generate_storyboard
from kf2v_tasks.batch.config import ConcurrencySettings
from kf2v_tasks.batch.manifest import RowDefaults
from kf2v_tasks.simulator import RuntimeDistribution, SimulatorConfig, run_simulator

from helpers import SPEED, make_frame, pointed_at

pytestmark = pytest.mark.usefixtures("prefect_server")
FAST = ConcurrencySettings(max_in_flight=4, submits_per_second=20, queries_per_second=200)
W27 = RowDefaults(model="wan2.7-i2v", resolution="720P", duration=5)


@pytest.fixture(scope="module")
def sim():
    cfg = SimulatorConfig(
        speed=SPEED,
        runtime=RuntimeDistribution(kind="fixed", low=60),
        render="full",
        fps=2,
        seed=23,
    )
    with run_simulator(cfg) as s:
        yield s


@pytest.fixture(autouse=True)
def _env(sim, monkeypatch):
    with pointed_at(sim, monkeypatch):
        yield


def keys(folder: Path, n: int) -> list[str]:
    colours = [(200, 80, 40), (30, 200, 160), (90, 90, 220), (240, 240, 20), (120, 20, 90)]
    return [str(make_frame(folder / f"k{i}.png", (320, 240), colours[i])) for i in range(n)]


def seconds(path: Path) -> float:
    with av.open(str(path)) as container:
        return container.duration / 1e6


async def test_a_continued_storyboard_is_its_last_clip_and_a_rerun_pays_nothing(sim, tmp_path):
    frames, film = keys(tmp_path / "keys", 4), tmp_path / "out" / "day.mp4"
    before = sim.stats()["creates"]
    summary = await generate_storyboard(
        frames, str(film), prompt="on", defaults=W27, concurrency=FAST, continue_clips=True
    )
    assert sim.stats()["creates"] - before == 3
    clips = film.parent / "day.storyboard"
    # Transition i continues clip i-1: 5, 10, 15 s, each billed whole.
    assert [seconds(clips / f"transition-0{i}.mp4") for i in (1, 2, 3)] == [
        pytest.approx(s, abs=0.1) for s in (5, 10, 15)
    ]
    assert seconds(film) == pytest.approx(15.0, abs=0.1)
    assert summary.films[0].status == "made" and summary.films[0].rows == [4]
    with open(clips / "storyboard.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["first_clip"] for r in rows] == ["", "transition-01.mp4", "transition-02.mp4"]
    assert [r["first_frame"] for r in rows] == [frames[0], "", ""]
    # Each clip is billed for all of its length, the clip it continues included.
    costs = [json.loads((clips / f"transition-0{i}.json").read_text())["cost"] for i in (1, 2, 3)]
    assert costs == [pytest.approx(costs[0] * k) for k in (1, 2, 3)]

    again = await generate_storyboard(
        frames, str(film), prompt="on", defaults=W27, concurrency=FAST, continue_clips=True
    )
    assert sim.stats()["creates"] - before == 3
    assert again.films[0].status == "reused"


@pytest.mark.parametrize(
    "defaults, n, message",
    [
        (RowDefaults(), 3, "wan2.2-kf2v-flash cannot continue a clip"),
        (W27, 5, "4 transitions of 5 s end in a 20 s clip; wan2.7-i2v makes at most 15 s"),
    ],
)
async def test_a_chain_the_model_cannot_make_is_refused_before_any_create(
    sim, tmp_path, defaults, n, message
):
    before = sim.stats()["creates"]
    with pytest.raises(ValueError, match=message):
        await generate_storyboard(
            keys(tmp_path, n), str(tmp_path / "f.mp4"), defaults=defaults, continue_clips=True
        )
    assert sim.stats()["creates"] == before


def test_the_command_names_a_chain_it_cannot_make_before_anything_starts(tmp_path, capsys):
    from kf2v_tasks._cli.main import main

    frames = keys(tmp_path, 3)
    assert main(["storyboard", *frames, "--continue", "--output", str(tmp_path / "f.mp4")]) == 2
    assert capsys.readouterr().err == (
        "kf2v storyboard: error: argument --continue: wan2.2-kf2v-flash cannot continue a "
        "clip (models that can: wan2.7-i2v)\n"
    )


async def test_max_cost_holds_for_the_whole_chain_not_each_step(sim, tmp_path):
    from kf2v_tasks.errors import StoryboardFailedError

    # 720P is 0.6 (Beijing) to 0.73 (Singapore) CNY/s: 5 + 10 s fit in 15 CNY, 15 s more not,
    # though the last step alone (15 s) would.
    before = sim.stats()["creates"]
    with pytest.raises(StoryboardFailedError, match="over"):
        await generate_storyboard(
            keys(tmp_path, 4),
            str(tmp_path / "f.mp4"),
            defaults=W27,
            concurrency=FAST,
            continue_clips=True,
            max_cost=15.0,
        )
    assert sim.stats()["creates"] - before == 2
