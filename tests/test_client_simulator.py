"""Kf2vClient end to end over real HTTP against the local simulator."""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from kf2v_tasks import clock
from kf2v_tasks.dashscope.client import Kf2vClient
from kf2v_tasks.dashscope.limits import AccountLimits
from kf2v_tasks.dashscope.models import GenerationOptions, Kf2vRequest, TaskStatus
from kf2v_tasks.dashscope.task_state import TaskState
from kf2v_tasks.errors import (
    AmbiguousCreateError,
    AuthenticationError,
    ConnectionFailedError,
    InvalidRequestError,
    UnsupportedOperationError,
)
from kf2v_tasks.retry import RetryPolicy

from conftest import TEST_API_KEY

simulator = pytest.importorskip("kf2v_tasks.simulator")
if not hasattr(simulator, "run_simulator"):  # pragma: no cover - simulator still being built
    pytest.skip("kf2v_tasks.simulator has no run_simulator yet", allow_module_level=True)
FaultConfig = simulator.FaultConfig
RuntimeDistribution = simulator.RuntimeDistribution
SimulatorConfig = simulator.SimulatorConfig
run_simulator = simulator.run_simulator

SPEED = 600.0
MODEL = "wan2.2-kf2v-flash"
OPTIONS = GenerationOptions(model=MODEL, resolution="480P")


def png(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


FIRST = png(320, 240, (200, 40, 40))
LAST = png(320, 240, (40, 40, 200))


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


@pytest.fixture(autouse=True)
def fast_clock() -> Iterator[None]:
    """Client waits run at the simulator's speed."""
    clock.set_time_scale(SPEED)
    yield
    clock.set_time_scale(None)


def config(**kw: object) -> SimulatorConfig:
    kw.setdefault("speed", SPEED)
    kw.setdefault("render", "tiny")
    kw.setdefault("runtime", RuntimeDistribution(kind="fixed", low=5))
    return SimulatorConfig(**kw)  # type: ignore[arg-type]


@pytest.fixture
def sim() -> Iterator[object]:
    with run_simulator(config()) as s:
        yield s


def client_for(sim: object, **kw: object) -> Kf2vClient:
    kw.setdefault("retry", RetryPolicy(base_delay=1.0, max_delay=10.0))
    return Kf2vClient(TEST_API_KEY, base_url=sim.base_url, **kw)  # type: ignore[attr-defined,arg-type]


async def wait_done(client: Kf2vClient, task_id: str, limit: float = 3600.0) -> TaskState:
    """Poll every 2 service seconds until terminal (at most ``limit`` service seconds)."""
    start = clock.now()
    while True:
        state = await client.get_task(task_id)
        if state.status.is_terminal:
            return state
        assert clock.now() - start < limit, f"task {task_id} stuck in {state.status}"
        await clock.sleep(2.0)


def request(first: str, last: str) -> Kf2vRequest:
    return Kf2vRequest(first_frame_url=first, last_frame_url=last, prompt="a dolly shot")


async def test_create_poll_download(sim: object, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with client_for(sim, limits=AccountLimits()) as client:
        created = await client.create_task(
            Kf2vRequest(
                first_frame_url=data_uri(FIRST),
                last_frame_url=data_uri(LAST),
                prompt="a dolly shot",
                options=OPTIONS,
            )
        )
        assert created.status is TaskStatus.PENDING and created.task_id
        done = await wait_done(client, created.task_id)
    assert done.status is TaskStatus.SUCCEEDED, done
    assert done.video_url and done.usage and done.usage.sr == 480
    assert done.actual_prompt and done.orig_prompt == "a dolly shot"
    async with httpx.AsyncClient(timeout=30) as plain:
        video = await plain.get(done.video_url)
    assert video.status_code == 200
    assert video.content[4:8] == b"ftyp"  # an MP4
    assert sim.stats()["creates"] == 1  # type: ignore[attr-defined]
    assert TEST_API_KEY not in caplog.text


async def test_upload_then_create_with_oss_urls(sim: object) -> None:
    async with client_for(sim) as client:
        first = await client.upload_file(FIRST, "first.png", MODEL)
        last = await client.upload_file(LAST, "/tmp/x/last.png", MODEL)
        assert first.startswith("oss://dashscope-instant/") and first.endswith("/first.png")
        assert last.endswith("/last.png")
        created = await client.create_task(
            Kf2vRequest(first_frame_url=first, last_frame_url=last, options=OPTIONS)
        )
        done = await wait_done(client, created.task_id)
    assert done.status is TaskStatus.SUCCEEDED
    stats = sim.stats()  # type: ignore[attr-defined]
    assert stats["policies"] == 2 and stats["uploads"] == 2


async def test_unknown_task_id(sim: object) -> None:
    async with client_for(sim) as client:
        state = await client.get_task("no-such-task-1111")
    assert state.status is TaskStatus.UNKNOWN and state.task_id == "no-such-task-1111"


async def test_cancel_pending_and_running() -> None:
    cfg = config(max_concurrent=1, runtime=RuntimeDistribution(kind="fixed", low=3600))
    with run_simulator(cfg) as sim:
        async with client_for(sim) as client:
            req = request(data_uri(FIRST), data_uri(LAST))
            running = await client.create_task(req)
            queued = await client.create_task(req)
            await client.cancel_task(queued.task_id)
            assert (await client.get_task(queued.task_id)).status is TaskStatus.CANCELED
            with pytest.raises(UnsupportedOperationError) as info:
                await client.cancel_task(running.task_id)
            assert info.value.status_code == 400 and info.value.request_id
            assert (await client.get_task(running.task_id)).status is TaskStatus.RUNNING
            page = await client.list_tasks(model_name=MODEL, page_size=10)
    assert page["total"] == 2
    assert {row["task_id"] for row in page["data"]} == {running.task_id, queued.task_id}


async def test_permanent_errors_from_the_simulator() -> None:
    with run_simulator(config(api_key="sk-the-right-one")) as sim:
        async with client_for(sim) as client:
            with pytest.raises(AuthenticationError) as auth:
                await client.get_task("x")
        async with Kf2vClient("sk-the-right-one", base_url=sim.base_url) as client:
            with pytest.raises(InvalidRequestError):  # not a loopback URL: cannot download
                await client.create_task(request("https://example.com/a.png", data_uri(LAST)))
    assert auth.value.code == "InvalidApiKey"
    assert TEST_API_KEY not in str(auth.value)


async def test_transient_faults_are_absorbed() -> None:
    faults = FaultConfig({"create.throttle": 0.5, "query.error503": 0.3, "query.reset": 0.2})
    cfg = config(faults=faults, seed=3, runtime=RuntimeDistribution(kind="fixed", low=60))
    with run_simulator(cfg) as sim:
        async with client_for(sim, limits=AccountLimits()) as client:
            created = await client.create_task(request(data_uri(FIRST), data_uri(LAST)))
            done = await wait_done(client, created.task_id)
        stats = sim.stats()
    assert done.status is TaskStatus.SUCCEEDED
    assert stats["creates"] == 1  # throttled creates were retried, never duplicated
    assert stats["faults"].get("query.error503", 0) + stats["faults"].get("query.reset", 0) > 0


async def test_ambiguous_create_is_not_resent() -> None:
    with run_simulator(config(faults=FaultConfig({"create.ambiguous": 1.0}))) as sim:
        async with client_for(sim) as client:
            with pytest.raises(AmbiguousCreateError):
                await client.create_task(request(data_uri(FIRST), data_uri(LAST)))
        stats = sim.stats()
    assert stats["create_requests"] == 1 and stats["creates"] == 1  # it exists, sent once


async def test_reset_on_create_is_ambiguous() -> None:
    with run_simulator(config(faults=FaultConfig({"create.reset": 1.0}))) as sim:
        async with client_for(sim) as client:
            with pytest.raises(AmbiguousCreateError) as info:
                await client.create_task(request(data_uri(FIRST), data_uri(LAST)))
        assert sim.stats()["create_requests"] == 1
    assert TEST_API_KEY not in str(info.value) and info.value.__context__ is None


async def test_connection_refused_is_retried_then_fails() -> None:
    with run_simulator(config()) as sim:
        base = sim.base_url
    # The port is closed now: every attempt fails to connect (never sent).
    async with Kf2vClient(
        TEST_API_KEY, base_url=base, retry=RetryPolicy(max_attempts=3, base_delay=1.0)
    ) as client:
        with pytest.raises(ConnectionFailedError) as info:
            await client.create_task(request(data_uri(FIRST), data_uri(LAST)))
    assert info.value.request_sent is False
    assert TEST_API_KEY not in repr(info.value)
