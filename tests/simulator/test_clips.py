"""wan2.7-i2v continuing a clip on the simulator: first_clip and first_clip + last_frame (§16).

The simulator accepts exactly the documented combinations and clip limits, renders the
requested duration, bills all of it, and fingerprints the clip's bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from typing import Any

import av
import httpx
import numpy as np
import pytest

from kf2v_tasks.dashscope.catalog import get_model
from kf2v_tasks.dashscope.models import MEDIA_PATH, GenerationOptions
from kf2v_tasks.generation.clip import ClipValidationError, inspect_clip
from kf2v_tasks.generation.fingerprint import fingerprint
from kf2v_tasks.simulator.render import render_video
from kf2v_tasks.simulator.soundtrack import tone

from .simkit import HEADERS, MEDIA_FIRST, MEDIA_LAST, data_uri, gradient_png, wait_status


def clip(seconds: int, size: tuple[int, int] = (480, 400), tiny: bool = False) -> bytes:
    first, last = gradient_png(*size), gradient_png(*size, hue=40)
    return render_video(first, last, "480P", tiny=tiny, fps=2, seconds=seconds)


CLIP = clip(3)


def payload(*items: tuple[str, bytes], duration: int = 8) -> dict[str, Any]:
    mimes = {"first_clip": "video/mp4", "driving_audio": "audio/mpeg"}
    media = [{"type": k, "url": data_uri(v, mimes.get(k, "image/png"))} for k, v in items]
    return {
        "model": "wan2.7-i2v",
        "input": {"prompt": "and then", "media": media},
        "parameters": {"resolution": "720P", "duration": duration},
    }


def post(sim, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(sim.base_url + MEDIA_PATH, json=body, headers=HEADERS, timeout=30)


@pytest.mark.parametrize("with_last", [False, True], ids=["first_clip", "first_clip+last_frame"])
def test_a_clip_is_continued_to_the_requested_duration_and_billed_for_all_of_it(sim, with_last):
    items = [("first_clip", CLIP)] + ([("last_frame", MEDIA_LAST)] if with_last else [])
    resp = post(sim, payload(*items, duration=8))
    assert resp.status_code == 200, resp.text
    doc = wait_status(sim, resp.json()["output"]["task_id"], {"SUCCEEDED"})
    assert doc["usage"]["video_duration"] == 8  # the whole output, the clip's 3 s included
    data = httpx.get(doc["output"]["video_url"], timeout=30).content
    with av.open(io.BytesIO(data)) as container:
        assert container.duration / 1e6 == pytest.approx(8.0, abs=0.1)
    opts = GenerationOptions(model="wan2.7-i2v", resolution="720P", duration=8)
    last = hashlib.sha256(MEDIA_LAST).hexdigest() if with_last else ""
    expected = fingerprint(
        opts, "and then", None, "", last, clip_sha256=hashlib.sha256(CLIP).hexdigest()
    )
    assert expected in sim.stats()["creates_by_fingerprint"]


BAD = {
    "clip and first frame": (
        [("first_clip", CLIP), ("first_frame", MEDIA_FIRST)],
        "first_clip+first_frame is not supported",
    ),
    "clip and audio": (
        [("first_clip", CLIP), ("driving_audio", tone(3.0))],
        "driving_audio+first_clip is not supported",
    ),
    "two clips": ([("first_clip", CLIP), ("first_clip", CLIP)], "more than one first_clip"),
    "clip too long": ([("first_clip", clip(12, tiny=True))], "must be 2 to 10 seconds long"),
    "clip too short": ([("first_clip", clip(1))], "must be 2 to 10 seconds long, not 1.0"),
    "clip under 240 px": ([("first_clip", clip(3, tiny=True))], "outside [240, 4096] pixels"),
    "clip not a video": ([("first_clip", MEDIA_FIRST)], "must be an mp4 or mov video"),
    "clip not media at all": ([("first_clip", b"no video here" * 50)], "cannot be decoded"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_what_the_service_refuses_about_clips_is_refused(sim, case):
    items, message = BAD[case]
    resp = post(sim, payload(*items))
    assert resp.status_code == 400, resp.text
    assert message in resp.json()["message"]
    assert sim.stats()["creates"] == 0


def encode(width: int, height: int, seconds: float, fmt: str = "mp4", fps: int = 2) -> bytes:
    """A plain H.264 clip of exactly this size and length."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(round(seconds * fps)):
            pixels = np.full((height, width, 3), (i * 40) % 256, np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buf.getvalue()


#: Clips at and just past each §16 limit: (width, height, seconds, container, accepted).
EDGES = {
    "2 s": (480, 400, 2, "mp4", True),
    "10 s, mov": (480, 400, 10, "mov", True),
    "1.5 s": (480, 400, 1.5, "mp4", False),
    "10.5 s": (480, 400, 10.5, "mp4", False),
    "1:8": (240, 1920, 2, "mp4", True),
    "beyond 1:8": (240, 1928, 2, "mp4", False),
    "238 px": (238, 400, 2, "mp4", False),
    "4096 px": (4096, 600, 2, "mp4", True),
    "4098 px": (4098, 600, 2, "mp4", False),
}


@pytest.mark.parametrize("case", list(EDGES))
def test_client_and_simulator_agree_on_every_clip_limit(sim, tmp_path, case):
    width, height, seconds, fmt, accepted = EDGES[case]
    data = encode(width, height, seconds, fmt)
    path = tmp_path / f"clip.{fmt}"
    path.write_bytes(data)
    try:
        asyncio.run(inspect_clip(str(path), get_model("wan2.7-i2v")))
        client_accepts = True
    except ClipValidationError:
        client_accepts = False
    resp = post(sim, payload(("first_clip", data), ("last_frame", MEDIA_LAST)))
    assert (client_accepts, resp.status_code == 200) == (accepted, accepted), resp.text


def test_a_media_model_that_continues_no_clip_refuses_one_on_both_sides(sim, tmp_path):
    from kf2v_tasks.dashscope.catalog import register_model, reset_catalog

    name = "wan2.8-noclip"
    register_model({"name": name, "protocol": "media", "resolutions": ["720P"], "duration_max": 15})
    try:
        resp = post(sim, {**payload(("first_clip", CLIP)), "model": name})
        assert resp.status_code == 400
        assert resp.json()["message"] == f"first_clip is not supported by model {name}."
        (tmp_path / "c.mp4").write_bytes(CLIP)
        with pytest.raises(ClipValidationError, match=f"{name} cannot continue a clip"):
            asyncio.run(inspect_clip(str(tmp_path / "c.mp4"), get_model(name)))
    finally:
        reset_catalog()
    assert sim.stats()["creates"] == 0
