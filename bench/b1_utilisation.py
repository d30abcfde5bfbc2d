"""B1 quota utilisation (and the data B2 reads): ours and the SDK against identical simulators.

Utilisation = Σ remote run time / (concurrency × wall time), wall time being the client's
whole batch (submit of the first row to the last video on disk). Both sides run at the
same time, each against its own simulator process with the same config and seed, so both
get the same sequence of run times.
"""

from __future__ import annotations

import contextlib
import heapq
import tempfile
import time
from pathlib import Path

from bench.common import API_KEY_OURS, API_KEY_PEER, SimProcess, log, make_inputs, start_side

SPEED = 60.0


def sim_config(concurrency: int, low: float = 60.0, high: float = 300.0, seed: int = 6) -> dict:
    return dict(
        speed=SPEED,
        max_concurrent=concurrency,
        render="tiny",
        seed=seed,
        runtime=dict(kind="uniform", low=low, high=high),
        # Raw draws, as before the simulator scaled run time by duration and resolution
        # (480P rows would run 0.6x): keeps B1 comparable with earlier measurements.
        runtime_scaling=False,
    )


def fifo_makespan(run_real: list[float], slots: int) -> float:
    """Makespan of a zero-overhead scheduler starting tasks in order on the first free slot."""
    free = [0.0] * slots
    end = 0.0
    for r in run_real:
        t = heapq.heappop(free)
        heapq.heappush(free, t + r)
        end = max(end, t + r)
    return end


def occupancy(tasks: list[dict]) -> list[tuple[float, int]]:
    """Step function (time, tasks RUNNING) from the simulator's task timeline."""
    events = []
    for t in tasks:
        if t["started"] is not None and t["ended"] is not None:
            events.append((t["started"], 1))
            events.append((t["ended"], -1))
    events.sort()
    level, steps = 0, [(0.0, 0)]
    for when, delta in events:
        level += delta
        steps.append((when, level))
    return steps


def analyse(side: dict, sim: SimProcess, concurrency: int) -> dict:
    tasks = sim.tasks()
    seen = sim.seen()
    asked = time.time()
    stats = sim.stats()
    # The simulator's clock counts real seconds from its start: map it onto wall time.
    sim_origin = (asked + time.time()) / 2 - stats["elapsed"]
    done, fingerprints = [], set()
    for t in sorted(tasks, key=lambda t: t["created"]):
        if t["status"] == "SUCCEEDED" and t["fingerprint"] not in fingerprints:
            fingerprints.add(t["fingerprint"])
            done.append(t)
    duplicates = len(tasks) - len({t["fingerprint"] for t in tasks})
    run_real = [t["run_seconds"] / SPEED for t in done]
    busy = sum(run_real)
    wall = side["wall_s"]
    first_create = min(t["created"] for t in tasks)
    last_end = max(t["ended"] for t in done)
    lags = [
        (seen["seen"][t["task_id"]] - t["ended"]) * SPEED
        for t in done
        if t["task_id"] in seen["seen"]
    ]
    queries = [seen["queries"].get(t["task_id"], 0) for t in done]
    return {
        "rows_succeeded": len(done),
        "duplicate_tasks": duplicates,
        "wall_s": round(wall, 3),
        "busy_s": round(busy, 3),
        "utilisation": round(busy / (concurrency * wall), 4),
        "utilisation_remote_window": round(busy / (concurrency * (last_end - first_create)), 4),
        # Start-up: from the flow call (or the first SDK call) to the first create.
        "startup_s": round(sim_origin + first_create - side["started_unix"], 3),
        "zero_overhead_fifo_utilisation": round(
            busy / (concurrency * fifo_makespan(run_real, concurrency)), 4
        ),
        "peak_concurrency": stats["peak_concurrency"],
        "throttled": stats["throttled"],
        "creates": stats["creates"],
        "queries": stats["queries"],
        "lists": stats["lists"],
        "policies": stats["policies"],
        "uploads": stats["uploads"],
        "cpu_s": round(side["cpu_s"], 3),
        "throttle_retries": side.get("throttle_retries"),
        "peak_rss_mb": side["sampled_peak_rss_mb"],
        # B2 raw material
        "queries_per_task": queries,
        "lag_service_s": lags,
        "occupancy": occupancy(tasks),
    }


class _Done:
    def __init__(self, result: dict) -> None:
        self.result = result

    def wait(self) -> dict:
        return self.result


def _wait_filled(sim: SimProcess, slots: int, timeout: float = 120.0) -> None:
    """Until ``sim`` has had ``slots`` creates (or ``timeout`` real seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and sim.stats()["creates"] < slots:
        time.sleep(0.1)


def run(
    rows: int,
    concurrency: int,
    prefect_env: dict,
    low=60.0,
    high=300.0,
    variants: dict[str, dict] | None = None,
    parallel: bool = True,
) -> dict:
    """Run ours, the peer and variants of ours (e.g. ``task_runs="per_row"``); analyse them.

    ``variants`` maps a label to extra flow arguments for our side (real flow parameters,
    no patching). With ``parallel`` every side runs at once against its own simulator;
    otherwise one after the other, each alone on the machine.
    """
    work = Path(tempfile.mkdtemp(prefix=f"kf2v-b1-c{concurrency}-"))
    manifest = make_inputs(work / "in", rows, f"b1c{concurrency}")
    cfg = sim_config(concurrency, low, high)
    variants = variants or {}
    log(
        f"B1: {rows} rows, concurrency {concurrency}, run time {low:g}-{high:g} s at {SPEED:g}x, "
        f"{2 + len(variants)} sides {'side by side' if parallel else 'one after the other'}"
    )
    with contextlib.ExitStack() as stack:
        sim_ours = stack.enter_context(SimProcess(cfg))
        sim_peer = stack.enter_context(SimProcess(cfg))
        variant_sims = {name: stack.enter_context(SimProcess(cfg)) for name in variants}
        common = dict(time_scale=SPEED, manifest=str(manifest), rows=rows, concurrency=concurrency)

        def settle(side, sim: SimProcess):
            # Sequential mode: each side alone on the machine (needed when CPU is the limit).
            if not parallel:
                return _Done(side.wait())
            # Side by side: the next side starts once this one has filled its slots, so
            # each start-up (imports, flow run, validation) has the machine to itself,
            # as a user's run does; the steady states then overlap on idle CPU.
            _wait_filled(sim, concurrency)
            return side

        ours = settle(
            start_side(
                "ours",
                dict(
                    common,
                    mode="ours",
                    api_key=API_KEY_OURS,
                    base_url=sim_ours.base_url,
                    output=str(work / "ours"),
                    # Each side is its own account: its own slots, not the others'.
                    global_limit=f"kf2v-bench-b1c{concurrency}-ours",
                ),
                prefect_env,
            ),
            sim_ours,
        )
        peer = settle(
            start_side(
                "peer",
                dict(
                    common,
                    mode="peer",
                    api_key=API_KEY_PEER,
                    base_url=sim_peer.base_url,
                    output=str(work / "peer"),
                    tag=f"b1c{concurrency}",
                ),
            ),
            sim_peer,
        )
        others = {
            name: settle(
                start_side(
                    name.replace(" ", "-"),
                    dict(
                        common,
                        mode="ours",
                        api_key=API_KEY_OURS,
                        base_url=variant_sims[name].base_url,
                        output=str(work / name.replace(" ", "-")),
                        global_limit=f"kf2v-bench-b1c{concurrency}-{name.replace(' ', '-')}",
                        **extra,
                    ),
                    prefect_env,
                ),
                variant_sims[name],
            )
            for name, extra in variants.items()
        }
        r_ours, r_peer = ours.wait(), peer.wait()
        r_others = {name: side.wait() for name, side in others.items()}
        result = {
            "rows": rows,
            "concurrency": concurrency,
            "speed": SPEED,
            "runtime_service_s": [low, high],
            "sides_ran": (
                "side by side, each started once the previous one had filled its slots"
                if parallel
                else "one after the other"
            ),
            "ours": analyse(r_ours, sim_ours, concurrency),
            "peer": analyse(r_peer, sim_peer, concurrency),
            "variants": {
                name: dict(analyse(r, variant_sims[name], concurrency), flow_args=variants[name])
                for name, r in r_others.items()
            },
        }

    for side, r in [
        ("ours", result["ours"]),
        ("peer", result["peer"]),
        *result["variants"].items(),
    ]:
        log(
            f"B1 c={concurrency} {side}: utilisation {r['utilisation']:.3f} "
            f"(wall {r['wall_s']:.1f} s, {r['rows_succeeded']} rows)"
        )
    return result
