"""A paid video is never given up on: its download outlasts transient failures (issue 25 #8).

Over real HTTP against the simulator: a task is created and polled on the service's own
clock, then its download meets a wall of 503s far longer than the old budget of 6
requests. The download's waits run on a fake service clock (``kf2v_tasks.clock.sleep``
and ``now`` swapped), so hours of backoff take no real time; the simulator's faults are
switched off after a number of those waits, as a service that recovers.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image

from kf2v_tasks import clock
from kf2v_tasks.dashscope.client import Kf2vClient
from kf2v_tasks.dashscope.models import GenerationOptions, Kf2vRequest, TaskStatus
from kf2v_tasks.dashscope.polling import wait_for_task
from kf2v_tasks.errors import DownloadError
from kf2v_tasks.generation.link_life import (
    MIN_DOWNLOAD_PATIENCE,
    download_patience,
    link_expiry,
    rerun_by,
)
from kf2v_tasks.generation.persist import persist_task_video
from kf2v_tasks.generation.submit import Submission

from conftest import TEST_API_KEY

simulator = pytest.importorskip("kf2v_tasks.simulator")
FaultConfig = simulator.FaultConfig
RuntimeDistribution = simulator.RuntimeDistribution
SimulatorConfig = simulator.SimulatorConfig
run_simulator = simulator.run_simulator

SPEED = 600.0
OPTIONS = GenerationOptions(model="wan2.2-kf2v-flash", resolution="480P")


def _data_uri(color: tuple[int, int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (320, 240), color).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(autouse=True)
def scaled() -> Iterator[None]:
    clock.set_time_scale(SPEED)
    yield
    clock.set_time_scale(None)


@pytest.fixture
def sim() -> Iterator[object]:
    cfg = SimulatorConfig(
        speed=SPEED, render="tiny", runtime=RuntimeDistribution(kind="fixed", low=5)
    )
    with run_simulator(cfg) as s:
        yield s


async def _finished_task(client: Kf2vClient):
    """Create one task and wait (real time, at the simulator's speed) until it SUCCEEDED."""
    request = Kf2vRequest(
        first_frame_url=_data_uri((200, 40, 40)),
        last_frame_url=_data_uri((40, 40, 200)),
        prompt="a paid video",
        options=OPTIONS,
    )
    created = await client.create_task(request)
    state = await wait_for_task(client, created.task_id)
    assert state.status is TaskStatus.SUCCEEDED and state.video_url
    sub = Submission(
        task_id=created.task_id,
        fingerprint="e" * 64,
        submitted_at=datetime.now(UTC),
        model=OPTIONS.model,
        resolution=OPTIONS.resolution,
        duration_seconds=OPTIONS.duration,
        prompt="a paid video",
        parameters=OPTIONS.parameters(),
    )
    return state, sub


def _fake_clock(monkeypatch: pytest.MonkeyPatch, after_waits=None, action=None) -> list[float]:
    """Service clock that moves only when the code waits; ``action`` runs after N waits."""
    now = [clock.now()]
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds
        if action is not None and len(waits) == after_waits:
            action()

    monkeypatch.setattr(clock, "sleep", fake_sleep)
    monkeypatch.setattr(clock, "now", lambda: now[0])
    return waits


async def test_download_outlasts_a_long_outage_over_real_http(sim, tmp_path: Path, monkeypatch):
    async with Kf2vClient(TEST_API_KEY, base_url=sim.base_url) as client:
        state, sub = await _finished_task(client)
        # The result store fails every request (503 SlowDown and 500s) for 20 waits,
        # about 15 service minutes of backoff, then recovers.
        sim.set_faults(FaultConfig.parse("download.throttle=0.5,download.error500=0.5"))
        waits = _fake_clock(
            monkeypatch, after_waits=20, action=lambda: sim.set_faults(FaultConfig())
        )
        video = await persist_task_video(state, str(tmp_path / "paid.mp4"), client=client)
    assert video.download_attempts == 21 > 6
    assert len(waits) == 20 and sum(waits) > 31  # past the old budget's 6 requests and 31 s
    assert (tmp_path / "paid.mp4").stat().st_size == video.bytes > 0
    assert sim.stats()["downloads"] >= 21


async def test_a_permanent_answer_says_the_video_is_still_at_the_service(
    sim, tmp_path: Path, monkeypatch
):
    async with Kf2vClient(TEST_API_KEY, base_url=sim.base_url) as client:
        state, sub = await _finished_task(client)
        # A URL the result store does not know: 404, which no retry can fix.
        gone = state.model_copy(update={"video_url": f"{sim.origin}/_oss/nothing/here.mp4"})
        waits = _fake_clock(monkeypatch)
        with pytest.raises(DownloadError) as info:
            await persist_task_video(
                gone, str(tmp_path / "paid.mp4"), client=client, submission=sub
            )
    message = str(info.value)
    assert f"the video of task {state.task_id} was made and paid for" in message
    assert "HTTP 404" in message and "still at the service" in message
    assert "run again before about" in message and "nothing is paid twice" in message
    assert waits == [] and not (tmp_path / "paid.mp4").exists()


def test_the_link_lives_24_service_hours_from_the_tasks_end(monkeypatch):
    from kf2v_tasks.dashscope.task_state import StatusChange, TaskState

    clock.set_time_scale(1)
    now = datetime.now(UTC)
    seen = now - timedelta(hours=3)
    state = TaskState(
        task_id="t",
        status=TaskStatus.SUCCEEDED,
        history=[StatusChange(status=TaskStatus.SUCCEEDED, seen_at=seen)],
    )
    expires = link_expiry(state)
    assert abs((expires - (seen + timedelta(hours=24))).total_seconds()) < 1
    assert 20.9 * 3600 < download_patience(expires) <= 21 * 3600
    # The service's own times place the end earlier than it was seen: that one counts.
    sub = Submission(
        task_id="t",
        fingerprint="f" * 64,
        submitted_at=now - timedelta(hours=10),
        model=OPTIONS.model,
        resolution=OPTIONS.resolution,
        parameters=OPTIONS.parameters(),
    )
    t0 = datetime(2026, 1, 1, 8, 0)
    ran = state.model_copy(update={"submit_time": t0, "end_time": t0 + timedelta(minutes=5)})
    expected = now - timedelta(hours=10) + timedelta(minutes=5) + timedelta(hours=24)
    assert abs((link_expiry(ran, sub) - expected).total_seconds()) < 1
    # A re-run re-attaches until 23.5 h after the create (the ledger's margin).
    assert (
        abs((rerun_by(expected, sub) - (now + timedelta(hours=13, minutes=30))).total_seconds()) < 1
    )
    # Believed expired: still tried for a while; a run's deadline cuts it.
    assert download_patience(now - timedelta(hours=1)) == MIN_DOWNLOAD_PATIENCE
    assert download_patience(expires, deadline=clock.now() + 120) == pytest.approx(120, abs=1)
