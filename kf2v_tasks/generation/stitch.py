"""Join the clips of a storyboard into one MP4, without the duplicated boundary frames.

Clip ``k`` ends on keyframe ``k+1`` and clip ``k+1`` starts on it, so every clip after the
first loses its first frame: ``n`` clips of ``f`` frames give ``n*f - (n-1)`` frames.

The film is **remuxed** (packets copied) when every clip has the same codec, size, pixel
format, frame rate and parameters and each later clip's second packet is a keyframe.
Long-GOP H.264, as DashScope and the simulator send, predicts frame 2 from frame 1, so
dropping frame 1 without decoding would corrupt each clip's start: the film is then
**re-encoded** (CRF 18) and :attr:`StitchResult.reencode_reason` says why. Audio is not
carried. The heavy work runs in a worker thread.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Optional

from pydantic import BaseModel, Field

from kf2v_tasks.storage.paths import RESERVED_DIR, is_local, open_fs, run_sync

__all__ = ["StitchError", "StitchResult", "stitch_clips", "stitch_local"]

logger = logging.getLogger("kf2v_tasks.generation.stitch")

#: Quality of a re-encode: visually lossless for these clips, as the simulator renders them.
REENCODE_CRF = 18
#: Encoders of a re-encode, first available wins: H.264 plays in every browser.
FALLBACK_ENCODERS = ("libx264", "mpeg4")


class StitchError(ValueError):
    """A clip cannot be stitched (unreadable, no video stream, no frames); names the clip."""


class StitchResult(BaseModel):
    """What :func:`stitch_clips` wrote."""

    path: str = Field(description="Where the film is (path or URL).")
    clips: int = Field(description="Clips joined.")
    clip_frames: list[int] = Field(description="Frames of each clip, as made.")
    frames: int = Field(description="Frames of the film.")
    dropped_frames: int = Field(description="Boundary frames dropped (clips - 1).")
    reencoded: bool = Field(description="False: the clips' packets were copied (remux).")
    reencode_reason: Optional[str] = Field(
        default=None, description="Why the film had to be re-encoded (None: remuxed)."
    )
    codec: str = Field(default="", description="Video codec of the film.")
    width: int = 0
    height: int = 0
    fps: float = Field(default=0.0, description="Frames per second of the film.")
    sha256: str = ""
    bytes: int = 0
    notes: list[str] = Field(
        default_factory=list, description="Remarks, e.g. audio streams that were left out."
    )


@dataclass
class _Clip:
    """What one clip's container says, read from its packets (nothing decoded)."""

    index: int
    path: str
    codec: str
    width: int
    height: int
    pix_fmt: str
    rate: Optional[Fraction]
    time_base: Fraction
    extradata: bytes
    frames: int
    second_is_key: bool  # its 2nd packet (decode order) is a keyframe
    first_shown_first: bool  # its 1st packet (decode order) is also the first shown
    has_audio: bool

    def where(self) -> str:
        return f"clip {self.index} ({self.path})"


def _probe(index: int, path: str) -> _Clip:
    import av

    try:
        container = av.open(path)
    except Exception as exc:  # av.error.* or OSError: name the clip, keep the reason
        raise StitchError(f"clip {index} ({path}): cannot be read: {exc}") from exc
    with container:
        if not container.streams.video:
            raise StitchError(f"clip {index} ({path}): no video stream")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        packets = [(p.pts, p.is_keyframe) for p in container.demux(stream) if p.size]
        if not packets:
            raise StitchError(f"clip {index} ({path}): no video frames")
        pts = [p for p, _ in packets if p is not None]
        return _Clip(
            index=index,
            path=path,
            codec=ctx.name,
            width=ctx.width,
            height=ctx.height,
            pix_fmt=ctx.format.name if ctx.format else "",
            rate=Fraction(stream.average_rate) if stream.average_rate else None,
            time_base=Fraction(stream.time_base),
            extradata=bytes(ctx.extradata or b""),
            frames=len(packets),
            second_is_key=len(packets) > 1 and packets[1][1],
            first_shown_first=bool(pts) and packets[0][0] == min(pts),
            has_audio=bool(container.streams.audio),
        )


def _remux_problem(clips: Sequence[_Clip]) -> Optional[str]:
    """Why these clips cannot be joined by copying packets; None when they can."""
    first = clips[0]
    if first.rate is None:
        return f"{first.where()} has no constant frame rate to lay the clips end to end"
    for c in clips[1:]:
        for name, mine, theirs in (
            ("codec", c.codec, first.codec),
            ("size", (c.width, c.height), (first.width, first.height)),
            ("pixel format", c.pix_fmt, first.pix_fmt),
            ("frame rate", c.rate, first.rate),
        ):
            if mine != theirs:
                return (
                    f"{c.where()} has another {name} ({_show(mine)}) than clip 1 ({_show(theirs)})"
                )
        if c.extradata != first.extradata:
            return f"{c.where()} has other codec parameters (SPS/PPS) than clip 1"
        if c.frames < 2:
            return f"{c.where()} has a single frame, the boundary frame itself"
        if not (c.second_is_key and c.first_shown_first):
            return (
                f"{c.where()}: its second frame is predicted from its first (not a keyframe), "
                "so the duplicated first frame cannot be dropped without decoding"
            )
    return None


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return "x".join(str(v) for v in value)
    return str(value)


def _remux(clips: Sequence[_Clip], dest: str) -> int:
    """Copy every clip's packets into ``dest``, later clips without their first; frames kept."""
    import av

    first = clips[0]
    tb = first.time_base
    step = Fraction(1) / first.rate  # one frame, in seconds (rate checked by _remux_problem)
    frame_ticks = step / tb
    cursor = Fraction(0)  # where the next clip starts, in ticks of tb
    last_dts: Optional[int] = None
    kept = 0
    with av.open(dest, mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
        with av.open(first.path) as template:
            stream = out.add_stream_from_template(template.streams.video[0])
        for clip in clips:
            with av.open(clip.path) as src:
                s = src.streams.video[0]
                scale = Fraction(s.time_base) / tb
                packets = [p for p in src.demux(s) if p.size]
                if clip.index > 1:
                    packets = packets[1:]  # the boundary frame: clip before ends on it
                start = min(p.pts for p in packets)
                end = cursor
                for p in packets:
                    pts = cursor + (p.pts - start) * scale
                    dts = cursor + ((p.dts if p.dts is not None else p.pts) - start) * scale
                    p.pts, p.dts = round(pts), round(dts)
                    if last_dts is not None and p.dts <= last_dts:
                        p.dts = last_dts + 1  # keep decode order strictly increasing
                    if p.dts > p.pts:
                        raise StitchError(f"{clip.where()}: timestamps cannot be laid end to end")
                    last_dts = p.dts
                    duration = (p.duration or 0) * scale or frame_ticks
                    end = max(end, pts + duration)
                    p.time_base = tb
                    p.stream = stream
                    out.mux(p)
                    kept += 1
                cursor = end
    return kept


def _encoder() -> str:
    import av

    for name in FALLBACK_ENCODERS:
        if name in av.codecs_available:
            return name
    raise StitchError(f"no video encoder available (tried {', '.join(FALLBACK_ENCODERS)})")


def _reencode(clips: Sequence[_Clip], dest: str) -> tuple[int, str]:
    """Decode every clip, drop later clips' first frames, encode once; (frames, encoder)."""
    import av

    first = clips[0]
    rate = first.rate or Fraction(30)
    encoder = _encoder()
    written = 0
    with av.open(dest, mode="w", format="mp4", options={"movflags": "+faststart"}) as out:
        stream = out.add_stream(encoder, rate=rate)
        stream.width, stream.height = first.width, first.height
        stream.pix_fmt = "yuv420p"
        if encoder == "libx264":
            stream.options = {"crf": str(REENCODE_CRF), "preset": "fast"}
        else:
            stream.bit_rate = max(1_000_000, first.width * first.height * 8)
        for clip in clips:
            with av.open(clip.path) as src:
                for i, frame in enumerate(src.decode(video=0)):
                    if i == 0 and clip.index > 1:
                        continue  # the boundary frame: the clip before ends on it
                    image = frame.reformat(width=first.width, height=first.height, format="yuv420p")
                    image.pts = written
                    image.time_base = Fraction(1) / rate
                    out.mux(stream.encode(image))
                    written += 1
        out.mux(stream.encode(None))  # flush: the last frames are really written
    return written, encoder


def stitch_local(
    clips: Sequence[str], dest: str, *, reencode: Optional[bool] = None
) -> StitchResult:
    """Stitch local clips into the local file ``dest``, in place (:func:`stitch_clips` is the
    atomic, any-storage version). ``reencode``: None decides from the streams; True always
    re-encodes; False remuxes or raises :class:`StitchError`.
    """
    if not clips:
        raise StitchError("no clips to stitch")
    probed = [_probe(i, path) for i, path in enumerate(clips, start=1)]
    reason = _remux_problem(probed)
    if reencode is True:
        reason = "re-encode asked for"
    elif reencode is False and reason:
        raise StitchError(f"cannot remux: {reason}")
    if reason is None:
        try:
            frames, codec = _remux(probed, dest), probed[0].codec
        except StitchError as exc:
            reason = str(exc)
    if reason is not None:
        frames, codec = _reencode(probed, dest)
    notes = [f"{c.where()} has audio, which the film leaves out" for c in probed if c.has_audio]
    first = probed[0]
    sha, size = _hash(dest)
    return StitchResult(
        path=dest,
        clips=len(probed),
        clip_frames=[c.frames for c in probed],
        frames=frames,
        dropped_frames=len(probed) - 1,
        reencoded=reason is not None,
        reencode_reason=reason,
        codec=codec,
        width=first.width,
        height=first.height,
        fps=float(first.rate or 0),
        sha256=sha,
        bytes=size,
        notes=notes,
    )


def _hash(path: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _stitch_sync(
    clips: Sequence[str], output: str, storage_options: Optional[dict]
) -> StitchResult:
    with tempfile.TemporaryDirectory(prefix="kf2v-stitch-") as work:
        local = []
        for i, clip in enumerate(clips, start=1):
            fs, path = open_fs(clip, storage_options)
            if is_local(fs):
                local.append(path)
                continue
            copy = os.path.join(work, f"clip-{i:04d}.mp4")
            fs.get_file(path, copy)  # PyAV reads local files; clips are a few MB
            local.append(copy)
        fs, dest = open_fs(output, storage_options)
        if is_local(fs):  # a temp file beside the film (same disk), renamed over it when done
            folder = os.path.join(os.path.dirname(dest), RESERVED_DIR, "tmp")
            os.makedirs(folder, exist_ok=True)
            tmp = os.path.join(folder, f"{uuid.uuid4().hex}-{os.path.basename(dest)}")
        else:
            tmp = os.path.join(work, "film.mp4")
        try:
            result = stitch_local(local, tmp)
            if is_local(fs):
                os.replace(tmp, dest)
            else:
                fs.put_file(tmp, dest)  # one upload: readers never see half a film
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return result.model_copy(update={"path": output})


async def stitch_clips(
    clips: Sequence[str],
    output: str,
    *,
    storage_options: Optional[dict] = None,
) -> StitchResult:
    """Join ``clips`` (in order) into the MP4 ``output``, dropping each duplicated boundary frame.

    The film appears complete or not at all; the result and the log say whether it was
    re-encoded (only when the clips cannot be remuxed), and why.

    Raises:
        StitchError: a clip cannot be read or has no video (the clip is named).
    """
    result = await run_sync(_stitch_sync, list(clips), output, storage_options)
    if result.reencoded:
        logger.info(
            "stitched %d clips into %s (%d frames), re-encoded: %s",
            result.clips,
            output,
            result.frames,
            result.reencode_reason,
        )
    else:
        logger.info(
            "stitched %d clips into %s (%d frames) by remux, nothing re-encoded",
            result.clips,
            output,
            result.frames,
        )
    for note in result.notes:
        logger.warning("%s", note)
    return result
