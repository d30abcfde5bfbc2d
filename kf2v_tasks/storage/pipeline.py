"""The write side of a streamed download: batches hashed and written on threads of their own.

:class:`_Download` takes the received body in batches; a writer thread and a hash thread
each take every batch in order while the event loop receives the next, so at most three
batches are in memory. A body smaller than one batch (a short clip) never starts those
threads: it is written and hashed in one hop to the shared pool, and closed, fsynced and
committed in a second one. The bytes go to a hidden temp file beside the destination, or, on
S3, to a multipart upload to the final key itself (:class:`_S3Upload`), which becomes an
object only when committed. The HTTP side lives in :mod:`kf2v_tasks.storage.download`.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hashlib
from typing import Any, Optional

import fsspec
import httpx

from kf2v_tasks.storage.content_types import type_kwargs
from kf2v_tasks.storage.files import (
    MIB,
    _commit,
    _discard,
    _fsync_close,
    _open_write,
    _remove_quietly,
    _tmp_path,
)
from kf2v_tasks.storage.paths import forget_cached, is_local, run_sync

#: Part size of streamed S3 uploads, also their batch size: one part uploads while the next
#: is received, so peak memory is a few parts; fewer, larger parts cost fewer requests.
S3_PART_SIZE = 8 * MIB
#: Protocols whose files defer their commit (``autocommit=False``): a multipart upload that
#: becomes an object only on ``commit()`` and is aborted by ``discard()``.
_DEFERRED_COMMIT_PROTOCOLS = frozenset({"s3", "s3a"})


def _defers_commit(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether ``fs`` (S3) can upload straight to the final key and publish it on commit."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return any(p in _DEFERRED_COMMIT_PROTOCOLS for p in protocols)


class _S3Upload:
    """A file-like, deferred-commit S3 multipart upload straight to the final key.

    Nothing exists at the key until :meth:`commit` (after the caller's checks); abandoned
    uploads are aborted by :meth:`discard`, or never become objects. s3fs's own file would
    copy each part twice more (its buffer, then a read of it); here a part is joined from
    the received pieces once, so memory stays near two parts.
    """

    def __init__(self, fs: Any, path: str, content_type: Optional[str] = None) -> None:
        self.fs = fs
        self.bucket, self.key, _ = fs.split_path(path)
        # The object's metadata is set when it is created: by the multipart create or the PUT.
        self.create_kwargs = type_kwargs(fs, content_type)
        self.upload_id: Optional[str] = None
        self.parts: list[dict[str, Any]] = []
        self.pending: list[bytes] = []  # received, not yet uploaded (less than a part)
        self.pending_size = 0
        self.closed = False

    def _call(self, method: str, **kwargs: Any) -> Any:
        return self.fs.call_s3(method, Bucket=self.bucket, Key=self.key, **kwargs)

    def write(self, data: bytes) -> None:
        """Take one batch; upload a part once a part's worth is pending."""
        self.pending.append(data)
        self.pending_size += len(data)
        if self.pending_size >= S3_PART_SIZE:
            self._upload_part()

    def _upload_part(self) -> None:
        body = b"".join(self.pending)  # one batch: the same object, no copy
        self.pending.clear()
        self.pending_size = 0
        if self.upload_id is None:
            self.upload_id = self._call("create_multipart_upload", **self.create_kwargs)["UploadId"]
        number = len(self.parts) + 1
        out = self._call("upload_part", UploadId=self.upload_id, PartNumber=number, Body=body)
        self.parts.append({"PartNumber": number, "ETag": out["ETag"]})

    def close(self) -> None:
        # The last part may be smaller than 5 MiB; a file smaller than one part is one PUT.
        if self.pending and self.upload_id is not None:
            self._upload_part()
        self.closed = True

    def commit(self) -> None:
        """Publish the object: complete the upload, or PUT a file smaller than one part."""
        if self.upload_id is None:
            self._call("put_object", Body=b"".join(self.pending), **self.create_kwargs)
            self.pending.clear()
        else:
            self._call(
                "complete_multipart_upload",
                UploadId=self.upload_id,
                MultipartUpload={"Parts": self.parts},
            )
        self.upload_id = None

    def discard(self) -> None:
        self.pending.clear()
        self.pending_size = 0
        if self.upload_id is not None:
            upload_id, self.upload_id = self.upload_id, None
            self._call("abort_multipart_upload", UploadId=upload_id)


class _Download:
    """State of one resumable download into a temp file.

    Received bytes are grouped into batches; a writer thread and a hash thread each take
    every batch in order while the event loop receives the next (``hashlib`` and file
    writes release the GIL). ``written`` and ``hasher`` are only touched by those threads
    while a batch is pending, and only read by the loop after :meth:`drain`.
    """

    def __init__(
        self, fs: fsspec.AbstractFileSystem, path: str, content_type: Optional[str] = None
    ) -> None:
        self.fs = fs
        self.path = path
        self.content_type = content_type  # of the object on S3 (ignored on local disk)
        self.local = is_local(fs)
        # S3: the multipart upload to ``path`` is the hidden temp (see the module doc).
        self.direct = _defers_commit(fs)
        self.tmp = path if self.direct else _tmp_path(fs, path)
        self.file: Any = None  # opened by the first write (or by finish(), for an empty body)
        self.hasher = hashlib.sha256()
        self.written = 0
        self.total: Optional[int] = None
        self.resumed = False  # a 206 continued an interrupted body at least once
        # Threads of our own, one for writes and one for the hash: each sees the batches in
        # order, the two run side by side (both release the GIL), and their allocations stay
        # in few malloc arenas (the shared pool spreads them over several, raising peak RSS).
        # Started by the first full batch: a body smaller than a batch does without them.
        self._writer: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._hasher: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        # Batches in flight: two keep both threads busy on local disk; on S3 a batch is a
        # whole part, so one at a time keeps memory bounded.
        self._depth = 1 if self.direct else 2

    def batch_size(self, chunk_size: int) -> int:
        # On S3 a batch is a whole part, so a part uploads while the next one is received.
        return max(chunk_size, S3_PART_SIZE) if self.direct else chunk_size

    def _open(self) -> Any:
        if self.direct:
            return _S3Upload(self.fs, self.tmp, self.content_type)
        return _open_write(self.fs, self.tmp)  # not S3: no Content-Type to set

    async def restart(self) -> None:
        """Throw away what was written and start the temp file from zero."""
        await self.drain()
        if self.file is not None:
            if self.local:
                await run_sync(self._truncate)
            else:
                await run_sync(_discard, self.fs, self.file, self.tmp, self.direct)
                self.file = None
        self.hasher = hashlib.sha256()
        self.written = 0

    def _truncate(self) -> None:
        self.file.seek(0)
        self.file.truncate()

    def _write(self, data: bytes) -> None:
        """Writer thread: write one batch, in order."""
        if self.file is None:
            self.file = self._open()
        self.file.write(data)
        self.written += len(data)

    def _write_and_hash(self, data: bytes) -> None:
        """One worker hop for a body smaller than a batch: write it and hash it."""
        self._write(data)
        self.hasher.update(data)

    def _hash(self, data: bytes) -> None:
        """Hash thread: hash one batch, in order."""
        self.hasher.update(data)

    async def drain(self) -> None:
        """Wait until every batch in the threads is hashed and written.

        Shielded: a cancelled caller leaves the batch in ``_pending``, so :meth:`abandon`
        still waits for the threads before deleting the file they write to.
        """
        while self._pending:
            await asyncio.shield(self._pending[0])
            self._pending.popleft()

    async def _submit(self, batch: list[bytes]) -> None:
        while len(self._pending) >= self._depth:  # memory stays bounded
            await asyncio.shield(self._pending[0])
            self._pending.popleft()
        # One buffer per batch: each thread then takes the GIL back once per batch, not
        # once per 64 KiB piece (with the loop busy parsing, every re-take can wait for
        # the interpreter's switch interval).
        data = batch[0] if len(batch) == 1 else b"".join(batch)
        batch.clear()
        if self._writer is None or self._hasher is None:
            self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kf2v-write")
            self._hasher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kf2v-hash")
        loop = asyncio.get_running_loop()
        self._pending.append(
            asyncio.gather(
                loop.run_in_executor(self._writer, self._write, data),
                loop.run_in_executor(self._hasher, self._hash, data),
            )
        )

    async def consume(self, resp: httpx.Response, chunk_size: int) -> None:
        """Write the body in batches of at least ``batch_size(chunk_size)`` bytes.

        ``aiter_bytes(chunk_size)`` would drop its half-filled buffer when the connection
        breaks; batching here keeps every byte received, so the resume offset is exact.
        """
        limit = self.batch_size(chunk_size)
        batch: list[bytes] = []
        size = 0
        try:
            async for piece in resp.aiter_bytes():
                batch.append(piece)
                size += len(piece)
                if size >= limit:
                    await self._submit(batch)
                    batch, size = [], 0
        except (httpx.TransportError, httpx.StreamError):
            await self._flush(batch)  # keep what arrived before the break
            raise
        await self._flush(batch)

    async def _flush(self, batch: list[bytes]) -> None:
        if batch and self._writer is None:
            # Less than a batch so far: starting two threads for it would cost more than
            # the write (a 64 KiB clip: ≈1.5 ms of CPU saved per download, measured).
            await run_sync(self._write_and_hash, b"".join(batch))
            batch.clear()
        elif batch:
            await self._submit(batch)
        await self.drain()

    async def finish(self) -> None:
        """Close the complete temp (fsync on local disk) and commit it at the final path."""
        await self.drain()
        await run_sync(self._finish_sync)  # one hop: close, fsync and commit

    def _finish_sync(self) -> None:
        if self.file is None:  # an empty body is still a (committed) file
            self.file = self._open()
        _fsync_close(self.file, self.local)
        if self.direct:
            self.file.commit()  # completes the multipart upload: the object appears
            self.file = None
            forget_cached(self.fs, self.path)
        else:
            self.file = None
            _commit(self.fs, self.tmp, self.path)

    async def abandon(self) -> None:
        """Failure or cancellation: wait for the threads, then drop the temp; never touch dest."""
        if self._pending:
            await asyncio.wait(list(self._pending))
            for fut in self._pending:
                if not fut.cancelled():
                    fut.exception()  # already reported by the caller's failure
            self._pending.clear()
        if self.file is not None:
            await run_sync(_discard, self.fs, self.file, self.tmp, self.direct)
            self.file = None
        elif not self.direct:  # a direct upload never creates the temp as an object
            await run_sync(_remove_quietly, self.fs, self.tmp)

    def close(self) -> None:
        """Let the threads end (they are idle after :meth:`finish` or :meth:`abandon`)."""
        for pool in (self._writer, self._hasher):
            if pool is not None:
                pool.shutdown(wait=False)
