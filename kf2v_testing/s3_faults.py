"""S3 faults on loopback: a proxy in front of a real moto server (dev extra: moto).

:class:`S3FaultProxy` forwards every S3 request to a :class:`~kf2v_testing.moto_server.MotoS3Server`
and, by seeded probability per kind (or a script of faults for the next requests), answers
instead of the server:

* ``slowdown`` — ``503 SlowDown`` with the S3 XML error body (real S3 under load);
* ``error500`` — ``500 InternalError`` with the S3 XML error body;
* ``reset_upload_part`` — a multipart ``UploadPart`` whose connection is reset (TCP RST)
  after half of its request body arrived.

A faulted request never reaches moto, so it changes nothing there. Clients (s3fs,
botocore) point at :attr:`S3FaultProxy.endpoint` as their ``endpoint_url``; nothing is
mocked.

:meth:`S3FaultProxy.restart_upstream` restarts moto mid-traffic: the proxy refuses
requests (connection reset, as a server that is down), waits for forwarded requests to
finish, saves every object through the S3 API, stops moto, starts a new moto on the same
port, and puts the objects back, then lets traffic through again. moto keeps its state in
memory only, so the objects survive because this method restores them, not because moto
kept them. Multipart uploads that were open survive too: the proxy kept a copy of their
parts as they passed, re-creates each upload on the new server and maps the old upload id
to the new one in later requests (moto checks no signatures, so the rewrite is accepted).
Objects restored from a multipart upload come back as one PUT: their ETag changes.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import socket
import struct
import tempfile
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import parse_qs, quote, unquote, urlsplit

import httpx

from kf2v_testing.moto_server import MOTO_KEY, MotoS3Server

#: The fault kinds :class:`S3FaultProxy` injects.
FAULT_KINDS = ("slowdown", "error500", "reset_upload_part")

_ERRORS = {
    "slowdown": (503, "Service Unavailable", "SlowDown", "Please reduce your request rate."),
    "error500": (
        500,
        "Internal Server Error",
        "InternalError",
        "We encountered an internal error. Please try again.",
    ),
}
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "content-length",
}
_UPLOAD_ID_RE = re.compile(r"(?<=[?&])uploadId=([^&]*)")
_XML_UPLOAD_ID_RE = re.compile(rb"<UploadId>([^<]+)</UploadId>")


def s3_operation(method: str, target: str, headers: dict[str, str]) -> str:
    """The S3 operation name of a path-style request (enough to target faults).

    Example:
        ```python
        from kf2v_testing.s3_faults import s3_operation
        assert s3_operation("PUT", "/b/k?partNumber=1&uploadId=x", {}) == "UploadPart"
        assert s3_operation("HEAD", "/b/k", {}) == "HeadObject"
        ```
    """
    parts = urlsplit(target)
    query = parse_qs(parts.query, keep_blank_values=True)
    has_key = "/" in parts.path.strip("/")
    if method == "PUT":
        if "partNumber" in query and "uploadId" in query:
            return "UploadPart"
        if "x-amz-copy-source" in headers:
            return "CopyObject"
        return "PutObject" if has_key else "CreateBucket"
    if method == "POST":
        if "uploads" in query:
            return "CreateMultipartUpload"
        if "uploadId" in query:
            return "CompleteMultipartUpload"
        return "DeleteObjects" if "delete" in query else "Post"
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in query else "DeleteObject"
    if method == "HEAD":
        return "HeadObject" if has_key else "HeadBucket"
    if method == "GET":
        if "uploadId" in query:
            return "ListParts"
        return "GetObject" if has_key else "ListObjects"
    return method


@dataclass
class _OpenUpload:
    """A multipart upload the client started and has not completed or aborted."""

    bucket: str
    key: str
    parts: dict[int, tuple[str, str]] = field(default_factory=dict)  # number -> (file, etag)


class S3FaultProxy:
    """An S3 proxy on loopback that injects faults in front of a moto server.

    Args:
        upstream: the moto server to forward to (restarted by :meth:`restart_upstream`).
        rates: probability per request of each kind in :data:`FAULT_KINDS`
            (``reset_upload_part`` only applies to ``UploadPart`` requests).
        seed: seed of the fault draws.

    Example:
        ```python
        from kf2v_testing.moto_server import MotoS3Server
        from kf2v_testing.s3_faults import S3FaultProxy

        moto = MotoS3Server()
        proxy = S3FaultProxy(moto, rates={"slowdown": 0.05, "error500": 0.05})
        fs = proxy.filesystem()          # s3fs through the faults
        proxy.script("slowdown")         # the next request gets a 503 SlowDown
        proxy.restart_upstream()         # moto restarted; objects and open uploads kept
        print(proxy.counts)
        proxy.stop(); moto.stop()
        ```
    """

    def __init__(
        self, upstream: MotoS3Server, *, rates: Optional[dict[str, float]] = None, seed: int = 0
    ) -> None:
        unknown = set(rates or {}) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown S3 fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
        self.upstream = upstream
        self.rates = dict(rates or {})
        self.counts: Counter[str] = Counter()
        self._rng = random.Random(f"s3faults:{seed}")
        self._script: deque[tuple[str, Optional[str]]] = deque()
        self._lock = threading.Lock()
        self._down = False
        self._active = 0
        self._uploads: dict[str, _OpenUpload] = {}
        self._upload_map: dict[str, str] = {}  # client-visible upload id -> upstream id
        self._spool = tempfile.mkdtemp(prefix="kf2v-s3proxy-")
        self._http: Optional[httpx.AsyncClient] = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="s3-fault-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("S3 fault proxy did not start")
        self.endpoint = f"http://127.0.0.1:{self.port}"

    # ----------------------------------------------------------------- public surface

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec/s3fs options that go through the proxy (moto accepts any credentials)."""
        return {
            "key": MOTO_KEY,
            "secret": MOTO_KEY,
            "client_kwargs": {"endpoint_url": self.endpoint, "region_name": "us-east-1"},
        }

    def filesystem(self):
        """An s3fs filesystem whose every request goes through the proxy."""
        import s3fs

        return s3fs.S3FileSystem(**self.storage_options, use_listings_cache=False)

    def script(self, *kinds: str, operation: Optional[str] = None) -> None:
        """Inject ``kinds`` (in order) into the next requests of ``operation`` (any if None)."""
        for kind in kinds:
            if kind not in FAULT_KINDS:
                raise ValueError(f"unknown S3 fault kind {kind!r}; known: {FAULT_KINDS}")
            with self._lock:
                self._script.append((kind, operation))

    def clear_script(self) -> None:
        """Forget the scripted faults not yet injected."""
        with self._lock:
            self._script.clear()

    def set_rates(self, rates: dict[str, float]) -> None:
        """Replace the fault probabilities (e.g. ``{}`` to stop injecting)."""
        with self._lock:
            self.rates = dict(rates)

    def injected(self) -> dict[str, int]:
        """Faults injected so far, by kind (``s3.<kind>``)."""
        return {k: v for k, v in sorted(self.counts.items()) if k.startswith("s3.")}

    def restart_upstream(self, drain_timeout: float = 60.0) -> dict[str, float]:
        """Restart moto on the same port, keeping its objects and open multipart uploads.

        Returns figures of the restart: seconds down, objects and uploads restored.
        """
        t0 = time.monotonic()
        with self._lock:
            self._down = True
        try:
            deadline = time.monotonic() + drain_timeout
            while self._active and time.monotonic() < deadline:
                time.sleep(0.01)
            objects = self._save_objects()
            self.upstream.restart()
            restored_bytes = self._restore_objects(objects)
            uploads = self._restore_uploads()
            asyncio.run_coroutine_threadsafe(self._renew_http(), self._loop).result(30)
        finally:
            self._down = False
            shutil.rmtree(os.path.join(self._spool, "snapshot"), ignore_errors=True)
        self.counts["restarts"] += 1
        return {
            "seconds_down": round(time.monotonic() - t0, 2),
            "objects_restored": sum(1 for _, key, _ in objects if key),
            "bytes_restored": restored_bytes,
            "uploads_restored": uploads,
        }

    def stop(self) -> None:
        """Stop the proxy (not moto) and remove its spool folder."""
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stop_event.set)
            self._thread.join(30)
        shutil.rmtree(self._spool, ignore_errors=True)

    # ------------------------------------------------------------------- the server

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop_event = asyncio.Event()
        await self._renew_http()
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=1 << 20)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop_event.wait()
        # Connections still open end here, so no handler outlives the loop.
        handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in handlers:
            t.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()

    async def _renew_http(self) -> None:
        # Pooled connections to the old server are dead after a restart.
        old, self._http = self._http, httpx.AsyncClient(timeout=httpx.Timeout(120.0))
        if old is not None:
            await old.aclose()

    def _draw(self, op: str) -> Optional[str]:
        with self._lock:
            for i, (kind, only) in enumerate(self._script):
                if (only is None or only == op) and (
                    kind != "reset_upload_part" or op == "UploadPart"
                ):
                    del self._script[i]
                    return kind
            for kind in FAULT_KINDS:
                p = self.rates.get(kind, 0.0)
                if kind == "reset_upload_part" and op != "UploadPart":
                    continue
                if p and self._rng.random() < p:
                    return kind
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            asyncio.CancelledError,  # the proxy is stopping
            ConnectionError,
        ):
            pass
        finally:
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; False when the connection is finished."""
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        self.counts["requests"] += 1
        if self._down:  # moto is being restarted: like a server that is not there
            self.counts["refused_while_restarting"] += 1
            _reset(writer)
            return False
        op = s3_operation(method, target, headers)
        fault = self._draw(op)
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = int(headers.get("content-length", "0") or 0)
        if fault == "reset_upload_part":
            await reader.readexactly(length // 2)  # half the part arrived, then the line dies
            self.counts[f"s3.{fault}"] += 1
            _reset(writer)
            return False
        body = await _read_chunked(reader) if chunked else await reader.readexactly(length)
        if fault is not None:
            self.counts[f"s3.{fault}"] += 1
            status, reason, code, message = _ERRORS[fault]
            await _respond(writer, status, reason, _error_headers(), _error_xml(code, message))
            return "close" not in headers.get("connection", "").lower()
        with self._lock:  # restart_upstream waits for _active to drop to zero
            refused = self._down
            if not refused:
                self._active += 1
        if refused:
            self.counts["refused_while_restarting"] += 1
            _reset(writer)
            return False
        try:
            try:
                resp, data = await self._forward(method, target, headers, body)
            except httpx.HTTPError:
                self.counts["upstream_errors"] += 1
                _reset(writer)
                return False
            self._track(op, target, body, resp, data)
        finally:
            with self._lock:
                self._active -= 1
        self.counts[f"forwarded.{op}"] += 1
        out = [(k, v) for k, v in resp.headers.multi_items() if k.lower() not in _HOP_BY_HOP]
        if method == "HEAD":
            out.append(("Content-Length", resp.headers.get("content-length", "0")))
            data = b""
        else:
            out.append(("Content-Length", str(len(data))))
        await _respond(writer, resp.status_code, resp.reason_phrase, out, data)
        return "close" not in headers.get("connection", "").lower()

    async def _forward(self, method: str, target: str, headers: dict[str, str], body: bytes):
        m = _UPLOAD_ID_RE.search(target)
        if m:
            mapped = self._upload_map.get(unquote(m.group(1)))
            if mapped:
                target = target[: m.start(1)] + quote(mapped, safe="") + target[m.end(1) :]
        fwd = {k: v for k, v in headers.items() if k not in _HOP_BY_HOP}
        assert self._http is not None
        request = self._http.build_request(
            method, self.upstream.endpoint + target, headers=fwd, content=body
        )
        resp = await self._http.send(request, stream=True)
        try:
            data = b"".join([piece async for piece in resp.aiter_raw()])
        finally:
            await resp.aclose()
        return resp, data

    def _track(self, op: str, target: str, body: bytes, resp: httpx.Response, data: bytes) -> None:
        """Keep what a restart needs to re-create the open multipart uploads."""
        if resp.status_code >= 300:
            return
        path = urlsplit(target).path
        if op == "CreateMultipartUpload":
            m = _XML_UPLOAD_ID_RE.search(data)
            bucket, _, key = unquote(path).lstrip("/").partition("/")
            if m:
                self._uploads[m.group(1).decode()] = _OpenUpload(bucket, key)
            return
        m = _UPLOAD_ID_RE.search(target)
        upload = self._uploads.get(unquote(m.group(1))) if m else None
        if upload is None or m is None:
            return
        if op == "UploadPart":
            number = int(parse_qs(urlsplit(target).query)["partNumber"][0])
            spooled = os.path.join(self._spool, uuid.uuid4().hex)
            with open(spooled, "wb") as f:
                f.write(body)
            old = upload.parts.get(number)
            upload.parts[number] = (spooled, resp.headers.get("etag", ""))
            if old:
                os.unlink(old[0])
        elif op in ("CompleteMultipartUpload", "AbortMultipartUpload"):
            for spooled, _ in upload.parts.values():
                os.unlink(spooled)
            self._uploads.pop(unquote(m.group(1)), None)

    # ----------------------------------------------------------- save and restore

    def _client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.upstream.endpoint,  # straight to moto, no faults
            region_name="us-east-1",
            aws_access_key_id=MOTO_KEY,
            aws_secret_access_key=MOTO_KEY,
        )

    def _save_objects(self) -> list[tuple[str, str, str]]:
        """Every object of every bucket, saved to the spool: (bucket, key, file)."""
        s3 = self._client()
        folder = os.path.join(self._spool, "snapshot")
        os.makedirs(folder, exist_ok=True)
        saved: list[tuple[str, str, str]] = []
        for b in s3.list_buckets().get("Buckets", []):
            saved.append((b["Name"], "", ""))  # the bucket itself
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=b["Name"]):
                for obj in page.get("Contents", []):
                    file = os.path.join(folder, uuid.uuid4().hex)
                    s3.download_file(b["Name"], obj["Key"], file)
                    saved.append((b["Name"], obj["Key"], file))
        return saved

    def _restore_objects(self, saved: list[tuple[str, str, str]]) -> int:
        s3 = self._client()
        total = 0
        for bucket, key, file in saved:
            if not key:
                s3.create_bucket(Bucket=bucket)
                continue
            with open(file, "rb") as f:
                data = f.read()
            s3.put_object(Bucket=bucket, Key=key, Body=data)
            total += len(data)
        return total

    def _restore_uploads(self) -> int:
        s3 = self._client()
        for client_id, up in self._uploads.items():
            new_id = s3.create_multipart_upload(Bucket=up.bucket, Key=up.key)["UploadId"]
            for number, (spooled, etag) in sorted(up.parts.items()):
                with open(spooled, "rb") as f:
                    out = s3.upload_part(
                        Bucket=up.bucket,
                        Key=up.key,
                        UploadId=new_id,
                        PartNumber=number,
                        Body=f.read(),
                    )
                if out["ETag"] != etag:  # same bytes, same MD5: the client's ETags stay valid
                    raise RuntimeError(f"part {number} of {up.key} changed ETag on restore")
            self._upload_map[client_id] = new_id
        return len(self._uploads)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a dropped connection looks to the client."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return bytes(out)
        out += await reader.readexactly(size)
        await reader.readexactly(2)


def _error_xml(code: str, message: str) -> bytes:
    rid = uuid.uuid4().hex[:16].upper()
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<RequestId>{rid}</RequestId><HostId>kf2v-s3-fault-proxy</HostId></Error>"
    ).encode()


def _error_headers() -> list[tuple[str, str]]:
    return [("Content-Type", "application/xml"), ("x-amz-request-id", uuid.uuid4().hex[:16])]


async def _respond(
    writer: asyncio.StreamWriter,
    status: int,
    reason: str,
    headers: list[tuple[str, str]],
    body: bytes,
) -> None:
    if not any(k.lower() == "content-length" for k, _ in headers):
        headers = [*headers, ("Content-Length", str(len(body)))]
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    writer.write(head.encode("latin-1") + b"\r\n" + body)
    await writer.drain()
