"""B7 account pool: one kf2v batch over two accounts on default settings.

``generate_batch(..., credentials_block=[a, b])`` gives each account its own lane per model
(kf2v: 2 running + 1 look-ahead, 2 creates/s) and sends a row to whichever account's lane
frees first. B7 runs a kf2v-only manifest (``wan2.2-kf2v-flash``, 720P, 5 s, the same fixed
run time as B6) through the real flow with **default settings** and two unsaved
``DashScopeCredentials`` blocks with different keys on one simulator, which counts each key
as its own account (per-account, per-model quota; ``SimulatorConfig.api_key`` None).

Measured makespan = first create → last task end over the whole batch, in service seconds,
from the simulator's task timeline (each task carries its account). It is compared with the
**pooled bound**: a zero-overhead list schedule of the same run times, longest first, on
both accounts' running slots together (2 + 2 = 4 machines; creates accepted at the two
accounts' rates together, a token bucket holding one second's creates). Equal tasks make it
ceil(n / 4) × run time. Ratio = bound / measured.

From the timeline too: peak running and peak in flight (created, not ended: running plus
queued) per account, rows per account, each account's first create (the later account's
``account_start_stagger_s``) and, per account, where slot time went (as B6: start-up,
hand-over gaps, tail). ``bound_given_stagger_s`` is the same list schedule with the later
account's slots free only from its first create: what a zero-overhead client would reach
had it started that account that late, so the gap between it and the measured makespan is
the scheduling's and the rest is the late start's. The side's trace times each account's
global-limit asks to the Prefect server (B6's ``opening``).

When the later account starts varies from run to run (a 503 from the Prefect server on its
first ask costs seconds), so B7 runs the batch ``REPEATS`` times, one after the other, each
against a fresh simulator, and keeps the run with the median ratio whole (every repeat in a
line: ``repeats``).
"""

from __future__ import annotations

import csv
import heapq
import math
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Optional

from bench.b6_lanes import (
    BASE_RUNTIME,
    KF2V,
    RESOLUTION,
    SPEED,
    lane_quotas,
    lane_slots,
    make_manifest,
    opening,
    sim_config,
)
from bench.common import SimProcess, log, retryable_errors, start_side, writes_before_503s

ROWS = 16
#: Batches run one after the other (the later account's start varies from run to run).
REPEATS = 3
#: Two accounts: each key is its own account at the simulator (names as reported).
ACCOUNTS = {"a": "sk-bench-b7-a-0123456789", "b": "sk-bench-b7-b-0123456789"}


def pooled_schedule(runs: list[float], free_at: list[float], rate: Optional[float] = None) -> float:
    """Makespan of a zero-overhead list schedule of ``runs`` (in order) on machines free at
    ``free_at``; with ``rate`` (creates/s, burst ``max(1, rate)``) the k-th task starts no
    earlier than its create could be accepted."""
    free = list(free_at)
    heapq.heapify(free)
    burst = max(1.0, rate) if rate else 0.0
    end = 0.0
    for k, r in enumerate(runs):
        earliest = max(0.0, (k - burst + 1) / rate) if rate else 0.0
        start = max(heapq.heappop(free), earliest)
        heapq.heappush(free, start + r)
        end = max(end, start + r)
    return end


def _peak(intervals: list[tuple[float, float]]) -> int:
    level = peak = 0
    for _, delta in sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals]):
        level += delta
        peak = max(peak, level)
    return peak


def idle_elsewhere(by_acct: dict[str, list[dict]], running: int) -> list[dict]:
    """Tasks that waited queued on one account while another had a running slot idle.

    For each queued task (created before it started), the service seconds of its wait
    during which some other account of the pool ran fewer than ``running`` tasks (after
    that account's first create: before it, its lane had not opened).
    """

    def idle_spans(ts: list[dict]) -> list[tuple[float, float]]:
        edges = sorted([(t["started"], 1) for t in ts] + [(t["ended"], -1) for t in ts])
        spans, level, since = [], 0, min(t["created"] for t in ts)
        for at, step in edges:
            if level < running and at > since:
                spans.append((since, at))
            level += step
            since = at
        spans.append((since, float("inf")) if level < running else (since, since))
        return spans

    idle = {n: idle_spans(ts) for n, ts in by_acct.items() if ts}
    out = []
    for name, ts in by_acct.items():
        for t in ts:
            if t["started"] <= t["created"]:
                continue
            lost = 0.0
            for other, spans in idle.items():
                if other == name:
                    continue
                for a, b in spans:
                    lost += max(0.0, min(b, t["started"]) - max(a, t["created"]))
            if lost > 0:
                out.append(
                    dict(
                        account=name,
                        queued_s=round((t["started"] - t["created"]) * SPEED, 3),
                        other_idle_s=round(lost * SPEED, 3),
                    )
                )
    return out


def analyse(side: dict, sim: SimProcess, rows: int, out: Path) -> dict:
    from kf2v_tasks.credentials import DashScopeCredentials
    from kf2v_tasks.lanes.account import account_label
    from kf2v_tasks.simulator.state import account_id

    tasks = sim.tasks()
    seen = sim.seen()["seen"]  # task id -> when a query first answered SUCCEEDED
    asked = time.time()
    stats = sim.stats()
    sim_origin = (asked + time.time()) / 2 - stats["elapsed"]
    by_sim_id = {account_id(key): name for name, key in ACCOUNTS.items()}
    labels = {  # our lanes' account labels (a hash of key and endpoint)
        name: account_label(DashScopeCredentials(api_key=key, base_url=sim.base_url))
        for name, key in ACCOUNTS.items()
    }
    done = [t for t in tasks if t["status"] == "SUCCEEDED"]
    t0 = min(t["created"] for t in tasks)
    t_end = max(t["ended"] for t in done)
    measured = (t_end - t0) * SPEED
    quotas = lane_quotas([KF2V])
    running, rate = quotas[KF2V]
    by_acct: dict[str, list[dict]] = defaultdict(list)
    for t in done:
        by_acct[by_sim_id.get(t["account"], t["account"])].append(t)
    runs = sorted((t["run_seconds"] for t in done), reverse=True)
    n_accts = len(ACCOUNTS)
    bound = pooled_schedule(runs, [0.0] * (running * n_accts), rate * n_accts)
    bound_no_spacing = pooled_schedule(runs, [0.0] * (running * n_accts))
    one_account = pooled_schedule(runs, [0.0] * running, rate)
    accounts = {}
    for name in ACCOUNTS:
        ts = by_acct.get(name, [])
        if not ts:
            accounts[name] = dict(tasks=0)
            continue
        first = min(t["created"] for t in ts)
        slots = lane_slots(ts, running, t0)
        # Each hand-over gap split: the task whose end freed the slot, seen ended that much
        # later by the client (detection lag), then that much more until the next create.
        order = sorted(ts, key=lambda t: (t["started"], t["created"]))
        split, used = [], set()
        for row, t in zip(slots["timeline"], order, strict=True):
            first_on_slot = row["slot"] not in used
            used.add(row["slot"])
            if row["gap_before_s"] <= 0 or first_on_slot:
                continue  # no gap, or a slot's first task (a start-up gap)
            # The account's latest task end before this create: what freed the slot.
            ends = [u for u in ts if u["ended"] <= t["created"] and u["task_id"] in seen]
            if not ends:
                continue
            prev = max(ends, key=lambda u: u["ended"])
            split.append(
                dict(
                    gap_s=row["gap_before_s"],
                    detection_lag_s=round((seen[prev["task_id"]] - prev["ended"]) * SPEED, 3),
                    seen_to_create_s=round((t["created"] - seen[prev["task_id"]]) * SPEED, 3),
                )
            )
        accounts[name] = dict(
            tasks=len(ts),
            first_create_s=round((first - t0) * SPEED, 3),
            ended_s=round((max(t["ended"] for t in ts) - t0) * SPEED, 3),
            peak_running=_peak([(t["started"], t["ended"]) for t in ts]),
            # Created and not ended: running plus queued at the service (look-ahead).
            peak_in_flight=_peak([(t["created"], t["ended"]) for t in ts]),
            run_s=round(sum(t["run_seconds"] for t in ts), 3),
            handover_split=split,
            detection_lag_s=sorted(
                round((seen[t["task_id"]] - t["ended"]) * SPEED, 2)
                for t in ts
                if t["task_id"] in seen
            ),
            **slots,
        )
    started_late = {n: v["first_create_s"] for n, v in accounts.items() if v.get("tasks")}
    stagger = max(started_late.values()) if len(started_late) == n_accts else None
    free_at = [started_late.get(n, math.inf) for n in ACCOUNTS for _ in range(running)]
    given = pooled_schedule(runs, free_at, rate * n_accts) if stagger is not None else None
    # The client's view: results.csv names the account each row ran on.
    client_rows: Counter[str] = Counter()
    try:
        with open(out / "results.csv", newline="") as f:
            for r in csv.DictReader(f):
                client_rows[r.get("account") or "?"] += 1
    except OSError:
        pass
    names = {f"kf2v-{labels[n]}-{KF2V}": n for n in ACCOUNTS}
    opened = opening(side.get("trace"), sim_origin + t0, names)
    label_names = {labels[n]: n for n in ACCOUNTS}
    return {
        "rows": rows,
        "rows_succeeded": len(done),
        "creates": stats["creates"],
        "duplicate_tasks": len(tasks) - len({t["fingerprint"] for t in tasks}),
        "throttled": stats["throttled"],
        "wall_s": round(side["wall_s"], 3),
        "startup_s": round(sim_origin + t0 - side["started_unix"], 3),
        "measured_makespan_s": round(measured, 3),
        "pooled_bound_s": round(bound, 3),
        "pooled_bound_no_spacing_s": round(bound_no_spacing, 3),
        "ratio_pooled": round(bound / measured, 4),
        "one_account_bound_s": round(one_account, 3),
        "speedup_over_one_account_bound": round(one_account / measured, 3),
        "account_start_stagger_s": round(stagger, 3) if stagger is not None else None,
        "bound_given_stagger_s": round(given, 3) if given is not None else None,
        "ratio_given_stagger": round(given / measured, 4) if given is not None else None,
        "running_quota": running,
        "creates_per_second": rate,
        "accounts": accounts,
        # results.csv's 'account' (the block's name; an unsaved block's is the label).
        "queued_while_other_idle": idle_elsewhere(by_acct, running),
        "rows_per_account_client": {
            label_names.get(k, k): v for k, v in sorted(client_rows.items())
        },
        "opening": opened.get("lanes", {}),
        "prefect_retries": opened.get("retries", []),
        "requests_during_first_asks": opened.get("requests_during_first_asks", []),
        "cpu_s": round(side["cpu_s"], 3),
        "counts": side.get("counts"),
        "state": side.get("state"),
    }


def run_once(prefect_env: dict, rows: int = ROWS, tag: str = "") -> dict:
    """One batch over both accounts, against its own simulator; analysed."""
    work = Path(tempfile.mkdtemp(prefix="kf2v-b7-"))
    manifest = make_manifest(work / "in", durations=(), kf2v_rows=rows)
    server_log = Path(prefect_env.get("PREFECT_HOME", "")) / "server.log"
    mark = server_log.stat().st_size if server_log.exists() else 0
    out = work / "out"
    with SimProcess(sim_config()) as sim:
        side = start_side(
            f"b7-pool{tag}",
            dict(
                mode="ours",
                time_scale=SPEED,
                manifest=str(manifest),
                rows=rows,
                concurrency=None,  # the flow's defaults: each model's own quota per account
                api_key=ACCOUNTS["a"],  # not used: the blocks carry the keys
                api_keys=list(ACCOUNTS.values()),
                base_url=sim.base_url,
                output=str(out),
                trace=True,  # times the lanes' global-limit asks (observation only)
            ),
            prefect_env,
        ).wait(timeout=600)
        r = analyse(side, sim, rows, out)
    r["server_retryable_errors"] = retryable_errors(server_log, mark)
    r["server_writes_before_503s"] = writes_before_503s(server_log.parent, mark)
    log(
        f"B7{tag}: makespan {r['measured_makespan_s']:.1f} s, pooled bound "
        f"{r['pooled_bound_s']:.1f} (ratio {r['ratio_pooled']:.3f}), accounts' first creates "
        f"apart {r['account_start_stagger_s']} s, rows per account "
        f"{ {n: v.get('tasks') for n, v in r['accounts'].items()} }, peak running "
        f"{ {n: v.get('peak_running') for n, v in r['accounts'].items()} }, wall {r['wall_s']:.1f} s"
    )
    return r


def summary(r: dict) -> dict:
    """One repeat in a line: its ratio, the later account's start, and what the server said."""
    later = max(
        r["accounts"].items(),
        key=lambda kv: kv[1].get("first_create_s", 1e18) if kv[1].get("tasks") else 1e18,
    )[0]
    ask = r.get("opening", {}).get(later, {})
    return dict(
        measured_makespan_s=r["measured_makespan_s"],
        ratio_pooled=r["ratio_pooled"],
        account_start_stagger_s=r["account_start_stagger_s"],
        rows_per_account={n: v.get("tasks", 0) for n, v in r["accounts"].items()},
        peak_running={n: v.get("peak_running", 0) for n, v in r["accounts"].items()},
        later_account=later,
        later_first_ask_granted_s=ask.get("first_ask_granted_s"),
        ask_503s=sum(
            1 for x in r.get("prefect_retries", []) if "increment" in (x.get("request") or "")
        ),
        server_retryable_errors=len(r.get("server_retryable_errors", [])),
        wall_s=r["wall_s"],
    )


def run(prefect_env: dict, rows: int = ROWS, repeats: int = REPEATS) -> dict:
    """``repeats`` batches over both accounts, one after the other, each against its own
    simulator; the run with the median ratio is kept whole, every repeat in a line."""
    log(
        f"B7: {rows} {KF2V} rows, {RESOLUTION}, fixed {BASE_RUNTIME:g} s, {SPEED:g}x, default "
        f"settings, credentials_block = {len(ACCOUNTS)} accounts on one simulator, "
        f"{repeats} repeat(s)"
    )
    runs = [
        run_once(prefect_env, rows, f" #{i + 1}" if repeats > 1 else "") for i in range(repeats)
    ]
    median = sorted(runs, key=lambda r: r["ratio_pooled"])[(len(runs) - 1) // 2]
    return {
        **median,
        "median_of": len(runs),
        "median_index": runs.index(median),
        "repeats": [summary(r) for r in runs],
        "speed": SPEED,
        "model": KF2V,
        "resolution": RESOLUTION,
        "base_runtime_s": BASE_RUNTIME,
        "accounts_n": len(ACCOUNTS),
    }
