"""Response helpers for the simulated wire: DashScope JSON errors, OSS XML errors, and
ASGI responses that drop the connection on purpose (resets and cut downloads)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any, Optional, Union

from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

#: DashScope's generic messages for the error codes the simulator answers.
MESSAGES = {
    "Throttling.RateQuota": "Requests rate limit exceeded, please try again later.",
    "Throttling": "Requests throttling triggered.",
    "InternalError": "An internal error has occured, please try again later or contact service support.",
    "ModelUnavailable": "Model is unavailable, please try again later.",
    "ServiceUnavailable": "Service is unavailable, please try again later.",
}


def new_request_id() -> str:
    """A fresh request id (every call has its own)."""
    return str(uuid.uuid4())


class ApiError(Exception):
    """A DashScope HTTP-layer error: non-2xx with a flat ``{request_id, code, message}``."""

    def __init__(self, status: int, code: str, message: Optional[str] = None) -> None:
        super().__init__(f"{status} {code}")
        self.status = status
        self.code = code
        self.message = message if message is not None else MESSAGES.get(code, code)


def dashscope_json(body: dict[str, Any], status: int = 200) -> JSONResponse:
    """A JSON answer carrying a new ``request_id`` in the body and ``X-Request-ID`` header."""
    rid = body.setdefault("request_id", new_request_id())
    return JSONResponse(body, status_code=status, headers={"X-Request-ID": rid})


def dashscope_error(err: ApiError) -> JSONResponse:
    """The flat error body DashScope uses everywhere."""
    return dashscope_json(
        {"request_id": new_request_id(), "code": err.code, "message": err.message}, err.status
    )


def oss_error(status: int, code: str, message: str) -> Response:
    """An OSS-style XML error, as the result bucket and upload host answer."""
    rid = uuid.uuid4().hex.upper()[:24]
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error>\n'
        f"  <Code>{code}</Code>\n  <Message>{message}</Message>\n"
        f"  <RequestId>{rid}</RequestId>\n  <HostId>127.0.0.1</HostId>\n</Error>\n"
    )
    return Response(
        xml, status_code=status, media_type="application/xml", headers={"x-oss-request-id": rid}
    )


Chunks = Union[Iterable[bytes], AsyncIterator[bytes]]


class StreamResponse(Response):
    """Stream ``chunks`` with a declared Content-Length; optionally hang up early.

    With ``cut_after`` set, the connection closes after that many body bytes although
    Content-Length promised more: uvicorn closes the transport when an app returns
    mid-body, so the client sees a transport error, never an HTTP status.
    """

    def __init__(
        self,
        chunks: Chunks,
        *,
        status_code: int,
        headers: dict[str, str],
        cut_after: Optional[int] = None,
        on_bytes: Optional[Any] = None,
    ) -> None:
        super().__init__(status_code=status_code, headers=headers)
        self._chunks = chunks
        self._cut_after = cut_after
        self._on_bytes = on_bytes

    async def _iterate(self) -> AsyncIterator[bytes]:
        if isinstance(self._chunks, AsyncIterator):
            async for chunk in self._chunks:
                yield chunk
        else:
            iterator: Iterator[bytes] = iter(self._chunks)
            for chunk in iterator:
                yield chunk

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        if scope.get("method") == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        sent = 0
        async for chunk in self._iterate():
            if self._cut_after is not None and sent + len(chunk) >= self._cut_after:
                chunk = chunk[: self._cut_after - sent]
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    self._count(len(chunk))
                return  # incomplete on purpose: the server closes the connection
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            sent += len(chunk)
            self._count(len(chunk))
        if self._cut_after is not None:
            return
        await send({"type": "http.response.body", "body": b""})

    def _count(self, n: int) -> None:
        if self._on_bytes is not None:
            self._on_bytes(n)


def connection_reset() -> StreamResponse:
    """Headers promising a JSON body, then a hang-up: a transport error for the client."""
    return StreamResponse(
        [b'{"request_id":'],
        status_code=200,
        headers={"content-type": "application/json", "content-length": "128"},
        cut_after=len(b'{"request_id":'),
    )
