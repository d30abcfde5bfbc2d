"""The full fault soak and crash-and-resume run, in one command; figures into RELIABILITY.md.

Usage::

    python -m reliability.soak                       # 300 rows, 5 kills, seed 20260101
    python -m reliability.soak --rows 40 --kills 2   # a quick rehearsal

Phase 1 (fault soak): one ``kf2v run`` of the batch against the simulator with, on every
endpoint, 5% 429, 5% 500, 3% 503, 3% connection resets, plus 2% ambiguous creates, 5%
FAILED tasks, 5% downloads cut mid-stream and 2% expired URLs.

Phase 2 (crash and resume): the same batch and faults into a fresh output folder, the
runner SIGKILLed (whole process group) at ``--kills`` random moments and each time
restarted with the same command, until a run ends on its own.

Both phases are audited (:func:`reliability.harness.audit`): rows delivered and verified,
rows failed with a permanent reason, creates per fingerprint (a second create is only
allowed after a FAILED task or an ambiguous create), partial files at final paths, every
file's sha256 against its sidecar, results.csv against the files. The figures go to
``reliability/results/latest.json`` and ``RELIABILITY.md``; the exit code is 0 only if
every check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
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

REPO = Path(__file__).resolve().parent.parent
SOAK_KEY = "sk-kf2vsoak-0123456789abcdef"


def _sim_config(args: argparse.Namespace, seed: int):
    from kf2v_tasks.simulator import RuntimeDistribution, SimulatorConfig

    return SimulatorConfig(
        speed=args.speed,
        max_concurrent=args.concurrency,
        runtime=RuntimeDistribution(kind="uniform", low=60.0, high=300.0),
        render="tiny",
        faults=fault_config(),
        seed=seed,
        api_key=SOAK_KEY,
        # Compressed time: 24 service hours pass in 24*3600/speed real seconds (144 s at
        # 600x), less than the crash phase takes. A real 300-row batch takes about 2 h of
        # the 24 h task/URL validity, so keep tasks and URLs valid for the whole run.
        task_ttl=30 * 86400.0,
        url_ttl=30 * 86400.0,
    )


def _phase(name: str, args, manifest: Path, output: Path, prefect_url: str, seed: int, kills: int):
    from kf2v_tasks.simulator import run_simulator

    print(f"[soak] {name}: {args.rows} rows, {kills} kills, simulator seed {seed}", flush=True)
    with run_simulator(_sim_config(args, seed)) as sim:
        env = cli_env(sim.base_url, SOAK_KEY, prefect_url, args.speed)
        cmd = cli_command(manifest, output, concurrency=args.concurrency, time_scale=args.speed)
        events, rc, wall = run_with_kills(
            cmd,
            env,
            output,
            rows=args.rows,
            kills=kills,
            seed=seed,
            log_dir=output.parent / f"{output.name}-logs",  # the audit reads these
            timeout=args.timeout,
        )
        stats, tasks = sim.stats(), sim.tasks()
    log_dir = output.parent / f"{output.name}-logs"
    result = audit(
        output, args.rows, stats, tasks, ambiguous_evidence=ambiguous_from_log_dir(log_dir)
    )
    if rc not in (0, 1):  # 1 = some rows failed (expected with FAILED tasks)
        result.problems.append(f"the final run exited with {rc}")
    if kills and sum(e.killed for e in events) != kills:
        result.problems.append(
            f"only {sum(e.killed for e in events)} of {kills} kills hit a running process"
        )
    print(
        f"[soak] {name}: {result.delivered} delivered, {result.failed_permanent} failed "
        f"permanently, {len(result.problems)} problems, {wall:.1f}s",
        flush=True,
    )
    return {
        "name": name,
        "wall_seconds": round(wall, 1),
        "final_exit_code": rc,
        "kills": [e.__dict__ for e in events],
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
    for sub in ("fault-soak", "crash-resume", "fault-soak-logs", "crash-resume-logs"):
        shutil.rmtree(work / sub, ignore_errors=True)
    manifest = make_dataset(work / "data", args.rows, seed=args.seed)
    command = "python -m reliability.soak " + " ".join(
        shlex.quote(a) for a in (argv or sys.argv[1:])
    )

    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    started = time.monotonic()
    with prefect_test_harness(server_startup_timeout=120):
        prefect_url = PREFECT_API_URL.value()
        phases = [
            _phase("fault soak", args, manifest, work / "fault-soak", prefect_url, args.seed, 0),
            _phase(
                "crash and resume",
                args,
                manifest,
                work / "crash-resume",
                prefect_url,
                args.seed + 1,
                args.kills,
            ),
        ]
    report: dict[str, Any] = {
        "command": command.strip(),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_seconds": round(time.monotonic() - started, 1),
        "rows": args.rows,
        "kills": args.kills,
        "seed": args.seed,
        "speed": args.speed,
        "concurrency": args.concurrency,
        "faults": fault_spec(),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "workdir": str(work),
        "phases": phases,
        "ok": all(ph["audit"]["ok"] for ph in phases),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    Path(args.report).write_text(render_markdown(report), encoding="utf-8")
    print(f"[soak] {'PASS' if report['ok'] else 'FAIL'}; wrote {args.report} and {args.json}")
    return 0 if report["ok"] else 1


def _row(label: str, *values: Any) -> str:
    return "| " + " | ".join([str(label), *(str(v) for v in values)]) + " |"


def render_markdown(r: dict[str, Any]) -> str:
    """RELIABILITY.md from a report dict."""
    soak, crash = r["phases"]
    a, b = soak["audit"], crash["audit"]

    def hist(x: dict) -> str:
        return ", ".join(f"{k}×: {v}" for k, v in x["creates_per_fingerprint"].items()) or "none"

    def codes(x: dict) -> str:
        return ", ".join(f"{k} {v}" for k, v in x["failures_by_code"].items()) or "none"

    lines = [
        "# Reliability: faults, crashes and bad input",
        "",
        "Generated by the command below; do not edit by hand. The promise checked: every row",
        "ends as a verified video or a clear error, no video is generated twice (a second",
        "create only after a FAILED task or an ambiguous create, both counted), and no partial",
        "file ever sits at a final path.",
        "",
        "```",
        r["command"],
        "```",
        "",
        f"- Finished {r['finished_at']} in {r['wall_seconds']} s on {r['machine']}.",
        f"- {r['rows']} rows, seed {r['seed']}, simulator speed {r['speed']:g}× "
        f"(`KF2V_TIME_SCALE={r['speed']:g}`), {r['concurrency']} tasks in flight, "
        "task run time uniform 60–300 service seconds.",
        f"- Overall: **{'PASS' if r['ok'] else 'FAIL'}**.",
        "",
        "Faults on every endpoint (`FaultConfig.parse`):",
        "",
        "```",
        r["faults"].replace(",", ",\n"),
        "```",
        "",
        "## Figures",
        "",
        _row("", "fault soak", "crash and resume"),
        _row("---", "---:", "---:"),
        _row("rows", a["rows"], b["rows"]),
        _row("rows in results.csv", a["results_rows"], b["results_rows"]),
        _row("rows delivered (video verified)", a["delivered"], b["delivered"]),
        _row("rows failed with a permanent reason", a["failed_permanent"], b["failed_permanent"]),
        _row("rows failed otherwise", a["failed_other"], b["failed_other"]),
        _row("failure reasons", codes(a), codes(b)),
        _row("runner SIGKILLs", 0, sum(k["killed"] for k in crash["kills"])),
        _row(
            "creates (create requests)",
            f"{a['creates']} ({a['create_requests']})",
            f"{b['creates']} ({b['create_requests']})",
        ),
        _row("fingerprints created", a["fingerprints"], b["fingerprints"]),
        _row("creates per fingerprint (histogram)", hist(a), hist(b)),
        _row(
            "extra creates after a FAILED task",
            a["extra_creates_after_failed"],
            b["extra_creates_after_failed"],
        ),
        _row(
            "extra creates after an ambiguous create",
            a["extra_creates_after_ambiguous"],
            b["extra_creates_after_ambiguous"],
        ),
        _row(
            "**unexplained extra creates**",
            a["extra_creates_unexplained"],
            b["extra_creates_unexplained"],
        ),
        _row("FAILED tasks", a["failed_tasks"], b["failed_tasks"]),
        _row(
            "fingerprints with an ambiguous create",
            a["ambiguous_fingerprints"],
            b["ambiguous_fingerprints"],
        ),
        _row(
            "rows reported possible_duplicate",
            a["possible_duplicate_rows"],
            b["possible_duplicate_rows"],
        ),
        _row("video files at final paths", a["files_at_final_paths"], b["files_at_final_paths"]),
        _row("sha256 checked against sidecar: match", a["files_verified"], b["files_verified"]),
        _row(
            "**partial files at final paths**",
            a["partial_files_at_final_paths"],
            b["partial_files_at_final_paths"],
        ),
        _row(
            "results.csv rows inconsistent with files",
            len(a["results_inconsistent"]),
            len(b["results_inconsistent"]),
        ),
        _row(
            "leftover temp files under .kf2v/tmp",
            a["leftover_temp_files"],
            b["leftover_temp_files"],
        ),
        _row("wall time (s)", soak["wall_seconds"], crash["wall_seconds"]),
        _row("final exit code of `kf2v run`", soak["final_exit_code"], crash["final_exit_code"]),
        "",
        "Faults the simulator injected:",
        "",
        _row("fault", "fault soak", "crash and resume"),
        _row("---", "---:", "---:"),
    ]
    for k in sorted(set(a["faults_injected"]) | set(b["faults_injected"])):
        lines.append(_row(f"`{k}`", a["faults_injected"].get(k, 0), b["faults_injected"].get(k, 0)))
    lines += [
        "",
        f"Kill moments (progress = ledger records + videos kept, out of {2 * r['rows']}):",
        "",
        _row("run", "progress target", "progress at kill", "seconds after start", "killed"),
        _row("---", "---:", "---:", "---:", "---"),
    ]
    for k in crash["kills"]:
        lines.append(
            _row(
                k["attempt"],
                k["progress_target"],
                k["progress_at_kill"],
                k["seconds_after_start"],
                "yes" if k["killed"] else "no (had ended)",
            )
        )
    problems = a["problems"] + b["problems"]
    lines += ["", "## Problems", ""]
    lines += [f"- {p}" for p in problems] or ["None."]
    lines += [
        "",
        "## How it is checked",
        "",
        "- **Delivered** = `results.csv` says succeeded/skipped, the file and its sidecar exist,",
        "  and sha256(file) = sidecar `sha256` = `results.csv` `sha256`.",
        "- **Permanent reason** = an error code of a FAILED task (`DataInspectionFailed`),",
        "  `AmbiguousCreateError` (the second create was ambiguous too: policy `retry_once`),",
        "  queue timeout, invalid row/frame. Transient errors that escaped every retry count",
        "  as *failed otherwise* and fail the soak.",
        "- **Creates per fingerprint** come from the simulator's own counter; every extra",
        "  create must follow a FAILED task of the same fingerprint (re-run after failure) or",
        "  an ambiguous create recorded in the ledger (`possible_duplicate`).",
        "- **Partial files**: every `*.mp4` outside `.kf2v/` must have a sidecar whose sha256",
        "  and size match; any other file must belong to a delivered row.",
        "",
        "Fast versions (fixed seeds, small batches) run in the normal suite:",
        "`tests/test_reliability_faults.py`, `tests/test_reliability_crash.py`,",
        "`tests/test_bad_input.py`, `tests/test_secrets.py`, `tests/test_timeouts.py`.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
