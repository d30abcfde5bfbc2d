"""Frame validation and preparation: read a first/last frame, check it, decide how it travels.

Checks follow reference §4 and §16: JPEG/PNG/BMP/WEBP, a PNG without alpha (both Model
Studio pages say so, for both protocols: refused here, before anything is paid), each side
within [min_side, max_side] px (240..8000 by default; older docs say 360..2000, so both are
configurable), at most 10 MiB; each model's own bounds are in the models table
(:meth:`FrameLimits.for_model`), the decoding in :mod:`~kf2v_tasks.generation.frame_decode`.
A driving audio (:mod:`~kf2v_tasks.generation.audio`) and a first_clip in the first frame's
place (:mod:`~kf2v_tasks.generation.clip`) are checked with the frames.
Small files are inlined as ``data:`` URIs, larger ones go through the temporary ``oss://``
upload (§10), public ``http(s)`` URLs are passed through untouched.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Optional, Protocol, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kf2v_tasks.dashscope.catalog import get_model
from kf2v_tasks.dashscope.models import DEFAULT_MODEL, Kf2vModel
from kf2v_tasks.errors import FrameValidationError
from kf2v_tasks.generation.audio import AudioValidationError, inspect_audio
from kf2v_tasks.generation.clip import inspect_clip
from kf2v_tasks.generation.frame_decode import _decode, _Reject
from kf2v_tasks.generation.frame_source import (
    MIB,
    display_source,
    is_http,
    read_frame_bytes,
    read_validated,
    too_large,
    upload_name,
)
from kf2v_tasks.generation.models import FrameInfo, FramePair, FrameTransport

if TYPE_CHECKING:
    from kf2v_tasks.dashscope.client import Kf2vClient

logger = logging.getLogger("kf2v_tasks.generation.frames")

#: MIME type of each accepted format, for ``data:`` URIs and uploads.
MIME_TYPES: dict[str, str] = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "BMP": "image/bmp",
    "WEBP": "image/webp",
}
_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "WEBP": "webp"}


class FrameLimits(BaseModel):
    """What the service accepts as a frame; every bound is configurable.

    Example:
        ```python
        from kf2v_tasks.generation.frames import FrameLimits
        strict = FrameLimits(min_side=360, max_side=2000)   # the older documented bounds
        ```
    """

    model_config = ConfigDict(frozen=True)

    min_side: int = Field(default=240, ge=1, description="Smallest allowed width/height (px).")
    max_side: int = Field(default=8000, ge=1, description="Largest allowed width/height (px).")
    max_bytes: int = Field(default=10 * MIB, ge=1, description="Largest accepted file size.")
    max_aspect: Optional[float] = Field(
        default=None, ge=1, description="Widest accepted aspect ratio, either way (None: any)."
    )
    inline_max_bytes: int = Field(
        default=4 * MIB,
        ge=0,
        description="Files up to this size are sent as base64 data URIs; larger ones are uploaded.",
    )
    allowed_formats: tuple[str, ...] = Field(
        default=("JPEG", "PNG", "BMP", "WEBP"),
        description="Pillow format names accepted.",
    )

    @classmethod
    def for_model(cls, model: Union[Kf2vModel, str]) -> FrameLimits:
        """The frame bounds the models table gives ``model`` (kf2v: the defaults).

        Example:
            ```python
            from kf2v_tasks.generation.frames import FrameLimits
            assert FrameLimits.for_model("wan2.2-kf2v-flash") == FrameLimits()
            assert FrameLimits.for_model("wan2.7-i2v").max_aspect == 8
            ```
        """
        spec = get_model(str(getattr(model, "value", model)))
        return cls(
            min_side=spec.min_side,
            max_side=spec.max_side,
            max_bytes=spec.max_frame_bytes,
            max_aspect=spec.max_aspect,
        )

    @model_validator(mode="after")
    def _check(self) -> FrameLimits:
        if self.min_side > self.max_side:
            raise ValueError(f"min_side {self.min_side} is larger than max_side {self.max_side}")
        unknown = [f for f in self.allowed_formats if f.upper() not in MIME_TYPES]
        if unknown:
            raise ValueError(f"formats {unknown} are not supported by the service")
        return self


async def inspect_frame(
    source: str,
    *,
    role: str = "first",
    limits: Optional[FrameLimits] = None,
    storage_options: Optional[dict] = None,
) -> FrameInfo:
    """Read and validate one frame; decide how it will be sent.

    Args:
        source: local path, ``file://``, ``http(s)://`` or fsspec URL.
        role: ``"first"`` or ``"last"`` (used in error messages).
        limits: the accepted bounds (defaults: :class:`FrameLimits`).
        storage_options: fsspec options for remote filesystems.

    Returns:
        A :class:`~kf2v_tasks.generation.models.FrameInfo`. A PNG with an alpha channel
        is refused (the service takes PNG without alpha); an alpha channel in another
        format (WEBP, BMP) gives a warning.

    Raises:
        FrameValidationError: the frame is unusable; ``reason`` says why in plain words.
    """
    limits = limits or FrameLimits()
    shown = display_source(source)
    try:
        data = await read_frame_bytes(
            source, storage_options=storage_options, max_bytes=limits.max_bytes
        )
    except FrameValidationError as exc:
        raise FrameValidationError(shown, exc.reason, role=role) from None
    if not data:
        raise FrameValidationError(shown, "file is empty", role=role)
    if len(data) > limits.max_bytes:
        raise FrameValidationError(shown, too_large(None, limits.max_bytes), role=role)
    digest = hashlib.sha256(data).hexdigest()
    try:
        dec = await asyncio.to_thread(_decode, data, limits)
    except _Reject as exc:
        raise FrameValidationError(shown, str(exc), role=role) from None

    warnings: list[str] = []
    if dec.has_alpha:
        warnings.append(
            f"image has an alpha channel ({dec.mode}); the service expects images without "
            "transparency, so transparent areas may render unpredictably"
        )
    if is_http(source):
        transport = FrameTransport.URL
    elif len(data) <= limits.inline_max_bytes:
        transport = FrameTransport.DATA_URI
    else:
        transport = FrameTransport.UPLOAD
    logger.debug("frame %s ok: %s %dx%d %s", shown, dec.format, dec.width, dec.height, transport)
    return FrameInfo(
        source=source,
        sha256=digest,
        size_bytes=len(data),
        width=dec.width,
        height=dec.height,
        format=dec.format,
        mode=dec.mode,
        has_alpha=dec.has_alpha,
        transport=transport,
        warnings=warnings,
    )


class FrameInspector(Protocol):
    """What :func:`check_pair` reads a frame with: :func:`inspect_frame` or a :class:`FrameMemo`."""

    def __call__(
        self,
        source: str,
        *,
        role: str = "first",
        limits: Optional[FrameLimits] = None,
        storage_options: Optional[dict] = None,
    ) -> Awaitable[FrameInfo]: ...


class FrameMemo:
    """Reads and checks each distinct frame once, however many rows name it.

    Storyboards chain their frames (a row's last frame is the next row's first) and
    prompt sweeps reuse one pair: one read, hash and decode per file instead of per row.
    A failure is raised again for every row that names the frame, with that row's role.
    """

    def __init__(self) -> None:
        self._checks: dict[tuple[str, str], asyncio.Future[FrameInfo]] = {}

    async def __call__(
        self,
        source: str,
        *,
        role: str = "first",
        limits: Optional[FrameLimits] = None,
        storage_options: Optional[dict] = None,
    ) -> FrameInfo:
        limits = limits or FrameLimits()
        key = (source, limits.model_dump_json())
        check = self._checks.get(key)
        if check is None:
            check = self._checks[key] = asyncio.ensure_future(
                inspect_frame(source, role=role, limits=limits, storage_options=storage_options)
            )
        try:
            # Shielded: a row cancelled while it waits must not cancel the other rows' read.
            return await asyncio.shield(check)
        except FrameValidationError as exc:
            raise FrameValidationError(exc.frame, exc.reason, role=role) from None


async def check_pair(
    first: Optional[str],
    last: Optional[str],
    *,
    limits: Optional[FrameLimits] = None,
    storage_options: Optional[dict] = None,
    audio: Optional[str] = None,
    model: Union[Kf2vModel, str, None] = None,
    inspect: Optional[FrameInspector] = None,
    clip: Optional[str] = None,
) -> FramePair:
    """Validate both frames (and a driving audio) concurrently; warn about what will change.

    Warnings (on ``FramePair.warnings``): aspect ratios differing by more than 2 % (the
    last frame is cropped to the first's) and alpha channels of formats other than PNG
    (a PNG with alpha is refused).

    Args:
        first: the first frame (path or URL); ``None`` with a clip.
        last: the last frame (optional with a clip).
        limits: frame bounds (default: :class:`FrameLimits`).
        storage_options: fsspec options for remote files.
        audio: a driving audio (mp3/wav path or URL), for models that take one.
        model: the model the audio is checked against (default: wan2.2-kf2v-flash, which
            takes none).
        inspect: how each frame is read (default :func:`inspect_frame`); a batch passes
            one :class:`FrameMemo` for all its rows.
        clip: a first_clip (mp4/mov path or URL) to continue instead of a first frame,
            for models that continue clips.

    Raises:
        FrameValidationError: for the first failing frame; when both fail the message
            carries both reasons. A bad audio raises
            :class:`~kf2v_tasks.generation.audio.AudioValidationError` (``role="audio"``)
            when the frames are fine, a bad clip
            :class:`~kf2v_tasks.generation.clip.ClipValidationError` (``role="clip"``).
    """
    limits = limits or FrameLimits()
    read = inspect or inspect_frame
    spec = get_model(str(getattr(model, "value", model or DEFAULT_MODEL)))
    if (first is None) == (clip is None):
        raise ValueError("give a first frame or a first_clip (one of them)")
    if first is not None and last is None:
        raise ValueError("a first frame needs a last frame")

    async def nothing() -> None:
        return None

    checks = [
        read(first, role="first", limits=limits, storage_options=storage_options)
        if first is not None
        else nothing(),
        read(last, role="last", limits=limits, storage_options=storage_options)
        if last is not None
        else nothing(),
        inspect_audio(audio, spec, storage_options=storage_options)
        if audio is not None
        else nothing(),
        inspect_clip(clip, spec, storage_options=storage_options)
        if clip is not None
        else nothing(),
    ]
    results = await asyncio.gather(*checks, return_exceptions=True)
    a, b, sound, video = results
    for r in results:  # anything but a validation error is a bug or cancellation: surface it
        if isinstance(r, BaseException) and not isinstance(r, FrameValidationError):
            raise r
    if isinstance(a, FrameValidationError) and isinstance(b, FrameValidationError):
        raise FrameValidationError(
            a.frame, f"{a.reason}; last frame {b.frame!r} also failed: {b.reason}", role="first"
        ) from a
    if isinstance(a, FrameValidationError):
        raise a
    if isinstance(b, FrameValidationError):
        raise b
    if isinstance(sound, FrameValidationError):
        raise sound
    if isinstance(video, FrameValidationError):
        raise video
    if clip is not None and audio is not None:  # §16: nothing but a last frame goes with a clip
        raise AudioValidationError(display_source(audio), "a first_clip takes no driving audio")

    start = a if a is not None else video
    warnings = [f"first frame: {w}" for w in getattr(a, "warnings", [])]
    warnings += [f"last frame: {w}" for w in getattr(b, "warnings", [])]
    if start is not None and b is not None:
        ra, rb = start.width / start.height, b.aspect_ratio
        if abs(ra / rb - 1.0) > 0.02:
            what = "first frame" if a is not None else "clip"
            warnings.append(
                f"aspect ratios differ ({what} {start.width}×{start.height} = {ra:.3f}, last "
                f"{b.width}×{b.height} = {rb:.3f}); the last frame is cropped to the {what}'s "
                "aspect ratio"
            )
    return FramePair(first=a, last=b, audio=sound, clip=video, warnings=warnings)


async def prepare_frame(
    info: FrameInfo,
    *,
    client: Kf2vClient | Any,
    model: Union[Kf2vModel, str],
    storage_options: Optional[dict] = None,
) -> str:
    """The value for ``first_frame_url``/``last_frame_url`` of a validated frame.

    URLs pass through; local/remote files are re-read and checked against the sha256
    recorded at validation, then inlined as a ``data:`` URI or uploaded through
    ``client.upload_file`` (an ``oss://`` URL).

    Raises:
        FrameValidationError: the file changed (or vanished) since validation.
    """
    if info.transport is FrameTransport.URL:
        return info.source
    shown = display_source(info.source)
    data = await read_validated(info, storage_options)
    if data is None:
        raise FrameValidationError(
            shown, "frame changed since validation (sha256 differs); validate it again"
        )
    mime = MIME_TYPES.get(info.format)
    if mime is None:
        raise FrameValidationError(shown, f"format {info.format} has no accepted MIME type")
    if info.transport is FrameTransport.DATA_URI:
        return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    model_name = model.value if isinstance(model, Kf2vModel) else str(model)
    name = upload_name(info.source, _EXTENSIONS.get(info.format, "img"), "frame")
    return await client.upload_file(data, name, model_name)
