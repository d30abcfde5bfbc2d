"""Two processes running one user pipeline over the same pairs share the lanes and pay once.

The README's own pipeline (validate.map → submit.map → poll.map → persist.map), with no
ledger named, in two processes at the same moment: the default ledger (under the shared
PREFECT_HOME) makes the second re-attach to the first's tasks, and the kf2v lane (lock
files, no Prefect server) keeps at most 2 running + 1 queued at the service.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kf2v_tasks.lanes.names import DEFAULT_QUEUE_AHEAD
from kf2v_tasks.simulator import RuntimeDistribution, SimulatorConfig, run_simulator

from conftest import TEST_API_KEY
from helpers import make_pairs

pytestmark = pytest.mark.slow

SPEED = 600.0

PIPELINE = textwrap.dedent(
    """
    import sys
    from prefect import flow
    from kf2v_tasks import persist_video, poll_until_done, submit_kf2v, validate_frames

    folder, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    firsts = [f"{folder}/frames/f{i:03d}_a.png" for i in range(n)]
    lasts = [f"{folder}/frames/f{i:03d}_b.png" for i in range(n)]

    @flow
    def pipeline():
        pairs = validate_frames.map(firsts, lasts)
        subs = submit_kf2v.map(pairs, "a slow pan")
        states = poll_until_done.map(subs)
        dests = [f"{out}/clip-{i}.mp4" for i in range(n)]
        return persist_video.map(states, dests, submission=subs).result()

    videos = pipeline()
    print("reused", sum(1 for v in videos if v.task_id), flush=True)
    """
)


def at_service_peak(rows: list[dict]) -> int:
    edges = []
    for r in rows:
        edges += [(r["created"], 1), (r["ended"] if r["ended"] is not None else 1e18, -1)]
    level = peak = 0
    for _, step in sorted(edges):
        level += step
        peak = max(peak, level)
    return peak


def test_two_processes_one_pipeline_one_create_per_work(tmp_path: Path):
    folder = tmp_path / "in"
    make_pairs(folder, 4)
    script = tmp_path / "pipeline.py"
    script.write_text(PIPELINE)
    home = tmp_path / "prefect-home"  # shared: the lanes' lock files and the default ledger
    cfg = SimulatorConfig(
        speed=SPEED, render="tiny", runtime=RuntimeDistribution(kind="fixed", low=600)
    )
    with run_simulator(cfg) as sim:
        env = {
            **os.environ,
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": "",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DASHSCOPE_API_KEY": TEST_API_KEY,
            "DASHSCOPE_HTTP_BASE_URL": sim.base_url,
            "KF2V_TIME_SCALE": str(SPEED),
        }
        env.pop("PREFECT_INTEGRATIONS_KF2V_LEDGER", None)  # the default one, under PREFECT_HOME
        procs = [
            subprocess.Popen(
                [sys.executable, str(script), str(folder), str(tmp_path / f"out{i}"), "4"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for i in range(2)
        ]
        outputs = [p.communicate(timeout=240)[0] for p in procs]
        for p, text in zip(procs, outputs, strict=True):
            assert p.returncode == 0, text[-3000:]
        stats, rows = sim.stats(), sim.tasks()
    # One create per piece of work, whichever process made it; both kept all four videos.
    assert stats["creates"] == 4, stats
    assert sorted(stats["creates_by_fingerprint"].values()) == [1, 1, 1, 1]
    for i in range(2):
        assert len(list((tmp_path / f"out{i}").glob("clip-*.mp4"))) == 4
    # The kf2v lane: 2 running (the service's own bound) and never more than 2 + look-ahead
    # at the service, counting both processes.
    assert stats["peak_concurrency"] <= 2
    assert at_service_peak(rows) <= 2 + DEFAULT_QUEUE_AHEAD, rows
    assert (home / "kf2v" / "ledger" / ".kf2v").is_dir()
