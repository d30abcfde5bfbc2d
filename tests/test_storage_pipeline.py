"""The batch pipeline of ``stream_to_storage``: hashing and writing in a worker thread.

Failures of the worker (a disk error mid-way), cancellation while it writes, exact resume
offsets across batch boundaries, and S3's direct multipart upload to the final key.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from typing import Any

import pytest
from test_storage import MIB, NO_WAIT, Body, FaultServer, leftovers

from kf2v_tasks.errors import DownloadError
from kf2v_tasks.retry import RetryPolicy
from kf2v_tasks.storage import pipeline as storage
from kf2v_tasks.storage.download import stream_to_storage


class FailingFile:
    """A real local file whose writes fail (or stall) once ``limit`` bytes were written."""

    def __init__(self, real: Any, limit: int, stall: float = 0.0) -> None:
        self.real = real
        self.limit = limit
        self.stall = stall
        self.count = 0
        self.writing = threading.Event()

    def write(self, data: bytes) -> int:
        if self.count + len(data) > self.limit:
            if self.stall:
                self.writing.set()
                time.sleep(self.stall)  # still "writing" when the caller is cancelled
            else:
                raise OSError(28, "No space left on device")
        self.count += len(data)
        return self.real.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.fixture
def big_server():
    srv = FaultServer(Body(6 * MIB + 4321, seed=5))
    yield srv
    srv.close()


async def test_write_error_midway_leaves_nothing_and_keeps_old_video(
    tmp_path, big_server, monkeypatch
):
    dest = tmp_path / "v.mp4"
    dest.write_bytes(b"previous good video")
    real_open = storage._open_write
    monkeypatch.setattr(
        storage, "_open_write", lambda fs, p: FailingFile(real_open(fs, p), limit=3 * MIB)
    )
    with pytest.raises(OSError, match="No space"):
        await stream_to_storage(big_server.url, str(dest), chunk_size=256 * 1024, retry=NO_WAIT)
    assert dest.read_bytes() == b"previous good video"
    assert leftovers(tmp_path) == []
    assert len(big_server.requests) == 1  # a disk error is not a network error: no retry


async def test_cancel_while_worker_writes_waits_for_it_then_cleans_up(
    tmp_path, big_server, monkeypatch
):
    files: list[FailingFile] = []
    real_open = storage._open_write

    def opener(fs: Any, p: str) -> FailingFile:
        files.append(FailingFile(real_open(fs, p), limit=2 * MIB, stall=0.5))
        return files[-1]

    monkeypatch.setattr(storage, "_open_write", opener)
    dest = tmp_path / "v.mp4"
    task = asyncio.create_task(stream_to_storage(big_server.url, str(dest), chunk_size=MIB))
    while not (files and files[0].writing.is_set()):
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The stalled write finished before the temp was removed (else it would be recreated
    # or left open); nothing is left at either name.
    assert files[0].real.closed
    assert not dest.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("cut", [1, 300_000, 2 * MIB, 2 * MIB + 1, 6 * MIB + 4320])
async def test_resume_offset_is_exact_across_batch_boundaries(tmp_path, big_server, cut):
    big_server.faults = [f"cut:{cut}"]
    dest = tmp_path / "v.mp4"
    res = await stream_to_storage(big_server.url, str(dest), chunk_size=MIB, retry=NO_WAIT)
    assert big_server.requests[1]["headers"]["Range"] == f"bytes={cut}-"
    assert res.sha256 == big_server.body.sha256() == hashlib.sha256(dest.read_bytes()).hexdigest()
    assert res.bytes == big_server.body.size and res.resumed


async def test_s3_uploads_straight_to_the_key_and_publishes_only_when_verified(
    s3_server, monkeypatch
):
    """Several parts; a failed download never replaces the old object."""
    monkeypatch.setattr(storage, "S3_PART_SIZE", 5 * MIB)  # S3's minimum: keep moto quick
    srv = FaultServer(Body(12 * MIB + 99, seed=7))
    try:
        bucket = s3_server.new_bucket()
        opts = s3_server.storage_options
        fs = s3_server.filesystem()
        key = f"{bucket}/out/row-1.mp4"
        fs.pipe_file(key, b"previous good video")

        srv.faults = ["cut:7000000", "cut:1000"]  # fails after the first part was uploaded
        with pytest.raises(DownloadError):
            await stream_to_storage(
                srv.url,
                f"s3://{key}",
                storage_options=opts,
                retry=RetryPolicy(max_attempts=2, base_delay=0),
            )
        fs.invalidate_cache()
        assert fs.cat_file(key) == b"previous good video"
        assert fs.find(bucket) == [key]  # no temp object, ever
        assert fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", []) == []

        srv.faults = ["cut:6000000"]
        res = await stream_to_storage(srv.url, f"s3://{key}", storage_options=opts, retry=NO_WAIT)
        fs.invalidate_cache()
        assert res.resumed and res.sha256 == srv.body.sha256()
        assert hashlib.sha256(fs.cat_file(key)).hexdigest() == res.sha256
        assert fs.find(bucket) == [key]
    finally:
        srv.close()


async def test_s3_small_file_is_one_put(s3_server, server):
    bucket = s3_server.new_bucket()
    opts = s3_server.storage_options
    key = f"{bucket}/small.mp4"
    res = await stream_to_storage(server.url, f"s3://{key}", storage_options=opts)
    fs = s3_server.filesystem()
    assert hashlib.sha256(fs.cat_file(key)).hexdigest() == res.sha256 == server.body.sha256()
    assert fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", []) == []


@pytest.fixture
def server():
    srv = FaultServer(Body(3 * MIB + 12345))
    yield srv
    srv.close()


def _count_pools(monkeypatch) -> list[str]:
    """The name prefix of every thread pool the download starts from now on."""
    started: list[str] = []
    real_pool = storage.concurrent.futures.ThreadPoolExecutor

    def counting_pool(*args: Any, **kwargs: Any) -> Any:
        started.append(kwargs.get("thread_name_prefix", ""))
        return real_pool(*args, **kwargs)

    monkeypatch.setattr(storage.concurrent.futures, "ThreadPoolExecutor", counting_pool)
    return started


@pytest.mark.parametrize("size", [0, 65536 + 7])
async def test_body_smaller_than_a_batch_starts_no_thread_of_its_own(tmp_path, monkeypatch, size):
    """A short clip is written and hashed in one hop, committed in another: no pool threads."""
    started = _count_pools(monkeypatch)
    body = Body(size, seed=11)
    srv = FaultServer(body)
    try:
        dest = tmp_path / "clip.mp4"
        res = await stream_to_storage(srv.url, str(dest), retry=NO_WAIT)
        # Cut mid-body, then resumed with Range: still one-hop writes, exact bytes.
        srv.faults = ["cut:30000"]
        again = await stream_to_storage(srv.url, str(tmp_path / "cut.mp4"), retry=NO_WAIT)
    finally:
        srv.close()
    assert started == []
    assert (res.bytes, res.sha256) == (size, body.sha256())
    assert dest.read_bytes() == body.bytes()
    assert (again.bytes, again.sha256) == (size, body.sha256())
    assert (tmp_path / "cut.mp4").read_bytes() == body.bytes()
    assert leftovers(tmp_path) == []


async def test_body_larger_than_a_batch_still_uses_the_threads(tmp_path, big_server, monkeypatch):
    started = _count_pools(monkeypatch)
    dest = tmp_path / "v.mp4"
    res = await stream_to_storage(big_server.url, str(dest), chunk_size=MIB, retry=NO_WAIT)
    assert sorted(started) == ["kf2v-hash", "kf2v-write"]
    assert (res.bytes, res.sha256) == (big_server.body.size, big_server.body.sha256())
    assert leftovers(tmp_path) == []
