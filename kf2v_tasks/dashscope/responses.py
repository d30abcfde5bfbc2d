"""What an answer from DashScope (or its OSS upload host) means, read in one place.

Every non-2xx answer becomes a typed error (see :mod:`kf2v_tasks.errors`) through the one
table of :mod:`kf2v_tasks.dashscope.error_table`; this module reads the answer (JSON,
OSS XML, headers) and builds the error.

Transport failures are mapped here too (:func:`error_from_transport`): a request that
certainly never left (connect error, pool timeout) is safe to resend; one that may have
reached the server is not, for a create.

Error messages carry the server's words with every given secret blanked and signed-URL
queries dropped (:func:`kf2v_tasks.redaction.redact_text`). Nothing here keeps an httpx
object: a request, and so its ``Authorization`` header, never rides along in an error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Optional

import httpx

from kf2v_tasks.dashscope.error_table import create_may_have_happened, rule_for
from kf2v_tasks.errors import (
    AmbiguousCreateError,
    ApiError,
    ConnectionFailedError,
    Kf2vError,
    ServerError,
)
from kf2v_tasks.redaction import redact_text
from kf2v_tasks.retry import parse_retry_after

__all__ = [
    "MAX_ERROR_TEXT",
    "TRANSPORT_NOT_SENT",
    "bad_body_error",
    "create_error",
    "error_from_oss_response",
    "error_from_response",
    "error_from_transport",
    "excerpt",
    "json_object",
    "request_id_of",
    "unusable_create_answer",
]

#: Longest excerpt of a non-JSON error body kept in an exception message.
MAX_ERROR_TEXT = 200

#: Transport failures after which the request certainly never reached the server.
TRANSPORT_NOT_SENT: tuple[type[httpx.HTTPError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ProxyError,
)

# ---------------------------------------------------------------------- answers -> errors


def _build(
    response: httpx.Response,
    code: str,
    message: str,
    request_id: Optional[str],
    secrets: Iterable[Optional[str]],
) -> ApiError:
    message = redact_text(message, secrets)
    status = response.status_code
    rule = rule_for(status, code, message)
    return rule.error(
        code,
        message,
        status_code=status,
        request_id=request_id,
        retry_after=parse_retry_after(response.headers) if rule.reads_retry_after else None,
    )


def error_from_response(
    response: httpx.Response, *, secrets: Iterable[Optional[str]] = ()
) -> ApiError:
    """The typed error for a non-2xx DashScope answer (flat ``{code, message, request_id}``);
    a non-JSON body gives code ``"Unknown"`` and a truncated excerpt. ``secrets`` are blanked
    out of the server's text.
    """
    body = json_object(response)
    if body is not None and (body.get("code") or body.get("message")):
        code = str(body.get("code") or "Unknown")
        message = str(body.get("message") or "")
    else:
        code, message = "Unknown", excerpt(response)
    return _build(response, code, message, request_id_of(response, body), secrets)


def error_from_oss_response(
    response: httpx.Response, *, secrets: Iterable[Optional[str]] = ()
) -> ApiError:
    """The typed error for an OSS PostObject answer (XML ``<Code>``/``<Message>``).

    The code is prefixed ``OSS.`` (``OSS.AccessDenied``), then read through the same
    :data:`ERROR_RULES` as DashScope answers.
    """
    text = response.text if response.content else ""
    code = _xml_tag(text, "Code") or "Unknown"
    message = _xml_tag(text, "Message") or excerpt(response)
    request_id = _xml_tag(text, "RequestId") or response.headers.get("x-oss-request-id")
    return _build(response, f"OSS.{code}", message, request_id, secrets)


def error_from_transport(
    exc: httpx.HTTPError,
    *,
    method: str,
    shown: str,
    create: bool = False,
    secrets: Iterable[Optional[str]] = (),
) -> Kf2vError:
    """Our error for an httpx transport failure; it keeps no reference to ``exc`` (which holds
    the request, so its headers).

    Returns :class:`~kf2v_tasks.errors.AmbiguousCreateError` for a create that may have been
    sent; else :class:`~kf2v_tasks.errors.ConnectionFailedError`, whose ``request_sent`` says
    whether it may have reached the server.
    """
    sent = not isinstance(exc, TRANSPORT_NOT_SENT)
    what = redact_text(f"{type(exc).__name__}: {exc}".rstrip(": "), secrets)
    if create and sent:
        return AmbiguousCreateError(
            f"create: {what} after the request was sent; a task may exist",
            cause=ConnectionFailedError(what, request_sent=True),
        )
    return ConnectionFailedError(f"{method} {shown}: {what}", request_sent=sent)


def create_error(response: httpx.Response, *, secrets: Iterable[Optional[str]] = ()) -> Kf2vError:
    """What a create raises for a non-2xx answer: the typed error, or an ambiguous one."""
    error = error_from_response(response, secrets=secrets)
    if create_may_have_happened(error):
        return AmbiguousCreateError(
            f"create answered HTTP {error.status_code} {error.code}; "
            f"a task may exist (request_id={error.request_id})",
            cause=error,
        )
    return error


def bad_body_error(
    response: httpx.Response, *, secrets: Iterable[Optional[str]] = ()
) -> ServerError:
    """A 2xx answer we cannot read (not JSON, or missing what it must hold): transient."""
    return ServerError(
        "InvalidResponse",
        f"unparsable answer: {redact_text(excerpt(response), secrets)}",
        status_code=response.status_code,
        request_id=request_id_of(response, None),
    )


def unusable_create_answer(
    response: httpx.Response, *, secrets: Iterable[Optional[str]] = ()
) -> AmbiguousCreateError:
    """A 2xx create answer without a usable task id: a task may exist all the same."""
    rid = request_id_of(response, None)
    return AmbiguousCreateError(
        f"create answered HTTP {response.status_code} without a usable task id; "
        f"a task may exist (request_id={rid})",
        cause=ServerError(
            "InvalidResponse",
            redact_text(excerpt(response), secrets),
            status_code=response.status_code,
            request_id=rid,
        ),
    )


# ---------------------------------------------------------------------- reading answers


def json_object(response: httpx.Response) -> Optional[dict[str, Any]]:
    """The body as a JSON object, or ``None`` (not JSON, or not an object)."""
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def request_id_of(response: httpx.Response, body: Optional[dict[str, Any]]) -> Optional[str]:
    """The request id: from the JSON body if it has one, else the ``X-Request-ID`` header."""
    if body is None:
        body = json_object(response) if response.content[:1] == b"{" else None
    rid = body.get("request_id") if body else None
    return str(rid) if rid else response.headers.get("x-request-id")


def excerpt(response: httpx.Response) -> str:
    """The body as one line of at most :data:`MAX_ERROR_TEXT` characters."""
    try:
        text = response.text
    except (UnicodeDecodeError, LookupError):
        text = response.content.decode("utf-8", "replace")
    text = " ".join(text.split())
    if len(text) > MAX_ERROR_TEXT:
        text = text[: MAX_ERROR_TEXT - 1] + "…"
    return text or f"empty body (HTTP {response.status_code})"


def _xml_tag(text: str, tag: str) -> Optional[str]:
    match = re.search(rf"<{tag}>([^<]*)</{tag}>", text)
    return match.group(1).strip() if match else None
