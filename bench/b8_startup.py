"""B8 start-up: what a new user waits for, on a fresh PREFECT_HOME with no server configured.

    python -m bench.b8_startup [--runs 5]     # prints the section; bench.run --only b8 keeps it

Each run gets a new PREFECT_HOME, HOME and output folder, no DASHSCOPE_API_KEY and no
PREFECT_API_URL (so the built-in simulator and a temporary Prefect server), and runs the
``kf2v`` console script on examples/manifest.csv as a user would:

* **first create**: ``kf2v run`` started → the first task id the service answered (the
  ledger records each create's answer with a wall-clock time);
* **re-run, every row kept**: ``kf2v run`` again into that output, whole process;
* **validate**: ``kf2v validate`` on the manifest, whole process.

The trace of each first run: when its stderr lines appeared (the simulator up; the plan
printed, i.e. the temporary server up, the flow created and every row planned), the first
create and the process's end; apart from it, the temporary server alone (kf2v's
``prefect_api``: spawn → ``/health``) on a new and on a used PREFECT_HOME.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KF2V = str(Path(sys.executable).parent / "kf2v")
MANIFEST = str(ROOT / "examples" / "manifest.csv")
#: stderr lines of a first run, as trace phases (the first line that starts so).
LINES = {
    "simulator up": "No DASHSCOPE_API_KEY set",
    "plan printed": None,
    "server slow": "The temp",
}


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASHSCOPE_", "KF2V_"))}
    env.pop("PREFECT_API_URL", None)
    (tmp / "home").mkdir(parents=True, exist_ok=True)
    return dict(env, HOME=str(tmp / "home"), PREFECT_HOME=str(tmp / "prefect"))


def _timed(cmd: list[str], env: dict) -> tuple[float, float, list[tuple[float, str]], int]:
    """(wall-clock start, seconds, [(s, stderr line)], exit code) of one whole command; its
    CPU seconds (user + sys, with the children it waited for) in ``_timed.cpu``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start_wall, start = time.time(), time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lines: list[tuple[float, str]] = []

    def read() -> None:
        for raw in proc.stderr:  # type: ignore[union-attr]
            lines.append((time.monotonic() - start, raw.decode(errors="replace").rstrip()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    code = proc.wait(timeout=600)
    took = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    _timed.cpu = round(  # type: ignore[attr-defined]
        after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2
    )
    reader.join(timeout=5)
    return start_wall, took, lines, code


def _first_create(output: Path, start_wall: float) -> float:
    """Seconds from ``start_wall`` to the earliest create answer in the output's ledger."""
    times = []
    for path in (output / ".kf2v" / "ledger").glob("*.json"):
        for event in json.loads(path.read_text()).get("events", []):
            if event.get("event") == "submitted":
                times.append(datetime.fromisoformat(event["at"]).timestamp())
    return min(times) - start_wall


def one_run(tmp: Path) -> dict:
    """A first run, a re-run with every row kept and a validate, each on a new PREFECT_HOME."""
    out = tmp / "out"
    wall, took, lines, code = _timed([KF2V, "run", MANIFEST, "--output", str(out)], _env(tmp / "a"))
    if code != 0:
        raise RuntimeError(f"kf2v run exited {code}: {lines[-5:]}")
    trace = {"first create": round(_first_create(out, wall), 2), "end": round(took, 2)}
    for name, start in LINES.items():
        hit = [s for s, text in lines if (text.startswith(start) if start else "valid row" in text)]
        if hit:
            trace[name] = round(hit[0], 2)
    _, rerun, lines, code = _timed([KF2V, "run", MANIFEST, "--output", str(out)], _env(tmp / "b"))
    if code != 0 or not any("skipped" in text for _, text in lines):
        raise RuntimeError(f"the re-run exited {code}: {lines[-5:]}")
    rerun_cpu = _timed.cpu  # type: ignore[attr-defined]
    _, check, _, code = _timed([KF2V, "validate", MANIFEST], _env(tmp / "c"))
    return {
        "trace": trace,
        "rerun_s": round(rerun, 2),
        "validate_s": round(check, 2),
        "rerun_cpu_s": rerun_cpu,
        "validate_cpu_s": _timed.cpu,  # type: ignore[attr-defined]
    }


def server_alone(tmp: Path) -> float:
    """Seconds from spawning kf2v's temporary Prefect server to its ``/health`` answer."""
    code = (
        "import time\nfrom kf2v_tasks._cli.service import prefect_api\n"
        "with prefect_api() as ready:\n    t = time.monotonic(); ready()\n"
        "    print(time.monotonic() - t)\n"
    )
    env = _env(tmp)
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(run.stderr[-2000:])
    return round(float(run.stdout.split()[-1]), 2)


def server_phases(tmp: Path) -> dict:
    """What the temporary server's start is made of, measured apart in one process on a new
    PREFECT_HOME: importing Prefect's server, then migrating a new SQLite database."""
    code = (
        "import asyncio, time\nt = time.monotonic()\nimport prefect.server.api.server\n"
        "from prefect.server.database import provide_database_interface\n"
        "i = time.monotonic() - t; t = time.monotonic()\n"
        "asyncio.run(provide_database_interface().create_db())\n"
        "print(i, time.monotonic() - t)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], env=_env(tmp), capture_output=True, text=True
    )
    if run.returncode != 0:
        raise RuntimeError(run.stderr[-2000:])
    imports, migrate = (round(float(x), 2) for x in run.stdout.split()[-2:])
    return {"import_s": imports, "migrate_s": migrate}


def _stats(values: list[float]) -> dict:
    return {
        "min": min(values),
        "median": round(statistics.median(values), 2),
        "max": max(values),
        "values": values,
    }


def run(runs: int = 5) -> dict:
    """``runs`` rounds; each figure as min/median/max, and the traces."""
    rounds = []
    load = [round(os.getloadavg()[0], 2)]
    for _ in range(runs):
        tmp = Path(tempfile.mkdtemp(prefix="kf2v-b8-"))
        try:
            rounds.append(one_run(tmp))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix="kf2v-b8-server-"))
    try:
        fresh = server_alone(tmp)
        used = server_alone(tmp)  # the same PREFECT_HOME: its database is migrated now
        phases = server_phases(tmp / "phases")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load.append(round(os.getloadavg()[0], 2))
    return {
        "runs": runs,
        "first_create_s": _stats([r["trace"]["first create"] for r in rounds]),
        "rerun_s": _stats([r["rerun_s"] for r in rounds]),
        "validate_s": _stats([r["validate_s"] for r in rounds]),
        "rerun_cpu_s": _stats([r["rerun_cpu_s"] for r in rounds]),
        "validate_cpu_s": _stats([r["validate_cpu_s"] for r in rounds]),
        "traces": [r["trace"] for r in rounds],
        "server_fresh_home_s": fresh,
        "server_used_home_s": used,
        "server_phases": phases,
        "loadavg": load,
    }


def markdown(b8: dict) -> list[str]:
    """The B8 section of BENCHMARKS.md."""
    L = ["## B8 start-up: a new user's first run, re-run and validate\n"]
    L.append(
        f"{b8['runs']} rounds, each on a new PREFECT_HOME, HOME and output, no key and no "
        "server configured (the built-in simulator at 60×, a temporary Prefect server), "
        "`kf2v run examples/manifest.csv` (4 rows) as a user runs it. First create = `kf2v "
        "run` started → the first task id answered (the ledger's wall-clock record); re-run "
        "= `kf2v run` again with every row kept, whole process; validate = `kf2v validate` "
        f"on the manifest, whole process. Load average (1 min) {b8['loadavg'][0]} → "
        f"{b8['loadavg'][1]}.\n"
    )
    L.append("| figure | target s | min s | median s | max s |")
    L.append("|---|---|---|---|---|")
    for key, name, target in (
        ("first_create_s", "first create after `kf2v run`", 3.0),
        ("rerun_s", "re-run, every row kept", 2.0),
        ("validate_s", "`kf2v validate`", 1.5),
    ):
        s = b8[key]
        L.append(f"| {name} | ≤ {target:g} | {s['min']} | {s['median']} | {s['max']} |")
    L.append("")
    if "rerun_cpu_s" in b8:  # what the process itself spends, whatever else runs
        L.append(
            "CPU seconds (user + sys) of the whole process, min / median / max: re-run "
            + " / ".join(str(b8["rerun_cpu_s"][k]) for k in ("min", "median", "max"))
            + "; validate "
            + " / ".join(str(b8["validate_cpu_s"][k]) for k in ("min", "median", "max"))
            + ".\n"
        )
    L.append("Each first run's trace, seconds after `kf2v run` started:\n")
    phases = ["simulator up", "server slow", "plan printed", "first create", "end"]
    L.append("| round | " + " | ".join(phases) + " |")
    L.append("|---" * (len(phases) + 1) + "|")
    for i, t in enumerate(b8["traces"]):
        L.append(f"| {i + 1} | " + " | ".join(str(t.get(p, "–")) for p in phases) + " |")
    L.append("")
    L.append(
        f"The temporary Prefect server alone (spawn → `/health`): {b8['server_fresh_home_s']} s "
        f"on a new PREFECT_HOME, {b8['server_used_home_s']} s on the same home again (its "
        "SQLite database migrated)"
        + (
            f"; measured apart in one process, importing Prefect's server takes "
            f"{b8['server_phases']['import_s']} s and migrating a new database "
            f"{b8['server_phases']['migrate_s']} s"
            if "server_phases" in b8
            else ""
        )
        + ". The first create does not wait for the server: once the simulator is up, the "
        "run plans the manifest, says its plan and estimate (*plan printed*), and each lane "
        "sends its first creates; the flow picks those tasks up when the server is ready "
        "(*simulator up* includes importing Prefect, which the credentials block needs).\n"
    )
    return L


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    result = run(ap.parse_args().runs)
    print(json.dumps(result, indent=1), file=sys.stderr)
    print("\n".join(markdown(result)))


if __name__ == "__main__":
    main()
