"""B2 polling cost: queries per task and detection lag, read from the B1 runs.

Detection lag = the moment a ``GET /tasks/{id}`` first answered SUCCEEDED (recorded inside
the simulator process, so both clients are timed by the same clock) minus the moment the
task ended, in service seconds. Queries = ``GET /tasks/{id}`` calls for that task; list
calls (``GET /tasks``) are reported beside them.
"""

from __future__ import annotations

from bench.common import mean, pct


def summarise_side(r: dict) -> dict:
    q, lag = r["queries_per_task"], r["lag_service_s"]
    n = max(1, r["rows_succeeded"])
    return {
        "tasks": r["rows_succeeded"],
        "queries_per_task_mean": round(mean(q), 2) if q else None,
        "queries_per_task_with_lists": round((sum(q) + r.get("lists", 0)) / n, 2),
        "lag_p50_s": round(pct(lag, 0.50), 2) if lag else None,
        "lag_p95_s": round(pct(lag, 0.95), 2) if lag else None,
        "lag_max_s": round(max(lag), 2) if lag else None,
    }


def summarise(b1_runs: list[dict]) -> dict:
    out = {}
    for run in b1_runs:
        c = run["concurrency"]
        ours, peer = summarise_side(run["ours"]), summarise_side(run["peer"])
        out[f"c{c}"] = {
            "concurrency": c,
            "ours": ours,
            "peer": peer,
            "query_ratio": round(
                ours["queries_per_task_with_lists"] / peer["queries_per_task_with_lists"], 3
            ),
            "lag_p95_ratio": round(ours["lag_p95_s"] / peer["lag_p95_s"], 3)
            if ours["lag_p95_s"] and peer["lag_p95_s"]
            else None,
        }
        for name, r in run.get("variants", {}).items():
            pr = summarise_side(r)
            out[f"c{c}"].setdefault("variants", {})[name] = {
                "ours": pr,
                "query_ratio": round(
                    pr["queries_per_task_with_lists"] / peer["queries_per_task_with_lists"], 3
                ),
                "lag_p95_ratio": round(pr["lag_p95_s"] / peer["lag_p95_s"], 3)
                if pr["lag_p95_s"] and peer["lag_p95_s"]
                else None,
            }
    return out
