"""A ``first_clip`` to continue: read an mp4 or mov, check it (§16) with PyAV, send it.

wan2.7-i2v continues a clip (mp4 or mov, 2-10 s, each side 240-4096 px, aspect 1:8-8:1,
at most 100 MB) up to the row's ``duration`` in total, and bills all of ``duration``.
Everything is checked before anything is paid; every limit a clip breaks is named, with
its value. A public ``http(s)`` URL is passed through (after the check); a file anywhere
else goes through the temporary ``oss://`` upload (a clip is too large for a data URI).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from typing import Any, Optional

from kf2v_tasks.dashscope.catalog import ModelSpec, active_catalog
from kf2v_tasks.dashscope.models import (
    CLIP_FORMATS,
    CLIP_MAX_ASPECT,
    CLIP_MAX_BYTES,
    CLIP_MAX_SECONDS,
    CLIP_MAX_SIDE,
    CLIP_MIN_SECONDS,
    CLIP_MIN_SIDE,
)
from kf2v_tasks.errors import FrameValidationError
from kf2v_tasks.generation.frame_source import (
    display_source,
    is_http,
    read_frame_bytes,
    resend_validated,
)
from kf2v_tasks.generation.models import ClipInfo, FrameTransport

__all__ = ["ClipValidationError", "clip_problems", "inspect_clip", "prepare_clip"]

ROLE = "clip"
_MIB = 1024 * 1024


class ClipValidationError(FrameValidationError):
    """A first_clip is unusable: ``clip '<source>': <problems>``; ``problems`` lists each."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(source, "; ".join(problems), role=ROLE)
        self.problems = problems
        self.args = (f"clip {source!r}: {self.reason}",)


def _probe(data: bytes) -> tuple[str, float, int, int]:
    """``(format, seconds, width, height)``; raises ValueError when it is no mp4/mov video."""
    import av  # lazily: `kf2v run` without PyAV says so in one line before it gets here

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if "mp4" not in container.format.name.split(","):
                raise ValueError(f"is not mp4 or mov (it reads as {container.format.name})")
            if not container.streams.video:
                raise ValueError("has no video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            else:
                seconds = (container.duration or 0) / av.time_base
            next(container.decode(stream))  # one frame decodes: not just a header
    except (av.FFmpegError, StopIteration, UnicodeDecodeError) as exc:
        raise ValueError(f"is not a readable video ({type(exc).__name__})") from None
    # QuickTime's ftyp brand is "qt  "; mp4 files name an ISO brand.
    fmt = "mov" if data[8:12] == b"qt  " else "mp4"
    return fmt, seconds, width, height


def clip_problems(seconds: float, width: int, height: int) -> list[str]:
    """Each §16 limit a clip of this length and size breaks, with its value."""
    problems = []
    if not CLIP_MIN_SECONDS - 0.05 <= seconds <= CLIP_MAX_SECONDS + 0.05:
        problems.append(
            f"is {seconds:.1f} s long; a first_clip must be "
            f"{CLIP_MIN_SECONDS:g}..{CLIP_MAX_SECONDS:g} s"
        )
    if not (CLIP_MIN_SIDE <= width <= CLIP_MAX_SIDE and CLIP_MIN_SIDE <= height <= CLIP_MAX_SIDE):
        problems.append(
            f"is {width}×{height} px; each side must be {CLIP_MIN_SIDE}..{CLIP_MAX_SIDE} px"
        )
    if min(width, height) > 0 and max(width, height) > CLIP_MAX_ASPECT * min(width, height):
        problems.append(
            f"has an aspect of {max(width, height) / min(width, height):.2f}:1; it must be "
            f"between 1:{CLIP_MAX_ASPECT:g} and {CLIP_MAX_ASPECT:g}:1"
        )
    return problems


async def inspect_clip(
    source: str,
    spec: ModelSpec,
    *,
    storage_options: Optional[dict] = None,
) -> ClipInfo:
    """Read and validate a first_clip for the model ``spec``; decide how it is sent.

    Raises:
        ClipValidationError: the model continues no clip, or the file is missing, larger
            than 100 MB, not an mp4/mov video, or breaks the length, side or aspect
            limits; ``problems`` names every limit broken and the clip's value.
    """
    shown = display_source(source)
    if not spec.clip:
        takers = ", ".join(s.name for s in active_catalog().models if s.clip)
        raise ClipValidationError(
            shown, [f"{spec.name} cannot continue a clip (models that can: {takers})"]
        )
    try:
        data = await read_frame_bytes(
            source, storage_options=storage_options, max_bytes=CLIP_MAX_BYTES
        )
    except FrameValidationError as exc:
        raise ClipValidationError(shown, [exc.reason.replace("frames may", "a clip may")]) from None
    if len(data) > CLIP_MAX_BYTES:
        limit = CLIP_MAX_BYTES // _MIB
        raise ClipValidationError(
            shown, [f"file is larger than {limit} MiB, the most a clip may be"]
        )
    try:
        fmt, seconds, width, height = await asyncio.to_thread(_probe, data)
    except ValueError as exc:
        raise ClipValidationError(shown, [f"{exc}; a first_clip is an mp4 or mov video"]) from None
    problems = clip_problems(seconds, width, height)
    if problems:
        raise ClipValidationError(shown, problems)
    assert fmt in CLIP_FORMATS
    return ClipInfo(
        source=source,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        format=fmt,
        seconds=round(seconds, 3),
        width=width,
        height=height,
        transport=FrameTransport.URL if is_http(source) else FrameTransport.UPLOAD,
    )


async def prepare_clip(
    info: ClipInfo,
    *,
    client: Any,
    model: str,
    storage_options: Optional[dict] = None,
) -> str:
    """The ``first_clip`` URL of a validated clip: its URL, or an ``oss://`` upload.

    Raises:
        ClipValidationError: the file changed since validation.
        FrameValidationError: the file vanished or cannot be read.
    """

    def _changed(shown: str, why: str) -> ClipValidationError:
        return ClipValidationError(shown, [why])

    return await resend_validated(info, "clip", _changed, client, model, storage_options)
