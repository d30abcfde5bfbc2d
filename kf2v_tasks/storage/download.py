"""Streaming persistence: download a video into any fsspec storage, resumably and atomically.

The body streams into a hidden temp object beside the destination
(``<dir>/.kf2v/tmp/<uuid>-<name>``) while its sha256 is computed; only a complete,
length-checked file is committed to the final name. On S3 the temp is a multipart upload
to the final key itself: no object exists until it is completed, after the same checks
(and it saves a server-side copy of the whole video). So the final path never holds a
partial video. Hashing and writing run on threads of their own
(:mod:`kf2v_tasks.storage.pipeline`). Small files live in :mod:`kf2v_tasks.storage.files`.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Optional

import httpx

from kf2v_tasks import clock
from kf2v_tasks.errors import DownloadError, TransientError, UrlExpiredError
from kf2v_tasks.redaction import redact_url
from kf2v_tasks.retry import RetryPolicy, parse_retry_after
from kf2v_tasks.storage.content_types import content_type_for
from kf2v_tasks.storage.files import MIB, StoredFile
from kf2v_tasks.storage.paths import open_fs
from kf2v_tasks.storage.pipeline import S3_PART_SIZE, _Download

__all__ = [
    "DOWNLOAD_PATIENCE",
    "DOWNLOAD_RETRY",
    "S3_PART_SIZE",
    "stream_to_storage",
]

logger = logging.getLogger("kf2v_tasks.storage.download")

_HTTP_TIMEOUT = httpx.Timeout(60.0, connect=15.0)
_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")

#: The backoff between failed requests of a download: waits of at most 1, 2, 4, 8, 16, 32
#: and then 60 service seconds (longer only if the server's Retry-After says). How many
#: requests: as many as :data:`DOWNLOAD_PATIENCE` (or the caller's ``patience``) allows,
#: not a fixed number; ``max_attempts`` caps them only when a caller passes its own policy.
DOWNLOAD_RETRY = RetryPolicy(max_attempts=6, base_delay=1.0, max_delay=60.0, jitter=0.5)

#: How long (service seconds) a download keeps retrying transient failures by default:
#: the life of a DashScope video URL (24 h from the task's end). A paid video is worth
#: waiting for; only a permanent answer (a 4xx other than 403/416, or a task the service
#: no longer knows) ends it sooner.
DOWNLOAD_PATIENCE = 24 * 3600.0


@contextlib.asynccontextmanager
async def _get(http: httpx.AsyncClient, url: str, headers: dict[str, str]):
    """A streamed GET that never carries credentials, whatever the client's defaults."""
    request = http.build_request("GET", url, headers=headers)
    # A signed OSS URL authenticates by its query; our API key must never travel there.
    for name in ("Authorization", "Proxy-Authorization", "Cookie"):
        request.headers.pop(name, None)
    resp = await http.send(request, stream=True)
    try:
        yield resp
    finally:
        await resp.aclose()


@dataclass
class _Step:
    """What one request achieved: the whole body, an expired URL, or a reason to retry."""

    done: bool = False
    expired: bool = False
    reason: str = ""
    retry_after: Optional[float] = None


async def _request(dl: _Download, http: httpx.AsyncClient, url: str, chunk_size: int) -> _Step:
    """One GET of ``url`` from ``dl.written`` on; the body goes into ``dl``.

    Raises:
        DownloadError: a 4xx other than 403/416, which no retry can fix.
        httpx.TransportError: the request failed before any body arrived.
    """
    # identity: Range offsets and Content-Length must refer to the stored bytes.
    headers = {"Accept-Encoding": "identity"}
    if dl.written:
        headers["Range"] = f"bytes={dl.written}-"
    async with _get(http, url, headers) as resp:
        status = resp.status_code
        if status == 403:
            await resp.aread()
            return _Step(expired=True, reason="HTTP 403 (URL expired)")
        if status == 416 and dl.written:
            # Range past the end: fine if we already have every byte.
            total = _parse_total(resp.headers.get("content-range"))
            if total is not None and total == dl.written:
                dl.total = total
                return _Step(done=True)
            await dl.restart()
            return _Step(reason="HTTP 416 on resume")
        if status == 429 or status >= 500:
            return _Step(reason=f"HTTP {status}", retry_after=parse_retry_after(resp.headers))
        if status >= 400:
            raise DownloadError(f"HTTP {status} from {redact_url(url)}")
        if status not in (200, 206):
            return _Step(reason=f"unexpected HTTP {status}")
        if status == 206 and dl.written:
            start, total = _parse_content_range(resp.headers.get("content-range"))
            if start != dl.written:
                logger.warning("server resumed at %s, not %s", start, dl.written)
                await dl.restart()
                return _Step(reason="resume offset mismatch")
            dl.resumed = True
            dl.total = total if total is not None else dl.total
        else:
            if dl.written:
                # The server ignored Range (200): start over from byte 0.
                logger.info("server ignored Range; restarting from zero")
                await dl.restart()
            declared = resp.headers.get("content-length")
            dl.total = int(declared) if declared and declared.isdigit() else None
        try:
            await dl.consume(resp, chunk_size)
        except (httpx.TransportError, httpx.StreamError) as exc:
            return _Step(reason=f"body interrupted at {dl.written} bytes ({type(exc).__name__})")
    if dl.total is not None and dl.written < dl.total:
        return _Step(reason=f"body ended at {dl.written} of {dl.total} bytes")
    if dl.total is not None and dl.written > dl.total:
        await dl.restart()
        return _Step(reason="more bytes than Content-Length")
    return _Step(done=True)


async def stream_to_storage(
    url: str,
    dest: str,
    *,
    storage_options: Optional[dict] = None,
    http: Optional[httpx.AsyncClient] = None,
    refresh_url: Optional[Callable[[], Awaitable[str]]] = None,
    chunk_size: int = 4 * MIB,
    retry: Optional[RetryPolicy] = None,
    patience: Optional[float] = None,
) -> StoredFile:
    """Stream ``url`` into ``dest`` (any fsspec URL or local path) and commit it atomically.

    Interrupted bodies resume with ``Range: bytes=<written>-`` (a 200 instead of 206 restarts
    from zero); a 403 (expired signed URL) asks ``refresh_url`` for a fresh URL and retries at
    once (a fresh URL that answers 403 too waits first); 429/5xx, short bodies, connection
    errors and a transiently failed refresh wait ``retry.delay(...)`` service seconds (never
    less than a ``Retry-After``; the backoff restarts from 1 s after a request that brought
    bytes).

    Transient failures are retried for ``patience`` service seconds (default
    :data:`DOWNLOAD_PATIENCE`, the 24 h a video URL lives); a caller's ``retry`` also caps the
    requests at its ``max_attempts``. Only a permanent answer ends it sooner: a 4xx other than
    403/416, or ``refresh_url`` raising a permanent error (the task is gone). Memory stays
    bounded by three batches (``chunk_size``, or one 8 MiB part on S3), whatever the size.

    Args:
        url: the signed video URL; no Authorization header is ever sent to it.
        refresh_url: coroutine returning a fresh URL when the current one answers 403.
        patience: service seconds after which no new wait starts; the first request is
            always made.

    Raises:
        UrlExpiredError: 403 and no ``refresh_url``.
        DownloadError: ``patience`` (or the caller's ``max_attempts``) used up, a 4xx, or
            the size did not match.
    """
    policy = retry or DOWNLOAD_RETRY
    max_attempts = retry.max_attempts if retry is not None else None
    window = DOWNLOAD_PATIENCE if patience is None else max(0.0, patience)
    fs, path = open_fs(dest, storage_options)
    dl = _Download(fs, path, content_type_for(dest))  # S3: a browser plays it inline
    own_http = http is None
    if http is None:
        http = httpx.AsyncClient(timeout=_HTTP_TIMEOUT, follow_redirects=True)
    started = clock.now()
    attempts = 0
    failures = 0  # failed requests since the last one that brought bytes: the backoff step
    refreshed = False  # the URL was just refreshed: a 403 again waits before the next one
    last_error = "no attempt made"
    try:
        await dl.restart()
        while True:
            if max_attempts is not None and attempts >= max_attempts:
                raise DownloadError(
                    f"download of {redact_url(url)} failed after {attempts} attempts: {last_error}"
                )
            attempts += 1
            before = dl.written
            try:
                step = await _request(dl, http, url, chunk_size)
            except httpx.TransportError as exc:
                step = _Step(reason=f"{type(exc).__name__} before the body")
            if step.done:
                break
            last_error = step.reason
            if step.expired:
                if refresh_url is None:
                    raise UrlExpiredError(
                        f"video URL {redact_url(url)} answered 403 (expired signature?)"
                    )
                if not refreshed:
                    logger.info("video URL answered 403; asking for a fresh one")
                    try:
                        url = await refresh_url()
                    except DownloadError:  # no way to refresh it: said as it is
                        raise
                    except TransientError as exc:  # the query failed for now: wait, ask again
                        last_error = f"{step.reason}; asking for a fresh URL failed: {exc}"
                    else:
                        refreshed = True
                        continue  # a fresh URL needs no backoff
            refreshed = False
            failures = 1 if dl.written > before else failures + 1
            if max_attempts is not None and attempts >= max_attempts:
                continue  # said at the top of the loop, without a wait for nothing
            delay = policy.delay(failures, step.retry_after)
            waited = clock.now() - started
            if waited + delay > window:
                raise DownloadError(
                    f"download of {redact_url(url)} gave up after {attempts} requests in "
                    f"{waited:.0f} service seconds (patience {window:.0f} s): {last_error}"
                )
            logger.info("download attempt %d: %s; retrying in %.1f s", attempts, last_error, delay)
            await clock.sleep(delay)

        size = dl.written
        if dl.total is not None and size != dl.total:  # defensive: loop exits only when equal
            raise DownloadError(f"downloaded {size} bytes, expected {dl.total}")
        await dl.finish()
    except BaseException:
        # Cancellation included: never leave the temp behind, never touch ``dest``.
        await dl.abandon()
        raise
    finally:
        dl.close()
        if own_http:
            await http.aclose()
    return StoredFile(
        path=dest,
        sha256=dl.hasher.hexdigest(),
        bytes=size,
        attempts=attempts,
        resumed=dl.resumed,
    )


def _parse_content_range(value: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    m = _CONTENT_RANGE_RE.match(value or "")
    if not m:
        return None, None
    total = None if m.group(3) == "*" else int(m.group(3))
    return int(m.group(1)), total


def _parse_total(value: Optional[str]) -> Optional[int]:
    m = re.match(r"bytes\s+\*/(\d+)", value or "")
    return int(m.group(1)) if m else None
