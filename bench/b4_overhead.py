"""B4 orchestration overhead: many near-instant tasks through ours vs. a bare asyncio+httpx loop.

Each side runs alone (no other benchmark) in its own process against its own simulator
process, so the client's CPU time is its own. The Prefect API server's CPU during our run
is measured too (it only works because of us).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from bench.common import API_KEY_FLOOR, API_KEY_OURS, SimProcess, log, make_inputs, start_side

SPEED = 600.0


def sim_config(concurrency: int) -> dict:
    # Rate limits lifted: B4 measures our overhead, not the account's quota.
    return dict(
        speed=SPEED,
        max_concurrent=concurrency,
        render="tiny",
        seed=4,
        video_bytes=65536,
        submits_per_second=10000,
        queries_per_second=10000,
        runtime=dict(kind="fixed", low=0.0, high=0.0),
        runtime_scaling=False,  # raw draws, comparable with earlier measurements
    )


def _side_result(side: dict, rows: int, extra_cpu: float = 0.0) -> dict:
    cpu = side["cpu_s"] + extra_cpu
    return {
        "wall_s": round(side["wall_s"], 3),
        "rows_per_s": round(rows / side["wall_s"], 1),
        "cpu_s": round(side["cpu_s"], 3),
        "server_cpu_s": round(extra_cpu, 3),
        "cpu_ms_per_row": round(1000 * side["cpu_s"] / rows, 3),
        "cpu_ms_per_row_incl_server": round(1000 * cpu / rows, 3),
        "peak_rss_mb": side["sampled_peak_rss_mb"],
        "counts": side.get("counts"),
    }


def _setup(rows: int, concurrency: int):
    work = Path(tempfile.mkdtemp(prefix="kf2v-b4-"))
    manifest = make_inputs(work / "in", rows, "b4")
    common = dict(
        time_scale=SPEED,
        manifest=str(manifest),
        rows=rows,
        concurrency=concurrency,
        submits_per_second=10000.0,
        queries_per_second=10000.0,
    )
    return work, common


def run_floor(rows: int, concurrency: int) -> dict:
    """The bare asyncio + httpx loop (no Prefect involved)."""
    work, common = _setup(rows, concurrency)
    try:
        with SimProcess(sim_config(concurrency)) as sim:
            log(f"B4 floor: {rows} rows, concurrency {concurrency}")
            side = start_side(
                "floor",
                dict(
                    common,
                    mode="floor",
                    api_key=API_KEY_FLOOR,
                    base_url=sim.base_url,
                    output=str(work / "floor"),
                ),
            ).wait(timeout=1200)
            out = _side_result(side, rows)
            out["http_calls"] = _calls(sim.stats())
            out["simulator_cpu_s"] = round(_cpu_of(sim.proc.pid), 3)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"B4 floor: {out['rows_per_s']} rows/s, {out['cpu_ms_per_row']} ms CPU/row")
    return out


def run_ours(
    rows: int,
    concurrency: int,
    prefect,
    flow_args: dict | None = None,
    label: str = "ours",
    profile: str | None = None,
) -> dict:
    """Our batch flow (``flow_args``: extra flow parameters); the Prefect server's CPU included."""
    work, common = _setup(rows, concurrency)
    try:
        with SimProcess(sim_config(concurrency)) as sim:
            log(f"B4 {label}: {rows} rows, concurrency {concurrency}")
            prefect.wait_idle()
            server_cpu0 = prefect.cpu_seconds()
            side = start_side(
                label,
                dict(
                    common,
                    mode="ours",
                    api_key=API_KEY_OURS,
                    base_url=sim.base_url,
                    output=str(work / "ours"),
                    profile=profile,
                    **(flow_args or {}),
                ),
                prefect.env(),
            ).wait(timeout=1800)
            # The server keeps working through the run's events after the client is done.
            prefect.wait_idle()
            out = _side_result(side, rows, prefect.cpu_seconds() - server_cpu0)
            out["http_calls"] = _calls(sim.stats())
            out["simulator_cpu_s"] = round(_cpu_of(sim.proc.pid), 3)
            out["flow_args"] = flow_args or {}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(
        f"B4 {label}: {out['rows_per_s']} rows/s, {out['cpu_ms_per_row']} ms CPU/row "
        f"(+server {out['cpu_ms_per_row_incl_server']})"
    )
    return out


def combine(rows: int, concurrency: int, ours: dict, floor: dict) -> dict:
    res = {"rows": rows, "concurrency": concurrency, "ours": ours, "floor": floor}
    res.update(compare(res, {"ours": ours}))
    del res["ours"]
    res["ours"] = ours
    return res


def _calls(stats: dict) -> dict:
    return {k: stats[k] for k in ("creates", "queries", "lists", "downloads", "throttled")}


def _cpu_of(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def compare(base: dict, proto: dict) -> dict:
    """Put a variant's ``ours`` next to the floor of the main B4 run."""
    f = base["floor"]
    o = proto["ours"]
    return {
        "ours": o,
        "cpu_ratio": round(o["cpu_ms_per_row"] / f["cpu_ms_per_row"], 2),
        "cpu_ratio_incl_server": round(o["cpu_ms_per_row_incl_server"] / f["cpu_ms_per_row"], 2),
    }
