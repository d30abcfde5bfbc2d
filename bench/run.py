"""Run every benchmark and write bench/results/latest.json, BENCHMARKS.md and the B1 plot.

    python -m bench.run            # the full run (≈14 min on 2 cores), rewrites BENCHMARKS.md
    python -m bench.run --quick    # tiny sizes (≈1 min), writes to a temp dir (smoke test)

Order (the 2 cores decide it): B1 at concurrency 32 (ours and the SDK side by side), then
B1 at concurrency 2 (≈5 min of mostly idle waiting) with B3 running beside it, then B4
alone (it saturates both cores: each side alone, floor first). B2 is read from the B1 runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import b1_utilisation, b2_polling, b3_persistence, b4_overhead, report
from bench.common import ROOT, PrefectServer, log

FULL = dict(
    b1_rows=200, b1_concurrency=(32, 2), b3_bytes=500 * 2**20, b4_rows=2000, b4_concurrency=64
)
QUICK = dict(b1_rows=8, b1_concurrency=(4, 2), b3_bytes=8 * 2**20, b4_rows=40, b4_concurrency=8)
#: Prototype runner/storage changes measured in B4 (see bench/proto.py).
LEAN = ["shared_download_client", "one_task_per_row", "poll_from_last_seen", "queue_ahead"]
PROTOTYPES_B1 = {"lean": LEAN, "lean+sweep": LEAN + ["list_sweep"]}
PROTOTYPES = {"lean": LEAN}


def _machine() -> str:
    import psutil

    return (
        f"{platform.system()} {platform.machine()}, {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}"
    )


def notes(res: dict) -> list[str]:
    """Explanations that depend on this run's numbers (all values come from ``res``)."""
    out = []
    b1 = {r["concurrency"]: r for r in res.get("b1", [])}
    for c, r in sorted(b1.items()):
        o, p = r["ours"], r["peer"]
        out.append(
            f"B1 c={c}: ours {o['utilisation']:.3f} vs FIFO bound {o['zero_overhead_fifo_utilisation']:.3f} "
            f"(peer {p['utilisation']:.3f}). Between the tail bound and our number lie client "
            f"start-up (validation of every row before the first submit, flow-run creation) "
            f"and detection lag (a slot is freed only when we see SUCCEEDED)."
            + "".join(
                f" Prototype `{n}`: {x['utilisation']:.3f} (remote window "
                f"{x['utilisation_remote_window']:.3f}; "
                f"{x['wall_s'] - x['busy_s'] / (c * x['utilisation_remote_window']):.1f} s of its "
                "wall time lie outside the first-create→last-end window)."
                for n, x in r.get("prototypes", {}).items()
            )
            + f" Ours spends {o['wall_s'] - o['busy_s'] / (c * o['utilisation_remote_window']):.1f} s "
            "outside that window (validation, flow start, the last download)."
        )
    for key, r in res.get("b2", {}).items():
        o, p = r["ours"], r["peer"]
        out.append(
            f"B2 {key}: {o['queries_per_task_with_lists']} queries/task against the SDK's "
            f"{p['queries_per_task_with_lists']} (ratio {r['query_ratio']:.2f}). A per-task poller "
            "cannot halve the SDK at equal lag: lag is bounded by the poll interval once a finish "
            "is plausible, and with 1–5 min uniform run times finishes are spread over 4 minutes. "
            "Our schedule already skips the first minute (no kf2v task finishes sooner); going "
            "further needs one `GET /tasks?status=RUNNING` sweep for all in-flight tasks (see "
            "the report of issue 6)."
            + "".join(
                f" Prototype `{n}`: {x['ours']['queries_per_task_with_lists']} queries/task "
                f"(ratio {x['query_ratio']:.2f}), lag p95 {x['ours']['lag_p95_s']} s."
                for n, x in r.get("prototypes", {}).items()
            )
        )
    r32 = b1.get(32)
    if r32:
        out.append(
            f"B1 c=32: the 0.90 target is above the FIFO bound "
            f"({r32['ours']['zero_overhead_fifo_utilisation']:.3f}) for these 200 run times: with "
            "≈6 tasks per slot drawn from 1–5 min, the slots empty one by one while the last "
            "tasks run, whatever the client does (only knowing run times in advance, to start "
            "the longest first, would beat it)."
        )
    out.append(
        "Time compression multiplies client latency: at 60×, 10 ms of event-loop delay is 0.6 "
        "service seconds of lag and of idle slot. Our client runs Prefect task runs, ledger "
        "writes and sidecars on one event loop; the SDK's threads block in `requests` and wake "
        "at once. The machine was shared with other jobs during the run (2 cores)."
    )
    out.append(
        "Prototypes (bench/proto.py): `lean` = one Prefect task run per row instead of four "
        "(`one_task_per_row`), one shared download client (`shared_download_client`), running "
        "time counted from the last not-running answer (`poll_from_last_seen`), and one task "
        "queued PENDING ahead of the quota (`queue_ahead`); `lean+sweep` adds the list-endpoint "
        "sweep (`list_sweep`)."
    )
    b3 = res.get("b3")
    if b3:
        out.append(
            f"B3: ours writes through fsspec with a sha256 per chunk and an atomic commit; "
            f"local {b3['local']['ratio_to_raw']:.2f}× and S3 {b3['s3']['ratio_to_raw']:.2f}× the raw "
            f"local copy. A plain fsspec S3 copy reaches {b3['raw_s3']['ratio_to_raw']:.2f}× on the "
            f"same moto server, so ours is {b3['s3']['ratio_to_raw_s3']:.2f}× of what this S3 allows: "
            "S3 speed here is bounded by moto (Python, in-memory multipart) on the same 2 cores. "
            f"S3 RSS: ours +{b3['s3']['rss_increase_mb']} MB, the plain fsspec S3 file "
            f"+{b3['raw_s3']['rss_increase_mb']} MB (s3fs buffers a whole block before sending it "
            "as a part; ours opens the file with a smaller block). Not profiled further."
        )
    b4 = res.get("b4")
    if b4:
        o = b4["ours"]
        out.append(
            f"B4 shipped: {o['cpu_ms_per_row']} ms CPU/row in the client and "
            f"{round(o['cpu_ms_per_row_incl_server'] - o['cpu_ms_per_row'], 1)} ms/row in the Prefect "
            "API server: four task runs per row (validate, submit, poll, persist) at ≈5–15 ms each "
            "on both sides, `Task.with_options` per row per step (it re-inspects the function "
            "source), and a new `httpx.AsyncClient` per download (loading the CA bundle, ≈30 ms "
            "CPU). The floor itself pays httpcore's connection-pool bookkeeping, which grows with "
            "the number of open connections."
        )
        for name, p in b4.get("prototypes", {}).items():
            out.append(
                f"B4 prototype `{name}` (bench/proto.py, monkeypatched): "
                f"{p['ours']['cpu_ms_per_row']} ms CPU/row ({p['cpu_ratio']}× floor; "
                f"{p['cpu_ratio_incl_server']}× with the server), {p['ours']['rows_per_s']} rows/s."
            )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="tiny sizes; results to a temp dir")
    ap.add_argument(
        "--out", help="results folder (default bench/results, or a temp dir with --quick)"
    )
    ap.add_argument(
        "--markdown", help="where BENCHMARKS.md goes (default: repo root; none with --quick)"
    )
    ap.add_argument("--only", default="b1,b2,b3,b4", help="comma-separated subset")
    ap.add_argument("--no-prototypes", action="store_true", help="skip the prototype B4 runs")
    ap.add_argument(
        "--render-only",
        action="store_true",
        help="re-render BENCHMARKS.md and the plot from bench/results/latest.json",
    )
    args = ap.parse_args(argv)
    if args.render_only:
        out = Path(args.out) if args.out else ROOT / "bench" / "results"
        res = json.loads((out / "latest.json").read_text())
        res["notes"] = notes(res)
        res["targets"] = report.targets(res)
        report.plot_occupancy(res, out / "b1_occupancy.png")
        (out / "latest.json").write_text(json.dumps(res, indent=1, default=str))
        (Path(args.markdown) if args.markdown else ROOT / "BENCHMARKS.md").write_text(
            report.markdown(res)
        )
        return 0
    sizes = QUICK if args.quick else FULL
    only = set(args.only.split(","))
    if args.out:
        out = Path(args.out)
    elif args.quick:
        import tempfile

        out = Path(tempfile.mkdtemp(prefix="kf2v-bench-quick-"))
    else:
        out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    md_path = (
        Path(args.markdown) if args.markdown else (None if args.quick else ROOT / "BENCHMARKS.md")
    )
    os.environ.pop("DASHSCOPE_API_KEY", None)  # never a real key in a benchmark

    started = time.monotonic()
    command = "python -m bench.run" + (" --quick" if args.quick else "")
    res: dict = {
        "meta": {
            "command": command,
            "sizes": sizes,
            "machine": _machine(),
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        }
    }
    log(f"starting the Prefect API server ({'quick' if args.quick else 'full'} run)")
    prefect = PrefectServer()
    try:
        protos_b1 = {} if args.no_prototypes else PROTOTYPES_B1
        floor_box: dict = {}
        if "b1" in only or "b2" in only:
            c_big, c_small = sizes["b1_concurrency"]
            # At concurrency 32 the CPU is the limit: each side alone, one after the other.
            res["b1"] = [
                b1_utilisation.run(
                    sizes["b1_rows"], c_big, prefect.env(), prototypes=protos_b1, parallel=False
                )
            ]
            # At concurrency 2 the sides mostly wait (~5 min): they run side by side, and
            # B3 and the B4 floor (no Prefect) run beside them.
            box: dict = {}

            def small() -> None:
                try:
                    box["r"] = b1_utilisation.run(
                        sizes["b1_rows"],
                        c_small,
                        prefect.env(),
                        prototypes=protos_b1,
                        parallel=True,
                    )
                except BaseException as exc:  # re-raised below
                    box["e"] = exc

            t = threading.Thread(target=small)
            t.start()
            if "b3" in only:
                res["b3"] = b3_persistence.run(sizes["b3_bytes"])
            if "b4" in only:
                floor_box["floor"] = b4_overhead.run_floor(
                    sizes["b4_rows"], sizes["b4_concurrency"]
                )
            t.join()
            if "e" in box:
                raise box["e"]
            res["b1"].append(box["r"])
            res["b1"].sort(key=lambda r: r["concurrency"])
            res["b2"] = b2_polling.summarise(res["b1"])
        elif "b3" in only:
            res["b3"] = b3_persistence.run(sizes["b3_bytes"])
        if "b4" in only:
            rows, conc = sizes["b4_rows"], sizes["b4_concurrency"]
            floor = floor_box.get("floor") or b4_overhead.run_floor(rows, conc)
            ours = b4_overhead.run_ours(rows, conc, prefect)
            res["b4"] = b4_overhead.combine(rows, conc, ours, floor)
            if not args.no_prototypes:
                res["b4"]["prototypes"] = {}
                for name, patches in PROTOTYPES.items():
                    proto = b4_overhead.run_ours(
                        rows, conc, prefect, patches=patches, label=f"ours+{name}"
                    )
                    res["b4"]["prototypes"][name] = b4_overhead.compare(res["b4"], {"ours": proto})
    finally:
        prefect.stop()
    res["meta"]["wall_s"] = round(time.monotonic() - started, 1)
    res["notes"] = notes(res)
    res["targets"] = report.targets(res)
    if res.get("b1"):
        report.plot_occupancy(res, out / "b1_occupancy.png")
    (out / "latest.json").write_text(json.dumps(res, indent=1, default=str))
    text = report.markdown(res)
    if md_path is not None:
        md_path.write_text(text)
    print(text)
    log(
        f"done in {res['meta']['wall_s']:.0f} s; results in {out}"
        + (f", {md_path}" if md_path else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
