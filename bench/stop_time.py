"""Ctrl-C mid-run: seconds from SIGINT (to the whole process group, as a terminal sends it)
to the exit of ``kf2v run``, as a new user meets it: a fresh PREFECT_HOME, no Prefect
server configured, no key (the built-in simulator). Each run gets the signal once the flow
run is at work (its third create, past the tasks created while the server starts).

    python -m bench.stop_time --runs 5

Prints one line per run and min / median / max; exits 1 if a run did not exit 130 or
left no results.csv.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rows", type=int, default=6)
    args = parser.parse_args()
    times, ok = [], True
    for i in range(args.runs):
        seconds, code, written = one_run(args.rows)
        times.append(seconds)
        ok = ok and code == 130 and written
        print(f"run {i + 1}: exit {code} after {seconds:.2f} s; results.csv written: {written}")
    print(
        f"Ctrl-C to exit over {args.runs} runs: min {min(times):.2f} s, "
        f"median {statistics.median(times):.2f} s, max {max(times):.2f} s "
        f"(load average {os.getloadavg()[0]:.2f})"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
