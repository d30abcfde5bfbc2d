"""Previews: posters and strips exist, decode, come from the video's own frames, and are paid once.

Videos are real H.264 MP4s rendered by the simulator's renderer; persisting goes through
persist_task_video with an httpx.MockTransport standing in for the service's video URL.
"""

from __future__ import annotations

import io
import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from PIL import Image

from kf2v_tasks.dashscope.task_state import TaskState
from kf2v_tasks.generation.ledger import Ledger, LedgerRecord, LedgerState
from kf2v_tasks.generation.persist import persist_task_video
from kf2v_tasks.generation.persisted import find_persisted
from kf2v_tasks.generation.previews import (
    STRIP_HEIGHT,
    PreviewError,
    copy_previews,
    make_previews,
    preview_paths,
    render_previews,
)
from kf2v_tasks.generation.submit import Submission
from kf2v_tasks.simulator.render import render_video
from kf2v_tasks.storage.files import copy_video

FP = "e" * 64


def _png(colour, size=(320, 240)) -> bytes:
    img = Image.new("RGB", size, colour)
    for x in range(0, size[0], 40):  # some structure, so frames are not flat colour
        img.paste((255 - colour[0], colour[1], 255 - colour[2]), (x, 0, x + 8, size[1]))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def mp4() -> bytes:
    """A 5-second 24 fps video from a red first frame to a blue last frame."""
    return render_video(_png((220, 30, 30)), _png((30, 30, 220)), "480P", fps=24)


def _frames(path: str) -> list[np.ndarray]:
    with av.open(path) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _decode_jpeg(path: str) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "JPEG"
        return np.asarray(im.convert("RGB"))


async def test_poster_and_strip_are_the_videos_own_middle_first_and_last_frames(tmp_path, mp4):
    video = tmp_path / "out" / "sunrise.mp4"
    video.parent.mkdir()
    video.write_bytes(mp4)
    previews = await make_previews(str(video))

    frames = _frames(str(video))
    assert previews.frames == len(frames) == 120
    assert previews.poster == str(tmp_path / "out" / "sunrise.poster.jpg")
    assert previews.strip == str(tmp_path / "out" / "sunrise.strip.jpg")
    strip_frames = [0, previews.poster_frame, previews.frames - 1]  # left to right
    assert strip_frames == [0, 60, 119]

    poster = _decode_jpeg(previews.poster)
    assert poster.shape == frames[0].shape == (previews.height, previews.width, 3)
    # The poster is frame 60 (JPEG-close), and clearly not its neighbours on the fade.
    scores = {i: _psnr(poster, frames[i]) for i in (0, 40, 60, 80, 119)}
    assert scores[60] > 35 and scores[60] == max(scores.values())

    strip = _decode_jpeg(previews.strip)
    h = min(STRIP_HEIGHT, previews.height)
    w = round(previews.width * h / previews.height)
    assert strip.shape == (h, 3 * w, 3)

    def small(i: int) -> np.ndarray:
        return np.asarray(Image.fromarray(frames[i]).resize((w, h), Image.Resampling.LANCZOS))

    for third, index in enumerate(strip_frames):
        got = strip[:, third * w : (third + 1) * w]
        # Small JPEG thumbnails of sharp stripes: close to their frame, far from the others.
        scores = {i: _psnr(got, small(i)) for i in (0, 30, 60, 90, 119)}
        assert scores[index] > 22 and scores[index] == max(scores.values()), (third, scores)
    # Left is red (the first keyframe), right is blue (the last): the fade is in order.
    left, right = strip[:, :w].mean(axis=(0, 1)), strip[:, 2 * w :].mean(axis=(0, 1))
    assert left[0] > left[2] and right[2] > right[0]


def test_a_file_object_and_a_recount_give_the_same_previews(tmp_path, mp4):
    path = tmp_path / "a.mp4"
    path.write_bytes(mp4)
    from_path, from_file = render_previews(str(path)), render_previews(io.BytesIO(mp4))
    assert from_path.frames == from_file.frames == 120
    assert from_path.poster_jpeg == from_file.poster_jpeg


def test_what_is_not_a_video_is_a_preview_error(tmp_path):
    with pytest.raises(PreviewError, match="cannot be decoded"):
        render_previews(io.BytesIO(b"\x00\x00\x00\x18ftypmp42" + b"x" * 500))
    assert preview_paths("out/a.b.mp4") == ("out/a.b.poster.jpg", "out/a.b.strip.jpg")
    assert preview_paths("s3://bucket/noext") == (
        "s3://bucket/noext.poster.jpg",
        "s3://bucket/noext.strip.jpg",
    )


# -- part of the ledger record: made once, never paid for --------------------------------------


class VideoClient:
    def __init__(self, body: bytes) -> None:
        self.requests: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            return httpx.Response(200, content=body)

        self.download_http = httpx.AsyncClient(transport=httpx.MockTransport(handler))

    async def get_task(self, task_id: str) -> TaskState:  # pragma: no cover - never expires
        raise AssertionError("no URL refresh expected")


def _succeeded() -> TaskState:
    return TaskState.from_response(
        {
            "request_id": "q-1",
            "output": {
                "task_id": "task-1",
                "task_status": "SUCCEEDED",
                "video_url": "https://result.oss.test/v/task-1.mp4?Signature=zzz",
                "actual_prompt": "a fade, cinematic",
            },
            "usage": {"video_duration": 5, "video_count": 1, "SR": 480},
        }
    )


def _submission() -> Submission:
    return Submission(
        task_id="task-1",
        fingerprint=FP,
        request_id="req-1",
        submitted_at=datetime.now(UTC),
        model="wan2.2-kf2v-flash",
        resolution="480P",
        duration_seconds=5,
        prompt="a fade",
    )


async def _ledger(root: Path) -> Ledger:
    led = Ledger(str(root))
    rec = LedgerRecord.new(FP)
    rec.begin_create()
    rec.submitted("task-1", "req-1")
    await led.put(rec)
    return led


async def test_persisting_makes_previews_and_records_them_and_a_rerun_never_redoes_them(
    tmp_path, mp4
):
    out = tmp_path / "out"
    ledger = await _ledger(out)
    dest = str(out / "clip.mp4")
    video = await persist_task_video(
        _succeeded(), dest, client=VideoClient(mp4), submission=_submission(), ledger=ledger
    )
    assert video.previews is not None and video.previews.poster == str(out / "clip.poster.jpg")
    rec = await ledger.get(FP)
    assert rec.state is LedgerState.PERSISTED and rec.previews == video.previews
    side = json.loads((out / "clip.json").read_text())
    assert side["previews"]["poster"] == video.previews.poster

    made = {p: os.stat(p).st_mtime_ns for p in (video.previews.poster, video.previews.strip)}
    events = len(rec.events)
    again = await find_persisted(ledger, FP, dest)
    assert again is not None and again.previews == video.previews
    assert {p: os.stat(p).st_mtime_ns for p in made} == made  # not written again
    assert len((await ledger.get(FP)).events) == events  # nothing recorded again


async def test_an_old_record_gets_previews_from_the_stored_video_without_any_call(tmp_path, mp4):
    out = tmp_path / "out"
    ledger = await _ledger(out)
    dest = out / "old.mp4"
    dest.write_bytes(mp4)
    import hashlib

    rec = await ledger.get(FP)
    rec.ended("SUCCEEDED")
    rec.persisted(str(dest), hashlib.sha256(mp4).hexdigest(), len(mp4))  # no previews: old
    await ledger.put(rec)
    poster, strip = preview_paths(str(dest))

    read_only = await find_persisted(ledger, FP, str(dest), make_missing_previews=False)
    assert read_only is not None and read_only.previews is None
    assert not Path(poster).exists() and (await ledger.get(FP)).previews is None

    kept = await find_persisted(ledger, FP, str(dest))  # no client: nothing can be called
    assert kept is not None and kept.previews is not None
    assert Path(poster).stat().st_size > 0 and Path(strip).stat().st_size > 0
    stored = await ledger.get(FP)
    assert stored.previews == kept.previews and stored.events[-1]["event"] == "previews"
    assert stored.state is LedgerState.PERSISTED and stored.sha256 == rec.sha256

    mtime = Path(poster).stat().st_mtime_ns
    assert (await find_persisted(ledger, FP, str(dest))).previews == kept.previews
    assert Path(poster).stat().st_mtime_ns == mtime


async def test_a_video_that_cannot_be_previewed_is_still_kept(tmp_path, caplog):
    out = tmp_path / "out"
    ledger = await _ledger(out)
    body = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8
    with caplog.at_level(logging.WARNING, logger="kf2v_tasks.generation.persist"):
        video = await persist_task_video(
            _succeeded(),
            str(out / "bad.mp4"),
            client=VideoClient(body),
            submission=_submission(),
            ledger=ledger,
        )
    assert video.previews is None and (out / "bad.mp4").read_bytes() == body
    rec = await ledger.get(FP)
    assert rec.state is LedgerState.PERSISTED and rec.previews is None
    assert "no previews for" in caplog.text
    assert "previews" not in json.loads((out / "bad.json").read_text())


# -- copy_previews: a row doing the same work as an earlier row ------------------------------


async def _kept_with_previews(out: Path, mp4: bytes) -> Path:
    """A kept video as persist leaves it: the file, its previews, a sidecar naming both."""
    import hashlib

    out.mkdir(parents=True, exist_ok=True)
    src = out / "lead.mp4"
    src.write_bytes(mp4)
    previews = await make_previews(str(src))
    side = {"sha256": hashlib.sha256(mp4).hexdigest(), "previews": previews.model_dump()}
    (out / "lead.json").write_text(json.dumps(side))
    return src


async def test_a_copy_gets_the_sources_previews_copied_under_its_own_name(
    tmp_path, mp4, monkeypatch
):
    out = tmp_path / "out"
    src = await _kept_with_previews(out, mp4)
    dest = out / "sub" / "copy.mp4"
    await copy_video(str(src), str(dest))

    def no_decoding(*args, **kwargs):
        raise AssertionError("the source's previews are copied, not decoded again")

    monkeypatch.setattr("kf2v_tasks.generation.previews.render_previews", no_decoding)
    copied = await copy_previews(str(src), str(dest))
    poster, strip = preview_paths(str(dest))
    assert copied is not None and (copied.poster, copied.strip) == (poster, strip)
    source = json.loads((out / "lead.json").read_text())["previews"]
    assert copied.model_dump(exclude={"poster", "strip"}) == {
        k: v for k, v in source.items() if k not in ("poster", "strip")
    }
    for mine, theirs in zip((poster, strip), preview_paths(str(src)), strict=True):
        assert Path(mine).read_bytes() == Path(theirs).read_bytes()
    # The copy's sidecar names its own previews, not the source's.
    side = json.loads((out / "sub" / "copy.json").read_text())
    assert side["previews"]["poster"] == poster and side["copied_from"] == str(src)
    assert json.loads((out / "lead.json").read_text())["previews"] == source  # untouched


async def test_a_copy_of_an_old_or_changed_source_gets_previews_from_its_own_frames(tmp_path, mp4):
    out = tmp_path / "out"
    src = await _kept_with_previews(out, mp4)
    side = json.loads((out / "lead.json").read_text())
    # The source's sidecar speaks of another video: its JPEGs may not match the copy.
    (out / "lead.json").write_text(json.dumps({**side, "sha256": "0" * 64}))
    dest = out / "copy.mp4"
    await copy_video(str(src), str(dest))
    Path(preview_paths(str(src))[0]).write_bytes(b"not this video's poster")

    made = await copy_previews(str(src), str(dest))
    assert made is not None and made.poster == preview_paths(str(dest))[0]
    frames = _frames(str(dest))
    poster = _decode_jpeg(made.poster)
    assert poster.shape == frames[made.poster_frame].shape
    assert _psnr(poster, frames[made.poster_frame]) > 30
    assert json.loads((out / "copy.json").read_text())["previews"]["poster"] == made.poster

    # A source kept before previews existed, and no sidecar at all: made from the copy too.
    (out / "lead.json").unlink()
    other = out / "other.mp4"
    await copy_video(str(src), str(other))
    made = await copy_previews(str(src), str(other))
    assert made is not None and Path(made.strip).stat().st_size > 0
    assert not (out / "other.json").exists()  # no sidecar is invented


async def test_a_copy_that_cannot_be_previewed_is_still_kept(tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    body = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8
    (out / "bad.mp4").write_bytes(body)
    await copy_video(str(out / "bad.mp4"), str(out / "bad2.mp4"))
    with caplog.at_level(logging.WARNING, logger="kf2v_tasks.generation.previews"):
        assert await copy_previews(str(out / "bad.mp4"), str(out / "bad2.mp4")) is None
    assert (out / "bad2.mp4").read_bytes() == body and "no previews for" in caplog.text
    assert not any(p.name.endswith(".jpg") for p in out.iterdir())
