"""The rendered MP4: size rule, duration, frame rate and fidelity of first/last frames."""

from __future__ import annotations

import io

import av
import httpx
import numpy as np
from PIL import Image

from kf2v_tasks.simulator.render import fit_frames, load_rgb, output_size, tiny_size

from .simkit import body, create, data_uri, gradient_png, wait_status


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_output_size_rule():
    assert output_size(750, 1000, "720P") == (816, 1104)  # the documented example
    assert output_size(1280, 720, "720P") == (1280, 720)
    assert output_size(832, 480, "480P") == (832, 480)
    assert output_size(1920, 1080, "1080P") == (1920, 1072)  # 1080 is not a multiple of 16
    w, h = output_size(300, 400, "480P")
    assert w % 16 == 0 and h % 16 == 0
    assert tiny_size(320, 240) == (80, 64)


def test_full_render_quality(make_sim):
    sim = make_sim(render="full")
    first, last = gradient_png(320, 240), gradient_png(300, 400, hue=120)
    payload = body(input={"first_frame_url": data_uri(first), "last_frame_url": data_uri(last)})
    task_id = create(sim, payload).json()["output"]["task_id"]
    url = wait_status(sim, task_id, {"SUCCEEDED"})["output"]["video_url"]
    mp4 = httpx.get(url, timeout=60).content

    size = output_size(320, 240, "480P")
    exp_first, exp_last = fit_frames(load_rgb(first), load_rgb(last), size)
    with av.open(io.BytesIO(mp4)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.width, stream.height) == size
        assert stream.width % 16 == 0 and stream.height % 16 == 0
        assert abs(stream.width / stream.height - 320 / 240) < 0.02
        assert stream.average_rate == 30
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        duration = float(stream.duration * stream.time_base)
    assert len(frames) == 150
    assert abs(duration - 5.0) < 0.05
    assert psnr(frames[0], exp_first) >= 30
    assert psnr(frames[-1], exp_last) >= 30
    assert psnr(frames[0], exp_last) < 25  # it really moves from one frame to the other


def test_alpha_png_is_flattened():
    rgba = Image.new("RGBA", (300, 300), (255, 0, 0, 0))
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    assert load_rgb(buf.getvalue()).getpixel((0, 0)) == (255, 255, 255)
