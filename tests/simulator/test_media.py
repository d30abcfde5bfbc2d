"""The media protocol (wan2.7-i2v) on the simulator: strict validation, duration, sound, usage."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import av
import httpx
import pytest

from kf2v_tasks.dashscope.models import MEDIA_PATH, GenerationOptions
from kf2v_tasks.generation.fingerprint import fingerprint
from kf2v_tasks.simulator.soundtrack import tone

from .simkit import (
    HEADERS,
    MEDIA_FIRST,
    MEDIA_LAST,
    body,
    data_uri,
    gradient_png,
    media_body,
    wait_status,
)

FIRST, LAST = MEDIA_FIRST, MEDIA_LAST
VOICE = tone(3.0)  # mp3


def post(sim, payload: dict[str, Any], path: str = MEDIA_PATH) -> httpx.Response:
    return httpx.post(sim.base_url + path, json=payload, headers=HEADERS, timeout=30)


def video_of(doc: dict[str, Any]) -> av.container.InputContainer:
    data = httpx.get(doc["output"]["video_url"], timeout=30).content
    return av.open(io.BytesIO(data))


def test_media_create_renders_duration_with_driving_audio_and_reports_usage(sim):
    resp = post(sim, media_body(audio=VOICE, duration=8, seed=3))
    assert resp.status_code == 200, resp.text
    task_id = resp.json()["output"]["task_id"]
    doc = wait_status(sim, task_id, {"SUCCEEDED"})
    assert doc["usage"] == {"video_duration": 8, "video_count": 1, "SR": 720}
    with video_of(doc) as container:
        kinds = sorted(s.type for s in container.streams)
        assert kinds == ["audio", "video"]
        assert container.duration / 1e6 == pytest.approx(8.0, abs=0.1)
        audio = container.streams.audio[0]
        assert audio.codec_context.name == "aac"
    # The server's fingerprint hashes the driving audio too (and the duration).
    opts = GenerationOptions(model="wan2.7-i2v", resolution="720P", seed=3, duration=8)
    expected = fingerprint(
        opts,
        "a gradient turning",
        None,
        hashlib.sha256(FIRST).hexdigest(),
        hashlib.sha256(LAST).hexdigest(),
        hashlib.sha256(VOICE).hexdigest(),
    )
    assert sim.stats()["creates_by_fingerprint"] == {expected: 1}


def test_without_driving_audio_the_video_still_has_sound(sim):
    resp = post(sim, {**media_body(), "model": "wan2.7-i2v-2026-04-25"})  # a dated variant
    assert resp.status_code == 200, resp.text
    doc = wait_status(sim, resp.json()["output"]["task_id"], {"SUCCEEDED"})
    assert doc["usage"]["video_duration"] == 5  # the default length
    with video_of(doc) as container:
        assert sorted(s.type for s in container.streams) == ["audio", "video"]
        assert container.duration / 1e6 == pytest.approx(5.0, abs=0.1)


def test_kf2v_videos_stay_silent_and_five_seconds(sim):
    resp = post(sim, body(), "/services/aigc/image2video/video-synthesis")
    doc = wait_status(sim, resp.json()["output"]["task_id"], {"SUCCEEDED"})
    with video_of(doc) as container:
        assert [s.type for s in container.streams] == ["video"]


def _swap(media: list, kind: str, url: str) -> list:
    return [m if m["type"] != kind else {"type": kind, "url": url} for m in media]


BAD = {
    "duration above range": (media_body(duration=16), "The duration must be in [2, 15]"),
    "duration below range": (media_body(duration=1), "The duration must be in [2, 15]"),
    "duration not an int": (media_body(duration="8"), "duration"),
    "resolution not offered": (media_body(resolution="480P"), "not supported by model"),
    "kf2v inputs on the media path": (
        {**media_body(), "input": {"first_frame_url": data_uri(FIRST)}},
        "send input.media",
    ),
    "no first frame": (
        {**media_body(), "input": {"media": [{"type": "last_frame", "url": data_uri(LAST)}]}},
        "first_frame",
    ),
    "two first frames": (
        {
            **media_body(),
            "input": {"media": [{"type": "first_frame", "url": data_uri(FIRST)}] * 2},
        },
        "more than one first_frame",
    ),
    "unknown media type": (
        {**media_body(), "input": {"media": [{"type": "mask", "url": data_uri(FIRST)}]}},
        "input.media.type",
    ),
    "frame beyond 8:1": (
        {
            **media_body(),
            "input": {
                "media": _swap(
                    media_body()["input"]["media"], "first_frame", data_uri(gradient_png(2000, 240))
                )
            },
        },
        "aspect ratio 2000:240 is outside 1:8 to 8:1",
    ),
    "frame under 240 px": (
        {
            **media_body(),
            "input": {
                "media": _swap(
                    media_body()["input"]["media"], "first_frame", data_uri(gradient_png(320, 200))
                )
            },
        },
        "outside [240, 8000]",
    ),
    "audio not audio": (media_body(audio=FIRST), "cannot be decoded as audio"),
    "audio too short": (media_body(audio=tone(1.0)), "must be 2 to 30 seconds"),
    "kf2v model on the media path": (
        {**media_body(), "model": "wan2.2-kf2v-flash"},
        "url error, please check url!",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_media_create_is_strict(sim, case):
    payload, message = BAD[case]
    resp = post(sim, payload)
    assert resp.status_code == 400, resp.text
    doc = resp.json()
    assert doc["code"] == "InvalidParameter" and message in doc["message"]
    assert sim.stats()["creates"] == 0


def test_kf2v_path_refuses_media_inputs_and_media_models(sim):
    kf2v = "/services/aigc/image2video/video-synthesis"
    resp = post(sim, body(input={"media": [{"type": "first_frame", "url": "x"}]}), kf2v)
    assert resp.status_code == 400 and "input.media" in resp.json()["message"]
    resp = post(sim, {**body(), "model": "wan2.7-i2v"}, kf2v)
    assert resp.json()["message"] == "url error, please check url!"
    resp = post(sim, body(parameters={"duration": 8}), kf2v)
    assert "fixed at 5 seconds" in resp.json()["message"]
    assert sim.stats()["creates"] == 0
