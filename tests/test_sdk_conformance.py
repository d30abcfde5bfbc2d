"""The official dashscope SDK (2.0.2, v1-style API) against the simulator.

This proves the simulator speaks the protocol the real SDK expects: upload flow
(getPolicy + OSS multipart + ``oss://``), async create, polling with ``wait``,
``fetch``, ``cancel`` and a downloadable result.
"""

from __future__ import annotations

import time
import types
from collections.abc import Iterator
from http import HTTPStatus

import httpx
import numpy as np
import pytest
from PIL import Image

from kf2v_tasks.simulator import RuntimeDistribution, Simulator, SimulatorConfig, run_simulator

dashscope = pytest.importorskip("dashscope")
from dashscope import VideoSynthesis  # noqa: E402
from dashscope.client import base_api  # noqa: E402

SPEED = 1000.0
KEY = "sk-sdk-conformance"


def _gradient(path, width: int, height: int) -> str:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    arr = np.concatenate([x + 0 * y, y + 0 * x, 255 - (x + y) / 2], axis=2).astype(np.uint8)
    Image.fromarray(arr).save(path, "PNG")
    return f"file://{path}"


@pytest.fixture
def sdk_sim(monkeypatch) -> Iterator[Simulator]:
    cfg = SimulatorConfig(
        speed=SPEED,
        render="tiny",
        api_key=KEY,
        max_concurrent=1,
        runtime=RuntimeDistribution(kind="fixed", low=500.0),  # 0.5 s real,
    )
    with run_simulator(cfg) as sim:
        monkeypatch.setattr(dashscope, "base_http_api_url", sim.base_url)
        # wait() sleeps 1, 1, 2, 2, 2, 4... real seconds: compress them like the service.
        fast_time = types.SimpleNamespace(
            **{name: getattr(time, name) for name in dir(time) if not name.startswith("__")}
        )
        fast_time.sleep = lambda seconds: time.sleep(seconds / SPEED)
        monkeypatch.setattr(base_api, "time", fast_time)
        yield sim


@pytest.fixture
def frames(tmp_path) -> tuple[str, str]:
    return _gradient(tmp_path / "first.png", 320, 240), _gradient(tmp_path / "last.png", 300, 400)


def test_call_uploads_local_files_and_succeeds(sdk_sim, frames):
    rsp = VideoSynthesis.call(
        api_key=KEY,
        model="wan2.2-kf2v-flash",
        prompt="a gradient slowly turning",
        first_frame_url=frames[0],
        last_frame_url=frames[1],
        resolution="480P",
    )
    assert rsp.status_code == HTTPStatus.OK, rsp
    assert rsp.output.task_status == "SUCCEEDED"
    video = httpx.get(rsp.output.video_url)
    assert video.status_code == 200 and video.content[4:8] == b"ftyp"
    stats = sdk_sim.stats()
    assert stats["policies"] == 2 and stats["uploads"] == 2 and stats["creates"] == 1


def test_async_call_wait_fetch_and_cancel(sdk_sim, frames):
    kwargs = dict(
        api_key=KEY,
        model="wan2.2-kf2v-flash",
        prompt="two tasks",
        first_frame_url=frames[0],
        last_frame_url=frames[1],
        resolution="480P",
    )
    first = VideoSynthesis.async_call(**kwargs)
    assert first.status_code == HTTPStatus.OK and first.output.task_status == "PENDING"
    # max_concurrent=1: the second task waits PENDING behind the first.
    second = VideoSynthesis.async_call(**kwargs)
    assert VideoSynthesis.fetch(first, api_key=KEY).output.task_status == "RUNNING"
    assert VideoSynthesis.fetch(second, api_key=KEY).output.task_status == "PENDING"
    canceled = VideoSynthesis.cancel(second, api_key=KEY)
    assert canceled.status_code == HTTPStatus.OK, canceled
    assert VideoSynthesis.fetch(second, api_key=KEY).output.task_status == "CANCELED"

    done = VideoSynthesis.wait(first, api_key=KEY)
    assert done.output.task_status == "SUCCEEDED" and done.output.video_url
    assert httpx.get(done.output.video_url).status_code == 200
    refused = VideoSynthesis.cancel(first, api_key=KEY)
    assert refused.status_code == HTTPStatus.BAD_REQUEST
    assert refused.code == "UnsupportedOperation"


def test_sdk_sees_errors(sdk_sim, frames):
    bad = VideoSynthesis.async_call(
        api_key=KEY,
        model="wanx2.1-kf2v-plus",
        first_frame_url=frames[0],
        last_frame_url=frames[1],
        resolution="480P",
    )
    assert bad.status_code == HTTPStatus.BAD_REQUEST and bad.code == "InvalidParameter"
    wrong_key = VideoSynthesis.fetch("some-task", api_key="sk-wrong")
    assert wrong_key.status_code == HTTPStatus.UNAUTHORIZED and wrong_key.code == "InvalidApiKey"
    unknown = VideoSynthesis.fetch("some-task", api_key=KEY)
    assert unknown.status_code == HTTPStatus.OK and unknown.output.task_status == "UNKNOWN"
