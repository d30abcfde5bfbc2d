"""Exponential backoff with jitter, in service seconds: the package's one retry layer.

:class:`RetryPolicy` says how many attempts an I/O call gets and how long to wait between
them; :func:`retry_call` runs an async callable until it succeeds, fails with an error
that is not worth retrying, or runs out of attempts. It sits at the I/O call (every
DashScope request, the video download), never around a whole step: Prefect tasks do not
retry on top of it, so a budget of ``max_attempts`` means exactly that many attempts.
Every wait goes through :func:`kf2v_tasks.clock.sleep`, so the time scale compresses it.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, Optional, TypeVar

from kf2v_tasks import clock
from kf2v_tasks.errors import is_transient

T = TypeVar("T")

#: ``on_retry(attempt, error, delay)``: called before each wait; may be sync or async.
OnRetry = Callable[[int, BaseException, float], Any]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry.

    The wait after the ``n``-th failed attempt is ``min(max_delay, base_delay * 2**(n-1))``
    with its top ``jitter`` fraction randomised ("full jitter" when ``jitter=1``), and
    never less than a ``Retry-After`` the server sent.

    With the defaults: at most 8 attempts in total, the first included, and waits of
    at most 1, 2, 4, 8, 16, 32 and 60 service seconds between them (123 s in all, see
    :meth:`worst_case_wait`), longer only when a server's ``Retry-After`` asks for it.

    Args:
        max_attempts: attempts in total, the first one included.
        base_delay: wait after the first failure, in service seconds.
        max_delay: ceiling of the exponential part, in service seconds.
        jitter: fraction (0..1) of each wait that is drawn at random.
        rand: source of uniform floats in ``[0, 1)``; inject one for deterministic tests.
    """

    max_attempts: int = 8
    base_delay: float = 1.0
    max_delay: float = 60.0
    jitter: float = 0.5
    rand: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("base_delay and max_delay must be >= 0")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be within [0, 1], got {self.jitter}")

    def backoff(self, attempt: int) -> float:
        """The un-jittered wait after failed attempt number ``attempt`` (1-based)."""
        exponent = min(max(attempt, 1) - 1, 62)  # 2**62 already dwarfs any max_delay
        return min(self.max_delay, self.base_delay * 2.0**exponent)

    def delay(self, attempt: int, retry_after: Optional[float] = None) -> float:
        """Service seconds to wait after failed attempt number ``attempt`` (1-based); never
        shorter than the server's ``retry_after``.
        """
        base = self.backoff(attempt)
        wait = base * (1.0 - self.jitter * self.rand())
        if retry_after is not None and retry_after > wait:
            wait = float(retry_after)
        return max(0.0, wait)

    def worst_case_wait(self) -> float:
        """The longest total wait of a call that fails every attempt, in service seconds.

        The sum of the un-jittered backoffs between the ``max_attempts`` attempts (jitter
        only shortens a wait); a server's ``Retry-After`` can only lengthen it.
        """
        return sum(self.backoff(n) for n in range(1, self.max_attempts))


async def retry_call(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    is_retryable: Callable[[BaseException], bool] = is_transient,
    on_retry: Optional[OnRetry] = None,
) -> T:
    """Await ``fn()`` until it succeeds, retrying the errors ``is_retryable`` accepts.

    At most ``policy.max_attempts`` calls, the first included, with ``policy.delay(...)``
    service seconds between them (at most ``policy.worst_case_wait()`` unless a
    ``Retry-After`` asks for longer). The last error is re-raised when not retryable or out
    of attempts. Cancellation (``BaseException``) is never retried. ``is_retryable`` defaults
    to :class:`~kf2v_tasks.errors.TransientError`; ``on_retry(attempt, error, delay)`` runs
    before each wait.
    """
    attempt = 0
    while True:
        attempt += 1
        error: Optional[Exception] = None
        try:
            return await fn()
        except Exception as exc:
            if attempt >= policy.max_attempts or not is_retryable(exc):
                raise
            error = exc
        # Outside the ``except`` block: the next attempt's errors get no stale context.
        delay = policy.delay(attempt, getattr(error, "retry_after", None))
        if on_retry is not None:
            result = on_retry(attempt, error, delay)
            if inspect.isawaitable(result):
                await result
        del error
        await clock.sleep(delay)


def parse_retry_after(headers: Mapping[str, str]) -> Optional[float]:
    """Seconds a server asked us to wait: ``retry-after-ms``, else ``Retry-After``.

    ``Retry-After`` may be seconds or an HTTP date. Unparsable or absent values give
    ``None``; past dates and negative values give ``0``. ``headers`` is any mapping with
    lower-case keys or a case-insensitive one (``httpx.Headers``).
    """
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.now(when.tzinfo)).total_seconds())
