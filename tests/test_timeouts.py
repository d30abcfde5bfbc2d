"""Deadlines: a task stuck PENDING is cancelled; one stuck RUNNING is reported with its
status history and can be resumed later without a second create."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kf2v_tasks.batch.config import PollingSettings  # noqa: E402
from kf2v_tasks.dashscope.models import TaskStatus  # noqa: E402
from kf2v_tasks.dashscope.polling import PollSchedule, wait_for_task  # noqa: E402
from kf2v_tasks.errors import QueueTimeoutError, TaskTimeoutError  # noqa: E402
from kf2v_tasks.simulator import RuntimeDistribution, SimulatorConfig  # noqa: E402
from reliability.harness import (  # noqa: E402
    make_dataset,
    read_ledger,
    read_results,
    run_batch,
    simulated_service,
)

from conftest import TEST_API_KEY  # noqa: E402

SPEED = 600.0
FAST = PollSchedule(first_poll=5, pending_interval=10, expected_min_runtime=30, min_interval=5)


def _cfg(runtime: float, max_concurrent: int = 1) -> SimulatorConfig:
    return SimulatorConfig(
        speed=SPEED,
        max_concurrent=max_concurrent,
        runtime=RuntimeDistribution(kind="fixed", low=runtime),
        render="tiny",
        seed=3,
        api_key=TEST_API_KEY,
    )


@pytest.fixture
def no_poll_retry_delay(monkeypatch):
    """Prefect's own retry delays of the poll task are real seconds (5, 30, 60): drop them
    so a deadline test takes seconds even if a retry happened."""
    import kf2v_tasks.tasks as tasks_mod

    monkeypatch.setattr(
        tasks_mod, "poll_until_done", tasks_mod.poll_until_done.with_options(retry_delay_seconds=0)
    )


# ----------------------------------------------------------------- PENDING past the queue deadline


@pytest.mark.usefixtures("prefect_server")
async def test_pending_past_queue_deadline_is_cancelled(tmp_path: Path) -> None:
    """One service slot, a long first task: the second row waits PENDING past the queue
    deadline and is cancelled (never billed); the first still succeeds."""
    manifest = make_dataset(tmp_path / "data", 2, seed=1)
    out = tmp_path / "out"
    polling = PollingSettings(deadline_seconds=5000, queue_deadline_seconds=400, schedule=FAST)
    with simulated_service(_cfg(runtime=1200)) as sim:
        # In-process limit only: both rows must reach the one service slot at once.
        await run_batch(manifest, out, max_in_flight=2, global_limit=None, polling=polling)
        stats, tasks = sim.stats(), sim.tasks()
    rows = read_results(out)
    # Both rows start together; whichever the service queued second is the late one.
    (done,) = [r for r in rows if r["status"] == "succeeded"]
    (late,) = [r for r in rows if r is not done]
    assert late["status"] == "failed" and late["error_code"] == "QueueTimeoutError", late
    assert "PENDING" in late["error_message"] and "cancelled" in late["error_message"]
    sim_status = {t["task_id"]: t["status"] for t in tasks}
    assert sim_status[late["task_id"]] == "CANCELED"
    assert stats["cancels"] >= 1 and stats["creates"] == 2
    rec = next(r for r in read_ledger(out).values() if r["row_id"] == late["id"])
    assert rec["terminal_status"] == "CANCELED"  # never reused; a re-run creates afresh


async def test_wait_for_task_cancels_pending_with_history() -> None:
    from kf2v_tasks.credentials import resolve_credentials

    with simulated_service(_cfg(runtime=5000)) as sim:
        async with resolve_credentials(None).get_client() as client:
            from simulator.simkit import FIRST, LAST, data_uri

            from kf2v_tasks.dashscope.models import Kf2vRequest

            blocker = await client.create_task(
                Kf2vRequest(
                    first_frame_url=data_uri(FIRST), last_frame_url=data_uri(LAST), prompt="a"
                )
            )
            queued = await client.create_task(
                Kf2vRequest(
                    first_frame_url=data_uri(FIRST), last_frame_url=data_uri(LAST), prompt="b"
                )
            )
            with pytest.raises(QueueTimeoutError) as info:
                await wait_for_task(
                    client, queued.task_id, schedule=FAST, queue_deadline=300, deadline=9000
                )
        statuses = {t["task_id"]: t["status"] for t in sim.tasks()}
    assert [h.status for h in info.value.history] == [TaskStatus.PENDING, TaskStatus.CANCELED]
    assert statuses[queued.task_id] == "CANCELED" and statuses[blocker.task_id] == "RUNNING"


# ------------------------------------------------------------- RUNNING past the total deadline


async def test_wait_for_task_times_out_running_with_history() -> None:
    from simulator.simkit import FIRST, LAST, data_uri

    from kf2v_tasks.credentials import resolve_credentials
    from kf2v_tasks.dashscope.models import Kf2vRequest

    with simulated_service(_cfg(runtime=5000)):
        async with resolve_credentials(None).get_client() as client:
            task = await client.create_task(
                Kf2vRequest(
                    first_frame_url=data_uri(FIRST), last_frame_url=data_uri(LAST), prompt="a"
                )
            )
            t0 = time.monotonic()
            with pytest.raises(TaskTimeoutError) as info:
                await wait_for_task(
                    client, task.task_id, schedule=FAST, deadline=600, queue_deadline=300
                )
            elapsed = time.monotonic() - t0
    err = info.value
    assert err.task_id == task.task_id
    assert [h.status for h in err.history] == [TaskStatus.RUNNING]
    assert "RUNNING" in str(err) and "re-attach" in str(err)
    assert elapsed < 600 / SPEED + 1.0  # woke at the deadline, did not oversleep


@pytest.mark.usefixtures("prefect_server", "no_poll_retry_delay")
async def test_running_past_deadline_then_resume_reattaches_without_second_create(
    tmp_path: Path,
) -> None:
    manifest = make_dataset(tmp_path / "data", 2, seed=2)
    out = tmp_path / "out"
    short = PollingSettings(deadline_seconds=300, queue_deadline_seconds=3000, schedule=FAST)
    with simulated_service(_cfg(runtime=1500, max_concurrent=2)) as sim:
        await run_batch(manifest, out, max_in_flight=2, polling=short)
        first = {r["id"]: r for r in read_results(out)}
        creates = sim.stats()["creates"]
        for r in first.values():
            assert r["status"] == "failed" and r["error_code"] == "TaskTimeoutError", r
            assert r["task_id"] and "RUNNING" in r["error_message"]
        # Later (the tasks finish 1500 service seconds after creation): resume.
        await asyncio.sleep(1500 / SPEED + 0.5)
        await run_batch(manifest, out, max_in_flight=2, polling=short)
        stats = sim.stats()
    second = {r["id"]: r for r in read_results(out)}
    assert stats["creates"] == creates == 2  # no second create
    for rid, r in second.items():
        assert r["status"] == "succeeded" and r["reattached"] == "True", r
        assert r["task_id"] == first[rid]["task_id"]


@pytest.mark.usefixtures("prefect_server", "no_poll_retry_delay")
async def test_timed_out_row_reports_its_status_history(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path / "data", 1, seed=3)
    out = tmp_path / "out"
    short = PollingSettings(deadline_seconds=300, queue_deadline_seconds=3000, schedule=FAST)
    with simulated_service(_cfg(runtime=5000)):
        await run_batch(manifest, out, max_in_flight=1, polling=short)
    (row,) = read_results(out)
    (rec,) = read_ledger(out).values()
    reported = row["error_message"] + str(rec.get("events")) + str(rec.get("extra"))
    assert "history" in reported.lower() and "RUNNING" in reported


def test_poll_task_does_not_retry_a_deadline_timeout() -> None:
    """The client's RetryPolicy is the only retry layer: a poll task that hit its
    deadline is not run again by Prefect (which would restart the deadline)."""
    from kf2v_tasks.tasks import apoll_until_done, poll_until_done

    for poll in (apoll_until_done, poll_until_done):
        assert not poll.retries, poll.name
        assert poll.retry_condition_fn is None, poll.name
