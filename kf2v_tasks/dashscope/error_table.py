"""The one table that says what a DashScope answer means: which error, and what a create may do.

Every non-2xx answer becomes a typed error (:mod:`kf2v_tasks.errors`) through
:data:`ERROR_RULES`, rows read top to bottom, first match wins. Each row also says what the
answer means for a *create*:

* ``create_retryable``: the service certainly created no task (429, 503): resend after a
  backoff;
* ``create_may_have_happened``: a task may exist and be billed (500, 502, 504, 408, an
  unexpected status): never resent; the caller gets
  :class:`~kf2v_tasks.errors.AmbiguousCreateError`;
* neither: the service refused (bad input, auth, quota, moderation): resending cannot help.

OSS answers (XML) go through the same rows with their code prefixed
``OSS.``, so no DashScope code row matches them by accident. Reading an answer into the
error is :mod:`kf2v_tasks.dashscope.responses`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kf2v_tasks.errors import (
    AccessDeniedError,
    AmbiguousCreateError,
    ApiError,
    AuthenticationError,
    ConnectionFailedError,
    ContentRejectedError,
    InvalidRequestError,
    QuotaExhaustedError,
    ServerError,
    ThrottledError,
    UnsupportedOperationError,
)

__all__ = [
    "ERROR_RULES",
    "CodeMatch",
    "ErrorRule",
    "StatusMatch",
    "create_may_have_happened",
    "create_retryable",
    "rule_for",
]

StatusMatch = Callable[[int], bool]
CodeMatch = Callable[[str, str], bool]  # (code, message) -> bool


# ---------------------------------------------------------------------- row predicates


def _any_status(status: int) -> bool:
    return True


def _any_code(code: str, message: str) -> bool:
    return True


def _status_in(*statuses: int) -> StatusMatch:
    wanted = frozenset(statuses)
    return lambda status: status in wanted


def _status_from(low: int, high: int = 1000) -> StatusMatch:
    return lambda status: low <= status < high


def _code_in(*codes: str) -> CodeMatch:
    wanted = frozenset(codes)
    return lambda code, message: code in wanted


def _code_prefix(*prefixes: str) -> CodeMatch:
    return lambda code, message: code.startswith(prefixes)


def _quota_gone(code: str, message: str) -> bool:
    # 429 Throttling.AllocationQuota is a rate limit, except with this message: then the
    # free quota is spent and waiting will not bring it back.
    return (
        code in {"Arrearage", "CommodityNotPurchased", "AllocationQuota.FreeTierOnly"}
        or code.endswith("BillOverdue")
        or message.strip().startswith("Free allocated quota exceeded")
    )


@dataclass(frozen=True)
class ErrorRule:
    """One row of :data:`ERROR_RULES`: what it matches, which error, what a create may do.

    ``status`` and ``code`` are predicates over the HTTP status and ``(code, message)``
    (default: any); ``create_retryable``: a create that got this answer created no task and
    may be resent; ``create_may_have_happened``: it may have; ``reads_retry_after``: the
    error carries the server's ``Retry-After``.
    """

    name: str
    error: type[ApiError]
    status: StatusMatch = _any_status
    code: CodeMatch = _any_code
    create_retryable: bool = False
    create_may_have_happened: bool = False
    reads_retry_after: bool = False

    def __post_init__(self) -> None:
        if self.create_retryable and self.create_may_have_happened:
            raise ValueError(f"rule {self.name}: a create cannot be both retryable and ambiguous")

    def matches(self, status: int, code: str, message: str) -> bool:
        """Whether an answer with this status, code and message falls under this row."""
        return self.status(status) and self.code(code, message)


#: The rows, read top to bottom; the first match wins and the last row matches anything.
ERROR_RULES: tuple[ErrorRule, ...] = (
    ErrorRule(
        "unsupported-operation", UnsupportedOperationError, code=_code_in("UnsupportedOperation")
    ),
    ErrorRule(
        "content-rejected",
        ContentRejectedError,
        code=_code_prefix("DataInspectionFailed", "IPInfringementSuspect"),
    ),
    ErrorRule("quota-exhausted", QuotaExhaustedError, code=_quota_gone),
    ErrorRule("authentication", AuthenticationError, status=_status_in(401)),
    ErrorRule("access-denied", AccessDeniedError, status=_status_in(403)),
    ErrorRule(
        "throttled",
        ThrottledError,
        status=_status_in(429),
        create_retryable=True,
        reads_retry_after=True,
    ),
    ErrorRule(
        "unavailable",
        ServerError,
        status=_status_in(503),
        create_retryable=True,
        reads_retry_after=True,
    ),
    ErrorRule(
        "server-error",
        ServerError,
        status=lambda s: s == 408 or s >= 500,
        create_may_have_happened=True,
    ),
    ErrorRule("invalid-request", InvalidRequestError, status=_status_from(400, 500)),
    ErrorRule(
        "invalid-code",
        InvalidRequestError,
        code=_code_prefix("InvalidParameter", "BadRequest", "InvalidURL", "InvalidImage"),
    ),
    # 1xx/3xx (redirects are not followed): not expected from the API, and a create that
    # got one may have been accepted behind a proxy.
    ErrorRule("unexpected-status", ServerError, create_may_have_happened=True),
)


def rule_for(status: int, code: str, message: str = "") -> ErrorRule:
    """The first row of :data:`ERROR_RULES` matching an answer: the one place it is read."""
    for rule in ERROR_RULES:
        if rule.matches(status, code, message):
            return rule
    raise AssertionError("the last row of ERROR_RULES matches every answer")


# ---------------------------------------------------------------------- create policy


def create_retryable(exc: BaseException) -> bool:
    """Whether a failed create certainly created no task, so it may be sent again.

    True for answers whose row says ``create_retryable`` (429, 503) and for transport
    failures before the request left; False for everything else, including
    :class:`~kf2v_tasks.errors.AmbiguousCreateError`.
    """
    if isinstance(exc, ApiError):
        return rule_for(exc.status_code, exc.code, exc.message).create_retryable
    if isinstance(exc, ConnectionFailedError):
        return not exc.request_sent
    return False


def create_may_have_happened(exc: BaseException) -> bool:
    """Whether a create that failed this way may still have created (and billed) a task."""
    if isinstance(exc, AmbiguousCreateError):
        return True
    if isinstance(exc, ApiError):
        return rule_for(exc.status_code, exc.code, exc.message).create_may_have_happened
    if isinstance(exc, ConnectionFailedError):
        return exc.request_sent
    return False
