"""A create's ``first_clip``: checked as the service documents it (§16), its last frame kept.

The service continues the clip from where it ends, so the simulator renders the new video
from the clip's last frame. The checks are the simulator's own (PyAV), not the client's.
"""

from __future__ import annotations

import io

import av

from kf2v_tasks.dashscope.models import (
    CLIP_MAX_ASPECT,
    CLIP_MAX_BYTES,
    CLIP_MAX_SECONDS,
    CLIP_MAX_SIDE,
    CLIP_MIN_SECONDS,
    CLIP_MIN_SIDE,
)
from kf2v_tasks.simulator.wire import ApiError

__all__ = ["check_clip"]


def _bad(text: str) -> ApiError:
    return ApiError(400, "InvalidParameter", f"The first_clip {text}.")


def check_clip(data: bytes) -> bytes:
    """400 unless ``data`` is an mp4/mov clip within §16's limits; its last frame as PNG."""
    if len(data) > CLIP_MAX_BYTES:
        raise _bad(f"is larger than {CLIP_MAX_BYTES // 2**20} MB")
    last = None
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if "mp4" not in container.format.name.split(",") or not container.streams.video:
                raise _bad("must be an mp4 or mov video")
            stream = container.streams.video[0]
            w, h = stream.codec_context.width, stream.codec_context.height
            seconds = container.duration / av.time_base if container.duration else 0.0
            for frame in container.decode(stream):
                last = frame
    except av.FFmpegError:
        raise _bad("cannot be decoded as a video") from None
    if last is None:
        raise _bad("has no frames")
    if not CLIP_MIN_SECONDS - 0.1 <= seconds <= CLIP_MAX_SECONDS + 0.1:
        raise _bad(
            f"must be {CLIP_MIN_SECONDS:g} to {CLIP_MAX_SECONDS:g} seconds long, not {seconds:.1f}"
        )
    if not (CLIP_MIN_SIDE <= w <= CLIP_MAX_SIDE and CLIP_MIN_SIDE <= h <= CLIP_MAX_SIDE):
        raise _bad(f"size {w}x{h} is outside [{CLIP_MIN_SIDE}, {CLIP_MAX_SIDE}] pixels")
    if max(w, h) > CLIP_MAX_ASPECT * min(w, h):
        raise _bad(
            f"aspect ratio {w}:{h} is outside 1:{CLIP_MAX_ASPECT:g} to {CLIP_MAX_ASPECT:g}:1"
        )
    buf = io.BytesIO()
    last.to_image().save(buf, "PNG")
    return buf.getvalue()
