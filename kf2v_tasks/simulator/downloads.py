"""Results: signed, expiring video URLs, rendered once, served resumably with Range."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import time
from typing import Any, Optional

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response

from kf2v_tasks.simulator.render import filler_chunks, render_video
from kf2v_tasks.simulator.soundtrack import soundtrack
from kf2v_tasks.simulator.state import SimState, SimTask
from kf2v_tasks.simulator.wire import StreamResponse, connection_reset, oss_error


def _sign(secret: bytes, text: str) -> str:
    digest = hmac.new(secret, text.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def video_url(request: Request, state: SimState, task: SimTask) -> str:
    """Signed result URL, valid ``url_ttl`` service seconds from the task's end."""
    assert task.ended is not None
    expires = int(state.clock.unix(task.ended) + state.config.real(state.config.url_ttl)) + 1
    sig = _sign(state.secret, f"{task.task_id}:{expires}")
    base = str(request.base_url).rstrip("/")
    return f"{base}/_oss/results/{task.task_id}.mp4?Expires={expires}&Signature={sig}"


class VideoCache:
    """Renders each task's video once (in a worker thread) and keeps the bytes."""

    def __init__(self, state: SimState) -> None:
        self.state = state
        self._videos: dict[str, asyncio.Future[bytes]] = {}

    def clear(self) -> None:
        """Drop every cached video."""
        self._videos.clear()

    def prefetch(self, task: SimTask) -> None:
        """Start rendering early (first time a client sees SUCCEEDED)."""
        if self.state.config.video_bytes is None:
            self._future(task)

    def _future(self, task: SimTask) -> asyncio.Future[bytes]:
        fut = self._videos.get(task.task_id)
        if fut is None:
            cfg = self.state.config
            self.state.counters["renders"] += 1
            fut = asyncio.ensure_future(
                anyio.to_thread.run_sync(
                    lambda: render_video(
                        task.first_image,
                        task.last_image,
                        task.resolution,
                        tiny=cfg.render == "tiny",
                        fps=cfg.fps,
                        # kf2v: the configured length; media models: the length asked
                        seconds=task.duration if task.protocol == "media" else cfg.video_seconds,
                        audio=soundtrack(task.duration, task.audio, task.seq)
                        if task.sound
                        else None,
                    )
                )
            )
            self._videos[task.task_id] = fut
        return fut

    async def get(self, task: SimTask) -> bytes:
        """The task's MP4 bytes."""
        return await asyncio.shield(self._future(task))


def parse_range(header: Optional[str], size: int) -> Optional[tuple[int, int]]:
    """``(start, end_inclusive)`` of a single ``bytes=`` range, None for the whole body.

    Raises:
        ValueError: unsatisfiable or malformed range (answered with 416).
    """
    if not header:
        return None
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if not match or (not match.group(1) and not match.group(2)):
        raise ValueError(header)
    if not match.group(1):  # suffix range: the last N bytes
        n = int(match.group(2))
        if n == 0:
            raise ValueError(header)
        return max(0, size - n), size - 1
    start = int(match.group(1))
    end = int(match.group(2)) if match.group(2) else size - 1
    if start >= size or end < start:
        raise ValueError(header)
    return start, min(end, size - 1)


async def download(request: Request) -> Response:
    """GET /_oss/results/{task_id}.mp4: signed, expiring, resumable with Range."""
    state: SimState = request.app.state.sim
    state.counters["downloads"] += 1
    injection = state.faults.draw("download")
    if injection.delay:
        await asyncio.sleep(injection.delay)
    kind = injection.kind
    if kind == "reset":
        return connection_reset()
    if kind == "throttle":
        return oss_error(503, "SlowDown", "Please reduce your request rate.")
    if kind in ("error500", "error503"):
        status = 500 if kind == "error500" else 503
        return oss_error(
            status, "InternalError", "We encountered an internal error. Please try again."
        )
    task_id = request.path_params["task_id"]
    expires = request.query_params.get("Expires", "")
    signature = request.query_params.get("Signature", "")
    if not expires.isdigit() or not hmac.compare_digest(
        signature, _sign(state.secret, f"{task_id}:{expires}")
    ):
        return oss_error(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        )
    if kind == "expired" or time.time() > int(expires):
        return oss_error(403, "AccessDenied", "Request has expired.")
    task = state.tasks.get(task_id)
    if task is None or task.status() != "SUCCEEDED":
        return oss_error(404, "NoSuchKey", "The specified key does not exist.")

    cfg = state.config
    if cfg.video_bytes is not None:
        size = cfg.video_bytes
        data: Optional[bytes] = None
    else:
        data = await request.app.state.videos.get(task)
        size = len(data)
    try:
        span = parse_range(request.headers.get("range"), size)
    except ValueError:
        return Response(b"", status_code=416, headers={"Content-Range": f"bytes */{size}"})
    start, end = span if span is not None else (0, size - 1)
    length = end - start + 1 if size else 0
    headers = {
        "Content-Type": "video/mp4",
        "Content-Length": str(length),
        "Accept-Ranges": "bytes",
        "ETag": f'"{hashlib.md5(task_id.encode()).hexdigest().upper()}"',
        "Last-Modified": "Thu, 01 Jan 2026 00:00:00 GMT",
    }
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    if data is not None:
        chunks: Any = (data[i : min(i + 2**20, end + 1)] for i in range(start, end + 1, 2**20))
    else:
        chunks = _bounded(filler_chunks(task_id, end + 1, start), length)
    return StreamResponse(
        chunks,
        status_code=206 if span is not None else 200,
        headers=headers,
        cut_after=max(1, length // 2) if kind == "cut" else None,
        on_bytes=lambda n: state.counters.update(download_bytes=n),
    )


def _bounded(chunks: Any, length: int) -> Any:
    sent = 0
    for chunk in chunks:
        if sent >= length:
            return
        chunk = chunk[: length - sent]
        sent += len(chunk)
        yield chunk
