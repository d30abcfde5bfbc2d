"""Smoke test of the benchmarks: every benchmark at a tiny size, so bench/ cannot rot.

The real numbers come from ``python -m bench.run`` (BENCHMARKS.md); this only checks that
each benchmark still runs end to end against the simulator and yields sane values.
It starts its own Prefect API server, simulators and a moto S3 server: 307-364 s on 2 cores
at load average 10-15 (≈30 Python processes, each importing Prefect, the SDK or moto:
210-250 CPU seconds), against 550-750 s before the quick sizes were cut and B3, B8 and B9
ran beside the rest.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("dashscope")
pytest.importorskip("matplotlib")
pytest.importorskip("psutil")


@pytest.mark.slow
def test_every_benchmark_runs_at_a_tiny_size(tmp_path):
    out = tmp_path / "results"
    md = tmp_path / "BENCHMARKS.md"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out), "--markdown", str(md)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads((out / "latest.json").read_text())

    assert [r["concurrency"] for r in res["b1"]] == [2, 4]
    for run in res["b1"]:
        assert set(run["variants"]) == {"ours per_row", "ours queue_ahead=0"}
        for r in (run["ours"], run["peer"], *run["variants"].values()):
            assert r["rows_succeeded"] == run["rows"]
            assert 0.2 < r["utilisation"] <= 1.05
            assert r["peak_concurrency"] <= run["concurrency"]
            assert len(r["lag_service_s"]) == run["rows"]
    for key in ("c2", "c4"):
        assert res["b2"][key]["ours"]["queries_per_task_mean"] >= 1
        assert res["b2"][key]["peer"]["queries_per_task_mean"] >= 1
        assert res["b2"][key]["variants"]["ours per_row"]["ours"]["queries_per_task_mean"] >= 1
    for name in ("raw", "local", "s3"):
        assert res["b3"][name]["bytes"] == res["b3"]["bytes"]
        assert res["b3"][name]["throughput_mib_s"] > 0
    b4 = res["b4"]
    assert b4["ours"]["counts"] == {"succeeded": b4["rows"]}
    assert b4["floor"]["http_calls"]["creates"] == b4["rows"]
    assert b4["cpu_ratio"] > 0
    assert set(b4["variants"]) == {"ours per_row"}
    for variant in b4["variants"].values():
        assert variant["ours"]["counts"] == {"succeeded": b4["rows"]}
        assert variant["ours"]["flow_args"] == {"task_runs": "per_row"}

    b5 = res["b5"]
    assert b5["counts"] == {"succeeded": b5["rows"]} and b5["creates"] == b5["rows"]
    assert b5["s3_requests_per_row"] > 0 and sum(b5["s3_operations"].values()) > 0

    b6 = res["b6"]
    assert set(b6["sides"]) == {"ours", "ours order=manifest"}
    for side in b6["sides"].values():
        assert side["rows_succeeded"] == b6["rows"] and side["duplicate_tasks"] == 0
        assert side["measured_makespan_s"] > 0
        assert 0 < side["longest_first_bound_s"] <= side["manifest_fifo_bound_s"]
        # Each model's own lane: wan2.7-i2v reaches 5 running, no lane goes above its quota.
        assert side["peak_running"]["wan2.7-i2v"] == 5
        assert side["peak_running"]["wan2.2-kf2v-flash"] <= 2

    # B8: a new user's kf2v run, re-run (every row kept) and validate, each figure measured.
    b8 = res["b8"]
    assert b8["runs"] == 1 and len(b8["traces"]) == 1
    for key in ("first_create_s", "rerun_s", "validate_s", "rerun_cpu_s", "validate_cpu_s"):
        assert 0 < b8[key]["min"] <= b8[key]["median"] <= b8[key]["max"]
    assert b8["traces"][0]["first create"] < b8["traces"][0]["end"]
    assert b8["server_fresh_home_s"] > 0 and b8["server_used_home_s"] > 0
    assert b8["server_phases"]["import_s"] > 0 and b8["server_phases"]["migrate_s"] > 0

    # B9: Ctrl-C to a new user's kf2v run: it stops, says so (130) and writes results.csv.
    b9 = res["b9"]
    assert b9["runs"] == 1 and b9["codes"] == [130] and b9["written"] == [True]
    assert 0 < b9["min"] <= b9["median"] <= b9["max"]

    # B7: one kf2v batch over two accounts (credentials_block a list of two blocks).
    b7 = res["b7"]
    assert b7["rows_succeeded"] == b7["rows"] and b7["duplicate_tasks"] == 0
    assert sum(v["tasks"] for v in b7["accounts"].values()) == b7["rows"]
    for account in b7["accounts"].values():  # each its own lane: 2 running + 1 queued at most
        assert account.get("peak_running", 0) <= b7["running_quota"]
        assert account.get("peak_in_flight", 0) <= b7["running_quota"] + 1
    assert 0 < b7["ratio_pooled"] <= 1.0  # equal tasks: the pooled bound is a lower bound

    assert (out / "b1_occupancy.png").stat().st_size > 1000
    text = md.read_text()
    for heading in ("## B1", "## B2", "## B3", "## B4", "## B5", "## B6", "## B7", "## Targets"):
        assert heading in text
