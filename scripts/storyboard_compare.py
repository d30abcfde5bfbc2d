"""Stitched vs continued storyboard on examples/storyboard/day-*.jpg, on the simulator.

Usage: python scripts/storyboard_compare.py OUT_DIR (the README's table). The key is a
made-up one for the local simulator; run times are the simulator's model.
"""

import asyncio
import glob
import json
import os
import sys
import time

import av

os.environ["DASHSCOPE_API_KEY"] = "sk-local-simulator-only"
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
from kf2v_tasks import clock
from kf2v_tasks.batch.config import ConcurrencySettings
from kf2v_tasks.batch.manifest import RowDefaults
from kf2v_tasks.simulator import SimulatorConfig, run_simulator

SPEED = 60.0
keys = sorted(
    glob.glob(os.path.join(os.path.dirname(__file__), "..", "examples", "storyboard", "day-*.jpg"))
)
out = sys.argv[1]


def sidecars(folder):
    """(cost, billed seconds) of the clips' sidecars."""
    docs = []
    for path in sorted(glob.glob(f"{folder}/transition-*.json")):
        with open(path) as f:
            docs.append(json.load(f))
    return sum(d["cost"] for d in docs), sum(d["duration_seconds"] for d in docs)


def seconds(p):
    with av.open(p) as c:
        return c.duration / 1e6


async def main(sim):
    from kf2v_flows.storyboard import generate_storyboard

    d = RowDefaults(model="wan2.7-i2v", resolution="720P", duration=5)
    for mode in ("stitch", "continue"):
        before = sim.stats()["creates"]
        seen = len(sim.tasks())
        t0 = time.monotonic()
        s = await generate_storyboard(
            keys,
            f"{out}/{mode}/day.mp4",
            prompt="the day goes by",
            defaults=d,
            continue_clips=(mode == "continue"),
            concurrency=ConcurrencySettings(max_in_flight=5),
        )
        wall = time.monotonic() - t0
        cost, billed = sidecars(f"{out}/{mode}/day.storyboard")
        ts = sim.tasks()[seen:]
        runs = [round(t["run_seconds"]) for t in ts]
        print(
            json.dumps(
                {
                    "mode": mode,
                    "wall_s": round(wall, 1),
                    "task_run_s": runs,
                    "creates": sim.stats()["creates"] - before,
                    "billed_s": billed,
                    "cost_cny": round(cost, 2),
                    "film_s": round(seconds(f"{out}/{mode}/day.mp4"), 2),
                    "film": s.films[0].status,
                }
            ),
            flush=True,
        )


cfg = SimulatorConfig(speed=SPEED, fps=30, seed=5)
with run_simulator(cfg) as sim:
    os.environ["DASHSCOPE_HTTP_BASE_URL"] = sim.base_url
    clock.set_time_scale(SPEED)
    asyncio.run(main(sim))
