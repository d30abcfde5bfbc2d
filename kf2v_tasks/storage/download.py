"""Streaming persistence: download a video into any fsspec storage, resumably and atomically.

The body is streamed in chunks into a hidden temp object next to the destination
(``<dir>/.kf2v/tmp/<uuid>-<name>``) while its sha256 is computed; only a complete,
length-checked file is committed to the final name (``os.replace`` on local disk, copy +
delete on object stores, where the copy appears atomically). On S3 the hidden temp is a
multipart upload to the final key itself: no object exists until the upload is completed,
which happens only after the same checks (and saves a server-side copy of the whole video).
The final path therefore never holds a partial video, and an existing file is replaced
only by a verified new one.

Hashing and writing (or uploading) run on two threads of their own while the event loop
receives the next batch: at most three batches are in memory (two on S3, where a batch is
a whole part).

Example:
    ```python
    from kf2v_tasks.storage.download import stream_to_storage, sidecar_path, write_json_atomic

    res = await stream_to_storage(video_url, "s3://bucket/out/row-1.mp4", storage_options=opts)
    await write_json_atomic(sidecar_path(res.path), {"sha256": res.sha256}, storage_options=opts)
    ```
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import os
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Optional

import fsspec
import httpx
from pydantic import BaseModel

from kf2v_tasks import clock
from kf2v_tasks.errors import DownloadError, UrlExpiredError
from kf2v_tasks.storage.paths import (
    RESERVED_DIR,
    forget_cached,
    is_local,
    is_object_store,
    is_url,
    open_fs,
    run_sync,
)

logger = logging.getLogger("kf2v_tasks.storage.download")

MIB = 1024 * 1024
#: s3fs part size: bounds the upload buffer (peak memory); S3 parts must be at least 5 MiB.
WRITE_BLOCK_SIZE = 5 * MIB + 64 * 1024
#: Part size of streamed S3 uploads, also their batch size: one part uploads while the next
#: is received, so peak memory is a few parts; fewer, larger parts cost fewer requests.
S3_PART_SIZE = 8 * MIB
#: Protocols whose files defer their commit (``autocommit=False``): a multipart upload that
#: becomes an object only on ``commit()`` and is aborted by ``discard()``.
_DEFERRED_COMMIT_PROTOCOLS = frozenset({"s3", "s3a"})
_HTTP_TIMEOUT = httpx.Timeout(60.0, connect=15.0)
_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class PersistResult(BaseModel):
    """A committed file: where, its sha256 and size, and how the download went."""

    path: str
    sha256: str
    bytes: int
    sidecar_path: Optional[str] = None
    attempts: int = 1
    resumed: bool = False


def redact_query(url: str) -> str:
    """The URL without its query string (signatures must not reach logs, errors or files)."""
    return url.split("?", 1)[0]


def sidecar_path(video_path: str) -> str:
    """The JSON sidecar beside a video: same folder, same stem, ``.json``.

    Example:
        ```python
        assert sidecar_path("out/row-1.mp4") == "out/row-1.json"
        assert sidecar_path("s3://b/x/clip.v2.mp4") == "s3://b/x/clip.v2.json"
        ```
    """
    head, sep, name = video_path.rpartition("/")
    stem, dot, _ext = name.rpartition(".")
    stem = stem if dot and stem else name
    return f"{head}{sep}{stem}.json"


def _tmp_path(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A hidden temp name beside ``path`` on the same filesystem (same-device rename)."""
    folder, _, name = path.rstrip("/").rpartition("/")
    return f"{folder}/{RESERVED_DIR}/tmp/{uuid.uuid4().hex}-{name}"


def _open_write(fs: fsspec.AbstractFileSystem, path: str):
    if is_local(fs):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return open(path, "wb")
    return fs.open(path, "wb", block_size=WRITE_BLOCK_SIZE)


def _discard(fs: fsspec.AbstractFileSystem, f: Any, path: str, direct: bool = False) -> None:
    """Abandon a temp file: abort pending uploads, then delete whatever exists.

    ``direct``: ``f`` is a deferred-commit upload to the final ``path`` itself; aborting it
    is all there is to do (deleting ``path`` would delete the previous good video).
    """
    try:
        if hasattr(f, "discard") and not is_local(fs):
            f.discard()  # s3fs: abort the multipart upload instead of completing it
            f.closed = True  # else __del__ would try to complete the discarded upload
        else:
            f.close()
    except Exception:  # cleanup is best-effort; the temp name is never read as a result
        logger.debug("closing temp %s failed", path, exc_info=True)
    if not direct:
        _remove_quietly(fs, path)


def _remove_quietly(fs: fsspec.AbstractFileSystem, path: str) -> None:
    try:
        if is_local(fs):
            if os.path.exists(path):
                os.remove(path)
        else:
            forget_cached(fs, path)
            if fs.exists(path):
                fs.rm_file(path)
    except Exception:
        logger.warning("could not remove temp file %s", path, exc_info=True)


def _commit(fs: fsspec.AbstractFileSystem, tmp: str, dest: str) -> None:
    """Move a finished temp file onto its final name, atomically where the store allows."""
    if is_local(fs):
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.replace(tmp, dest)  # atomic rename on the same filesystem
        return
    # Object stores: the copy appears at ``dest`` in one step (server-side copy), then the
    # temp is deleted; ``dest`` never holds a partial object.
    fs.mv(tmp, dest)
    forget_cached(fs, dest)


def _fsync_close(f: Any, local: bool) -> None:
    if local:
        f.flush()
        os.fsync(f.fileno())
    f.close()


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

    def __init__(self, fs: Any, path: str) -> None:
        self.fs = fs
        self.bucket, self.key, _ = fs.split_path(path)
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
            self.upload_id = self._call("create_multipart_upload")["UploadId"]
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
            self._call("put_object", Body=b"".join(self.pending))
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

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str) -> None:
        self.fs = fs
        self.path = path
        self.local = is_local(fs)
        # S3: the multipart upload to ``path`` is the hidden temp (see the module doc).
        self.direct = _defers_commit(fs)
        self.tmp = path if self.direct else _tmp_path(fs, path)
        self.file: Any = None
        self.hasher = hashlib.sha256()
        self.written = 0
        self.total: Optional[int] = None
        # Threads of our own, one for writes and one for the hash: each sees the batches in
        # order, the two run side by side (both release the GIL), and their allocations stay
        # in few malloc arenas (the shared pool spreads them over several, raising peak RSS).
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kf2v-write")
        self._hasher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kf2v-hash")
        self._pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        # Batches in flight: two keep both threads busy on local disk; on S3 a batch is a
        # whole part, so one at a time keeps memory bounded.
        self._depth = 1 if self.direct else 2

    def batch_size(self, chunk_size: int) -> int:
        # On S3 a batch is a whole part, so a part uploads while the next one is received.
        return max(chunk_size, S3_PART_SIZE) if self.direct else chunk_size

    def _open(self) -> Any:
        if self.direct:
            return _S3Upload(self.fs, self.tmp)
        return _open_write(self.fs, self.tmp)

    async def restart(self) -> None:
        """Throw away what was written and start the temp file from zero."""
        await self.drain()
        if self.file is not None:
            if self.local:
                await run_sync(self._truncate)
            else:
                await run_sync(_discard, self.fs, self.file, self.tmp, self.direct)
                self.file = None
        if self.file is None:
            self.file = await run_sync(self._open)
        self.hasher = hashlib.sha256()
        self.written = 0

    def _truncate(self) -> None:
        self.file.seek(0)
        self.file.truncate()

    def _write(self, data: bytes) -> None:
        """Writer thread: write one batch, in order."""
        self.file.write(data)
        self.written += len(data)

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
        if batch:
            await self._submit(batch)
        await self.drain()

    async def finish(self) -> None:
        """Close the complete temp (fsync on local disk) and commit it at the final path."""
        await self.drain()
        await run_sync(_fsync_close, self.file, self.local)
        if self.direct:
            await run_sync(self.file.commit)  # completes the multipart upload: object appears
            self.file = None
            forget_cached(self.fs, self.path)
        else:
            self.file = None
            await run_sync(_commit, self.fs, self.tmp, self.path)

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
        self._writer.shutdown(wait=False)
        self._hasher.shutdown(wait=False)


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


def _backoff(attempt: int, base: float) -> float:
    return min(30.0, base * (2 ** (attempt - 1))) * (0.75 + random.random() / 2)


async def stream_to_storage(
    url: str,
    dest: str,
    *,
    storage_options: Optional[dict] = None,
    http: Optional[httpx.AsyncClient] = None,
    refresh_url: Optional[Callable[[], Awaitable[str]]] = None,
    chunk_size: int = 4 * MIB,
    max_attempts: int = 6,
    expected_bytes: Optional[int] = None,
    backoff: float = 1.0,
) -> PersistResult:
    """Stream ``url`` into ``dest`` (any fsspec URL or local path) and commit it atomically.

    Interrupted bodies resume with ``Range: bytes=<written>-`` (a server answering 200
    instead of 206 restarts the file from zero); 403 (expired signed URL) asks
    ``refresh_url`` for a fresh URL; 429/5xx and connection errors back off through
    :func:`kf2v_tasks.clock.sleep`. Memory stays bounded by three batches (one being
    received, up to two being hashed and written by worker threads; one on S3) plus the
    filesystem's write block, whatever the video size: a batch is ``chunk_size``, or one
    8 MiB part on S3.

    Args:
        url: the signed video URL; no Authorization header is ever sent to it.
        dest: final path of the video.
        storage_options: fsspec options of ``dest``.
        http: an ``httpx.AsyncClient`` to use (a plain one with timeouts by default).
        refresh_url: coroutine returning a fresh URL when the current one answers 403.
        chunk_size: bytes per write batch (S3 batches are at least one upload part).
        max_attempts: HTTP requests allowed in total (first try, resumes, refreshes).
        expected_bytes: size the video must have, when known from elsewhere.
        backoff: base delay in service seconds (doubles per retry, capped at 30 s).

    Returns:
        :class:`PersistResult` (``sidecar_path`` is ``None``).

    Raises:
        UrlExpiredError: 403 and no ``refresh_url``.
        DownloadError: attempts exhausted, or the size did not match.

    Example:
        ```python
        res = await stream_to_storage(state.video_url, "out/row-1.mp4", refresh_url=refresh)
        print(res.sha256, res.bytes, res.attempts)
        ```
    """
    fs, path = open_fs(dest, storage_options)
    dl = _Download(fs, path)
    own_http = http is None
    if http is None:
        http = httpx.AsyncClient(timeout=_HTTP_TIMEOUT, follow_redirects=True)
    attempts = 0
    resumed = False
    last_error = "no attempt made"
    try:
        await dl.restart()
        while True:
            if attempts >= max_attempts:
                raise DownloadError(
                    f"download of {redact_query(url)} failed after {attempts} attempts: {last_error}"
                )
            attempts += 1
            # identity: Range offsets and Content-Length must refer to the stored bytes.
            headers = {"Accept-Encoding": "identity"}
            if dl.written:
                headers["Range"] = f"bytes={dl.written}-"
            retry = False
            try:
                async with _get(http, url, headers) as resp:
                    status = resp.status_code
                    if status == 403:
                        await resp.aread()
                        if refresh_url is None:
                            raise UrlExpiredError(
                                f"video URL {redact_query(url)} answered 403 (expired signature?)"
                            )
                        logger.info("video URL answered 403; asking for a fresh one")
                        url = await refresh_url()
                        last_error = "HTTP 403 (URL expired)"
                        continue  # a fresh URL needs no backoff
                    if status == 416 and dl.written:
                        # Range past the end: fine if we already have every byte.
                        total = _parse_total(resp.headers.get("content-range"))
                        if total is not None and total == dl.written:
                            dl.total = total
                            break
                        await dl.restart()
                        last_error = "HTTP 416 on resume"
                        retry = True
                    elif status == 429 or status >= 500:
                        last_error = f"HTTP {status}"
                        retry = True
                    elif status >= 400:
                        raise DownloadError(f"HTTP {status} from {redact_query(url)}")
                    elif status not in (200, 206):
                        last_error = f"unexpected HTTP {status}"
                        retry = True
                    else:
                        if status == 206 and dl.written:
                            start, total = _parse_content_range(resp.headers.get("content-range"))
                            if start != dl.written:
                                logger.warning("server resumed at %s, not %s", start, dl.written)
                                await dl.restart()
                                last_error = "resume offset mismatch"
                                retry = True
                            else:
                                resumed = True
                                dl.total = total if total is not None else dl.total
                        else:
                            if dl.written:
                                # The server ignored Range (200): start over from byte 0.
                                logger.info("server ignored Range; restarting from zero")
                                await dl.restart()
                            declared = resp.headers.get("content-length")
                            dl.total = int(declared) if declared and declared.isdigit() else None
                        if not retry:
                            try:
                                await dl.consume(resp, chunk_size)
                            except (httpx.TransportError, httpx.StreamError) as exc:
                                last_error = (
                                    f"body interrupted at {dl.written} bytes ({type(exc).__name__})"
                                )
                                retry = True
                            else:
                                if dl.total is not None and dl.written < dl.total:
                                    last_error = f"body ended at {dl.written} of {dl.total} bytes"
                                    retry = True
                                elif dl.total is not None and dl.written > dl.total:
                                    await dl.restart()
                                    last_error = "more bytes than Content-Length"
                                    retry = True
                                else:
                                    break
            except httpx.TransportError as exc:
                last_error = f"{type(exc).__name__} before the body"
                retry = True
            if retry:
                logger.info("download attempt %d: %s; retrying", attempts, last_error)
                if attempts < max_attempts:
                    await clock.sleep(_backoff(attempts, backoff))

        size = dl.written
        if dl.total is not None and size != dl.total:  # defensive: loop exits only when equal
            raise DownloadError(f"downloaded {size} bytes, expected {dl.total}")
        if expected_bytes is not None and size != expected_bytes:
            raise DownloadError(f"downloaded {size} bytes, expected {expected_bytes}")
        await dl.finish()
    except BaseException:
        # Cancellation included: never leave the temp behind, never touch ``dest``.
        await dl.abandon()
        raise
    finally:
        dl.close()
        if own_http:
            await http.aclose()
    return PersistResult(
        path=dest, sha256=dl.hasher.hexdigest(), bytes=size, attempts=attempts, resumed=resumed
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


def _write_bytes_atomic_sync(dest: str, data: bytes, storage_options: Optional[dict]) -> None:
    fs, path = open_fs(dest, storage_options)
    if is_object_store(fs):
        fs.pipe_file(path, data)  # a single PUT replaces the object atomically
        return
    tmp = _tmp_path(fs, path)
    f = _open_write(fs, tmp)
    try:
        f.write(data)
        _fsync_close(f, is_local(fs))
        _commit(fs, tmp, path)
    except BaseException:
        _discard(fs, f, tmp)
        raise


async def write_bytes_atomic(
    dest: str, data: bytes, *, storage_options: Optional[dict] = None
) -> None:
    """Write small ``data`` to ``dest`` so readers see the old or the new content, never half."""
    await run_sync(_write_bytes_atomic_sync, dest, data, storage_options)


async def write_json_atomic(
    dest: str, data: dict[str, Any], *, storage_options: Optional[dict] = None
) -> None:
    """Write a JSON document (e.g. a sidecar) atomically.

    Example:
        ```python
        await write_json_atomic("out/row-1.json", {"sha256": "..."})
        ```
    """
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"
    await write_bytes_atomic(dest, text.encode(), storage_options=storage_options)


async def write_text_atomic(
    dest: str, text: str, *, storage_options: Optional[dict] = None
) -> None:
    """Write a UTF-8 text file (e.g. ``results.csv``) atomically."""
    await write_bytes_atomic(dest, text.encode(), storage_options=storage_options)


async def read_json(path: str, *, storage_options: Optional[dict] = None) -> Any:
    """Read a JSON document.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not valid JSON.
    """

    def _read() -> bytes:
        fs, p = open_fs(path, storage_options)
        forget_cached(fs, p)
        return fs.cat_file(p)

    return json.loads(await run_sync(_read))


def _hash_sync(path: str, storage_options: Optional[dict]) -> tuple[str, int]:
    fs, p = open_fs(path, storage_options)
    forget_cached(fs, p)
    h = hashlib.sha256()
    n = 0
    with fs.open(p, "rb", block_size=WRITE_BLOCK_SIZE) as f:
        while chunk := f.read(MIB):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


async def verify_file(path: str, sha256: str, *, storage_options: Optional[dict] = None) -> bool:
    """Whether ``path`` exists and hashes (streamed) to ``sha256``.

    Example:
        ```python
        ok = await verify_file("out/row-1.mp4", record.sha256)
        ```
    """
    if not sha256:
        return False
    try:
        digest, _ = await run_sync(_hash_sync, path, storage_options)
    except (FileNotFoundError, IsADirectoryError):
        return False
    return digest == sha256.lower()


def _copy_sync(src: str, dest: str, storage_options: Optional[dict]) -> tuple[str, int]:
    sfs, spath = open_fs(src, storage_options)
    dfs, dpath = open_fs(dest, storage_options)
    forget_cached(sfs, spath)
    tmp = _tmp_path(dfs, dpath)
    h = hashlib.sha256()
    n = 0
    out = _open_write(dfs, tmp)
    try:
        with sfs.open(spath, "rb", block_size=WRITE_BLOCK_SIZE) as f:
            while chunk := f.read(MIB):
                h.update(chunk)
                out.write(chunk)
                n += len(chunk)
        _fsync_close(out, is_local(dfs))
        _commit(dfs, tmp, dpath)
    except BaseException:
        _discard(dfs, out, tmp)
        raise
    return h.hexdigest(), n


async def copy_video(
    src: str,
    dest: str,
    *,
    storage_options: Optional[dict] = None,
    with_sidecar: bool = True,
) -> PersistResult:
    """Copy a committed video (and its sidecar, if any) to ``dest`` atomically, streamed.

    Used when two manifest rows ask for identical work: the second gets a copy, not a
    second paid generation. The copied sidecar names its own video and ``copied_from``.

    Example:
        ```python
        res = await copy_video("out/row-1.mp4", "out/row-7.mp4")
        ```
    """
    digest, size = await run_sync(_copy_sync, src, dest, storage_options)
    side: Optional[str] = None
    if with_sidecar:
        try:
            doc = await read_json(sidecar_path(src), storage_options=storage_options)
        except (FileNotFoundError, ValueError):
            doc = None
        if isinstance(doc, dict):
            doc.update(video=dest, copied_from=src, sha256=digest, bytes=size)
            side = sidecar_path(dest)
            await write_json_atomic(side, doc, storage_options=storage_options)
    return PersistResult(path=dest, sha256=digest, bytes=size, sidecar_path=side, attempts=0)


__all__ = [
    "PersistResult",
    "copy_video",
    "read_json",
    "sidecar_path",
    "stream_to_storage",
    "verify_file",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]


def _remove_stale_temps_sync(folder: str, older_than: float) -> int:
    tmp = os.path.join(folder, RESERVED_DIR, "tmp")
    removed = 0
    if not os.path.isdir(tmp):
        return 0
    cutoff = time.time() - older_than
    for entry in os.scandir(tmp):
        # A temp still being written keeps a fresh mtime; only abandoned ones age.
        if entry.is_file() and entry.stat().st_mtime < cutoff:
            with contextlib.suppress(FileNotFoundError):
                os.remove(entry.path)
                removed += 1
    return removed


async def remove_stale_temps(root: str, *, older_than: float = 900.0) -> int:
    """Delete temp files a killed run left under ``<root>/.kf2v/tmp`` (local roots only).

    Object stores need nothing: an interrupted multipart upload never becomes an object.
    Files written to within ``older_than`` seconds are kept, since another shard of the
    same run may still be writing them.
    """
    local = root[len("file://") :] if root.startswith("file://") else root
    if is_url(local):
        return 0
    return await run_sync(_remove_stale_temps_sync, local, older_than)
