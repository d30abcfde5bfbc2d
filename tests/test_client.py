"""Kf2vClient wire protocol, error classification and secrecy, over httpx.MockTransport."""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any, Union

import httpx
import pytest

import kf2v_tasks
from kf2v_tasks import clock
from kf2v_tasks.dashscope.client import Kf2vClient
from kf2v_tasks.dashscope.limits import AccountLimits
from kf2v_tasks.dashscope.models import GenerationOptions, Kf2vRequest, TaskStatus
from kf2v_tasks.dashscope.responses import error_from_response
from kf2v_tasks.dashscope.session import DEFAULT_TIMEOUT
from kf2v_tasks.errors import (
    AccessDeniedError,
    AmbiguousCreateError,
    ApiError,
    AuthenticationError,
    ConnectionFailedError,
    ContentRejectedError,
    InvalidRequestError,
    PermanentError,
    QuotaExhaustedError,
    ServerError,
    ThrottledError,
    TransientError,
    UnsupportedOperationError,
)
from kf2v_tasks.retry import RetryPolicy

from conftest import TEST_API_KEY

BASE = "https://dashscope.test/api/v1"
CREATE_URL = f"{BASE}/services/aigc/image2video/video-synthesis"
OK_CREATE = {"output": {"task_id": "t-1", "task_status": "PENDING"}, "request_id": "r-create"}

Step = Union[httpx.Response, Exception, type, Callable[[httpx.Request], httpx.Response]]


class Server:
    """A scripted MockTransport handler: plays ``steps`` in order (the last one repeats)."""

    def __init__(self, *steps: Step) -> None:
        self.steps = list(steps)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        if isinstance(step, type) and issubclass(step, httpx.TransportError):
            raise step("simulated failure", request=request)
        if isinstance(step, Exception):
            raise step
        if callable(step) and not isinstance(step, httpx.Response):
            return step(request)
        return step

    @property
    def posts(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == "POST"]


def ok(body: Any = None, status: int = 200, **kw: Any) -> httpx.Response:
    return httpx.Response(status, json=OK_CREATE if body is None else body, **kw)


def err(status: int, code: str, message: str = "msg", **kw: Any) -> httpx.Response:
    return httpx.Response(
        status, json={"code": code, "message": message, "request_id": f"rid-{status}"}, **kw
    )


def make_client(server: Server, **kw: Any) -> Kf2vClient:
    kw.setdefault("retry", RetryPolicy(base_delay=1.0, jitter=0.0))
    return Kf2vClient(TEST_API_KEY, base_url=BASE, transport=httpx.MockTransport(server), **kw)


def request(**kw: Any) -> Kf2vRequest:
    kw.setdefault("first_frame_url", "https://example.com/first.png")
    kw.setdefault("last_frame_url", "https://example.com/last.png")
    kw.setdefault("prompt", "一只黑色小猫 looks up")
    return Kf2vRequest(**kw)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record clock.sleep calls (service seconds) instead of sleeping."""
    recorded: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr(clock, "sleep", fake_sleep)
    return recorded


# --------------------------------------------------------------------------- protocol


async def test_create_request_on_the_wire(sleeps: list[float]) -> None:
    server = Server(ok())
    req = request(options=GenerationOptions(resolution="480P", seed=42))
    async with make_client(server) as client:
        state = await client.create_task(req)
    assert state.task_id == "t-1" and state.status is TaskStatus.PENDING
    assert state.request_id == "r-create"
    (sent,) = server.requests
    assert sent.method == "POST" and str(sent.url) == CREATE_URL
    assert sent.headers["authorization"] == f"Bearer {TEST_API_KEY}"
    assert sent.headers["x-dashscope-async"] == "enable"
    assert sent.headers["content-type"].startswith("application/json")
    assert "x-dashscope-ossresourceresolve" not in sent.headers
    assert "x-dashscope-workspace" not in sent.headers
    ua = sent.headers["user-agent"]
    assert ua == f"kf2v-tasks/{kf2v_tasks.__version__} httpx/{httpx.__version__}"
    assert json.loads(sent.content) == req.to_payload()
    assert "一只黑色小猫".encode() in sent.content  # raw UTF-8, as the SDK sends it


async def test_create_with_oss_input_sends_resolve_header() -> None:
    server = Server(ok())
    async with make_client(server) as client:
        await client.create_task(request(first_frame_url="oss://dashscope-instant/x/a.png"))
    assert server.requests[0].headers["x-dashscope-ossresourceresolve"] == "enable"


async def test_workspace_header_on_every_dashscope_call_but_not_on_oss_upload() -> None:
    policy = _policy()

    def handler(r: httpx.Request) -> httpx.Response:
        if r.url.path.endswith("/uploads"):
            return ok(policy)
        if r.url.host == "oss.test":
            return httpx.Response(200)
        if r.url.path.endswith("/tasks"):
            return ok({"total": 0, "data": [], "request_id": "r"})
        if r.url.path.endswith("/cancel"):
            return ok({"request_id": "r"})
        return ok()

    server = Server(handler)
    async with make_client(server, workspace="ws-123") as client:
        await client.create_task(request())
        await client.get_task("t-1")
        await client.cancel_task("t-1")
        await client.list_tasks()
        await client.upload_file(b"png", "a.png", "wan2.2-kf2v-flash")
    assert len(server.requests) == 6
    for r in server.requests:
        if r.url.host == "oss.test":
            assert "x-dashscope-workspace" not in r.headers
        else:
            assert r.headers["x-dashscope-workspace"] == "ws-123", r.url


async def test_get_task_request_and_states() -> None:
    server = Server(
        ok(
            {
                "request_id": "r-q",
                "output": {
                    "task_id": "t-1",
                    "task_status": "SUCCEEDED",
                    "submit_time": "2025-04-18 10:36:58.394",
                    "end_time": "2025-04-18 10:45:23.004",
                    "video_url": "https://oss.test/v.mp4?sig",
                    "actual_prompt": "longer",
                },
                "usage": {"video_duration": 5, "video_count": 1, "SR": 480},
            }
        )
    )
    async with make_client(server) as client:
        state = await client.get_task("t-1")
    (sent,) = server.requests
    assert sent.method == "GET" and str(sent.url) == f"{BASE}/tasks/t-1"
    assert sent.headers["authorization"] == f"Bearer {TEST_API_KEY}"
    assert "x-dashscope-async" not in sent.headers
    assert state.status is TaskStatus.SUCCEEDED
    assert state.video_url == "https://oss.test/v.mp4?sig"
    assert state.usage is not None and state.usage.sr == 480
    assert (
        state.submit_time is not None and state.submit_time.utcoffset().total_seconds() == 8 * 3600
    )


@pytest.mark.parametrize(
    "output, status",
    [
        (
            {
                "task_id": "t-1",
                "task_status": "FAILED",
                "code": "DataInspectionFailed",
                "message": "Output data may contain inappropriate content.",
            },
            TaskStatus.FAILED,
        ),
        ({"task_id": "t-1", "task_status": "UNKNOWN"}, TaskStatus.UNKNOWN),
        ({"task_id": "t-1", "task_status": "CANCELED"}, TaskStatus.CANCELED),
        ({"task_id": "t-1", "task_status": "RUNNING"}, TaskStatus.RUNNING),
        ({"task_id": "t-1", "task_status": "SUSPENDED"}, TaskStatus.UNKNOWN),
    ],
)
async def test_get_task_returns_terminal_bodies_without_raising(
    output: dict, status: TaskStatus
) -> None:
    server = Server(ok({"request_id": "r", "output": output}))
    async with make_client(server) as client:
        state = await client.get_task("t-1")
    assert state.status is status
    assert state.task_id == "t-1"
    if status is TaskStatus.FAILED:
        assert state.code == "DataInspectionFailed" and "inappropriate" in (state.message or "")


async def test_get_task_quotes_the_id_and_fills_a_missing_one() -> None:
    server = Server(ok({"request_id": "r", "output": {"task_status": "UNKNOWN"}}))
    async with make_client(server) as client:
        state = await client.get_task("../a b")
        with pytest.raises(ValueError):
            await client.get_task("")
    assert server.requests[0].url.raw_path == b"/api/v1/tasks/..%2Fa%20b"
    assert state.task_id == "../a b" and state.status is TaskStatus.UNKNOWN


async def test_cancel_request() -> None:
    server = Server(ok({"request_id": "r"}))
    async with make_client(server) as client:
        assert await client.cancel_task("t-9") is None
    (sent,) = server.requests
    assert sent.method == "POST" and str(sent.url) == f"{BASE}/tasks/t-9/cancel"
    assert sent.content == b""
    assert "x-dashscope-async" not in sent.headers


async def test_cancel_unsupported_operation(sleeps: list[float]) -> None:
    msg = "Failed to cancel the task, please confirm if the task is in PENDING status."
    server = Server(err(400, "UnsupportedOperation", msg))
    async with make_client(server) as client:
        with pytest.raises(UnsupportedOperationError) as info:
            await client.cancel_task("t-9")
    assert info.value.code == "UnsupportedOperation" and info.value.message == msg
    assert info.value.status_code == 400 and info.value.request_id == "rid-400"
    assert isinstance(info.value, PermanentError)
    assert len(server.requests) == 1 and sleeps == []


async def test_list_tasks_params_and_flat_body() -> None:
    body = {
        "total": 1,
        "data": [{"task_id": "t-1", "status": "RUNNING", "gmt_create": 1709260684485}],
        "total_page": 1,
        "page_no": 2,
        "page_size": 5,
        "request_id": "r",
    }
    server = Server(ok(body))
    async with make_client(server) as client:
        got = await client.list_tasks(
            status=TaskStatus.RUNNING,
            model_name="wan2.2-kf2v-flash",
            start_time=datetime(2025, 4, 18, 2, 0, 0, tzinfo=UTC),
            end_time="20250419000000",
            page_no=2,
            page_size=5,
        )
    assert got == body
    url = server.requests[0].url
    assert url.path == "/api/v1/tasks"
    assert dict(url.params) == {
        "page_no": "2",
        "page_size": "5",
        "start_time": "20250418100000",  # UTC+8
        "end_time": "20250419000000",
        "model_name": "wan2.2-kf2v-flash",
        "status": "RUNNING",
    }
    server = Server(ok(body))
    async with make_client(server) as client:
        await client.list_tasks()
    assert dict(server.requests[0].url.params) == {"page_no": "1", "page_size": "10"}


def _policy(**over: Any) -> dict:
    data = {
        "policy": "eyJleHBpcmF0aW9uIjoi",
        "signature": "sig=",
        "upload_dir": "dashscope-instant/abc/2025-07-12/uuid-1",
        "upload_host": "https://oss.test",
        "expire_in_seconds": 300,
        "max_file_size_mb": 100,
        "oss_access_key_id": "AKID",
        "x_oss_object_acl": "private",
        "x_oss_forbid_overwrite": "true",
    }
    data.update(over)
    return {"data": data, "request_id": "r-policy"}


def _form_fields(r: httpx.Request) -> list[tuple[str, str, bytes]]:
    """(name, filename, value) of each multipart part, in order."""
    boundary = r.headers["content-type"].split("boundary=")[1].encode()
    parts = []
    for chunk in r.content.split(b"--" + boundary)[1:-1]:
        head, _, value = chunk.strip(b"\r\n").partition(b"\r\n\r\n")
        disp = head.split(b"\r\n")[0].decode()
        name = disp.split('name="')[1].split('"')[0]
        filename = disp.split('filename="')[1].split('"')[0] if "filename=" in disp else ""
        parts.append((name, filename, value))
    return parts


async def test_upload_file_protocol() -> None:
    server = Server(ok(_policy()), httpx.Response(200))
    async with make_client(server) as client:
        url = await client.upload_file(b"\x89PNG-bytes", "/some/dir/first.png", "wan2.2-kf2v-flash")
    assert url == "oss://dashscope-instant/abc/2025-07-12/uuid-1/first.png"
    get_policy, upload = server.requests
    assert get_policy.method == "GET" and get_policy.url.path == "/api/v1/uploads"
    assert dict(get_policy.url.params) == {"action": "getPolicy", "model": "wan2.2-kf2v-flash"}
    assert get_policy.headers["authorization"] == f"Bearer {TEST_API_KEY}"
    assert upload.method == "POST" and str(upload.url) == "https://oss.test"
    assert "authorization" not in upload.headers
    assert TEST_API_KEY.encode() not in upload.content
    assert not any(h.startswith("x-dashscope") for h in upload.headers)
    assert upload.headers["content-type"].startswith("multipart/form-data")
    fields = _form_fields(upload)
    assert [f[0] for f in fields] == [
        "OSSAccessKeyId",
        "Signature",
        "policy",
        "key",
        "x-oss-object-acl",
        "x-oss-forbid-overwrite",
        "success_action_status",
        "x-oss-content-type",
        "file",
    ]
    values = {name: value for name, _, value in fields}
    assert values["OSSAccessKeyId"] == b"AKID"
    assert values["key"] == b"dashscope-instant/abc/2025-07-12/uuid-1/first.png"
    assert values["success_action_status"] == b"200"
    assert values["x-oss-content-type"] == b"image/png"
    assert values["file"] == b"\x89PNG-bytes"
    assert fields[-1][1] == "first.png"


async def test_upload_and_list_accept_model_enum() -> None:
    from kf2v_tasks.dashscope.models import Kf2vModel

    server = Server(ok(_policy()), httpx.Response(200), ok({"total": 0, "data": []}))
    async with make_client(server) as client:
        await client.upload_file(b"x", "a.webp", Kf2vModel.WAN21_PLUS)
        await client.list_tasks(model_name=Kf2vModel.WAN22_FLASH)
    assert server.requests[0].url.params["model"] == "wan2.1-kf2v-plus"
    assert server.requests[2].url.params["model_name"] == "wan2.2-kf2v-flash"


async def test_upload_retries_both_steps_with_a_fresh_policy(sleeps: list[float]) -> None:
    oss_503 = httpx.Response(
        503, text="<Error><Code>ServiceUnavailable</Code><Message>busy</Message></Error>"
    )
    server = Server(
        err(500, "InternalError"),  # getPolicy fails
        ok(_policy(upload_dir="d/1")),
        oss_503,  # upload fails
        ok(_policy(upload_dir="d/2")),
        httpx.Response(200),
    )
    async with make_client(server) as client:
        url = await client.upload_file(b"x", "a.jpg", "wan2.2-kf2v-flash")
    assert url == "oss://d/2/a.jpg"
    assert len(server.requests) == 5 and sleeps == [1.0, 2.0]


async def test_upload_permanent_oss_error() -> None:
    body = "<Error><Code>AccessDenied</Code><Message>Policy expired.</Message></Error>"
    server = Server(ok(_policy()), httpx.Response(403, text=body))
    async with make_client(server) as client:
        with pytest.raises(AccessDeniedError) as info:
            await client.upload_file(b"x", "a.bin", "m")
    assert info.value.code == "OSS.AccessDenied" and "Policy expired" in info.value.message


# --------------------------------------------------------------------------- error table

# (status, code, message, error class, create outcome)
ERROR_TABLE = [
    (400, "InvalidParameter", "url error, please check url!", InvalidRequestError, "raise"),
    (400, "InvalidParameter.DataInspection", "Unable to download", InvalidRequestError, "raise"),
    (400, "DataInspectionFailed", "Input data may contain", ContentRejectedError, "raise"),
    (400, "IPInfringementSuspect", "IP infringement", ContentRejectedError, "raise"),
    (400, "InvalidURL.Timeout", "Download timeout", InvalidRequestError, "raise"),
    (400, "BadRequest.EmptyInput", "Required input", InvalidRequestError, "raise"),
    (400, "InvalidImage.FileFormat", "bad image", InvalidRequestError, "raise"),
    (400, "Arrearage", "Access denied, good standing", QuotaExhaustedError, "raise"),
    (400, "UnsupportedOperation", "not PENDING", UnsupportedOperationError, "raise"),
    (401, "InvalidApiKey", "Invalid API-key provided.", AuthenticationError, "raise"),
    (403, "AccessDenied", "does not support synchronous calls.", AccessDeniedError, "raise"),
    (403, "AccessDenied.Unpurchased", "unpurchased", AccessDeniedError, "raise"),
    (403, "AllocationQuota.FreeTierOnly", "free tier only", QuotaExhaustedError, "raise"),
    (404, "ModelNotFound", "Model can not be found.", InvalidRequestError, "raise"),
    (429, "Throttling", "Requests throttling triggered.", ThrottledError, "retry"),
    (429, "Throttling.RateQuota", "Requests rate limit exceeded", ThrottledError, "retry"),
    (429, "Throttling.BurstRate", "Request rate increased too quickly", ThrottledError, "retry"),
    (
        429,
        "Throttling.AllocationQuota",
        "Allocated quota exceeded, please increase your quota limit.",
        ThrottledError,
        "retry",
    ),
    (
        429,
        "Throttling.AllocationQuota",
        "Free allocated quota exceeded.",
        QuotaExhaustedError,
        "raise",
    ),
    (429, "CommodityNotPurchased", "not purchased", QuotaExhaustedError, "raise"),
    (429, "PrepaidBillOverdue", "overdue", QuotaExhaustedError, "raise"),
    (429, "PostpaidBillOverdue", "overdue", QuotaExhaustedError, "raise"),
    (500, "InternalError", "An internal error has occured", ServerError, "ambiguous"),
    (500, "InternalError.Algo", "algo", ServerError, "ambiguous"),
    (502, "BadGateway", "bad gateway", ServerError, "ambiguous"),
    (503, "ModelUnavailable", "Model is unavailable", ServerError, "retry"),
    (504, "GatewayTimeout", "gateway timeout", ServerError, "ambiguous"),
]


@pytest.mark.parametrize("status, code, message, cls, _outcome", ERROR_TABLE)
def test_error_from_response_classifies(
    status: int, code: str, message: str, cls: type, _outcome: str
) -> None:
    response = err(status, code, message)
    error = error_from_response(response)
    assert type(error) is cls
    assert (error.code, error.message, error.status_code) == (code, message, status)
    assert error.request_id == f"rid-{status}"
    transient = cls in (ThrottledError, ServerError)
    assert isinstance(error, TransientError) is transient
    assert isinstance(error, PermanentError) is (not transient)


@pytest.mark.parametrize("status, code, message, cls, outcome", ERROR_TABLE)
async def test_create_outcome_per_error(
    sleeps: list[float], status: int, code: str, message: str, cls: type, outcome: str
) -> None:
    server = Server(err(status, code, message), ok())
    async with make_client(server) as client:
        if outcome == "retry":
            state = await client.create_task(request())
            assert state.task_id == "t-1"
            assert len(server.posts) == 2 and len(sleeps) == 1
        elif outcome == "raise":
            with pytest.raises(cls) as info:
                await client.create_task(request())
            assert info.value.code == code
            assert len(server.posts) == 1 and sleeps == []
        else:
            with pytest.raises(AmbiguousCreateError) as info:
                await client.create_task(request())
            assert len(server.posts) == 1 and sleeps == []
            assert code in str(info.value) and f"rid-{status}" in str(info.value)
            assert info.value.cause_text and code in info.value.cause_text


@pytest.mark.parametrize("status, code, message, cls, _outcome", ERROR_TABLE)
async def test_get_task_outcome_per_error(
    sleeps: list[float], status: int, code: str, message: str, cls: type, _outcome: str
) -> None:
    done = {"request_id": "r", "output": {"task_id": "t-1", "task_status": "RUNNING"}}
    server = Server(err(status, code, message), ok(done))
    async with make_client(server) as client:
        if issubclass(cls, TransientError):
            assert (await client.get_task("t-1")).status is TaskStatus.RUNNING
            assert len(server.requests) == 2
        else:
            with pytest.raises(cls):
                await client.get_task("t-1")
            assert len(server.requests) == 1


def test_error_request_id_from_header_and_non_json_body() -> None:
    html = "<html><body>" + "Bad Gateway " * 100 + "</body></html>"
    error = error_from_response(httpx.Response(502, text=html, headers={"X-Request-ID": "hdr-1"}))
    assert type(error) is ServerError
    assert error.code == "Unknown" and error.request_id == "hdr-1"
    assert error.message.startswith("<html><body>Bad Gateway") and len(error.message) <= 200
    empty = error_from_response(httpx.Response(503))
    assert empty.code == "Unknown" and "503" in empty.message


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After": "1.5"}, 1.5),
        ({"retry-after-ms": "2500"}, 2.5),
        ({"retry-after-ms": "2500", "Retry-After": "9"}, 2.5),
        ({"Retry-After": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_parsing(headers: dict, expected: float | None) -> None:
    error = error_from_response(err(429, "Throttling", headers=headers))
    assert isinstance(error, ThrottledError) and error.retry_after == expected


def test_retry_after_http_date() -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    error = error_from_response(
        err(429, "Throttling", headers={"Retry-After": format_datetime(when)})
    )
    assert error.retry_after is not None and 25 <= error.retry_after <= 31


# --------------------------------------------------------------------------- retries


async def test_429_storm_ends_in_success(sleeps: list[float]) -> None:
    storm = [err(429, "Throttling.RateQuota") for _ in range(5)]
    server = Server(*storm, ok())
    async with make_client(server) as client:
        state = await client.create_task(request())
    assert state.task_id == "t-1"
    assert len(server.posts) == 6
    assert sleeps == [1.0, 2.0, 4.0, 8.0, 16.0]


async def test_429_storm_gives_up_after_max_attempts(sleeps: list[float]) -> None:
    server = Server(err(429, "Throttling"))
    async with make_client(server, retry=RetryPolicy(max_attempts=4, jitter=0.0)) as client:
        with pytest.raises(ThrottledError):
            await client.create_task(request())
    assert len(server.posts) == 4 and len(sleeps) == 3


async def test_retry_after_honoured_and_limiter_penalised(
    sleeps: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    limits = AccountLimits(submits_per_second=1000, queries_per_second=1000)
    penalties: list[float] = []
    acquired: list[str] = []

    async def acquire() -> None:
        acquired.append("submit")

    monkeypatch.setattr(limits.create_limiter("wan2.2-kf2v-flash"), "penalize", penalties.append)
    monkeypatch.setattr(limits.create_limiter("wan2.2-kf2v-flash"), "acquire", acquire)
    server = Server(
        err(429, "Throttling", headers={"Retry-After": "7"}),
        err(429, "Throttling", headers={"retry-after-ms": "500"}),
        ok(),
    )
    async with make_client(server, limits=limits) as client:
        await client.create_task(request())
    # attempt 1: max(backoff 1, Retry-After 7); attempt 2: max(backoff 2, 0.5)
    assert sleeps == [7.0, 2.0]
    assert penalties == [7.0, 2.0]
    assert acquired == ["submit"] * 3  # every attempt waits on the shared limiter


async def test_get_task_waits_on_query_limiter(monkeypatch: pytest.MonkeyPatch) -> None:
    limits = AccountLimits()
    calls: list[str] = []

    async def acquire() -> None:
        calls.append("query")

    monkeypatch.setattr(limits.query_limiter, "acquire", acquire)
    monkeypatch.setattr(
        limits.create_limiter("wan2.2-kf2v-flash"), "acquire", lambda: pytest.fail("submit used")
    )
    server = Server(ok({"request_id": "r", "output": {"task_id": "t", "task_status": "RUNNING"}}))
    async with make_client(server, limits=limits) as client:
        await client.get_task("t")
    assert calls == ["query"]


@pytest.mark.parametrize("exc", [httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout])
async def test_create_retries_when_request_never_sent(sleeps: list[float], exc: type) -> None:
    server = Server(exc, ok())
    async with make_client(server) as client:
        state = await client.create_task(request())
    assert state.task_id == "t-1" and len(server.posts) == 2 and sleeps == [1.0]


async def test_create_connect_errors_exhausted(sleeps: list[float]) -> None:
    server = Server(httpx.ConnectError)
    async with make_client(server, retry=RetryPolicy(max_attempts=3, jitter=0.0)) as client:
        with pytest.raises(ConnectionFailedError) as info:
            await client.create_task(request())
    assert info.value.request_sent is False and len(server.posts) == 3


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ReadTimeout,
        httpx.WriteTimeout,
        httpx.ReadError,
        httpx.WriteError,
        httpx.RemoteProtocolError,
    ],
)
async def test_create_ambiguous_after_send(sleeps: list[float], exc: type) -> None:
    server = Server(exc, ok())
    async with make_client(server) as client:
        with pytest.raises(AmbiguousCreateError) as info:
            await client.create_task(request())
    assert len(server.posts) == 1 and sleeps == []
    assert exc.__name__ in str(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, text="<html>not json</html>"),
        httpx.Response(200, json={"request_id": "r"}),
        httpx.Response(200, json={"output": {"task_status": "PENDING"}}),
        httpx.Response(200, json=["not", "an", "object"]),
        httpx.Response(200, content=b"\xff\xfe\x00garbage"),
    ],
)
async def test_create_unusable_200_is_ambiguous(sleeps: list[float], response: Any) -> None:
    server = Server(response, ok())
    async with make_client(server) as client:
        with pytest.raises(AmbiguousCreateError):
            await client.create_task(request())
    assert len(server.posts) == 1


@pytest.mark.parametrize(
    "step",
    [
        httpx.ReadTimeout,
        httpx.RemoteProtocolError,
        httpx.ConnectError,
        httpx.Response(200, text="garbage"),
    ],
)
async def test_get_task_retries_transport_and_garbage(sleeps: list[float], step: Any) -> None:
    done = {"request_id": "r", "output": {"task_id": "t-1", "task_status": "SUCCEEDED"}}
    server = Server(step, ok(done))
    async with make_client(server) as client:
        assert (await client.get_task("t-1")).status is TaskStatus.SUCCEEDED
    assert len(server.requests) == 2 and sleeps == [1.0]


async def test_cancel_and_list_retry_transient(sleeps: list[float]) -> None:
    server = Server(err(503, "ServiceUnavailable"), ok({"request_id": "r"}))
    async with make_client(server) as client:
        await client.cancel_task("t")
    assert len(server.requests) == 2
    server = Server(err(429, "Throttling"), ok({"total": 0, "data": []}))
    async with make_client(server) as client:
        assert (await client.list_tasks())["total"] == 0
    assert len(server.requests) == 2


# --------------------------------------------------------------------------- client basics


def test_defaults_and_repr() -> None:
    client = Kf2vClient(TEST_API_KEY)
    assert client.base_url == "https://dashscope-intl.aliyuncs.com/api/v1"
    assert DEFAULT_TIMEOUT.connect == 10.0 and DEFAULT_TIMEOUT.read == 60.0
    assert DEFAULT_TIMEOUT.write == 60.0 and DEFAULT_TIMEOUT.pool == 10.0
    assert client._http.timeout == DEFAULT_TIMEOUT
    text = repr(client) + str(client) + repr(vars(client)) + repr(client._http.headers)
    text += repr(client._http.auth)
    assert TEST_API_KEY not in text


def test_custom_base_url_and_user_agent() -> None:
    client = Kf2vClient(TEST_API_KEY, base_url="http://127.0.0.1:9/api/v1/", user_agent="x/1")
    assert client.base_url == "http://127.0.0.1:9/api/v1"
    assert client._http.headers["user-agent"] == "x/1"


@pytest.mark.parametrize("bad", ["", "sk-abc\r\nX-Evil: 1", "sk abc", "sk-ключ"])
def test_bad_api_key_rejected_without_echo(bad: str) -> None:
    with pytest.raises(ValueError) as info:
        Kf2vClient(bad)
    assert bad == "" or bad not in str(info.value)


def test_bad_base_url() -> None:
    with pytest.raises(ValueError):
        Kf2vClient(TEST_API_KEY, base_url="dashscope.aliyuncs.com/api/v1")


async def test_closed_client() -> None:
    server = Server(ok())
    client = make_client(server)
    async with client:
        pass
    assert client.is_closed
    with pytest.raises(RuntimeError):
        await client.get_task("t")


# --------------------------------------------------------------------------- secrecy


def _all_text(exc: BaseException) -> str:
    """Everything an exception could show: str, repr, args, attributes, cause chain, traceback."""
    parts = []
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        parts += [str(e), repr(e), repr(e.args), repr(vars(e))]
        parts += traceback.format_exception(e)
        todo += [e.__cause__, e.__context__]
    return "\n".join(parts)


SECRET_FAILURES: list[tuple[str, Step]] = [
    ("echoed-401", err(401, "InvalidApiKey", f"Invalid API-key provided: {TEST_API_KEY}")),
    ("echoed-400", err(400, "InvalidParameter", f"bad header Bearer {TEST_API_KEY}")),
    ("html-500", httpx.Response(500, text=f"<pre>Authorization: Bearer {TEST_API_KEY}</pre>")),
    ("html-200", httpx.Response(200, text=f"<pre>{TEST_API_KEY}</pre>")),
    ("read-timeout", httpx.ReadTimeout),
    ("connect", httpx.ConnectError),
    ("reset", httpx.RemoteProtocolError),
    ("echoing-transport", httpx.ReadError(f"boom {TEST_API_KEY}")),
]


@pytest.mark.parametrize("name, step", SECRET_FAILURES, ids=[n for n, _ in SECRET_FAILURES])
async def test_api_key_never_in_errors_or_logs(
    sleeps: list[float], caplog: pytest.LogCaptureFixture, name: str, step: Step
) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    server = Server(step)
    async with make_client(server, retry=RetryPolicy(max_attempts=2, jitter=0.0)) as client:
        for call in (
            lambda: client.create_task(request()),
            lambda: client.get_task("t-1"),
            lambda: client.cancel_task("t-1"),
            lambda: client.list_tasks(),
            lambda: client.upload_file(b"x", "a.png", "m"),
        ):
            try:
                await call()
            except Exception as exc:
                errors.append(exc)
    assert len(errors) == (4 if name == "html-200" else 5)  # cancel ignores a 200 body
    for exc in errors:
        assert TEST_API_KEY not in _all_text(exc), name
        cause_text = getattr(exc, "cause_text", None)
        assert cause_text is None or TEST_API_KEY not in cause_text
    logged = caplog.text + "".join(repr(r.args) for r in caplog.records)
    assert TEST_API_KEY not in logged
    # Request headers are never logged (httpx would show Headers({... 'authorization': ...})).
    assert "headers(" not in logged.lower() and "'authorization'" not in logged.lower()
    assert any(r.name == "kf2v_tasks.dashscope.client" for r in caplog.records)


async def test_debug_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="kf2v_tasks.dashscope.client")
    server = Server(ok())
    async with make_client(server) as client:
        await client.create_task(request())
    (record,) = [r for r in caplog.records if r.name == "kf2v_tasks.dashscope.client"]
    assert record.getMessage() == (
        "POST /services/aigc/image2video/video-synthesis -> 200 (request_id=r-create)"
    )


def test_error_classes_are_api_errors() -> None:
    for _, _, _, cls, _ in ERROR_TABLE:
        assert issubclass(cls, ApiError)


# --------------------------------------------------------------------------- retry budget
# The client's RetryPolicy is the only retry layer: ``max_attempts`` is the exact number
# of requests (pairs, for an upload) a call may make, the first included.

_RUNNING = {"request_id": "r", "output": {"task_id": "t-1", "task_status": "RUNNING"}}
_OPERATIONS: dict[str, Callable[[Kf2vClient], Any]] = {
    "get": lambda c: c.get_task("t-1"),
    "cancel": lambda c: c.cancel_task("t-1"),
    "list": lambda c: c.list_tasks(),
    "upload": lambda c: c.upload_file(b"x", "a.png", "wan2.2-kf2v-flash"),
}
_TRANSIENT: list[tuple[str, Step]] = [
    ("429", err(429, "Throttling")),
    ("500", err(500, "InternalError")),
    ("502", err(502, "BadGateway")),
    ("503", err(503, "ServiceUnavailable")),
    ("504", err(504, "GatewayTimeout")),
    ("connect", httpx.ConnectError),
    ("read-timeout", httpx.ReadTimeout),
    ("reset", httpx.RemoteProtocolError),
]


@pytest.mark.parametrize("max_attempts", [1, 3, 8])
@pytest.mark.parametrize("name, step", _TRANSIENT, ids=[n for n, _ in _TRANSIENT])
@pytest.mark.parametrize("op", list(_OPERATIONS))
async def test_transient_retried_exactly_max_attempts(
    sleeps: list[float], op: str, name: str, step: Step, max_attempts: int
) -> None:
    server = Server(step)
    policy = RetryPolicy(max_attempts=max_attempts, base_delay=1.0, jitter=0.0)
    async with make_client(server, retry=policy) as client:
        with pytest.raises(TransientError):
            await _OPERATIONS[op](client)
    # Every attempt of an upload fails at its first step (getPolicy) here.
    assert len(server.requests) == max_attempts
    assert len(sleeps) == max_attempts - 1
    if name != "429":  # Retry-After-free waits add up to the policy's worst case
        assert sum(sleeps) == policy.worst_case_wait()


@pytest.mark.parametrize("op", list(_OPERATIONS))
async def test_transient_then_success_counts(sleeps: list[float], op: str) -> None:
    good = {
        "get": ok(_RUNNING),
        "cancel": ok({"request_id": "r"}),
        "list": ok({"total": 0, "data": []}),
        "upload": ok(_policy()),
    }[op]
    steps: list[Step] = [err(503, "ServiceUnavailable")] * 3 + [good, httpx.Response(200)]
    server = Server(*steps)
    async with make_client(server, retry=RetryPolicy(max_attempts=4, jitter=0.0)) as client:
        await _OPERATIONS[op](client)
    assert len(server.requests) == (5 if op == "upload" else 4)
    assert sleeps == [1.0, 2.0, 4.0]


async def test_upload_oss_failures_use_the_pair_budget(sleeps: list[float]) -> None:
    oss_500 = httpx.Response(500, text="<Error><Code>InternalError</Code></Error>")

    def handler(r: httpx.Request) -> httpx.Response:
        return ok(_policy()) if r.url.path.endswith("/uploads") else oss_500

    server = Server(handler)
    async with make_client(server, retry=RetryPolicy(max_attempts=3, jitter=0.0)) as client:
        with pytest.raises(ServerError) as info:
            await client.upload_file(b"x", "a.png", "wan2.2-kf2v-flash")
    assert info.value.code == "OSS.InternalError"
    assert len(server.requests) == 6 and len(sleeps) == 2  # 3 pairs of getPolicy + POST


@pytest.mark.parametrize("op", list(_OPERATIONS))
@pytest.mark.parametrize("status, code", [(400, "InvalidParameter"), (401, "InvalidApiKey")])
async def test_permanent_errors_are_one_request(
    sleeps: list[float], op: str, status: int, code: str
) -> None:
    server = Server(err(status, code))
    async with make_client(server) as client:
        with pytest.raises(PermanentError):
            await _OPERATIONS[op](client)
    assert len(server.requests) == 1 and sleeps == []


@pytest.mark.parametrize(
    "name, step",
    [
        ("429", err(429, "Throttling")),
        ("503", err(503, "ModelUnavailable")),
        ("connect", httpx.ConnectError),
        ("connect-timeout", httpx.ConnectTimeout),
        ("pool-timeout", httpx.PoolTimeout),
    ],
)
@pytest.mark.parametrize("max_attempts", [1, 2, 8])
async def test_create_not_sent_or_throttled_retried_exactly(
    sleeps: list[float], name: str, step: Step, max_attempts: int
) -> None:
    server = Server(step)
    async with make_client(
        server, retry=RetryPolicy(max_attempts=max_attempts, jitter=0.0)
    ) as client:
        with pytest.raises(TransientError):
            await client.create_task(request())
    assert len(server.posts) == max_attempts and len(sleeps) == max_attempts - 1


@pytest.mark.parametrize(
    "name, step",
    [
        ("500", err(500, "InternalError")),
        ("502", err(502, "BadGateway")),
        ("504", err(504, "GatewayTimeout")),
        ("408", err(408, "RequestTimeout")),
        ("read-timeout", httpx.ReadTimeout),
        ("write-timeout", httpx.WriteTimeout),
        ("read-error", httpx.ReadError),
        ("reset", httpx.RemoteProtocolError),
        ("unusable-200", httpx.Response(200, text="<html>")),
        ("no-task-id", ok({"output": {"task_status": "PENDING"}})),
    ],
)
async def test_create_never_resent_after_an_ambiguous_answer(
    sleeps: list[float], name: str, step: Step
) -> None:
    sends: list[int] = []

    async def before_send() -> None:
        sends.append(1)

    server = Server(step, ok())  # a resend would succeed: it must not happen
    async with make_client(server, retry=RetryPolicy(max_attempts=8)) as client:
        with pytest.raises(AmbiguousCreateError):
            await client.create_task(request(), before_send=before_send)
    assert len(server.posts) == 1 and sends == [1] and sleeps == []


async def test_create_ambiguous_after_throttling_stops_there(sleeps: list[float]) -> None:
    """429, 429, then 500: two resends (no task yet), then ambiguous and never again."""
    server = Server(err(429, "Throttling"), err(429, "Throttling"), err(500, "InternalError"), ok())
    async with make_client(server) as client:
        with pytest.raises(AmbiguousCreateError):
            await client.create_task(request())
    assert len(server.posts) == 3 and sleeps == [1.0, 2.0]


async def test_default_policy_budget(sleeps: list[float]) -> None:
    """The documented default: 8 attempts in total, waits of at most 123 service seconds."""
    server = Server(err(503, "ServiceUnavailable"))
    client = Kf2vClient(TEST_API_KEY, base_url=BASE, transport=httpx.MockTransport(server))
    async with client:
        with pytest.raises(ServerError):
            await client.get_task("t-1")
    assert client.retry == RetryPolicy()
    assert len(server.requests) == 8 and len(sleeps) == 7
    assert sum(sleeps) <= RetryPolicy().worst_case_wait() == 123.0
