"""BENCHMARKS.md and the B1 occupancy plot from a results dict (bench/results/latest.json)."""

from __future__ import annotations

from pathlib import Path


def _f(x, nd=2, unit=""):
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{nd}f}{unit}"
    return f"{x}{unit}"


def _ok(flag) -> str:
    return "n/a" if flag is None else ("**met**" if flag else "**missed**")


def _sides(run: dict) -> list[tuple[str, dict]]:
    """(label, data) of our default side then every variant, e.g. ``ours per_row``."""
    return [("ours", run["ours"]), *run.get("variants", {}).items()]


def _ask(o) -> str:
    """A lane's first global-limit ask: sent → granted, real s from the first create."""
    return f"{o['first_ask_called_s']:+.2f} → {o['first_ask_granted_s']:+.2f}" if o else "–"


def fifo_ratio(side: dict) -> float:
    """Utilisation as a share of the zero-overhead FIFO bound of the same run times and order."""
    bound = side.get("zero_overhead_fifo_utilisation") or 0.0
    return round(side["utilisation"] / bound, 4) if bound else 0.0


def targets(res: dict) -> list[dict]:
    """Every target of issue 6, evaluated on the numbers of this run, for ours and variants."""
    out = []
    b1 = {r["concurrency"]: r for r in res.get("b1", [])}
    # Issue 13: against the FIFO bound of the same run times and order.
    for c, goal in ((2, 0.99), (32, 0.97)):
        r = b1.get(c)
        if not r:
            continue
        peer = fifo_ratio(r["peer"])
        for label, x in _sides(r):
            ratio = fifo_ratio(x)
            out.append(
                dict(
                    name=f"B1 c={c}: ≥ {goal} of the FIFO bound ({label})",
                    value=ratio,
                    met=ratio >= goal,
                )
            )
            out.append(
                dict(
                    name=f"B1 c={c}: FIFO-bound ratio not below the SDK's ({peer:.3f}) ({label})",
                    value=ratio,
                    met=ratio >= peer,
                )
            )
    for c, goal in ((2, 0.95), (32, 0.90)):
        r = b1.get(c)
        if not r:
            continue
        p = r["peer"]["utilisation"]
        for label, x in _sides(r):
            u = x["utilisation"]
            out.append(
                dict(name=f"B1 utilisation c={c} ≥ {goal} ({label})", value=u, met=u >= goal)
            )
            out.append(
                dict(
                    name=f"B1 utilisation c={c} not below the peer ({p:.3f}) ({label})",
                    value=u,
                    met=u >= p,
                )
            )
    for key, r in res.get("b2", {}).items():
        for label, x in [("ours", r), *r.get("variants", {}).items()]:
            out.append(
                dict(
                    name=f"B2 {key}: queries/task ≤ 0.5× peer ({label})",
                    value=x["query_ratio"],
                    met=x["query_ratio"] <= 0.5,
                )
            )
            if x["lag_p95_ratio"] is not None:
                out.append(
                    dict(
                        name=f"B2 {key}: p95 lag ≤ peer ({label})",
                        value=x["lag_p95_ratio"],
                        met=x["ours"]["lag_p95_s"] <= r["peer"]["lag_p95_s"],
                    )
                )
    b3 = res.get("b3")
    if b3:
        for dest in ("local", "s3"):
            d = b3[dest]
            out.append(
                dict(
                    name=f"B3 {dest}: throughput ≥ 0.8× raw",
                    value=d["ratio_to_raw"],
                    met=d["ratio_to_raw"] >= 0.8,
                )
            )
            out.append(
                dict(
                    name=f"B3 {dest}: RSS increase ≤ 64 MB",
                    value=d["rss_increase_mb"],
                    met=d["rss_increase_mb"] <= 64,
                )
            )
    b4 = res.get("b4")
    if b4:
        for label, x in [("ours", b4), *b4.get("variants", {}).items()]:
            out.append(
                dict(
                    name=f"B4 CPU/row ≤ 3× floor, client process ({label})",
                    value=x["cpu_ratio"],
                    met=x["cpu_ratio"] <= 3,
                )
            )
            out.append(
                dict(
                    name=f"B4 CPU/row ≤ 3× floor, client + Prefect server ({label})",
                    value=x["cpu_ratio_incl_server"],
                    met=x["cpu_ratio_incl_server"] <= 3,
                )
            )
            out.append(
                dict(
                    name=f"B4 peak RSS ≤ 600 MB ({label})",
                    value=x["ours"]["peak_rss_mb"],
                    met=x["ours"]["peak_rss_mb"] <= 600,
                )
            )
    b5 = res.get("b5")
    if b5:
        floor = (res.get("b4") or {}).get("floor", {}).get("cpu_ms_per_row")
        if floor:
            ratio = round(b5["cpu_ms_per_row"] / floor, 2)
            out.append(
                dict(name="B5 client CPU/row ≤ 3× the B4 floor (ours)", value=ratio, met=ratio <= 3)
            )
        out.append(
            dict(
                name="B5 peak RSS ≤ 600 MB (ours)",
                value=b5["peak_rss_mb"],
                met=b5["peak_rss_mb"] <= 600,
            )
        )
        out.append(
            dict(
                name="B5 S3 requests/row ≤ 10 (ours)",
                value=b5["s3_requests_per_row"],
                met=b5["s3_requests_per_row"] <= 10,
            )
        )
    b6 = res.get("b6")
    if b6:
        for label, x in b6["sides"].items():
            if label == "ours":  # the flow's defaults: longest first within each lane
                out.append(
                    dict(
                        name="B6: ≥ 0.95 of the per-lane longest-first bound (ours)",
                        value=x["ratio_longest_first"],
                        met=x["ratio_longest_first"] >= 0.95,
                    )
                )
                out.append(
                    dict(
                        name="B6: makespan below the manifest-order FIFO bound (ours)",
                        value=x["ratio_manifest_fifo"],
                        met=x["ahead_of_fifo"],
                    )
                )
            quota = x["running_quota"]
            peak = x["peak_running"]
            wan = "wan2.7-i2v"
            out.append(
                dict(
                    name=f"B6: {wan} reaches {quota.get(wan)} running ({label})",
                    value=peak.get(wan),
                    met=peak.get(wan) == quota.get(wan),
                )
            )
            out.append(
                dict(
                    name=f"B6: no lane above its quota ({label})",
                    value=max(peak.values()),
                    met=all(n <= quota.get(m, 0) for m, n in peak.items()),
                )
            )
    b7 = res.get("b7")
    if b7:
        out.append(
            dict(
                name="B7: ≥ 0.9 of the pooled bound (two accounts' slots together"
                + (
                    f"; median of {b7['median_of']} repeats)" if b7.get("median_of", 1) > 1 else ")"
                ),
                value=b7["ratio_pooled"],
                met=b7["ratio_pooled"] >= 0.9,
            )
        )
        q = b7["running_quota"]
        reps = b7.get("repeats") or [
            {"peak_running": {n: v.get("peak_running", 0) for n, v in b7["accounts"].items()}}
        ]
        for name, v in b7["accounts"].items():
            top = max(x["peak_running"].get(name, 0) for x in reps)
            out.append(
                dict(
                    name=f"B7: account {name} reaches {q} running (median repeat)",
                    value=v.get("peak_running", 0),
                    met=v.get("peak_running", 0) == q,
                )
            )
            out.append(
                dict(
                    name=f"B7: account {name} never above {q} running (every repeat)",
                    value=top,
                    met=top <= q,
                )
            )
    b8 = res.get("b8")
    for key, name, goal in (
        ("first_create_s", "first create after `kf2v run`", 3.0),
        ("rerun_s", "a re-run with every row kept", 2.0),
        ("validate_s", "`kf2v validate`", 1.5),
    ):
        if b8:  # issue 25: median of the rounds, a new PREFECT_HOME each
            v = b8[key]["median"]
            out.append(dict(name=f"B8: {name} ≤ {goal:g} s (median)", value=v, met=v <= goal))
    b9 = res.get("b9")
    if b9:  # issue 25: Ctrl-C mid-run exits within 5 s with 130
        ok = b9["median"] <= 5.0 and set(b9["codes"]) == {130}
        out.append(dict(name="B9: Ctrl-C → exit 130 ≤ 5 s (median)", value=b9["median"], met=ok))
    return out


def plot_occupancy(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = res.get("b1", [])
    fig, axes = plt.subplots(len(runs), 1, figsize=(10, 3.2 * max(1, len(runs))), squeeze=False)
    for ax, run in zip(axes[:, 0], runs, strict=False):
        c = run["concurrency"]
        sides = [("ours", "tab:blue", run["ours"]), ("peer", "tab:orange", run["peer"])]
        colours = ["tab:green", "tab:purple", "tab:red", "tab:brown"]
        sides += [
            (n, colours[i % 4], x) for i, (n, x) in enumerate(run.get("variants", {}).items())
        ]
        for side, colour, data in sides:
            steps = data["occupancy"]
            t0 = steps[1][0] if len(steps) > 1 else 0.0
            xs = [max(0.0, s[0] - t0) for s in steps]
            ys = [s[1] for s in steps]
            label = f"{side}: utilisation {data['utilisation']:.3f}"
            ax.step(xs, ys, where="post", color=colour, label=label, linewidth=1)
        ax.axhline(c, color="grey", linestyle="--", linewidth=0.8, label=f"quota ({c})")
        ax.set_title(f"B1: tasks RUNNING on the account, {run['rows']} rows, concurrency {c}")
        ax.set_xlabel("real seconds since the first task started")
        ax.set_ylabel("tasks running")
        ax.set_ylim(0, c * 1.15 + 0.5)
        ax.legend(loc="lower center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(res: dict) -> str:
    m = res["meta"]
    L = []
    L.append("# Benchmarks\n")
    L.append(
        f"Generated by `{m['command']}` on {m['date']} ({m['machine']}); the whole run took "
        f"**{m['wall_s']:.0f} s**. Every number below was printed by that run and is in "
        "`bench/results/latest.json`. Ours = `kf2v_flows.batch.generate_batch` (what `kf2v run` "
        "calls); peer = the official `dashscope` SDK as its docs show it (`VideoSynthesis.call` "
        "in a thread pool sized to the concurrency, then a plain download), its polling sleeps "
        "divided by the same time scale. Each side has its own simulator process with the same "
        "config and seed.\n"
    )
    sections = m.get("sections") or {}
    if len({(v["date"], v["commit"]) for v in sections.values()}) > 1:
        L.append(
            "Not every section comes from that run; each was measured as follows:\n\n"
            + "\n".join(
                f"- {k.upper()}: `{v['command']}` on {v['date']}, commit `{v['commit']}`"
                + (f", {v['wall_s']:.0f} s for this section" if "wall_s" in v else "")
                + (
                    f", load average (1 min) {v['loadavg_start']} → {v['loadavg_end']}"
                    if "loadavg_start" in v
                    else ""
                )
                for k, v in sorted(sections.items())
            )
            + "\n"
        )
    L.append("## Targets\n")
    L.append("| target | value | result |\n|---|---|---|")
    for t in targets(res):
        L.append(f"| {t['name']} | {_f(t['value'], 3)} | {_ok(t['met'])} |")
    L.append("")

    if res.get("b1"):
        L.append("## B1 against the FIFO bound\n")
        L.append(
            "Each side's utilisation divided by the zero-overhead FIFO bound of its own run "
            "times and order (every side's simulator draws the same ones). `queue_ahead=0` is "
            "ours with look-ahead off.\n"
        )
        L.append(
            "| concurrency | side | utilisation | FIFO bound | of the bound "
            "| start-up s (call → first create) |\n|---|---|---|---|---|---|"
        )
        for r in res["b1"]:
            for label, x in [*_sides(r), ("the SDK", r["peer"])]:
                startup = f"{x['startup_s']:.2f}" if "startup_s" in x else "–"
                L.append(
                    f"| {r['concurrency']} | {label} | {x['utilisation']:.3f} "
                    f"| {x['zero_overhead_fifo_utilisation']:.3f} | {fifo_ratio(x):.3f} "
                    f"| {startup} |"
                )
        L.append("")
        L.append("## B1 quota utilisation\n")
        L.append(
            "Utilisation = Σ remote run time of one task per row (duplicates are wasted quota, "
            "not counted) / (concurrency × wall time); wall time is the "
            "client's whole batch, from the flow call (or the first `call`) to the last video on "
            "disk; the Prefect API server is already running. Run times are uniform 60–300 "
            f"service seconds at {res['b1'][0]['speed']:g}× (1–5 real seconds). "
            "*FIFO bound* is what a zero-overhead scheduler starting the same run times in "
            "order on the first free slot would reach: the tail of the batch (slots idle while "
            "the last tasks finish) keeps even a perfect client below 1.0.\n"
        )
        L.append(
            "Sides ran: "
            + "; ".join(
                f"c={r['concurrency']}: {r.get('sides_ran', 'side by side')}" for r in res["b1"]
            )
            + '. *ours* = the flow\'s defaults (`task_runs="per_step"`: one task run validates '
            "the manifest, then submit, poll and persist are three Prefect task runs per row); *ours per_row* = the same flow with "
            'the flow parameter `task_runs="per_row"` (one task run per row). Nothing is '
            "monkeypatched.\n"
        )
        L.append(
            "| rows | concurrency | ours | peer | ideal | FIFO bound | ours / peer | ours wall s | peer wall s | ours remote-window util. | 429s ours/peer | duplicate tasks ours/peer |"
        )
        L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in res["b1"]:
            o, p = r["ours"], r["peer"]
            L.append(
                f"| {r['rows']} | {r['concurrency']} | {o['utilisation']:.3f} | {p['utilisation']:.3f} | 1.0 "
                f"| {o['zero_overhead_fifo_utilisation']:.3f} | {o['utilisation'] / p['utilisation']:.3f} "
                f"| {o['wall_s']:.1f} | {p['wall_s']:.1f} | {o['utilisation_remote_window']:.3f} "
                f"| {o['throttled']}/{p['throttled']} | {o.get('duplicate_tasks', 0)}/{p.get('duplicate_tasks', 0)} |"
            )
            for name, x in r.get("variants", {}).items():
                L.append(
                    f"| {r['rows']} | {r['concurrency']} | {x['utilisation']:.3f} ({name}) "
                    f"| {p['utilisation']:.3f} | 1.0 | {x['zero_overhead_fifo_utilisation']:.3f} "
                    f"| {x['utilisation'] / p['utilisation']:.3f} | {x['wall_s']:.1f} | {p['wall_s']:.1f} "
                    f"| {x['utilisation_remote_window']:.3f} | {x['throttled']}/{p['throttled']} "
                    f"| {x.get('duplicate_tasks', 0)}/{p.get('duplicate_tasks', 0)} |"
                )
        L.append("\n![slot occupancy](bench/results/b1_occupancy.png)\n")

    if res.get("b2"):
        L.append("## B2 polling cost\n")
        L.append(
            "Per task: `GET /tasks/{id}` calls (the *with lists* column adds `GET /tasks` list "
            "calls spread over the tasks), and detection lag = first query answering SUCCEEDED "
            "minus the task's end, in service seconds, both recorded inside the simulator. "
            "Same runs as B1.\n"
        )
        L.append(
            "| concurrency | ours q/task | peer q/task | ratio | ours lag p50 / p95 s | peer lag p50 / p95 s | p95 ratio |"
        )
        L.append("|---|---|---|---|---|---|---|")
        for r in res["b2"].values():
            o, p = r["ours"], r["peer"]
            L.append(
                f"| {r['concurrency']} | {o['queries_per_task_with_lists']} | {p['queries_per_task_with_lists']} "
                f"| {r['query_ratio']:.3f} | {_f(o['lag_p50_s'])} / {_f(o['lag_p95_s'])} "
                f"| {_f(p['lag_p50_s'])} / {_f(p['lag_p95_s'])} | {_f(r['lag_p95_ratio'], 3)} |"
            )
            for name, x in r.get("variants", {}).items():
                xo = x["ours"]
                L.append(
                    f"| {r['concurrency']} ({name}) | {xo['queries_per_task_with_lists']} "
                    f"| {p['queries_per_task_with_lists']} | {x['query_ratio']:.3f} "
                    f"| {_f(xo['lag_p50_s'])} / {_f(xo['lag_p95_s'])} "
                    f"| {_f(p['lag_p50_s'])} / {_f(p['lag_p95_s'])} | {_f(x['lag_p95_ratio'], 3)} |"
                )
        L.append("")

    if res.get("b3"):
        b3 = res["b3"]
        L.append("## B3 persistence\n")
        L.append(
            f"One {b3['bytes'] / 2**20:.0f} MiB video served by the simulator, each transfer in a "
            "fresh process, every case run several times interleaved (all wall times listed; "
            "the median run is shown); RSS increase = sampled peak RSS (every 50 ms) minus RSS "
            "just before the transfer, worst run. Ours = `kf2v_tasks.storage.download.stream_to_storage` "
            "(atomic: temp file + rename locally, a multipart upload completed only after the "
            "checks on S3; sha256, fsync, resumable); raw = `httpx.stream` → `open(...).write` (no fsync; "
            f"its fsync, timed apart, took {_f(b3['raw'].get('fsync_s'), 2)} s). S3 is a moto "
            "server on loopback; the plain fsspec S3 copy shows what moto allows on this box "
            f"(ours / plain S3 = {_f(b3['s3'].get('ratio_to_raw_s3'), 3)}). Each process loads "
            "its storage backend and makes one tiny write before the baseline RSS is taken.\n"
        )
        L.append(
            "| transfer | MiB/s | ratio to raw | RSS increase MB | wall s | all walls s | CPU s |"
        )
        L.append("|---|---|---|---|---|---|---|")
        for name, label in (
            ("raw", "raw httpx → local file"),
            ("local", "ours → local disk"),
            ("raw_s3", "raw httpx → plain fsspec S3 file (moto)"),
            ("s3", "ours → S3 (moto)"),
        ):
            d = b3[name]
            L.append(
                f"| {label} | {d['throughput_mib_s']} | {_f(d.get('ratio_to_raw', 1.0), 3)} "
                f"| {d['rss_increase_mb']} | {d['wall_s']} "
                f"| {', '.join(str(w) for w in d.get('walls_s', [d['wall_s']]))} | {d['cpu_s']} |"
            )
        L.append("")

    if res.get("b4"):
        b4 = res["b4"]
        L.append("## B4 orchestration overhead\n")
        L.append(
            f"{b4['rows']} rows, near-zero run time, concurrency {b4['concurrency']}, rate limits "
            "lifted. Floor = bare asyncio + httpx making the same HTTP calls (create, query, "
            "download). CPU = the client process; *+ server* adds the Prefect API server's CPU "
            "from the start of our run until it is idle again. Our two runs (ours, ours per_row) "
            "and the floor are each alone on the machine.\n"
        )
        L.append(
            "| side | rows/s | CPU ms/row | CPU ms/row + server | peak RSS MB | ratio to floor (client / + server) |"
        )
        L.append("|---|---|---|---|---|---|")
        f = b4["floor"]
        rows = [("ours (per_step)", b4["ours"], b4["cpu_ratio"], b4["cpu_ratio_incl_server"])]
        for name, p in b4.get("variants", {}).items():
            rows.append(
                (
                    name,
                    p["ours"],
                    p["cpu_ratio"],
                    p["cpu_ratio_incl_server"],
                )
            )
        for label, o, r1, r2 in rows:
            L.append(
                f"| {label} | {o['rows_per_s']} | {o['cpu_ms_per_row']} | {o['cpu_ms_per_row_incl_server']} "
                f"| {o['peak_rss_mb']} | {r1} / {r2} |"
            )
        L.append(
            f"| floor (asyncio + httpx) | {f['rows_per_s']} | {f['cpu_ms_per_row']} | – | {f['peak_rss_mb']} | 1.0 |"
        )
        L.append("")
    if res.get("notes"):
        L.append("## What limits us, and what the numbers mean\n")
        for n in res["notes"]:
            L.append(f"- {n}")
        L.append("")
    b5 = res.get("b5")
    if b5:
        L.append("## B5 scale: one batch, output on S3\n")
        L.append(
            f"{b5['rows']} rows, near-zero run time, concurrency {b5['concurrency']}, rate "
            "limits lifted, default settings (`per_step`), manifest local and output on S3 "
            "(a moto server behind a counting proxy: every request the client makes). CPU = "
            "the client process; the server's is the Prefect API server's from the start of "
            "the run until it is idle again.\n"
        )
        L.append(
            "| rows/s | client CPU ms/row | Prefect server CPU ms/row | peak RSS MB "
            "| S3 requests/row |\n|---|---|---|---|---|"
        )
        L.append(
            f"| {b5['rows_per_s']} | {b5['cpu_ms_per_row']} | {b5['server_cpu_ms_per_row']} "
            f"| {b5['peak_rss_mb']} | {b5['s3_requests_per_row']} |"
        )
        L.append("")
        rows = b5["rows"]
        L.append(
            "S3 requests per row by operation: "
            + ", ".join(f"{k} {v / rows:.2f}" for k, v in b5["s3_operations"].items())
            + ".\n"
        )
    b6 = res.get("b6")
    if b6:
        L.append("## B6 lanes: a mixed manifest on default settings\n")
        L.append(
            f"{len(b6['wan_durations'])} wan2.7-i2v rows of "
            f"{', '.join(str(d) for d in b6['wan_durations'])} s (listed shortest first) and "
            f"{b6['kf2v_rows']} wan2.2-kf2v-flash rows of 5 s, all {b6['resolution']}, through "
            "the batch flow with its default settings (no concurrency override: each model's "
            "lane from the models table, wan2.7-i2v 5 running and 5 creates/s, kf2v 2 and 2). "
            f"The simulator runs {b6['base_runtime_s']:g} service seconds × duration/5 × the "
            f"resolution's factor per task (fixed, at {b6['speed']:g}×) and enforces the quota "
            "per model. Makespan = the batch's first create → its last task end, in service "
            "seconds, from the simulator's task timeline. Bounds: per lane, a zero-overhead "
            "list schedule of the same run times on the lane's running slots, creates "
            "accepted at the lane's rate (a token bucket holding one second's creates), the "
            "max over lanes; *longest first* orders each lane's tasks by run time (LPT), "
            "*manifest FIFO* keeps the manifest's order. Ratio = bound / measured. "
            '*ours order=manifest* is the same flow with `order="manifest"`.\n'
        )
        L.append(
            "| side | makespan s | longest-first bound s | ratio | manifest FIFO bound s "
            "| ratio | peak running (per model / quota) | lanes' first creates apart s "
            "| ratio, each lane from its own first create | wall s | start-up s |"
        )
        L.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for label, x in b6["sides"].items():
            peaks = ", ".join(
                f"{m} {n}/{x['running_quota'].get(m, '?')}" for m, n in x["peak_running"].items()
            )
            L.append(
                f"| {label} | {x['measured_makespan_s']:.1f} | {x['longest_first_bound_s']:.1f} "
                f"| {x['ratio_longest_first']:.3f} | {x['manifest_fifo_bound_s']:.1f} "
                f"| {x['ratio_manifest_fifo']:.3f} | {peaks} | {x['lane_start_stagger_s']:.1f} "
                f"| {x['ratio_longest_first_in_lane']:.3f} | {x['wall_s']:.1f} "
                f"| {x['startup_s']:.2f} |"
            )
        L.append("")
        L.append(
            "Per lane (service seconds from the batch's first create): when it ended, its "
            "bounds, the run times in the order they started, and where its slot time went "
            "(start-up: first create → each slot's first start; hand-over: an end → the next "
            "start on that slot, zero when the look-ahead task was queued; tail: slots idle "
            "while the lane's last tasks ran).\n"
        )
        L.append(
            "The first global-limit ask of each lane is timed in the client (real seconds "
            "from the batch's first create, sent → granted; a Prefect 503 retry inside it "
            "shows as a wait of seconds).\n"
        )
        L.append(
            "| side | lane | first create s | ended s | longest-first s | FIFO s "
            "| start order (run s) | start-up gaps s | hand-over gaps s | tail idle s "
            "| first global-limit ask real s |\n|---|---|---|---|---|---|---|---|---|---|---|"
        )
        for label, x in b6["sides"].items():
            for model, v in x["lanes"].items():
                L.append(
                    f"| {label} | {model} | {v['first_create_s']:.1f} | {v['measured_s']:.1f} "
                    f"| {v['longest_first_bound_s']:.1f} "
                    f"| {v['manifest_fifo_bound_s']:.1f} "
                    f"| {', '.join(f'{r:g}' for r in v['start_order_run_s'])} "
                    f"| {v['startup_gap_s']:.1f} | {v['handover_gap_s']:.1f} "
                    f"| {v['tail_idle_s']:.1f} | {_ask(v.get('opening'))} |"
                )
        L.append("")
    b7 = res.get("b7")
    if b7:
        L.append("## B7 account pool: one batch over two accounts\n")
        L.append(
            f"{b7['rows']} {b7['model']} rows of 5 s at {b7['resolution']} through the batch "
            "flow with its default settings and `credentials_block=[a, b]`: two unsaved "
            "`DashScopeCredentials` blocks with different keys on one simulator, which counts "
            f"each key as its own account (kf2v: {b7['running_quota']} running and "
            f"{b7['creates_per_second']:g} creates/s per account; the flow adds one "
            f"look-ahead task per account). Each task runs {b7['base_runtime_s']:g} service "
            f"seconds (fixed, at {b7['speed']:g}×). Makespan = the batch's first create → its "
            "last task end, from the simulator's task timeline (each task names its account). "
            "*Pooled bound*: a zero-overhead list schedule of the same run times, longest "
            f"first, on both accounts' running slots together ({b7['accounts_n']} × "
            f"{b7['running_quota']} machines; equal tasks: ceil(n / 4) × run time). *Bound "
            "given the stagger*: the same schedule with the later account's slots free only "
            "from its first create. In flight = created and not ended (running + queued).\n"
        )
        reps = b7.get("repeats", [])
        if len(reps) > 1:
            L.append(
                f"{len(reps)} repeats, one after the other, each against a fresh simulator "
                "(the later account's first global-limit ask: when the Prefect server granted "
                "it, real s from the batch's first create, and how many times it was answered "
                "503 first):\n"
            )
            L.append(
                "| repeat | makespan s | ratio | accounts' first creates apart s "
                "| rows per account | later account's first ask granted s | 503s | wall s |"
            )
            L.append("|---|---|---|---|---|---|---|---|")
            for i, x in enumerate(reps):
                L.append(
                    f"| {i + 1} | {x['measured_makespan_s']:.1f} | {x['ratio_pooled']:.3f} "
                    f"| {_f(x['account_start_stagger_s'], 1)} "
                    f"| {', '.join(f'{n} {v}' for n, v in x['rows_per_account'].items())} "
                    f"| {_f(x['later_first_ask_granted_s'], 2)} | {x['ask_503s']} "
                    f"| {x['wall_s']:.1f} |"
                )
            L.append("")
            L.append(f"The median repeat ({b7['median_index'] + 1}) in detail:\n")
        L.append(
            "| makespan s | pooled bound s | ratio | accounts' first creates apart s "
            "| bound given the stagger s | one-account bound s | wall s | start-up s |"
        )
        L.append("|---|---|---|---|---|---|---|---|")
        stagger = b7.get("account_start_stagger_s")
        given = b7.get("bound_given_stagger_s")
        L.append(
            f"| {b7['measured_makespan_s']:.1f} | {b7['pooled_bound_s']:.1f} "
            f"| {b7['ratio_pooled']:.3f} | {_f(stagger, 1)} | {_f(given, 1)} "
            f"| {b7['one_account_bound_s']:.1f} | {b7['wall_s']:.1f} | {b7['startup_s']:.2f} |"
        )
        L.append("")
        L.append(
            "| account | rows | peak running | peak in flight | first create s | ended s "
            "| first global-limit ask s (real, from the first create: sent → granted) "
            "| slot time s: start-up gaps / hand-over gaps / tail idle |"
        )
        L.append("|---|---|---|---|---|---|---|---|")
        for name, v in b7["accounts"].items():
            o = b7.get("opening", {}).get(name)
            ask = _ask(o)
            if not v.get("tasks"):
                L.append(f"| {name} | 0 | 0 | 0 | – | – | {ask} | – |")
                continue
            L.append(
                f"| {name} | {v['tasks']} | {v['peak_running']}/{b7['running_quota']} "
                f"| {v['peak_in_flight']} | {v['first_create_s']:.1f} | {v['ended_s']:.1f} "
                f"| {ask} | {v['startup_gap_s']:.1f} / {v['handover_gap_s']:.1f} "
                f"/ {v['tail_idle_s']:.1f} |"
            )
        L.append("")
    if res.get("b8"):
        from bench.b8_startup import markdown as b8_markdown

        L.extend(b8_markdown(res["b8"]))
    if res.get("b9"):
        from bench.stop_time import markdown as b9_markdown

        L.extend(b9_markdown(res["b9"]))
    L.append("## Reproduce\n")
    L.append(f"```\n{m['command']}\n```\n")
    return "\n".join(L)
