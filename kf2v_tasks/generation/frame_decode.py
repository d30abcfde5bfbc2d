"""Decoding a frame to check it: format, colour mode, alpha, size, aspect, every pixel.

The check behind :func:`~kf2v_tasks.generation.frames.inspect_frame`, run in a worker
thread: a rejection is a :class:`_Reject` whose message is the reason a user reads.
"""

from __future__ import annotations

import io
import os
import threading
from typing import Optional, Protocol

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel


class FrameLimits(Protocol):
    """The bounds a frame is decoded against (a :class:`~kf2v_tasks.generation.frames.FrameLimits`)."""

    allowed_formats: tuple[str, ...]
    min_side: int
    max_side: int
    max_aspect: Optional[float]


#: Colour modes a standard 8-bit decoder reads ("1" is bilevel, still 8-bit-compatible).
#: A PNG must also have no alpha (:data:`NO_ALPHA_FORMATS`).
ACCEPTED_MODES = frozenset({"RGB", "RGBA", "L", "LA", "P", "PA", "1"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
#: Formats the service takes only without an alpha channel (reference §4, §16).
NO_ALPHA_FORMATS = frozenset({"PNG"})
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
            wide = limits.max_aspect
            if wide and max(w, h) > wide * min(w, h):
                raise _Reject(
                    f"image is {w}×{h} px, an aspect of {max(w, h) / min(w, h):.2f}:1; it must "
                    f"be between 1:{wide:g} and {wide:g}:1"
                )
            mode = im.mode
            if mode not in ACCEPTED_MODES:
                note = _MODE_NOTES.get(mode, mode)
                raise _Reject(
                    f"colour mode {mode} ({note}) is not accepted; save it as 8-bit RGB "
                    "(or grayscale), without transparency"
                )
            if fmt == "PNG" and len(data) > 24 and data[24] == 16:
                # IHDR bit depth: Pillow silently reads 16-bit RGB PNGs as 8-bit "RGB".
                raise _Reject(f"16-bit PNG (mode {mode}) is not accepted; save it with 8 bits")
            has_alpha = mode in _ALPHA_MODES or "transparency" in im.info
            if has_alpha and fmt in NO_ALPHA_FORMATS:
                kind = (
                    f"mode {mode}"
                    if mode in _ALPHA_MODES
                    else f"mode {mode} with a transparent colour"
                )
                raise _Reject(
                    f"{fmt} with an alpha channel ({kind}) is not accepted: the service "
                    f"takes {fmt} without alpha; save it without transparency (flattened "
                    "onto a background, as an RGB PNG or a JPEG)"
                )
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
