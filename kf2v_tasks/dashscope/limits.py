"""Account quota, enforced in-process: submits per second, queries per second, tasks in flight.

DashScope limits a whole account (2 submits/s, 20 task queries/s, 2 concurrent tasks by
default). One :class:`AccountLimits` is shared by every task of a run so that together
they stay under the quota instead of discovering it through 429s. Rate windows are in
service seconds (see :mod:`kf2v_tasks.clock`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from kf2v_tasks import clock


class RateLimiter:
    """Async token bucket: at most ``rate`` acquisitions per service second, ``burst`` at once.

    Waiters are served first come, first served.

    Example:
        ```python
        import asyncio
        from kf2v_tasks.dashscope.limits import RateLimiter

        async def main():
            limiter = RateLimiter(rate=2)
            for _ in range(4):
                await limiter.acquire()   # the 3rd and 4th wait ~0.5 s each

        asyncio.run(main())
        ```
    """

    def __init__(self, rate: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self.rate = float(rate)
        # Burst of 1 by default: a fresh account sees evenly spaced calls, never a spike.
        self.burst = float(burst if burst is not None else 1.0)
        self._tokens = self.burst
        self._updated = clock.now()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        t = clock.now()
        self._tokens = min(self.burst, self._tokens + (t - self._updated) * self.rate)
        self._updated = t

    async def acquire(self) -> None:
        """Wait until a token is free, then take it."""
        async with self._lock:
            while True:
                self._refill()
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                await clock.sleep((1.0 - self._tokens) / self.rate)

    def penalize(self, service_seconds: float) -> None:
        """After a 429, hold everyone back for ``service_seconds`` (e.g. ``Retry-After``)."""
        self._refill()
        self._tokens = min(self._tokens, 0.0) - service_seconds * self.rate


@dataclass
class AccountLimits:
    """The quota of one DashScope account, shared by everything in this process.

    Args:
        max_in_flight: remote tasks submitted and not yet finished (service default 2).
        submits_per_second: create calls per service second (service default 2).
        queries_per_second: task queries per service second (service default 20).

    Example:
        ```python
        from kf2v_tasks.dashscope.limits import AccountLimits
        limits = AccountLimits(max_in_flight=2, submits_per_second=2, queries_per_second=20)
        ```
    """

    max_in_flight: int = 2
    submits_per_second: float = 2.0
    queries_per_second: float = 20.0
    submit_limiter: RateLimiter = field(init=False, repr=False)
    query_limiter: RateLimiter = field(init=False, repr=False)
    slots: asyncio.Semaphore = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be ≥ 1")
        self.submit_limiter = RateLimiter(self.submits_per_second)
        self.query_limiter = RateLimiter(self.queries_per_second)
        self.slots = asyncio.Semaphore(self.max_in_flight)
