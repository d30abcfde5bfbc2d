"""The kf2v command as a user runs it, end to end: generate and run (against a simulator),
the built-in simulator when no key is set, and a failing flow reported in one line."""

from __future__ import annotations

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
KF2V = str(Path(sys.executable).parent / "kf2v")
pytestmark = pytest.mark.usefixtures("prefect_server")


def user_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A user's shell with a fresh HOME, talking to the session's Prefect test server."""
    from prefect.settings import PREFECT_API_URL

    (tmp_path / "home").mkdir(exist_ok=True)
    env = dict(
        os.environ,
        HOME=str(tmp_path / "home"),
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_API_URL=PREFECT_API_URL.value(),
    )
    for name in ("DASHSCOPE_API_KEY", "DASHSCOPE_HTTP_BASE_URL", "KF2V_TIME_SCALE"):
        env.pop(name, None)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def sim():
    cfg = SimulatorConfig(
        speed=SPEED, runtime=RuntimeDistribution(kind="fixed", low=60), render="tiny"
    )
    with run_simulator(cfg) as s:
        yield s


@pytest.fixture
def env(sim, tmp_path):
    """A user who set a key and points at a simulator (as `kf2v simulator` tells them to)."""
    return user_env(
        tmp_path,
        DASHSCOPE_API_KEY=TEST_API_KEY,
        DASHSCOPE_HTTP_BASE_URL=sim.base_url,
        KF2V_TIME_SCALE=str(SPEED),
    )


def kf2v(*args: str, env: dict, module: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "kf2v_tasks._cli.main"] if module else [KF2V]
    return subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=300)


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
    assert "Traceback" not in p.stderr


def test_run_exits_zero_and_reruns_skip(env, tmp_path):
    pairs = make_pairs(tmp_path, 3)
    rows = [{"id": f"r{i}", "first_frame": a, "last_frame": b} for i, (a, b) in enumerate(pairs)]
    (tmp_path / "m.csv").write_text(manifest_text(rows))
    args = ("run", str(tmp_path / "m.csv"), "--output", str(tmp_path / "out"), "--concurrency", "2")
    first = kf2v(*args, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    # The estimate is printed before anything is spent (720P default: 1.00 per video).
    assert "3 valid rows, 0 invalid; estimated cost 3.00 CNY" in first.stderr
    assert first.stderr.index("estimated cost") < first.stderr.index("3 rows: 3 succeeded")
    assert "INFO" not in first.stderr  # Prefect's run logs stay off the terminal
    second = kf2v(*args, env=env, module=True)  # `python -m kf2v_tasks._cli.main` too
    assert second.returncode == 0 and "3 rows: 3 skipped" in second.stderr
    assert sorted(Path(tmp_path / "out").glob("*.mp4")) == [
        tmp_path / "out" / f"r{i}.mp4" for i in range(3)
    ]


def test_run_with_failed_rows_exits_one_with_the_reasons(env, tmp_path):
    pairs = make_pairs(tmp_path, 1)
    rows = [
        {"id": "ok", "first_frame": pairs[0][0], "last_frame": pairs[0][1]},
        {"id": "gone", "first_frame": "frames/none.png", "last_frame": pairs[0][1]},
    ]
    (tmp_path / "m.csv").write_text(manifest_text(rows))
    p = kf2v("run", str(tmp_path / "m.csv"), "--output", str(tmp_path / "out"), env=env)
    assert p.returncode == 1, p.stderr[-2000:]
    assert "invalid row 3, column 'first_frame': first frame" in p.stderr
    assert "2 rows: 1 invalid, 1 succeeded" in p.stderr
    assert "Traceback" not in p.stderr


def test_no_key_runs_on_the_built_in_simulator(tmp_path):
    """No DASHSCOPE_API_KEY: one line says so, the flow gets the simulator's credentials
    as a block instance (nothing is exported), and the videos are made."""
    pairs = make_pairs(tmp_path, 2)
    rows = [{"id": f"s{i}", "first_frame": a, "last_frame": b} for i, (a, b) in enumerate(pairs)]
    (tmp_path / "m.csv").write_text(manifest_text(rows))
    p = kf2v(
        "run", str(tmp_path / "m.csv"), "--output", str(tmp_path / "out"),
        "--simulator-speed", "3000", env=user_env(tmp_path),
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    notices = [line for line in p.stderr.splitlines() if "built-in DashScope simulator" in line]
    assert len(notices) == 1 and "3000x speed, nothing is billed" in notices[0]
    assert "2 rows: 2 succeeded" in p.stderr
    assert "sk-simulator" not in p.stdout + p.stderr


def test_a_credentials_block_that_cannot_be_loaded_is_one_line_and_exit_2(env, tmp_path):
    (a, b) = make_pairs(tmp_path, 1)[0]
    (tmp_path / "m.csv").write_text(manifest_text([{"first_frame": a, "last_frame": b}]))
    p = kf2v(
        "run", str(tmp_path / "m.csv"), "--output", str(tmp_path / "out"),
        "--credentials-block", "kf2v-no-such-block", env=env,
    )  # fmt: skip
    # A block that cannot be loaded is a usage error, said before anything starts.
    assert p.returncode == 2
    errors = [line for line in p.stderr.splitlines() if line.startswith("kf2v run: error: ")]
    assert len(errors) == 1 and "kf2v-no-such-block" in errors[0], p.stderr[-2000:]
    assert "cannot be loaded" in errors[0]
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "out" / "results.csv").exists()


@pytest.mark.parametrize(
    ("flag", "first"),
    [((), "1080P"), (("--order", "manifest"), "480P")],
    ids=["longest", "manifest"],
)
def test_run_order_flag_reaches_the_flow(tmp_path, flag, first):
    """Rows of one lane start longest first (1080P predicted longest), or in manifest order."""
    pairs = make_pairs(tmp_path, 3)
    rows = [
        {"id": f"r{i}", "first_frame": a, "last_frame": b, "resolution": res}
        for i, ((a, b), res) in enumerate(zip(pairs, ["480P", "720P", "1080P"], strict=True))
    ]
    (tmp_path / "m.csv").write_text(manifest_text(rows))
    cfg = SimulatorConfig(speed=SPEED, runtime=RuntimeDistribution(kind="fixed", low=60))
    with run_simulator(cfg) as own:
        env = user_env(
            tmp_path,
            DASHSCOPE_API_KEY=TEST_API_KEY,
            DASHSCOPE_HTTP_BASE_URL=own.base_url,
            KF2V_TIME_SCALE=str(SPEED),
        )
        p = kf2v(
            "run", str(tmp_path / "m.csv"), "--output", str(tmp_path / "out"),
            "--concurrency", "1", *flag, env=env,
        )  # fmt: skip
        assert p.returncode == 0, p.stderr[-2000:]
        created = [t["resolution"] for t in own.tasks()]
    assert created[0] == first and sorted(created) == ["1080P", "480P", "720P"]
