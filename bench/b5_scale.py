"""B5 scale: one batch of many near-instant rows, output on S3 (a moto server), default mode.

What grows with a batch must grow at most linearly: this measures rows/s, the client's
CPU per row, the Prefect API server's CPU per row, the client's peak RSS, and the S3
requests per row (ledger records and claims, videos, sidecars, previews, the gallery and
results included), counted by a proxy in front of moto (kf2v_testing.s3_faults, no
faults injected), broken down by S3 operation.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from bench.b4_overhead import SPEED, sim_config
from bench.common import API_KEY_OURS, SimProcess, log, make_inputs, start_side


def run(rows: int, concurrency: int, prefect) -> dict:
    """Ours (``generate_batch``, default settings) over ``rows`` rows into ``s3://``."""
    from kf2v_testing.moto_server import MotoS3Server
    from kf2v_testing.s3_faults import S3FaultProxy

    work = Path(tempfile.mkdtemp(prefix="kf2v-b5-"))
    moto = MotoS3Server()
    proxy = S3FaultProxy(moto, rates={}, seed=5)
    try:
        manifest = make_inputs(work / "in", rows, "b5")
        bucket = moto.new_bucket("kf2v-b5")
        with SimProcess(sim_config(concurrency)) as sim:
            log(f"B5: {rows} rows, concurrency {concurrency}, output on S3 (moto)")
            prefect.wait_idle()
            server_cpu0 = prefect.cpu_seconds()
            before = sum(v for k, v in proxy.counts.items() if k.startswith("forwarded."))
            side = start_side(
                "ours-b5",
                dict(
                    time_scale=SPEED,
                    manifest=str(manifest),
                    rows=rows,
                    concurrency=concurrency,
                    submits_per_second=10000.0,
                    queries_per_second=10000.0,
                    mode="ours",
                    api_key=API_KEY_OURS,
                    base_url=sim.base_url,
                    output=f"s3://{bucket}/out",
                    # moto's fixed test credentials: nothing secret.
                    storage_options=proxy.storage_options,
                ),
                prefect.env(),
            ).wait(timeout=5400)
            prefect.wait_idle()
            server_cpu = prefect.cpu_seconds() - server_cpu0
            ops = {
                k.removeprefix("forwarded."): v
                for k, v in sorted(proxy.counts.items())
                if k.startswith("forwarded.")
            }
            s3_requests = sum(ops.values()) - before
            stats = sim.stats()
    finally:
        proxy.stop()
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)
    out = {
        "rows": rows,
        "concurrency": concurrency,
        "wall_s": round(side["wall_s"], 3),
        "rows_per_s": round(rows / side["wall_s"], 1),
        "cpu_ms_per_row": round(1000 * side["cpu_s"] / rows, 3),
        "server_cpu_ms_per_row": round(1000 * server_cpu / rows, 3),
        "peak_rss_mb": side["sampled_peak_rss_mb"],
        "s3_requests": s3_requests,
        "s3_requests_per_row": round(s3_requests / rows, 2),
        "s3_operations": ops,
        "counts": side.get("counts"),
        "creates": stats["creates"],
    }
    log(
        f"B5: {out['rows_per_s']} rows/s, {out['cpu_ms_per_row']} ms CPU/row, "
        f"{out['s3_requests_per_row']} S3 requests/row, peak RSS {out['peak_rss_mb']} MB"
    )
    return out
