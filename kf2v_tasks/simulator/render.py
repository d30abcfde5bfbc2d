"""Video payloads: a real H.264 MP4 crossfading first → last frame, or seeded filler bytes.

Videos of media-protocol models are as long as asked and carry an AAC track
(:mod:`kf2v_tasks.simulator.soundtrack`); kf2v videos are 5 s and silent.

Sizing follows the service: the first frame's aspect ratio at the tier's pixel budget,
both sides floored to multiples of 16 (750×1000 @720P → 816×1104, as documented).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from fractions import Fraction
from typing import Optional

import av
import numpy as np
from PIL import Image

from kf2v_tasks.dashscope.models import RESOLUTION_PIXELS, Resolution
from kf2v_tasks.simulator.soundtrack import add_aac_stream, mux_track

#: Chunk size of generated filler payloads (also the unit a Range start is aligned to).
CHUNK = 1 << 20
TINY_SHORT_SIDE = 64


def _floor16(x: float) -> int:
    # The epsilon keeps exact products (e.g. 1280.0000001) from dropping a whole block.
    return max(16, int(x + 1e-6) // 16 * 16)


def output_size(width: int, height: int, resolution: Resolution | str) -> tuple[int, int]:
    """Output (width, height) for a first frame of ``width``×``height`` at a tier.

    Example:
        ```python
        from kf2v_tasks.simulator.render import output_size
        assert output_size(750, 1000, "720P") == (816, 1104)
        ```
    """
    pixels = RESOLUTION_PIXELS[Resolution(resolution)]
    aspect = width / height
    return _floor16(math.sqrt(pixels * aspect)), _floor16(math.sqrt(pixels / aspect))


def tiny_size(width: int, height: int) -> tuple[int, int]:
    """A small size with the same aspect ratio: 64 px on the short side."""
    if width <= height:
        return TINY_SHORT_SIDE, _floor16(TINY_SHORT_SIDE * height / width + 8)
    return _floor16(TINY_SHORT_SIDE * width / height + 8), TINY_SHORT_SIDE


def load_rgb(data: bytes) -> Image.Image:
    """Decode image bytes to RGB (alpha flattened onto white)."""
    img = Image.open(io.BytesIO(data))
    img.load()
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def fit_frames(
    first: Image.Image, last: Image.Image, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """First frame resized to ``size``; last frame center-cropped to its aspect, then resized."""
    w, h = size
    a = first.resize(size, Image.Resampling.LANCZOS)
    lw, lh = last.size
    target = w / h
    if lw / lh > target:  # too wide: crop the sides
        cw = round(lh * target)
        box = ((lw - cw) // 2, 0, (lw - cw) // 2 + cw, lh)
    else:  # too tall: crop top and bottom
        ch = round(lw / target)
        box = (0, (lh - ch) // 2, lw, (lh - ch) // 2 + ch)
    b = last.crop(box).resize(size, Image.Resampling.LANCZOS)
    return np.asarray(a, dtype=np.uint8), np.asarray(b, dtype=np.uint8)


def render_video(
    first: bytes,
    last: bytes,
    resolution: Resolution | str,
    *,
    tiny: bool = False,
    fps: int = 30,
    seconds: int = 5,
    audio: Optional[np.ndarray] = None,
) -> bytes:
    """Encode an MP4 (H.264, yuv420p) that crossfades from the first to the last frame.

    Frame 0 is the first image and the final frame is the last image, both encoded at
    CRF 18 so they stay close (PSNR > 30 dB) to the resized inputs. ``tiny`` renders
    64 px on the short side at 1 fps (still ``seconds`` long) for fast tests. ``audio``
    (float32 stereo samples, see :func:`~kf2v_tasks.simulator.soundtrack.soundtrack``) adds
    an AAC track.

    Example:
        ```python
        from kf2v_tasks.simulator.render import render_video
        mp4 = render_video(open("a.png", "rb").read(), open("b.png", "rb").read(), "480P")
        ```
    """
    img_a, img_b = load_rgb(first), load_rgb(last)
    if tiny:
        size, fps = tiny_size(*img_a.size), 1
    else:
        size = output_size(*img_a.size, resolution)
    a, b = fit_frames(img_a, img_b, size)
    n = max(2, fps * seconds)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        sound = add_aac_stream(container) if audio is not None else None
        af, bf = a.astype(np.float32), b.astype(np.float32)
        for i in range(n):
            t = i / (n - 1)
            t = t * t * (3 - 2 * t)  # smoothstep: ease in and out
            frame_rgb = a if i == 0 else b if i == n - 1 else (af + (bf - af) * t).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(frame_rgb, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))  # flush, so the last frame is really written
        if sound is not None and audio is not None:
            mux_track(container, sound, audio)
    return buf.getvalue()


def filler_chunks(seed: str, total: int, start: int = 0) -> Iterator[bytes]:
    """Deterministic pseudo-random bytes ``[start, total)``, generated one chunk at a time.

    Chunk ``i`` depends only on ``(seed, i)``, so a Range resume yields the same bytes.
    """
    index, offset = divmod(start, CHUNK)
    while index * CHUNK < total:
        size = min(CHUNK, total - index * CHUNK)
        rng = np.random.default_rng([index, *seed.encode()])
        chunk = rng.bytes(size)
        yield chunk[offset:] if offset else chunk
        offset = 0
        index += 1
