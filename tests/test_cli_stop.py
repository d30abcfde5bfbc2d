"""Ctrl-C and SIGTERM to a real ``kf2v run``, sent to its whole process group as a terminal
sends it, mid-run: the command exits 130 / 143 within seconds, results.csv says what is
left, Prefect says nothing about a server going away, and the re-run pays for nothing
twice (tasks that started, counted at the simulator). No Prefect server is configured:
the command starts its own temporary one, as for a new user."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from kf2v_tasks.simulator import RuntimeDistribution, SimulatorConfig, run_simulator

from conftest import TEST_API_KEY
from helpers import make_pairs, manifest_text

ROWS = 6
SPEED = 30.0  # a task runs 2 s: the signal lands while some run and some wait
#: Real seconds from the signal to the exit: the target is 5 s on 2 idle cores.
STOP_BOUND = 15.0
NOISE = ("Error logging to API", "All connection attempts failed", "EventsWorker", "Traceback")


def user_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A new user's shell: a fresh HOME and PREFECT_HOME, no Prefect server configured."""
    (tmp_path / "home").mkdir(exist_ok=True)
    env = dict(os.environ, HOME=str(tmp_path / "home"), PREFECT_HOME=str(tmp_path / "prefect"))
    for name in ("DASHSCOPE_API_KEY", "DASHSCOPE_HTTP_BASE_URL", "KF2V_TIME_SCALE"):
        env.pop(name, None)
    env.pop("PREFECT_API_URL", None)
    env.update(extra)
    return env


def write_manifest(tmp_path: Path) -> list[str]:
    pairs = make_pairs(tmp_path, ROWS)
    rows = [
        {"id": f"r{i}", "first_frame": a, "last_frame": b, "prompt": f"clip {i}"}
        for i, (a, b) in enumerate(pairs)
    ]
    (tmp_path / "m.csv").write_text(manifest_text(rows))
    return [r["id"] for r in rows]


def start_run(tmp_path: Path, env: dict, log: str) -> tuple[subprocess.Popen, Path]:
    """``kf2v run`` in a session of its own, as a shell starts a foreground job."""
    err = tmp_path / log
    with open(err, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kf2v_tasks", "run", "m.csv", "--output", "out"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=out,
            start_new_session=True,
        )
    return proc, err


def wait_until(check, proc: subprocess.Popen, err: Path, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert proc.poll() is None, f"kf2v run ended early:\n{err.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"not reached in {timeout}s:\n{err.read_text()}"
        time.sleep(0.1)


def stop_mid_run(proc: subprocess.Popen, err: Path, sig: int, created) -> float:
    """Send ``sig`` to the run's process group once it has created tasks; seconds to exit."""
    wait_until(lambda: created() >= 3, proc, err)  # the flow run is at work
    sent = time.monotonic()
    os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:  # pragma: no cover - only when the test fails
            os.killpg(proc.pid, signal.SIGKILL)
    return time.monotonic() - sent


def results(tmp_path: Path) -> dict[str, dict]:
    text = (tmp_path / "out" / "results.csv").read_text()
    return {r["id"]: r for r in csv.DictReader(io.StringIO(text))}


def check_stopped(tmp_path: Path, err: Path, ids: list[str], seconds: float, code: int, rc):
    stderr = err.read_text()
    assert rc == code, stderr[-3000:]
    assert seconds < STOP_BOUND, (seconds, stderr[-3000:])
    assert not [n for n in NOISE if n in stderr], stderr[-3000:]
    rows = results(tmp_path)
    assert sorted(rows) == ids
    for r in rows.values():
        assert r["status"] in {"succeeded", "not_run", "cancelled"}, r
        if r["status"] == "not_run":
            assert "interrupted" in r["error_message"], r
            # Whether a task exists at the service: its id, or "before it was submitted".
            assert r["task_id"] or "before it was submitted" in r["error_message"], r
    claims = tmp_path / "out" / ".kf2v" / "claims"
    assert not list(claims.glob("*.json")) if claims.exists() else True  # released


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_to_the_process_group_stops_the_run_and_the_rerun_pays_nothing_twice(
    tmp_path, sig, code
):
    ids = write_manifest(tmp_path)
    cfg = SimulatorConfig(
        speed=SPEED, runtime=RuntimeDistribution(kind="fixed", low=60), render="tiny"
    )
    with run_simulator(cfg) as sim:  # outlives both runs: its tasks are still there
        env = user_env(
            tmp_path,
            DASHSCOPE_API_KEY=TEST_API_KEY,
            DASHSCOPE_HTTP_BASE_URL=sim.base_url,
            KF2V_TIME_SCALE=f"{SPEED:g}",
        )
        proc, err = start_run(tmp_path, env, "first.log")
        seconds = stop_mid_run(proc, err, sig, lambda: sim.stats()["creates"])
        check_stopped(tmp_path, err, ids, seconds, code, proc.returncode)

        again, err2 = start_run(tmp_path, env, "again.log")
        assert again.wait(timeout=300) == 0, err2.read_text()[-3000:]
        tasks = sim.tasks()
    # Every row made: now, or kept by the stopped run before the signal (a loaded machine).
    assert {r["status"] for r in results(tmp_path).values()} <= {"succeeded", "skipped"}
    # Paid = started at the service (a task cancelled while queued is never billed).
    paid = Counter(t["fingerprint"] for t in tasks if t["started"] is not None)
    assert paid and max(paid.values()) == 1, (paid, tasks)
    assert len(paid) == ROWS


def test_ctrl_c_on_the_built_in_simulator_then_a_rerun_makes_every_row(tmp_path):
    """Its tasks end with it: the re-run creates what the new one does not know, and no
    claim of the stopped run is in its way."""
    ids = write_manifest(tmp_path)
    env = user_env(tmp_path)
    proc, err = start_run(tmp_path, env, "first.log")

    def created() -> int:
        for line in err.read_text().splitlines():
            if "built-in DashScope simulator at " in line:
                url = line.split(" at ", 1)[1].split()[0].removesuffix("/api/v1")
                try:
                    return httpx.get(f"{url}/_sim/stats", timeout=2).json()["creates"]
                except httpx.HTTPError:
                    return 0
        return 0

    seconds = stop_mid_run(proc, err, signal.SIGINT, created)
    check_stopped(tmp_path, err, ids, seconds, 130, proc.returncode)
    again, err2 = start_run(tmp_path, env, "again.log")
    assert again.wait(timeout=300) == 0, err2.read_text()[-3000:]
    # Every row made: now, or kept by the stopped run before the signal (a loaded machine).
    assert {r["status"] for r in results(tmp_path).values()} <= {"succeeded", "skipped"}
    rerun = err2.read_text()
    assert "ClaimHeld" not in rerun
    assert "left at its built-in simulator ended with it" in rerun  # said, in one line
