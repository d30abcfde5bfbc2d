"""The kf2v command as a user runs it: generate, validate, run (against a simulator)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kf2v_tasks.simulator import RuntimeDistribution, SimulatorConfig, run_simulator

from conftest import TEST_API_KEY
from helpers import make_pairs, manifest_text

SPEED = 600.0
pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture(scope="module")
def env():
    from prefect.settings import PREFECT_API_URL

    cfg = SimulatorConfig(
        speed=SPEED, runtime=RuntimeDistribution(kind="fixed", low=60), render="tiny"
    )
    with run_simulator(cfg) as sim:
        yield dict(
            os.environ,
            DASHSCOPE_API_KEY=TEST_API_KEY,
            DASHSCOPE_HTTP_BASE_URL=sim.base_url,
            KF2V_TIME_SCALE=str(SPEED),
            PREFECT_API_URL=PREFECT_API_URL.value(),
        )


def kf2v(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kf2v_tasks._cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_generate_one_video(env, tmp_path):
    (a, b) = make_pairs(tmp_path, 1)[0]
    out = tmp_path / "out" / "clip.mp4"
    p = kf2v(
        "generate", "--first", str(tmp_path / a), "--last", str(tmp_path / b),
        "--prompt", "a slow pan", "--output", str(out), "--resolution", "480P", env=env,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    assert out.stat().st_size > 0
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["parameters"]["resolution"] == "480P" and side["prompt"] == "a slow pan"
    assert TEST_API_KEY not in p.stdout + p.stderr


def test_validate_reports_bad_rows_and_exits_non_zero(env, tmp_path):
    pairs = make_pairs(tmp_path, 2)
    rows = [
        {"id": "good", "first_frame": pairs[0][0], "last_frame": pairs[0][1]},
        {"id": "bad", "first_frame": pairs[1][0], "last_frame": pairs[1][1], "seed": "x"},
    ]
    (tmp_path / "m.csv").write_text(manifest_text(rows))
    p = kf2v("validate", str(tmp_path / "m.csv"), "--output", str(tmp_path / "v"), env=env)
    assert p.returncode == 1
    assert "row 3, column 'seed'" in p.stderr
    results = list(csv.DictReader((tmp_path / "v" / "results.csv").open()))
    assert [r["status"] for r in results] == ["planned", "invalid"]


def test_run_exits_zero_and_reruns_skip(env, tmp_path):
    pairs = make_pairs(tmp_path, 3)
    rows = [{"id": f"r{i}", "first_frame": a, "last_frame": b} for i, (a, b) in enumerate(pairs)]
    (tmp_path / "m.csv").write_text(manifest_text(rows))
    args = ("run", str(tmp_path / "m.csv"), "--output", str(tmp_path / "out"), "--concurrency", "2")
    first = kf2v(*args, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    # The estimate is printed before anything is spent (720P default: 0.20/s x 5 s x 3).
    assert "3 valid rows, 0 invalid; estimated cost 3.00 CNY" in first.stderr
    assert first.stderr.index("estimated cost") < first.stderr.index("3 rows: 3 succeeded")
    second = kf2v(*args, env=env)
    assert second.returncode == 0 and "3 rows: 3 skipped" in second.stderr
    assert sorted(Path(tmp_path / "out").glob("*.mp4")) == [
        tmp_path / "out" / f"r{i}.mp4" for i in range(3)
    ]
