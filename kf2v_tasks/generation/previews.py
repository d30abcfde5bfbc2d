"""Previews of a kept video: a poster (its middle frame) and a strip of first, middle, last.

JPEGs beside the video (``out/a.poster.jpg``, ``out/a.strip.jpg``; :func:`preview_paths`),
decoded from the stored video itself, never from the row's keyframes, so they show what
was actually made. One decoding pass: the frame count comes from the container, or from
counting packets (which decodes nothing). Written atomically; PyAV loads only when a
preview is made.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any, Optional

from pydantic import BaseModel, Field

from kf2v_tasks.errors import PermanentError
from kf2v_tasks.storage.files import (
    read_bytes,
    read_json,
    sidecar_path,
    write_bytes_atomic,
    write_json_atomic,
)
from kf2v_tasks.storage.objects import open_object
from kf2v_tasks.storage.paths import is_local, open_fs, run_sync

__all__ = [
    "POSTER_SUFFIX",
    "STRIP_HEIGHT",
    "STRIP_SUFFIX",
    "PreviewError",
    "Previews",
    "RenderedPreviews",
    "copy_previews",
    "make_previews",
    "preview_paths",
    "render_previews",
]

logger = logging.getLogger("kf2v_tasks.generation.previews")

#: Name endings of the poster and the strip (they replace the video's extension).
POSTER_SUFFIX = ".poster.jpg"
STRIP_SUFFIX = ".strip.jpg"
#: Height of each of the strip's three frames (never scaled up).
STRIP_HEIGHT = 180
#: JPEG quality: posters are looked at, not archived.
JPEG_QUALITY = 85
#: What the JPEGs are served as from S3 (an image artifact or <img> needs an image type).
JPEG_CONTENT_TYPE = "image/jpeg"


class PreviewError(PermanentError, ValueError):
    """The video cannot be decoded into previews (no video stream, no frame, corrupt)."""


class Previews(BaseModel):
    """Where a video's previews are, and which of its frames they show."""

    poster: str = Field(description="The poster JPEG (the middle frame), beside the video.")
    strip: str = Field(description="The strip JPEG: first, middle and last frames.")
    frames: int = Field(ge=1, description="Frames in the video.")
    poster_frame: int = Field(ge=0, description="Index of the frame the poster shows.")
    width: int = Field(ge=1, description="Width of the video (and of the poster), px.")
    height: int = Field(ge=1, description="Height of the video (and of the poster), px.")


def preview_paths(video_path: str) -> tuple[str, str]:
    """The poster and strip paths of a video: same folder, same stem."""
    head, sep, name = video_path.rpartition("/")
    stem, dot, _ext = name.rpartition(".")
    stem = stem if dot and stem else name
    return f"{head}{sep}{stem}{POSTER_SUFFIX}", f"{head}{sep}{stem}{STRIP_SUFFIX}"


@dataclass(frozen=True)
class RenderedPreviews:
    """The two JPEGs of a video, in memory, and the frames they show."""

    poster_jpeg: bytes
    strip_jpeg: bytes
    frames: int
    poster_frame: int
    width: int
    height: int


def _frame_count(container: Any, stream: Any) -> int:
    """Frames in ``stream``: the container's count, else its packets (nothing decoded)."""
    if stream.frames and stream.frames > 0:
        return int(stream.frames)
    return sum(1 for packet in container.demux(stream) if packet.size)


def _pick(source: Any, count: int) -> tuple[list[Any], int]:
    """Decode ``source`` once; the PIL images of frames 0, count // 2 and the last."""
    import av

    middle = count // 2
    first = mid = last = None
    seen = 0
    with av.open(source) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # decoding is the cost: let FFmpeg use the cores
        for frame in container.decode(stream):
            if seen == 0:
                first = frame.to_image()
            if seen == middle:
                mid = frame.to_image()
            last = frame
            seen += 1
    if first is None or last is None:
        raise PreviewError("the video has no decodable frame")
    if mid is None:  # the container's count was wrong: the true middle is elsewhere
        raise _Recount(seen)
    return [first, mid, last.to_image()], seen


class _Recount(Exception):
    def __init__(self, frames: int) -> None:
        self.frames = frames


def _jpeg(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return buf.getvalue()


def _strip(images: list[Any]) -> Any:
    from PIL import Image

    w, h = images[0].size
    height = min(STRIP_HEIGHT, h)
    width = max(1, round(w * height / h))
    thumbs = [im.resize((width, height), Image.Resampling.LANCZOS) for im in images]
    strip = Image.new("RGB", (width * len(thumbs), height))
    for i, thumb in enumerate(thumbs):
        strip.paste(thumb, (i * width, 0))
    return strip


def render_previews(source: Any) -> RenderedPreviews:
    """Decode a video (a local path or a seekable binary file) into its poster and strip.

    Raises:
        PreviewError: the video has no video stream or no decodable frame.
    """
    import av

    def rewind() -> None:
        if hasattr(source, "seek"):
            source.seek(0)

    try:
        with av.open(source) as container:
            if not container.streams.video:
                raise PreviewError("the file has no video stream")
            count = _frame_count(container, container.streams.video[0])
        rewind()
        try:
            images, count = _pick(source, max(count, 1))
        except _Recount as again:
            rewind()
            images, count = _pick(source, again.frames)
    except av.error.FFmpegError as exc:
        raise PreviewError(f"the video cannot be decoded: {exc}") from None
    poster = images[1]
    return RenderedPreviews(
        poster_jpeg=_jpeg(poster),
        strip_jpeg=_jpeg(_strip(images)),
        frames=count,
        poster_frame=count // 2,
        width=poster.size[0],
        height=poster.size[1],
    )


def _render_stored(
    video_path: str, storage_options: Optional[dict], size: Optional[int]
) -> RenderedPreviews:
    fs, path = open_fs(video_path, storage_options)
    if is_local(fs):
        return render_previews(path)
    # Object stores: a seekable file that fetches ranges on demand, never the whole video
    # in memory at once (mp4's index may sit at the end).
    with open_object(fs, path, size=size) as f:
        return render_previews(f)


async def make_previews(
    video_path: str, *, storage_options: Optional[dict] = None, size: Optional[int] = None
) -> Previews:
    """Decode the stored video at ``video_path`` and write its poster and strip beside it.

    ``size``: the video's bytes when the caller just wrote it (saves a HeadObject on S3).

    Raises:
        PreviewError: the video cannot be decoded.
        FileNotFoundError: there is no video at ``video_path``.
    """
    rendered = await run_sync(_render_stored, video_path, storage_options, size)
    poster, strip = preview_paths(video_path)
    for path, data in ((poster, rendered.poster_jpeg), (strip, rendered.strip_jpeg)):
        await write_bytes_atomic(
            path, data, storage_options=storage_options, content_type=JPEG_CONTENT_TYPE
        )
    return Previews(
        poster=poster,
        strip=strip,
        frames=rendered.frames,
        poster_frame=rendered.poster_frame,
        width=rendered.width,
        height=rendered.height,
    )


async def copy_previews(
    src_video: str, dest_video: str, *, storage_options: Optional[dict] = None
) -> Optional[Previews]:
    """Previews for ``dest_video``, a byte-for-byte copy of the kept ``src_video`` (no DashScope call).

    The source's JPEGs are copied when its sidecar records them for the very video copied
    (same sha256); otherwise they are decoded from the copy. The copy's sidecar then names its
    own previews. Previews never fail a row: ``None`` (logged) when none could be made.
    """
    dest_side = await _sidecar(dest_video, storage_options)
    try:
        previews = await _copy_jpegs(src_video, dest_video, dest_side, storage_options)
        if previews is None:
            previews = await make_previews(dest_video, storage_options=storage_options)
    except Exception as exc:  # a kept video is a success with or without its previews
        logger.warning("no previews for %s: %s", dest_video, exc)
        return None
    if dest_side is not None:
        dest_side["previews"] = previews.model_dump(mode="json")
        await write_json_atomic(
            sidecar_path(dest_video), dest_side, storage_options=storage_options
        )
    return previews


async def _sidecar(video: str, storage_options: Optional[dict]) -> Optional[dict[str, Any]]:
    try:
        doc = await read_json(sidecar_path(video), storage_options=storage_options)
    except (FileNotFoundError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


async def _copy_jpegs(
    src_video: str,
    dest_video: str,
    dest_side: Optional[dict[str, Any]],
    storage_options: Optional[dict],
) -> Optional[Previews]:
    """Copy the source's JPEGs if they are known to show the copied bytes; else ``None``."""
    src_side = await _sidecar(src_video, storage_options)
    if not src_side or not src_side.get("previews") or dest_side is None:
        return None
    if not src_side.get("sha256") or src_side.get("sha256") != dest_side.get("sha256"):
        return None  # the source changed since the copy (or never said what it was)
    try:
        made = Previews.model_validate(src_side["previews"])
    except ValueError:
        return None
    targets = preview_paths(dest_video)
    try:
        jpegs = [
            await read_bytes(path, storage_options=storage_options)
            for path in preview_paths(src_video)
        ]
    except FileNotFoundError:
        return None
    for path, data in zip(targets, jpegs, strict=True):
        await write_bytes_atomic(
            path, data, storage_options=storage_options, content_type=JPEG_CONTENT_TYPE
        )
    return made.model_copy(update={"poster": targets[0], "strip": targets[1]})
