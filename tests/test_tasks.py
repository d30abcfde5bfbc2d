"""The four Prefect tasks end to end against the simulator over real HTTP, in real flows."""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path

import av
import pytest
from prefect import flow

from kf2v_tasks import clock
from kf2v_tasks.credentials import DashScopeCredentials
from kf2v_tasks.dashscope.models import GenerationOptions, TaskStatus
from kf2v_tasks.errors import (
    AmbiguousCreateError,
    FrameValidationError,
    TaskCanceledError,
    TaskExpiredError,
    TaskFailedError,
)
from kf2v_tasks.generation.ledger import Ledger
from kf2v_tasks.simulator import FaultConfig, RuntimeDistribution, SimulatorConfig, run_simulator
from kf2v_tasks.tasks import persist_video, poll_until_done, submit_kf2v, validate_frames

from conftest import TEST_API_KEY
from helpers import make_frame

SPEED = 600.0
pytestmark = pytest.mark.usefixtures("prefect_server")


@contextmanager
def own_sim(**config):
    """A simulator for one test (tiny renders, at SPEED) and credentials for it."""
    config.setdefault("render", "tiny")
    with run_simulator(SimulatorConfig(speed=SPEED, **config)) as s:
        yield s, DashScopeCredentials(api_key=TEST_API_KEY, base_url=s.base_url)


@pytest.fixture(scope="module")
def sim():
    cfg = SimulatorConfig(
        speed=SPEED,
        runtime=RuntimeDistribution(kind="uniform", low=60, high=120),
        render="tiny",
        max_concurrent=4,
        seed=3,
    )
    with run_simulator(cfg) as s:
        yield s


@pytest.fixture(autouse=True)
def _time_scale():
    clock.set_time_scale(SPEED)
    yield
    clock.set_time_scale(None)


@pytest.fixture
def creds(sim) -> DashScopeCredentials:
    return DashScopeCredentials(api_key=TEST_API_KEY, base_url=sim.base_url)


@pytest.fixture
def frames(tmp_path: Path) -> tuple[str, str]:
    a = make_frame(tmp_path / "in" / "a.png", (320, 240), (200, 60, 30))
    b = make_frame(tmp_path / "in" / "b.png", (320, 240), (20, 160, 220))
    return str(a), str(b)


@flow
async def one_video(first, last, prompt, dest, ledger_root, creds, storage_options=None):
    pair = await validate_frames(first, last)
    sub = await submit_kf2v(
        pair, prompt, ledger_root=ledger_root, credentials=creds, storage_options=storage_options
    )
    state = await poll_until_done(sub.task_id, credentials=creds)
    video = await persist_video(
        state,
        dest,
        submission=sub,
        credentials=creds,
        ledger_root=ledger_root,
        storage_options=storage_options,
    )
    return sub, state, video


def _decoded_frames(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


async def test_round_trip_to_local_disk(sim, creds, frames, tmp_path):
    out = tmp_path / "out"
    sub, state, video = await one_video(
        *frames, "a slow pan", str(out / "clip.mp4"), str(out), creds
    )
    assert state.status is TaskStatus.SUCCEEDED
    assert [h.status for h in state.history][-1] is TaskStatus.SUCCEEDED
    assert (out / "clip.mp4").stat().st_size == video.bytes > 0
    assert _decoded_frames(out / "clip.mp4") > 0
    side = json.loads((out / "clip.json").read_text())
    assert side["sha256"] == video.sha256 and side["task_id"] == sub.task_id
    assert side["actual_prompt"] and side["usage"]["SR"] == 720
    assert "Signature" not in json.dumps(side)  # signed URL query never written
    record = await Ledger(str(out)).get(sub.fingerprint)
    assert record.state == "persisted" and record.sha256 == video.sha256


async def test_round_trip_to_s3(sim, creds, frames, s3_server):
    bucket = s3_server.new_bucket()
    opts = s3_server.storage_options
    root = f"s3://{bucket}/videos"
    _, _, video = await one_video(*frames, "to s3", f"{root}/clip.mp4", root, creds, opts)
    fs = s3_server.filesystem()
    assert fs.size(f"{bucket}/videos/clip.mp4") == video.bytes
    assert json.loads(fs.cat_file(f"{bucket}/videos/clip.json"))["sha256"] == video.sha256
    assert fs.exists(f"{bucket}/videos/.kf2v/ledger/{video.fingerprint}.json")


async def test_crash_between_submit_and_persist_reuses_the_task(sim, creds, frames, tmp_path):
    """Submit, drop everything in memory, run again: same task, no second create."""
    out = str(tmp_path / "out")

    @flow
    async def submit_only(prompt):
        pair = await validate_frames(*frames)
        return await submit_kf2v(pair, prompt, ledger_root=out, credentials=creds)

    before = sim.stats()["creates"]
    first = await submit_only("crash test")  # the "process" ends here: only the ledger remains
    _, state, video = await one_video(*frames, "crash test", f"{out}/x.mp4", out, creds)
    assert sim.stats()["creates"] == before + 1
    assert state.task_id == first.task_id
    fp = video.fingerprint
    assert sim.stats()["creates_by_fingerprint"][fp] == 1


async def test_rerun_after_persist_makes_no_api_call(sim, env_creds, frames, tmp_path):
    from kf2v_flows.single import generate_video

    out = tmp_path / "out"
    v1 = await generate_video(*frames, str(out / "v.mp4"), "again", credentials_block=None)
    stats = sim.stats()
    v2 = await generate_video(*frames, str(out / "v.mp4"), "again", credentials_block=None)
    after = sim.stats()
    assert v2.reused_existing and v2.sha256 == v1.sha256
    assert (after["creates"], after["queries"]) == (stats["creates"], stats["queries"])


@pytest.fixture
def env_creds(sim, monkeypatch):
    monkeypatch.setenv("DASHSCOPE_API_KEY", TEST_API_KEY)
    monkeypatch.setenv("DASHSCOPE_HTTP_BASE_URL", sim.base_url)


async def test_download_cut_halfway_ends_complete_without_regeneration(creds, frames, tmp_path):
    with own_sim(
        runtime=RuntimeDistribution(kind="fixed", low=60),
        faults=FaultConfig({"download.cut": 0.5, "download.expired": 0.3}),
        seed=11,
    ) as (s, c):
        out = tmp_path / "out"
        _, _, video = await one_video(*frames, "cut", str(out / "c.mp4"), str(out), c)
        stats = s.stats()
    assert stats["creates"] == 1
    assert stats["downloads"] >= 2  # it was cut (or expired) and resumed
    assert sum(stats["faults"].values()) >= 1
    assert (out / "c.mp4").stat().st_size == video.bytes
    assert _decoded_frames(out / "c.mp4") > 0
    assert not list((out / ".kf2v" / "tmp").glob("*"))  # no temp left behind


async def test_failed_task_raises_with_code_and_is_never_reused(creds, frames, tmp_path):
    with own_sim(
        runtime=RuntimeDistribution(kind="fixed", low=60),
        faults=FaultConfig({"task.fail_moderation": 1.0}),
    ) as (s, c):
        out = str(tmp_path / "out")
        with pytest.raises(TaskFailedError) as info:
            await one_video(*frames, "fail", f"{out}/f.mp4", out, c)
        assert info.value.code == "DataInspectionFailed"
        assert [h.status for h in info.value.history][-1] is TaskStatus.FAILED
        s.set_faults(FaultConfig())
        await one_video(*frames, "fail", f"{out}/f.mp4", out, c)  # a FAILED task is not reused
        assert s.stats()["creates"] == 2


async def test_unknown_task_is_expired_error(sim, creds):
    @flow
    async def poll(task_id):
        return await poll_until_done(task_id, credentials=creds)

    with pytest.raises(TaskExpiredError):
        await poll("no-such-task-id")


async def test_pending_past_queue_deadline_is_canceled(frames, tmp_path):
    with own_sim(max_concurrent=1, runtime=RuntimeDistribution(kind="fixed", low=3000)) as (s, c):

        @flow
        async def two():
            pair = await validate_frames(*frames)
            await submit_kf2v(pair, "occupies the only slot", credentials=c)
            blocked = await submit_kf2v(pair, "waits", credentials=c)
            return await poll_until_done(blocked.task_id, credentials=c, queue_deadline_seconds=120)

        with pytest.raises(Exception) as info:
            await two()
        assert type(info.value).__name__ == "QueueTimeoutError"
        assert s.stats()["tasks_by_status"].get("CANCELED") == 1


async def test_canceled_task_raises(frames):
    with own_sim(max_concurrent=1, runtime=RuntimeDistribution(kind="fixed", low=3000)) as (s, c):

        @flow
        async def cancel_then_poll():
            pair = await validate_frames(*frames)
            await submit_kf2v(pair, "first", credentials=c)
            second = await submit_kf2v(pair, "second", credentials=c)
            async with c.get_client() as client:
                await client.cancel_task(second.task_id)
            return await poll_until_done(second.task_id, credentials=c)

        with pytest.raises(TaskCanceledError):
            await cancel_then_poll()


async def test_429_storm_ends_in_success(frames, tmp_path):
    # A 300 s task polled every few service seconds: dozens of queries, so the storm hits
    # whatever the timing (the fault draws are seeded per endpoint).
    with own_sim(
        runtime=RuntimeDistribution(kind="fixed", low=300),
        faults=FaultConfig({"create.throttle": 0.6, "query.throttle": 0.6}),
        seed=5,
    ) as (s, c):
        out = str(tmp_path / "out")
        _, state, _ = await one_video(*frames, "storm", f"{out}/s.mp4", out, c)
        stats = s.stats()
    assert state.status is TaskStatus.SUCCEEDED
    assert stats["faults"].get("query.throttle", 0) >= 5
    assert stats["creates"] == 1


async def test_ambiguous_create_retried_once_and_reported(frames, tmp_path):
    with own_sim(
        runtime=RuntimeDistribution(kind="fixed", low=60),
        faults=FaultConfig({"create.ambiguous": 1.0}),
    ) as (s, c):
        out = str(tmp_path / "out")

        @flow
        async def submit(policy):
            pair = await validate_frames(*frames)
            return await submit_kf2v(
                pair, "ambiguous", ledger_root=out, credentials=c, ambiguous_policy=policy
            )

        with pytest.raises(AmbiguousCreateError):
            await submit("retry_once")
        # Two POSTs reached the service (both created a task): one guarded retry, no more.
        assert s.stats()["creates"] == 2
        records = await Ledger(out).list()
        assert records[0].possible_duplicate and records[0].create_attempts == 2
        s.set_faults(FaultConfig())
        with pytest.raises(AmbiguousCreateError):  # re-run: the policy allows no third create
            await submit("retry_once")
        assert s.stats()["creates"] == 2


async def test_bad_frame_makes_no_api_call(sim, creds, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    good = make_frame(tmp_path / "good.png")
    before = sim.stats()

    @flow
    async def check():
        return await validate_frames(str(good), str(bad))

    with pytest.raises(FrameValidationError) as info:
        await check()
    assert "bad.png" in str(info.value)
    after = sim.stats()
    assert (after["create_requests"], after["uploads"]) == (
        before["create_requests"],
        before["uploads"],
    )


async def test_key_never_in_logs_or_errors(creds, frames, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    with own_sim(
        runtime=RuntimeDistribution(kind="fixed", low=60),
        faults=FaultConfig({"task.fail_internal": 1.0}),
        api_key=TEST_API_KEY,
    ) as (s, c):
        wrong = DashScopeCredentials(api_key=TEST_API_KEY + "-wrong", base_url=s.base_url)
        out = str(tmp_path / "out")
        texts = []
        for cr in (c, wrong):
            try:
                await one_video(*frames, "secret", f"{out}/k.mp4", out, cr)
            except Exception as exc:
                texts += [str(exc), repr(exc), repr(exc.__cause__)]
    assert len(texts) == 6
    blob = "\n".join(texts) + caplog.text + repr(c) + str(c.model_dump())
    assert TEST_API_KEY not in blob
    for f in Path(out).rglob("*"):
        if f.is_file():
            assert TEST_API_KEY.encode() not in f.read_bytes()


def test_standalone_options_validation():
    with pytest.raises(ValueError, match="not available"):
        GenerationOptions(model="wanx2.1-kf2v-plus", resolution="480P")
