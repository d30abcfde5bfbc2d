"""Look-ahead: tasks queued at the service beyond the running slots, and never paid for idly.

Against the simulator in both of its modes past the account's concurrency: ``queue``
(extra tasks wait PENDING, as the service does for some models) and ``reject`` (429 on the
create). On an ephemeral Prefect server, over real HTTP.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kf2v_flows.batch import generate_batch
from kf2v_tasks import clock
from kf2v_tasks.batch.config import ConcurrencySettings
from kf2v_tasks.batch.results import from_csv
from kf2v_tasks.errors import ThrottledError
from kf2v_tasks.lanes.lookahead import LookAhead, is_concurrency_refusal
from kf2v_tasks.simulator import RuntimeDistribution, SimulatorConfig, run_simulator

from conftest import TEST_API_KEY
from helpers import SPEED, make_pairs, manifest_text, pointed_at

REPO = Path(__file__).resolve().parents[1]


def _sim(mode: str, runtime: float = 60.0):
    return run_simulator(
        SimulatorConfig(
            speed=SPEED,
            runtime=RuntimeDistribution(kind="fixed", low=runtime),
            render="tiny",
            max_concurrent=2,
            concurrency_mode=mode,
            submits_per_second=20,
            queries_per_second=200,
            seed=13,
        )
    )


def _manifest(folder: Path, n: int) -> Path:
    pairs = make_pairs(folder, n)
    rows = [{"id": f"r{i}", "first_frame": a, "last_frame": b} for i, (a, b) in enumerate(pairs)]
    path = folder / "m.csv"
    path.write_text(manifest_text(rows, ["id", "first_frame", "last_frame"]))
    return path


def _quota(queue_ahead: int) -> ConcurrencySettings:
    return ConcurrencySettings(
        max_in_flight=2, queue_ahead=queue_ahead, submits_per_second=20, queries_per_second=200
    )


# ----------------------------------------------------------------------------- units


def test_the_queue_clock_runs_only_while_a_running_slot_is_free():
    clock.set_time_scale(1000.0)
    try:
        ahead = LookAhead(running=2, queue_ahead=1)
        ahead.seen("a", "RUNNING")
        ahead.seen("b", "RUNNING")
        ahead.seen("c", "PENDING")
        t0 = ahead.now()
        time.sleep(0.05)  # 50 service seconds behind our own running tasks: explained
        assert ahead.now() - t0 < 1.0
        ahead.seen("a", "SUCCEEDED")  # a slot is free and c still waits: that counts
        time.sleep(0.05)
        assert ahead.now() - t0 >= 40.0
    finally:
        clock.set_time_scale(None)


def test_a_concurrency_refusal_is_told_apart_from_the_rate_and_switches_look_ahead_off():
    shrunk = []
    ahead = LookAhead(running=2, queue_ahead=1, on_fall_back=shrunk.append)
    rate = ThrottledError("Throttling.RateQuota", "rate", status_code=429)
    busy = ThrottledError("Throttling", "too many tasks", status_code=429)
    assert not is_concurrency_refusal(rate) and is_concurrency_refusal(busy)
    ahead.seen("a", "RUNNING")
    assert not ahead.refuses(busy)  # only one of ours there: a plain 429, retried
    ahead.seen("b", "RUNNING")
    assert not ahead.refuses(rate)
    assert ahead.refuses(busy) and not ahead.active
    assert len(shrunk) == 1 and "refused" in ahead.fell_back
    assert not ahead.refuses(busy)  # once


# ----------------------------------------------------------------------- on the service


@pytest.mark.usefixtures("prefect_server")
async def test_queue_ahead_keeps_the_next_task_waiting_at_the_service(tmp_path, monkeypatch):
    # 2 real s per task: long enough that a create made late on a loaded machine (4 test
    # workers on 2 cores) still finds the lane busy and waits at the service.
    with _sim("queue", runtime=1200.0) as sim, pointed_at(sim, monkeypatch):
        manifest = _manifest(tmp_path / "in", 8)
        summary = await generate_batch(str(manifest), str(tmp_path / "out"), concurrency=_quota(2))
        tasks = sim.tasks()
        stats = sim.stats()
    assert summary.counts == {"succeeded": 8} and summary.look_ahead_off is None
    assert stats["creates"] == 8 and stats["peak_concurrency"] == 2
    # The simulator's task times are real seconds: a run lasts 1200 / SPEED = 2 s. Every
    # task after the first two waited at the service and started the moment a running one
    # ended: no hand-off gap for our poll interval, our next create or the service's queue.
    run = 1200.0 / SPEED
    starts = sorted(t["started"] for t in tasks)
    ends = sorted(t["ended"] for t in tasks)
    queued = [t for t in tasks if t["started"] - t["created"] > run / 2]
    assert len(queued) >= 4, tasks
    for start in starts[2:]:
        assert min(abs(start - e) for e in ends) < run / 10, (start, ends)


@pytest.mark.usefixtures("prefect_server")
async def test_a_service_that_refuses_queued_tasks_gets_none_and_the_run_says_so_once(
    tmp_path, monkeypatch, caplog
):
    with _sim("reject", runtime=1200.0) as sim, pointed_at(sim, monkeypatch):
        manifest = _manifest(tmp_path / "in", 5)
        summary = await generate_batch(str(manifest), str(tmp_path / "out"), concurrency=_quota(1))
        stats = sim.stats()
    assert summary.counts == {"succeeded": 5}
    assert summary.look_ahead_off and "refused" in summary.look_ahead_off, (
        stats,
        caplog.text[-3000:],
    )
    assert stats["creates"] == 5 and stats["peak_concurrency"] == 2
    # One refusal switched look-ahead off; no create was retried into the wall after it.
    assert stats["throttled_by_endpoint"].get("create", 0) <= 2
    assert caplog.text.count("look-ahead off for this run") == 1


@pytest.mark.usefixtures("prefect_server")
async def test_without_look_ahead_nothing_waits_at_the_service(tmp_path, monkeypatch):
    with _sim("reject") as sim, pointed_at(sim, monkeypatch):
        manifest = _manifest(tmp_path / "in", 4)
        summary = await generate_batch(str(manifest), str(tmp_path / "out"), concurrency=_quota(0))
        stats = sim.stats()
    assert summary.counts == {"succeeded": 4} and summary.look_ahead_off is None
    assert stats["throttled"] == 0


# ----------------------------------------------------------------- stopping early


def _run_cli(manifest: Path, out: Path, sim, log: Path) -> subprocess.Popen:
    """Run a batch in its own process group, its output in ``log``.

    A file, not a pipe: a process stopped by a signal can leave Prefect's temporary server
    behind holding a pipe open (see _stop_group).
    """
    env = dict(
        os.environ,
        DASHSCOPE_API_KEY=TEST_API_KEY,
        DASHSCOPE_HTTP_BASE_URL=sim.base_url,
        KF2V_TIME_SCALE=str(SPEED),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    code = (
        "import sys, asyncio, faulthandler, signal\n"
        "faulthandler.register(signal.SIGUSR1, all_threads=True)\n"
        "from kf2v_flows.batch import generate_batch\n"
        "from kf2v_tasks.batch.config import ConcurrencySettings\n"
        "q = ConcurrencySettings(max_in_flight=2, queue_ahead=2, submits_per_second=20,"
        " queries_per_second=200)\n"
        "asyncio.run(generate_batch(sys.argv[1], sys.argv[2], concurrency=q))\n"
    )
    with open(log, "w") as sink:
        return subprocess.Popen(
            [sys.executable, "-c", code, str(manifest), str(out)],
            cwd=REPO,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )


def _stop_group(proc: subprocess.Popen) -> None:
    """Kill whatever is left of the run's process group (e.g. an orphaned temporary server)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def _wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def _pending(sim) -> int:
    return sim.stats()["pending"]


def _recorded_tasks(out: Path) -> int:
    """Ledger records under ``out`` that name their task."""
    count = 0
    for path in (out / ".kf2v" / "ledger").glob("*.json"):
        try:
            count += bool(json.loads(path.read_text()).get("task_id"))
        except (OSError, ValueError):  # being replaced right now
            pass
    return count


@pytest.mark.slow  # real kf2v processes on a real Prefect server
def test_sigterm_cancels_the_queued_tasks_and_says_so_in_results(tmp_path):
    log = tmp_path / "run.log"
    with _sim("queue", runtime=3000.0) as sim:  # 5 s real: still queued when cancelled
        manifest = _manifest(tmp_path / "in", 6)
        proc = _run_cli(manifest, tmp_path / "out", sim, log)
        try:
            # 2 running, 2 queued ahead, every create answered (one still on the wire when
            # asyncio.run tears down is ambiguous; test_stopping covers the others).
            _wait_for(lambda: _pending(sim) == 2 and _recorded_tasks(tmp_path / "out") == 4)
            os.kill(proc.pid, signal.SIGTERM)  # as a supervisor stops a process
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGUSR1)  # faulthandler: every thread's stack
                time.sleep(2)
                raise
        finally:
            _stop_group(proc)
        stats = sim.stats()
        rows = sim.tasks()
    output = log.read_text()
    assert stats["pending"] == 0, output  # nothing left waiting to be billed
    cancelled = [t for t in rows if t["status"] == "CANCELED"]
    assert len(cancelled) == 2 and all(t["started"] is None for t in cancelled), (rows, output)
    assert "cancelled 2 queued task(s)" in output
    results = from_csv((tmp_path / "out" / "results.csv").read_text())
    assert sorted(r.status.value for r in results).count("cancelled") == 2, output
    assert TEST_API_KEY not in output


@pytest.mark.slow  # real kf2v processes on a real Prefect server
def test_after_a_sigkill_the_next_run_reattaches_to_the_queued_tasks(tmp_path):
    with _sim("queue", runtime=120.0) as sim:
        manifest = _manifest(tmp_path / "in", 4)
        proc = _run_cli(manifest, tmp_path / "out", sim, tmp_path / "first.log")
        try:
            # 2 running, 2 queued, and the ledger has every answer: a SIGKILL between the
            # service's answer and its record is an ambiguous create (a guarded retry,
            # tested in test_reliability_crash), not what this test is about.
            _wait_for(lambda: _recorded_tasks(tmp_path / "out") == 4)
        finally:
            _stop_group(proc)  # SIGKILL, the run's temporary server with it
        again = _run_cli(manifest, tmp_path / "out", sim, tmp_path / "again.log")
        try:
            again.wait(timeout=180)
        finally:
            _stop_group(again)
        stats = sim.stats()
    output = (tmp_path / "again.log").read_text()
    assert again.returncode == 0, output
    assert stats["creates"] == 4  # the queued tasks were picked up, not created again
    results = from_csv((tmp_path / "out" / "results.csv").read_text())
    assert [r.status.value for r in results] == ["succeeded"] * 4
    assert sum(r.reattached for r in results) == 4


@pytest.mark.usefixtures("prefect_server")
async def test_a_budget_stop_leaves_nothing_queued_and_pays_only_what_fits(tmp_path, monkeypatch):
    """Look-ahead creates go through the same budget: a task queued ahead fits max_cost."""
    from kf2v_tasks.batch.manifest import RowDefaults
    from kf2v_tasks.dashscope.models import Resolution
    from kf2v_tasks.errors import BatchFailedError

    with _sim("queue", runtime=300.0) as sim, pointed_at(sim, monkeypatch):
        manifest = _manifest(tmp_path / "in", 6)
        with pytest.raises(BatchFailedError) as info:
            await generate_batch(
                str(manifest),
                str(tmp_path / "out"),
                defaults=RowDefaults(resolution=Resolution.P480),  # 0.50 per row
                max_cost=1.6,
                concurrency=_quota(2),
            )
        stats = sim.stats()
    summary = info.value.summary
    assert summary.counts == {"succeeded": 3, "over_budget": 3}
    assert stats["creates"] == 3 and stats["pending"] == 0 and stats["running"] == 0
    assert summary.spent <= 1.6


@pytest.mark.slow  # real kf2v processes on a real Prefect server
def test_a_prefect_cancellation_cancels_the_queued_tasks(tmp_path):
    """Cancel a deployment's flow run from the API, as the UI's Cancel button does."""
    import asyncio

    from test_deployments import CREDENTIALS_BLOCK, POOL, diagnostics, save_blocks, wait_final

    from kf2v_tasks._cli.stack import LocalStack, api, free_port

    with (
        _sim("queue", runtime=3000.0) as sim,
        LocalStack(home=tmp_path / "home", prefect_port=free_port(), ui=False) as stack,
    ):
        stack.start_server()
        stack.prepare(pool=POOL)
        with api(stack.api_url):
            asyncio.run(save_blocks(sim.base_url, {}))
        stack.deploy(REPO)
        stack.start_worker(POOL, name="kf2v-test-cancel", limit=1, env={"KF2V_TIME_SCALE": "600"})
        manifest = _manifest(tmp_path / "in", 6)

        async def scenario():
            from prefect.client.orchestration import get_client
            from prefect.deployments import run_deployment
            from prefect.states import Cancelling

            async with get_client() as client:
                run = await run_deployment(
                    "kf2v-generate-batch/batch",
                    parameters={
                        "manifest": str(manifest),
                        "output": str(tmp_path / "out"),
                        "concurrency": {
                            "max_in_flight": 2,
                            "queue_ahead": 2,
                            "submits_per_second": 20.0,
                            "queries_per_second": 200.0,
                        },
                        "credentials_block": CREDENTIALS_BLOCK,
                    },
                    timeout=0,
                )
                deadline = time.monotonic() + 120
                # The account's limit (kf2v stack: 2 running + the default look-ahead of 1)
                # holds over the run's own queue_ahead of 2.
                while sim.stats()["pending"] < 1:
                    assert time.monotonic() < deadline, diagnostics(stack, "never queued")
                    await asyncio.sleep(0.2)
                queued = sim.stats()["pending"]
                await client.set_flow_run_state(run.id, Cancelling(), force=True)
                return queued, await wait_final(client, run.id, stack, 120)

        with api(stack.api_url):
            queued, final = asyncio.run(scenario())
        stats = sim.stats()
        rows = sim.tasks()
    assert final.state.is_cancelled(), diagnostics(stack, str(final.state))
    assert stats["pending"] == 0, diagnostics(stack, str(stats))
    cancelled = [t for t in rows if t["status"] == "CANCELED"]
    assert len(cancelled) == queued and all(t["started"] is None for t in cancelled)
    # Under a worker too, results.csv says what is left and no claim outlives the run.
    results = from_csv((tmp_path / "out" / "results.csv").read_text())
    assert len(results) == 6 and {r.status.value for r in results} <= {
        "succeeded", "cancelled", "not_run"
    }, results  # fmt: skip
    assert sum(r.status.value == "cancelled" for r in results) == queued
    assert not list((tmp_path / "out" / ".kf2v" / "claims").glob("*.json"))
