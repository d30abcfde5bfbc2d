"""Stitching clips into one film: remux where the streams allow, else one re-encode."""

from __future__ import annotations

import asyncio
from fractions import Fraction
from pathlib import Path

import av
import fsspec
import numpy as np
import pytest

from kf2v_tasks.generation.stitch import StitchError, stitch_clips, stitch_local
from kf2v_tasks.simulator.render import render_video

from helpers import make_frame


def grey_clip(path: Path, start: int, end: int, *, intra: bool, n=6, fps=8, size=(96, 64)):
    """An H.264 clip of flat grey frames from ``start`` to ``end``; ``intra``: all keyframes."""
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height = size
        s.pix_fmt = "yuv420p"
        s.options = {
            "crf": "10",
            "preset": "veryfast",
            **({"x264-params": "keyint=1"} if intra else {}),
        }
        for i in range(n):
            value = round(start + (end - start) * i / (n - 1))
            frame = av.VideoFrame.from_ndarray(
                np.full((size[1], size[0], 3), value, np.uint8), format="rgb24"
            )
            frame.pts, frame.time_base = i, Fraction(1, fps)
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    return str(path)


def greys(path) -> list[int]:
    with av.open(str(path)) as c:
        return [round(float(f.to_ndarray(format="gray").mean())) for f in c.decode(video=0)]


def chain(folder: Path, clips: int, **kw) -> list[str]:
    """Clips 0→40, 40→80, ...: each starts on the frame the one before ends on."""
    return [grey_clip(folder / f"c{k}.mp4", 40 * k, 40 * (k + 1), **kw) for k in range(clips)]


def test_all_intra_clips_are_remuxed_without_their_boundary_frames(tmp_path):
    clips = chain(tmp_path, 3, intra=True)
    film = stitch_local(clips, str(tmp_path / "film.mp4"))
    assert not film.reencoded and film.reencode_reason is None
    assert film.clip_frames == [6, 6, 6] and film.frames == 16 and film.dropped_frames == 2
    values = greys(tmp_path / "film.mp4")
    assert len(values) == 16
    # Every boundary value (40, 80) appears once: the later clip's copy was dropped.
    assert [v for v in values if abs(v - 40) <= 2] == [values[5]]
    assert [v for v in values if abs(v - 80) <= 2] == [values[10]]
    assert values == sorted(values) and values[0] <= 2 and values[-1] >= 118
    with av.open(str(tmp_path / "film.mp4")) as c:  # laid end to end: 16 frames at 8 fps
        s = c.streams.video[0]
        assert float(s.duration * s.time_base) == pytest.approx(2.0, abs=0.01)
        packets = [(p.pts, p.dts) for p in c.demux(s) if p.size]
    assert [p for p, _ in packets] == sorted(p for p, _ in packets)
    forced = stitch_local(clips, str(tmp_path / "forced.mp4"), reencode=True)
    assert forced.reencoded and forced.frames == len(greys(tmp_path / "forced.mp4")) == 16


def test_long_gop_clips_are_reencoded_and_say_why(tmp_path):
    keys = [
        make_frame(tmp_path / f"k{i}.png", (320, 240), (60 * i, 90, 200 - 50 * i)) for i in range(3)
    ]
    clips = []
    for i in range(2):  # what DashScope and the simulator send: H.264, one keyframe
        path = tmp_path / f"sim{i}.mp4"
        path.write_bytes(
            render_video(keys[i].read_bytes(), keys[i + 1].read_bytes(), "480P", tiny=True)
        )
        clips.append(str(path))
    film = stitch_local(clips, str(tmp_path / "film.mp4"))
    assert film.reencoded and film.codec == "libx264"
    assert film.reencode_reason.startswith(f"clip 2 ({clips[1]}): its second frame is predicted")
    assert film.frames == len(greys(tmp_path / "film.mp4")) == 5 + 5 - 1
    with pytest.raises(StitchError, match="cannot remux: clip 2"):
        stitch_local(clips, str(tmp_path / "never.mp4"), reencode=False)


def test_clips_of_another_size_are_reencoded_to_the_first_clips_size(tmp_path):
    a = grey_clip(tmp_path / "a.mp4", 0, 50, intra=True)
    b = grey_clip(tmp_path / "b.mp4", 50, 100, intra=True, size=(128, 96))
    film = stitch_local([a, b], str(tmp_path / "film.mp4"))
    assert film.reencoded and "another size (128x96) than clip 1 (96x64)" in film.reencode_reason
    with av.open(str(tmp_path / "film.mp4")) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (96, 64)
    assert len(greys(tmp_path / "film.mp4")) == 11


def test_a_clip_that_is_not_a_video_is_named(tmp_path):
    good = grey_clip(tmp_path / "good.mp4", 0, 50, intra=True)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(StitchError, match=rf"clip 2 \({bad}\): cannot be read"):
        stitch_local([good, str(bad)], str(tmp_path / "film.mp4"))
    with pytest.raises(StitchError, match="no clips"):
        stitch_local([], str(tmp_path / "film.mp4"))
    assert not (tmp_path / "film.mp4").exists()


def test_clips_and_film_on_another_filesystem(tmp_path):
    fs = fsspec.filesystem("memory")
    urls = []
    for k, local in enumerate(chain(tmp_path, 2, intra=True)):
        urls.append(f"memory://stitch-test/c{k}.mp4")
        fs.pipe_file(urls[-1], Path(local).read_bytes())
    film = asyncio.run(stitch_clips(urls, "memory://stitch-test/out/film.mp4"))
    assert film.path == "memory://stitch-test/out/film.mp4" and not film.reencoded
    data = fs.cat_file("memory://stitch-test/out/film.mp4")
    assert len(data) == film.bytes
    (tmp_path / "copy.mp4").write_bytes(data)
    assert len(greys(tmp_path / "copy.mp4")) == film.frames == 11
    fs.rm("memory://stitch-test", recursive=True)
