"""The full fault soak, crash-and-resume, overlap and S3-fault runs; figures into RELIABILITY.md.

Usage::

    python -m reliability.soak                       # 300 rows, 5 kills, all five phases
    python -m reliability.soak --storage local       # the three phases on local disk
    python -m reliability.soak --storage s3          # the two phases on S3 (moto + faults)
    python -m reliability.soak --rows 40 --kills 2   # a quick rehearsal

Every phase runs ``kf2v run`` against the simulator with, on every endpoint, 5% 429,
5% 500, 3% 503, 3% connection resets, plus 2% ambiguous creates, 5% FAILED tasks, 5%
downloads cut mid-stream and 2% expired URLs:

* **fault soak** — one run, output on local disk;
* **crash and resume** — the runner SIGKILLed (whole process group) at ``--kills``
  random moments and each time restarted with the same command;
* **overlap** — two runs of the same manifest into the same output, the second started
  ``--overlap-delay`` seconds after the first;
* **S3 faults** — output on a real moto server behind the S3 fault proxy
  (:mod:`kf2v_testing.s3_faults`: 503 SlowDown, 500 InternalError, resets mid
  UploadPart), moto restarted once mid-batch;
* **S3 overlap** — the overlap, on S3 under the same S3 faults.

Every phase is audited (:func:`reliability.harness.audit`): deliveries, creates and
extra creates, partial files at final paths, lost ledger records, results.csv against
the files. The figures go to ``reliability/results/latest.json`` and ``RELIABILITY.md``
(:mod:`reliability.report`); the exit code is 0 only if every check passed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reliability.harness import (
    ambiguous_from_log_dir,
    audit,
    cli_command,
    cli_env,
    fault_config,
    fault_spec,
    make_dataset,
    run_with_kills,
)
from reliability.report import render_markdown
from reliability.scenarios import (
    S3_FAULT_RATES,
    S3_VIDEO_BYTES,
    run_overlapping,
    run_with_restart,
    s3_output,
)
from reliability.store import OutputStore

REPO = Path(__file__).resolve().parent.parent
SOAK_KEY = "sk-kf2vsoak-0123456789abcdef"


@dataclass(frozen=True)
class Phase:
    """One column of the report: where the output lives and what happens to the runs."""

    title: str
    storage: str  # "local" or "s3"
    seed_offset: int
    kills: int = 0
    overlap: bool = False
    restart: bool = False


def _phases(args: argparse.Namespace) -> list[Phase]:
    local = [
        Phase("fault soak", "local", 0),
        Phase("crash and resume", "local", 1, kills=args.kills),
        Phase("overlap", "local", 2, overlap=True),
    ]
    s3 = [
        Phase("S3 faults", "s3", 3, restart=True),
        Phase("S3 overlap", "s3", 4, overlap=True),
    ]
    return {"local": local, "s3": s3, "both": local + s3}[args.storage]


def _sim_config(args: argparse.Namespace, seed: int, storage: str = "local"):
    from kf2v_tasks.simulator import RuntimeDistribution, SimulatorConfig

    return SimulatorConfig(
        speed=args.speed,
        max_concurrent=args.concurrency,
        runtime=RuntimeDistribution(kind="uniform", low=60.0, high=300.0),
        # Raw draws (as bench/ does): the report says "uniform 60-300 service seconds",
        # whatever the rows' duration and resolution would scale them to.
        runtime_scaling=False,
        render="tiny",
        # On S3 every video is a two-part multipart upload, so resets mid-UploadPart bite.
        video_bytes=S3_VIDEO_BYTES if storage == "s3" else None,
        faults=fault_config(),
        seed=seed,
        api_key=SOAK_KEY,
        # Compressed time: 24 service hours pass in 24*3600/speed real seconds (144 s at
        # 600x), less than the crash phase takes. A real 300-row batch takes about 2 h of
        # the 24 h task/URL validity, so keep tasks and URLs valid for the whole run.
        task_ttl=30 * 86400.0,
        url_ttl=30 * 86400.0,
    )


def _phase(ph: Phase, args, manifest: Path, rows: int, work: Path, prefect_url: str):
    from kf2v_tasks.simulator import run_simulator

    seed = args.seed + ph.seed_offset
    slug = ph.title.lower().replace(" ", "-")
    log_dir = work / f"{slug}-logs"
    print(f"[soak] {ph.title}: {rows} rows, {ph.storage}, simulator seed {seed}", flush=True)
    with contextlib.ExitStack() as stack:
        sim = stack.enter_context(run_simulator(_sim_config(args, seed, ph.storage)))
        env = cli_env(sim.base_url, SOAK_KEY, prefect_url, args.speed)
        s3 = None
        if ph.storage == "s3":
            s3 = stack.enter_context(s3_output(seed=seed))
            env.update(s3.env)
            output: Any = s3.url
            store = s3.store()
        else:
            output = work / slug
            store = OutputStore(output)
        cmd = cli_command(
            manifest,
            output,
            concurrency=args.concurrency,
            time_scale=args.speed,
            storage_options=s3.run_options if s3 else None,
        )
        events: list = []
        if ph.overlap:
            codes, wall = run_overlapping(
                cmd, env, delay=args.overlap_delay, log_dir=log_dir, timeout=args.timeout
            )
        elif s3 is not None:
            rng = random.Random(f"restart:{seed}")
            target = int(2 * rows * rng.uniform(0.3, 0.6)) if ph.restart else None
            rc, wall = run_with_restart(
                cmd, env, s3, restart_at=target, log=log_dir / "run-1.log", timeout=args.timeout
            )
            codes = [rc]
        else:
            events, rc, wall = run_with_kills(
                cmd,
                env,
                store,
                rows=rows,
                kills=ph.kills,
                seed=seed,
                log_dir=log_dir,
                timeout=args.timeout,
            )
            codes = [rc]
        stats, tasks = sim.stats(), sim.tasks()
        result = audit(
            store, rows, stats, tasks, ambiguous_evidence=ambiguous_from_log_dir(log_dir)
        )
        s3_counts = dict(sorted(s3.proxy.counts.items())) if s3 else {}
        restarts = list(s3.restarts) if s3 else []
    if any(rc not in (0, 1) for rc in codes):  # 1 = some rows failed (FAILED tasks)
        result.problems.append(f"a run exited with {codes}")
    if ph.kills and sum(e.killed for e in events) != ph.kills:
        result.problems.append(
            f"only {sum(e.killed for e in events)} of {ph.kills} kills hit a running process"
        )
    if ph.restart and not restarts:
        result.problems.append("moto was never restarted (the batch ended first)")
    print(
        f"[soak] {ph.title}: {result.delivered} delivered, {result.failed_permanent} failed "
        f"permanently, {result.extra_creates} extra creates, "
        f"{result.partial_files_at_final_paths} partial, {result.lost_ledger_records} lost "
        f"records, {len(result.problems)} problems, {wall:.1f}s",
        flush=True,
    )
    return {
        "name": ph.title,
        "storage": ph.storage,
        "runs": 2 if ph.overlap else 1 + ph.kills,
        "overlap": ph.overlap,
        "wall_seconds": round(wall, 1),
        "final_exit_code": codes[-1],
        "exit_codes": codes,
        "kills": [e.__dict__ for e in events],
        "s3": {"proxy": s3_counts, "restarts": restarts},
        "audit": result.to_dict(),
        "sim": {
            k: stats.get(k)
            for k in (
                "creates",
                "create_requests",
                "queries",
                "cancels",
                "downloads",
                "throttled",
                "peak_concurrency",
                "tasks_by_status",
            )
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m reliability.soak", description=__doc__.split("\n")[0]
    )
    p.add_argument("--rows", type=int, default=300)
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--seed", type=int, default=20260101)
    p.add_argument("--speed", type=float, default=600.0, help="Simulator speed = KF2V_TIME_SCALE.")
    p.add_argument(
        "--concurrency", type=int, default=8, help="Tasks in flight (and simulator slots)."
    )
    p.add_argument(
        "--storage",
        choices=("local", "s3", "both"),
        default="both",
        help="local: fault soak, crash and resume, overlap on disk; s3: the S3-fault and "
        "S3-overlap phases (moto behind the fault proxy); both (default): all five.",
    )
    p.add_argument(
        "--s3-rows",
        type=int,
        default=40,
        help="Rows of the S3 phases (each video is 9 MiB, held in moto's memory).",
    )
    p.add_argument(
        "--overlap-delay", type=float, default=1.0, help="Seconds between the two overlap runs."
    )
    p.add_argument("--timeout", type=float, default=1800.0, help="Per run, seconds.")
    p.add_argument("--workdir", help="Keep the data and outputs here (default: a temp dir).")
    p.add_argument("--report", default=str(REPO / "RELIABILITY.md"))
    p.add_argument("--json", default=str(REPO / "reliability" / "results" / "latest.json"))
    args = p.parse_args(argv)

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.pop("DASHSCOPE_API_KEY", None)
    os.environ.pop("DASHSCOPE_HTTP_BASE_URL", None)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="kf2v-soak-"))
    phases = _phases(args)
    for ph in phases:
        slug = ph.title.lower().replace(" ", "-")
        for sub in (slug, f"{slug}-logs"):
            shutil.rmtree(work / sub, ignore_errors=True)
    manifest = make_dataset(work / "data", args.rows, seed=args.seed)
    s3_rows = min(args.s3_rows, args.rows)
    s3_manifest = make_dataset(work / "data", s3_rows, seed=args.seed, name="manifest-s3.csv")
    command = "python -m reliability.soak " + " ".join(
        shlex.quote(a) for a in (argv or sys.argv[1:])
    )

    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    started = time.monotonic()
    results = []
    with prefect_test_harness(server_startup_timeout=120):
        prefect_url = PREFECT_API_URL.value()
        for ph in phases:
            on_s3 = ph.storage == "s3"
            results.append(
                _phase(
                    ph,
                    args,
                    s3_manifest if on_s3 else manifest,
                    s3_rows if on_s3 else args.rows,
                    work,
                    prefect_url,
                )
            )
    report: dict[str, Any] = {
        "command": command.strip(),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_seconds": round(time.monotonic() - started, 1),
        "rows": args.rows,
        "s3_rows": s3_rows,
        "kills": args.kills,
        "seed": args.seed,
        "speed": args.speed,
        "concurrency": args.concurrency,
        "overlap_delay": args.overlap_delay,
        "faults": fault_spec(),
        "s3_faults": dict(S3_FAULT_RATES),
        "s3_video_bytes": S3_VIDEO_BYTES,
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "workdir": str(work),
        "phases": results,
        "ok": all(ph["audit"]["ok"] for ph in results),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    Path(args.report).write_text(render_markdown(report), encoding="utf-8")
    print(f"[soak] {'PASS' if report['ok'] else 'FAIL'}; wrote {args.report} and {args.json}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
