"""B6 lanes: a mixed manifest (wan2.7-i2v of several durations + kf2v) on default settings.

The service's quota is per (account, model): kf2v models run 2 tasks and take 2 creates/s,
``wan2.7-i2v`` 5 and 5. The batch flow keeps one lane per model (its running slots plus a
look-ahead task queued at the service) and, by default, starts rows within a lane longest
first by predicted run time. B6 runs the real flow with **default settings** (no
concurrency override: each lane's quota comes from the models table) against a simulator
that enforces the quota per model and scales each task's run time by
``duration / 5 × resolution factor``, once with the default ``order="longest"`` and once
with ``order="manifest"`` (each alone on the machine, each against its own simulator).

Measured makespan = first create → last task end over the whole batch, in service seconds,
from the simulator's task timeline (``/_sim/tasks``). It is compared with two bounds
computed from the same tasks' run times, both zero-overhead list schedules per lane on
the lane's running slots, the create rate's token bucket included (a task of a lane starts
no earlier than its create could be accepted), the batch bound being the max over lanes:

* longest-first (LPT): each lane's tasks longest first;
* manifest-order FIFO: each lane's tasks in manifest order.

Ratio = bound / measured. The LPT schedule is a heuristic, not a lower bound (another
order can beat it, so a ratio above 1 is possible); each lane's lower bound
``max(longest task, Σ run / slots)`` is kept beside it.

The timeline also gives the peak running per model (it must reach 5 for wan2.7-i2v and
never exceed a lane's quota) and, per lane, where slot time went: the start-up gap (slot
free at the first create → its first start), hand-over gaps (a task's end → the next start
on that slot; zero when the look-ahead task was already queued) and the tail (slots idle
while the lane's last tasks run). The critical chain (the slot of the task that ends last)
splits the measured makespan exactly into run time + gaps. Because each lane opens on its
own, the lanes' first creates can be apart (``lane_start_stagger_s``); the ratio with each
lane timed from its own first create is kept too (``ratio_longest_first_in_lane``).
"""

from __future__ import annotations

import heapq
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Optional

from bench.common import (
    API_KEY_OURS,
    SimProcess,
    log,
    retryable_errors,
    start_side,
    writes_before_503s,
)

SPEED = 60.0
WAN = "wan2.7-i2v"
KF2V = "wan2.2-kf2v-flash"
#: wan2.7-i2v rows, listed shortest first (the worst manifest order for the tail).
WAN_DURATIONS = (2, 3, 4, 5, 6, 8, 10, 12, 14, 15)
KF2V_ROWS = 4
RESOLUTION = "720P"
#: Drawn run time of every task (service seconds), scaled by the simulator per row.
BASE_RUNTIME = 60.0
#: Our side with the flow's defaults, then the same flow with ``order="manifest"``.
SIDES = {"ours": {}, "ours order=manifest": {"order": "manifest"}}
API_KEYS = {"ours": API_KEY_OURS, "ours order=manifest": "sk-bench-b6-manifest-0123456789"}


def sim_config(seed: int = 6) -> dict:
    """Per-model quota from the models table and run-time scaling: the simulator's defaults."""
    return dict(
        speed=SPEED,
        render="tiny",
        seed=seed,
        runtime=dict(kind="fixed", low=BASE_RUNTIME, high=BASE_RUNTIME),
    )


def make_manifest(folder: Path, durations=WAN_DURATIONS, kf2v_rows: int = KF2V_ROWS) -> Path:
    """Two 640×480 frames (wan2.7-i2v needs ≥ 360 px) and the mixed manifest."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    for name, colour in (("first.png", (200, 80, 40)), ("last.png", (30, 160, 200))):
        img = Image.new("RGB", (640, 480), colour)
        ImageDraw.Draw(img).ellipse([160, 120, 480, 360], fill=(255 - colour[0], colour[1], 200))
        img.save(folder / name)
    lines = ["id,first_frame,last_frame,prompt,model,resolution,duration"]
    for i, d in enumerate(durations):
        lines.append(f"w{i:02d},first.png,last.png,b6 wan clip {i} of {d} s,{WAN},{RESOLUTION},{d}")
    for i in range(kf2v_rows):
        lines.append(f"k{i:02d},first.png,last.png,b6 kf2v clip {i},{KF2V},{RESOLUTION},")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def manifest_lanes(durations=WAN_DURATIONS, kf2v_rows: int = KF2V_ROWS) -> dict[str, list[float]]:
    """Each lane's expected run times (service seconds) in manifest order."""
    from kf2v_tasks.simulator.config import RESOLUTION_RUNTIME_FACTOR

    factor = RESOLUTION_RUNTIME_FACTOR[RESOLUTION]
    return {
        WAN: [BASE_RUNTIME * d / 5 * factor for d in durations],
        KF2V: [BASE_RUNTIME * factor] * kf2v_rows,
    }


def lane_quotas(models) -> dict[str, tuple[int, float]]:
    """(running, creates/s) of each model's lane under the flow's default settings."""
    from kf2v_tasks.batch.config import ConcurrencySettings

    return {
        m: (q.running, q.creates_per_second)
        for m, q in ConcurrencySettings().quotas(models).items()
    }


def list_schedule(runs: list[float], machines: int, rate: Optional[float] = None) -> float:
    """Makespan of a zero-overhead list schedule of ``runs`` (in this order) on ``machines``.

    With ``rate`` (creates/s), the k-th task cannot start before the service's token bucket
    (burst ``max(1, rate)``, as the simulator's) accepts its create: ``(k - burst + 1)/rate``.
    """
    free = [0.0] * machines
    end = 0.0
    burst = max(1.0, rate) if rate else 0.0
    for k, r in enumerate(runs):
        earliest = max(0.0, (k - burst + 1) / rate) if rate else 0.0
        start = max(heapq.heappop(free), earliest)
        heapq.heappush(free, start + r)
        end = max(end, start + r)
    return end


def _match(expected: list[float], measured: list[float]) -> list[float]:
    """``expected`` (manifest order) replaced by the closest measured run time of the lane."""
    pool = sorted(measured)
    out = []
    for e in expected:
        i = min(range(len(pool)), key=lambda j: abs(pool[j] - e))
        out.append(pool.pop(i))
    return out


def peaks(tasks: list[dict]) -> dict[str, int]:
    """Most tasks RUNNING at once per model, from the timeline (an end before a start)."""
    events: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for t in tasks:
        if t["started"] is not None:
            end = t["ended"] if t["ended"] is not None else float("inf")
            events[t["model"]] += [(t["started"], 1), (end, -1)]
    out = {}
    for model, evs in events.items():
        level = peak = 0
        for _, delta in sorted(evs):
            level += delta
            peak = max(peak, level)
        out[model] = peak
    return out


def lane_slots(tasks: list[dict], running: int, t0: float) -> dict:
    """Where a lane's slot time went (service seconds from the batch's first create ``t0``).

    Slots are free at ``t0``; each task (by start) takes the slot freed earliest. A gap is
    start - slot free: the start-up gap for a slot's first task, a hand-over gap after.
    """
    slots = [(t0, i, None) for i in range(running)]  # (free at, slot, previous task)
    heapq.heapify(slots)
    startup, handover, rows = [], [], []
    for t in sorted(tasks, key=lambda t: (t["started"], t["created"])):
        free, slot, prev = heapq.heappop(slots)
        gap = (t["started"] - free) * SPEED
        (startup if prev is None else handover).append(gap)
        row = dict(
            run_s=round(t["run_seconds"], 3),
            created_s=round((t["created"] - t0) * SPEED, 3),
            started_s=round((t["started"] - t0) * SPEED, 3),
            ended_s=round((t["ended"] - t0) * SPEED, 3),
            slot=slot,
            gap_before_s=round(gap, 3),
            queued_s=round((t["started"] - t["created"]) * SPEED, 3),
        )
        rows.append(row)
        heapq.heappush(slots, (t["ended"], slot, len(rows) - 1))
    lane_end = max(t["ended"] for t in tasks)
    tail = sum((lane_end - free) * SPEED for free, _, _ in slots)
    # The chain of the slot whose task ends last: its runs + gaps = the lane's makespan.
    last = max(range(len(rows)), key=lambda i: rows[i]["ended_s"])
    chain = [rows[i] for i in range(len(rows)) if rows[i]["slot"] == rows[last]["slot"]]
    return {
        "timeline": rows,
        "startup_gap_s": round(sum(startup), 3),
        "startup_gaps_s": [round(g, 2) for g in startup],
        "handover_gap_s": round(sum(handover), 3),
        "handover_gaps_s": [round(g, 2) for g in handover],
        "tail_idle_s": round(tail, 3),
        "critical_chain": {
            "slot": rows[last]["slot"],
            "run_s": round(sum(r["run_s"] for r in chain), 3),
            "gap_s": round(sum(r["gap_before_s"] for r in chain), 3),
            "runs_s": [r["run_s"] for r in chain],
        },
    }


def opening(trace: Optional[dict], first_create_unix: float, names: dict[str, str]) -> dict:
    """When each lane asked the Prefect server for its global-limit slots, and what got retried.

    ``trace`` is the side's (bench.side ``_trace``); ``names`` maps a lane's limit name to
    the key it is reported under (a model, or account/model). Times are real seconds from
    the batch's first create (negative: before it).
    """
    if not trace:
        return {}

    def rel(t: float) -> float:
        return round(t - first_create_unix, 3)

    lanes: dict[str, dict] = {}
    for a in sorted(trace.get("asks", []), key=lambda a: a["called"]):
        key = names.get(a["name"])
        if key is None:
            continue
        lane = lanes.setdefault(key, {"asks": []})
        lane["asks"].append(
            dict(
                called_s=rel(a["called"]), granted_s=rel(a["granted"]), want=a["want"], got=a["got"]
            )
        )
    for lane in lanes.values():
        first = lane["asks"][0]
        lane["first_ask_called_s"] = first["called_s"]
        lane["first_ask_granted_s"] = first["granted_s"]
        lane["first_ask_took_s"] = round(first["granted_s"] - first["called_s"], 3)
    http = sorted(trace.get("http", []), key=lambda h: h["sent"])
    # Every Prefect API request (each try) on the wire while the lanes' first asks were.
    window = (
        (
            min(v["first_ask_called_s"] for v in lanes.values()),
            max(v["first_ask_granted_s"] for v in lanes.values()),
        )
        if lanes
        else (0.0, 0.0)
    )
    around = [
        dict(
            request=q["request"],
            sent_s=rel(q["sent"]),
            answered_s=rel(q["answered"]),
            status=q["status"],
        )
        for q in sorted(trace.get("requests", []), key=lambda q: q["sent"])
        if rel(q["answered"]) >= window[0] and rel(q["sent"]) <= window[1]
    ]
    return {
        "lanes": lanes,
        "requests_during_first_asks": around,
        "gcl_http_calls": [
            dict(names=h["names"], sent_s=rel(h["sent"]), answered_s=rel(h["answered"]))
            for h in http
        ],
        "retries": [
            dict(at_s=rel(r["at"]), request=r.get("request"), message=r["message"])
            for r in sorted(trace.get("retries", []), key=lambda r: r["at"])
        ],
    }


def analyse(side: dict, sim: SimProcess, durations, kf2v_rows: int, order: str = "longest") -> dict:
    tasks = sim.tasks()
    asked = time.time()
    stats = sim.stats()
    sim_origin = (asked + time.time()) / 2 - stats["elapsed"]
    done = [t for t in tasks if t["status"] == "SUCCEEDED"]
    t0 = min(t["created"] for t in tasks)
    t_end = max(t["ended"] for t in done)
    measured = (t_end - t0) * SPEED
    by_model: dict[str, list[dict]] = defaultdict(list)
    for t in done:
        by_model[t["model"]].append(t)
    expected = manifest_lanes(durations, kf2v_rows)
    quotas = lane_quotas(sorted(set(expected) | set(by_model)))
    lanes, lpt, fifo, lpt_nospacing, fifo_nospacing = {}, {}, {}, {}, {}
    for model, ts in sorted(by_model.items()):
        running, rate = quotas[model]
        runs = [t["run_seconds"] for t in ts]
        in_manifest = _match(expected.get(model, runs), runs)
        longest = sorted(runs, reverse=True)
        lpt[model] = list_schedule(longest, running, rate)
        fifo[model] = list_schedule(in_manifest, running, rate)
        lpt_nospacing[model] = list_schedule(longest, running)
        fifo_nospacing[model] = list_schedule(in_manifest, running)
        slots = lane_slots(ts, running, t0)
        first = min(t["created"] for t in ts)
        # The first fill: the lane's first running + look-ahead creates. The ones that had to
        # wait PENDING are the look-ahead; the side's order wants its (running + 1)-th there.
        fill = sorted(ts, key=lambda t: t["created"])[: running + 1]
        lanes[model] = dict(
            running_quota=running,
            creates_per_second=rate,
            tasks=len(ts),
            run_s=[round(r, 3) for r in runs],
            start_order_run_s=[r["run_s"] for r in slots["timeline"]],
            create_order_run_s=[
                round(t["run_seconds"], 3) for t in sorted(ts, key=lambda t: t["created"])
            ],
            first_create_s=round((first - t0) * SPEED, 3),
            measured_s=round((max(t["ended"] for t in ts) - t0) * SPEED, 3),
            # From the lane's own first create: what the lane did once it had started.
            own_makespan_s=round((max(t["ended"] for t in ts) - first) * SPEED, 3),
            lower_bound_s=round(max(max(runs), sum(runs) / running), 3),
            first_fill_queued_run_s=[
                round(t["run_seconds"], 3) for t in fill if t["started"] > t["created"]
            ],
            first_fill_expected_queued_run_s=(longest if order == "longest" else in_manifest)[
                running : running + 1
            ],
            longest_first_bound_s=round(lpt[model], 3),
            manifest_fifo_bound_s=round(fifo[model], 3),
            **{k: v for k, v in slots.items()},
        )
    lpt_bound, fifo_bound = max(lpt.values()), max(fifo.values())
    in_lane = max(v["own_makespan_s"] for v in lanes.values())
    # The lanes' global-limit asks, timed in the client (real seconds from the first create).
    opened = opening(
        side.get("trace"),
        sim_origin + t0,
        {n: m for n in _limit_names(side) for m in by_model if n.endswith("-" + m)},
    )
    for model, o in opened.get("lanes", {}).items():
        lanes[model]["opening"] = o
    timeline_peaks = peaks(tasks)
    return {
        "rows": len(durations) + kf2v_rows,
        "rows_succeeded": len(done),
        "creates": stats["creates"],
        "duplicate_tasks": len(tasks) - len({t["fingerprint"] for t in tasks}),
        "throttled": stats["throttled"],
        "wall_s": round(side["wall_s"], 3),
        "startup_s": round(sim_origin + t0 - side["started_unix"], 3),
        "measured_makespan_s": round(measured, 3),
        "longest_first_bound_s": round(lpt_bound, 3),
        "manifest_fifo_bound_s": round(fifo_bound, 3),
        "longest_first_bound_no_spacing_s": round(max(lpt_nospacing.values()), 3),
        "manifest_fifo_bound_no_spacing_s": round(max(fifo_nospacing.values()), 3),
        "ratio_longest_first": round(lpt_bound / measured, 4),
        "ratio_manifest_fifo": round(fifo_bound / measured, 4),
        "ahead_of_fifo": measured < fifo_bound,
        # The lanes' first creates apart (the later lane waited that long to start), and the
        # ratio with each lane timed from its own first create (the stagger left out).
        "lane_start_stagger_s": round(max(v["first_create_s"] for v in lanes.values()), 3),
        "in_lane_makespan_s": round(in_lane, 3),
        "ratio_longest_first_in_lane": round(lpt_bound / in_lane, 4),
        "peak_running": timeline_peaks,
        "peak_running_sim": stats.get("peak_by_model", {}),
        "running_quota": {m: q[0] for m, q in quotas.items()},
        "lanes": lanes,
        "prefect_retries": opened.get("retries", []),
        "gcl_http_calls": opened.get("gcl_http_calls", []),
        "requests_during_first_asks": opened.get("requests_during_first_asks", []),
        "cpu_s": round(side["cpu_s"], 3),
        "counts": side.get("counts"),
        "state": side.get("state"),
    }


def _limit_names(side: dict) -> set[str]:
    return {a["name"] for a in (side.get("trace") or {}).get("asks", [])}


def run(prefect_env: dict, durations=WAN_DURATIONS, kf2v_rows: int = KF2V_ROWS) -> dict:
    """Both sides, one after the other, each against its own simulator; analysed."""
    work = Path(tempfile.mkdtemp(prefix="kf2v-b6-"))
    manifest = make_manifest(work / "in", durations, kf2v_rows)
    rows = len(durations) + kf2v_rows
    log(
        f"B6: {len(durations)} {WAN} rows ({', '.join(map(str, durations))} s) + {kf2v_rows} "
        f"{KF2V} rows, {RESOLUTION}, fixed {BASE_RUNTIME:g} s scaled, {SPEED:g}x, default settings"
    )
    result: dict = {
        "rows": rows,
        "speed": SPEED,
        "wan_durations": list(durations),
        "kf2v_rows": kf2v_rows,
        "resolution": RESOLUTION,
        "base_runtime_s": BASE_RUNTIME,
        "sides": {},
    }
    server_log = Path(prefect_env.get("PREFECT_HOME", "")) / "server.log"
    for name, extra in SIDES.items():
        slug = name.replace(" ", "-").replace("=", "-")
        mark = server_log.stat().st_size if server_log.exists() else 0
        with SimProcess(sim_config()) as sim:
            side = start_side(
                f"b6-{slug}",
                dict(
                    mode="ours",
                    time_scale=SPEED,
                    manifest=str(manifest),
                    rows=rows,
                    concurrency=None,  # the flow's defaults: each model's own quota
                    api_key=API_KEYS[name],
                    base_url=sim.base_url,
                    output=str(work / slug),
                    trace=True,  # times the lanes' global-limit asks (observation only)
                    **extra,
                ),
                prefect_env,
            ).wait(timeout=600)
            r = analyse(side, sim, durations, kf2v_rows, extra.get("order", "longest"))
        # What the Prefect server answered 503 during this side (its exception, last line).
        r["server_retryable_errors"] = retryable_errors(server_log, mark)
        r["server_writes_before_503s"] = writes_before_503s(server_log.parent, mark)
        r["flow_args"] = extra
        result["sides"][name] = r
        log(
            f"B6 {name}: makespan {r['measured_makespan_s']:.1f} s, longest-first bound "
            f"{r['longest_first_bound_s']:.1f} (ratio {r['ratio_longest_first']:.3f}), FIFO bound "
            f"{r['manifest_fifo_bound_s']:.1f} (ratio {r['ratio_manifest_fifo']:.3f}), peaks "
            f"{r['peak_running']}, wall {r['wall_s']:.1f} s"
        )
    return result
