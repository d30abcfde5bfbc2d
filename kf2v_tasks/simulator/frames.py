"""A create's frames: a data URI, oss:// temporary upload or http(s) URL, fetched and checked."""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
from typing import Optional
from urllib.parse import urlsplit

import httpx
from PIL import Image
from starlette.requests import Request

from kf2v_tasks.simulator.state import Account, SimState
from kf2v_tasks.simulator.wire import ApiError

IMAGE_FORMATS = {"JPEG", "PNG", "BMP", "WEBP"}
#: Pillow modes with an alpha channel (a palette or RGB PNG with a tRNS chunk counts too).
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def fetch_image(
    request: Request, state: SimState, acct: Account, url: str, field: str, model: str
) -> bytes:
    """Resolve a frame URL (data URI, oss:// temp upload or http(s)) to its bytes."""
    cfg = state.config
    if url.startswith("data:"):
        header, sep, payload = url.partition(",")
        if not sep or ";base64" not in header:
            raise ApiError(
                400, "InvalidParameter", f"The {field} data URI must be data:<mime>;base64,<data>."
            )
        try:
            return base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError):
            raise ApiError(
                400, "InvalidParameter", f"The {field} data URI is not valid base64."
            ) from None
    if url.startswith("oss://"):
        if request.headers.get("x-dashscope-ossresourceresolve", "").lower() != "enable":
            raise ApiError(
                400,
                "InvalidParameter",
                f"The {field} is an oss:// url; set header X-DashScope-OssResourceResolve: enable.",
            )
        upload = state.uploads.get(url[len("oss://") :])
        now = state.clock.now()
        if (
            upload is None
            or upload.account != acct.account_id
            or now - upload.created > cfg.real(cfg.upload_ttl)
        ):
            raise ApiError(
                400, "InvalidParameter", f"The {field} oss:// file does not exist or has expired."
            )
        if upload.model != model:
            raise ApiError(
                400,
                "InvalidParameter",
                f"The {field} was uploaded for model {upload.model}, not {model}.",
            )
        return upload.data
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ApiError(
            400,
            "InvalidParameter",
            f"The {field} scheme {parts.scheme or '?'}:// is not supported.",
        )
    if not cfg.allow_remote_fetch and not _is_loopback(parts.hostname or ""):
        raise ApiError(
            400,
            "InvalidParameter.DataInspection",
            "Unable to download the media resource during the data inspection process.",
        )
    try:
        async with httpx.AsyncClient(timeout=20.0, follow_redirects=True) as client:
            resp = await client.get(url)
    except httpx.HTTPError:
        raise ApiError(400, "InvalidURL", "Invalid URL provided in your request.") from None
    if resp.status_code != 200:
        raise ApiError(
            400, "BadRequest.InputDownloadFailed", f"Failed to download the input file: {url}."
        )
    return resp.content


def check_image(
    data: bytes,
    field: str,
    min_side: int,
    max_side: int,
    max_bytes: int,
    max_aspect: Optional[float] = None,
) -> None:
    """400 InvalidParameter unless ``data`` is a decodable image of an allowed size.

    A PNG must have no alpha channel, as the service documents for both protocols.
    """
    if len(data) > max_bytes:
        raise ApiError(
            400, "InvalidParameter", f"The {field} is larger than {max_bytes // 2**20} MB."
        )
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            fmt, (w, h) = img.format, img.size
            alpha = img.mode in ALPHA_MODES or "transparency" in img.info
    except Exception:
        raise ApiError(
            400, "InvalidParameter", f"The {field} cannot be decoded as an image."
        ) from None
    if fmt not in IMAGE_FORMATS:
        raise ApiError(400, "InvalidParameter", f"The {field} format {fmt} is not supported.")
    if fmt == "PNG" and alpha:  # reference §4/§16: "PNG (no alpha channel)", both protocols
        raise ApiError(
            400,
            "InvalidParameter",
            f"The {field} is a PNG with an alpha channel; PNG images must have no transparency.",
        )
    if not (min_side <= w <= max_side and min_side <= h <= max_side):
        raise ApiError(
            400,
            "InvalidParameter",
            f"The {field} size {w}x{h} is outside [{min_side}, {max_side}] pixels.",
        )
    if max_aspect and max(w, h) > max_aspect * min(w, h):
        raise ApiError(
            400,
            "InvalidParameter",
            f"The {field} aspect ratio {w}:{h} is outside 1:{max_aspect:g} to {max_aspect:g}:1.",
        )
