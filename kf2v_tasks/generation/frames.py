"""Frame validation and preparation: read a first/last frame, check it, decide how it travels.

Checks follow reference §4: JPEG/PNG/BMP/WEBP, each side within [min_side, max_side] px
(240..8000 by default; older docs say 360..2000, so both are configurable), at most 10 MiB.
Small files are inlined as ``data:`` URIs, larger ones go through the temporary ``oss://``
upload (§10), public ``http(s)`` URLs are passed through untouched.

Example:
    ```python
    import asyncio
    from kf2v_tasks.generation.frames import check_pair

    pair = asyncio.run(check_pair("first.png", "s3://bucket/last.jpg"))
    print(pair.first.transport, pair.warnings)
    ```
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import logging
import os
import re
import threading
from typing import TYPE_CHECKING, Any, Optional, Union
from urllib.parse import urlsplit, urlunsplit

import httpx
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, model_validator

from kf2v_tasks import clock
from kf2v_tasks.dashscope.models import FrameInfo, FramePair, FrameTransport, Kf2vModel
from kf2v_tasks.errors import FrameValidationError
from kf2v_tasks.storage.paths import basename, forget_cached, open_fs, run_sync

if TYPE_CHECKING:
    from kf2v_tasks.dashscope.client import Kf2vClient

logger = logging.getLogger("kf2v_tasks.generation.frames")

MIB = 1024 * 1024

#: MIME type of each accepted format, for ``data:`` URIs and uploads.
MIME_TYPES: dict[str, str] = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "BMP": "image/bmp",
    "WEBP": "image/webp",
}
_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "WEBP": "webp"}

#: Colour modes a standard 8-bit decoder reads ("1" is bilevel, still 8-bit-compatible).
ACCEPTED_MODES = frozenset({"RGB", "RGBA", "L", "LA", "P", "PA", "1"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_MODE_NOTES = {
    "CMYK": "CMYK",
    "I;16": "16-bit",
    "I;16B": "16-bit",
    "I;16L": "16-bit",
    "I;16N": "16-bit",
    "I": "32-bit integer",
    "F": "32-bit float",
    "YCbCr": "YCbCr",
    "LAB": "Lab",
    "HSV": "HSV",
}

# Decoding a max-size frame can take ~200 MB; bound how many decode at once per process.
_DECODE_SLOTS = threading.BoundedSemaphore(max(2, min(8, os.cpu_count() or 2)))

_HTTP_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
_HTTP_ATTEMPTS = 3


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
    inline_max_bytes: int = Field(
        default=4 * MIB,
        ge=0,
        description="Files up to this size are sent as base64 data URIs; larger ones are uploaded.",
    )
    allowed_formats: tuple[str, ...] = Field(
        default=("JPEG", "PNG", "BMP", "WEBP"),
        description="Pillow format names accepted.",
    )

    @model_validator(mode="after")
    def _check(self) -> FrameLimits:
        if self.min_side > self.max_side:
            raise ValueError(f"min_side {self.min_side} is larger than max_side {self.max_side}")
        unknown = [f for f in self.allowed_formats if f.upper() not in MIME_TYPES]
        if unknown:
            raise ValueError(f"formats {unknown} are not supported by the service")
        return self


def _display(source: str) -> str:
    """``source`` without a URL query string (signed URLs must not end up in messages)."""
    if source.startswith(("http://", "https://")):
        p = urlsplit(source)
        return urlunsplit((p.scheme, p.netloc, p.path, "", ""))
    return source


def _is_http(source: str) -> bool:
    return source.lower().startswith(("http://", "https://"))


def _human_bytes(n: int) -> str:
    if n >= MIB:
        return f"{n / MIB:.1f} MiB".replace(".0 MiB", " MiB")
    if n >= 1024:
        return f"{n / 1024:.1f} KiB".replace(".0 KiB", " KiB")
    return f"{n} bytes"


def _too_large(size: Optional[int], max_bytes: int) -> str:
    what = f"file is {_human_bytes(size)}" if size is not None else "file is larger than that"
    return f"{what}; frames may be at most {_human_bytes(max_bytes)}"


async def read_frame_bytes(
    source: str,
    *,
    storage_options: Optional[dict] = None,
    max_bytes: Optional[int] = None,
) -> bytes:
    """Read a frame's bytes from a local path, ``file://``, ``http(s)://`` or any fsspec URL.

    At most ``max_bytes + 1`` bytes are read, so an oversized file cannot exhaust memory
    (the caller sees ``len(data) > max_bytes``); when the size is known up front
    (file size, ``Content-Length``) an oversized file is rejected without reading it.

    Args:
        source: the frame as the user gave it.
        storage_options: fsspec options (credentials) for remote filesystems; never logged.
        max_bytes: stop reading after this many bytes (plus one).

    Returns:
        The bytes read.

    Raises:
        FrameValidationError: missing file, HTTP error, unreadable source.

    Example:
        ```python
        data = await read_frame_bytes("s3://bucket/a.png", storage_options={"anon": True})
        ```
    """
    if _is_http(source):
        return await _read_http(source, max_bytes)
    return await run_sync(_read_fs, source, storage_options, max_bytes)


def _read_fs(source: str, storage_options: Optional[dict], max_bytes: Optional[int]) -> bytes:
    try:
        fs, path = open_fs(source, storage_options)
        forget_cached(fs, path)
        if max_bytes is not None:
            try:
                size = fs.size(path)
            except (FileNotFoundError, IsADirectoryError, PermissionError):
                raise
            except Exception:  # size unknown on this filesystem: the bounded read decides
                size = None
            if size is not None and size > max_bytes:
                raise FrameValidationError(_display(source), _too_large(size, max_bytes))
        if fs.isdir(path):
            raise IsADirectoryError(path)
        with fs.open(path, "rb") as f:
            return f.read(max_bytes + 1) if max_bytes is not None else f.read()
    except FrameValidationError:
        raise
    except FileNotFoundError:
        raise FrameValidationError(_display(source), "file not found") from None
    except IsADirectoryError:
        raise FrameValidationError(_display(source), "is a folder, not a file") from None
    except PermissionError:
        raise FrameValidationError(_display(source), "permission denied") from None
    except ImportError as exc:  # e.g. gcsfs not installed for gs://
        raise FrameValidationError(
            _display(source), f"cannot open this kind of URL: {exc}"
        ) from None
    except (OSError, ValueError) as exc:
        # Name the error type only: some backends echo request details in messages.
        raise FrameValidationError(
            _display(source), f"cannot read the file ({type(exc).__name__}: {exc})"
        ) from None


async def _read_http(url: str, max_bytes: Optional[int]) -> bytes:
    shown = _display(url)
    last = ""
    # No credentials of ours go to a user's frame URL: a plain client, no auth headers.
    async with httpx.AsyncClient(timeout=_HTTP_TIMEOUT, follow_redirects=True) as http:
        for attempt in range(1, _HTTP_ATTEMPTS + 1):
            try:
                async with http.stream("GET", url) as resp:
                    if resp.status_code == 404:
                        raise FrameValidationError(shown, f"HTTP 404 from {shown} (not found)")
                    if resp.status_code == 429 or resp.status_code >= 500:
                        last = f"HTTP {resp.status_code} from {shown}"
                    elif resp.status_code >= 400:
                        raise FrameValidationError(shown, f"HTTP {resp.status_code} from {shown}")
                    else:
                        declared = resp.headers.get("content-length")
                        if max_bytes is not None and declared and declared.isdigit():
                            if int(declared) > max_bytes:
                                raise FrameValidationError(
                                    shown, _too_large(int(declared), max_bytes)
                                )
                        buf = bytearray()
                        async for chunk in resp.aiter_bytes(256 * 1024):
                            buf += chunk
                            if max_bytes is not None and len(buf) > max_bytes:
                                del buf[max_bytes + 1 :]
                                break  # enough to know it is too large
                        return bytes(buf)
            except httpx.TransportError as exc:
                last = f"could not download {shown} ({type(exc).__name__})"
            if attempt < _HTTP_ATTEMPTS:
                await clock.sleep(float(attempt))
    raise FrameValidationError(shown, f"{last} after {_HTTP_ATTEMPTS} attempts")


class _Decoded(BaseModel):
    format: str
    mode: str
    width: int
    height: int
    has_alpha: bool


class _Reject(Exception):
    """Internal: a decode-time rejection with a human reason."""


def _decode(data: bytes, limits: FrameLimits) -> _Decoded:
    """Identify and fully decode the image (runs in a worker thread)."""
    with _DECODE_SLOTS:
        try:
            im = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise _Reject(f"image is too large to decode safely ({exc})") from None
        except UnidentifiedImageError:
            raise _Reject(
                "not a recognised image (expected " + ", ".join(limits.allowed_formats) + ")"
            ) from None
        except Exception as exc:  # Pillow raises many types on garbage headers
            raise _Reject(f"cannot read the image header ({exc})") from None
        with im:
            fmt = im.format or "unknown"
            # Camera JPEGs often open as MPO (extra preview/depth images): still a JPEG.
            is_mpo = fmt == "MPO"
            if is_mpo:
                fmt = "JPEG"
            if fmt not in limits.allowed_formats:
                raise _Reject(f"format {fmt} is not accepted ({', '.join(limits.allowed_formats)})")
            frames = getattr(im, "n_frames", 1) or 1
            if frames > 1 and not is_mpo:
                raise _Reject(f"animated image ({frames} frames) is not accepted; use a still")
            w, h = im.size
            lo, hi = limits.min_side, limits.max_side
            if not (lo <= w <= hi and lo <= h <= hi):
                raise _Reject(f"image is {w}×{h} px; each side must be {lo}..{hi} px")
            mode = im.mode
            if mode not in ACCEPTED_MODES:
                note = _MODE_NOTES.get(mode, mode)
                raise _Reject(
                    f"colour mode {mode} ({note}) is not accepted; save it as 8-bit RGB "
                    "(or RGBA/grayscale)"
                )
            if fmt == "PNG" and len(data) > 24 and data[24] == 16:
                # IHDR bit depth: Pillow silently reads 16-bit RGB PNGs as 8-bit "RGB".
                raise _Reject(f"16-bit PNG (mode {mode}) is not accepted; save it with 8 bits")
            has_alpha = mode in _ALPHA_MODES or "transparency" in im.info
            try:
                im.verify()
            except Exception as exc:
                raise _Reject(f"image data is corrupt or truncated ({exc})") from None
        # verify() leaves the image unusable; reopen and decode every pixel for truncation.
        try:
            with Image.open(io.BytesIO(data)) as im2:
                if fmt == "JPEG":
                    # Decoding at 1/8 scale still walks the whole entropy-coded stream.
                    im2.draft(im2.mode, (max(1, w // 8), max(1, h // 8)))
                im2.load()
        except Exception as exc:
            raise _Reject(f"image data is truncated or corrupt ({exc})") from None
        return _Decoded(format=fmt, mode=mode, width=w, height=h, has_alpha=has_alpha)


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
        A :class:`~kf2v_tasks.dashscope.models.FrameInfo`; an alpha channel gives a warning, not an error.

    Raises:
        FrameValidationError: the frame is unusable; ``reason`` says why in plain words.

    Example:
        ```python
        info = await inspect_frame("first.png", role="first")
        assert info.transport.value in ("data_uri", "upload")
        ```
    """
    limits = limits or FrameLimits()
    shown = _display(source)
    try:
        data = await read_frame_bytes(
            source, storage_options=storage_options, max_bytes=limits.max_bytes
        )
    except FrameValidationError as exc:
        raise FrameValidationError(shown, exc.reason, role=role) from None
    if not data:
        raise FrameValidationError(shown, "file is empty", role=role)
    if len(data) > limits.max_bytes:
        raise FrameValidationError(shown, _too_large(None, limits.max_bytes), role=role)
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
    if _is_http(source):
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


async def check_pair(
    first: str,
    last: str,
    *,
    limits: Optional[FrameLimits] = None,
    storage_options: Optional[dict] = None,
) -> FramePair:
    """Validate both frames concurrently and warn about what the service will change.

    Warnings (on ``FramePair.warnings``): aspect ratios differing by more than 2 % (the
    last frame is cropped to the first's) and alpha channels.

    Raises:
        FrameValidationError: for the first failing frame; when both fail the message
            carries both reasons.

    Example:
        ```python
        pair = await check_pair("a.png", "b.png", limits=FrameLimits(min_side=360))
        ```
    """
    limits = limits or FrameLimits()
    results = await asyncio.gather(
        inspect_frame(first, role="first", limits=limits, storage_options=storage_options),
        inspect_frame(last, role="last", limits=limits, storage_options=storage_options),
        return_exceptions=True,
    )
    a, b = results
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
    assert isinstance(a, FrameInfo) and isinstance(b, FrameInfo)

    warnings = [f"first frame: {w}" for w in a.warnings] + [f"last frame: {w}" for w in b.warnings]
    ra, rb = a.aspect_ratio, b.aspect_ratio
    if abs(ra / rb - 1.0) > 0.02:
        warnings.append(
            f"aspect ratios differ (first {a.width}×{a.height} = {ra:.3f}, last "
            f"{b.width}×{b.height} = {rb:.3f}); the last frame is cropped to the first "
            "frame's aspect ratio"
        )
    return FramePair(first=a, last=b, warnings=warnings)


def _upload_name(info: FrameInfo) -> str:
    """A safe object name for the upload key: the source's basename with the right extension."""
    ext = _EXTENSIONS.get(info.format, "img")
    stem = os.path.splitext(basename(info.source))[0]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[:80] or "frame"
    return f"{stem}.{ext}"


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

    Example:
        ```python
        url = await prepare_frame(pair.first, client=client, model="wan2.2-kf2v-flash")
        ```
    """
    if info.transport is FrameTransport.URL:
        return info.source
    shown = _display(info.source)
    # One byte more than validated is enough to see that the file grew.
    data = await read_frame_bytes(
        info.source, storage_options=storage_options, max_bytes=info.size_bytes
    )
    if len(data) != info.size_bytes or hashlib.sha256(data).hexdigest() != info.sha256:
        raise FrameValidationError(
            shown, "frame changed since validation (sha256 differs); validate it again"
        )
    mime = MIME_TYPES.get(info.format)
    if mime is None:
        raise FrameValidationError(shown, f"format {info.format} has no accepted MIME type")
    if info.transport is FrameTransport.DATA_URI:
        return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    model_name = model.value if isinstance(model, Kf2vModel) else str(model)
    return await client.upload_file(data, _upload_name(info), model_name)
