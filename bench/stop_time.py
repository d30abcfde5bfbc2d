"""B9 Ctrl-C mid-run: seconds from SIGINT (to the whole process group, as a terminal sends it)
to the exit of ``kf2v run``, as a new user meets it: a fresh PREFECT_HOME, no Prefect
server configured, no key (the built-in simulator). Each run gets the signal once the flow
run is at work (its third create, past the tasks created while the server starts).

    python -m bench.run --only b9       # into BENCHMARKS.md
    python -m bench.stop_time --runs 5  # alone: one line per run and min / median / max

Alone, it exits 1 if a run did not exit 130 or left no results.csv.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def _manifest(folder: Path, rows: int) -> None:
    """``rows`` rows over the example frames (distinct seeds: distinct work)."""
    shutil.copytree(ROOT / "examples" / "frames", folder / "frames")
    lines = ["id,first_frame,last_frame,prompt,seed"]
    pairs = [("sunrise_first", "sunrise_last"), ("orbit_first", "orbit_last")]
    for i in range(rows):
        a, b = pairs[i % len(pairs)]
        lines.append(f"r{i},frames/{a}.jpg,frames/{b}.jpg,clip {i},{100 + i}")
    (folder / "m.csv").write_text("\n".join(lines) + "\n")


def one_run(rows: int) -> tuple[float, int, bool]:
    """(seconds from SIGINT to exit, exit code, results.csv written)."""
    folder = Path(tempfile.mkdtemp(prefix="kf2v-stop-"))
    try:
        _manifest(folder, rows)
        env = dict(os.environ, PREFECT_HOME=str(folder / "prefect"))
        for name in ("DASHSCOPE_API_KEY", "DASHSCOPE_HTTP_BASE_URL", "PREFECT_API_URL"):
            env.pop(name, None)
        proc = subprocess.Popen(
            [sys.executable, "-m", "kf2v_tasks", "run", "m.csv", "--output", "out"],
            cwd=folder,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
        reader.start()
        url = None
        while proc.poll() is None:
            if url is None:
                found = re.search(r"simulator at (http://\S+)/api/v1", "".join(lines))
                url = found.group(1) if found else None
            elif httpx.get(f"{url}/_sim/stats", timeout=5).json()["creates"] >= 3:
                break
            time.sleep(0.05)
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=300)
        seconds = time.monotonic() - sent
        return seconds, code, (folder / "out" / "results.csv").exists()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(runs: int, rows: int = 6) -> dict:
    """``runs`` stopped runs: each one's seconds, exit code and whether results.csv exists."""
    start = round(os.getloadavg()[0], 2)
    seconds, codes, written = [], [], []
    for _ in range(runs):
        s, code, ok = one_run(rows)
        seconds.append(round(s, 2))
        codes.append(code)
        written.append(ok)
    return {
        "runs": runs,
        "rows": rows,
        "seconds": seconds,
        "codes": codes,
        "written": written,
        **{
            k: round(f(seconds), 2)
            for k, f in (("min", min), ("median", statistics.median), ("max", max))
        },
        "loadavg": [start, round(os.getloadavg()[0], 2)],
    }


def markdown(b9: dict) -> list[str]:
    """The B9 section of BENCHMARKS.md."""
    return [
        "## B9 Ctrl-C mid-run: how long `kf2v run` takes to stop\n",
        f"{b9['runs']} runs, each a new user's `kf2v run` of {b9['rows']} rows (a new "
        "PREFECT_HOME, no server configured, no key: the built-in simulator and the temporary "
        "Prefect server), SIGINT to the whole process group (as a terminal sends it) once the "
        "flow run has made its third create; seconds from the signal to the exit. Exit codes "
        f"{sorted(set(b9['codes']))}; results.csv written by {sum(b9['written'])} of "
        f"{b9['runs']}. Load average (1 min) {b9['loadavg'][0]} → {b9['loadavg'][1]}. "
        "Before issue 25 the same stop took 65-146 s and ended 1, retrying against a server "
        "the Ctrl-C had stopped first.\n",
        "| figure | target s | min s | median s | max s | each run s |",
        "|---|---|---|---|---|---|",
        f"| Ctrl-C → exit | ≤ 5 | {b9['min']} | {b9['median']} | {b9['max']} | "
        + ", ".join(str(x) for x in b9["seconds"])
        + " |",
        "",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rows", type=int, default=6)
    args = parser.parse_args()
    b9 = run(args.runs, args.rows)
    for i, (s, code, ok) in enumerate(zip(b9["seconds"], b9["codes"], b9["written"], strict=True)):
        print(f"run {i + 1}: exit {code} after {s:.2f} s; results.csv written: {ok}")
    print(
        f"Ctrl-C to exit over {b9['runs']} runs: min {b9['min']:.2f} s, median "
        f"{b9['median']:.2f} s, max {b9['max']:.2f} s (load average {b9['loadavg'][1]:.2f})"
    )
    return 0 if set(b9["codes"]) == {130} and all(b9["written"]) else 1


if __name__ == "__main__":
    sys.exit(main())
