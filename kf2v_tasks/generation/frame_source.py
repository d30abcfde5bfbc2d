"""Reading a frame's bytes from wherever the user keeps it, bounded in size.

Local paths, ``file://``, ``http(s)://`` and any fsspec URL. Reads stop one byte past the
limit, so an oversized file can never exhaust memory; when the size is known up front (file
size, ``Content-Length``) it is rejected without reading. Messages name the frame without
its URL query string (signed URLs must not reach a log or an error).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Optional

import httpx

from kf2v_tasks import clock
from kf2v_tasks.errors import FrameValidationError
from kf2v_tasks.generation.models import FrameTransport
from kf2v_tasks.redaction import redact_url
from kf2v_tasks.storage.paths import basename, forget_cached, open_fs, run_sync

if TYPE_CHECKING:
    from kf2v_tasks.generation.models import ValidatedFile

__all__ = [
    "MIB",
    "display_source",
    "is_http",
    "read_frame_bytes",
    "read_validated",
    "resend_validated",
    "too_large",
    "upload_name",
]

MIB = 1024 * 1024

_HTTP_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
_HTTP_ATTEMPTS = 3


def display_source(source: str) -> str:
    """``source`` as it may appear in a message: a URL loses its query, fragment and
    ``user:password@`` part (see :func:`kf2v_tasks.redaction.redact_url`); a local path
    is shown as it is (its ``#`` or ``?`` are part of the file name).
    """
    return redact_url(source) if "://" in source else source


def is_http(source: str) -> bool:
    """Whether ``source`` is an ``http(s)://`` URL (passed to the service as it is)."""
    return source.lower().startswith(("http://", "https://"))


def _human_bytes(n: int) -> str:
    if n >= MIB:
        return f"{n / MIB:.1f} MiB".replace(".0 MiB", " MiB")
    if n >= 1024:
        return f"{n / 1024:.1f} KiB".replace(".0 KiB", " KiB")
    return f"{n} bytes"


def too_large(size: Optional[int], max_bytes: int) -> str:
    """The reason given for a frame over ``max_bytes`` (``size`` when it is known)."""
    what = f"file is {_human_bytes(size)}" if size is not None else "file is larger than that"
    return f"{what}; frames may be at most {_human_bytes(max_bytes)}"


async def read_frame_bytes(
    source: str,
    *,
    storage_options: Optional[dict] = None,
    max_bytes: Optional[int] = None,
) -> bytes:
    """A frame's bytes from a local path, ``file://``, ``http(s)://`` or any fsspec URL.

    At most ``max_bytes + 1`` bytes are read, so an oversized file cannot exhaust memory;
    one whose size is known up front is refused unread. Raises FrameValidationError.
    """
    if is_http(source):
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
                raise FrameValidationError(display_source(source), too_large(size, max_bytes))
        if fs.isdir(path):
            raise IsADirectoryError(path)
        with fs.open(path, "rb") as f:
            return f.read(max_bytes + 1) if max_bytes is not None else f.read()
    except FrameValidationError:
        raise
    except FileNotFoundError:
        raise FrameValidationError(display_source(source), "file not found") from None
    except IsADirectoryError:
        raise FrameValidationError(display_source(source), "is a folder, not a file") from None
    except PermissionError:
        raise FrameValidationError(display_source(source), "permission denied") from None
    except ImportError as exc:  # e.g. gcsfs not installed for gs://
        raise FrameValidationError(
            display_source(source), f"cannot open this kind of URL: {exc}"
        ) from None
    except (OSError, ValueError) as exc:
        # Name the error type only: some backends echo request details in messages.
        raise FrameValidationError(
            display_source(source), f"cannot read the file ({type(exc).__name__}: {exc})"
        ) from None


async def _read_http(url: str, max_bytes: Optional[int]) -> bytes:
    shown = display_source(url)
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
                                    shown, too_large(int(declared), max_bytes)
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


async def read_validated(info: ValidatedFile, storage_options: Optional[dict]) -> Optional[bytes]:
    """The bytes of a validated file (frame, audio, clip) read again for sending; ``None``
    when they are no longer what was validated (size or sha256 differ)."""
    # One byte more than validated is enough to see that the file grew.
    data = await read_frame_bytes(
        info.source, storage_options=storage_options, max_bytes=info.size_bytes
    )
    if len(data) != info.size_bytes or hashlib.sha256(data).hexdigest() != info.sha256:
        return None
    return data


async def resend_validated(
    info: Any,
    kind: str,
    error: Callable[[str, str], Exception],
    client: Any,
    model: str,
    storage_options: Optional[dict],
) -> str:
    """A validated audio or clip as sent: its own URL, or an ``oss://`` upload of the
    bytes read again; ``error(shown, why)`` is raised when they changed since validation."""
    if info.transport is FrameTransport.URL:
        return info.source
    data = await read_validated(info, storage_options)
    if data is None:
        why = f"{kind} changed since validation (sha256 differs); validate it again"
        raise error(display_source(info.source), why)
    return await client.upload_file(data, upload_name(info.source, info.format, kind), model)


def upload_name(source: str, ext: str, fallback: str) -> str:
    """A safe object name for an upload: the source's basename with the extension ``ext``."""
    stem = os.path.splitext(basename(source))[0]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[:80] or fallback
    return f"{stem}.{ext}"
