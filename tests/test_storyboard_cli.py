"""``kf2v storyboard`` as a user runs it: bad arguments named in one line, a film made."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kf2v_tasks._cli.main import main
from kf2v_tasks.simulator import RuntimeDistribution, SimulatorConfig, run_simulator

from conftest import TEST_API_KEY
from helpers import make_frame

SPEED = 600.0
KF2V = str(Path(sys.executable).parent / "kf2v")


def keys(folder: Path, n: int) -> list[str]:
    colours = [(200, 80, 40), (30, 200, 160), (90, 90, 220), (240, 240, 20)]
    return [str(make_frame(folder / f"k{i}.png", (320, 240), colours[i])) for i in range(n)]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--output", "f.mp4"], "argument FRAME: a storyboard needs at least 2 keyframes, got 1"),
        (
            ["{1}", "{2}", "--prompt-each", "a", "--output", "f.mp4"],
            "argument --prompt-each: expected 2 prompts (one per transition between 3 "
            "keyframes), got 1",
        ),
        (["{1}", "missing.png", "--output", "f.mp4"], "argument FRAME: keyframe 3 "),
        (["{1}", "--output", "film.mov"], "argument --output: the film must end in .mp4"),
    ],
)
def test_bad_arguments_are_named_before_anything_starts(tmp_path, capsys, extra, message):
    frames = keys(tmp_path, 3)
    argv = ["storyboard", frames[0], *(a.format(*frames) for a in extra)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("kf2v storyboard: error: ") and message in err, err
    if "missing.png" in extra:
        assert "'missing.png': no such file" in err
    assert len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def sim():
    cfg = SimulatorConfig(
        speed=SPEED, runtime=RuntimeDistribution(kind="fixed", low=60), render="tiny"
    )
    with run_simulator(cfg) as s:
        yield s


@pytest.mark.usefixtures("prefect_server")
def test_a_storyboard_from_the_command_line(sim, tmp_path):
    from prefect.settings import PREFECT_API_URL

    (tmp_path / "home").mkdir()
    env = dict(
        os.environ,
        HOME=str(tmp_path / "home"),
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_API_URL=PREFECT_API_URL.value(),
        DASHSCOPE_API_KEY=TEST_API_KEY,
        DASHSCOPE_HTTP_BASE_URL=sim.base_url,
        KF2V_TIME_SCALE=str(SPEED),
    )
    frames = keys(tmp_path / "in", 3)
    film = tmp_path / "out" / "film.mp4"
    argv = [KF2V, "storyboard", *frames, "--prompt-each", "dawn, slowly", "dusk"]
    argv += ["--output", str(film), "--resolution", "480P"]
    before = sim.stats()["creates"]
    first = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert sim.stats()["creates"] - before == 2
    assert f"film: {film}: 9 frames from 2 clips, re-encoded: clip 2" in first.stderr
    rows = list(csv.DictReader((tmp_path / "out" / "film.storyboard" / "storyboard.csv").open()))
    assert [r["prompt"] for r in rows] == ["dawn, slowly", "dusk"]
    assert film.stat().st_size > 0
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "2 rows: 2 skipped" in again.stderr and "(intact from an earlier run)" in again.stderr
    assert sim.stats()["creates"] - before == 2
    assert TEST_API_KEY not in first.stdout + first.stderr + again.stdout + again.stderr
    assert "Traceback" not in first.stderr + again.stderr
