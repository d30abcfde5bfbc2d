"""Streaming persistence against a real HTTP server with faults, on local disk, memory and S3.

Also covers the fsspec helpers in ``kf2v_tasks.storage.paths``.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import os
import re
import threading
import time
import tracemalloc
import uuid
from pathlib import Path

import fsspec
import httpx
import pytest

from kf2v_tasks import clock
from kf2v_tasks.errors import DownloadError, UrlExpiredError
from kf2v_tasks.retry import RetryPolicy
from kf2v_tasks.storage.download import DOWNLOAD_PATIENCE, DOWNLOAD_RETRY, stream_to_storage
from kf2v_tasks.storage.files import (
    StoredFile,
    copy_video,
    read_json,
    read_text,
    sidecar_path,
    verify_file,
    write_json_atomic,
    write_text_atomic,
)
from kf2v_tasks.storage.paths import join, parent, resolve_relative, safe_child

MIB = 1024 * 1024
#: At most 6 requests, without the waits, so fault tests run fast.
NO_WAIT = RetryPolicy(max_attempts=6, base_delay=0)


class Body:
    """A deterministic body of ``size`` bytes generated on the fly (no big buffer held)."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        self.block = hashlib.sha256(str(seed).encode()).digest() * (64 * 1024 // 32)  # 64 KiB

    def iter(self, start: int, end: int):
        pos = start
        n = len(self.block)
        while pos < end:
            off = pos % n
            piece = self.block[off : min(n, off + end - pos)]
            yield piece
            pos += len(piece)

    def sha256(self) -> str:
        h = hashlib.sha256()
        for piece in self.iter(0, self.size):
            h.update(piece)
        return h.hexdigest()

    def bytes(self) -> bytes:
        return b"".join(self.iter(0, self.size))


class FaultServer:
    """Serves ``/video*`` with Range support; ``faults`` are consumed one per request.

    Faults: ``"cut:N"`` (send N body bytes then drop the connection), ``"403"``, ``"500"``,
    ``"ignore_range"`` (answer 200 with the whole body), ``"stall:N"`` (send N bytes, then
    hang), ``"short"`` (declare the full length but send half and close cleanly).
    """

    def __init__(self, body: Body) -> None:
        self.body = body
        self.faults: list[str] = []
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a, **k):  # quiet
                pass

            def do_GET(self):  # noqa: N802
                with outer.lock:
                    fault = outer.faults.pop(0) if outer.faults else ""
                    outer.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "fault": fault}
                    )
                if fault in ("403", "500"):
                    self.send_response(int(fault))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                size = outer.body.size
                start, status = 0, 200
                m = re.match(r"bytes=(\d+)-", self.headers.get("Range", ""))
                if m and fault != "ignore_range":
                    start, status = int(m.group(1)), 206
                self.send_response(status)
                self.send_header("Content-Type", "video/mp4")
                self.send_header("Content-Length", str(size - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
                self.end_headers()
                limit = size
                if fault.startswith(("cut:", "stall:")):
                    limit = min(size, start + int(fault.split(":")[1]))
                elif fault == "short":
                    limit = start + (size - start) // 2
                for piece in outer.body.iter(start, limit):
                    self.wfile.write(piece)
                self.wfile.flush()
                if fault.startswith("stall:"):
                    time.sleep(3)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = (
            f"http://127.0.0.1:{self.httpd.server_address[1]}/video.mp4?Expires=1&Signature=s"
        )
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = FaultServer(Body(3 * MIB + 12345))
    yield srv
    srv.close()


def leftovers(root: Path) -> list[str]:
    """Files under the hidden temp folder (must be empty after any outcome)."""
    tmp = root / ".kf2v" / "tmp"
    return os.listdir(tmp) if tmp.exists() else []


async def test_complete_download(tmp_path, server):
    dest = tmp_path / "out" / "row-1.mp4"
    res = await stream_to_storage(server.url, str(dest), chunk_size=256 * 1024)
    assert res.sha256 == server.body.sha256() == hashlib.sha256(dest.read_bytes()).hexdigest()
    assert res.bytes == server.body.size and res.attempts == 1 and not res.resumed
    assert res.sidecar_path is None and res.path == str(dest)
    assert leftovers(dest.parent) == []
    hdrs = {k.lower() for k in server.requests[0]["headers"]}
    assert "authorization" not in hdrs and "range" not in hdrs


async def test_no_credentials_sent_even_with_a_client_that_has_them(tmp_path, server):
    async with httpx.AsyncClient(headers={"Authorization": "Bearer sk-kf2vtestsecret-0123"}) as c:
        await stream_to_storage(server.url, str(tmp_path / "v.mp4"), http=c)
        assert not c.is_closed  # a caller's client is left open
    assert "authorization" not in {k.lower() for k in server.requests[0]["headers"]}


async def test_resume_with_range_after_cut(tmp_path, server):
    server.faults = ["cut:1000000"]
    dest = tmp_path / "v.mp4"
    res = await stream_to_storage(server.url, str(dest), retry=NO_WAIT)
    assert res.resumed and res.attempts == 2
    assert res.sha256 == server.body.sha256()
    assert len(server.requests) == 2
    assert server.requests[1]["headers"]["Range"] == "bytes=1000000-"
    assert leftovers(tmp_path) == []


async def test_short_body_is_resumed(tmp_path, server):
    server.faults = ["short"]
    res = await stream_to_storage(server.url, str(tmp_path / "v.mp4"), retry=NO_WAIT)
    assert res.resumed and res.sha256 == server.body.sha256()
    assert server.requests[1]["headers"]["Range"].startswith("bytes=")


async def test_server_ignoring_range_restarts_from_zero(tmp_path, server):
    server.faults = ["cut:700000", "ignore_range"]
    dest = tmp_path / "v.mp4"
    res = await stream_to_storage(server.url, str(dest), retry=NO_WAIT)
    assert not res.resumed and res.attempts == 2
    assert res.sha256 == server.body.sha256() and dest.stat().st_size == server.body.size


async def test_403_refreshes_url(tmp_path, server):
    server.faults = ["403"]
    calls = []

    async def refresh() -> str:
        calls.append(1)
        return server.url.replace("Signature=s", "Signature=fresh")

    res = await stream_to_storage(server.url, str(tmp_path / "v.mp4"), refresh_url=refresh)
    assert calls == [1] and res.attempts == 2
    assert "Signature=fresh" in server.requests[1]["path"]
    assert res.sha256 == server.body.sha256()


async def test_403_mid_resume_refreshes_and_keeps_offset(tmp_path, server):
    server.faults = ["cut:500000", "403"]

    async def refresh() -> str:
        return server.url

    res = await stream_to_storage(
        server.url, str(tmp_path / "v.mp4"), refresh_url=refresh, retry=NO_WAIT
    )
    assert res.resumed and res.sha256 == server.body.sha256()
    assert server.requests[2]["headers"]["Range"] == "bytes=500000-"


async def test_403_without_refresh_raises_and_leaves_nothing(tmp_path, server):
    server.faults = ["403"]
    dest = tmp_path / "v.mp4"
    with pytest.raises(UrlExpiredError) as ei:
        await stream_to_storage(server.url, str(dest))
    assert "Signature" not in str(ei.value)
    assert not dest.exists() and leftovers(tmp_path) == []


async def test_5xx_backs_off_and_retries(tmp_path, server):
    server.faults = ["500", "500"]
    res = await stream_to_storage(server.url, str(tmp_path / "v.mp4"), retry=NO_WAIT)
    assert res.attempts == 3 and res.sha256 == server.body.sha256()


async def test_failure_never_touches_existing_destination(tmp_path, server):
    dest = tmp_path / "v.mp4"
    dest.write_bytes(b"previous good video")
    server.faults = ["cut:1000", "cut:1000", "cut:1000"]
    with pytest.raises(DownloadError, match="after 3 attempts") as ei:
        await stream_to_storage(
            server.url, str(dest), retry=RetryPolicy(max_attempts=3, base_delay=0)
        )
    assert "Signature" not in str(ei.value)
    assert dest.read_bytes() == b"previous good video"
    assert leftovers(tmp_path) == []


async def test_existing_destination_replaced_by_complete_file(tmp_path, server):
    dest = tmp_path / "v.mp4"
    dest.write_bytes(b"old")
    res = await stream_to_storage(server.url, str(dest))
    assert dest.stat().st_size == server.body.size and res.sha256 == server.body.sha256()


async def test_404_is_not_retried(tmp_path):
    class NotFound(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a, **k):
            pass

        def do_GET(self):  # noqa: N802
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    try:
        with pytest.raises(DownloadError, match="HTTP 404"):
            await stream_to_storage(
                f"http://127.0.0.1:{httpd.server_address[1]}/x.mp4", str(tmp_path / "v.mp4")
            )
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert leftovers(tmp_path) == []


async def test_cancellation_removes_temp(tmp_path, server):
    server.faults = ["stall:300000"]
    dest = tmp_path / "v.mp4"
    # Batches smaller than what arrives before the stall: the temp is being written to.
    task = asyncio.create_task(stream_to_storage(server.url, str(dest), chunk_size=64 * 1024))
    for _ in range(200):
        if leftovers(tmp_path) and server.requests:
            break
        await asyncio.sleep(0.01)
    assert leftovers(tmp_path), "the temp file should exist while downloading"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not dest.exists() and leftovers(tmp_path) == []


async def test_memory_destination(server):
    dest = f"memory://kf2v-{uuid.uuid4().hex[:8]}/out/v.mp4"
    server.faults = ["cut:100000"]
    res = await stream_to_storage(server.url, dest, retry=NO_WAIT)
    assert await verify_file(dest, res.sha256)
    root = dest.split("://", 1)[1].split("/", 1)[0]
    assert fsspec.filesystem("memory").find(f"/{root}") == [f"/{root}/out/v.mp4"]


async def test_s3_destination_with_resume(s3_server, server):
    bucket = s3_server.new_bucket()
    opts = s3_server.storage_options
    dest = f"s3://{bucket}/out/row-1.mp4"
    server.faults = ["cut:2000000"]
    res = await stream_to_storage(server.url, dest, storage_options=opts, retry=NO_WAIT)
    assert res.resumed and res.sha256 == server.body.sha256()
    fs = s3_server.filesystem()
    assert fs.find(f"{bucket}") == [f"{bucket}/out/row-1.mp4"]  # temp gone
    assert hashlib.sha256(fs.cat_file(f"{bucket}/out/row-1.mp4")).hexdigest() == res.sha256
    assert await verify_file(dest, res.sha256, storage_options=opts)


async def test_s3_failure_leaves_no_object(s3_server, server):
    bucket = s3_server.new_bucket()
    opts = s3_server.storage_options
    dest = f"s3://{bucket}/out/row-1.mp4"
    server.faults = ["cut:1000"] * 2
    with pytest.raises(DownloadError):
        await stream_to_storage(
            server.url, dest, storage_options=opts, retry=RetryPolicy(max_attempts=2, base_delay=0)
        )
    fs = s3_server.filesystem()
    assert fs.find(bucket) == []
    uploads = fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", [])
    assert uploads == []  # aborted, not left to accrue storage


async def test_s3_large_multipart_restart_from_zero(s3_server):
    """Bigger than one 8 MiB part, with a restart from zero mid-way (multipart discarded)."""
    srv = FaultServer(Body(20 * MIB + 7, seed=3))
    try:
        srv.faults = ["cut:12000000", "ignore_range"]
        bucket = s3_server.new_bucket()
        opts = s3_server.storage_options
        dest = f"s3://{bucket}/big.mp4"
        res = await stream_to_storage(srv.url, dest, storage_options=opts, retry=NO_WAIT)
        assert res.sha256 == srv.body.sha256() and res.bytes == srv.body.size
        assert s3_server.filesystem().find(bucket) == [f"{bucket}/big.mp4"]
    finally:
        srv.close()


async def test_50mb_stream_memory_stays_bounded(tmp_path):
    srv = FaultServer(Body(50 * MIB))
    try:
        srv.faults = ["cut:20000000"]  # include a resume in the measured path
        tracemalloc.start()
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        res = await stream_to_storage(srv.url, str(tmp_path / "big.mp4"), retry=NO_WAIT)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert res.bytes == 50 * MIB and res.resumed
        assert peak - base < 16 * MIB, f"peak grew by {(peak - base) / MIB:.1f} MiB"
        assert res.sha256 == srv.body.sha256()
    finally:
        srv.close()


# -- the retry budget (one RetryPolicy, every request counts) ----------------------------


class Scripted:
    """An httpx MockTransport handler playing ``steps`` in order (the last one repeats)."""

    def __init__(self, *steps) -> None:
        self.steps = list(steps)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        if isinstance(step, type) and issubclass(step, httpx.TransportError):
            raise step("simulated", request=request)
        return step


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record clock.sleep calls (service seconds) instead of sleeping."""
    recorded: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr(clock, "sleep", fake_sleep)
    return recorded


async def _download(tmp_path: Path, handler: Scripted, **kw):
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        return await stream_to_storage(
            "https://oss.test/v.mp4?Signature=s", str(tmp_path / "v.mp4"), http=http, **kw
        )


@pytest.mark.parametrize("max_attempts", [1, 3, 6])
@pytest.mark.parametrize(
    "step",
    [httpx.Response(500), httpx.Response(429), httpx.Response(503), httpx.ConnectError],
    ids=["500", "429", "503", "connect"],
)
async def test_download_makes_exactly_max_attempts_requests(
    tmp_path, sleeps, step, max_attempts
) -> None:
    handler = Scripted(step)
    policy = RetryPolicy(max_attempts=max_attempts, base_delay=1.0, jitter=0.0)
    with pytest.raises(DownloadError, match=f"after {max_attempts} attempts") as ei:
        await _download(tmp_path, handler, retry=policy)
    assert len(handler.requests) == max_attempts
    assert sleeps == [policy.backoff(n) for n in range(1, max_attempts)]
    assert "Signature" not in str(ei.value)
    assert not (tmp_path / "v.mp4").exists() and leftovers(tmp_path) == []


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A service clock that only moves when the code sleeps: hours pass in no real time."""
    now = [1_000.0]
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    monkeypatch.setattr(clock, "sleep", fake_sleep)
    monkeypatch.setattr(clock, "now", lambda: now[0])
    return waits


async def test_download_keeps_retrying_past_the_old_six_request_budget(tmp_path, fake_clock):
    # 40 transient failures of every kind (the old budget gave up after 6 requests).
    failures = [httpx.Response(502), httpx.Response(429), httpx.ConnectError, httpx.Response(503)]
    handler = Scripted(*(failures * 10), httpx.Response(200, content=b"paid video"))
    res = await _download(tmp_path, handler)
    assert res.attempts == 41 and (tmp_path / "v.mp4").read_bytes() == b"paid video"
    assert len(fake_clock) == 40 and max(fake_clock) <= DOWNLOAD_RETRY.max_delay
    assert sum(fake_clock) > 31.0  # longer than the old budget's 31 s of waits


async def test_download_gives_up_only_when_its_patience_is_spent(tmp_path, fake_clock):
    handler = Scripted(httpx.Response(502))
    with pytest.raises(DownloadError, match=r"gave up after \d+ requests .*patience 3600 s"):
        await _download(tmp_path, handler, patience=3600)
    assert sum(fake_clock) <= 3600 and sum(fake_clock) > 3600 - DOWNLOAD_RETRY.max_delay
    assert len(handler.requests) > 60  # about one a minute once the backoff is at its cap
    assert not (tmp_path / "v.mp4").exists() and leftovers(tmp_path) == []


async def test_download_default_patience_is_the_life_of_the_url(tmp_path, fake_clock):
    handler = Scripted(httpx.Response(500))
    with pytest.raises(DownloadError, match="patience 86400 s"):
        await _download(tmp_path, handler)
    assert DOWNLOAD_PATIENCE == 24 * 3600 and 86400 - 60 < sum(fake_clock) <= 86400


async def test_download_backoff_starts_again_after_a_request_that_brought_bytes(
    tmp_path, fake_clock
):
    body = b"x" * 100
    cut = httpx.Response(200, headers={"Content-Length": "100"}, content=body[:10])
    handler = Scripted(
        httpx.Response(500),
        httpx.Response(500),
        httpx.Response(500),
        cut,  # 10 bytes arrive, then the body ends short
        httpx.Response(206, headers={"Content-Range": "bytes 10-99/100"}, content=body[10:]),
    )
    res = await _download(tmp_path, handler, retry=RetryPolicy(max_attempts=9, jitter=0.0))
    assert res.bytes == 100 and res.resumed
    assert fake_clock == [1.0, 2.0, 4.0, 1.0]


async def test_download_refresh_that_fails_transiently_is_asked_again(tmp_path, fake_clock):
    from kf2v_tasks.errors import ServerError

    asked: list[int] = []

    async def refresh() -> str:
        asked.append(1)
        if len(asked) < 3:
            raise ServerError("InternalError", "down", status_code=500)
        return "https://oss.test/v.mp4?Signature=fresh"

    handler = Scripted(
        httpx.Response(403),
        httpx.Response(403),
        httpx.Response(403),
        httpx.Response(200, content=b"v"),
    )
    res = await _download(tmp_path, handler, refresh_url=refresh)
    assert res.bytes == 1 and len(asked) == 3 and len(fake_clock) == 2


async def test_download_refresh_that_expired_again_waits(tmp_path, fake_clock):
    async def refresh() -> str:
        return "https://oss.test/v.mp4?Signature=fresh"

    handler = Scripted(*[httpx.Response(403)] * 5, httpx.Response(200, content=b"v"))
    res = await _download(tmp_path, handler, refresh_url=refresh)
    # 403 -> refresh at once; 403 again -> wait, then the same fresh URL; and so on.
    assert res.attempts == 6 and len(fake_clock) == 2


async def test_download_permanent_answer_ends_it_at_once(tmp_path, fake_clock):
    from kf2v_tasks.errors import TaskExpiredError

    async def refresh() -> str:
        raise TaskExpiredError("t-1", "task t-1 is UNKNOWN; its video can no longer be fetched")

    handler = Scripted(httpx.Response(500), httpx.Response(403))
    with pytest.raises(TaskExpiredError):
        await _download(tmp_path, handler, refresh_url=refresh)
    assert len(handler.requests) == 2 and len(fake_clock) == 1


async def test_download_honours_retry_after(tmp_path, sleeps) -> None:
    handler = Scripted(
        httpx.Response(503, headers={"Retry-After": "9"}), httpx.Response(200, content=b"video")
    )
    res = await _download(tmp_path, handler, retry=RetryPolicy(base_delay=1.0, jitter=0.0))
    assert res.attempts == 2 and sleeps == [9.0]
    assert isinstance(res, StoredFile) and res.bytes == 5


async def test_download_refresh_counts_but_does_not_wait(tmp_path, sleeps) -> None:
    handler = Scripted(httpx.Response(403), httpx.Response(403), httpx.Response(200, content=b"v"))

    async def refresh() -> str:
        return "https://oss.test/v.mp4?Signature=fresh"

    with pytest.raises(DownloadError, match="after 2 attempts"):
        await _download(tmp_path, handler, refresh_url=refresh, retry=RetryPolicy(max_attempts=2))
    assert len(handler.requests) == 2 and sleeps == []
    handler = Scripted(httpx.Response(403), httpx.Response(200, content=b"v"))
    res = await _download(tmp_path, handler, refresh_url=refresh, retry=RetryPolicy(max_attempts=2))
    assert res.attempts == 2 and sleeps == []
    assert "Signature=fresh" in str(handler.requests[1].url)


@pytest.mark.parametrize("status", [400, 401, 404, 410])
async def test_download_4xx_is_one_request(tmp_path, sleeps, status: int) -> None:
    handler = Scripted(httpx.Response(status))
    with pytest.raises(DownloadError, match=f"HTTP {status}"):
        await _download(tmp_path, handler)
    assert len(handler.requests) == 1 and sleeps == []


# -- small files, sidecars, verification, copies ------------------------------------------


@pytest.mark.parametrize(
    "video,side",
    [
        ("out/row-1.mp4", "out/row-1.json"),
        ("s3://b/x/clip.v2.mp4", "s3://b/x/clip.v2.json"),
        ("row.mp4", "row.json"),
        ("/abs/noext", "/abs/noext.json"),
    ],
)
def test_sidecar_path(video, side):
    assert sidecar_path(video) == side


async def test_json_and_text_local(tmp_path):
    p = tmp_path / "a" / "side.json"
    await write_json_atomic(str(p), {"sha256": "x", "n": 1})
    assert await read_json(str(p)) == {"sha256": "x", "n": 1}
    await write_json_atomic(str(p), {"v": 2})
    assert await read_json(str(p)) == {"v": 2}
    assert leftovers(p.parent) == []
    await write_text_atomic(str(tmp_path / "r.csv"), "a,b\n1,2\n")
    assert (tmp_path / "r.csv").read_text() == "a,b\n1,2\n"
    with pytest.raises(FileNotFoundError):
        await read_json(str(tmp_path / "none.json"))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError):
        await read_json(str(tmp_path / "bad.json"))


async def test_read_text(tmp_path):
    p = tmp_path / "r.csv"
    await write_text_atomic(str(p), "row,status\n1,café\n")
    assert await read_text(str(p)) == "row,status\n1,café\n"
    with pytest.raises(FileNotFoundError):
        await read_text(str(tmp_path / "none.csv"))


async def test_read_text_memory_filesystem():
    url = f"memory://kf2v-{uuid.uuid4().hex}/results.csv"
    await write_text_atomic(url, "a\n")
    assert await read_text(url) == "a\n"


def test_file_helpers_have_one_home():
    from kf2v_tasks.storage import download, files

    for name in files.__all__:  # imported from files, never from download
        assert name not in download.__all__, name
    for gone in ("redact_query", "PersistResult", "_backoff"):
        assert not hasattr(download, gone), gone


async def test_json_s3(s3_server):
    bucket = s3_server.new_bucket()
    opts = s3_server.storage_options
    url = f"s3://{bucket}/out/row-1.json"
    await write_json_atomic(url, {"a": 1}, storage_options=opts)
    assert await read_json(url, storage_options=opts) == {"a": 1}
    assert s3_server.filesystem().find(bucket) == [f"{bucket}/out/row-1.json"]


async def test_verify_file(tmp_path):
    p = tmp_path / "v.mp4"
    p.write_bytes(b"hello")
    good = hashlib.sha256(b"hello").hexdigest()
    assert await verify_file(str(p), good)
    assert await verify_file(str(p), good.upper())
    assert not await verify_file(str(p), "0" * 64)
    assert not await verify_file(str(p), "")
    assert not await verify_file(str(tmp_path / "missing"), good)


async def test_copy_video_with_sidecar(tmp_path):
    src = tmp_path / "row-1.mp4"
    src.write_bytes(b"video bytes" * 1000)
    await write_json_atomic(str(tmp_path / "row-1.json"), {"video": str(src), "task_id": "t"})
    res = await copy_video(str(src), str(tmp_path / "sub" / "row-2.mp4"))
    assert (tmp_path / "sub" / "row-2.mp4").read_bytes() == src.read_bytes()
    assert res.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    side = await read_json(str(tmp_path / "sub" / "row-2.json"))
    assert side["video"].endswith("row-2.mp4") and side["copied_from"] == str(src)
    assert side["task_id"] == "t"
    assert leftovers(tmp_path / "sub") == []


# -- fsutil -------------------------------------------------------------------------------


def test_join_and_parent():
    assert join("s3://bucket/out/", "a", "/b.mp4") == "s3://bucket/out/a/b.mp4"
    assert join("memory://", "x", "y") == "memory://x/y"
    assert join("out", "a.mp4") == os.path.join("out", "a.mp4")
    assert join("s3://bucket") == "s3://bucket"
    assert parent("s3://bucket/out/a.mp4") == "s3://bucket/out"


@pytest.mark.parametrize(
    "value,base,expected",
    [
        ("img/a.png", "s3://b/m", "s3://b/m/img/a.png"),
        ("./img/a.png", "s3://b/m/", "s3://b/m/img/a.png"),
        ("../img/a.png", "s3://b/m", "s3://b/img/a.png"),
        ("../../../a.png", "s3://b/m", "s3://b/a.png"),  # never above the bucket
        ("https://x/a.png?s=1", "s3://b/m", "https://x/a.png?s=1"),
        ("s3://other/a.png", "/local", "s3://other/a.png"),
        ("/abs/a.png", "s3://b/m", "/abs/a.png"),
        ("a.png", "file:///data/m", "file:///data/m/a.png"),
        ("img/../a.png", "/data/m", "/data/m/a.png"),
        ("data:image/png;base64,AAAA", "/data", "data:image/png;base64,AAAA"),
    ],
)
def test_resolve_relative(value, base, expected):
    assert resolve_relative(value, base) == expected


def test_safe_child_accepts_and_normalises():
    assert safe_child("out", "row-1.mp4") == "row-1.mp4"
    assert safe_child("s3://b/out", "clips/./row-1.mp4") == "clips/row-1.mp4"
    assert safe_child("out", "a b/ünï.mp4") == "a b/ünï.mp4"


@pytest.mark.parametrize(
    "name,reason",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("../x.mp4", "'..'"),
        ("a/../../x.mp4", "'..'"),
        ("/etc/passwd", "absolute"),
        ("~/x.mp4", "absolute"),
        ("a\\b.mp4", "backslash"),
        ("a\x00b.mp4", "NUL"),
        ("s3://b/x.mp4", "URL"),
        ("C:/x.mp4", "drive letter"),
        ("dir/", "folder"),
        (".", "does not name a file"),
        (".kf2v/ledger/x.json", "reserved"),
    ],
)
def test_safe_child_rejects(name, reason):
    with pytest.raises(ValueError, match=re.escape(reason)):
        safe_child("out", name)


def test_s3_filesystems_retry_server_errors_through_an_outage_unless_told_otherwise():
    """botocore's legacy default gives up within a second; s3fs never retries a 500."""
    from kf2v_tasks.storage.paths import S3_RETRIES, open_fs

    endpoint = {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}, "anon": True}
    fs, _ = open_fs("s3://bucket/out/a.mp4", endpoint)
    assert fs.config_kwargs["retries"] == S3_RETRIES
    assert S3_RETRIES["mode"] == "standard" and S3_RETRIES["max_attempts"] >= 8
    own = {**endpoint, "config_kwargs": {"retries": {"max_attempts": 2}}}
    fs, _ = open_fs("s3://bucket/out/a.mp4", own)
    assert fs.config_kwargs["retries"] == {"max_attempts": 2}
