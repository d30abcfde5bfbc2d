"""The official dashscope SDK (2.0.2, v1-style API) against the simulator.

This proves the simulator speaks the protocol the real SDK expects: upload flow
(getPolicy + OSS multipart + ``oss://``), async create, polling with ``wait``,
``fetch``, ``cancel`` and a downloadable result.
"""

from __future__ import annotations

import io
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


# ------------------------------------------------------------ the media protocol (SDK v2)


def _v2_client(sim: Simulator):
    # Fresh v2 client against the simulator; polling compressed like the service's time.
    return dashscope.Client(api_key=KEY, base_url=sim.base_url, max_retries=0)


FAST_WAIT = dict(poll_interval=0.01, max_interval=0.05, timeout=60.0)


def test_v2_videos_generate_wan27_with_driving_audio(sdk_sim, tmp_path):
    import av

    from kf2v_tasks.simulator.soundtrack import tone

    first = _gradient(tmp_path / "first.png", 480, 400)
    last = _gradient(tmp_path / "last.png", 400, 480)
    voice = tmp_path / "voice.mp3"
    voice.write_bytes(tone(3.0))
    job = _v2_client(sdk_sim).videos.generate(
        model="wan2.7-i2v",
        prompt="a gradient slowly turning",
        media=[
            {"type": "first_frame", "url": first},
            {"type": "last_frame", "url": last},
            {"type": "driving_audio", "url": f"file://{voice}"},
        ],
        resolution="720P",
        duration=8,
        seed=11,
        **FAST_WAIT,
    )
    assert job.status == "SUCCEEDED" and job.video_url
    video = httpx.get(job.video_url)
    assert video.status_code == 200 and video.content[4:8] == b"ftyp"
    with av.open(io.BytesIO(video.content)) as container:
        assert sorted(s.type for s in container.streams) == ["audio", "video"]
        assert container.duration / 1e6 == pytest.approx(8.0, abs=0.1)
    stats = sdk_sim.stats()
    # the v2 uploader takes one policy for the request and uploads the three local files
    assert stats["policies"] == 1 and stats["uploads"] == 3 and stats["creates"] == 1
    [row] = sdk_sim.tasks()
    assert row["model"] == "wan2.7-i2v"


def test_v2_videos_generate_dated_variant_with_image_url_shorthand(sdk_sim, tmp_path):
    first = _gradient(tmp_path / "first.png", 480, 400)
    job = _v2_client(sdk_sim).videos.generate(
        model="wan2.7-i2v-2026-04-25", image_url=first, **FAST_WAIT
    )
    assert job.status == "SUCCEEDED" and httpx.get(job.video_url).status_code == 200


def test_v2_videos_errors_reach_the_sdk(sdk_sim, tmp_path):
    from dashscope.v2.errors import DashScopeError

    first = _gradient(tmp_path / "first.png", 480, 400)
    client = _v2_client(sdk_sim)
    with pytest.raises(DashScopeError) as info:
        client.videos.jobs.create(model="wan2.7-i2v", image_url=first, duration=20)
    assert "duration" in str(info.value)
    # a kf2v model sent to the media path (the wrong protocol) is refused
    with pytest.raises(DashScopeError) as info:
        client.videos.jobs.create(model="wan2.2-kf2v-flash", image_url=first)
    assert "url error" in str(info.value)
    assert sdk_sim.stats()["creates"] == 0


def test_v2_videos_generate_wan27_continuing_a_first_clip(sdk_sim, tmp_path):
    import av

    from kf2v_tasks.simulator.render import render_video

    last = _gradient(tmp_path / "last.png", 480, 400)
    shot = tmp_path / "shot.mp4"
    frame = (tmp_path / "last.png").read_bytes()
    shot.write_bytes(render_video(frame, frame, "480P", fps=2, seconds=3))
    job = _v2_client(sdk_sim).videos.generate(
        model="wan2.7-i2v",
        prompt="and it goes on",
        media=[
            {"type": "first_clip", "url": f"file://{shot}"},
            {"type": "last_frame", "url": last},
        ],
        resolution="720P",
        duration=7,
        **FAST_WAIT,
    )
    assert job.status == "SUCCEEDED" and job.video_url
    with av.open(io.BytesIO(httpx.get(job.video_url).content)) as container:
        assert container.duration / 1e6 == pytest.approx(7.0, abs=0.1)
    assert sdk_sim.stats()["uploads"] == 2 and sdk_sim.stats()["creates"] == 1
