"""The response→error table of kf2v_tasks.dashscope.responses: every row, every flag."""

from __future__ import annotations

import traceback

import httpx
import pytest

from kf2v_tasks.dashscope import client as client_module
from kf2v_tasks.dashscope.error_table import (
    ERROR_RULES,
    ErrorRule,
    create_may_have_happened,
    create_retryable,
    rule_for,
)
from kf2v_tasks.dashscope.responses import (
    MAX_ERROR_TEXT,
    bad_body_error,
    create_error,
    error_from_oss_response,
    error_from_response,
    error_from_transport,
    unusable_create_answer,
)
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

from conftest import TEST_API_KEY

#: The class each row must raise (the test checks the table against this, not itself).
EXPECTED_CLASS = {
    "unsupported-operation": UnsupportedOperationError,
    "content-rejected": ContentRejectedError,
    "quota-exhausted": QuotaExhaustedError,
    "authentication": AuthenticationError,
    "access-denied": AccessDeniedError,
    "throttled": ThrottledError,
    "unavailable": ServerError,
    "server-error": ServerError,
    "invalid-request": InvalidRequestError,
    "invalid-code": InvalidRequestError,
    "unexpected-status": ServerError,
}
FREE_GONE = "Free allocated quota exceeded."
RATE = "Allocated quota exceeded, please increase your quota limit."

# (status, code, message, rule name, create outcome)
# create outcome: "retry" (no task, resend), "ambiguous" (a task may exist), "raise" (refused)
CASES = [
    (400, "UnsupportedOperation", "not PENDING", "unsupported-operation", "raise"),
    (500, "UnsupportedOperation", "odd status", "unsupported-operation", "raise"),
    (400, "DataInspectionFailed", "Input data may contain", "content-rejected", "raise"),
    (400, "IPInfringementSuspect", "IP infringement", "content-rejected", "raise"),
    (400, "Arrearage", "good standing", "quota-exhausted", "raise"),
    (429, "CommodityNotPurchased", "not purchased", "quota-exhausted", "raise"),
    (403, "AllocationQuota.FreeTierOnly", "free tier", "quota-exhausted", "raise"),
    (429, "PrepaidBillOverdue", "overdue", "quota-exhausted", "raise"),
    (429, "PostpaidBillOverdue", "overdue", "quota-exhausted", "raise"),
    (429, "Throttling.AllocationQuota", FREE_GONE, "quota-exhausted", "raise"),
    (401, "InvalidApiKey", "Invalid API-key provided.", "authentication", "raise"),
    (403, "AccessDenied", "synchronous calls", "access-denied", "raise"),
    (403, "AccessDenied.Unpurchased", "unpurchased", "access-denied", "raise"),
    (429, "Throttling", "throttling triggered", "throttled", "retry"),
    (429, "Throttling.RateQuota", "rate limit", "throttled", "retry"),
    (429, "Throttling.AllocationQuota", RATE, "throttled", "retry"),
    (503, "ModelUnavailable", "Model is unavailable", "unavailable", "retry"),
    (503, "ServiceUnavailable", "busy", "unavailable", "retry"),
    (500, "InternalError", "internal error", "server-error", "ambiguous"),
    (500, "InvalidParameter", "a 5xx whatever the code", "server-error", "ambiguous"),
    (502, "BadGateway", "bad gateway", "server-error", "ambiguous"),
    (504, "GatewayTimeout", "gateway timeout", "server-error", "ambiguous"),
    (408, "RequestTimeout", "timeout", "server-error", "ambiguous"),
    (400, "InvalidParameter", "url error, please check url!", "invalid-request", "raise"),
    (404, "ModelNotFound", "Model can not be found.", "invalid-request", "raise"),
    (409, "Conflict", "conflict", "invalid-request", "raise"),
    (302, "InvalidParameter", "redirected", "invalid-code", "raise"),
    (301, "BadRequest.EmptyInput", "moved", "invalid-code", "raise"),
    (302, "InvalidURL.Timeout", "moved", "invalid-code", "raise"),
    (307, "InvalidImage.FileFormat", "moved", "invalid-code", "raise"),
    (302, "Found", "redirect", "unexpected-status", "ambiguous"),
    (100, "Unknown", "", "unexpected-status", "ambiguous"),
]
IDS = [f"{c[0]}-{c[1]}" for c in CASES]


def err(status: int, code: str, message: str, **kw) -> httpx.Response:
    body = {"code": code, "message": message, "request_id": f"rid-{status}"}
    return httpx.Response(status, json=body, **kw)


def test_every_row_is_covered() -> None:
    assert {c[3] for c in CASES} == {rule.name for rule in ERROR_RULES} == set(EXPECTED_CLASS)
    assert len({rule.name for rule in ERROR_RULES}) == len(ERROR_RULES)


def test_last_row_matches_everything() -> None:
    last = ERROR_RULES[-1]
    assert all(last.matches(s, c, "") for s in (100, 200, 302, 404, 599) for c in ("", "X"))


def test_a_rule_cannot_be_both_retryable_and_ambiguous() -> None:
    with pytest.raises(ValueError):
        ErrorRule("bad", ServerError, create_retryable=True, create_may_have_happened=True)


@pytest.mark.parametrize("status, code, message, name, outcome", CASES, ids=IDS)
def test_row(status: int, code: str, message: str, name: str, outcome: str) -> None:
    cls = EXPECTED_CLASS[name]
    rule = rule_for(status, code, message)
    assert rule.name == name and rule.error is cls
    assert rule.create_retryable is (outcome == "retry")
    assert rule.create_may_have_happened is (outcome == "ambiguous")

    error = error_from_response(err(status, code, message))
    assert type(error) is cls
    assert (error.status_code, error.code, error.message) == (status, code, message)
    assert error.request_id == f"rid-{status}"
    assert isinstance(error, TransientError) is (cls in (ThrottledError, ServerError))
    assert isinstance(error, PermanentError) is (cls not in (ThrottledError, ServerError))

    # The create policy is read from the same row, from the error alone.
    assert create_retryable(error) is (outcome == "retry")
    assert create_may_have_happened(error) is (outcome == "ambiguous")
    raised = create_error(err(status, code, message))
    if outcome == "ambiguous":
        assert isinstance(raised, AmbiguousCreateError)
        assert code in str(raised) and f"rid-{status}" in str(raised)
        assert raised.cause_text is not None and code in raised.cause_text
    else:
        assert type(raised) is cls


@pytest.mark.parametrize(
    "status, expected", [(429, 7.0), (503, 7.0), (500, None), (400, None), (401, None)]
)
def test_retry_after_read_only_where_the_row_says(status: int, expected: float | None) -> None:
    error = error_from_response(err(status, "X", "m", headers={"Retry-After": "7"}))
    assert error.retry_after == expected


def test_non_json_body() -> None:
    html = "<html>" + "Bad Gateway " * 100 + "</html>"
    error = error_from_response(httpx.Response(502, text=html, headers={"X-Request-ID": "h-1"}))
    assert type(error) is ServerError and error.code == "Unknown" and error.request_id == "h-1"
    assert len(error.message) <= MAX_ERROR_TEXT


def test_secrets_and_signed_urls_leave_server_text() -> None:
    message = f"key {TEST_API_KEY} bad for https://oss.test/v.mp4?Signature=abc"
    error = error_from_response(err(400, "InvalidParameter", message), secrets=[TEST_API_KEY])
    assert TEST_API_KEY not in str(error) and "Signature" not in str(error)
    assert "https://oss.test/v.mp4" in error.message


# --------------------------------------------------------------------------- OSS answers


@pytest.mark.parametrize(
    "status, code, cls",
    [
        (403, "AccessDenied", AccessDeniedError),
        (400, "InvalidArgument", InvalidRequestError),
        (400, "EntityTooLarge", InvalidRequestError),
        (429, "Throttling", ThrottledError),
        (500, "InternalError", ServerError),
        (503, "ServiceUnavailable", ServerError),
        (204, "Unknown", ServerError),  # anything but the 200 asked for is unexpected
    ],
)
def test_oss_answers_use_the_same_rows(status: int, code: str, cls: type) -> None:
    body = (
        f"<Error><Code>{code}</Code><Message>m {TEST_API_KEY}</Message>"
        "<RequestId>o-1</RequestId></Error>"
    )
    error = error_from_oss_response(httpx.Response(status, text=body), secrets=[TEST_API_KEY])
    assert type(error) is cls
    assert error.code == f"OSS.{code}" and error.request_id == "o-1"
    assert TEST_API_KEY not in error.message


def test_oss_answer_without_xml() -> None:
    error = error_from_oss_response(
        httpx.Response(502, text="gateway", headers={"x-oss-request-id": "o-2"})
    )
    assert (error.code, error.message, error.request_id) == ("OSS.Unknown", "gateway", "o-2")


# --------------------------------------------------------------------------- transport


NOT_SENT = [httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError]
SENT = [httpx.ReadTimeout, httpx.WriteTimeout, httpx.ReadError, httpx.RemoteProtocolError]


@pytest.mark.parametrize("exc", NOT_SENT + SENT)
@pytest.mark.parametrize("create", [False, True])
def test_transport_mapping(exc: type, create: bool) -> None:
    request = httpx.Request("POST", "https://x.test/", headers={"Authorization": "Bearer k"})
    error = error_from_transport(
        exc(f"boom {TEST_API_KEY}", request=request),
        method="POST",
        shown="/p",
        create=create,
        secrets=[TEST_API_KEY],
    )
    sent = exc in SENT
    if create and sent:
        assert isinstance(error, AmbiguousCreateError)
        assert create_may_have_happened(error) and not create_retryable(error)
    else:
        assert isinstance(error, ConnectionFailedError) and error.request_sent is sent
        assert create_retryable(error) is (not sent)
    text = str(error) + repr(vars(error)) + "".join(traceback.format_exception(error))
    assert TEST_API_KEY not in text and "Bearer" not in text
    assert exc.__name__ in str(error)
    assert error.__cause__ is None and error.__context__ is None


def test_other_exceptions_are_never_create_retryable() -> None:
    for exc in (ValueError("x"), AmbiguousCreateError("x"), RuntimeError("y")):
        assert not create_retryable(exc)
    assert create_may_have_happened(AmbiguousCreateError("x"))
    assert not create_may_have_happened(ValueError("x"))


# --------------------------------------------------------------------------- unusable 2xx


def test_bad_body_and_unusable_create_answer() -> None:
    response = httpx.Response(
        200, text=f"<pre>{TEST_API_KEY}</pre>", headers={"x-request-id": "r9"}
    )
    bad = bad_body_error(response, secrets=[TEST_API_KEY])
    assert isinstance(bad, ServerError) and bad.code == "InvalidResponse"
    assert bad.request_id == "r9" and TEST_API_KEY not in str(bad)
    amb = unusable_create_answer(response, secrets=[TEST_API_KEY])
    assert isinstance(amb, AmbiguousCreateError) and "request_id=r9" in str(amb)
    assert amb.cause_text is not None and TEST_API_KEY not in amb.cause_text


def test_client_re_exports_error_from_response() -> None:
    assert client_module.error_from_response is error_from_response
    assert issubclass(client_module.error_from_response(err(400, "X", "m")).__class__, ApiError)
